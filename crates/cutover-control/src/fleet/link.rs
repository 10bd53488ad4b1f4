//! This router's link to its fleet in etcd: the client, the service documents it applied
//! (with the revision a switch compares), every router's ack as its last read of them saw
//! it, and the switch transaction itself. The task that reads, applies, acknowledges and
//! watches is `sync`. A switch commits through this link by way of the
//! `service::fleet::Fleet` trait, which `seams` implements for it.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use cutover_fleet::doc::{Ack, AckStatus, HistoryRecord, LeaderDoc, ServiceDoc};
use cutover_fleet::etcd::{Compare, Kv, Op, Txn, TxnResult};
use cutover_fleet::{Etcd, Keys};
use cutover_proxy::stats::Histogram;

use crate::base::error::SwitchError;

mod acks;
pub use acks::{AckState, RouterSync, SyncReport};

/// The hash of a service's configuration that documents carry (`config_hash`): its
/// environments (endpoints, versions as configured, or the managed run).
pub fn config_hash(cfg: &cutover_config::ServiceConfig) -> String {
    cutover_fleet::doc::hash_hex(&format!("{:?}", cfg.environments))
}

/// Why a switch's transaction failed, honestly: a member that refused it committed nothing,
/// but one that timed out (or a connection cut mid-call) may have passed it to the leader,
/// whose commit then lands later and every router applies it. Seen with the leader SIGKILLed
/// while quorum is lost (`tests/e2e/fleet_faults.rs`).
fn not_confirmed(e: &cutover_fleet::EtcdError) -> String {
    match e {
        cutover_fleet::EtcdError::Server { code, .. } if *code != 4 => {
            format!("the switch was not committed (etcd: {e}); nothing changed")
        }
        // etcd refused the user before the write was proposed.
        cutover_fleet::EtcdError::Auth { .. } => format!("the switch was not committed ({e}); nothing changed"),
        _ => format!(
            "etcd did not confirm the switch ({e}): it is not applied here, but a write already on its way may still commit; read the service's generation before retrying (a retry with if_generation is safe)"
        ),
    }
}

/// The document a router applied for one service, and the etcd revision it carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    pub generation: u64,
    /// The document's `mod_revision`: what this router's next switch compares.
    pub mod_revision: i64,
}

/// This router's term as the fleet's leader: the leader key's `create_revision` it won with
/// (what every fenced write compares) and the lease the key lives on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Term {
    pub create_revision: i64,
    pub lease: i64,
}

