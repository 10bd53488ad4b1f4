//! `cutover agent`: runs, on one GPU host, the managed environments a fleet assigns to it
//! (`[services.NAME.run] hosts = [...]`). It is the single-machine supervisor
//! ([`Supervisor`]: start after a port check, logs, stop with SIGTERM then SIGKILL, restart
//! by the policy, adoption after a restart) driven by etcd instead of a release run:
//!
//! - it registers the address it advertises (`hosts/<name>`, kept: routers reach its model
//!   servers there even while it is away) and says it is there (`agents/<name>`, on a lease);
//! - it reads and watches `desired/`: each document with a new epoch that names this host
//!   is a start (or a stop) of a color, done with the supervisor; the same epoch with another
//!   role changes what an exit leads to;
//! - it reports what runs under `reports/<service>/<color>/<host>` whenever that changes
//!   (started processes, restarts, the last exit, a failed start with its reason).
//!
//! Cut from etcd it goes on as it is: processes keep running and are restarted by the
//! policy; it catches up when etcd is back. What it applied is kept in
//! `data_dir/agent-desired.json` and its processes in `data_dir/agent.db`, so a restarted
//! agent adopts the processes (same pid and start time) instead of starting them again,
//! even before etcd answers.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use cutover_config::{ColorPorts, RunConfig};
use cutover_fleet::doc::{
    Color, DesiredProcs, HostDoc, HostReport, HostState, ProcRole, ReportedExit, ReportedProcess, RunTemplate, Wanted,
};
use cutover_fleet::etcd::{Event, WatchMsg};
use cutover_fleet::{Etcd, EtcdError, Keys};
use cutover_store::{now_rfc3339, Store};

use crate::base::pause::Pause;
use crate::procs::supervisor::{self, Dirs, Role, Supervisor};

/// The presence key's lease TTL (seconds).
const LEASE_TTL: i64 = 5;
/// How often what runs is compared with what was last reported.
const REPORT_EVERY: Duration = Duration::from_millis(250);
/// No watch message for this long: read everything again.
const WATCH_SILENCE: Duration = Duration::from_secs(10);
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// What the agent applied, per service and color.
const SNAPSHOT: &str = "agent-desired.json";

/// `cutover agent`'s settings.
#[derive(Debug, Clone)]
pub struct AgentOptions {
    /// etcd members, `HOST:PORT`.
    pub members: Vec<String>,
    /// `Some` when the members are `https://`: the CA and this host's client certificate.
    pub tls: Option<cutover_config::EtcdTls>,
    /// etcd's user for this host (a role that may not write `desired/`, see docs/fleet.md).
    pub user: Option<cutover_config::EtcdUser>,
    pub fleet: String,
    /// This host's name, as services list it in `run.hosts`.
    pub host: String,
    /// The address model servers listen on (`{host}`) and routers connect to.
    pub advertise: IpAddr,
    /// Logs, the process records and the snapshot of what was applied.
    pub data_dir: PathBuf,
    /// Where processes run unless the template names a `workdir`.
    pub workdir: PathBuf,
    /// The programs (`command[0]` as the config writes it) this host runs; `None`: any.
    /// Whoever can write `desired/` in etcd chooses the command, so a host says which
    /// programs it lends itself to.
    pub allowed: Option<Vec<String>>,
}

type Key = (String, Color);

/// What the agent did with one color's desired document.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Applied {
    doc: DesiredProcs,
    state: HostState,
    error: Option<String>,
}

struct Agent {
    opts: AgentOptions,
    keys: Keys,
    etcd: Etcd,
    store: Arc<Store>,
    pause: Pause,
    /// One supervisor per service and color: each color runs the template of its own
    /// desired document (a refused or stopped one never becomes the template another
    /// color's restarts use).
    sups: Mutex<BTreeMap<Key, Arc<Supervisor>>>,
    /// The colors being reconciled now: one task per color, so a long stop of one service
    /// does not hold up another's start.
    busy: Mutex<std::collections::BTreeSet<Key>>,
    /// The newest desired document seen per color that concerns this host.
    latest: Mutex<BTreeMap<Key, DesiredProcs>>,
    applied: Mutex<BTreeMap<Key, Applied>>,
    /// Wakes the reconciler: a desired document arrived.
    work: Notify,
    /// Wakes the reporter: something was applied.
    report_due: Notify,
    connected: AtomicBool,
    lease: AtomicI64,
}

