//! The routers' acks as this router knows them, and the waits on them. No router watches
//! `routers/` all the time (every router watching every ack made a switch cost N² watch
//! events): whoever waits for acks (the router answering a switch, the leader before a
//! scale-down) reads them and watches `routers/` from that read for the length of its wait
//! ([`AckFeed`]); `GET /v1/fleet` reads them once.

use std::collections::BTreeMap;
use std::time::Duration;

use cutover_fleet::doc::{Ack, AckStatus};
use cutover_fleet::etcd::{Event, Kv, Watch, WatchMsg};
use cutover_fleet::EtcdError;
use serde::Serialize;
use tokio::time::Instant;

use super::{lost_log, FleetLink, LinkState};

/// How long a wait's watch on the acks may say nothing before it is opened again (as the
/// sync's own watch, `sync::WATCH_SILENCE`).
const FEED_SILENCE: Duration = Duration::from_secs(10);

/// A router's state with respect to a generation (`sync.routers[].state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum AckState {
    /// Acked the generation (or a later one).
    Synced,
    /// Acked an older generation.
    Stale,
    /// Could not apply a document; keeps serving its previous state.
    Rejected,
    /// Its lease expired: its ack key is gone.
    Lost,
}

impl AckState {
    pub const ALL: [AckState; 4] = [AckState::Synced, AckState::Stale, AckState::Rejected, AckState::Lost];

    pub fn as_str(self) -> &'static str {
        match self {
            AckState::Synced => "SYNCED",
            AckState::Stale => "STALE",
            AckState::Rejected => "REJECTED",
            AckState::Lost => "LOST",
        }
    }

    fn of(ack: &Ack, lost: bool, service: &str, generation: u64) -> AckState {
        if lost {
            AckState::Lost
        } else if ack.generations.get(service).is_some_and(|g| *g >= generation) {
            AckState::Synced
        } else if ack.status == AckStatus::Rejected {
            AckState::Rejected
        } else {
            AckState::Stale
        }
    }
}

/// One router in a sync report.
#[derive(Debug, Clone, Serialize)]
pub struct RouterSync {
    pub id: String,
    pub state: AckState,
    /// The generation of the service it last acked, if any.
    pub generation: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// How far a switch got across the fleet when its answer was sent (`"sync"`).
#[derive(Debug, Clone, Serialize)]
pub struct SyncReport {
    pub synced: usize,
    pub of: usize,
    pub routers: Vec<RouterSync>,
}

impl SyncReport {
    /// Every live router acked (LOST ones are not waited for), this one among them.
    fn all_live_synced(&self, me: &str) -> bool {
        let unsynced = self
            .routers
            .iter()
            .any(|x| x.state != AckState::Synced && x.state != AckState::Lost);
        !unsynced && self.routers.iter().any(|x| x.id == me)
    }

    /// The live routers behind (STALE or REJECTED), as `id STATE at generation g`.
    fn behind(&self) -> Vec<String> {
        self.routers
            .iter()
            .filter(|x| matches!(x.state, AckState::Stale | AckState::Rejected))
            .map(|x| {
                format!(
                    "{} {} at generation {}",
                    x.id,
                    x.state.as_str(),
                    x.generation.unwrap_or(0)
                )
            })
            .collect()
    }
}

/// The acks of one wait: a watch on `routers/` from now, then a read of it, so no ack
/// written after the read is missed. The watch lives as long as the feed: a router that
/// waits for nothing watches no ack.
struct AckFeed<'l> {
    link: &'l FleetLink,
    watch: Option<Watch>,
    /// When the watch last said anything: one silent for [`FEED_SILENCE`] is opened again
    /// (watch, then read). A watch on a member cut off from its quorum, or on a connection
    /// that died without a reset, is created and then says nothing; a wait with no deadline
    /// (the scale-down's) would otherwise wait on it for ever.
    heard: Instant,
    /// A read of every ack succeeded during this wait (what the link knew before may be old).
    fresh: bool,
}