/// Why a fenced write did not happen.
#[derive(Debug, thiserror::Error)]
pub enum FenceError {
    #[error("this router is not the fleet's leader{}", .leader.as_ref().map(|l| format!(" (the leader is {l})")).unwrap_or_default())]
    NotLeader { leader: Option<String> },
    #[error("etcd: {0}")]
    Etcd(#[from] cutover_fleet::EtcdError),
}

impl From<FenceError> for crate::base::error::ReleaseError {
    fn from(e: FenceError) -> crate::base::error::ReleaseError {
        match e {
            FenceError::NotLeader { leader } => crate::base::error::ReleaseError::NotLeader { leader },
            e => crate::base::error::ReleaseError::Fleet { detail: e.to_string() },
        }
    }
}

/// What the link knows; changed by the sync task and by switches.
#[derive(Default)]
struct LinkState {
    /// The last read or watch succeeded (false until the first read).
    connected: bool,
    /// When `connected` last changed (RFC 3339).
    since: String,
    /// Why the last read of etcd failed while cut from it (a refused certificate or user
    /// reads here, not only in the log); cleared on connecting.
    error: Option<String>,
    /// The etcd revision applied up to (never advanced by a timeout).
    revision: i64,
    applied: BTreeMap<String, Applied>,
    /// The newest generation seen in etcd per service, applied or not.
    latest: BTreeMap<String, u64>,
    /// Services whose latest document this router refused, with why.
    rejected: BTreeMap<String, String>,
    /// Services for which etcd holds an older generation than this router serves (etcd
    /// restored from an older backup): `(etcd's, served)`. Kept until a document at least
    /// as new as the served one is read or written, so the router never looks in sync
    /// with a state etcd does not hold.
    ahead: BTreeMap<String, (u64, u64)>,
    /// Every live router's ack (this one's included), as last read or watched by a wait.
    routers: BTreeMap<String, Ack>,
    /// The `mod_revision` of each router's ack (or of its delete) the link last took: two
    /// waits' watches may bring them out of order. Reset by every read of all the acks.
    ack_revisions: BTreeMap<String, i64>,
    /// Routers whose ack key went away (lease expired), with their last ack, until they
    /// come back.
    lost: BTreeMap<String, Ack>,
    /// The leader as last read from etcd, with its key's `create_revision`.
    leader: Option<(LeaderDoc, i64)>,
    /// Set while this router holds the leader key.
    term: Option<Term>,
    /// The lowest id a release started here may take (past every id in etcd).
    next_release_id: i64,
    /// Per service, the release in progress as its documents in etcd say (the leader's
    /// run): what a follower's status shows.
    in_progress: BTreeMap<String, (i64, serde_json::Value)>,
}

/// This router's link to the fleet.
pub struct FleetLink {
    pub etcd: Etcd,
    pub keys: Keys,
    pub router_id: String,
    /// Where this router's admin API listens, as its ack advertises it.
    pub admin_url: String,
    pub ack_timeout: Duration,
    state: Mutex<LinkState>,
    /// Wakes the ack writer: what this router applied changed.
    pub(crate) ack_due: tokio::sync::Notify,
    /// Wakes the sync: read everything again (a reload added a service).
    pub(crate) resync: tokio::sync::Notify,
    /// Switches made through this router: commit → last live router's ack.
    pub convergence: Histogram,
    /// Wakes the campaign: the leader key went away, or this router lost its term.
    pub(crate) leader_changed: tokio::sync::Notify,
    /// The host agents, their registrations, desired processes and reports.
    pub hosts: cutover_fleet::hosts::HostsView,
    /// The lease this router's ack lives on (0: none yet), revoked by a clean stop.
    pub(crate) ack_lease: std::sync::atomic::AtomicI64,
}

impl FleetLink {
    pub fn new(etcd: Etcd, fleet: &str, router_id: String, admin_url: String, ack_timeout: Duration) -> FleetLink {
        FleetLink {
            etcd,
            keys: Keys::new(fleet),
            router_id,
            admin_url,
            ack_timeout,
            state: Mutex::new(LinkState {
                since: cutover_store::now_rfc3339(),
                ..LinkState::default()
            }),
            ack_due: tokio::sync::Notify::new(),
            resync: tokio::sync::Notify::new(),
            convergence: Histogram::default(),
            leader_changed: tokio::sync::Notify::new(),
            hosts: Default::default(),
            ack_lease: Default::default(),
        }
    }

    /// A clean stop (the fleet's tasks already stopped): gives the leader key and this
    /// router's ack up at once, so another router leads without waiting out the leader
    /// lease and switches stop waiting for this router's ack.
    pub async fn resign(&self) {
        let term = self.st().term.take();
        let mut leases = vec![self.ack_lease.load(std::sync::atomic::Ordering::Relaxed)];
        if let Some(t) = term {
            leases.push(t.lease);
            tracing::info!(fleet = %self.keys.prefix(), "fleet: giving up the leadership (clean stop)");
        }
        for lease in leases.into_iter().filter(|l| *l != 0) {
            let why = match tokio::time::timeout(Duration::from_secs(1), self.etcd.lease_revoke(lease)).await {
                Ok(Ok(())) => continue,
                Ok(Err(e)) => e.to_string(),
                Err(_) => "no answer within 1 s".to_string(),
            };
            tracing::warn!(error = %why, "fleet: could not revoke a lease at stop; it runs out by itself");
        }
    }

    fn st(&self) -> std::sync::MutexGuard<'_, LinkState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `(connected, since)`.
    pub fn connected(&self) -> (bool, String) {
        let s = self.st();
        (s.connected, s.since.clone())
    }

