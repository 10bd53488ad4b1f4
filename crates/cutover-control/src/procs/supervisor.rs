//! Managed environments: starts a color's model-server processes from the service's one
//! template (after checking each port is free), watches every process it started or adopted
//! until it exits, restarts the live color's processes by the `restart` policy, and stops
//! them (SIGTERM, then SIGKILL after `stop_timeout`).
//!
//! Health is tied to the process started, not to whatever answers on its port: an exit of a
//! process of a color that a release is bringing up is published on that color's exit watch
//! (the release run fails on it), and an exit of the live color's process (or the old color's
//! while it stays warm) is restarted with a doubling backoff, up to `restart_limit` within
//! `restart_window`. Every exit is logged with its status, recorded in history with the last
//! lines of its log, and counted.
//!
//! Each start writes its own log file, `SERVICE-COLOR-REPLICA-<start time>.log` under
//! `data_dir/logs/`, which begins with a header line; `SERVICE-COLOR-REPLICA.log` is a symlink
//! to the newest, and the newest [`LOGS_KEPT`] per replica are kept.
//!
//! Each process runs in its own process group, so a Ctrl-C meant for cutover does not reach
//! it and a stop reaches its children too; it outlives cutover on purpose, and a restarted
//! cutover adopts it (same pid and start time) and watches it by polling `/proc`, since it is
//! no longer our child.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

use cutover_config::{RestartPolicy, RunConfig};
use cutover_proxy::Color;
use cutover_store::{now_rfc3339, now_rfc3339_millis, EventRecord, HistoryKind, ProcessRecord, Store};

use crate::base::pause::Pause;
use crate::base::store_call::{blocking, record};

pub use super::exit::{Exit, ExitWatch};
pub use super::logs::{log_path, tail, LOGS_KEPT};
use super::logs::{new_log, TAIL_LINES};
pub use super::os::{alive, cannot_listen, check_port_free, port_holder, start_time, stop};

/// The first restart's delay; each further restart within the window doubles it.
pub const BACKOFF_FIRST: Duration = Duration::from_secs(1);
/// The longest delay between restarts.
pub const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// How often an adopted process (not our child: no exit notification) is looked for in /proc.
const ADOPTED_POLL: Duration = Duration::from_secs(1);

/// Where managed processes run and write their logs.
#[derive(Debug, Clone)]
pub struct Dirs {
    /// Logs and other runtime files (`[store] data_dir`).
    pub data_dir: PathBuf,
    /// The config file's folder: processes run from it unless `run.workdir` says otherwise.
    pub config_dir: PathBuf,
}

/// Substitutes `{version}`, `{port}`, `{color}`, `{replica}` in one template string.
pub fn substitute(s: &str, version: &str, port: u16, color: Color, replica: u32) -> String {
    s.replace("{version}", version)
        .replace("{port}", &port.to_string())
        .replace("{color}", color.as_str())
        .replace("{replica}", &replica.to_string())
}

/// What the supervisor does when a process of a color exits without being asked to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// A release is bringing the color up: an exit fails that release, no restart.
    Releasing,
    /// Live, or the old color while it stays warm: restarted by the `restart` policy.
    Serving,
    /// Anything else (a rolled-back version waiting for its scale-down): recorded only.
    Idle,
}

/// One running process as `status` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct ProcessStatus {
    pub replica: u32,
    pub pid: u32,
    pub port: u16,
    pub version: String,
    pub started_at: Option<String>,
    pub log: Option<String>,
    /// The host agent it runs on (`run.hosts`); absent on this machine.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Its host agent is away: this is the agent's last report, not confirmed since (the
    /// process may have exited, or be stopped when the agent is back).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub unknown: bool,
}

/// A color's managed processes as `status` shows them.
#[derive(Debug, Clone, Serialize)]
pub struct ColorProcesses {
    pub role: Role,
    pub running: Vec<ProcessStatus>,
    /// Restarts since this cutover started or adopted the color's processes.
    pub restarts: u64,
    pub last_exit: Option<Exit>,
}

