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
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rustix::process::{kill_process_group, Pid, Signal};
use serde::Serialize;
use tokio::sync::watch;
use tokio::time::Instant;

use cutover_config::{RestartPolicy, RunConfig};
use cutover_proxy::Color;
use cutover_store::{now_rfc3339, now_rfc3339_millis, EventRecord, HistoryKind, ProcessRecord, Store};

use crate::pause::Pause;
use crate::store_call::{blocking, record};

/// Log files kept per replica (one per start); older ones are removed at the next start.
pub const LOGS_KEPT: usize = 10;
/// The first restart's delay; each further restart within the window doubles it.
pub const BACKOFF_FIRST: Duration = Duration::from_secs(1);
/// The longest delay between restarts.
pub const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// How often an adopted process (not our child: no exit notification) is looked for in /proc.
const ADOPTED_POLL: Duration = Duration::from_secs(1);
/// Lines of a process's log quoted in an exit's reason.
const TAIL_LINES: usize = 10;

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

/// The start time of `pid` in clock ticks since boot (field 22 of /proc/PID/stat), which tells
/// a live process apart from a later one that reused its pid.
pub fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: count from the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state); field 22 is index 19. A zombie counts as gone.
    if fields.first() == Some(&"Z") {
        return None;
    }
    fields.get(19)?.parse().ok()
}

/// True when the recorded process is still the one we started.
pub fn alive(p: &ProcessRecord) -> bool {
    start_time(p.pid) == Some(p.start_time)
}

/// The stable name of a replica's log: a symlink to the file of its newest start.
pub fn log_path(data_dir: &Path, service: &str, color: Color, replica: u32) -> PathBuf {
    data_dir.join("logs").join(format!("{service}-{color}-{replica}.log"))
}

/// Who listens on `port`, as "pid N (command line)", from /proc/net/tcp* and /proc/*/fd;
/// `None` when that cannot be read (another user's process, no /proc).
pub fn port_holder(port: u16) -> Option<String> {
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // local_address is HEXIP:HEXPORT; state 0A is LISTEN; field 9 is the inode.
            let (Some(local), Some(state), Some(inode)) = (f.get(1), f.get(3), f.get(9)) else {
                continue;
            };
            let p = local.rsplit(':').next().and_then(|h| u16::from_str_radix(h, 16).ok());
            if p == Some(port) && *state == "0A" && *inode != "0" {
                inodes.push(format!("socket:[{inode}]"));
            }
        }
    }
    if inodes.is_empty() {
        return None;
    }
    for proc_dir in std::fs::read_dir("/proc").ok()?.flatten() {
        let name = proc_dir.file_name();
        let Some(pid) = name.to_str().filter(|n| n.bytes().all(|b| b.is_ascii_digit())) else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(proc_dir.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            let Ok(target) = std::fs::read_link(fd.path()) else {
                continue;
            };
            if inodes.iter().any(|i| target.as_os_str() == i.as_str()) {
                let cmd = std::fs::read(proc_dir.path().join("cmdline")).unwrap_or_default();
                let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
                return Some(format!("pid {pid} ({})", cmd.trim()));
            }
        }
    }
    None
}

/// Why `key` (a listener of the config) could not listen on `addr`: the error, and for a
/// port in use who holds it, as a managed port taken by a stray server says it.
pub fn cannot_listen(key: &str, addr: std::net::SocketAddr, e: &std::io::Error) -> String {
    let mut out = format!("cannot listen on {key} {addr}: {e}");
    if e.kind() == std::io::ErrorKind::AddrInUse {
        let who = port_holder(addr.port())
            .unwrap_or_else(|| "a process this user cannot see (not listed in /proc/*/fd)".to_string());
        out.push_str(&format!("; held by {who}"));
    }
    out
}

/// Checks that `host:port` can be bound, so the process started there is the one health
/// checks will reach; `Err` says who holds it when /proc tells.
pub fn check_port_free(service: &str, host: &str, port: u16) -> Result<(), String> {
    let ip: std::net::IpAddr = host
        .parse()
        .map_err(|_| format!("invalid host {host:?} in services.{service}.run.host"))?;
    match std::net::TcpListener::bind((ip, port)) {
        Ok(l) => {
            drop(l);
            Ok(())
        }
        Err(e) => {
            let who = port_holder(port)
                .unwrap_or_else(|| "a process this user cannot see (not listed in /proc/*/fd)".to_string());
            Err(format!(
                "port {port} on {host} is already in use ({e}) by {who}: a model server started there could not listen, and health checks would reach the other process instead; stop it or change services.{service}.run.ports"
            ))
        }
    }
}