    /// A read of etcd failed with `why`: cut from it. Logged when the reason changes, not
    /// at every retry.
    pub(crate) fn set_cut(&self, why: &cutover_fleet::EtcdError) {
        let why = why.to_string();
        let mut s = self.st();
        if s.error.as_deref() != Some(&why) {
            tracing::warn!(fleet = %self.keys.prefix(), error = %why, "fleet: cannot read from etcd");
            s.error = Some(why);
        }
        drop(s);
        self.set_connected(false);
    }

    pub(crate) fn set_connected(&self, connected: bool) {
        let mut s = self.st();
        if connected {
            s.error = None;
        }
        if s.connected != connected {
            s.connected = connected;
            s.since = cutover_store::now_rfc3339();
            if connected {
                tracing::info!(fleet = %self.keys.prefix(), "connected to etcd");
            } else {
                tracing::warn!(fleet = %self.keys.prefix(), "cut from etcd: serving the last applied state");
            }
        }
    }

    pub fn revision(&self) -> i64 {
        self.st().revision
    }

    /// Moves the applied revision forward only: a re-read after etcd was restored from a
    /// backup may read an older one, which the caller handles.
    pub(crate) fn set_revision(&self, revision: i64) {
        let mut s = self.st();
        s.revision = revision;
    }

    pub fn applied(&self, service: &str) -> Option<Applied> {
        self.st().applied.get(service).copied()
    }

    pub(crate) fn record_applied(&self, service: &str, a: Applied) {
        let mut s = self.st();
        s.rejected.remove(service);
        s.ahead.remove(service);
        let latest = s.latest.entry(service.to_string()).or_default();
        *latest = (*latest).max(a.generation);
        s.applied.insert(service.to_string(), a);
        drop(s);
        self.ack_due.notify_one();
    }

    /// etcd holds generation `stored` of `service`, older than the `serving` one this
    /// router keeps (it never applies an older generation): reported, not hidden.
    pub(crate) fn record_ahead(&self, service: &str, stored: u64, serving: u64) {
        self.st().ahead.insert(service.to_string(), (stored, serving));
    }

    /// How many services this router serves at a newer generation than etcd holds.
    pub fn ahead_count(&self) -> usize {
        self.st().ahead.len()
    }

    /// A newer document of `service` seen but not applied (`reason`): the ack says so.
    pub(crate) fn record_rejected(&self, service: &str, generation: Option<u64>, reason: String) {
        let mut s = self.st();
        if let Some(g) = generation {
            let latest = s.latest.entry(service.to_string()).or_default();
            *latest = (*latest).max(g);
        }
        s.rejected.insert(service.to_string(), reason);
        drop(s);
        self.ack_due.notify_one();
    }

    /// This router's ack, as it would write it now.
    pub(crate) fn own_ack(&self) -> Ack {
        let s = self.st();
        let generations: BTreeMap<String, u64> = s.applied.iter().map(|(k, a)| (k.clone(), a.generation)).collect();
        let text: String = generations.iter().map(|(k, g)| format!("{k}={g};")).collect();
        let reason = (!s.rejected.is_empty()).then(|| {
            s.rejected
                .iter()
                .map(|(svc, why)| format!("service {svc}: {why}"))
                .collect::<Vec<_>>()
                .join("; ")
        });
        Ack {
            hash: cutover_fleet::doc::hash_hex(&text),
            generations,
            status: if reason.is_some() {
                AckStatus::Rejected
            } else {
                AckStatus::Synced
            },
            reason,
            admin_url: self.admin_url.clone(),
            revision: s.revision,
            at: cutover_store::now_rfc3339(),
        }
    }