impl<'l> AckFeed<'l> {
    fn new(link: &'l FleetLink) -> AckFeed<'l> {
        AckFeed {
            link,
            watch: None,
            heard: Instant::now(),
            fresh: false,
        }
    }

    /// The watch first, from now, then the read: a watch from a past revision (the one
    /// after the read's, once acks were written since) is one etcd catches up in a loop
    /// every 100 ms, which was most of a switch's wait. Events the read already holds are
    /// older than or as old as its acks, and `router_acked` never takes an older one.
    async fn open(&mut self) -> Result<(), EtcdError> {
        let prefix = self.link.keys.routers();
        let mut w = self.link.etcd.watch(&prefix, 0, false).await?;
        match w.next().await? {
            WatchMsg::Created { .. } => {}
            other => {
                return Err(EtcdError::Protocol {
                    member: w.member().to_string(),
                    detail: format!("a watch's first message was not `created`: {other:?}"),
                })
            }
        }
        let before = self.link.ack_high();
        let range = self.link.etcd.range_prefix(&prefix).await?;
        self.link.routers_read(&range.kvs, range.revision, before);
        self.fresh = true;
        self.heard = Instant::now();
        self.watch = Some(w);
        Ok(())
    }

    /// Waits for news of the acks (a read, or a watch event) until `until`; false when it
    /// passed without any. A watch that breaks or is compacted is opened again after a
    /// new read, which is itself news.
    async fn changed(&mut self, until: Instant) -> bool {
        loop {
            let Some(w) = self.watch.as_mut() else {
                match tokio::time::timeout_at(until, self.open()).await {
                    Err(_) => return false,
                    Ok(Ok(())) => return true,
                    Ok(Err(e)) => {
                        tracing::debug!(error = %e, "fleet: cannot read or watch the acks");
                        // A read that succeeded before the watch failed is news too.
                        let slept = tokio::time::timeout_at(until, tokio::time::sleep(Duration::from_millis(200)));
                        if slept.await.is_err() {
                            return false;
                        }
                        continue;
                    }
                }
            };
            let silent_at = self.heard + FEED_SILENCE;
            match tokio::time::timeout_at(until.min(silent_at), w.next()).await {
                Err(_) if until <= silent_at => return false,
                Err(_) => {
                    tracing::debug!(
                        "fleet: the acks' watch said nothing for {FEED_SILENCE:?}; watching and reading again"
                    );
                    self.watch = None;
                }
                Ok(Ok(WatchMsg::Events { events, .. })) => {
                    self.heard = Instant::now();
                    for e in &events {
                        self.link.ack_event(e);
                    }
                    return true;
                }
                Ok(Ok(WatchMsg::Created { .. } | WatchMsg::Progress { .. })) => self.heard = Instant::now(),
                Ok(Ok(WatchMsg::Compacted { .. } | WatchMsg::Canceled { .. }) | Err(_)) => self.watch = None,
            }
        }
    }
}

impl FleetLink {
    /// Acks as etcd holds them, keyed by router, with each key's `mod_revision`.
    fn parse_acks(&self, kvs: &[Kv]) -> BTreeMap<String, (Ack, i64)> {
        kvs.iter()
            .filter_map(|kv| {
                let id = self.keys.router_id(&kv.key)?.to_string();
                Some((id, (Ack::parse(&kv.value).ok()?, kv.mod_revision)))
            })
            .collect()
    }

    /// A watch event under `routers/`.
    fn ack_event(&self, e: &Event) {
        let kv = e.kv();
        let Some(id) = self.keys.router_id(&kv.key) else { return };
        match e {
            Event::Put(kv) => match Ack::parse(&kv.value) {
                Ok(ack) => self.router_acked(id, ack, kv.mod_revision),
                Err(reason) => tracing::warn!(router = %id, %reason, "fleet: unreadable ack"),
            },
            Event::Delete(kv) => self.router_gone(id, kv.mod_revision),
        }
    }

    /// A router's ack arrived (a put under `routers/` at `revision`). Two waits' watches
    /// can bring one router's acks in different orders: an older one never replaces a newer.
    pub(crate) fn router_acked(&self, id: &str, ack: Ack, revision: i64) {
        let mut s = self.st();
        if s.ack_revisions.get(id).is_some_and(|r| *r > revision) {
            return;
        }
        s.ack_revisions.insert(id.to_string(), revision);
        s.lost.remove(id);
        s.routers.insert(id.to_string(), ack);
    }

    /// A router's ack key went away at `revision`: its lease expired (or it stopped cleanly).
    pub(crate) fn router_gone(&self, id: &str, revision: i64) {
        let mut s = self.st();
        if s.ack_revisions.get(id).is_some_and(|r| *r > revision) {
            return;
        }
        s.ack_revisions.insert(id.to_string(), revision);
        if let Some(ack) = s.routers.remove(id) {
            lost_log(
                id,
                &ack,
                "its ack's key was deleted: its lease ran out (no renewal within the TTL) or it stopped cleanly",
            );
            s.lost.insert(id.to_string(), ack);
        }
    }

    /// The newest ack revision the link knows: taken before a read, it tells a read that
    /// raced a newer event from a read of an etcd restored from a backup.
    pub(crate) fn ack_high(&self) -> i64 {
        self.st().ack_revisions.values().copied().max().unwrap_or(0)
    }

