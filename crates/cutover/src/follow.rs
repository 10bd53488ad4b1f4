//! Following a release (`release --wait`, `release follow`, `rollback --redeploy`): one line
//! per phase as it ends, and the commands to approve or abort when it waits for approval.
//!
//! On a terminal a status line under the finished phases is redrawn in place (phase, time in
//! it, what it waits for). Anywhere else (CI logs, files, pipes) nothing is redrawn: a line
//! when a phase starts, a line when it ends, and a heartbeat line whenever `--heartbeat`
//! (15 s) passed without one, saying what is awaited ("waiting_healthy … 1m30s of 10m: 2 of
//! 2 endpoints not healthy yet (...)").

use std::io::IsTerminal;
use std::time::{Duration, Instant, SystemTime};

use serde_json::Value;

use crate::cli::{Progress, Remote, DEFAULT_ADMIN};
use crate::client::{Client, Failure};
use crate::output;

/// How often the release document is read.
const POLL: Duration = Duration::from_millis(200);
/// How often a terminal's status line reads the service (endpoint health).
const TTY_STATUS_EVERY: Duration = Duration::from_secs(1);

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or("-")
}

/// `1m30s`, `10m`, `45s`, `1h2m`.
pub fn short_duration(d: Duration) -> String {
    let t = d.as_secs();
    let (h, m, sec) = (t / 3600, (t / 60) % 60, t % 60);
    let mut out = String::new();
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if m > 0 {
        out.push_str(&format!("{m}m"));
    }
    if sec > 0 || out.is_empty() {
        out.push_str(&format!("{sec}s"));
    }
    out
}

/// The flags a printed command needs to reach the same router (never a token itself).
fn connection_args(remote: &Remote, c: &Client) -> String {
    let mut out = String::new();
    if let Some(cfg) = &remote.config {
        out.push_str(&format!(" --config {}", cfg.display()));
    } else if c.base() != DEFAULT_ADMIN {
        out.push_str(&format!(" --admin {}", c.base()));
    }
    if let (None, Some(f)) = (&remote.config, &remote.token_file) {
        out.push_str(&format!(" --token-file {}", f.display()));
    }
    // Only a CA given as a flag: one from CUTOVER_CACERT is in the environment of whoever
    // runs the printed command too, like CUTOVER_ADMIN.
    if let (Some(ca), None) = (&remote.cacert, std::env::var_os("CUTOVER_CACERT")) {
        out.push_str(&format!(" --cacert {}", ca.display()));
    }
    out
}

/// Time spent in the current phase, and its deadline: "1m30s of 10m".
fn phase_clock(doc: &Value) -> String {
    let started = doc["phases"]
        .as_array()
        .and_then(|p| p.last())
        .and_then(|p| p["started_at"].as_str())
        .and_then(|t| humantime::parse_rfc3339_weak(t).ok());
    let spent = started
        .and_then(|t| SystemTime::now().duration_since(t).ok())
        .unwrap_or_default();
    match doc["phase_deadline_s"].as_f64() {
        Some(d) => format!(
            "{} of {}",
            short_duration(spent),
            short_duration(Duration::from_secs_f64(d))
        ),
        None => short_duration(spent),
    }
}

/// What the current phase waits for, from the release and its service's status.
fn awaited(doc: &Value, service: Option<&Value>) -> String {
    match s(&doc["phase"]) {
        "waiting_healthy" => {
            let Some(svc) = service else { return String::new() };
            let eps: Vec<&Value> = svc["colors"][s(&doc["color"])]["endpoints"]
                .as_array()
                .map(|a| a.iter().collect())
                .unwrap_or_default();
            let not: Vec<String> = eps
                .iter()
                .filter(|e| e["healthy"] != true)
                .map(|e| match last_probe(&e["last_probe"]) {
                    Some(p) => format!("{} {}, last probe {p}", s(&e["address"]), s(&e["health"])),
                    None => format!("{} {}, not probed yet", s(&e["address"]), s(&e["health"])),
                })
                .collect();
            format!(
                "{} of {} endpoints not healthy yet ({})",
                not.len(),
                eps.len(),
                not.join("; ")
            )
        }
        "awaiting_approval" => "waiting for approval".into(),
        "verifying" => {
            let gates: Vec<String> = doc["gates"]
                .as_array()
                .into_iter()
                .flatten()
                .map(output::gate)
                .collect();
            if gates.is_empty() {
                "verifying the new color".into()
            } else {
                gates.join(", ")
            }
        }
        phase => format!("{phase} running"),
    }
}