    /// Every router and its state now: against the newest generation seen per service.
    pub fn view(&self) -> serde_json::Value {
        let s = self.st();
        let mut routers = Vec::new();
        for (lost, map) in [(false, &s.routers), (true, &s.lost)] {
            for (id, ack) in map {
                let state = if lost {
                    AckState::Lost
                } else if ack.status == AckStatus::Rejected {
                    AckState::Rejected
                } else if s
                    .latest
                    .iter()
                    .any(|(svc, g)| ack.generations.get(svc).is_none_or(|a| a < g))
                {
                    AckState::Stale
                } else {
                    AckState::Synced
                };
                routers.push(serde_json::json!({
                    "id": id, "state": state, "generations": ack.generations, "hash": ack.hash,
                    "status": ack.status, "reason": ack.reason, "admin_url": ack.admin_url,
                    "revision": ack.revision, "at": ack.at,
                }));
            }
        }
        serde_json::json!({
            "fleet": self.keys.prefix(),
            "router_id": self.router_id,
            "connected": s.connected,
            "since": s.since,
            "etcd_error": s.error,
            "revision": s.revision,
            "services": s.latest,
            "ahead_of_etcd": s.ahead.iter().map(|(svc, (stored, serving))| {
                (svc.clone(), serde_json::json!({"etcd": stored, "serving": serving}))
            }).collect::<serde_json::Map<_, _>>(),
            "routers": routers,
            "leader": s.leader.as_ref().map(|(d, rev)| serde_json::json!({
                "router_id": d.router_id, "admin_url": d.admin_url, "since": d.since, "revision": rev,
            })),
            "is_leader": s.term.is_some(),
            "agents": self.hosts.view(),
        })
    }

    /// How many routers are in each state now (for `cutover_fleet_acks{state}`).
    pub fn counts(&self) -> [(AckState, u64); 4] {
        let v = self.view();
        let mut out = AckState::ALL.map(|s| (s, 0));
        for r in v["routers"].as_array().into_iter().flatten() {
            for (s, n) in out.iter_mut() {
                if r["state"] == s.as_str() {
                    *n += 1;
                }
            }
        }
        out
    }

    /// The leader as last read (`None`: no leader, or not read yet).
    pub fn leader(&self) -> Option<LeaderDoc> {
        self.st().leader.as_ref().map(|(d, _)| d.clone())
    }

    /// A leader key read or watched (`None`: it is gone).
    pub(crate) fn set_leader(&self, kv: Option<&Kv>) {
        let leader = kv.and_then(|kv| Some((LeaderDoc::parse(&kv.value).ok()?, kv.create_revision)));
        let gone = leader.is_none();
        self.st().leader = leader;
        if gone {
            self.leader_changed.notify_one();
        }
    }

    /// True while this router holds the leader key (as far as it knows: a fenced write is
    /// what proves it).
    pub fn is_leader(&self) -> bool {
        self.st().term.is_some()
    }

    pub(crate) fn term(&self) -> Option<Term> {
        self.st().term
    }

    pub(crate) fn won(&self, term: Term, doc: LeaderDoc, next_release_id: i64) {
        let mut s = self.st();
        s.term = Some(term);
        s.leader = Some((doc, term.create_revision));
        s.next_release_id = s.next_release_id.max(next_release_id);
    }

    /// Ends this router's term (its lease expired, or a fenced write found another leader):
    /// returns whether it was the leader. The campaign halts the release runs.
    pub(crate) fn step_down(&self, why: &str) -> bool {
        let mut s = self.st();
        let was = s.term.take().is_some();
        if was {
            if s.leader.as_ref().is_some_and(|(d, _)| d.router_id == self.router_id) {
                s.leader = None;
            }
            drop(s);
            tracing::error!(fleet = %self.keys.prefix(), %why, "fleet: stepped down as leader; release runs stop here without touching processes");
            self.leader_changed.notify_one();
        }
        was
    }

    /// A release document read or watched (`None`: deleted).
    pub(crate) fn release_seen(&self, service: &str, id: i64, doc: Option<serde_json::Value>) {
        let mut s = self.st();
        let running = doc.filter(|d| d["outcome"].is_null());
        match running {
            Some(d) => {
                if s.in_progress.get(service).is_none_or(|(known, _)| *known <= id) {
                    s.in_progress.insert(service.to_string(), (id, d));
                }
            }
            None => {
                if s.in_progress.get(service).is_some_and(|(known, _)| *known == id) {
                    s.in_progress.remove(service);
                }
            }
        }
    }

