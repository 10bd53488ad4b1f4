//! Fleet mode's sync: reads every service document from etcd, applies the newer ones to the
//! services (publishing their route tables, writing the local snapshot), acknowledges under
//! `routers/<id>` on a lease, and watches the fleet's prefix from the read revision + 1. On
//! compaction, a stream error, a revision going backwards or silence past a deadline, it
//! reads everything again and watches anew; a timeout never advances the revision.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use cutover_fleet::doc::{HistoryRecord, ServiceDoc, Versions};
use cutover_fleet::etcd::{Compare, Event, Kv, Op, Txn, WatchMsg};
use cutover_fleet::EtcdError;
use cutover_proxy::Color;

use crate::base::store_call::blocking;
use crate::controller::Controller;
use crate::fleet::link::{config_hash, Applied, FleetLink};
use crate::service::ServiceCtl;

/// A router's ack lives this long after its last renewal (its lease's TTL, seconds).
pub const ACK_TTL: i64 = 5;
/// No watch message (event or progress) for this long: ask the watch's member whether it
/// is up and in a quorum (one linearizable read of one key, counted, not sent), and read
/// everything again only if it is not. etcd sends progress notifications only as often as
/// `--experimental-watch-progress-notify-interval` (10 minutes by default), so this is what
/// bounds how long a member that died or left its quorum is believed.
pub const WATCH_SILENCE: Duration = Duration::from_secs(10);
/// No watch message for this long, however well the member answers: read everything again.
/// The probe rides another connection than the stream, so a stream whose own connection
/// died silently (a middlebox that forgot it) is believed at most this long.
pub const WATCH_RESYNC: Duration = Duration::from_secs(60);
/// Longest wait between attempts to reach etcd.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// The fleet's background tasks; they stop when this drops.
pub struct FleetTasks(Vec<tokio::task::JoinHandle<()>>);

impl Drop for FleetTasks {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

/// Starts the sync and the ack writer, and waits up to `first_read` for the first read so a
/// router that can reach etcd serves the fleet's state from its first request. One that
/// cannot serves its snapshot meanwhile and says so (`GET /v1/fleet`: `connected: false`).
pub async fn start(ctl: Arc<Controller>, link: Arc<FleetLink>, first_read: Duration) -> FleetTasks {
    let tasks = vec![
        tokio::spawn(sync(ctl.clone(), link.clone())),
        tokio::spawn(acks(link.clone())),
        tokio::spawn(crate::fleet::leader::campaign(ctl, link.clone())),
    ];
    let deadline = tokio::time::Instant::now() + first_read;
    while !link.connected().0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if !link.connected().0 {
        tracing::warn!(fleet = %link.keys.prefix(), "etcd not reachable at start: serving the local snapshot until it is");
    }
    FleetTasks(tasks)
}

/// Why a watch ended, so the sync reads everything again.
enum Rewatch {
    Compacted(i64),
    Canceled(String),
    Backwards { seen: i64, applied: i64 },
    Silence,
    MemberSilent(EtcdError),
    Resync,
    Broken(EtcdError),
}

impl std::fmt::Display for Rewatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Rewatch::Compacted(r) => write!(f, "history compacted up to revision {r} while the watch was behind"),
            Rewatch::Canceled(why) => write!(f, "watch canceled by etcd: {why}"),
            Rewatch::Backwards { seen, applied } => {
                write!(
                    f,
                    "revision went backwards ({seen} < {applied}): etcd restored from a backup?"
                )
            }
            Rewatch::Silence => write!(f, "no watch message for {WATCH_RESYNC:?}"),
            Rewatch::MemberSilent(e) => {
                write!(
                    f,
                    "no watch message for {WATCH_SILENCE:?} and the member does not answer: {e}"
                )
            }
            Rewatch::Resync => f.write_str("a service was added"),
            Rewatch::Broken(e) => write!(f, "watch stream failed: {e}"),
        }
    }
}

async fn sync(ctl: Arc<Controller>, link: Arc<FleetLink>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        if let Err(e) = read_all(&ctl, &link).await {
            link.set_cut(&e);
            tokio::time::sleep(cutover_fleet::jittered(backoff)).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
            continue;
        }
        link.set_connected(true);
        backoff = Duration::from_millis(100);
        let why = watch(&ctl, &link, link.revision() + 1).await;
        match &why {
            Rewatch::Broken(_) | Rewatch::MemberSilent(_) => {
                tracing::warn!(why = %why, "fleet: reading everything again")
            }
            _ => tracing::info!(why = %why, "fleet: reading everything again"),
        }
    }
}

