//! Managed environments on host agents (`[services.NAME.run] hosts = [...]`, fleet mode):
//! the controller's side. A start or stop of a color is one document,
//! `desired/<service>/<color>`, with a new epoch; every agent named in it acts on it with
//! its own [`Supervisor`](crate::procs::supervisor::Supervisor) and answers under
//! `reports/<service>/<color>/<host>`. The release run waits on those reports as it would on
//! local processes: a start succeeds once every host reports its processes started (or fails
//! naming the host that could not), an exit a host reports for the epoch being released fails
//! the release. Restarts by the policy happen on the agent (they must go on while it is cut
//! from etcd); the controller only hears of them.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use arc_swap::ArcSwap;

use cutover_config::RunConfig;
use cutover_fleet::doc::{DesiredProcs, HostReport, HostState, ProcRole, RunTemplate, Wanted};
use cutover_fleet::etcd::{Compare, Kv, Op, Txn};
use cutover_proxy::Color;
use cutover_store::{now_rfc3339, HistoryKind, ProcessRecord, Store};

use crate::fleet::link::FleetLink;
use crate::procs::supervisor::{process_event, ColorProcesses, Exit, ExitWatch, ProcessStatus, Role};

/// How long a start waits for every host's report. Spawning is quick; what takes long (a
/// model loading) is the health wait that follows, not this.
const START_WAIT: Duration = Duration::from_secs(60);
/// Beyond `stop_timeout`: how long a stop waits for the connected hosts' reports.
const STOP_MARGIN: Duration = Duration::from_secs(10);

fn role_doc(r: Role) -> ProcRole {
    match r {
        Role::Releasing => ProcRole::Releasing,
        Role::Serving => ProcRole::Serving,
        Role::Idle => ProcRole::Idle,
    }
}

/// The template agents start processes from, as the controller's config says it.
pub fn template_of(run: &RunConfig) -> RunTemplate {
    RunTemplate {
        command: run.command.clone(),
        env: run.env.clone(),
        blue_ports: run.ports.blue.clone(),
        green_ports: run.ports.green.clone(),
        workdir: run.workdir.as_ref().map(|w| w.display().to_string()),
        restart: run.restart,
        restart_limit: run.restart_limit,
        restart_window_ms: run.restart_window.get().as_millis() as u64,
        stop_timeout_ms: run.stop_timeout.get().as_millis() as u64,
    }
}

/// The managed processes of one service, run by host agents.
pub struct RemoteProcs {
    service: String,
    run: ArcSwap<RunConfig>,
    store: Arc<Store>,
    link: OnceLock<Arc<FleetLink>>,
    roles: Mutex<[Role; 2]>,
    /// The latest exit a host reported for the color's current epoch.
    exits: ExitWatch,
    /// One writer of a color's document at a time (a role change must not overtake a stop).
    writes: [tokio::sync::Mutex<()>; 2],
    /// Roles asked for before the fleet was read (at start-up, `resume`): written once it is.
    pending: Mutex<[Option<Role>; 2]>,
}

impl RemoteProcs {
    pub fn new(service: &str, run: RunConfig, store: Arc<Store>) -> Arc<RemoteProcs> {
        Arc::new(RemoteProcs {
            service: service.to_string(),
            run: ArcSwap::from_pointee(run),
            store,
            link: OnceLock::new(),
            roles: Mutex::new([Role::Idle, Role::Idle]),
            exits: ExitWatch::default(),
            writes: [tokio::sync::Mutex::new(()), tokio::sync::Mutex::new(())],
            pending: Mutex::new([None, None]),
        })
    }