/// One color's processes and what has happened to them since they were started.
struct ColorProcs {
    /// +1 at every start or adoption of the color's processes: an exit of an older set is
    /// ignored, and a release waits only for exits of the set it started.
    epoch: u64,
    role: Role,
    /// A stop is under way: the exits it causes are not failures.
    stopping: bool,
    /// The current process of each replica (index = replica).
    procs: Vec<ProcessRecord>,
    restarts: u64,
    /// Restart attempts within `restart_window`, oldest first (for the limit and backoff).
    recent: VecDeque<Instant>,
    last_exit: Option<Exit>,
}

impl ColorProcs {
    fn new() -> ColorProcs {
        ColorProcs {
            epoch: 0,
            role: Role::Idle,
            stopping: false,
            procs: Vec::new(),
            restarts: 0,
            recent: VecDeque::new(),
            last_exit: None,
        }
    }

    /// A fresh set of processes (a start or an adoption): new epoch, clean counters.
    fn renew(&mut self, role: Role) {
        self.epoch += 1;
        self.role = role;
        self.stopping = false;
        self.procs.clear();
        self.restarts = 0;
        self.recent.clear();
        self.last_exit = None;
    }
}

/// What happens after an exit, decided under the lock.
enum Next {
    Restart(Duration),
    Report(String),
}

/// The managed processes of one service.
pub struct Supervisor {
    service: String,
    /// The template; a config reload replaces it for the starts that follow (processes
    /// running keep the command they were started with).
    run: arc_swap::ArcSwap<RunConfig>,
    dirs: Dirs,
    store: Arc<Store>,
    colors: Mutex<[ColorProcs; 2]>,
    /// Restarts made by this process per (color, version), for `cutover_process_restarts_total`.
    restarts_total: Mutex<BTreeMap<(Color, String), u64>>,
    /// The latest exit nobody asked for, per color; a release waits on its own color's.
    exits: ExitWatch,
    /// Held from a start, restart or stop's first effect to its last store write, so a
    /// successor never adopts from a store that misses a process (see `pause`).
    pause: Pause,
    /// False on a host agent: its store has no services (the history is the routers', who
    /// record what the agent reports), so a history line there could only fail.
    records_history: bool,
}

impl Supervisor {
    pub fn new(service: &str, run: RunConfig, dirs: Dirs, store: Arc<Store>, pause: Pause) -> Arc<Supervisor> {
        Self::build(service, run, dirs, store, pause, true)
    }

    /// A host agent's supervisor: processes and their records as on one machine, no
    /// history lines (the exits and restarts reach the routers through the agent's report).
    pub fn on_host(service: &str, run: RunConfig, dirs: Dirs, store: Arc<Store>, pause: Pause) -> Arc<Supervisor> {
        Self::build(service, run, dirs, store, pause, false)
    }

    fn build(
        service: &str,
        run: RunConfig,
        dirs: Dirs,
        store: Arc<Store>,
        pause: Pause,
        records_history: bool,
    ) -> Arc<Supervisor> {
        Arc::new(Supervisor {
            service: service.to_string(),
            run: arc_swap::ArcSwap::from_pointee(run),
            dirs,
            store,
            colors: Mutex::new([ColorProcs::new(), ColorProcs::new()]),
            restarts_total: Mutex::new(BTreeMap::new()),
            exits: ExitWatch::default(),
            pause,
            records_history,
        })
    }

    fn lock(&self) -> MutexGuard<'_, [ColorProcs; 2]> {
        self.colors.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn ports(&self, color: Color) -> Vec<u16> {
        let run = self.run();
        match color {
            Color::Blue => run.ports.blue.clone(),
            Color::Green => run.ports.green.clone(),
        }
    }

    fn run(&self) -> Arc<RunConfig> {
        self.run.load_full()
    }

    /// The template for the starts that follow (a reload).
    pub fn set_run(&self, run: RunConfig) {
        self.run.store(Arc::new(run));
    }

    /// The current start of `color`'s processes; exits carry it.
    pub fn epoch(&self, color: Color) -> u64 {
        self.lock()[color.index()].epoch
    }

