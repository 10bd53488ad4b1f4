//! Fleet mode under etcd's failures, on a real 3-member cluster: the leader SIGKILLed while
//! switches go through a router (each switch happens everywhere or the client is told it did
//! not), etcd wiped and restored from an older snapshot (the revision goes backwards: routers
//! re-read, keep the newer generation they serve and say so), and a router cut from its
//! member by a TCP proxy the test pauses (STALE, then LOST, serving all along, then caught up).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use http::Method;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::support::*;

use crate::fleet::cluster::Cluster;
use crate::fleet::{color_served, fleet_view, in_fleet, state_of, wait_routers};

/// Waits until `r` sees `n` routers SYNCED.
async fn wait_synced(r: &Router, n: usize) {
    wait_routers(r, n, "SYNCED").await;
}

async fn metric(r: &Router, line_start: &str) -> String {
    let m = get(&r.admin_url("/metrics")).await.unwrap().text();
    m.lines()
        .find(|l| l.starts_with(line_start))
        .unwrap_or_else(|| panic!("no {line_start} in {m}"))
        .to_string()
}

/// The service document etcd holds now: (generation, live color).
async fn stored_doc(etcd: &Cluster, fleet: &str) -> (u64, String) {
    let (kv, _) = etcd
        .client()
        .get(&format!("/cutover/{fleet}/services/chat"))
        .await
        .unwrap();
    let v: Value = serde_json::from_slice(&kv.expect("the service's document").value).unwrap();
    (
        v["generation"].as_u64().unwrap(),
        v["live"].as_str().unwrap().to_string(),
    )
}

