//! The etcd client against a real 3-member cluster on loopback: compare-and-swap, watches,
//! compaction, leases and member failover.

mod support;

use std::time::{Duration, Instant};

use cutover_fleet::etcd::{Compare, Op, Txn, WatchMsg};
use cutover_fleet::{Etcd, EtcdError};
use support::cluster::Cluster;

/// A switch-like write: put `value` at `key` if its mod_revision is still `seen`, reading the
/// key back atomically when it is not.
fn cas(key: &str, seen: i64, value: &str) -> Txn {
    Txn {
        compare: vec![Compare::ModRevision(key.into(), seen)],
        success: vec![Op::Put {
            key: key.into(),
            value: value.as_bytes().to_vec().into(),
            lease: 0,
        }],
        failure: vec![Op::Get { key: key.into() }],
    }
}

async fn next(w: &mut cutover_fleet::etcd::Watch) -> WatchMsg {
    tokio::time::timeout(Duration::from_secs(10), w.next())
        .await
        .expect("a watch message within 10 s")
        .expect("the watch stream is open")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_writers_racing_on_one_revision_exactly_one_wins() {
    let cluster = Cluster::start(3).await;
    // Each writer talks to a different member, as two routers would.
    let a = cluster.client_of(&[0]);
    let b = cluster.client_of(&[1]);
    a.put("/t/doc", b"v0", 0).await.unwrap();
    let (kv, _) = a.get("/t/doc").await.unwrap();
    let seen = kv.unwrap().mod_revision;
    for round in 0..20 {
        let (kv, _) = a.get("/t/doc").await.unwrap();
        let seen_now = kv.unwrap().mod_revision;
        let (ta, tb) = (
            cas("/t/doc", seen_now, &format!("a{round}")),
            cas("/t/doc", seen_now, &format!("b{round}")),
        );
        let (ra, rb) = tokio::join!(a.txn(&ta), b.txn(&tb));
        let (ra, rb) = (ra.unwrap(), rb.unwrap());
        assert!(
            ra.succeeded != rb.succeeded,
            "round {round}: exactly one wins ({ra:?} / {rb:?})"
        );
        let loser = if ra.succeeded { &rb } else { &ra };
        let winner = if ra.succeeded { "a" } else { "b" };
        // The loser sees the winner's write in the same answer.
        let current = &loser.gets[0][0];
        assert_eq!(current.value, format!("{winner}{round}").as_bytes());
        assert!(current.mod_revision > seen_now);
    }
    let (kv, _) = a.get("/t/doc").await.unwrap();
    assert!(kv.unwrap().mod_revision > seen);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_compare_refuses_a_key_that_exists_and_a_value_compare_matches_bytes() {
    let cluster = Cluster::start(3).await;
    let c = cluster.client();
    let create = |v: &str| Txn {
        compare: vec![Compare::CreateRevision("/t/new".into(), 0)],
        success: vec![Op::Put {
            key: "/t/new".into(),
            value: v.as_bytes().to_vec().into(),
            lease: 0,
        }],
        failure: vec![],
    };
    assert!(c.txn(&create("first")).await.unwrap().succeeded);
    assert!(!c.txn(&create("second")).await.unwrap().succeeded);
    let same = Txn {
        compare: vec![Compare::Value("/t/new".into(), "first".as_bytes().to_vec().into())],
        success: vec![Op::Delete { key: "/t/new".into() }],
        failure: vec![],
    };
    assert!(c.txn(&same).await.unwrap().succeeded);
    assert_eq!(c.get("/t/new").await.unwrap().0, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_sees_puts_and_deletes_under_its_prefix_only() {
    let cluster = Cluster::start(3).await;
    let writer = cluster.client_of(&[2]);
    let watcher = cluster.client_of(&[0]);
    let (_, rev) = watcher.get("/t/").await.unwrap();
    let mut w = watcher.watch("/t/", rev + 1, false).await.unwrap();
    assert!(matches!(next(&mut w).await, WatchMsg::Created { .. }));
    writer.put("/other/x", b"not mine", 0).await.unwrap();
    let put_rev = writer.put("/t/a", b"1", 0).await.unwrap();
    writer.delete("/t/a").await.unwrap();
    let WatchMsg::Events { events, .. } = next(&mut w).await else {
        panic!("events expected")
    };
    assert!(
        matches!(&events[0], cutover_fleet::etcd::Event::Put(kv) if kv.key == "/t/a" && kv.value == "1" && kv.mod_revision == put_rev)
    );
    let deleted = if events.len() > 1 {
        events[1].clone()
    } else {
        let WatchMsg::Events { events, .. } = next(&mut w).await else {
            panic!("events expected")
        };
        events[0].clone()
    };
    assert!(matches!(deleted, cutover_fleet::etcd::Event::Delete(kv) if kv.key == "/t/a"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_stream_watches_several_ranges_in_revision_order_and_nothing_between_them() {
    let cluster = Cluster::start(3).await;
    let c = cluster.client();
    let keys = cutover_fleet::Keys::new("w");
    let from = c.put("/other", b"0", 0).await.unwrap() + 1;
    let ranges = keys.watched();
    let mut w = c.watch_ranges(&ranges, from, false).await.unwrap();
    for _ in &ranges {
        assert!(matches!(next(&mut w).await, WatchMsg::Created { .. }));
    }
    // Written in this order: the acks and history between the watched ranges are not sent.
    let written = [
        keys.service("chat"),
        keys.router("edge-1"),
        keys.leader(),
        keys.history("chat", 2),
        keys.host("gpu-a"),
        keys.router("edge-2"),
        keys.service("chat"),
    ];
    for k in &written {
        c.put(k, b"x", 0).await.unwrap();
    }
    let want = [
        keys.service("chat"),
        keys.leader(),
        keys.host("gpu-a"),
        keys.service("chat"),
    ];
    let mut seen = Vec::new();
    let mut last = 0;
    while seen.len() < want.len() {
        let WatchMsg::Events { events, .. } = next(&mut w).await else {
            continue;
        };
        for e in events {
            assert!(e.kv().mod_revision > last, "out of revision order: {e:?}");
            last = e.kv().mod_revision;
            seen.push(e.kv().key.clone());
        }
    }
    assert_eq!(seen, want);
    // The member the stream is on answers the silence question.
    assert!(c.probe(w.member(), &keys.leader()).await.unwrap() >= last);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_with_progress_notify_hears_the_revision_while_nothing_changes() {
    let cluster = Cluster::start(3).await;
    let c = cluster.client();
    let rev = c.put("/t/a", b"1", 0).await.unwrap();
    let mut w = c.watch("/t/", rev + 1, true).await.unwrap();
    assert!(matches!(next(&mut w).await, WatchMsg::Created { .. }));
    // The harness runs etcd with a 1 s progress interval.
    match next(&mut w).await {
        WatchMsg::Progress { revision } => assert!(revision >= rev),
        other => panic!("a progress notification expected, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_from_a_compacted_revision_is_reported_as_compacted() {
    let cluster = Cluster::start(3).await;
    let c = cluster.client();
    let behind = c.put("/t/a", b"1", 0).await.unwrap();
    c.put("/t/a", b"2", 0).await.unwrap();
    let latest = c.put("/t/a", b"3", 0).await.unwrap();
    c.compact(latest).await.unwrap();
    // A watcher that was behind (it last saw `behind`) asks for what followed.
    let mut w = c.watch("/t/", behind + 1, false).await.unwrap();
    let mut saw = Vec::new();
    loop {
        match next(&mut w).await {
            WatchMsg::Created { .. } => saw.push("created"),
            WatchMsg::Compacted { compact_revision } => {
                assert_eq!(compact_revision, latest);
                break;
            }
            other => panic!("compacted expected, got {other:?} after {saw:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_keeps_its_keys_until_revoked_and_an_expired_one_says_so() {
    let cluster = Cluster::start(3).await;
    let c = cluster.client();
    let lease = c.lease_grant(5).await.unwrap();
    assert!(lease.ttl >= 1);
    c.put("/t/router", b"ack", lease.id).await.unwrap();
    assert_eq!(c.lease_keepalive(lease.id).await.unwrap().map(|t| t > 0), Some(true));
    let (kv, _) = c.get("/t/router").await.unwrap();
    assert_eq!(kv.unwrap().lease, lease.id);
    c.lease_revoke(lease.id).await.unwrap();
    assert_eq!(c.get("/t/router").await.unwrap().0, None);
    assert_eq!(c.lease_keepalive(lease.id).await.unwrap(), None);
    // Revoking twice is not an error.
    c.lease_revoke(lease.id).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_moves_to_the_next_member_when_one_is_down() {
    let mut cluster = Cluster::start(3).await;
    cluster.stop(0);
    // Member 0 first in the list: refused at connect, so the call goes on to member 1.
    let c = cluster.client();
    let rev = c.put("/t/a", b"1", 0).await.unwrap();
    assert!(rev > 0);
    assert_eq!(c.get("/t/a").await.unwrap().0.unwrap().value, "1");
    // A client of the stopped member only says it cannot reach it, naming it.
    let alone = cluster.client_of(&[0]);
    match alone.get("/t/a").await {
        Err(EtcdError::Unreachable { tried }) => {
            assert!(tried[0].contains(&cluster.members[0].addr()), "{tried:?}")
        }
        other => panic!("unreachable expected, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_member_costs_one_timeout_then_the_next_member_answers() {
    let cluster = Cluster::start(3).await;
    let leader = cluster.leader().await;
    let follower = (leader + 1) % 3;
    cluster.pause(follower);
    let c = Etcd::with_timeout(
        vec![cluster.members[follower].addr(), cluster.members[leader].addr()],
        Duration::from_millis(500),
    );
    let rev = c.put("/t/a", b"1", 0).await.unwrap();
    assert!(rev > 0);
    cluster.resume(follower);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_through_a_killed_leader_fail_over_or_fail_honestly_within_their_timeout() {
    let mut cluster = Cluster::start(3).await;
    let leader = cluster.leader().await;
    let others: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    // The leader first: the write starts where it would hurt most.
    let c = cluster.client_of(&[leader, others[0], others[1]]);
    let (kv, _) = {
        c.put("/t/doc", b"v0", 0).await.unwrap();
        c.get("/t/doc").await.unwrap()
    };
    let mut seen = kv.unwrap().mod_revision;
    cluster.kill(leader);
    let mut ok = 0;
    for i in 0..10 {
        let started = Instant::now();
        let r = c.txn(&cas("/t/doc", seen, &format!("v{}", i + 1))).await;
        // Three members at most, each within the 2 s call timeout.
        assert!(
            started.elapsed() < Duration::from_secs(7),
            "call {i} hung: {:?}",
            started.elapsed()
        );
        match r {
            Ok(t) if t.succeeded => {
                ok += 1;
                seen = t.revision;
            }
            Ok(t) => {
                // An earlier attempt that timed out may have landed: the failure branch says.
                seen = t.gets[0][0].mod_revision;
            }
            Err(e) => {
                // An honest failure (no leader yet), never a hang.
                assert!(
                    matches!(e, EtcdError::Unreachable { .. } | EtcdError::Server { .. }),
                    "{e}"
                );
            }
        }
    }
    assert!(ok > 0, "the two remaining members elect a leader and take writes");
    let (kv, _) = cluster.client_of(&others).get("/t/doc").await.unwrap();
    assert_eq!(kv.unwrap().mod_revision, seen);
}