fn role_of(r: ProcRole) -> Role {
    match r {
        ProcRole::Releasing => Role::Releasing,
        ProcRole::Serving => Role::Serving,
        ProcRole::Idle => Role::Idle,
    }
}

/// The supervisor's template from the controller's, listening on `advertise`.
fn run_config(t: &RunTemplate, advertise: IpAddr) -> RunConfig {
    RunConfig {
        command: t.command.clone(),
        env: t.env.clone(),
        ports: ColorPorts {
            blue: t.blue_ports.clone(),
            green: t.green_ports.clone(),
        },
        stop_timeout: cutover_config::Duration(Duration::from_millis(t.stop_timeout_ms)),
        workdir: t.workdir.as_ref().map(PathBuf::from),
        host: advertise,
        hosts: Vec::new(),
        restart: t.restart,
        restart_limit: t.restart_limit,
        restart_window: cutover_config::Duration(Duration::from_millis(t.restart_window_ms)),
    }
}

/// Runs the agent until `shutdown` completes. Its processes keep running after it stops.
pub async fn run(opts: AgentOptions, shutdown: impl std::future::Future<Output = ()>) -> anyhow::Result<()> {
    std::fs::create_dir_all(&opts.data_dir)
        .map_err(|e| anyhow::anyhow!("cannot create the data dir {}: {e}", opts.data_dir.display()))?;
    let db = opts.data_dir.join("agent.db");
    let store = Store::open(&db).map_err(|e| anyhow::anyhow!("cannot open {}: {e}", db.display()))?;
    let (mut cert, mut ca) = (None, None);
    let access = crate::fleet::link::etcd_access(
        opts.tls.as_ref(),
        opts.user.as_ref(),
        |t| {
            let store = cutover_proxy::tls::CertStore::open("--etcd-cert", &t.cert, &t.key)
                .map_err(|e| anyhow::anyhow!("--etcd-cert: {e}"))?;
            cert = Some(store.clone());
            Ok(store)
        },
        |path| {
            let store =
                cutover_proxy::tls::CaStore::open("--etcd-ca", path).map_err(|e| anyhow::anyhow!("--etcd-ca: {e}"))?;
            ca = Some(store.clone());
            Ok(store)
        },
    )?;
    let agent = Arc::new(Agent {
        keys: Keys::new(&opts.fleet),
        etcd: Etcd::connect(opts.members.clone(), access).spread_by(&opts.host),
        store: Arc::new(store),
        pause: Pause::default(),
        sups: Mutex::default(),
        busy: Mutex::default(),
        latest: Mutex::default(),
        applied: Mutex::default(),
        work: Notify::new(),
        report_due: Notify::new(),
        connected: AtomicBool::new(false),
        lease: AtomicI64::new(0),
        opts,
    });
    agent.restore()?;
    tracing::info!(host = %agent.opts.host, advertise = %agent.opts.advertise, fleet = %agent.opts.fleet, members = %agent.opts.members.join(","), access = ?agent.etcd.access(), "host agent: joining the fleet");
    let tasks = [
        tokio::spawn(agent.clone().presence()),
        tokio::spawn(agent.clone().sync()),
        tokio::spawn(agent.clone().reconciler()),
        tokio::spawn(agent.clone().reporter()),
        tokio::spawn(poll_certificates(cert, ca)),
    ];
    shutdown.await;
    for t in &tasks {
        t.abort();
    }
    // Gone at once rather than when the lease runs out; the processes stay.
    let lease = agent.lease.load(Ordering::Relaxed);
    if lease != 0 {
        let _ = tokio::time::timeout(Duration::from_secs(2), agent.etcd.lease_revoke(lease)).await;
    }
    tracing::info!(host = %agent.opts.host, "host agent stopped; its model servers keep running and are adopted by the next agent");
    Ok(())
}