    /// Every ack as a read at `revision` found them, `before` being [`Self::ack_high`] when
    /// the read was asked for. Two waits (or a wait and `GET /v1/fleet`) run at once: a read
    /// can land after another wait's watch brought a newer event, and what the link learnt
    /// after the read was asked for is kept. A read behind what the link knew before asking
    /// is etcd restored from a backup (revisions went back): it replaces what the link knew.
    /// Routers missing from it are lost.
    pub(crate) fn routers_read(&self, kvs: &[Kv], revision: i64, before: i64) {
        let acks = self.parse_acks(kvs);
        let mut s = self.st();
        let restored = revision < before;
        let newer = |s: &LinkState, id: &str| !restored && s.ack_revisions.get(id).is_some_and(|r| *r > revision);
        let gone: Vec<String> = s.routers.keys().filter(|k| !acks.contains_key(*k)).cloned().collect();
        for id in gone {
            if newer(&s, &id) {
                continue;
            }
            if let Some(ack) = s.routers.remove(&id) {
                lost_log(&id, &ack, "its ack is missing from a fresh read of etcd");
                s.lost.insert(id, ack);
            }
        }
        if restored {
            s.ack_revisions.clear();
        }
        for (id, (ack, rev)) in acks {
            if newer(&s, &id) {
                continue;
            }
            s.lost.remove(&id);
            s.ack_revisions.insert(id.clone(), rev);
            s.routers.insert(id, ack);
        }
    }

    /// Reads every ack once (`GET /v1/fleet`): no router watches them all the time.
    pub async fn refresh_routers(&self) {
        let before = self.ack_high();
        match self.etcd.range_prefix(&self.keys.routers()).await {
            Ok(range) => self.routers_read(&range.kvs, range.revision, before),
            Err(e) => tracing::debug!(error = %e, "fleet: cannot read the acks"),
        }
    }

    /// Where every known router stands with respect to `service` at `generation`.
    pub fn report(&self, service: &str, generation: u64) -> SyncReport {
        let s = self.st();
        let mut routers = Vec::new();
        for (lost, map) in [(false, &s.routers), (true, &s.lost)] {
            for (id, ack) in map {
                let state = AckState::of(ack, lost, service, generation);
                routers.push(RouterSync {
                    id: id.clone(),
                    state,
                    generation: ack.generations.get(service).copied(),
                    reason: (state == AckState::Rejected).then(|| ack.reason.clone()).flatten(),
                });
            }
        }
        routers.sort_by(|a, b| a.id.cmp(&b.id));
        SyncReport {
            synced: routers.iter().filter(|r| r.state == AckState::Synced).count(),
            of: routers.len(),
            routers,
        }
    }

    /// Waits until every live router acked `generation` of `service`, at most `ack_timeout`
    /// from `since`: reads the acks, then watches `routers/` from that read for this wait
    /// only. When the deadline passes, one more read is the honest answer.
    pub async fn await_acks(&self, service: &str, generation: u64, since: Instant) -> SyncReport {
        let deadline = since + self.ack_timeout;
        let mut feed = AckFeed::new(self);
        while feed.changed(deadline).await {
            let r = self.report(service, generation);
            if r.all_live_synced(&self.router_id) {
                self.convergence.observe(since.elapsed());
                return r;
            }
        }
        drop(feed);
        self.refresh_routers().await;
        self.report(service, generation)
    }

