//! Fleet mode on a real 3-member etcd cluster on loopback (started by the harness in
//! `crates/cutover-fleet/tests/support/cluster.rs`): routers that sync every switch and ack
//! it, a compare-and-swap race between routers, a router started while etcd is down, one
//! cut from etcd, one paused across a compaction, and a document no router can apply.

use std::process::Command;
use std::time::Duration;

use http::Method;
use serde_json::{json, Value};

use crate::support::*;

// Shared with the other fleet modules (one copy: a second `#[path]` of it is a duplicate).
#[path = "../../../cutover-fleet/tests/support/cluster.rs"]
pub(crate) mod cluster;

use cluster::Cluster;

/// `[store]` lines for fleet mode. Router configs put the services' text right after
/// `[store] path = ...`, so lines before the first table join `[store]`.
pub(crate) fn in_fleet(url: &str, fleet: &str, services: &str) -> String {
    format!("url = \"{url}\"\nfleet = \"{fleet}\"\n\n{services}")
}

/// Every router accepts one operator token (created on the first, its tokens file copied):
/// a release asked of a follower is forwarded to the leader with the caller's token.
pub(crate) async fn share_operator_token(routers: &mut [Router]) {
    let out = Command::new(CUTOVER)
        .args(["token", "create", "ops", "--role", "operator", "--config"])
        .arg(&routers[0].config)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let token = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let tokens = routers[0].dir.path().join("tokens.toml");
    for r in routers.iter_mut() {
        if r.dir.path() != tokens.parent().unwrap() {
            // `copy` keeps the file's mode (0600: a tokens file others can read is refused).
            std::fs::copy(&tokens, r.dir.path().join("tokens.toml")).unwrap();
        }
        r.token = token.clone();
    }
    for r in routers.iter() {
        let mut last = String::new();
        let ok = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                let a = r.api(Method::GET, "/v1/fleet", Value::Null).await;
                if a.status == 200 {
                    return;
                }
                last = a.text();
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
        .await;
        assert!(ok.is_ok(), "the shared token was not taken: {last}\n{}", r.log());
    }
}

pub(crate) async fn fleet_view(r: &Router) -> Value {
    let v = r.api(Method::GET, "/v1/fleet", Value::Null).await;
    assert_eq!(v.status, 200, "{}", v.text());
    v.json()
}

/// Waits until `r` sees `n` routers under `routers/` in the state `state`.
pub(crate) async fn wait_routers(r: &Router, n: usize, state: &str) -> Value {
    wait_for(&format!("{n} routers {state}"), Duration::from_secs(20), || async {
        let v = fleet_view(r).await;
        let k = v["routers"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|x| x["state"] == state)
            .count();
        (k == n).then_some(v)
    })
    .await
}

pub(crate) fn state_of<'v>(v: &'v Value, id: &str) -> &'v str {
    v["routers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["id"] == id)
        .and_then(|x| x["state"].as_str())
        .unwrap_or("absent")
}

pub(crate) async fn router_id(r: &Router) -> String {
    fleet_view(r).await["router_id"].as_str().unwrap().to_string()
}

pub(crate) async fn color_served(r: &Router) -> String {
    let c = http_client();
    send(&c, Method::GET, &r.url("/v1/models"), &[], "")
        .await
        .unwrap()
        .header("x-cutover-color")
        .to_string()
}