/// The last `n` lines of a file (read from its last 16 KiB).
pub fn tail(path: &Path, n: usize) -> String {
    let Ok(mut f) = std::fs::File::open(path) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let from = len.saturating_sub(16 * 1024);
    if f.seek(SeekFrom::Start(from)).is_err() {
        return String::new();
    }
    let mut buf = Vec::new();
    let _partial = f.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let lines = &lines[lines.len().saturating_sub(n)..];
    lines
        .iter()
        .map(|l| {
            let l: String = l.chars().take(300).collect();
            format!("| {l}")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Opens the log file of a new start: a new file, a header line, the stable symlink pointed
/// at it, the oldest files beyond [`LOGS_KEPT`] removed.
fn new_log(
    dir: &Path,
    service: &str,
    color: Color,
    replica: u32,
    header: &str,
) -> std::io::Result<(PathBuf, std::fs::File)> {
    std::fs::create_dir_all(dir)?;
    let prefix = format!("{service}-{color}-{replica}-");
    let stamp: String = now_rfc3339_millis()
        .chars()
        .filter(|c| *c != '-' && *c != ':')
        .collect();
    let (path, mut file) = {
        // After the highest start of this millisecond still on disk: a name freed by retention
        // must not come back for a newer start, or it would sort as the oldest.
        let taken = |name: &str| -> Option<u32> {
            let rest = name.strip_prefix(&prefix)?.strip_prefix(&stamp)?.strip_suffix(".log")?;
            match rest {
                "" => Some(1),
                r => r.strip_prefix('-')?.parse().ok(),
            }
        };
        let mut n = std::fs::read_dir(dir)?
            .flatten()
            .filter_map(|e| taken(e.file_name().to_str()?))
            .max()
            .map_or(1, |m| m + 1);
        loop {
            let name = if n == 1 {
                format!("{prefix}{stamp}.log")
            } else {
                format!("{prefix}{stamp}-{n}.log")
            };
            let path = dir.join(&name);
            match std::fs::OpenOptions::new().create_new(true).append(true).open(&path) {
                Ok(f) => break (path, f),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && n < 10_000 => n += 1,
                Err(e) => return Err(e),
            }
        }
    };
    writeln!(file, "{header}")?;
    let link = dir.join(format!("{service}-{color}-{replica}.log"));
    if std::fs::symlink_metadata(&link).is_ok_and(|m| m.file_type().is_file()) {
        // The single appended file of an older cutover: keep it under a name retention skips.
        std::fs::rename(
            &link,
            dir.join(format!("{service}-{color}-{replica}.before-per-start-logs.log")),
        )?;
    }
    let tmp = dir.join(format!(".{service}-{color}-{replica}.log.tmp"));
    let _stale = std::fs::remove_file(&tmp);
    if let Some(name) = path.file_name() {
        std::os::unix::fs::symlink(name, &tmp)?;
        std::fs::rename(&tmp, &link)?;
    }
    // Names sort by start time; a name whose rest is not a timestamp belongs to another service
    // whose name extends this one ("chat" vs "chat-blue-0").
    let mut old: Vec<((String, u32), PathBuf)> = std::fs::read_dir(dir)?
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let rest = name.strip_prefix(&prefix)?.strip_suffix(".log")?;
            if !rest.starts_with(|c: char| c.is_ascii_digit()) {
                return None;
            }
            // `STAMP` or `STAMP-N` (a second start within the same millisecond).
            let key = match rest.split_once('-') {
                Some((stamp, n)) => (stamp.to_string(), n.parse().ok()?),
                None => (rest.to_string(), 1),
            };
            Some((key, e.path()))
        })
        .collect();
    old.sort();
    for (_, p) in old.iter().take(old.len().saturating_sub(LOGS_KEPT)) {
        let _gone = std::fs::remove_file(p);
    }
    Ok((path, file))
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

/// An exit nobody asked for.
#[derive(Debug, Clone, Serialize)]
pub struct Exit {
    /// Which start of the color's processes it belongs to ([`Supervisor::epoch`]).
    #[serde(skip)]
    pub epoch: u64,
    pub replica: u32,
    pub pid: u32,
    pub version: String,
    /// `exit status: 1`, `signal: 9 (SIGKILL)`, or why it is unknown.
    pub status: String,
    pub at: String,
    pub log: Option<String>,
    /// The last lines of its log, each prefixed with `| `.
    #[serde(skip)]
    pub tail: String,
    /// The host agent it ran on (`run.hosts`); `None` on this machine.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
}

impl Exit {
    /// One message for reasons and history: what exited, how, its log and last lines.
    pub fn describe(&self, color: Color) -> String {
        let on = self.host.as_ref().map(|h| format!(" on {h}")).unwrap_or_default();
        let mut s = format!(
            "{color} replica {}{on} ({}, pid {}) exited: {}",
            self.replica, self.version, self.pid, self.status
        );
        if let Some(log) = &self.log {
            s.push_str(&format!("; log: {log}"));
            if self.tail.is_empty() {
                s.push_str(" (empty)");
            } else {
                s.push_str(&format!("; last lines:\n{}", self.tail));
            }
        }
        s
    }
}

/// The latest exit nobody asked for, per color: what a release run waits on, fed by the
/// local supervisor or by the host agents' reports.
pub struct ExitWatch([watch::Sender<Option<Exit>>; 2]);

impl Default for ExitWatch {
    fn default() -> Self {
        ExitWatch([watch::Sender::new(None), watch::Sender::new(None)])
    }
}

impl ExitWatch {
    pub fn publish(&self, color: Color, exit: Exit) {
        self.0[color.index()].send_replace(Some(exit));
    }

    /// The unasked-for exit of the processes of `epoch`, if one happened.
    pub fn exit_of(&self, color: Color, epoch: u64) -> Option<Exit> {
        self.0[color.index()].borrow().clone().filter(|e| e.epoch == epoch)
    }

    /// Waits for an unasked-for exit of the processes of `epoch` (forever if none comes).
    pub async fn wait_exit(&self, color: Color, epoch: u64) -> Exit {
        let mut rx = self.0[color.index()].subscribe();
        let seen = rx
            .wait_for(|e| e.as_ref().is_some_and(|e| e.epoch == epoch))
            .await
            .map(|e| e.clone());
        match seen {
            Ok(Some(e)) => e,
            // The sender lives as long as its owner, which outlives this borrow.
            _ => std::future::pending().await,
        }
    }
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
            check_port_free(&self.service, &self.run().host, port)?;
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
            .map(|a| substitute(a, version, port, color, replica).replace("{host}", &run.host))
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
                substitute(v, version, port, color, replica).replace("{host}", &run.host),
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
            let r = check_port_free(&self.service, &self.run().host, old.port)
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

/// `kill(-pgid, sig)`: reaches the model server and any workers it forked (it leads its own
/// process group). Errors (the group already gone) are ignored, as `alive` decides what
/// happens next. A pid that is not a child's (0, 1, past `i32`) is never signalled: a group
/// of 0 is our own and `kill(-1)` reaches every process we may signal.
fn signal_group(pid: u32, sig: Signal) {
    if let Some(pgid) = i32::try_from(pid).ok().filter(|&p| p > 1).and_then(Pid::from_raw) {
        let _ = kill_process_group(pgid, sig);
    }
}

/// Stops processes: SIGTERM to each group, then SIGKILL to those still alive after `timeout`.
pub async fn stop(procs: &[ProcessRecord], timeout: Duration) {
    let live: Vec<&ProcessRecord> = procs.iter().filter(|p| alive(p)).collect();
    for p in &live {
        tracing::info!(service = %p.service, color = %p.color, version = %p.version, pid = p.pid, "stopping model server (SIGTERM)");
        signal_group(p.pid, Signal::TERM);
    }
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline && live.iter().any(|p| alive(p)) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for p in live.iter().filter(|p| alive(p)) {
        tracing::warn!(service = %p.service, color = %p.color, pid = p.pid, ?timeout, "model server ignored SIGTERM; sending SIGKILL");
        signal_group(p.pid, Signal::KILL);
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

    /// `stop` signals the whole process group: a server that ignores SIGTERM is killed after
    /// the timeout, and so is the worker it forked.
    #[tokio::test]
    async fn stop_kills_a_group_that_ignores_sigterm_workers_included() {
        use std::io::BufRead;
        use std::os::unix::process::CommandExt;
        let mut child = std::process::Command::new("sh")
            .args(["-c", "trap '' TERM; sleep 60 & echo $!; wait"])
            .process_group(0)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let record = |pid: u32| ProcessRecord {
            service: "chat".into(),
            color: cutover_store::Color::Blue,
            replica: 0,
            port: 0,
            pid,
            start_time: start_time(pid).unwrap(),
            version: "v1".into(),
            log: None,
            started_at: None,
        };
        let server = record(child.id());
        let worker = record(line.trim().parse().unwrap());
        stop(std::slice::from_ref(&server), Duration::from_millis(300)).await;
        let status = child.wait().unwrap();
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(9),
            "SIGTERM was ignored: SIGKILL"
        );
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while alive(&worker) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(!alive(&worker), "the forked worker got the group's SIGKILL");
    }

    #[test]
    fn own_start_time_is_readable_and_stable() {
        let me = std::process::id();
        let a = start_time(me).unwrap();
        assert!(a > 0);
        assert_eq!(start_time(me), Some(a));
        assert_eq!(start_time(u32::MAX - 1), None);
    }

    /// Regression: a port held by another server used to be started on anyway; the model
    /// server exited with "Address already in use" and health checks passed on the stray.
    #[test]
    fn a_held_port_is_refused_naming_its_holder() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let err = check_port_free("chat", "127.0.0.1", port).unwrap_err();
        assert!(
            err.contains(&format!("port {port} on 127.0.0.1 is already in use")),
            "{err}"
        );
        assert!(
            err.contains(&format!("pid {}", std::process::id())),
            "this test process holds it: {err}"
        );
        assert!(err.contains("services.chat.run.ports"), "{err}");
        drop(l);
        check_port_free("chat", "127.0.0.1", port).unwrap();
    }

    #[test]
    fn one_log_file_per_start_with_a_header_a_symlink_and_retention() {
        let dir = std::env::temp_dir().join(format!("cutover-logs-test-{}", std::process::id()));
        let _fresh = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        // An older cutover's single file is kept aside, not overwritten.
        std::fs::write(dir.join("chat-blue-0.log"), "old lines\n").unwrap();
        // Another service whose name extends this one: never removed by this one's retention.
        std::fs::write(dir.join("chat-blue-0-blue-0-20000101T000000.000Z.log"), "x").unwrap();
        let mut paths = Vec::new();
        for i in 0..(LOGS_KEPT + 2) {
            let (p, mut f) = new_log(&dir, "chat", Color::Blue, 0, &format!("=== start {i} ===")).unwrap();
            writeln!(f, "line of start {i}").unwrap();
            paths.push(p);
        }
        let names: std::collections::BTreeSet<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        let per_start = names
            .iter()
            .filter(|n| n.starts_with("chat-blue-0-2") && n.ends_with(".log"))
            .count();
        assert_eq!(per_start, LOGS_KEPT, "{names:?}");
        assert!(names.contains("chat-blue-0.before-per-start-logs.log"), "{names:?}");
        assert!(
            names.contains("chat-blue-0-blue-0-20000101T000000.000Z.log"),
            "{names:?}"
        );
        assert!(
            !paths[0].exists() && !paths[1].exists() && paths[2].exists() && paths[LOGS_KEPT + 1].exists(),
            "the two oldest went: {paths:?} {names:?}"
        );
        let newest = std::fs::read_to_string(dir.join("chat-blue-0.log")).unwrap();
        assert_eq!(
            newest,
            format!("=== start {} ===\nline of start {}\n", LOGS_KEPT + 1, LOGS_KEPT + 1)
        );
        assert_eq!(
            tail(&paths[LOGS_KEPT + 1], 1),
            format!("| line of start {}", LOGS_KEPT + 1)
        );
        let _gone = std::fs::remove_dir_all(&dir);
    }
}