    /// The release of `service` in progress on the leader, as etcd last said.
    pub fn release_in_progress(&self, service: &str) -> Option<serde_json::Value> {
        self.st().in_progress.get(service).map(|(_, d)| d.clone())
    }

    /// The floor for the next release id (see `Store::insert_release_from`).
    pub(crate) fn next_release_id(&self) -> i64 {
        self.st().next_release_id
    }

    pub(crate) fn used_release_id(&self, id: i64) {
        let mut s = self.st();
        s.next_release_id = s.next_release_id.max(id + 1);
    }

    fn not_leader(&self) -> FenceError {
        FenceError::NotLeader {
            leader: self.leader().map(|l| l.router_id),
        }
    }

    /// Runs `txn` only if this router still holds the leader key it won: the compare on the
    /// key's `create_revision` fences a paused old leader out. The failure branch reads the
    /// leader key last; when the fence is what failed, this router steps down and the
    /// answer is `NotLeader`. Otherwise the caller's own compares failed (`succeeded: false`).
    pub(crate) async fn fenced(&self, mut txn: Txn) -> Result<TxnResult, FenceError> {
        let Some(term) = self.term() else {
            return Err(self.not_leader());
        };
        let key = self.keys.leader();
        txn.compare
            .push(Compare::CreateRevision(key.clone(), term.create_revision));
        txn.failure.push(Op::Get { key });
        let mut r = self.etcd.txn(&txn).await?;
        if !r.succeeded {
            let leader = r.gets.pop().unwrap_or_default();
            let holder = leader.first();
            if holder.map(|kv| kv.create_revision) != Some(term.create_revision) {
                self.set_leader(holder);
                let now = holder
                    .and_then(|kv| LeaderDoc::parse(&kv.value).ok())
                    .map(|d| d.router_id)
                    .unwrap_or_else(|| "nobody".into());
                self.step_down(&format!(
                    "a fenced write failed: the leader key is no longer the one won at revision {} (the leader is {now})",
                    term.create_revision
                ));
                return Err(self.not_leader());
            }
        }
        Ok(r)
    }

    /// Writes a release document (fenced: only the leader's runs write them).
    pub(crate) async fn put_release(&self, service: &str, id: i64, doc: &serde_json::Value) -> Result<(), FenceError> {
        let txn = Txn {
            compare: vec![],
            success: vec![Op::Put {
                key: self.keys.release(service, id),
                value: serde_json::to_vec(doc).expect("a release document serializes").into(),
                lease: 0,
            }],
            failure: vec![],
        };
        self.fenced(txn).await.map(|_| ())
    }

    /// Every release document of `service` in etcd, by id.
    pub(crate) async fn releases(
        &self,
        service: &str,
    ) -> Result<BTreeMap<i64, serde_json::Value>, cutover_fleet::EtcdError> {
        let prefix = self.keys.service_releases(service);
        let r = self.etcd.range_prefix(&prefix).await?;
        Ok(r.kvs
            .iter()
            .filter_map(|kv| {
                let id = kv.key.strip_prefix(&prefix)?.parse().ok()?;
                Some((id, serde_json::from_slice(&kv.value).ok()?))
            })
            .collect())
    }