/// Every history record etcd holds, by generation: the reason each switch was given.
async fn stored_history(etcd: &Cluster, fleet: &str) -> BTreeMap<u64, String> {
    let r = etcd
        .client()
        .range_prefix(&format!("/cutover/{fleet}/history/chat/"))
        .await
        .unwrap();
    r.kvs
        .iter()
        .map(|kv| {
            let v: Value = serde_json::from_slice(&kv.value).unwrap();
            (
                v["generation"].as_u64().unwrap(),
                v["reason"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_the_etcd_leader_during_switches_each_switch_happens_everywhere_or_the_client_is_told_no() {
    let mut etcd = Cluster::start(3).await;
    let blue = Mock::start("v1", &[]).await;
    let green = Mock::start("v2", &[]).await;
    let svc = static_service(&[&blue], &[&green], "");
    let mut routers = Vec::new();
    for _ in 0..3 {
        routers.push(Router::start(&in_fleet(&etcd.url(), "kill", &svc)).await);
    }
    wait_synced(&routers[0], 3).await;
    let a = &routers[0];
    // (attempt, reason, status, answer) of every attempt.
    let mut answers: Vec<(usize, String, u16, Value)> = Vec::new();
    let (mut one, mut two) = (None, Vec::new());
    for i in 0..24 {
        match i {
            9 => etcd.restart(one.take().unwrap()).await,
            17 => {
                for k in std::mem::take(&mut two) {
                    etcd.restart(k).await;
                }
            }
            _ => {}
        }
        let st = a.status().await;
        let generation = st["generation"].as_u64().unwrap();
        let to = if st["live"] == "green" { "blue" } else { "green" };
        let reason = format!("attempt-{i}");
        let body = json!({"to": to, "if_generation": generation, "reason": reason});
        let switch = a.api(Method::POST, "/v1/services/chat/switch", body);
        let r = if i == 4 || i == 13 {
            // SIGKILL while this switch is on its way: at 4 the leader (a quorum is left),
            // at 13 the leader and a follower (no quorum until 17).
            let leader = etcd.leader().await;
            let follower = (leader + 1) % 3;
            let (r, ()) = tokio::join!(switch, async {
                tokio::time::sleep(Duration::from_millis(2)).await;
                etcd.kill(leader);
                if i == 13 {
                    etcd.kill(follower);
                }
            });
            if i == 4 {
                one = Some(leader);
            } else {
                two = vec![leader, follower];
            }
            r
        } else {
            switch.await
        };
        let v: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
        answers.push((i, reason, r.status.as_u16(), v));
    }

    let history = stored_history(&etcd, "kill").await;
    let (final_gen, final_live) = stored_doc(&etcd, "kill").await;
    let by_reason: BTreeMap<&str, u64> = history.iter().map(|(g, r)| (r.as_str(), *g)).collect();
    let mut ok = 0;
    let mut landed_late = 0;
    for (i, reason, status, v) in &answers {
        let held = by_reason.get(reason.as_str()).copied();
        match status {
            200 => {
                ok += 1;
                let g = v["generation"].as_u64().unwrap();
                assert_eq!(
                    held,
                    Some(g),
                    "a 200 for a switch etcd does not hold: {reason} {v}; history {history:?}"
                );
                assert!(v["sync"]["of"].as_u64().is_some(), "{v}");
            }
            409 | 503 => {
                let code = v["error"]["code"].as_str().unwrap_or("");
                let message = v["error"]["message"].as_str().unwrap_or("");
                assert!(
                    code == "stale_generation" || code == "fleet_unavailable",
                    "{reason}: {status} {v}"
                );
                assert!(!message.is_empty(), "{v}");
                if held.is_some() {
                    // Only an unconfirmed write may land after its error, and its
                    // answer must have said it might.
                    landed_late += 1;
                    assert!(
                        message.contains("may still commit") && !message.contains("nothing changed"),
                        "{reason} answered {status} {v} but etcd holds it; history {history:?}"
                    );
                }
            }
            other => panic!("{reason}: unexpected {other}: {v}"),
        }
        if (14..17).contains(i) {
            // No quorum: refused, honestly, and not in etcd.
            assert_eq!(*status, 503, "{reason}: {v}");
            assert_eq!(v["error"]["code"], "fleet_unavailable", "{v}");
            assert_eq!(held, None, "{reason}: {v}");
        }
    }
    let statuses: Vec<u16> = answers.iter().map(|a| a.2).collect();
    eprintln!("answers across the kills: {statuses:?}; errors whose write landed later: {landed_late}");
    assert!(ok >= 15, "a failover keeps switches going: {answers:?}");
    // Every generation etcd holds is in its history once, and the router that took the
    // switches applied each.
    assert_eq!(history.len() as u64, final_gen, "{history:?}");
    assert_eq!(ok as u64 + landed_late, final_gen, "{answers:?}");
    // Every router serves what etcd holds.
    for r in &routers {
        wait_for("every router on etcd's generation", Duration::from_secs(30), || async {
            (r.status().await["generation"] == final_gen).then_some(())
        })
        .await;
        assert_eq!(color_served(r).await, final_live);
    }
    // The router that took them has each in its own history too, the ones whose answer
    // was an unconfirmed error included (their line comes from etcd's record).
    let local = a
        .api(Method::GET, "/v1/services/chat/history?limit=100", Value::Null)
        .await;
    let local_reasons: Vec<String> = local.json()["history"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["reason"].as_str().map(String::from))
        .collect();
    for reason in history.values() {
        assert!(
            local_reasons.contains(reason),
            "{reason} is in etcd's history but not in the router's: {local_reasons:?}"
        );
    }
    // And the fleet switches as before.
    let s = a.switch(if final_live == "blue" { "green" } else { "blue" }).await;
    assert_eq!(s.status, 200, "{}", s.text());
    wait_synced(a, 3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_restored_from_an_older_snapshot_routers_re_read_keep_the_newer_generation_and_report_it() {
    let mut etcd = Cluster::start(3).await;
    let blue = Mock::start("v1", &[]).await;
    let green = Mock::start("v2", &[]).await;
    let svc = static_service(&[&blue], &[&green], "");
    let a = Router::start(&in_fleet(&etcd.url(), "restore", &svc)).await;
    let b = Router::start(&in_fleet(&etcd.url(), "restore", &svc)).await;
    wait_synced(&a, 2).await;
    assert_eq!(a.switch("blue").await.status, 200);
    let snapshot = etcd.root().join("backup.db");
    etcd.snapshot_save(0, &snapshot);
    for to in ["green", "blue", "green", "blue", "green"] {
        let s = a.switch(to).await;
        assert_eq!(s.status, 200, "{}", s.text());
    }
    assert_eq!(stored_doc(&etcd, "restore").await.0, 6);
    let before = [
        fleet_view(&a).await["revision"].as_i64().unwrap(),
        fleet_view(&b).await["revision"].as_i64().unwrap(),
    ];
    etcd.restore_from(&snapshot).await;
    assert_eq!(stored_doc(&etcd, "restore").await, (1, "blue".to_string()));
    for (r, before) in [(&a, before[0]), (&b, before[1])] {
        let v = wait_for(
            "the router re-read the restored etcd",
            Duration::from_secs(30),
            || async {
                let v = fleet_view(r).await;
                (v["connected"] == true && v["ahead_of_etcd"]["chat"] == json!({"etcd": 1, "serving": 6})).then_some(v)
            },
        )
        .await;
        assert!(
            v["revision"].as_i64().unwrap() < before,
            "the revision went back ({before} before): {v}"
        );
        // An older generation is never applied: it keeps what it served.
        assert_eq!(color_served(r).await, "green");
        assert_eq!(r.status().await["generation"], 6);
        assert_eq!(
            metric(r, "cutover_fleet_ahead_of_etcd ").await,
            "cutover_fleet_ahead_of_etcd 1"
        );
    }
    // The next switch writes a higher generation over the restored document: everyone
    // applies it and nobody is ahead of etcd any more.
    let s = a.switch("blue").await;
    assert_eq!(s.status, 200, "{}", s.text());
    assert_eq!(s.json()["generation"], 7);
    assert_eq!(stored_doc(&etcd, "restore").await, (7, "blue".to_string()));
    for r in [&a, &b] {
        wait_for("the router at generation 7", Duration::from_secs(20), || async {
            let v = fleet_view(r).await;
            (r.status().await["generation"] == 7 && v["ahead_of_etcd"] == json!({})).then_some(())
        })
        .await;
        assert_eq!(color_served(r).await, "blue");
        assert_eq!(
            metric(r, "cutover_fleet_ahead_of_etcd ").await,
            "cutover_fleet_ahead_of_etcd 0"
        );
    }
    wait_synced(&a, 2).await;
}

/// A TCP forwarder to one etcd member whose traffic the test can freeze: while paused no
/// byte moves either way on any connection, old or new (a firewall dropping packets, not
/// one refusing connections). On resume the connections that lived through the pause are
/// closed, their held bytes dropped (as after a NAT or conntrack entry timed out): requests
/// the router gave up on are not delivered late; new connections flow.
struct Cut {
    port: u16,
    gate: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Cut {
    async fn start(to: String) -> Cut {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let (gate, rx) = watch::channel(false);
        let task = tokio::spawn(async move {
            while let Ok((down, _)) = l.accept().await {
                let rx = rx.clone();
                let to = to.clone();
                tokio::spawn(async move {
                    let Ok(up) = TcpStream::connect(&to).await else { return };
                    let (dr, dw) = down.into_split();
                    let (ur, uw) = up.into_split();
                    tokio::join!(pipe(dr, uw, rx.clone()), pipe(ur, dw, rx));
                });
            }
        });
        Cut { port, gate, task }
    }

    fn url(&self) -> String {
        format!("etcd://127.0.0.1:{}", self.port)
    }

    fn pause(&self) {
        self.gate.send_replace(true);
    }

    fn resume(&self) {
        self.gate.send_replace(false);
    }
}

impl Drop for Cut {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut paused: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if *paused.borrow_and_update() {
            break;
        }
        let n = tokio::select! {
            n = from.read(&mut buf) => match n {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            },
            _ = paused.changed() => continue,
        };
        if *paused.borrow() || to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    // Frozen until the resume, then closed.
    let _ = paused.wait_for(|p| !*p).await;
    let _ = to.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_router_cut_by_a_paused_tcp_proxy_is_stale_then_lost_keeps_serving_and_catches_up() {
    let etcd = Cluster::start(3).await;
    let blue = Mock::start("v1", &[]).await;
    let green = Mock::start("v2", &[]).await;
    let svc = static_service(&[&blue], &[&green], "");
    let cut = Arc::new(Cut::start(etcd.members[2].addr()).await);
    let members01 = format!("etcd://{},{}", etcd.members[0].addr(), etcd.members[1].addr());
    // A short ack deadline: A's answer comes well within B's lease (5 s) after the cut.
    let a = Router::start(&in_fleet(&members01, "proxy", &format!("ack_timeout = \"1s\"\n{svc}"))).await;
    let b = Router::start(&in_fleet(&cut.url(), "proxy", &svc)).await;
    let b_id = fleet_view(&b).await["router_id"].as_str().unwrap().to_string();
    wait_synced(&a, 2).await;
    let s = a.switch("blue").await.json();
    assert_eq!(s["sync"]["synced"], 2, "{s}");

    cut.pause();
    let s = a.switch("green").await;
    assert_eq!(s.status, 200, "{}", s.text());
    let v = s.json();
    assert_eq!(v["sync"]["of"], 2, "{v}");
    assert_eq!(v["sync"]["synced"], 1, "{v}");
    assert_eq!(state_of(&v["sync"], &b_id), "STALE", "its lease still runs: {v}");
    // Its lease runs out: LOST.
    wait_for("b reported LOST", Duration::from_secs(20), || async {
        (state_of(&fleet_view(&a).await, &b_id) == "LOST").then_some(())
    })
    .await;
    // Cut off, b keeps serving what it applied last, and knows it is cut off.
    wait_for("b says it is cut from etcd", Duration::from_secs(30), || async {
        (fleet_view(&b).await["connected"] == false).then_some(())
    })
    .await;
    for _ in 0..5 {
        assert_eq!(color_served(&b).await, "blue");
    }
    assert_eq!(b.status().await["generation"], 1);
    assert_eq!(
        metric(&b, "cutover_fleet_connected ").await,
        "cutover_fleet_connected 0"
    );
    // A switch through b cannot commit: an honest 503, nothing changed.
    let s = b.switch("green").await;
    assert_eq!(s.status, 503, "{}", s.text());
    assert_eq!(s.json()["error"]["code"], "fleet_unavailable", "{}", s.text());
    assert_eq!(color_served(&b).await, "blue");

    cut.resume();
    wait_for("b caught up", Duration::from_secs(30), || async {
        (color_served(&b).await == "green").then_some(())
    })
    .await;
    assert_eq!(b.status().await["generation"], 2);
    wait_for("b SYNCED again", Duration::from_secs(20), || async {
        (state_of(&fleet_view(&a).await, &b_id) == "SYNCED").then_some(())
    })
    .await;
    assert_eq!(fleet_view(&b).await["connected"], true);
    let s = b.switch("blue").await;
    assert_eq!(s.status, 200, "{}", s.text());
    assert_eq!(s.json()["sync"]["synced"], 2, "{}", s.text());
}
