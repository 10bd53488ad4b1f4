//! Fleet mode's one controller on a real 3-member etcd and three real routers: exactly one
//! leader, a release asked of a follower runs on the leader and completes; a leader paused
//! past its lease is fenced out and steps down; a leader killed mid-release leaves it
//! interrupted for the new one, which aborts it; the old color's scale-down waits while a
//! router is STALE.

use std::time::Duration;

use http::Method;
use serde_json::{json, Value};

use crate::support::*;

use crate::fleet::cluster::Cluster;
use crate::fleet::{color_served, fleet_view, share_operator_token, state_of, wait_color};

/// A short bake that completes without traffic, and a quick scale-down.
const QUICK: &str = "scale_down_delay = \"300ms\"\n[services.chat.release.verify]\nbake = \"1s\"\nmin_requests = 1000\non_inconclusive = \"complete\"\n";
/// As `QUICK`, but the release waits for an approval before its switch.
const MANUAL: &str = "promotion = \"manual\"\nscale_down_delay = \"300ms\"\n[services.chat.release.verify]\nbake = \"1s\"\nmin_requests = 1000\non_inconclusive = \"complete\"\n";

/// Manual, with the shortest bake and delay: the scale-down is due well within the 5 s a
/// paused router stays STALE before its ack lease makes it LOST.
const MANUAL_SHORT: &str = "promotion = \"manual\"\nscale_down_delay = \"100ms\"\n[services.chat.release.verify]\nbake = \"300ms\"\nmin_requests = 1000\non_inconclusive = \"complete\"\n";

/// Three routers (`r0`..`r2`, each on its own etcd member) of fleet `fleet`, blue live,
/// every router accepting one operator token (the tokens file of `r0`, copied).
struct Fleet {
    etcd: Cluster,
    routers: Vec<Router>,
    _mocks: (Mock, Mock),
    fleet: String,
}

impl Fleet {
    async fn start(fleet: &str, release: &str) -> Fleet {
        let etcd = Cluster::start(3).await;
        let blue = Mock::start("v1", &[]).await;
        let green = Mock::start("v2", &[]).await;
        let svc = format!(
            "{}\n[services.chat.release]\n{release}\n",
            static_service(&[&blue], &[&green], "")
        );
        let mut routers = Vec::new();
        for i in 0..3 {
            let store = format!(
                "url = \"{}\"\nfleet = \"{fleet}\"\nrouter_id = \"r{i}\"\n\n{svc}",
                etcd.url_of(i)
            );
            routers.push(Router::start(&store).await);
        }
        share_operator_token(&mut routers).await;
        let f = Fleet {
            etcd,
            routers,
            _mocks: (blue, green),
            fleet: fleet.to_string(),
        };
        f.wait_synced(0, 3).await;
        let s = f.routers[0].switch("blue").await;
        assert_eq!(s.status, 200, "{}", s.text());
        f
    }

    /// Waits until router `i` sees `n` routers SYNCED.
    async fn wait_synced(&self, i: usize, n: usize) {
        wait_for(&format!("{n} routers synced"), Duration::from_secs(20), || async {
            let v = fleet_view(&self.routers[i]).await;
            let k = v["routers"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|x| x["state"] == "SYNCED")
                .count();
            (k == n).then_some(())
        })
        .await;
    }

    /// Waits until every router in `among` names the same leader, which is one of `among`
    /// and the only one saying it leads; returns its index.
    async fn wait_leader(&self, among: &[usize]) -> usize {
        wait_for("one leader every router agrees on", Duration::from_secs(30), || async {
            let mut named = Vec::new();
            let mut leading = Vec::new();
            for &i in among {
                let v = fleet_view(&self.routers[i]).await;
                named.push(v["leader"]["router_id"].as_str().unwrap_or("").to_string());
                if v["is_leader"] == true {
                    leading.push(i);
                }
            }
            let first = named[0].clone();
            let agreed = !first.is_empty() && named.iter().all(|n| *n == first);
            match (agreed, leading.as_slice()) {
                (true, [one]) if first == format!("r{one}") => Some(*one),
                _ => None,
            }
        })
        .await
    }

