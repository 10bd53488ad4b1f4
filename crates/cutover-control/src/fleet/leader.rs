//! Fleet mode's one controller: every router campaigns for the `leader` key (created with a
//! `create_revision = 0` compare, on a lease it keeps alive); the winner runs the releases.
//! Its term is the key's `create_revision`: every write a release makes compares it
//! (`FleetLink::fenced`), so a router paused past its lease cannot write once another won.
//! A new leader marks the releases the old one left unfinished as interrupted. Release
//! requests that reach another router are forwarded to the leader's admin API.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, Method};
use axum::response::{IntoResponse, Response};
use cutover_fleet::doc::LeaderDoc;
use cutover_fleet::etcd::{Compare, Op, Txn};
use cutover_fleet::EtcdError;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::time::Instant;

use crate::base::store_call::record;
use crate::controller::Controller;
use crate::fleet::link::{FleetLink, Term};
use crate::procs::supervisor::Role;
use crate::release::{self, ReleaseDoc};

/// The leader key's lease (seconds): how long a leader that stopped renewing it (dead,
/// paused, cut from etcd) keeps the fleet without one.
pub const LEADER_TTL: i64 = 3;
/// A forwarded request waits this long for the leader's answer.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest answer relayed from the leader.
const MAX_FORWARDED_ANSWER: usize = 1024 * 1024;
/// Set on a forwarded request: a router that is not the leader either refuses it rather
/// than forward it again (two routers that each believe the other leads would loop).
pub const FORWARDED_BY: &str = "x-cutover-forwarded-by";