    /// Joins the fleet: from now on starts and stops go through etcd, and the hosts'
    /// reports of exits reach the release run and the history.
    pub fn attach(self: &Arc<Self>, link: Arc<FleetLink>) {
        if self.link.set(link.clone()).is_err() {
            return;
        }
        let me = Arc::downgrade(self);
        let mut rx = link.hosts.subscribe();
        tokio::spawn(async move {
            // What the first read finds was reported before this router joined: not news (a
            // router restart must not record every old exit again).
            let mut seen: BTreeMap<(usize, String), (u64, u32, String)> = BTreeMap::new();
            let mut primed = false;
            loop {
                let Some(me) = me.upgrade() else { return };
                if link.hosts.was_read() {
                    me.publish_exits(&link, &mut seen, !primed).await;
                    if !primed {
                        let pending = std::mem::take(&mut *me.pending.lock().unwrap_or_else(|p| p.into_inner()));
                        for (color, role) in Color::ALL.into_iter().zip(pending) {
                            if let Some(role) = role {
                                me.set_role(color, role);
                            }
                        }
                    }
                    primed = true;
                }
                drop(me);
                if rx.changed().await.is_err() {
                    return;
                }
            }
        });
    }

    fn link(&self) -> Result<&Arc<FleetLink>, String> {
        self.link
            .get()
            .ok_or_else(|| "not connected to the fleet yet: host agents are reached through etcd".to_string())
    }

    fn run(&self) -> Arc<RunConfig> {
        self.run.load_full()
    }

    /// The template for the starts that follow (a reload).
    pub fn set_run(&self, run: RunConfig) {
        self.run.store(Arc::new(run));
    }

    fn desired(&self, color: Color) -> Option<(DesiredProcs, i64)> {
        self.link.get()?.hosts.desired(&self.service, color)
    }

    /// The current start of `color` (its desired document's epoch); exits carry it.
    pub fn epoch(&self, color: Color) -> u64 {
        self.desired(color).map(|(d, _)| d.epoch).unwrap_or(0)
    }

    /// Writes `color`'s document over the one this router has seen (`expected`: its
    /// `mod_revision`, 0 for none), fenced by the leader's term when `fenced` (starts and
    /// stops are the leader's: a paused old leader must not stop a new release's processes).
    /// `Ok(false)`: the document changed meanwhile; the view has been read again. On success
    /// the view has the new document at once, so what follows need not wait for the watch.
    async fn write(&self, color: Color, doc: &DesiredProcs, expected: i64, fenced: bool) -> Result<bool, String> {
        let link = self.link()?;
        let key = link.keys.desired_of(&self.service, color);
        let value = bytes::Bytes::from(doc.to_bytes());
        let txn = Txn {
            compare: vec![if expected == 0 {
                Compare::CreateRevision(key.clone(), 0)
            } else {
                Compare::ModRevision(key.clone(), expected)
            }],
            success: vec![Op::Put {
                key: key.clone(),
                value: value.clone(),
                lease: 0,
            }],
            failure: vec![],
        };
        let r = if fenced {
            link.fenced(txn).await.map_err(|e| format!("cannot write {key}: {e}"))?
        } else {
            link.etcd
                .txn(&txn)
                .await
                .map_err(|e| format!("cannot write {key} to etcd: {e}"))?
        };
        if !r.succeeded {
            let (now, _) = link
                .etcd
                .get(&key)
                .await
                .map_err(|e| format!("cannot read {key} from etcd: {e}"))?;
            link.hosts.event(&link.keys, &key, now.as_ref());
            return Ok(false);
        }
        let kv = Kv {
            key: key.clone(),
            value,
            create_revision: 0,
            mod_revision: r.revision,
            version: 0,
            lease: 0,
        };
        link.hosts.event(&link.keys, &key, Some(&kv));
        Ok(true)
    }