pub(crate) async fn wait_color(r: &Router, color: &str) {
    wait_for(
        &format!("the router to serve {color}"),
        Duration::from_secs(20),
        || async { (color_served(r).await == color).then_some(()) },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_routers_on_three_members_all_ack_a_switch_and_serve_only_the_new_color_after() {
    let etcd = Cluster::start(3).await;
    let blue = Mock::start("v1", &[]).await;
    let green = Mock::start("v2", &[]).await;
    let svc = static_service(&[&blue], &[&green], "");
    let mut routers = Vec::new();
    for i in 0..3 {
        routers.push(Router::start(&in_fleet(&etcd.url_of(i), "three", &svc)).await);
    }
    wait_routers(&routers[0], 3, "SYNCED").await;
    for (i, to) in ["blue", "green", "blue", "green"].iter().enumerate() {
        // Each switch through a different router.
        let r = &routers[i % 3];
        let s = r.switch(to).await;
        assert_eq!(s.status, 200, "{}", s.text());
        let v = s.json();
        assert_eq!(v["generation"], i + 1);
        assert_eq!(v["sync"]["of"], 3, "{v}");
        assert_eq!(v["sync"]["synced"], 3, "every router acked within the deadline: {v}");
        for x in v["sync"]["routers"].as_array().unwrap() {
            assert_eq!(x["state"], "SYNCED");
            assert_eq!(x["generation"], i + 1);
        }
        // Acked means applied: from now on no router sends a request to the old color.
        for r in &routers {
            for _ in 0..10 {
                assert_eq!(color_served(r).await, *to);
            }
            assert_eq!(r.status().await["generation"], i + 1);
        }
    }
    // The CLI reports the fleet too.
    let (code, out, err) = routers[1].cli_async(&["switch", "chat", "blue"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("3/3 routers synced"), "{out}");
    let metrics = get(&routers[1].admin_url("/metrics")).await.unwrap().text();
    assert!(metrics.contains("cutover_fleet_acks{state=\"SYNCED\"} 3"), "{metrics}");
    assert!(metrics.contains("cutover_fleet_connected 1"), "{metrics}");
    assert!(
        metrics.contains("cutover_fleet_switch_convergence_seconds_count 2"),
        "two switches went through router 1: {metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_routers_racing_to_switch_from_one_generation_one_wins_the_other_gets_409() {
    let etcd = Cluster::start(3).await;
    let blue = Mock::start("v1", &[]).await;
    let green = Mock::start("v2", &[]).await;
    let svc = static_service(&[&blue], &[&green], "");
    let a = Router::start(&in_fleet(&etcd.url_of(0), "race", &svc)).await;
    let b = Router::start(&in_fleet(&etcd.url_of(1), "race", &svc)).await;
    wait_routers(&a, 2, "SYNCED").await;
    assert_eq!(a.switch("blue").await.status, 200);
    for round in 0..5u64 {
        let generation = round + 1;
        let to = if round % 2 == 0 { "green" } else { "blue" };
        let body = json!({"to": to, "if_generation": generation});
        let path = "/v1/services/chat/switch";
        let (ra, rb) = tokio::join!(
            a.api(Method::POST, path, body.clone()),
            b.api(Method::POST, path, body.clone())
        );
        let mut statuses = [ra.status, rb.status];
        statuses.sort();
        assert_eq!(statuses, [200, 409], "round {round}: {} / {}", ra.text(), rb.text());
        let loser = if ra.status == 409 { &ra } else { &rb };
        assert_eq!(loser.json()["error"]["code"], "stale_generation", "{}", loser.text());
        // Exactly one generation more, everywhere.
        for r in [&a, &b] {
            wait_for(
                "both routers at the winner's generation",
                Duration::from_secs(10),
                || async { (r.status().await["generation"] == generation + 1).then_some(()) },
            )
            .await;
            assert_eq!(color_served(r).await, to);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_router_started_while_etcd_is_down_serves_its_snapshot_and_says_so() {
    let mut etcd = Cluster::start(1).await;
    let blue = Mock::start("v1", &[]).await;
    let green = Mock::start("v2", &[]).await;
    let svc = static_service(&[&blue], &[&green], "");
    let mut r = Router::start(&in_fleet(&etcd.url_of(0), "snap", &svc)).await;
    assert_eq!(r.switch("blue").await.status, 200);
    assert_eq!(r.switch("green").await.status, 200);
    r.proc.kill9();
    etcd.stop(0);
    r.spawn().await;
    // The last applied state, not a default (nothing live) and not blue.
    assert_eq!(color_served(&r).await, "green");
    assert_eq!(r.status().await["generation"], 2);
    let v = fleet_view(&r).await;
    assert_eq!(v["connected"], false, "{v}");
    assert!(v["since"].as_str().is_some_and(|s| !s.is_empty()), "{v}");
    let metrics = get(&r.admin_url("/metrics")).await.unwrap().text();
    assert!(metrics.contains("cutover_fleet_connected 0"), "{metrics}");
    // A switch cannot commit without etcd: refused, nothing changes.
    let s = r.switch("blue").await;
    assert_eq!(s.status, 503, "{}", s.text());
    assert_eq!(s.json()["error"]["code"], "fleet_unavailable");
    assert_eq!(color_served(&r).await, "green");
    etcd.restart(0).await;
    wait_for("the router to reconnect", Duration::from_secs(20), || async {
        (fleet_view(&r).await["connected"] == true).then_some(())
    })
    .await;
    let s = r.switch("blue").await;
    assert_eq!(s.status, 200, "{}", s.text());
    assert_eq!(s.json()["generation"], 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_router_cut_from_etcd_keeps_serving_is_reported_lost_and_catches_up_after() {
    let mut etcd = Cluster::start(3).await;
    let blue = Mock::start("v1", &[]).await;
    let green = Mock::start("v2", &[]).await;
    let svc = static_service(&[&blue], &[&green], "");
    let a = Router::start(&in_fleet(&etcd.url(), "cut", &svc)).await;
    // Router b knows only member 2: stopping it cuts b from the fleet.
    let b = Router::start(&in_fleet(&etcd.url_of(2), "cut", &svc)).await;
    let b_id = router_id(&b).await;
    wait_routers(&a, 2, "SYNCED").await;
    let s = a.switch("blue").await.json();
    assert_eq!(s["sync"]["synced"], 2, "{s}");
    etcd.stop(2);
    // Its lease runs out: the others see it LOST.
    wait_for("b reported lost", Duration::from_secs(20), || async {
        (state_of(&fleet_view(&a).await, &b_id) == "LOST").then_some(())
    })
    .await;
    let s = a.switch("green").await;
    assert_eq!(s.status, 200, "{}", s.text());
    let v = s.json();
    assert_eq!(v["sync"]["of"], 2, "{v}");
    assert_eq!(v["sync"]["synced"], 1, "{v}");
    assert_eq!(state_of(&v["sync"], &b_id), "LOST", "{v}");
    // Cut off, b keeps serving what it applied last.
    assert_eq!(color_served(&b).await, "blue");
    assert_eq!(fleet_view(&b).await["connected"], false);
    etcd.restart(2).await;
    wait_color(&b, "green").await;
    wait_for("b synced again", Duration::from_secs(20), || async {
        (state_of(&fleet_view(&a).await, &b_id) == "SYNCED").then_some(())
    })
    .await;
    assert_eq!(b.status().await["generation"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_router_paused_across_switches_and_a_compaction_lands_on_the_latest_generation() {
    let etcd = Cluster::start(3).await;
    let blue = Mock::start("v1", &[]).await;
    let green = Mock::start("v2", &[]).await;
    let svc = static_service(&[&blue], &[&green], "");
    let a = Router::start(&in_fleet(&etcd.url(), "pause", &svc)).await;
    let b = Router::start(&in_fleet(&etcd.url(), "pause", &svc)).await;
    let b_id = router_id(&b).await;
    wait_routers(&a, 2, "SYNCED").await;
    assert_eq!(a.switch("blue").await.status, 200);
    b.proc.signal("STOP");
    let mut last = Value::Null;
    for to in ["green", "blue", "green"] {
        let s = a.switch(to).await;
        assert_eq!(s.status, 200, "{}", s.text());
        last = s.json();
        let state = state_of(&last["sync"], &b_id).to_string();
        assert!(
            state == "STALE" || state == "LOST",
            "a paused router is not synced: {last}"
        );
    }
    assert_eq!(last["generation"], 4);
    let c = etcd.client();
    let (_, revision) = c.get("/cutover/pause/services/chat").await.unwrap();
    c.compact(revision).await.unwrap();
    b.proc.signal("CONT");
    wait_for("b at the latest generation", Duration::from_secs(30), || async {
        (b.status().await["generation"] == 4).then_some(())
    })
    .await;
    assert_eq!(color_served(&b).await, "green");
    wait_for("b synced again", Duration::from_secs(20), || async {
        (state_of(&fleet_view(&a).await, &b_id) == "SYNCED").then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_document_no_router_can_apply_is_rejected_and_the_old_state_kept() {
    let etcd = Cluster::start(3).await;
    let blue = Mock::start("v1", &[]).await;
    let green = Mock::start("v2", &[]).await;
    let svc = static_service(&[&blue], &[&green], "");
    let a = Router::start(&in_fleet(&etcd.url(), "nack", &svc)).await;
    let b = Router::start(&in_fleet(&etcd.url_of(1), "nack", &svc)).await;
    wait_routers(&a, 2, "SYNCED").await;
    assert_eq!(a.switch("blue").await.status, 200);
    // Put by hand: a color that does not exist.
    let bad = r#"{"generation": 7, "live": "purple", "versions": {}, "updated_at": "x", "actor": "hand"}"#;
    etcd.client()
        .put("/cutover/nack/services/chat", bad.as_bytes(), 0)
        .await
        .unwrap();
    let v = wait_routers(&a, 2, "REJECTED").await;
    for r in v["routers"].as_array().unwrap() {
        let reason = r["reason"].as_str().unwrap_or("");
        assert!(reason.contains("chat") && reason.contains("purple"), "{r}");
        assert_eq!(r["generations"]["chat"], 1, "the old state is what it acks: {r}");
    }
    for r in [&a, &b] {
        assert_eq!(color_served(r).await, "blue");
        assert_eq!(r.status().await["generation"], 1);
    }
    // A valid document after it is applied again, and clears the rejection.
    let good = r#"{"generation": 8, "live": "green", "versions": {"blue": "v1", "green": "v2"}, "updated_at": "y", "actor": "hand"}"#;
    etcd.client()
        .put("/cutover/nack/services/chat", good.as_bytes(), 0)
        .await
        .unwrap();
    wait_routers(&a, 2, "SYNCED").await;
    for r in [&a, &b] {
        wait_color(r, "green").await;
    }
    // What a switch through `a` leaves in etcd when its commit landed but its answer was an
    // error (etcd changing leaders): the document and its history record, both naming `a`.
    // `a` finds it its own and writes the line its history would have had; `b` only applies.
    let id = router_id(&a).await;
    let doc = format!(
        r#"{{"generation": 9, "live": "blue", "versions": {{"blue": "v1", "green": "v2"}}, "updated_at": "z", "actor": "alice", "router": "{id}"}}"#
    );
    let record = format!(
        r#"{{"at": "z", "kind": "switched", "from": "green", "to": "blue", "generation": 9, "version": "v1", "actor": "alice", "reason": "its answer was lost", "router": "{id}"}}"#
    );
    let c = etcd.client();
    c.put("/cutover/nack/history/chat/00000000000000000009", record.as_bytes(), 0)
        .await
        .unwrap();
    c.put("/cutover/nack/services/chat", doc.as_bytes(), 0).await.unwrap();
    for r in [&a, &b] {
        wait_color(r, "blue").await;
    }
    let mine = history_of(&a).await;
    let line = mine
        .iter()
        .find(|e| e["reason"] == "its answer was lost")
        .unwrap_or_else(|| panic!("not in a's history: {mine:?}"));
    assert_eq!(
        (line["generation"].as_u64(), line["actor"].as_str()),
        (Some(9), Some("alice")),
        "{line}"
    );
    assert!(!history_of(&b)
        .await
        .iter()
        .any(|e| e["reason"] == "its answer was lost"));
}

async fn history_of(r: &Router) -> Vec<Value> {
    let h = r.api(Method::GET, "/v1/services/chat/history", Value::Null).await;
    h.json()["history"].as_array().unwrap().clone()
}

/// Switching faster than one per third of the ack TTL, for several TTLs: every router
/// keeps its ack (its lease renewed on its own clock, not only when no ack was written
/// for a while), so every answer says 3/3. A router's two quick switches in a row do not
/// make it think etcd was restored (its watch brings the first after it published the
/// second).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steady_switching_keeps_every_ack_alive_and_every_answer_says_all_routers_synced() {
    let etcd = Cluster::start(3).await;
    let blue = Mock::start("v1", &[]).await;
    let green = Mock::start("v2", &[]).await;
    let svc = static_service(&[&blue], &[&green], "");
    let mut routers = Vec::new();
    for i in 0..3 {
        routers.push(Router::start(&in_fleet(&etcd.url_of(i), "steady", &svc)).await);
    }
    wait_routers(&routers[0], 3, "SYNCED").await;
    // Every delete under routers/ is an ack that went away (a lease that ran out).
    let mut w = etcd.client().watch("/cutover/steady/routers/", 0, false).await.unwrap();
    let gone = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = gone.clone();
    let deletes = tokio::spawn(async move {
        while let Ok(m) = w.next().await {
            if let cutover_fleet::etcd::WatchMsg::Events { events, .. } = m {
                for e in events {
                    if let cutover_fleet::etcd::Event::Delete(kv) = e {
                        seen.lock().unwrap().push(kv.key);
                    }
                }
            }
        }
    });
    // 4 switches a second for 3.5 TTLs (ACK_TTL is 5 s), two in a row through each router.
    let until = tokio::time::Instant::now() + Duration::from_millis(17_500);
    let mut n = 0usize;
    let mut short = Vec::new();
    while tokio::time::Instant::now() < until {
        let r = &routers[(n / 2) % 3];
        let s = r.switch(if n % 2 == 0 { "green" } else { "blue" }).await;
        assert_eq!(s.status, 200, "{}", s.text());
        let v = s.json();
        if v["sync"]["synced"] != 3 || v["sync"]["of"] != 3 {
            short.push(v["sync"].clone());
        }
        n += 1;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(n >= 40, "only {n} switches in 17.5 s");
    assert!(
        short.is_empty(),
        "{} of {n} answers were not 3/3: {short:?}",
        short.len()
    );
    assert!(
        !deletes.is_finished(),
        "the watch on routers/ broke; deletes may have been missed"
    );
    deletes.abort();
    let gone = gone.lock().unwrap().clone();
    assert!(gone.is_empty(), "acks that went away during the storm: {gone:?}");
    for r in &routers {
        wait_for("the last generation everywhere", Duration::from_secs(10), || async {
            (r.status().await["generation"] == n).then_some(())
        })
        .await;
        let log = r.log();
        assert!(
            !log.contains("older generation than this router serves"),
            "a false restore warning:\n{log}"
        );
        assert!(!log.contains("router LOST"), "{log}");
    }
}