    /// Sets what an exit of `color`'s processes leads to from now on. A color that starts
    /// serving with a replica already gone (it exited while its release ended, and was only
    /// reported) gets that replica restarted by the policy, as if it exited now.
    pub fn set_role(self: &Arc<Self>, color: Color, role: Role) {
        let dead: Vec<(u64, u32, u32, Duration)> = {
            let mut colors = self.lock();
            let c = &mut colors[color.index()];
            let was = std::mem::replace(&mut c.role, role);
            if role != Role::Serving || was == Role::Serving || c.stopping || self.run().restart == RestartPolicy::Never
            {
                return;
            }
            if c.recent.len() >= self.run().restart_limit as usize {
                return;
            }
            let delay = backoff(c.recent.len());
            c.procs
                .iter()
                // A start time of 0 was never read: no evidence the process is gone.
                .filter(|p| p.start_time != 0 && !alive(p))
                .map(|p| (c.epoch, p.replica, p.pid, delay))
                .collect()
        };
        for (epoch, replica, pid, delay) in dead {
            tracing::warn!(service = %self.service, color = %color, replica, pid, "a model server of the color now serving is gone; restarting it");
            let me = self.clone();
            tokio::spawn(async move { me.restart(color, epoch, replica, pid, delay).await });
        }
    }

    pub fn role(&self, color: Color) -> Role {
        self.lock()[color.index()].role
    }

    /// True when `color` has processes this supervisor watches.
    pub fn has_processes(&self, color: Color) -> bool {
        !self.lock()[color.index()].procs.is_empty()
    }

    /// Starts one process per port of `color` for a release (role `Releasing`), after
    /// checking every port is free; records them in the store. Returns their records.
    pub async fn start(self: &Arc<Self>, color: Color, version: &str) -> Result<Vec<ProcessRecord>, String> {
        let _permit = self.pause.enter().await;
        for port in self.ports(color) {
            check_port_free(&self.service, self.run().host, port)?;
        }
        let epoch = {
            let mut colors = self.lock();
            let c = &mut colors[color.index()];
            c.renew(Role::Releasing);
            c.epoch
        };
        let mut records = Vec::new();
        for (replica, port) in self.ports(color).iter().enumerate() {
            let (rec, child) = self.spawn_one(color, version, replica as u32, *port)?;
            {
                let mut colors = self.lock();
                let c = &mut colors[color.index()];
                if c.epoch == epoch {
                    c.procs.push(rec.clone());
                }
            }
            self.watch_child(color, epoch, rec.replica, rec.pid, child);
            // Recorded one by one: if this process dies between two starts, the next one
            // finds (and stops, or adopts) every process already started, none orphaned on
            // its port.
            let r = rec.clone();
            blocking(&self.store, move |s| s.put_process(&r))
                .await
                .map_err(|e| format!("the store could not record the started process: {e}"))?;
            records.push(rec);
        }
        Ok(records)
    }

    /// Spawns one replica with its own new log file.
    fn spawn_one(
        &self,
        color: Color,
        version: &str,
        replica: u32,
        port: u16,
    ) -> Result<(ProcessRecord, tokio::process::Child), String> {
        let run = &*self.run();
        let service = self.service.as_str();
        let argv: Vec<String> = run
            .command
            .iter()
            .map(|a| substitute(a, version, port, color, replica).replace("{host}", &run.host.to_string()))
            .collect();
        let started_at = now_rfc3339();
        let header = format!(
            "=== cutover start {} service={service} color={color} replica={replica} version={version} port={port} argv={argv:?} ===",
            now_rfc3339_millis()
        );
        let logs = self.dirs.data_dir.join("logs");
        let (log, file) = new_log(&logs, service, color, replica, &header)
            .map_err(|e| format!("cannot open a log file in {}: {e}", logs.display()))?;
        let stderr = file
            .try_clone()
            .map_err(|e| format!("cannot open {}: {e}", log.display()))?;
        let mut cmd = tokio::process::Command::new(&argv[0]);
        cmd.args(&argv[1..])
            .current_dir(run.workdir.as_deref().unwrap_or(&self.dirs.config_dir))
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(stderr)
            .process_group(0)
            .env("CUTOVER_SERVICE", service)
            .env("CUTOVER_COLOR", color.as_str())
            .env("CUTOVER_VERSION", version)
            .env("CUTOVER_PORT", port.to_string());
        for (k, v) in &run.env {
            cmd.env(
                k,
                substitute(v, version, port, color, replica).replace("{host}", &run.host.to_string()),
            );
        }
        let child = cmd.spawn().map_err(|e| {
            format!(
                "cannot start {:?} for {color} replica {replica}: {e} (log: {})",
                argv[0],
                log.display()
            )
        })?;
        let pid = child.id().unwrap_or(0);
        let st = start_time(pid).unwrap_or(0);
        tracing::info!(service, color = %color, version, replica, port, pid, log = %log.display(), "started model server");
        Ok((
            ProcessRecord {
                service: service.into(),
                color,
                replica,
                port,
                pid,
                start_time: st,
                version: version.into(),
                log: Some(log.display().to_string()),
                started_at: Some(started_at),
            },
            child,
        ))
    }