/// An endpoint's last probe as the status gives it: "2s ago: connection refused".
fn last_probe(p: &Value) -> Option<String> {
    let age = Duration::from_millis(p["age_ms"].as_u64()?);
    Some(format!(
        "{} ago: {}",
        short_duration(age),
        p["message"].as_str().unwrap_or("?")
    ))
}

/// What has been printed so far.
struct Printed {
    /// Phases whose end line is out.
    ended: usize,
    /// Phases whose start line is out (not on a terminal).
    started: usize,
    /// The phase index whose approval commands are out.
    approval: Option<usize>,
    /// Nothing read yet: the next document is the state at attaching.
    attached: bool,
    last_line: Instant,
    last_status: Option<(Instant, Value)>,
}

/// The exit code of `--timeout` passing before the release ended.
pub const EXIT_TIMEOUT: u8 = 5;

/// Whether phase `i` is the one the release ended in, its detail the release's reason: its
/// line then leaves the detail to the last line, so the reason is printed once.
fn ends_with_reason(doc: &Value, i: usize, p: &Value) -> bool {
    let last = doc["phases"].as_array().map_or(0, |a| a.len());
    !doc["outcome"].is_null() && i + 1 == last && p["detail"] == doc["reason"]
}

/// The last line of a followed release: its outcome and why.
fn end_line(id: i64, doc: &Value) -> String {
    let mut line = format!("release #{id} of {} {}", s(&doc["version"]), s(&doc["outcome"]));
    if let Some(r) = doc["reason"].as_str() {
        line.push_str(&format!(": {r}"));
    }
    line
}

/// Follows release `id` to its end and returns the final document. Nothing is printed
/// with `--json` (the caller prints the document). `--timeout` ends it with exit 5; the
/// release goes on.
pub async fn release(c: &Client, remote: &Remote, service: &str, id: i64, p: Progress) -> Result<Value, Failure> {
    let quiet = remote.json;
    let tty = std::io::stdout().is_terminal() && !quiet;
    let deadline = p.timeout.map(|t| Instant::now() + t);
    let mut printed = Printed {
        ended: 0,
        started: 0,
        approval: None,
        attached: true,
        last_line: Instant::now(),
        last_status: None,
    };
    loop {
        let doc = c.get(&format!("/v1/services/{service}/releases/{id}")).await?;
        if !quiet {
            if tty {
                output::raw("\r\x1b[2K")?;
            }
            lines(&doc, &mut printed, tty, remote, c)?;
        }
        if !doc["outcome"].is_null() {
            if !quiet {
                output::line(&end_line(id, &doc))?;
            }
            return Ok(doc);
        }
        if let (Some(d), Some(t)) = (deadline, p.timeout) {
            if Instant::now() >= d {
                if tty {
                    output::raw("\n")?;
                }
                return Err(Failure::new(
                    EXIT_TIMEOUT,
                    format!(
                        "--timeout {} passed while release #{id} is {}; it goes on: `cutover release follow {service} {id}` re-attaches, `cutover abort {service}` stops it before its switch",
                        short_duration(t),
                        s(&doc["phase"])
                    ),
                ));
            }
        }
        if !quiet {
            waiting(c, service, &doc, &mut printed, tty, p.heartbeat).await?;
        }
        tokio::time::sleep(POLL).await;
    }
}