/// Campaigns, holds the term while it lasts, steps down, campaigns again: for as long as
/// `serve` runs.
pub(crate) async fn campaign(ctl: Arc<Controller>, link: Arc<FleetLink>) {
    loop {
        match try_win(&link).await {
            Ok(Some((term, doc))) => {
                if let Err(e) = on_elected(&ctl, &link, term, doc).await {
                    tracing::warn!(error = %e, "fleet: won the leader key but could not read the releases; giving it up");
                    let _ = link.etcd.lease_revoke(term.lease).await;
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
                hold(&link, term).await;
                ctl.halt_for_step_down("this router lost the fleet's leadership").await;
            }
            Ok(None) => wait_for_vacancy(&link).await,
            Err(e) => {
                tracing::debug!(error = %e, "fleet: cannot campaign for the leader key");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

/// One attempt: the key is created only if absent, on a fresh lease.
async fn try_win(link: &FleetLink) -> Result<Option<(Term, LeaderDoc)>, EtcdError> {
    let lease = link.etcd.lease_grant(LEADER_TTL).await?;
    let key = link.keys.leader();
    let doc = LeaderDoc {
        router_id: link.router_id.clone(),
        admin_url: link.admin_url.clone(),
        since: cutover_store::now_rfc3339_millis(),
    };
    let r = link
        .etcd
        .txn(&Txn {
            compare: vec![Compare::CreateRevision(key.clone(), 0)],
            success: vec![Op::Put {
                key: key.clone(),
                value: doc.to_bytes().into(),
                lease: lease.id,
            }],
            failure: vec![Op::Get { key }],
        })
        .await;
    let r = match r {
        Ok(r) => r,
        Err(e) => {
            let _ = link.etcd.lease_revoke(lease.id).await;
            return Err(e);
        }
    };
    if r.succeeded {
        // The put is the transaction's only write: its revision is the key's creation.
        let term = Term {
            create_revision: r.revision,
            lease: lease.id,
        };
        return Ok(Some((term, doc)));
    }
    let _ = link.etcd.lease_revoke(lease.id).await;
    link.set_leader(r.gets.first().and_then(|g| g.first()));
    Ok(None)
}

/// Takes office: numbers releases after every id the fleet used, and marks the releases a
/// previous leader left unfinished as interrupted (as a restart does), in fenced writes.
async fn on_elected(ctl: &Controller, link: &FleetLink, term: Term, doc: LeaderDoc) -> Result<(), EtcdError> {
    let prefix = link.keys.releases();
    let all = link.etcd.range_prefix(&prefix).await?;
    let mut max_id = 0;
    let mut unfinished = Vec::new();
    for kv in &all.kvs {
        let Some((service, id)) = kv.key.strip_prefix(&prefix).and_then(|rest| rest.split_once('/')) else {
            continue;
        };
        let Ok(id) = id.parse::<i64>() else { continue };
        max_id = max_id.max(id);
        match serde_json::from_slice::<ReleaseDoc>(&kv.value) {
            Ok(d) if d.outcome.is_none() => unfinished.push((service.to_string(), d)),
            _ => {}
        }
    }
    link.won(term, doc, max_id + 1);
    tracing::info!(fleet = %link.keys.prefix(), revision = term.create_revision, "fleet: elected leader; release runs happen here now");
    for (service, d) in unfinished {
        let Ok(svc) = ctl.service(&service) else {
            tracing::warn!(%service, release = d.id, "fleet: an unfinished release of a service this router does not know; left as it is");
            continue;
        };
        let table = svc.proxy.table();
        let reason = format!(
            "the fleet's leader was lost during {}; routing left as committed (live: {}, generation {})",
            d.phase,
            table.live_color().map(cutover_proxy::Color::as_str).unwrap_or("none"),
            table.generation
        );
        let d = release::interrupted(d, &reason);
        let Ok(value) = serde_json::to_value(&d) else { continue };
        if let Err(e) = link.put_release(&service, d.id, &value).await {
            tracing::warn!(%service, release = d.id, error = %e, "fleet: could not mark the release interrupted");
            continue;
        }
        tracing::warn!(%service, release = d.id, version = %d.version, "release interrupted: {reason}");
        unsplit_interrupted(&svc, d.id).await;
        record(&svc.store, "the interrupted release", &service, move |s| {
            s.put_release(d.id, &d.service, &value, true)?;
            release::interrupted_event(s, &d, &reason)
        })
        .await;
    }
    settle_hosts(ctl);
    Ok(())
}

/// A release cut off during its steps left the traffic split, and nothing would ever judge
/// the new color's share again: all of it goes back to the live (old) color, acked like any
/// step.
async fn unsplit_interrupted(svc: &crate::service::ServiceCtl, id: i64) {
    let weight = svc.proxy.table().weight;
    if weight == 0 {
        return;
    }
    let r = svc
        .step(crate::service::switch::StepRequest {
            weight: 0,
            kind: cutover_store::SwitchKind::RolledBack,
            actor: "controller".into(),
            reason: format!("release #{id} was interrupted at {weight}%: all traffic back to the live color"),
            release_id: Some(id),
        })
        .await;
    if let Err(e) = r {
        tracing::error!(service = %svc.name, release = id, error = %e, "could not return an interrupted step's share to the live color");
    }
}

/// Host agents' processes follow the routing as committed: a run cut off between its switch
/// and its end left the live color `releasing` (its exits not restarted): it serves. One cut
/// off before its switch left a color that is not live running `releasing`: nobody will
/// switch to it (an interrupted release is resumed by releasing again, from a new start),
/// so it is stopped rather than left holding GPU memory with no signal to anyone.
fn settle_hosts(ctl: &Controller) {
    for svc in ctl.services().values() {
        let Some(crate::procs::Procs::Remote(p)) = &svc.procs else {
            continue;
        };
        let live = svc.live();
        if let Some(live) = live {
            p.set_role(live, Role::Serving);
        }
        for color in cutover_proxy::Color::ALL.into_iter().filter(|c| Some(*c) != live) {
            let (p, svc, releases) = (p.clone(), svc.clone(), ctl.releases.clone());
            tokio::spawn(async move {
                // A release started since this router took office owns the color.
                let busy = || releases.active(&svc.name).is_some();
                if p.stop_abandoned(color, None, busy).await {
                    svc.unwatch(color);
                    svc.set_state(color, Some(crate::service::ColorState::Stopped));
                }
            });
        }
    }
}

/// Keeps the lease alive; returns once the term is over: the lease expired or could not be
/// renewed for its whole TTL (paused, cut from etcd), or a fenced write found another leader.
async fn hold(link: &FleetLink, term: Term) {
    let ttl = Duration::from_secs(LEADER_TTL as u64);
    let mut renewed = Instant::now();
    let mut renew_failed = false;
    loop {
        // A failed renewal is tried again soon: one slow call must not cost the term.
        let wait = if renew_failed {
            Duration::from_millis(200)
        } else {
            ttl / 3
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = link.leader_changed.notified() => {}
        }
        renew_failed = false;
        if link.term() != Some(term) {
            return;
        }
        if renewed.elapsed() >= ttl {
            // Past the TTL etcd may have given the key to another router already.
            link.step_down(&format!(
                "the leader lease was not renewed for {LEADER_TTL} s (this process was paused or cut from etcd)"
            ));
            return;
        }
        match link.etcd.lease_keepalive(term.lease).await {
            Ok(Some(_)) => renewed = Instant::now(),
            Ok(None) => {
                link.step_down("the leader lease expired");
                return;
            }
            Err(e) => {
                renew_failed = true;
                tracing::debug!(error = %e, "fleet: cannot renew the leader lease");
            }
        }
    }
}

/// How often a follower reads the leader key besides watching it. The watch sees the key's
/// delete (and a watch that breaks or goes silent is followed by a re-read, which reads
/// the leader key too), so this only backs it up: every follower polls, and at 1,000
/// routers a 5 s poll was 200 reads a second of an idle fleet.
const VACANCY_POLL: Duration = Duration::from_secs(30);

/// Not the leader: waits until the key is gone (the watch says so, or a poll finds it).
async fn wait_for_vacancy(link: &FleetLink) {
    let key = link.keys.leader();
    loop {
        // The watch says when the key goes (its delete wakes this at once); the poll only
        // covers a missed event, so it is slow: every follower polls, and at fleet scale one
        // read per router per second was most of etcd's idle load.
        tokio::select! {
            _ = link.leader_changed.notified() => {}
            _ = tokio::time::sleep(cutover_fleet::jittered(VACANCY_POLL)) => {}
        }
        match link.etcd.get(&key).await {
            Ok((None, _)) => return,
            Ok((Some(kv), _)) => link.set_leader(Some(&kv)),
            Err(e) => tracing::debug!(error = %e, "fleet: cannot read the leader key"),
        }
    }
}

/// Why a release request was neither run here nor forwarded: the admin API answers it
/// 409 `not_leader` with this text, which names the leader when there is one.
#[derive(Debug)]
pub struct NotForwarded(pub String);

/// A release request that reached a router which is not the leader: sent on to the
/// leader's admin API with the caller's token, and the answer relayed as it is. Refused
/// (`NotForwarded`) when there is no leader or it cannot be reached.
pub async fn forward(
    link: &FleetLink,
    method: Method,
    path: &str,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<Response, NotForwarded> {
    let leader = link.leader().filter(|l| l.router_id != link.router_id);
    let Some(leader) = leader else {
        return Err(NotForwarded(
            "this router is not the fleet's leader and no leader is elected right now; try again in a few seconds"
                .into(),
        ));
    };
    if headers.contains_key(FORWARDED_BY) {
        return Err(NotForwarded(format!(
            "this router is not the fleet's leader either (the leader is {} at {})",
            leader.router_id, leader.admin_url
        )));
    }
    if !leader.admin_url.starts_with("http://") {
        // The forwarding client speaks plain HTTP only; with `[admin] tls` call the leader.
        return Err(NotForwarded(format!(
            "this router is not the fleet's leader; call the leader {} at {} (release requests are not forwarded to a TLS admin API)",
            leader.router_id, leader.admin_url
        )));
    }
    let unreachable = |e: String| {
        NotForwarded(format!(
            "this router is not the fleet's leader; the leader {} at {} cannot be reached: {e}",
            leader.router_id, leader.admin_url
        ))
    };
    let mut req = http::Request::builder()
        .method(method)
        .uri(format!("{}{path}", leader.admin_url))
        .header(FORWARDED_BY, link.router_id.as_str());
    // The token (the leader checks it again: the fleet's routers share their tokens file)
    // and the actor's label, so the history names the caller, not this router.
    for name in [
        http::header::AUTHORIZATION,
        http::header::CONTENT_TYPE,
        http::HeaderName::from_static("x-cutover-actor"),
    ] {
        if let Some(v) = headers.get(&name) {
            req = req.header(name, v);
        }
    }
    let req = req.body(Full::new(body)).map_err(|e| unreachable(e.to_string()))?;
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let answer = async {
        let resp = client.request(req).await.map_err(|e| e.to_string())?;
        let (parts, body) = resp.into_parts();
        let body = Limited::new(body, MAX_FORWARDED_ANSWER)
            .collect()
            .await
            .map_err(|e| format!("reading the answer: {e}"))?
            .to_bytes();
        Ok::<_, String>((parts, body))
    };
    let (parts, body) = tokio::time::timeout(FORWARD_TIMEOUT, answer)
        .await
        .map_err(|_| unreachable(format!("no answer within {} s", FORWARD_TIMEOUT.as_secs())))?
        .map_err(unreachable)?;
    let mut out = (parts.status, body).into_response();
    if let Some(ct) = parts.headers.get(http::header::CONTENT_TYPE) {
        out.headers_mut().insert(http::header::CONTENT_TYPE, ct.clone());
    }
    if let Ok(v) = http::HeaderValue::from_str(&leader.router_id) {
        out.headers_mut().insert("x-cutover-leader", v);
    }
    Ok(out)
}

#[cfg(test)]
#[path = "../../../cutover-fleet/tests/support/cluster.rs"]
mod cluster;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::link::FenceError;

    fn link(c: &cluster::Cluster, id: &str) -> FleetLink {
        FleetLink::new(
            c.client(),
            "fence",
            id.to_string(),
            format!("http://{id}.invalid"),
            Duration::from_secs(1),
        )
    }

    async fn elect(l: &FleetLink) -> Term {
        let (term, doc) = try_win(l).await.unwrap().expect("the key was free");
        l.won(term, doc, 1);
        term
    }

    /// The fence itself, on a real etcd: a leader whose lease ran out (revoked here, as
    /// etcd does at expiry) while it was paused finds its next write refused, steps down,
    /// and nothing it tried to write is stored.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_leader_whose_lease_ran_out_cannot_write_and_steps_down() {
        let c = cluster::Cluster::start(1).await;
        let (a, b) = (link(&c, "a"), link(&c, "b"));
        let ta = elect(&a).await;
        assert!(try_win(&b).await.unwrap().is_none(), "one leader at a time");
        assert_eq!(b.leader().map(|l| l.router_id).as_deref(), Some("a"));
        a.put_release("chat", 1, &serde_json::json!({"by": "a"})).await.unwrap();

        a.etcd.lease_revoke(ta.lease).await.unwrap();
        let tb = elect(&b).await;
        assert!(tb.create_revision > ta.create_revision);
        // `a` still believes it leads: only the fenced write can tell it otherwise.
        assert!(a.is_leader());
        let e = a
            .put_release("chat", 1, &serde_json::json!({"by": "a, late"}))
            .await
            .unwrap_err();
        assert!(
            matches!(&e, FenceError::NotLeader { leader: Some(l) } if l == "b"),
            "{e}"
        );
        assert!(!a.is_leader(), "a fenced write that failed ends the term");
        let (kv, _) = c.client().get(&a.keys.release("chat", 1)).await.unwrap();
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&kv.unwrap().value).unwrap()["by"],
            "a"
        );
        // Not the leader any more: refused before it reaches etcd; the leader writes.
        assert!(matches!(
            a.put_release("chat", 2, &serde_json::json!({})).await,
            Err(FenceError::NotLeader { .. })
        ));
        b.put_release("chat", 1, &serde_json::json!({"by": "b"})).await.unwrap();
    }
}