    /// The stored value at `key` under the fleet's prefix, and its `mod_revision`.
    async fn stored(&self, key: &str) -> (Value, i64) {
        let (kv, _) = self
            .etcd
            .client()
            .get(&format!("/cutover/{}/{key}", self.fleet))
            .await
            .unwrap();
        let kv = kv.unwrap_or_else(|| panic!("no {key} in etcd"));
        (serde_json::from_slice(&kv.value).unwrap(), kv.mod_revision)
    }
}

fn release_key(id: i64) -> String {
    format!("releases/chat/{id:020}")
}

async fn history_kinds(r: &Router, id: i64) -> Vec<String> {
    let h = r
        .api(Method::GET, "/v1/services/chat/history", Value::Null)
        .await
        .json();
    let entries = h
        .as_array()
        .or_else(|| h["history"].as_array())
        .cloned()
        .unwrap_or_default();
    entries
        .iter()
        .filter(|e| e["release_id"] == id)
        .filter_map(|e| e["kind"].as_str().map(String::from))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_leader_and_a_release_asked_of_a_follower_runs_on_the_leader_and_completes() {
    let f = Fleet::start("lead", QUICK).await;
    let leader = f.wait_leader(&[0, 1, 2]).await;
    let follower = (leader + 1) % 3;
    let other = (leader + 2) % 3;
    let r = f.routers[follower]
        .api(Method::POST, "/v1/services/chat/releases", json!({"version": "v2"}))
        .await;
    assert_eq!(r.status, 202, "{}", r.text());
    assert_eq!(
        r.header("x-cutover-leader"),
        format!("r{leader}"),
        "answered by the leader"
    );
    let id = r.json()["id"].as_i64().unwrap();
    // Every router shows the release (the others from etcd), and it completes.
    let d = f.routers[other].wait_end(id, Duration::from_secs(30)).await;
    assert_eq!(d["outcome"], "completed", "{d}");
    assert_eq!(d["version"], "v2");
    let (stored, _) = f.stored(&release_key(id)).await;
    assert_eq!(stored["outcome"], "completed", "{stored}");
    for r in &f.routers {
        wait_for("green everywhere", Duration::from_secs(10), || async {
            (color_served(r).await == "green").then_some(())
        })
        .await;
        let list = r
            .api(Method::GET, "/v1/services/chat/releases", Value::Null)
            .await
            .json();
        assert!(
            list["releases"].as_array().unwrap().iter().any(|x| x["id"] == id),
            "{list}"
        );
    }
    // The run happened on the leader: its history has the release from start to end.
    let kinds = history_kinds(&f.routers[leader], id).await;
    for k in ["release_started", "switched", "release_completed"] {
        assert!(kinds.iter().any(|x| x == k), "{k} missing from {kinds:?}");
    }
    // The followers ran nothing.
    assert!(history_kinds(&f.routers[follower], id).await.is_empty());
    // The switch's record in etcd names the leader as the router that made it.
    let (doc, _) = f.stored("services/chat").await;
    assert_eq!(doc["router"], format!("r{leader}"), "{doc}");
    // The CLI shows the fleet and its leader.
    let (code, out, err) = f.routers[follower].cli_async(&["fleet", "status"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(&format!("leader: r{leader}")), "{out}");
    assert!(out.contains("3/3 routers synced"), "{out}");
    // A clean stop of the leader gives its leases up: the key is gone at once (no wait for
    // the TTL) and another router leads.
    let mut f = f;
    f.routers[leader].proc.signal("TERM");
    assert_eq!(f.routers[leader].proc.wait_exit(Duration::from_secs(20)), Some(0));
    assert!(
        f.routers[leader]
            .log()
            .contains("giving up the leadership (clean stop)"),
        "{}",
        f.routers[leader].log()
    );
    let rest: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    let next = f.wait_leader(&rest).await;
    assert_ne!(next, leader);
    let v = fleet_view(&f.routers[next]).await;
    assert_ne!(
        state_of(&v, &format!("r{leader}")),
        "SYNCED",
        "the stopped router's ack went with its lease: {v}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_paused_past_its_lease_is_fenced_out_and_steps_down() {
    let f = Fleet::start("fence", MANUAL).await;
    let old = f.wait_leader(&[0, 1, 2]).await;
    let id = f.routers[old].release("v2").await;
    f.routers[old]
        .wait_phase(id, "awaiting_approval", Duration::from_secs(20))
        .await;
    f.routers[old].proc.signal("STOP");
    let rest: Vec<usize> = (0..3).filter(|i| *i != old).collect();
    let new = f.wait_leader(&rest).await;
    // The new leader took the release over as interrupted.
    let d = f.routers[new].wait_end(id, Duration::from_secs(20)).await;
    assert_eq!(d["outcome"], "interrupted", "{d}");
    let (_, release_rev) = f.stored(&release_key(id)).await;
    let (_, service_rev) = f.stored("services/chat").await;
    f.routers[old].proc.signal("CONT");
    wait_for("the old leader to step down", Duration::from_secs(20), || async {
        let v = fleet_view(&f.routers[old]).await;
        (v["is_leader"] == false && v["leader"]["router_id"] == format!("r{new}")).then_some(())
    })
    .await;
    let log = f.routers[old].log();
    assert!(log.contains("stepped down as leader"), "{log}");
    assert!(log.contains("release halted"), "{log}");
    // Nothing it ran wrote after it lost: the release and the routing are as the new leader
    // left them, and its own copy says it was halted.
    let (stored, rev) = f.stored(&release_key(id)).await;
    assert_eq!(rev, release_rev, "{stored}");
    assert_eq!(stored["outcome"], "interrupted");
    assert_eq!(f.stored("services/chat").await.1, service_rev);
    // An approval asked of the old leader goes to the new one, which has no run to approve.
    let a = f.routers[old]
        .api(
            Method::POST,
            &format!("/v1/services/chat/releases/{id}/approve"),
            Value::Null,
        )
        .await;
    assert_eq!(a.status, 409, "{}", a.text());
    assert_eq!(a.header("x-cutover-leader"), format!("r{new}"));
    for r in &f.routers {
        assert_eq!(color_served(r).await, "blue");
    }
    // The old leader, a follower now, forwards a new release to the new leader; it runs.
    let r = f.routers[old]
        .api(Method::POST, "/v1/services/chat/releases", json!({"version": "v2"}))
        .await;
    assert_eq!(r.status, 202, "{}", r.text());
    let id2 = r.json()["id"].as_i64().unwrap();
    assert!(id2 > id, "release ids go on past the fleet's: {id2} after {id}");
    let a = f.routers[old]
        .api(
            Method::POST,
            &format!("/v1/services/chat/releases/{id2}/abort"),
            Value::Null,
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.text());
    let d = f.routers[new].wait_end(id2, Duration::from_secs(20)).await;
    assert_eq!(d["outcome"], "aborted", "{d}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_killed_mid_release_leaves_it_interrupted_and_the_new_leader_aborts_it() {
    let mut f = Fleet::start("kill", MANUAL).await;
    let old = f.wait_leader(&[0, 1, 2]).await;
    let follower = (old + 1) % 3;
    let r = f.routers[follower]
        .api(Method::POST, "/v1/services/chat/releases", json!({"version": "v2"}))
        .await;
    assert_eq!(r.status, 202, "{}", r.text());
    let id = r.json()["id"].as_i64().unwrap();
    f.routers[follower]
        .wait_phase(id, "awaiting_approval", Duration::from_secs(20))
        .await;
    f.routers[old].proc.kill9();
    let rest: Vec<usize> = (0..3).filter(|i| *i != old).collect();
    let new = f.wait_leader(&rest).await;
    let d = f.routers[follower].wait_end(id, Duration::from_secs(20)).await;
    assert_eq!(d["outcome"], "interrupted", "{d}");
    let reason = d["reason"].as_str().unwrap();
    assert!(reason.contains("leader was lost during awaiting_approval"), "{reason}");
    // `release follow` shows where it ended.
    let (code, out, err) = f.routers[follower]
        .cli_async(&["release", "follow", "chat", &id.to_string()])
        .await;
    assert_eq!(code, 1, "{out}{err}");
    assert!(format!("{out}{err}").contains("interrupted"), "{out}{err}");
    // Aborted through any router: closed as aborted, routing untouched.
    let a = f.routers[follower]
        .api(
            Method::POST,
            &format!("/v1/services/chat/releases/{id}/abort"),
            Value::Null,
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.text());
    let (stored, _) = f.stored(&release_key(id)).await;
    assert_eq!(stored["outcome"], "aborted", "{stored}");
    let kinds = history_kinds(&f.routers[new], id).await;
    assert_eq!(kinds.first().map(String::as_str), Some("release_aborted"), "{kinds:?}");
    assert!(kinds.iter().any(|k| k == "release_interrupted"), "{kinds:?}");
    // A second abort: the release has ended.
    let again = f.routers[new]
        .api(
            Method::POST,
            &format!("/v1/services/chat/releases/{id}/abort"),
            Value::Null,
        )
        .await;
    assert_eq!(again.status, 409, "{}", again.text());
    for i in rest {
        assert_eq!(color_served(&f.routers[i]).await, "blue");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_old_colors_scale_down_waits_while_a_router_is_stale_and_goes_on_after() {
    let f = Fleet::start("stale", MANUAL_SHORT).await;
    let leader = f.wait_leader(&[0, 1, 2]).await;
    let paused = (leader + 1) % 3;
    let id = f.routers[leader].release("v2").await;
    f.routers[leader]
        .wait_phase(id, "awaiting_approval", Duration::from_secs(20))
        .await;
    // Paused before the switch: it cannot ack it (STALE until its 5 s ack lease ends).
    f.routers[paused].proc.signal("STOP");
    // Approved with the CLI through the third router: its status shows the leader's release
    // in progress (from etcd), and the approval is forwarded.
    let third = &f.routers[(leader + 2) % 3];
    assert_eq!(third.status().await["release"]["id"], id);
    let (code, out, err) = third.cli_async(&["approve", "chat"]).await;
    assert_eq!(code, 0, "{out}{err}");
    let waits = wait_for("the scale-down to wait", Duration::from_secs(20), || async {
        let log = f.routers[leader].log();
        log.lines()
            .find(|l| l.contains("scale-down waits until every live router acked"))
            .map(String::from)
    })
    .await;
    assert!(waits.contains(&format!("r{paused} STALE")), "{waits}");
    // Read the release, then the fleet: a router STALE after the read was STALE before it
    // (paused, it cannot ack), so the scale-down must not have happened yet.
    let d = f.routers[leader].release_doc(id).await;
    let v = fleet_view(&f.routers[leader]).await;
    let state = v["routers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["id"] == format!("r{paused}"))
        .map(|x| x["state"].clone());
    if state == Some(json!("STALE")) {
        assert_eq!(d["scaled_down"], false, "scaled down while r{paused} was STALE: {d}");
    }
    assert_eq!(d["outcome"], "completed", "{d}");
    f.routers[paused].proc.signal("CONT");
    let d = wait_for("the scale-down after the ack", Duration::from_secs(20), || async {
        let d = f.routers[leader].release_doc(id).await;
        (d["scaled_down"] == true).then_some(d)
    })
    .await;
    assert_eq!(d["outcome"], "completed");
    // The fleet's copy says so too (written just after the leader's own).
    wait_for(
        "the fleet's copy to say scaled down",
        Duration::from_secs(10),
        || async { (f.stored(&release_key(id)).await.0["scaled_down"] == true).then_some(()) },
    )
    .await;
    wait_for("the paused router to serve green", Duration::from_secs(20), || async {
        (color_served(&f.routers[paused]).await == "green").then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_switch_asked_of_a_follower_under_the_leaders_release_is_refused_and_a_forced_one_ends_it_there() {
    let f = Fleet::start("override", MANUAL).await;
    let leader = f.wait_leader(&[0, 1, 2]).await;
    let follower = (leader + 1) % 3;
    let id = f.routers[leader].release("v2").await;
    let d = f.routers[follower]
        .wait_phase(id, "awaiting_approval", Duration::from_secs(20))
        .await;
    assert_eq!(d["phase"], "awaiting_approval", "{d}");
    // The follower knows of the leader's release: a plain switch is refused as on the leader.
    let r = f.routers[follower].switch("green").await;
    assert_eq!(r.status, 409, "{}", r.text());
    assert!(
        r.text().contains("release_in_progress") && r.text().contains("--force"),
        "{}",
        r.text()
    );
    // Forced, it goes to the leader: the switch happens there and ends the release.
    let r = f.routers[follower]
        .api(
            Method::POST,
            "/v1/services/chat/switch",
            json!({"to": "green", "force": true, "reason": "hotfix"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-cutover-leader"), format!("r{leader}"));
    assert_eq!(r.json()["ended_release"], id, "{}", r.text());
    let d = f.routers[follower].wait_end(id, Duration::from_secs(20)).await;
    assert_eq!(d["outcome"], "aborted", "{d}");
    assert!(
        d["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("forced manual switch"),
        "{d}"
    );
    for r in &f.routers {
        wait_for("green everywhere", Duration::from_secs(10), || async {
            (color_served(r).await == "green").then_some(())
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_step_of_a_linear_release_is_applied_and_acked_by_every_router() {
    let release = "traffic = { linear = { step = 30, interval = \"1s\" } }\n[services.chat.release.verify]\nbake = \"300ms\"\nmin_requests = 0\n";
    let f = Fleet::start("steps", release).await;
    let leader = f.wait_leader(&[0, 1, 2]).await;
    let id = f.routers[leader].release("v2").await;
    // A follower serves the split too: its route table came from etcd with the weight.
    let follower = &f.routers[(leader + 1) % 3];
    let st = wait_for("a follower at a step", Duration::from_secs(20), || async {
        let st = follower.status().await;
        (st["colors"]["green"]["weight"] == 30).then_some(st)
    })
    .await;
    assert_eq!(st["colors"]["blue"]["weight"], 70, "{st}");
    let d = f.routers[leader].wait_end(id, Duration::from_secs(40)).await;
    assert_eq!(d["outcome"], "completed", "{d}");
    let steps = d["steps"].as_array().unwrap();
    let weights: Vec<u64> = steps.iter().map(|s| s["weight"].as_u64().unwrap()).collect();
    assert_eq!(weights, vec![30, 60, 90], "{d}");
    for s in steps {
        let sync = &s["sync"];
        assert_eq!(
            (sync["synced"].as_u64(), sync["of"].as_u64()),
            (Some(3), Some(3)),
            "{s}"
        );
        for r in sync["routers"].as_array().unwrap() {
            assert_eq!(r["state"], "SYNCED", "{s}");
            assert_eq!(r["generation"], s["generation"], "{s}");
        }
    }
    // Every router serves the new color; the leader's history has a line per step.
    for r in &f.routers {
        wait_color(r, "green").await;
    }
    let kinds = history_kinds(&f.routers[leader], id).await;
    assert_eq!(kinds.iter().filter(|k| *k == "stepped").count(), 3, "{kinds:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_killed_during_a_canary_step_leaves_it_interrupted_and_the_new_leader_returns_all_to_blue() {
    let release = "traffic = { canary = { percent = 50, bake = \"10m\" } }\n";
    let mut f = Fleet::start("kill-step", release).await;
    let old = f.wait_leader(&[0, 1, 2]).await;
    let id = f.routers[old].release("v2").await;
    let rest: Vec<usize> = (0..3).filter(|i| *i != old).collect();
    for &i in &rest {
        wait_for("the step on every router", Duration::from_secs(20), || async {
            (f.routers[i].status().await["colors"]["green"]["weight"] == 50).then_some(())
        })
        .await;
    }
    f.routers[old].proc.kill9();
    let _new = f.wait_leader(&rest).await;
    let d = f.routers[rest[0]].wait_end(id, Duration::from_secs(20)).await;
    assert_eq!(d["outcome"], "interrupted", "{d}");
    assert!(d["reason"].as_str().unwrap().contains("during stepping"), "{d}");
    // Nothing judges the share any more: every router is back to all blue.
    for &i in &rest {
        wait_for("all blue again", Duration::from_secs(20), || async {
            (f.routers[i].status().await["colors"]["green"]["weight"] == 0).then_some(())
        })
        .await;
        for _ in 0..20 {
            assert_eq!(color_served(&f.routers[i]).await, "blue");
        }
    }
    let (doc, _) = f.stored("services/chat").await;
    assert_eq!(
        (doc["live"].as_str(), doc["weight"].as_u64()),
        (Some("blue"), Some(0)),
        "{doc}"
    );
}
