//! What the supervisor asks of the operating system: whether a recorded process is still the
//! one started (pid and start time from /proc), who holds a port, and signals to a model
//! server's process group.

use std::time::Duration;

use cutover_store::ProcessRecord;
use rustix::process::{kill_process_group, Pid, Signal};
use tokio::time::Instant;

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
pub fn check_port_free(service: &str, host: std::net::IpAddr, port: u16) -> Result<(), String> {
    match std::net::TcpListener::bind((host, port)) {
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
    use std::process::Stdio;

    use super::*;

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
        let err = check_port_free("chat", std::net::Ipv4Addr::LOCALHOST.into(), port).unwrap_err();
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
        check_port_free("chat", std::net::Ipv4Addr::LOCALHOST.into(), port).unwrap();
    }
}