    /// Waits, as long as it takes, until no live router is behind `generation` of `service`
    /// (STALE or REJECTED; LOST ones are not waited for: their lease is gone, and they
    /// re-read everything when they come back). The old color's scale-down waits here: a
    /// router that still routes to it must not lose it. Says once why it waits. Decides
    /// only on a read made during the wait, never on what the link knew before.
    pub async fn await_all_acked(&self, service: &str, generation: u64) {
        let mut said = false;
        let mut feed = AckFeed::new(self);
        loop {
            // Acks arrive through the wait's watch; the timer re-checks anyway.
            feed.changed(Instant::now() + Duration::from_secs(1)).await;
            if !feed.fresh {
                continue;
            }
            let behind = self.report(service, generation).behind();
            if behind.is_empty() {
                if said {
                    tracing::info!(
                        service,
                        generation,
                        "fleet: every live router acked; the scale-down goes on"
                    );
                }
                return;
            }
            if !said {
                tracing::warn!(service, generation, behind = %behind.join(", "), "fleet: the old color's scale-down waits until every live router acked the switch");
                said = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ack(generation: u64, status: AckStatus) -> Ack {
        Ack {
            generations: [("chat".to_string(), generation)].into(),
            hash: String::new(),
            status,
            reason: (status == AckStatus::Rejected).then(|| "no endpoints".to_string()),
            admin_url: String::new(),
            revision: 0,
            at: String::new(),
        }
    }

    #[test]
    fn a_router_is_synced_at_the_generation_or_later_and_lost_whatever_it_acked() {
        assert_eq!(
            AckState::of(&ack(7, AckStatus::Synced), false, "chat", 7),
            AckState::Synced
        );
        assert_eq!(
            AckState::of(&ack(8, AckStatus::Rejected), false, "chat", 7),
            AckState::Synced
        );
        assert_eq!(
            AckState::of(&ack(6, AckStatus::Synced), false, "chat", 7),
            AckState::Stale
        );
        assert_eq!(
            AckState::of(&ack(6, AckStatus::Rejected), false, "chat", 7),
            AckState::Rejected
        );
        assert_eq!(
            AckState::of(&ack(7, AckStatus::Synced), true, "chat", 7),
            AckState::Lost
        );
        assert_eq!(
            AckState::of(&ack(7, AckStatus::Synced), false, "other", 1),
            AckState::Stale
        );
    }

    fn link() -> FleetLink {
        FleetLink::new(
            cutover_fleet::Etcd::new(vec!["127.0.0.1:1".into()]),
            "t",
            "me".into(),
            "http://x".into(),
            Duration::from_secs(1),
        )
    }

    fn kv(link: &FleetLink, id: &str, a: &Ack, rev: i64) -> Kv {
        Kv {
            key: link.keys.router(id),
            value: a.to_bytes().into(),
            mod_revision: rev,
            ..Kv::default()
        }
    }

    #[test]
    fn an_older_ack_never_replaces_a_newer_one_whichever_way_it_arrives() {
        let l = link();
        l.router_acked("b", ack(5, AckStatus::Synced), 50);
        l.router_acked("b", ack(4, AckStatus::Synced), 40);
        assert_eq!(l.report("chat", 5).synced, 1, "an event from a lagging watch");
        l.routers_read(&[kv(&l, "b", &ack(3, AckStatus::Synced), 30)], 31, l.ack_high());
        assert_eq!(
            l.report("chat", 5).routers[0].generation,
            Some(3),
            "a read is etcd's state, even behind (etcd restored from a backup)"
        );
        l.router_acked("b", ack(4, AckStatus::Synced), 35);
        l.router_gone("b", 33);
        assert_eq!(
            l.report("chat", 4).routers[0].state,
            AckState::Synced,
            "a delete before the newer put"
        );
    }

    #[test]
    fn a_router_missing_from_a_read_is_lost_and_back_when_it_acks_again() {
        let l = link();
        l.routers_read(
            &[
                kv(&l, "me", &ack(2, AckStatus::Synced), 10),
                kv(&l, "b", &ack(2, AckStatus::Synced), 11),
            ],
            11,
            0,
        );
        let r = l.report("chat", 2);
        assert!(r.all_live_synced("me"), "{r:?}");
        l.routers_read(&[kv(&l, "me", &ack(3, AckStatus::Synced), 20)], 20, l.ack_high());
        let r = l.report("chat", 3);
        assert_eq!((r.synced, r.of), (1, 2));
        assert_eq!(r.routers[0].state, AckState::Lost);
        assert!(r.all_live_synced("me"), "LOST routers are not waited for");
        assert!(r.behind().is_empty());
        l.router_acked("b", ack(2, AckStatus::Synced), 22);
        let r = l.report("chat", 3);
        assert!(!r.all_live_synced("me"));
        assert_eq!(r.behind(), vec!["b STALE at generation 2".to_string()]);
        assert!(
            !l.report("chat", 3).all_live_synced("other"),
            "this router's own ack must be there"
        );
    }

    #[test]
    fn a_read_that_raced_a_newer_event_keeps_the_event() {
        let l = link();
        l.routers_read(
            &[
                kv(&l, "me", &ack(2, AckStatus::Synced), 10),
                kv(&l, "b", &ack(2, AckStatus::Synced), 11),
            ],
            11,
            0,
        );
        let before = l.ack_high();
        // While the read is in flight, another wait's watch brings b's ack of 3 (at 13) and
        // the deletion of me's key (its lease ran out, at 14); the read answers at 12.
        l.router_acked("b", ack(3, AckStatus::Synced), 13);
        l.router_gone("me", 14);
        l.routers_read(
            &[
                kv(&l, "me", &ack(2, AckStatus::Synced), 10),
                kv(&l, "b", &ack(2, AckStatus::Synced), 11),
            ],
            12,
            before,
        );
        let r = l.report("chat", 3);
        let state = |id: &str| r.routers.iter().find(|x| x.id == id).map(|x| x.state);
        assert_eq!(state("b"), Some(AckState::Synced), "{r:?}");
        assert_eq!(
            state("me"),
            Some(AckState::Lost),
            "a lost router does not come back from an older read: {r:?}"
        );
    }
}