/// Reads the client certificate and the CA file again when they change, as `serve` does
/// its listeners': a renewed pair or CA is used by the next connection, no restart.
async fn poll_certificates(
    cert: Option<Arc<cutover_proxy::tls::CertStore>>,
    ca: Option<Arc<cutover_proxy::tls::CaStore>>,
) {
    if cert.is_none() && ca.is_none() {
        return;
    }
    let mut tick = tokio::time::interval(cutover_proxy::tls::POLL_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let (c, a) = (cert.clone(), ca.clone());
        // Outcomes are logged by the stores.
        let _ = tokio::task::spawn_blocking(move || {
            let _ = c.map(|c| c.poll());
            let _ = a.map(|a| a.poll());
        })
        .await;
    }
}

impl Agent {
    fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
        m.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The supervisor of one service's color. With `use_template`, `template` is what its
    /// starts and restarts run from now on; without (a stop, a refused start), a supervisor
    /// that exists keeps its template, and a new one has no process to restart.
    fn supervisor(&self, key: &Key, template: &RunTemplate, use_template: bool) -> Arc<Supervisor> {
        let run = run_config(template, self.opts.advertise);
        let mut sups = Self::lock(&self.sups);
        match sups.get(key) {
            Some(s) => {
                if use_template {
                    s.set_run(run);
                }
                s.clone()
            }
            None => {
                let dirs = Dirs {
                    data_dir: self.opts.data_dir.clone(),
                    config_dir: self.opts.workdir.clone(),
                };
                let s = Supervisor::on_host(&key.0, run, dirs, self.store.clone(), self.pause.clone());
                sups.insert(key.clone(), s.clone());
                s
            }
        }
    }

    fn snapshot_path(&self) -> PathBuf {
        self.opts.data_dir.join(SNAPSHOT)
    }