    /// The switch, fleet-wide: one transaction that puts the new document and its history
    /// record if the document is still the one this router applied at `expected` (its
    /// `mod_revision`). Returns the new document's revision.
    pub async fn commit_switch(
        &self,
        service: &str,
        expected: u64,
        doc: &ServiceDoc,
        history: &HistoryRecord,
        fenced: bool,
    ) -> Result<i64, SwitchError> {
        let Some(applied) = self.applied(service) else {
            return Err(SwitchError::Fleet {
                detail: format!("service {service} has not been read from etcd yet; try again once connected"),
            });
        };
        if applied.generation != expected {
            return Err(SwitchError::StaleGeneration {
                expected,
                actual: applied.generation,
            });
        }
        let key = self.keys.service(service);
        let value = bytes::Bytes::from(doc.to_bytes());
        let txn = Txn {
            compare: vec![Compare::ModRevision(key.clone(), applied.mod_revision)],
            success: vec![
                Op::Put {
                    key: key.clone(),
                    value: value.clone(),
                    lease: 0,
                },
                Op::Put {
                    key: self.keys.history(service, doc.generation),
                    value: serde_json::to_vec(history).expect("a history record serializes").into(),
                    lease: 0,
                },
            ],
            failure: vec![Op::Get { key }],
        };
        // A release's switch is the leader's write: fenced, so a paused old leader's run
        // cannot switch after another router took over. Manual switches are anyone's.
        let r = if fenced {
            self.fenced(txn).await.map_err(|e| SwitchError::Fleet {
                detail: match e {
                    FenceError::Etcd(e) => not_confirmed(&e),
                    e => format!("the switch was not committed ({e}); nothing changed"),
                },
            })?
        } else {
            self.etcd.txn(&txn).await.map_err(|e| SwitchError::Fleet {
                detail: not_confirmed(&e),
            })?
        };
        self.switch_outcome(service, expected, doc.generation, &value, r)
    }

    /// What a switch's transaction result means: committed (this router applied it), a
    /// first attempt that had landed (the same bytes: ours), or another writer's document.
    fn switch_outcome(
        &self,
        service: &str,
        expected: u64,
        generation: u64,
        value: &[u8],
        r: TxnResult,
    ) -> Result<i64, SwitchError> {
        let mod_revision = match r.gets.first().and_then(|g| g.first()) {
            _ if r.succeeded => r.revision,
            // A first attempt that timed out on a member that had applied it: it is ours.
            Some(kv) if kv.value == value => kv.mod_revision,
            Some(kv) => {
                return Err(SwitchError::StaleGeneration {
                    expected,
                    actual: ServiceDoc::parse(&kv.value).map(|d| d.generation).unwrap_or(expected),
                })
            }
            None => {
                return Err(SwitchError::Fleet {
                    detail: format!("the document of service {service} was deleted from etcd; nothing changed"),
                })
            }
        };
        self.record_applied(
            service,
            Applied {
                generation,
                mod_revision,
            },
        );
        Ok(mod_revision)
    }
}

/// A router going LOST is worth a line with why: it is what makes a switch's answer
/// report fewer routers synced, and scale-downs stop waiting for it.
fn lost_log(id: &str, ack: &Ack, why: &str) {
    tracing::warn!(router = %id, last_ack_at = %ack.at, generations = ?ack.generations, "fleet: router LOST: {why}");
}

/// How a router or an agent reaches etcd, from the checked settings: the client
/// certificate and the CA come from `cert_store` and `ca_store` (whose owner keeps them
/// fresh), the password stays in its file.
pub fn etcd_access(
    tls: Option<&cutover_config::EtcdTls>,
    user: Option<&cutover_config::EtcdUser>,
    cert_store: impl FnOnce(&cutover_config::TlsConfig) -> anyhow::Result<std::sync::Arc<cutover_proxy::tls::CertStore>>,
    ca_store: impl FnOnce(&std::path::Path) -> anyhow::Result<std::sync::Arc<cutover_proxy::tls::CaStore>>,
) -> anyhow::Result<cutover_fleet::Access> {
    let tls = match tls {
        Some(t) => {
            let cert = t.client.as_ref().map(cert_store).transpose()?;
            let ca = t.ca.as_deref().map(ca_store).transpose()?;
            let config = cutover_fleet::access::tls_config(ca, cert).map_err(|e| anyhow::anyhow!("store.tls: {e}"))?;
            Some(config)
        }
        None => None,
    };
    Ok(cutover_fleet::Access {
        tls,
        user: user.map(|u| cutover_fleet::Credentials {
            name: u.name.clone(),
            password_file: u.password_file.clone(),
        }),
    })
}