    /// Waits for a child's exit on its own task.
    fn watch_child(
        self: &Arc<Self>,
        color: Color,
        epoch: u64,
        replica: u32,
        pid: u32,
        mut child: tokio::process::Child,
    ) {
        let me = self.clone();
        tokio::spawn(async move {
            let status = match child.wait().await {
                Ok(st) => st.to_string(),
                Err(e) => format!("unknown (waiting for it failed: {e})"),
            };
            me.exited(color, epoch, replica, pid, status).await;
        });
    }

    /// Polls /proc for an adopted process (not our child, so no exit notification).
    fn watch_adopted(self: &Arc<Self>, color: Color, epoch: u64, rec: ProcessRecord) {
        let me = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(ADOPTED_POLL);
            loop {
                tick.tick().await;
                if !me.is_current(color, epoch, rec.replica, rec.pid) {
                    return;
                }
                if !alive(&rec) {
                    break;
                }
            }
            let status = "status unknown (adopted after a cutover restart, so not our child)".to_string();
            me.exited(color, epoch, rec.replica, rec.pid, status).await;
        });
    }

    fn is_current(&self, color: Color, epoch: u64, replica: u32, pid: u32) -> bool {
        let colors = self.lock();
        let c = &colors[color.index()];
        c.epoch == epoch && c.procs.get(replica as usize).is_some_and(|p| p.pid == pid)
    }

    /// Takes over processes a previous cutover started (already checked alive) with `role`.
    pub fn adopt(self: &Arc<Self>, color: Color, records: Vec<ProcessRecord>, role: Role) {
        if records.is_empty() {
            return;
        }
        let epoch = {
            let mut colors = self.lock();
            let c = &mut colors[color.index()];
            c.renew(role);
            let mut procs = records.clone();
            procs.sort_by_key(|p| p.replica);
            c.procs = procs;
            c.epoch
        };
        for rec in records {
            self.watch_adopted(color, epoch, rec);
        }
    }

    /// An exit of a watched process: a stop's, ignored; otherwise logged, recorded, published
    /// and, for a serving color, restarted by the policy.
    ///
    /// Boxed: it and `restart` call each other through spawned tasks, and a named `Send`
    /// future type is what lets the compiler see that cycle is `Send`.
    fn exited(
        self: Arc<Self>,
        color: Color,
        epoch: u64,
        replica: u32,
        pid: u32,
        status: String,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
        Box::pin(async move { self.on_exit(color, epoch, replica, pid, status).await })
    }

    async fn on_exit(self: Arc<Self>, color: Color, epoch: u64, replica: u32, pid: u32, status: String) {
        // Paused for a hand-over: the successor finds this process gone and decides.
        let permit = self.pause.enter().await;
        let service = self.service.clone();
        let (exit, next) = {
            let mut colors = self.lock();
            let c = &mut colors[color.index()];
            let Some(rec) = c
                .procs
                .get(replica as usize)
                .filter(|p| c.epoch == epoch && p.pid == pid)
            else {
                return;
            };
            if c.stopping {
                tracing::info!(service, color = %color, replica, pid, %status, "model server exited after its stop");
                return;
            }
            let log = rec.log.clone();
            let exit = Exit {
                epoch,
                replica,
                pid,
                version: rec.version.clone(),
                status,
                at: now_rfc3339(),
                tail: log
                    .as_deref()
                    .map(|l| tail(Path::new(l), TAIL_LINES))
                    .unwrap_or_default(),
                log,
                host: None,
            };
            c.last_exit = Some(exit.clone());
            let window = self.run().restart_window.get();
            while c.recent.front().is_some_and(|t| t.elapsed() > window) {
                c.recent.pop_front();
            }
            let next = match (c.role, self.run().restart) {
                (Role::Releasing, _) => Next::Report(format!("not restarted: {color} is being released, so the exit fails its release")),
                (Role::Idle, _) => Next::Report(format!("not restarted: {color} is neither live nor warm")),
                (Role::Serving, RestartPolicy::Never) => Next::Report("not restarted: restart = \"never\"".into()),
                (Role::Serving, RestartPolicy::OnFailure) if c.recent.len() >= self.run().restart_limit as usize => {
                    Next::Report(format!(
                        "not restarted: restart_limit reached ({} restarts within {}); {color} stays down until a release or a person brings it back",
                        c.recent.len(),
                        self.run().restart_window
                    ))
                }
                (Role::Serving, RestartPolicy::OnFailure) => Next::Restart(backoff(c.recent.len())),
            };
            (exit, next)
        };
        self.exits.publish(color, exit.clone());
        let what = exit.describe(color);
        let then = match &next {
            Next::Restart(d) => format!(
                "restarting in {} (restart_limit {} within {})",
                humanize(*d),
                self.run().restart_limit,
                self.run().restart_window
            ),
            Next::Report(why) => why.clone(),
        };
        tracing::warn!(service, color = %color, replica, pid, version = %exit.version, status = %exit.status, log = exit.log.as_deref().unwrap_or("-"), "model server exited; {then}");
        self.history(
            HistoryKind::ProcessExited,
            color,
            &exit.version,
            format!("{what}\n{then}"),
        )
        .await;
        drop(permit);
        if let Next::Restart(delay) = next {
            let me = self.clone();
            tokio::spawn(async move { me.restart(color, epoch, replica, pid, delay).await });
        }
    }

    /// Starts a replica again after `delay`, unless it was stopped, replaced or stopped
    /// serving meanwhile. A start that fails counts as another exit.
    async fn restart(self: Arc<Self>, color: Color, epoch: u64, replica: u32, old_pid: u32, delay: Duration) {
        tokio::time::sleep(delay).await;
        let permit = self.pause.enter().await;
        let started = {
            let mut colors = self.lock();
            let c = &mut colors[color.index()];
            let Some(old) = c
                .procs
                .get(replica as usize)
                .filter(|p| c.epoch == epoch && p.pid == old_pid && !c.stopping && c.role == Role::Serving)
                .cloned()
            else {
                return;
            };
            c.recent.push_back(Instant::now());
            let r = check_port_free(&self.service, self.run().host, old.port)
                .and_then(|()| self.spawn_one(color, &old.version, replica, old.port));
            match r {
                Ok((rec, child)) => {
                    c.procs[replica as usize] = rec.clone();
                    c.restarts += 1;
                    Ok((old, rec, child))
                }
                Err(e) => Err(e),
            }
        };
        match started {
            Ok((old, rec, child)) => {
                *self
                    .restarts_total
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .entry((color, rec.version.clone()))
                    .or_insert(0) += 1;
                self.watch_child(color, epoch, replica, rec.pid, child);
                let r = rec.clone();
                record(&self.store, "the restarted process", &self.service, move |s| {
                    s.put_process(&r)
                })
                .await;
                let reason = format!(
                    "{color} replica {replica} ({}) started again as pid {} after {} (was pid {}); log: {}",
                    rec.version,
                    rec.pid,
                    humanize(delay),
                    old.pid,
                    rec.log.as_deref().unwrap_or("-")
                );
                tracing::info!(service = %self.service, color = %color, replica, pid = rec.pid, version = %rec.version, "model server restarted");
                self.history(HistoryKind::ProcessRestarted, color, &rec.version, reason)
                    .await;
            }
            Err(e) => {
                drop(permit);
                // Counted like an exit of the old process: the next attempt backs off further.
                self.clone()
                    .exited(
                        color,
                        epoch,
                        replica,
                        old_pid,
                        format!("could not be started again: {e}"),
                    )
                    .await;
            }
        }
    }

    async fn history(&self, kind: HistoryKind, color: Color, version: &str, reason: String) {
        if !self.records_history {
            return;
        }
        process_event(&self.store, &self.service, kind, color, version, reason, None).await;
    }

    /// The unasked-for exit of the processes of `epoch`, if one happened.
    pub fn exit_of(&self, color: Color, epoch: u64) -> Option<Exit> {
        self.exits.exit_of(color, epoch)
    }

    /// Waits for an unasked-for exit of the processes of `epoch` (forever if none comes).
    pub async fn wait_exit(&self, color: Color, epoch: u64) -> Exit {
        self.exits.wait_exit(color, epoch).await
    }

    /// Stops `color`'s processes (SIGTERM to each group, SIGKILL after `stop_timeout`) and
    /// forgets them, in the store too. The caller drains the color first.
    pub async fn stop(&self, color: Color) {
        let _permit = self.pause.enter().await;
        let procs = {
            let mut colors = self.lock();
            let c = &mut colors[color.index()];
            c.stopping = true;
            c.procs.clone()
        };
        // Also whatever the store still lists (a process from before adoption was possible).
        let name = self.service.clone();
        let stored_procs = match blocking(&self.store, move |s| s.processes(&name)).await {
            Ok(r) => r.into_iter().filter(|p| p.color == color).collect(),
            Err(e) => {
                tracing::error!(service = %self.service, error = %e, "cannot read managed processes from the store");
                Vec::new()
            }
        };
        let mut all = procs;
        for p in stored_procs {
            if !all.iter().any(|q| q.pid == p.pid) {
                all.push(p);
            }
        }
        stop(&all, self.run().stop_timeout.get()).await;
        {
            let mut colors = self.lock();
            let c = &mut colors[color.index()];
            c.procs.clear();
            c.role = Role::Idle;
            c.stopping = false;
        }
        let name = self.service.clone();
        record(&self.store, "the stopped processes", &self.service, move |s| {
            s.remove_processes(&name, color)
        })
        .await;
    }

    /// `color`'s processes as `status` shows them.
    pub fn status(&self, color: Color) -> ColorProcesses {
        let colors = self.lock();
        let c = &colors[color.index()];
        ColorProcesses {
            role: c.role,
            running: c
                .procs
                .iter()
                .map(|p| ProcessStatus {
                    replica: p.replica,
                    pid: p.pid,
                    port: p.port,
                    version: p.version.clone(),
                    started_at: p.started_at.clone(),
                    log: p.log.clone(),
                    host: None,
                    unknown: false,
                })
                .collect(),
            restarts: c.restarts,
            last_exit: c.last_exit.clone(),
        }
    }

    /// Restarts made by this process per (color, version).
    pub fn restarts_total(&self) -> Vec<(Color, String, u64)> {
        self.restarts_total
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|((c, v), n)| (*c, v.clone(), *n))
            .collect()
    }
}