    /// Writes what was applied (a temporary file renamed over the old one: never half).
    fn save(&self) {
        let rows: Vec<(String, Color, Applied)> = Self::lock(&self.applied)
            .iter()
            .map(|((s, c), a)| (s.clone(), *c, a.clone()))
            .collect();
        let path = self.snapshot_path();
        let tmp = path.with_extension("json.tmp");
        let text = serde_json::to_vec_pretty(&rows).expect("the snapshot serializes");
        if let Err(e) = std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, &path)) {
            tracing::error!(path = %path.display(), error = %e, "cannot write the agent's snapshot; a restart would start its processes again");
        }
    }

    /// Takes over what a previous agent ran: the snapshot says which epoch of which color
    /// was applied, the store which processes it started. A process still alive is adopted;
    /// one gone is reported as an exit (and restarted when its color serves).
    fn restore(&self) -> anyhow::Result<()> {
        let path = self.snapshot_path();
        let rows: Vec<(String, Color, Applied)> = match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b).unwrap_or_else(|e| {
                tracing::error!(path = %path.display(), error = %e, "unreadable snapshot: starting from etcd's desired state (its processes are started again)");
                Vec::new()
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => anyhow::bail!("cannot read {}: {e}", path.display()),
        };
        for (service, color, a) in rows {
            if a.doc.wanted == Wanted::Run && a.state == HostState::Running {
                let key = (service.clone(), color);
                let refused = self.refusal(&a.doc.template);
                let sup = self.supervisor(&key, &a.doc.template, refused.is_none());
                let records: Vec<_> = self
                    .store
                    .processes(&service)?
                    .into_iter()
                    .filter(|p| p.color == color)
                    .collect();
                for p in &records {
                    if supervisor::alive(p) {
                        tracing::info!(service = %service, color = %color, pid = p.pid, port = p.port, version = %p.version, "adopted running model server");
                    } else {
                        tracing::warn!(service = %service, color = %color, pid = p.pid, "a model server from before the agent's restart is gone");
                    }
                }
                // Started under a wider --allow-command than this agent's: kept running (a
                // restart of the agent must not take a model down), never started again.
                let role = match &refused {
                    Some(why) => {
                        tracing::warn!(service = %service, color = %color, reason = %why, "adopted model servers this agent would not start; they are not restarted if they exit");
                        Role::Idle
                    }
                    None => role_of(a.doc.role),
                };
                sup.adopt(color, records, role);
            }
            Self::lock(&self.applied).insert((service, color), a);
        }
        Ok(())
    }

    /// Registers the host's address and keeps its presence key on a lease; both are
    /// written again on every new lease (after being cut off longer than the TTL, or after
    /// etcd lost its data).
    async fn presence(self: Arc<Self>) {
        let host_key = self.keys.host(&self.opts.host);
        let agent_key = self.keys.agent(&self.opts.host);
        let mut lease: Option<i64> = None;
        loop {
            let Some(id) = lease else {
                let granted = match self.etcd.lease_grant(LEASE_TTL).await {
                    Ok(l) => l.id,
                    Err(e) => {
                        tracing::debug!(error = %e, "agent: cannot grant the presence lease");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        continue;
                    }
                };
                let doc = HostDoc {
                    advertise: self.opts.advertise.to_string(),
                    since: now_rfc3339(),
                    pid: std::process::id(),
                };
                let presence = serde_json::json!({"pid": std::process::id(), "since": doc.since});
                let wrote = async {
                    self.etcd.put(&host_key, &doc.to_bytes(), 0).await?;
                    self.etcd
                        .put(&agent_key, presence.to_string().as_bytes(), granted)
                        .await
                }
                .await;
                match wrote {
                    Ok(_) => {
                        tracing::info!(host = %self.opts.host, advertise = %doc.advertise, "agent: registered");
                        self.lease.store(granted, Ordering::Relaxed);
                        lease = Some(granted);
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "agent: cannot register");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                }
                continue;
            };
            tokio::time::sleep(Duration::from_millis(LEASE_TTL as u64 * 1000 / 3)).await;
            match self.etcd.lease_keepalive(id).await {
                Ok(Some(_)) => {}
                Ok(None) => {
                    tracing::warn!(host = %self.opts.host, "agent: the presence lease expired (cut from etcd too long); registering again");
                    lease = None;
                }
                Err(e) => tracing::debug!(error = %e, "agent: cannot renew the presence lease"),
            }
        }
    }

    /// Reads every desired document, then watches for new ones; reads again after any
    /// trouble. A timeout never counts as "nothing changed".
    async fn sync(self: Arc<Self>) {
        let mut backoff = Duration::from_millis(100);
        // Logged when it changes: a refused certificate or user at start says so once.
        let mut last_error = String::new();
        loop {
            let revision = match self.read_all().await {
                Ok(r) => r,
                Err(e) => {
                    let was = self.connected.swap(false, Ordering::Relaxed);
                    if was || e.to_string() != last_error {
                        last_error = e.to_string();
                        tracing::warn!(error = %e, "agent: etcd not reachable; the model servers go on as they are");
                    }
                    tokio::time::sleep(cutover_fleet::jittered(backoff)).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
            };
            if !self.connected.swap(true, Ordering::Relaxed) {
                tracing::info!("agent: connected to etcd");
            }
            last_error.clear();
            backoff = Duration::from_millis(100);
            let why = self.watch(revision + 1).await;
            tracing::info!(why = %why, "agent: reading the desired state again");
        }
    }

    /// Whether a desired document concerns this host: it names it, or it is a color this
    /// host ran (a document that no longer names it stops it here).
    fn concerns(&self, key: &Key, doc: &DesiredProcs) -> bool {
        doc.hosts.contains(&self.opts.host) || Self::lock(&self.applied).contains_key(key)
    }

    /// A desired document read or watched: kept for the reconciler if it concerns this host.
    fn offer_kv(&self, kv: &cutover_fleet::etcd::Kv) {
        let Some((service, color)) = self.keys.desired_key(&kv.key) else {
            return;
        };
        match DesiredProcs::parse(&kv.value) {
            Ok(doc) => {
                let key = (service.to_string(), color);
                if self.concerns(&key, &doc) {
                    Self::lock(&self.latest).insert(key, doc);
                }
            }
            Err(e) => tracing::warn!(key = %kv.key, error = %e, "agent: ignoring a desired document"),
        }
    }

    async fn read_all(&self) -> Result<i64, EtcdError> {
        let r = self.etcd.range_prefix(&self.keys.desired()).await?;
        for kv in &r.kvs {
            self.offer_kv(kv);
        }
        self.work.notify_one();
        Ok(r.revision)
    }

    async fn watch(&self, from: i64) -> String {
        let mut w = match self.etcd.watch(&self.keys.desired(), from, true).await {
            Ok(w) => w,
            Err(e) => return format!("cannot watch: {e}"),
        };
        loop {
            let msg = match tokio::time::timeout(WATCH_SILENCE, w.next()).await {
                Err(_) => return format!("no watch message for {} s", WATCH_SILENCE.as_secs()),
                Ok(Err(e)) => return format!("watch stream failed: {e}"),
                Ok(Ok(m)) => m,
            };
            match msg {
                WatchMsg::Created { .. } | WatchMsg::Progress { .. } => {}
                WatchMsg::Compacted { compact_revision } => {
                    return format!("history compacted up to revision {compact_revision}")
                }
                WatchMsg::Canceled { reason } => return format!("watch canceled: {reason}"),
                WatchMsg::Events { events, .. } => {
                    for e in events {
                        // A deleted document changes nothing here: what runs keeps running.
                        let Event::Put(kv) = e else { continue };
                        self.offer_kv(&kv);
                    }
                    self.work.notify_one();
                }
            }
        }
    }

    /// Applies each newer desired document: one task per color at a time, colors in
    /// parallel. A color whose task is running is looked at again when it ends.
    async fn reconciler(self: Arc<Self>) {
        loop {
            let latest: Vec<(Key, DesiredProcs)> = Self::lock(&self.latest)
                .iter()
                .map(|(k, d)| (k.clone(), d.clone()))
                .collect();
            for (key, doc) in latest {
                if !Self::lock(&self.busy).insert(key.clone()) {
                    continue;
                }
                let me = self.clone();
                tokio::spawn(async move {
                    me.reconcile(key.clone(), doc).await;
                    Self::lock(&me.busy).remove(&key);
                    // A newer document may have come while this one was applied.
                    me.work.notify_one();
                });
            }
            self.work.notified().await;
        }
    }

    async fn reconcile(&self, key: Key, doc: DesiredProcs) {
        let (service, color) = (key.0.clone(), key.1);
        let mine = doc.hosts.contains(&self.opts.host);
        let wanted = if mine { doc.wanted } else { Wanted::Stop };
        let current = Self::lock(&self.applied).get(&key).cloned();
        if let Some(a) = &current {
            if a.doc.epoch > doc.epoch {
                return;
            }
            if a.doc.epoch == doc.epoch {
                if a.doc.role != doc.role && a.doc.wanted == Wanted::Run {
                    if let Some(sup) = Self::lock(&self.sups).get(&key).cloned() {
                        sup.set_role(color, role_of(doc.role));
                    }
                    tracing::info!(service = %service, color = %color, role = ?doc.role, "agent: role changed");
                    if let Some(a) = Self::lock(&self.applied).get_mut(&key) {
                        a.doc.role = doc.role;
                    }
                    self.save();
                    self.report_due.notify_one();
                }
                return;
            }
        } else if wanted == Wanted::Stop && !mine {
            return;
        }
        // Checked before the template is taken: a refused program never becomes what this
        // color's restarts run.
        let refused = self.refusal(&doc.template);
        let starts = wanted == Wanted::Run && refused.is_none();
        let sup = self.supervisor(&key, &doc.template, starts);
        // Whatever ran there first (a start is a new epoch: the controller drained it).
        sup.stop(color).await;
        let (state, error) = match (wanted, doc.version.as_deref(), refused) {
            (Wanted::Run, Some(_), Some(why)) => {
                tracing::error!(service = %service, color = %color, error = %why, "agent: start refused");
                (HostState::Failed, Some(why))
            }
            (Wanted::Run, Some(version), None) => match sup.start(color, version).await {
                Ok(recs) => {
                    sup.set_role(color, role_of(doc.role));
                    let pids: Vec<u32> = recs.iter().map(|r| r.pid).collect();
                    tracing::info!(service = %service, color = %color, version, epoch = doc.epoch, ?pids, "agent: started");
                    (HostState::Running, None)
                }
                Err(e) => {
                    tracing::error!(service = %service, color = %color, version, error = %e, "agent: start failed");
                    sup.stop(color).await;
                    (HostState::Failed, Some(e))
                }
            },
            _ => {
                tracing::info!(service = %service, color = %color, epoch = doc.epoch, "agent: stopped");
                (HostState::Stopped, None)
            }
        };
        Self::lock(&self.applied).insert(key, Applied { doc, state, error });
        self.save();
        self.report_due.notify_one();
    }

    /// Why this host will not run `template`'s program, if it will not.
    fn refusal(&self, template: &RunTemplate) -> Option<String> {
        let allowed = self.opts.allowed.as_ref()?;
        let program = template.command.first().map(String::as_str).unwrap_or("");
        if allowed.iter().any(|a| a == program) {
            return None;
        }
        Some(format!(
            "the agent of {} does not run {program:?}: it was started with --allow-command {} (the program must match run.command[0] exactly)",
            self.opts.host,
            allowed.join(" --allow-command ")
        ))
    }

    fn report_of(&self, key: &Key, a: &Applied) -> HostReport {
        let sup = Self::lock(&self.sups).get(key).cloned();
        let status = sup.map(|s| s.status(key.1));
        let (processes, restarts, last_exit) = match (&status, a.state) {
            (Some(st), HostState::Running) => (
                st.running
                    .iter()
                    .map(|p| ReportedProcess {
                        replica: p.replica,
                        port: p.port,
                        pid: p.pid,
                        version: p.version.clone(),
                        started_at: p.started_at.clone(),
                        log: p.log.clone(),
                    })
                    .collect(),
                st.restarts,
                st.last_exit.as_ref().map(|e| ReportedExit {
                    replica: e.replica,
                    pid: e.pid,
                    version: e.version.clone(),
                    status: e.status.clone(),
                    at: e.at.clone(),
                    log: e.log.clone(),
                    tail: e.tail.clone(),
                }),
            ),
            _ => (Vec::new(), 0, None),
        };
        HostReport {
            epoch: a.doc.epoch,
            state: a.state,
            error: a.error.clone(),
            processes,
            restarts,
            last_exit,
        }
    }

    /// Writes each color's report when it differs from the one last written.
    async fn reporter(self: Arc<Self>) {
        let mut written: BTreeMap<Key, Vec<u8>> = BTreeMap::new();
        loop {
            let applied: Vec<(Key, Applied)> = Self::lock(&self.applied)
                .iter()
                .map(|(k, a)| (k.clone(), a.clone()))
                .collect();
            for (key, a) in applied {
                let bytes = self.report_of(&key, &a).to_bytes();
                if written.get(&key) == Some(&bytes) {
                    continue;
                }
                let k = self.keys.report(&key.0, key.1, &self.opts.host);
                match self.etcd.put(&k, &bytes, 0).await {
                    Ok(_) => {
                        written.insert(key, bytes);
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "agent: cannot write a report");
                        break;
                    }
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(REPORT_EVERY) => {}
                _ = self.report_due.notified() => {}
            }
        }
    }
}