/// Reads every service document (not the acks: whoever waits for them reads them), applies them, creates the documents etcd does not
/// have yet from the local state, and sets the revision the watch starts after.
async fn read_all(ctl: &Controller, link: &FleetLink) -> Result<(), EtcdError> {
    let services = link.etcd.range_prefix(&link.keys.services()).await?;
    let releases = link.etcd.range_prefix(&link.keys.releases()).await?;
    let mut agent_kvs = Vec::new();
    for prefix in [
        link.keys.hosts(),
        link.keys.agents(),
        link.keys.desired(),
        link.keys.reports(),
    ] {
        agent_kvs.extend(link.etcd.range_prefix(&prefix).await?.kvs);
    }
    link.hosts.read(&link.keys, &agent_kvs);
    // A leader key that went while no watch ran is seen here, not only by the slow poll.
    let (leader, _) = link.etcd.get(&link.keys.leader()).await?;
    link.set_leader(leader.as_ref());
    for kv in &releases.kvs {
        if let Some((service, id)) = link.keys.release_of(&kv.key) {
            link.release_seen(service, id, serde_json::from_slice(&kv.value).ok());
        }
    }
    let before = link.revision();
    if services.revision < before {
        tracing::warn!(
            read = services.revision,
            applied = before,
            "fleet: etcd's revision went backwards (restored from a backup?): only newer generations will apply"
        );
    }
    let seen = Seen::Read {
        revision: services.revision,
        went_back: services.revision < before,
    };
    let mut docs: BTreeMap<&str, &Kv> = BTreeMap::new();
    for kv in &services.kvs {
        if let Some(name) = link.keys.service_name(&kv.key) {
            docs.insert(name, kv);
        }
    }
    for svc in ctl.services().values() {
        match docs.get(svc.name.as_str()) {
            Some(kv) => apply(link, svc, kv, seen).await,
            None => create(link, svc).await?,
        }
    }
    // The services' read is the oldest: the watch replays what followed it, and replaying a
    // document already applied changes nothing.
    link.set_revision(services.revision);
    link.ack_due.notify_one();
    Ok(())
}

/// The document of a service etcd does not know yet, from this router's state; created
/// only if still absent (another router may be creating it at the same moment).
async fn create(link: &FleetLink, svc: &ServiceCtl) -> Result<(), EtcdError> {
    let table = svc.proxy.table();
    let doc = ServiceDoc {
        generation: table.generation,
        live: table.live_color(),
        weight: table.weight,
        versions: versions(svc),
        config_hash: config_hash(&svc.cfg()),
        updated_at: cutover_store::now_rfc3339_millis(),
        actor: format!("router:{}", link.router_id),
        router: link.router_id.clone(),
    };
    let key = link.keys.service(&svc.name);
    let r = link
        .etcd
        .txn(&Txn {
            compare: vec![Compare::CreateRevision(key.clone(), 0)],
            success: vec![Op::Put {
                key: key.clone(),
                value: doc.to_bytes().into(),
                lease: 0,
            }],
            failure: vec![Op::Get { key }],
        })
        .await?;
    if r.succeeded {
        tracing::info!(service = %svc.name, generation = doc.generation, "fleet: created the service's document from the local state");
        link.record_applied(
            &svc.name,
            Applied {
                generation: doc.generation,
                mod_revision: r.revision,
            },
        );
    } else if let Some(kv) = r.gets.first().and_then(|g| g.first()) {
        let seen = Seen::Read {
            revision: r.revision,
            went_back: false,
        };
        apply(link, svc, kv, seen).await;
    }
    Ok(())
}

fn versions(svc: &ServiceCtl) -> Versions {
    Versions {
        blue: svc.version_of(Color::Blue),
        green: svc.version_of(Color::Green),
    }
}

mod plan;
use plan::{plan, Install, Plan, Seen, Served};

/// Applies a stored document to a service as [`plan`] decides, under the service's lock.
async fn apply(link: &FleetLink, svc: &ServiceCtl, kv: &Kv, seen: Seen) {
    let parsed = ServiceDoc::parse(&kv.value);
    let _op = svc.op.lock().await;
    let table = svc.proxy.table();
    let served = Served {
        generation: table.generation,
        weight: table.weight,
        versions: versions(svc),
        with_endpoints: Color::ALL
            .into_iter()
            .filter(|c| svc.route(*c).is_some_and(|r| !r.endpoints().is_empty()))
            .collect(),
    };
    let previous = link.applied(&svc.name);
    match plan(
        &svc.name,
        parsed,
        kv.mod_revision,
        &served,
        previous,
        seen,
        &link.router_id,
    ) {
        Plan::Nothing => {
            tracing::debug!(service = %svc.name, serving = served.generation, "fleet: an older document arrived after this router's newer one; nothing to do");
        }
        Plan::Record(applied) => link.record_applied(&svc.name, applied),
        Plan::Ahead {
            applied,
            stored,
            serving,
        } => {
            tracing::warn!(service = %svc.name, stored, serving, "fleet: etcd holds an older generation than this router serves; keeping ours");
            link.record_applied(&svc.name, applied);
            link.record_ahead(&svc.name, stored, serving);
        }
        Plan::Reject { generation, reason } => reject(link, svc, generation, reason),
        Plan::Install(i) => install(link, svc, i).await,
    }
}