/// A process event in `service`'s history (actor `supervisor`), local or reported by a host
/// agent, dated `at` when it happened before now (a report read late); a failed write is
/// logged.
pub(crate) async fn process_event(
    store: &Arc<Store>,
    service: &str,
    kind: HistoryKind,
    color: Color,
    version: &str,
    reason: String,
    at: Option<String>,
) {
    let (name, version) = (service.to_string(), version.to_string());
    let at = at.unwrap_or_else(cutover_store::now_rfc3339);
    record(store, "a process event", service, move |s| {
        s.record_event_at(
            &EventRecord {
                service: &name,
                kind,
                color: Some(color),
                version: Some(&version),
                actor: "supervisor",
                reason: &reason,
                release_id: None,
            },
            &at,
        )
    })
    .await;
}

/// The delay before a restart when `recent` restarts were made within the window.
fn backoff(recent: usize) -> Duration {
    (BACKOFF_FIRST * 2u32.pow(recent.min(16) as u32)).min(BACKOFF_MAX)
}

/// `1 s`, `500 ms`.
fn humanize(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{} s", d.as_secs())
    } else {
        format!("{} ms", d.as_millis())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_substitution() {
        assert_eq!(
            substitute(
                "serve {version} --port {port} --tag {color}-{replica}",
                "v2",
                9002,
                Color::Green,
                1
            ),
            "serve v2 --port 9002 --tag green-1"
        );
    }

    #[test]
    fn restart_backoff_doubles_from_one_second_to_thirty() {
        let secs: Vec<u64> = (0..8).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 30, 30, 30]);
        assert_eq!(backoff(usize::MAX), BACKOFF_MAX);
    }
}