    /// Writes a new epoch of `color`'s document (a start or a stop) over the newest one etcd
    /// has: compared on its revision, read again and retried when another writer came first,
    /// so the epoch goes up whatever this router's clock or view said.
    async fn write_new_epoch(
        &self,
        color: Color,
        wanted: Wanted,
        version: Option<String>,
        role: Role,
        hosts: Vec<String>,
    ) -> Result<DesiredProcs, String> {
        for _ in 0..5 {
            let (current, expected) = match self.desired(color) {
                Some((d, rev)) => (d.epoch, rev),
                None => (0, 0),
            };
            // Milliseconds, so epochs stay unique across controllers; past the current one
            // whatever the clock says.
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0);
            let doc = DesiredProcs {
                epoch: now.max(current + 1),
                wanted,
                version: version.clone(),
                role: role_doc(role),
                hosts: hosts.clone(),
                template: template_of(&self.run()),
                at: now_rfc3339(),
                router: self.link.get().map(|l| l.router_id.clone()).unwrap_or_default(),
            };
            if self.write(color, &doc, expected, true).await? {
                return Ok(doc);
            }
        }
        Err("the color's desired processes kept changing under this write (another controller?)".into())
    }

    /// Waits until every one of `hosts` reported on `epoch` in a state `done` accepts, or
    /// `within` passed; returns the reports seen.
    async fn await_reports(
        &self,
        color: Color,
        epoch: u64,
        hosts: &[String],
        within: Duration,
        done: impl Fn(&HostReport) -> bool,
    ) -> BTreeMap<String, HostReport> {
        let Ok(link) = self.link() else {
            return BTreeMap::new();
        };
        let mut rx = link.hosts.subscribe();
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let got: BTreeMap<String, HostReport> = link
                .hosts
                .reports(&self.service, color)
                .into_iter()
                .filter(|(h, r)| hosts.contains(h) && r.epoch == epoch && done(r))
                .collect();
            // A host whose agent went away (its lease lapsed) will not answer: waiting for
            // it would only delay what the caller says about it.
            if hosts.iter().all(|h| got.contains_key(h) || !link.hosts.connected(h)) {
                return got;
            }
            if tokio::time::timeout_at(deadline, rx.changed()).await.is_err() {
                return got;
            }
        }
    }

    /// Starts `color`'s processes on every host for a release (role `Releasing`) and waits
    /// until each host has started them. Every host's agent must be connected: a release
    /// that would come up on part of its hosts is refused before anything starts.
    pub async fn start(&self, color: Color, version: &str) -> Result<Vec<ProcessRecord>, String> {
        let hosts = self.run().hosts.clone();
        let link = self.link()?;
        let away: Vec<&String> = hosts.iter().filter(|h| !link.hosts.connected(h)).collect();
        if !away.is_empty() {
            let names: Vec<String> = away.iter().map(|h| format!("{h:?}")).collect();
            return Err(format!(
                "host agent {} not connected to the fleet (no agents/NAME key in etcd): start `cutover agent --host NAME` there, or take it out of services.{}.run.hosts",
                names.join(", "),
                self.service
            ));
        }
        let _w = self.writes[color.index()].lock().await;
        let doc = self
            .write_new_epoch(
                color,
                Wanted::Run,
                Some(version.to_string()),
                Role::Releasing,
                hosts.clone(),
            )
            .await?;
        let epoch = doc.epoch;
        self.roles.lock().unwrap_or_else(|p| p.into_inner())[color.index()] = Role::Releasing;
        let reports = self
            .await_reports(color, epoch, &hosts, START_WAIT, |r| r.state != HostState::Stopped)
            .await;
        let mut errors = Vec::new();
        for h in &hosts {
            match reports.get(h) {
                None if !link.hosts.connected(h) => {
                    errors.push(format!("{h}: its agent left the fleet before reporting the start"))
                }
                None => errors.push(format!(
                    "{h}: its agent did not report the start within {} s",
                    START_WAIT.as_secs()
                )),
                Some(r) if r.state == HostState::Failed => {
                    errors.push(format!("{h}: {}", r.error.as_deref().unwrap_or("the start failed")))
                }
                Some(_) => {}
            }
        }
        if !errors.is_empty() {
            return Err(format!("starting on the host agents failed: {}", errors.join("; ")));
        }
        Ok(hosts
            .iter()
            .filter_map(|h| reports.get(h).map(|r| (h, r)))
            .flat_map(|(h, r)| {
                r.processes.iter().map(move |p| ProcessRecord {
                    service: self.service.clone(),
                    color,
                    replica: p.replica,
                    port: p.port,
                    pid: p.pid,
                    start_time: 0,
                    version: p.version.clone(),
                    log: p.log.as_ref().map(|l| format!("{h}:{l}")),
                    started_at: p.started_at.clone(),
                })
            })
            .collect())
    }

    /// True when `color`'s document asks its hosts to stop it.
    pub fn stopped(&self, color: Color) -> bool {
        self.desired(color).is_some_and(|(d, _)| d.wanted == Wanted::Stop)
    }

    /// True when `color` should be running somewhere, or some host still reports processes.
    pub fn has_processes(&self, color: Color) -> bool {
        let wanted = self.desired(color).is_some_and(|(d, _)| d.wanted == Wanted::Run);
        wanted
            || self.link.get().is_some_and(|l| {
                l.hosts
                    .reports(&self.service, color)
                    .values()
                    .any(|r| !r.processes.is_empty())
            })
    }

    /// Stops `color`'s processes on every host and waits for the connected ones to say so
    /// (up to `stop_timeout` and a margin). An agent cut from etcd stops them when it is
    /// back: the stop is its desired state from now on.
    pub async fn stop(&self, color: Color) {
        let _w = self.writes[color.index()].lock().await;
        self.stop_locked(color).await;
    }

    /// Stops `color` when what it runs was started by a release that will never switch to
    /// it (its run was cut off with a lost leader, or that release was aborted after): the
    /// document still says `run` with the role `releasing`, or the run of `version`. Skipped
    /// when `busy` says a release of the service is running now (its own start is what the
    /// document says). Waits for the first read of the fleet. Returns whether it asked the
    /// hosts to stop.
    pub async fn stop_abandoned(&self, color: Color, version: Option<&str>, busy: impl Fn() -> bool) -> bool {
        let Ok(link) = self.link() else { return false };
        let mut rx = link.hosts.subscribe();
        while !link.hosts.was_read() {
            if rx.changed().await.is_err() {
                return false;
            }
        }
        let _w = self.writes[color.index()].lock().await;
        let abandoned = self.desired(color).is_some_and(|(d, _)| {
            d.wanted == Wanted::Run
                && (d.role == ProcRole::Releasing || version.is_some_and(|v| d.version.as_deref() == Some(v)))
        });
        if !abandoned || busy() {
            return false;
        }
        tracing::warn!(service = %self.service, color = %color, "stopping the processes of a release that will not switch to them");
        self.stop_locked(color).await
    }

    /// The hosts of `color` whose agents are away (no presence key): nothing supervises
    /// what runs there, and their exits go unseen until they are back.
    pub fn away(&self, color: Color) -> Vec<String> {
        let Ok(link) = self.link() else { return Vec::new() };
        let hosts = self
            .desired(color)
            .map(|(d, _)| d.hosts)
            .unwrap_or_else(|| self.run().hosts.clone());
        hosts.into_iter().filter(|h| !link.hosts.connected(h)).collect()
    }

    /// Waits until every host of `color` has its agent connected.
    pub async fn wait_connected(&self, color: Color) {
        let Ok(link) = self.link() else { return };
        let mut rx = link.hosts.subscribe();
        while !self.away(color).is_empty() {
            if rx.changed().await.is_err() {
                return;
            }
        }
    }

    /// The stop, under the color's write lock; false when the document could not be written
    /// (etcd away, or no longer the leader): nothing was asked of the hosts.
    async fn stop_locked(&self, color: Color) -> bool {
        let mut hosts = self.run().hosts.clone();
        if let Some((d, _)) = self.desired(color) {
            for h in d.hosts {
                if !hosts.contains(&h) {
                    hosts.push(h);
                }
            }
        }
        let epoch = match self
            .write_new_epoch(color, Wanted::Stop, None, Role::Idle, hosts.clone())
            .await
        {
            Ok(doc) => doc.epoch,
            Err(e) => {
                tracing::error!(service = %self.service, color = %color, error = %e, "cannot ask the host agents to stop the color's processes");
                return false;
            }
        };
        self.roles.lock().unwrap_or_else(|p| p.into_inner())[color.index()] = Role::Idle;
        let Ok(link) = self.link() else { return true };
        let connected: Vec<String> = hosts.iter().filter(|h| link.hosts.connected(h)).cloned().collect();
        for h in hosts.iter().filter(|h| !connected.contains(h)) {
            tracing::warn!(service = %self.service, color = %color, host = %h, "host agent not connected: its processes stop when it is back");
        }
        let within = self.run().stop_timeout.get() + STOP_MARGIN;
        let began = tokio::time::Instant::now();
        let got = self
            .await_reports(color, epoch, &connected, within, |r| r.state == HostState::Stopped)
            .await;
        // The wait also ends early when a host's agent goes away: that is not the timeout,
        // and saying "within 13 s" after 5 would send someone after the wrong clock.
        let waited = began.elapsed().as_secs_f64();
        for h in connected.iter().filter(|h| !got.contains_key(*h)) {
            if link.hosts.connected(h) {
                tracing::warn!(service = %self.service, color = %color, host = %h, "host agent did not report the stop within {} s", within.as_secs());
            } else {
                tracing::warn!(service = %self.service, color = %color, host = %h, "host agent left the fleet {waited:.1} s into the stop, before reporting it: its processes stop when it is back");
            }
        }
        true
    }

    /// Sets what an exit of `color`'s processes leads to on the hosts from now on: the same
    /// epoch rewritten with the role, compared on its revision (a newer start or stop is
    /// never overwritten; a role rewrite by another router is read and this one retried).
    /// Asked before the fleet was read, it is written once it is.
    pub fn set_role(self: &Arc<Self>, color: Color, role: Role) {
        self.roles.lock().unwrap_or_else(|p| p.into_inner())[color.index()] = role;
        if !self.link.get().is_some_and(|l| l.hosts.was_read()) {
            self.pending.lock().unwrap_or_else(|p| p.into_inner())[color.index()] = Some(role);
            return;
        }
        match self.desired(color) {
            Some((d, _)) if d.wanted == Wanted::Run && d.role != role_doc(role) => {}
            _ => return,
        }
        let me = self.clone();
        tokio::spawn(async move {
            let _w = me.writes[color.index()].lock().await;
            for _ in 0..5 {
                // Read again under the lock: a stop or a new start since is not overwritten.
                let Some((mut d, rev)) = me.desired(color) else { return };
                if d.wanted != Wanted::Run || d.role == role_doc(role) {
                    return;
                }
                d.role = role_doc(role);
                d.at = now_rfc3339();
                match me.write(color, &d, rev, false).await {
                    Ok(true) => return,
                    Ok(false) => continue,
                    Err(e) => {
                        tracing::error!(service = %me.service, color = %color, error = %e, "cannot tell the host agents the color's new role");
                        return;
                    }
                }
            }
            tracing::warn!(service = %me.service, color = %color, "the color's desired processes kept changing; role not rewritten");
        });
    }

    /// The role the hosts apply (the desired document's); this router's last word before
    /// the fleet was read.
    pub fn role(&self, color: Color) -> Role {
        match self.desired(color) {
            Some((d, _)) if d.wanted == Wanted::Run => match d.role {
                ProcRole::Releasing => Role::Releasing,
                ProcRole::Serving => Role::Serving,
                ProcRole::Idle => Role::Idle,
            },
            Some(_) => Role::Idle,
            None => self.roles.lock().unwrap_or_else(|p| p.into_inner())[color.index()],
        }
    }

    /// The unasked-for exit of the processes of `epoch`, if a host reported one.
    pub fn exit_of(&self, color: Color, epoch: u64) -> Option<Exit> {
        self.exits.exit_of(color, epoch)
    }

    /// Waits for an unasked-for exit of the processes of `epoch` (forever if none comes).
    pub async fn wait_exit(&self, color: Color, epoch: u64) -> Exit {
        self.exits.wait_exit(color, epoch).await
    }

    /// Publishes each exit a host reports for a color's current epoch once, and records it
    /// in this router's history: every router's, since whether this one leads when the
    /// report arrives (etcd just came back, say) is chance.
    async fn publish_exits(
        &self,
        link: &FleetLink,
        seen: &mut BTreeMap<(usize, String), (u64, u32, String)>,
        quiet: bool,
    ) {
        for color in Color::ALL {
            let Some((d, _)) = self.desired(color) else { continue };
            for (host, r) in link.hosts.reports(&self.service, color) {
                let Some(e) = r.last_exit.filter(|_| r.epoch == d.epoch) else {
                    continue;
                };
                let mark = (r.epoch, e.pid, e.at.clone());
                if seen.get(&(color.index(), host.clone())) == Some(&mark) {
                    continue;
                }
                seen.insert((color.index(), host.clone()), mark);
                if quiet {
                    continue;
                }
                let exit = Exit {
                    epoch: r.epoch,
                    replica: e.replica,
                    pid: e.pid,
                    version: e.version.clone(),
                    status: e.status.clone(),
                    at: e.at.clone(),
                    log: e.log.clone(),
                    tail: e.tail.clone(),
                    host: Some(host.clone()),
                };
                tracing::warn!(service = %self.service, color = %color, host = %host, pid = e.pid, status = %e.status, "a host agent reports a model server exited");
                self.exits.publish(color, exit.clone());
                let reason = format!("{} (reported by its host agent)", exit.describe(color));
                process_event(
                    &self.store,
                    &self.service,
                    HistoryKind::ProcessExited,
                    color,
                    &e.version,
                    reason,
                    Some(e.at.clone()),
                )
                .await;
            }
        }
    }

    /// `color`'s processes on all its hosts as `status` shows them.
    pub fn status(&self, color: Color) -> ColorProcesses {
        let mut out = ColorProcesses {
            role: self.role(color),
            running: Vec::new(),
            restarts: 0,
            last_exit: None,
        };
        let (Some(link), Some((d, _))) = (self.link.get(), self.desired(color)) else {
            return out;
        };
        for (host, r) in link.hosts.reports(&self.service, color) {
            // An away host's last report is all anyone knows of it: its processes may still
            // run (a stop it has not received yet), so they stay listed, as unknown.
            let away = !link.hosts.connected(&host);
            let current = r.epoch == d.epoch;
            if !current && !away {
                continue;
            }
            out.running.extend(r.processes.iter().map(|p| ProcessStatus {
                unknown: away,
                replica: p.replica,
                pid: p.pid,
                port: p.port,
                version: p.version.clone(),
                started_at: p.started_at.clone(),
                log: p.log.clone(),
                host: Some(host.clone()),
            }));
            // Restarts and exits are the current start's: an older one's belong to the past.
            if !current {
                continue;
            }
            out.restarts += r.restarts;
            if let Some(e) = r.last_exit {
                if out.last_exit.as_ref().is_none_or(|l| l.at < e.at) {
                    out.last_exit = Some(Exit {
                        epoch: r.epoch,
                        replica: e.replica,
                        pid: e.pid,
                        version: e.version,
                        status: e.status,
                        at: e.at,
                        log: e.log,
                        tail: e.tail,
                        host: Some(host.clone()),
                    });
                }
            }
        }
        out
    }

    /// Restarts the hosts report per (color, version), for `cutover_process_restarts_total`.
    pub fn restarts_total(&self) -> Vec<(Color, String, u64)> {
        let Some(link) = self.link.get() else {
            return Vec::new();
        };
        let mut out: BTreeMap<(usize, String), (Color, u64)> = BTreeMap::new();
        for color in Color::ALL {
            for r in link.hosts.reports(&self.service, color).values() {
                let Some(v) = r.processes.first().map(|p| p.version.clone()) else {
                    continue;
                };
                out.entry((color.index(), v)).or_insert((color, 0)).1 += r.restarts;
            }
        }
        out.into_iter().map(|((_, v), (c, n))| (c, v, n)).collect()
    }
}