/// The end of every phase that ended, the start of the current one (not on a terminal),
/// and the approval commands once.
fn lines(doc: &Value, printed: &mut Printed, tty: bool, remote: &Remote, c: &Client) -> Result<(), Failure> {
    let phases = doc["phases"].as_array().cloned().unwrap_or_default();
    if printed.attached {
        // Phases that ended before we attached get their end line only.
        printed.started = phases.iter().filter(|p| !p["ended_at"].is_null()).count();
        printed.attached = false;
    }
    for (i, p) in phases.iter().enumerate().skip(printed.ended) {
        if !tty && printed.started <= i {
            output::line(&format!("  {:<18} started", s(&p["phase"])))?;
            printed.started = i + 1;
            printed.last_line = Instant::now();
        }
        if !p["ended_at"].is_null() {
            let text = if ends_with_reason(doc, i, p) {
                output::phase_time(p)
            } else {
                output::phase_line(p)
            };
            output::line(&text)?;
            printed.ended = i + 1;
            printed.last_line = Instant::now();
            continue;
        }
        if p["phase"] == "awaiting_approval" && printed.approval != Some(i) {
            let (svc, id, conn) = (s(&doc["service"]), &doc["id"], connection_args(remote, c));
            output::line(&format!(
                "  release #{id} of {} waits for approval:\n    approve: cutover approve {svc} --release {id}{conn}\n    abort:   cutover abort {svc} --release {id}{conn}",
                s(&doc["version"])
            ))?;
            printed.approval = Some(i);
            printed.last_line = Instant::now();
        }
        break;
    }
    Ok(())
}

/// A terminal's redrawn status line, or a heartbeat line when it is due.
async fn waiting(
    c: &Client,
    service: &str,
    doc: &Value,
    printed: &mut Printed,
    tty: bool,
    heartbeat: Duration,
) -> Result<(), Failure> {
    let due = if tty {
        printed
            .last_status
            .as_ref()
            .is_none_or(|(at, _)| at.elapsed() >= TTY_STATUS_EVERY)
    } else {
        printed.last_line.elapsed() >= heartbeat
    };
    if due && doc["phase"] == "waiting_healthy" {
        if let Ok(v) = c.get(&format!("/v1/services/{service}")).await {
            printed.last_status = Some((Instant::now(), v));
        }
    } else if due && tty {
        printed.last_status = Some((Instant::now(), Value::Null));
    }
    let svc = printed.last_status.as_ref().map(|(_, v)| v).filter(|v| !v.is_null());
    let text = format!(
        "  {:<18} … {}: {}",
        s(&doc["phase"]),
        phase_clock(doc),
        awaited(doc, svc)
    );
    if tty {
        output::raw(&text)?;
    } else if due {
        output::line(&text)?;
        printed.last_line = Instant::now();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_durations_read_like_the_config() {
        let d = |s| short_duration(Duration::from_secs(s));
        assert_eq!(
            (d(0), d(45), d(90), d(600), d(3720)),
            ("0s".into(), "45s".into(), "1m30s".into(), "10m".into(), "1h2m".into())
        );
    }

    #[test]
    fn waiting_healthy_names_the_endpoints_not_healthy() {
        let doc = serde_json::json!({"phase": "waiting_healthy", "color": "green"});
        let svc = serde_json::json!({"colors": {"green": {"endpoints": [
            {"address": "127.0.0.1:9002", "healthy": null, "health": "unknown"},
            {"address": "127.0.0.1:9004", "healthy": false, "health": "unhealthy",
             "last_probe": {"ok": false, "age_ms": 2100, "message": "connection refused"}},
            {"address": "127.0.0.1:9003", "healthy": true, "health": "healthy"}]}}});
        assert_eq!(
            awaited(&doc, Some(&svc)),
            "2 of 3 endpoints not healthy yet (127.0.0.1:9002 unknown, not probed yet; \
             127.0.0.1:9004 unhealthy, last probe 2s ago: connection refused)"
        );
    }
}
