//! Managed environments: starts a color's model-server processes from the service's one
//! template, stops them (SIGTERM, then SIGKILL after `stop_timeout`), and adopts the ones a
//! previous cutover started (same pid and start time) instead of restarting them.
//!
//! Each process runs in its own process group, so a Ctrl-C meant for cutover does not reach
//! it and a stop reaches its children too; it outlives cutover on purpose.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::time::Instant;

use cutover_config::RunConfig;
use cutover_proxy::Color;
use cutover_store::ProcessRecord;

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

pub fn log_path(data_dir: &Path, service: &str, color: Color, replica: u32) -> PathBuf {
    data_dir.join("logs").join(format!("{service}-{color}-{replica}.log"))
}

/// Starts one process per port of `color`. Returns their records (not yet stored).
pub fn start(
    run: &RunConfig,
    data_dir: &Path,
    config_dir: &Path,
    service: &str,
    color: Color,
    version: &str,
) -> anyhow::Result<Vec<(ProcessRecord, tokio::process::Child)>> {
    let ports = match color {
        Color::Blue => &run.ports.blue,
        Color::Green => &run.ports.green,
    };
    std::fs::create_dir_all(data_dir.join("logs"))?;
    let mut out = Vec::new();
    for (replica, port) in ports.iter().enumerate() {
        let replica = replica as u32;
        let argv: Vec<String> = run
            .command
            .iter()
            .map(|a| substitute(a, version, *port, color, replica))
            .collect();
        let log = log_path(data_dir, service, color, replica);
        let file = std::fs::OpenOptions::new().create(true).append(true).open(&log)?;
        let mut cmd = tokio::process::Command::new(&argv[0]);
        cmd.args(&argv[1..])
            .current_dir(run.workdir.as_deref().unwrap_or(config_dir))
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .process_group(0)
            .env("CUTOVER_SERVICE", service)
            .env("CUTOVER_COLOR", color.as_str())
            .env("CUTOVER_VERSION", version)
            .env("CUTOVER_PORT", port.to_string());
        for (k, v) in &run.env {
            cmd.env(k, substitute(v, version, *port, color, replica));
        }
        let child = cmd
            .spawn()
            .map_err(|e| anyhow::anyhow!("cannot start {:?} for {color} replica {replica}: {e}", argv[0]))?;
        let pid = child.id().unwrap_or(0);
        let st = start_time(pid).unwrap_or(0);
        tracing::info!(service, color = %color, version, replica, port, pid, log = %log.display(), "started model server");
        out.push((
            ProcessRecord {
                service: service.into(),
                color: crate::colors::stored(color),
                replica,
                port: *port,
                pid,
                start_time: st,
                version: version.into(),
            },
            child,
        ));
    }
    Ok(out)
}

async fn signal_group(pid: u32, sig: &str) {
    // `kill -SIG -- -PGID` reaches the model server and any workers it forked. (A child
    // process, not libc::kill: the crates forbid unsafe code.)
    let _ = tokio::process::Command::new("kill")
        .args([format!("-{sig}"), "--".into(), format!("-{pid}")])
        .stderr(Stdio::null())
        .status()
        .await;
}

/// Stops processes: SIGTERM to each group, then SIGKILL to those still alive after `timeout`.
pub async fn stop(procs: &[ProcessRecord], timeout: Duration) {
    let live: Vec<&ProcessRecord> = procs.iter().filter(|p| alive(p)).collect();
    for p in &live {
        tracing::info!(service = %p.service, color = %p.color, version = %p.version, pid = p.pid, "stopping model server (SIGTERM)");
        signal_group(p.pid, "TERM").await;
    }
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline && live.iter().any(|p| alive(p)) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for p in live.iter().filter(|p| alive(p)) {
        tracing::warn!(service = %p.service, color = %p.color, pid = p.pid, ?timeout, "model server ignored SIGTERM; sending SIGKILL");
        signal_group(p.pid, "KILL").await;
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
    fn own_start_time_is_readable_and_stable() {
        let me = std::process::id();
        let a = start_time(me).unwrap();
        assert!(a > 0);
        assert_eq!(start_time(me), Some(a));
        assert_eq!(start_time(u32::MAX - 1), None);
    }
}