/// Publishes the planned routing, then writes the local snapshot (and history line).
async fn install(link: &FleetLink, svc: &ServiceCtl, i: Install) {
    for (c, v) in i.versions {
        svc.install(c, v);
    }
    svc.watch(i.live);
    svc.publish_weighted(Some(i.live), i.state.generation, i.weight);
    tracing::info!(service = %svc.name, live = %i.live, weight = i.weight, generation = i.state.generation, actor = %i.actor, "fleet: applied");
    let own = match i.own {
        true => own_record(link, &svc.name, i.state.generation).await,
        false => None,
    };
    write_snapshot(svc, i.state, i.previous, own).await;
    link.record_applied(&svc.name, i.applied);
}

/// A switch this router made whose answer could not be confirmed (etcd changing leaders)
/// but which committed: its line in this router's history, from etcd's record of it. A
/// confirmed one was published before the watch brought it back, so it never gets here.
/// The record is read without a quorum (serializable): such a commit is typically seen
/// while etcd is just losing or regaining one, and the record never changes once written.
async fn own_record(link: &FleetLink, service: &str, generation: u64) -> Option<HistoryRecord> {
    let key = link.keys.history(service, generation);
    for _ in 0..3 {
        match link.etcd.get_serializable(&key).await {
            Ok((Some(kv), _)) => return serde_json::from_slice::<HistoryRecord>(&kv.value).ok(),
            // A member behind the one the document came from: ask again shortly.
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    tracing::warn!(service, generation, "fleet: a switch of this router committed after an unconfirmed answer, but its history record could not be read; the local history misses its line");
    None
}

/// The local snapshot (the state a restart serves while etcd is away), with this router's
/// own history line when `own` is its record of the switch.
async fn write_snapshot(
    svc: &ServiceCtl,
    state: cutover_store::ServiceState,
    expected: u64,
    own: Option<HistoryRecord>,
) {
    let name = svc.name.clone();
    let written = blocking(&svc.store, move |s| {
        let Some(h) = own else {
            return s.apply_snapshot(&state).map(|_| ());
        };
        let rec = cutover_store::SwitchRecord {
            service: &name,
            expected_generation: expected,
            to: state.live.unwrap_or(cutover_store::Color::Blue),
            kind: if h.kind == cutover_store::HistoryKind::RolledBack {
                cutover_store::SwitchKind::RolledBack
            } else {
                cutover_store::SwitchKind::Switched
            },
            actor: &h.actor,
            reason: &h.reason,
            release_id: None,
        };
        match s.switch(&rec) {
            Err(cutover_store::StoreError::Conflict { .. }) => s.apply_snapshot(&state).map(|_| ()),
            r => r.map(|_| ()),
        }
    })
    .await;
    if let Err(e) = written {
        tracing::error!(service = %svc.name, error = %e, "fleet: cannot write the local snapshot; a restart while etcd is away would serve an older state");
    }
}

fn reject(link: &FleetLink, svc: &ServiceCtl, generation: Option<u64>, reason: String) {
    tracing::error!(service = %svc.name, %reason, "fleet: rejected the service's document; keeping the state served now");
    link.record_rejected(&svc.name, generation, reason);
}

/// Follows the fleet's keys (all but the acks and the history: `Keys::watched`) from
/// `from` until the stream must be replaced.
async fn watch(ctl: &Controller, link: &FleetLink, from: i64) -> Rewatch {
    let mut w = match link.etcd.watch_ranges(&link.keys.watched(), from, true).await {
        Ok(w) => w,
        Err(e) => return Rewatch::Broken(e),
    };
    let mut heard = tokio::time::Instant::now();
    loop {
        let msg = tokio::select! {
            m = tokio::time::timeout(WATCH_SILENCE, w.next()) => m,
            _ = link.resync.notified() => return Rewatch::Resync,
        };
        let msg = match msg {
            Err(_) if heard.elapsed() >= WATCH_RESYNC => return Rewatch::Silence,
            // Silence is the normal state of an idle fleet: one cheap question to the
            // member instead of reading everything again.
            Err(_) => match link.etcd.probe(w.member(), &link.keys.leader()).await {
                Ok(_) => continue,
                Err(e) => return Rewatch::MemberSilent(e),
            },
            Ok(Err(e)) => return Rewatch::Broken(e),
            Ok(Ok(m)) => m,
        };
        heard = tokio::time::Instant::now();
        match msg {
            WatchMsg::Created { .. } => {}
            WatchMsg::Compacted { compact_revision } => return Rewatch::Compacted(compact_revision),
            WatchMsg::Canceled { reason } => return Rewatch::Canceled(reason),
            WatchMsg::Progress { revision } => {
                let applied = link.revision();
                if revision < applied {
                    return Rewatch::Backwards {
                        seen: revision,
                        applied,
                    };
                }
                link.set_revision(revision);
            }
            WatchMsg::Events { revision, events } => {
                let applied = link.revision();
                if revision < applied {
                    return Rewatch::Backwards {
                        seen: revision,
                        applied,
                    };
                }
                for e in &events {
                    event(ctl, link, e).await;
                }
                link.set_revision(revision);
            }
        }
    }
}

async fn event(ctl: &Controller, link: &FleetLink, e: &Event) {
    let key = &e.kv().key;
    if let Some(name) = link.keys.service_name(key) {
        let Ok(svc) = ctl.service(name) else { return };
        match e {
            Event::Put(kv) => apply(link, &svc, kv, Seen::Event).await,
            Event::Delete(_) => {
                tracing::warn!(service = %name, "fleet: the service's document was deleted from etcd; keeping the state served now")
            }
        }
    } else if let Some((service, id)) = link.keys.release_of(key) {
        let doc = match e {
            Event::Put(kv) => serde_json::from_slice(&kv.value).ok(),
            Event::Delete(_) => None,
        };
        link.release_seen(service, id, doc);
    } else if *key == link.keys.leader() {
        match e {
            Event::Put(kv) => link.set_leader(Some(kv)),
            Event::Delete(_) => link.set_leader(None),
        }
    } else if cutover_fleet::hosts::HostKey::of(&link.keys, key).is_some() {
        let kv = match e {
            Event::Put(kv) => Some(kv),
            Event::Delete(_) => None,
        };
        if let Some(host) = link.hosts.event(&link.keys, key, kv) {
            // A host agent (re)registered at a new address: the services it serves move
            // their endpoints now, not at the next resolve interval.
            for svc in ctl.services().values() {
                if svc.runs_on(&host) {
                    let svc = svc.clone();
                    tokio::spawn(async move { svc.resolve_names().await });
                }
            }
        }
    }
}

/// Keeps this router's ack under `routers/<id>` on a lease: written whenever what it
/// applied changes, renewed every third of the TTL, written anew on a new lease when the
/// old one expired (the router was cut from etcd for longer than the TTL).
///
/// The renewal runs on its own clock: a put does not extend a lease, so a renewal that
/// waited for a quiet moment never came under steady switching, and healthy routers went
/// LOST every TTL.
async fn acks(link: Arc<FleetLink>) {
    // Nothing to say before the first read.
    link.ack_due.notified().await;
    let key = link.keys.router(&link.router_id);
    let period = Duration::from_millis(ACK_TTL as u64 * 1000 / 3);
    let mut lease: Option<i64> = None;
    let mut due = true;
    // The `mod_revision` of the ack as this router last wrote or read it (0: absent).
    let mut written = 0;
    let mut renew_at = tokio::time::Instant::now() + period;
    loop {
        let id = match lease {
            Some(id) => id,
            None => match link.etcd.lease_grant(ACK_TTL).await {
                Ok(l) => {
                    lease = Some(l.id);
                    link.ack_lease.store(l.id, std::sync::atomic::Ordering::Relaxed);
                    due = true;
                    renew_at = tokio::time::Instant::now() + period;
                    l.id
                }
                Err(e) => {
                    tracing::debug!(error = %e, "fleet: cannot grant the ack's lease");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            },
        };
        if due {
            match write_ack(&link, &key, id, written).await {
                Ok(AckWrite::Done(rev)) => {
                    written = rev;
                    due = false;
                }
                Ok(AckWrite::Again(rev)) => {
                    // Someone else wrote this router's key (two processes given one
                    // `router_id`?): retry on the new revision, but not in a tight loop.
                    written = rev;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
                Err(EtcdError::Server { message, .. }) if message.contains("lease not found") => {
                    lease = None;
                    continue;
                }
                Err(e) => {
                    tracing::debug!(error = %e, "fleet: cannot write the ack");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            }
        }
        tokio::select! {
            _ = link.ack_due.notified() => due = true,
            _ = tokio::time::sleep_until(renew_at) => match renew(&link, id).await {
                Renewal::Done => renew_at = tokio::time::Instant::now() + period,
                // Tried again soon, not a whole period later: on a loaded machine one slow
                // call must not let the lease run out.
                Renewal::Failed => renew_at = tokio::time::Instant::now() + Duration::from_millis(200),
                Renewal::Expired => lease = None,
            },
        }
    }
}

enum AckWrite {
    /// The ack etcd holds is this one, written at this revision.
    Done(i64),
    /// etcd holds another (at this revision, 0: none): write again, comparing on it.
    Again(i64),
}

/// Writes this router's ack if etcd still holds the one written last (`written`): a put of
/// an older ack that timed out and landed late (retried through another member) can then
/// never overwrite a newer one; its compare fails. No router watches the acks all the time,
/// so this router would not see its own ack go back, as it did when it watched them all.
async fn write_ack(link: &FleetLink, key: &str, lease: i64, written: i64) -> Result<AckWrite, EtcdError> {
    let value = bytes::Bytes::from(link.own_ack().to_bytes());
    let r = link
        .etcd
        .txn(&Txn {
            compare: vec![Compare::ModRevision(key.to_string(), written)],
            success: vec![Op::Put {
                key: key.to_string(),
                value: value.clone(),
                lease,
            }],
            failure: vec![Op::Get { key: key.to_string() }],
        })
        .await?;
    if r.succeeded {
        return Ok(AckWrite::Done(r.revision));
    }
    Ok(match r.gets.first().and_then(|g| g.first()) {
        // The same attempt, retried through another member after it had landed.
        Some(kv) if kv.value == value => AckWrite::Done(kv.mod_revision),
        Some(kv) => AckWrite::Again(kv.mod_revision),
        None => AckWrite::Again(0),
    })
}

enum Renewal {
    Done,
    Failed,
    Expired,
}

async fn renew(link: &FleetLink, lease: i64) -> Renewal {
    match link.etcd.lease_keepalive(lease).await {
        Ok(Some(_)) => Renewal::Done,
        Ok(None) => {
            tracing::warn!("fleet: the ack's lease expired (cut from etcd too long); writing the ack again");
            Renewal::Expired
        }
        Err(e) => {
            tracing::debug!(error = %e, "fleet: cannot renew the ack's lease");
            Renewal::Failed
        }
    }
}

/// `<hostname>-<admin port>`: unique per machine without configuration, stable across
/// restarts as long as the admin port is fixed.
fn default_router_id(admin: std::net::SocketAddr) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| {
            !h.is_empty()
                && h.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        })
        .unwrap_or_else(|| "router".into());
    format!("{host}-{}", admin.port())
}

/// Joins the fleet `cfg` names: attaches the link to the controller (switches commit through
/// etcd from now on) and starts the sync, waiting a little for the first read.
pub async fn join(
    ctl: Arc<Controller>,
    cfg: &cutover_config::FleetConfig,
    admin: std::net::SocketAddr,
    certs: &crate::base::certs::Certs,
) -> anyhow::Result<FleetTasks> {
    let id = cfg.router_id.clone().unwrap_or_else(|| default_router_id(admin));
    let access = etcd_access(
        cfg.tls.as_ref(),
        cfg.user.as_ref(),
        |t| certs.store("store.tls", t),
        |ca| certs.ca("store.tls.ca", ca),
    )?;
    let link = Arc::new(FleetLink::new(
        cutover_fleet::Etcd::connect(cfg.members.clone(), access).spread_by(&id),
        &cfg.name,
        id.clone(),
        // What acks advertise and where release requests are forwarded.
        format!(
            "{}://{admin}",
            if ctl.config.admin.tls.is_some() {
                "https"
            } else {
                "http"
            }
        ),
        cfg.ack_timeout.get(),
    ));
    tracing::info!(fleet = %cfg.name, router_id = %id, members = %cfg.members.join(","), access = ?link.etcd.access(), "fleet mode: joining");
    ctl.attach_fleet(link.clone());
    Ok(start(ctl, link, FIRST_READ).await)
}

pub use crate::fleet::link::etcd_access;

/// How long `serve` waits for the first read from etcd before serving its snapshot.
const FIRST_READ: Duration = Duration::from_secs(3);
