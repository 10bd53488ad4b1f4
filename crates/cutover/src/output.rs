//! Output for people (JSON with `--json`), written so that a closed stdout (`| head -1`)
//! ends the CLI quietly with exit code 141, as a process killed by SIGPIPE reports it,
//! instead of panicking in `println!`.

use std::io::Write;

use serde_json::Value;

use crate::cli::Remote;
use crate::client::Failure;

/// Writes one line to stdout. A closed pipe is `Failure::broken_pipe` (exit 141, nothing
/// printed); other write errors are exit 1.
pub fn line(text: &str) -> Result<(), Failure> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{text}").and_then(|_| out.flush()).map_err(write_failure)
}

/// Writes text without a newline (a terminal's redrawn status line).
pub fn raw(text: &str) -> Result<(), Failure> {
    let mut out = std::io::stdout().lock();
    write!(out, "{text}").and_then(|_| out.flush()).map_err(write_failure)
}

fn write_failure(e: std::io::Error) -> Failure {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        Failure::broken_pipe()
    } else {
        Failure::new(1, format!("cannot write to stdout: {e}"))
    }
}

pub fn print(r: &Remote, v: &Value, human: impl Fn(&Value) -> String) -> Result<(), Failure> {
    if r.json {
        line(&serde_json::to_string_pretty(v).unwrap_or_default())
    } else {
        line(&human(v))
    }
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or("-")
}

/// Longest reason a table row shows.
const SUMMARY_CHARS: usize = 160;

/// A reason as one table row shows it: its first line, cut at `SUMMARY_CHARS`, saying
/// how much more there is (`release show` has the whole text: quoted log lines and all).
pub fn summary(reason: &str) -> String {
    let reason = reason.trim();
    let mut lines = reason.lines();
    let first = lines.next().unwrap_or("").trim_end();
    let more = lines.filter(|l| !l.trim().is_empty()).count();
    let mut out: String = first.chars().take(SUMMARY_CHARS).collect();
    if out.len() < first.len() {
        out.push('…');
    }
    if more > 0 {
        out.push_str(&format!(" (+{more} line{})", if more == 1 { "" } else { "s" }));
    }
    out
}

pub fn status(v: &Value) -> String {
    // The bound address is the useful one (the config may say port 0).
    let listen = v["bound"]["listen"].as_str().unwrap_or(s(&v["listen"]));
    let preview = v["bound"]["preview_listen"].as_str().or(v["preview_listen"].as_str());
    let mut out = format!(
        "{}  live: {}  generation {}  listen {listen}{}\n",
        s(&v["name"]),
        v["live"].as_str().unwrap_or("none"),
        v["generation"],
        preview.map(|p| format!("  preview {p}")).unwrap_or_default()
    );
    for color in ["blue", "green"] {
        let c = &v["colors"][color];
        if c.is_null() {
            continue;
        }
        let eps: Vec<String> = c["endpoints"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|e| {
                // A failing last probe says why, so `status` alone explains an unhealthy endpoint.
                let why = e["last_probe"]
                    .as_object()
                    .filter(|p| p["ok"] == false)
                    .map(|p| format!(" ({})", s(&p["message"])))
                    .unwrap_or_default();
                format!("{} {}{why}", s(&e["address"]), s(&e["health"]).replace('_', " "))
            })
            .collect();
        out.push_str(&format!(
            "  {:<6} {:<8} {:<12} {:>4} in-flight {:<4} {}\n",
            color,
            s(&c["state"]),
            s(&c["version"]),
            c["weight"].as_u64().map(|w| format!("{w}%")).unwrap_or_default(),
            c["in_flight"],
            eps.join(", ")
        ));
        // Managed colors: where each process runs and logs (on a host agent: that host's file).
        let procs = &c["processes"];
        for p in procs["running"].as_array().into_iter().flatten() {
            out.push_str(&process_line(p));
        }
        if procs["restarts"].as_u64().is_some_and(|n| n > 0) || !procs["last_exit"].is_null() {
            let x = &procs["last_exit"];
            let on = x["host"].as_str().map(|h| format!(" on {h}")).unwrap_or_default();
            out.push_str(&format!(
                "         restarts {}{}\n",
                procs["restarts"],
                if x.is_null() {
                    String::new()
                } else {
                    format!(
                        "; last exit{on}: replica {} pid {} {} at {}",
                        x["replica"],
                        x["pid"],
                        s(&x["status"]),
                        s(&x["at"])
                    )
                }
            ));
        }
    }
    if let Some(r) = v.get("release").filter(|r| !r.is_null()) {
        out.push_str(&format!(
            "  release #{} {} → {}: {}\n",
            r["id"],
            s(&r["version"]),
            s(&r["color"]),
            s(&r["phase"])
        ));
        out.push_str(&step_lines(r));
    }
    out.trim_end().to_string()
}

/// A progressive release's steps so far, one line each, the last one with its share now.
fn step_lines(r: &Value) -> String {
    let mut out = String::new();
    for st in r["steps"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "    step {}/{} {}% {}: {} requests{}\n",
            st["step"],
            st["of"],
            st["weight"],
            s(&st["result"]),
            st["requests"],
            st["detail"].as_str().map(|d| format!(" ({d})")).unwrap_or_default()
        ));
    }
    out
}

/// One managed process of a color: replica, host, pid, port, log; a process on a host whose
/// agent is away is the agent's last report, so it says it is unknown.
fn process_line(p: &Value) -> String {
    let on = p["host"].as_str().map(|h| format!(" on {h}")).unwrap_or_default();
    let unknown = if p["unknown"] == true {
        "  unknown (host agent away; last reported)"
    } else {
        ""
    };
    format!(
        "         replica {}{on}  pid {}  port {}  log {}{unknown}\n",
        p["replica"],
        p["pid"],
        p["port"],
        s(&p["log"])
    )
}

pub fn history(v: &Value) -> String {
    let mut out = format!("{}:\n", s(&v["service"]));
    let entries = v["history"].as_array().cloned().unwrap_or_default();
    if entries.is_empty() {
        out.push_str("  (no history yet)");
    }
    for e in entries {
        let kind = s(&e["kind"]);
        // Switches read "from → to"; other events name the color they concern.
        let what = if kind == "switched" || kind == "rolled_back" {
            format!("{} → {}", e["from"].as_str().unwrap_or("none"), s(&e["to"]))
        } else {
            s(&e["to"]).to_string()
        };
        out.push_str(&format!(
            "  {}  gen {:<4} {:<20} {:<14} {:<10} by {}: {}\n",
            s(&e["at"]),
            e["generation"],
            kind,
            what,
            s(&e["version"]),
            s(&e["actor"]),
            summary(s(&e["reason"]))
        ));
    }
    out.trim_end().to_string()
}

/// The release list of a service, one line each.
pub fn releases(v: &Value, limit: usize) -> String {
    let list = v["releases"].as_array().cloned().unwrap_or_default();
    if list.is_empty() {
        return format!("{}: no releases yet", s(&v["service"]));
    }
    let mut out = format!(
        "{:>5}  {:<12} {:<6} {:<18} {:<20} {:<14} reason\n",
        "id", "version", "color", "phase/outcome", "started", "by"
    );
    for r in list.iter().take(limit) {
        let state = r["outcome"].as_str().unwrap_or(s(&r["phase"]));
        out.push_str(&format!(
            "{:>5}  {:<12} {:<6} {:<18} {:<20} {:<14} {}\n",
            format!("#{}", r["id"]),
            s(&r["version"]),
            s(&r["color"]),
            state,
            s(&r["created_at"]),
            s(&r["actor"]),
            summary(r["reason"].as_str().unwrap_or(""))
        ));
    }
    out.trim_end().to_string()
}

/// One phase as it ended: name, time, detail.
pub fn phase_line(p: &Value) -> String {
    format!("{}  {}", phase_time(p), s(&p["detail"]))
}

/// One phase as it ended: name and time only (its detail is said elsewhere).
pub fn phase_time(p: &Value) -> String {
    let ms = p["elapsed_ms"].as_u64().unwrap_or(0);
    format!("  {:<18} {:>7.1} s", s(&p["phase"]), ms as f64 / 1000.0)
}

/// A whole release document: header, every phase, gates, timings and the end.
pub fn release(d: &Value) -> String {
    let from = match (d["previous_color"].as_str(), d["previous_version"].as_str()) {
        (Some(c), Some(v)) => format!("{c} {v}"),
        (Some(c), None) => c.to_string(),
        (None, _) => "nothing live".to_string(),
    };
    let mut out = format!(
        "{}: release #{} of {} into {} (from {from}), started {} by {}\n",
        s(&d["service"]),
        d["id"],
        s(&d["version"]),
        s(&d["color"]),
        s(&d["created_at"]),
        s(&d["actor"])
    );
    for p in d["phases"].as_array().into_iter().flatten() {
        if p["ended_at"].is_null() {
            out.push_str(&format!("  {:<18} … since {}\n", s(&p["phase"]), s(&p["started_at"])));
        } else {
            out.push_str(&phase_line(p));
            out.push('\n');
        }
    }
    let gates: Vec<String> = d["gates"].as_array().into_iter().flatten().map(gate).collect();
    if !gates.is_empty() {
        out.push_str(&format!("  gates: {}\n", gates.join(", ")));
    }
    for (k, what) in [("switch_ms", "switch"), ("rollback_ms", "rollback")] {
        if let Some(ms) = d[k].as_f64() {
            out.push_str(&format!("  {what}: {ms:.1} ms\n"));
        }
    }
    match d["outcome"].as_str() {
        Some(o) => out.push_str(&format!("  outcome: {o}: {}", s(&d["reason"]))),
        None => out.push_str(&format!("  in progress: {}", s(&d["phase"]))),
    }
    out
}

/// A gate reading: `error_rate 0.2% ≤ 1% passing`.
pub fn gate(g: &Value) -> String {
    let num = |v: &Value| match v.as_f64() {
        Some(x) => format!("{x}"),
        None => "-".into(),
    };
    // An external gate says what it read: its query, or the metric and its reduction.
    let query = g["query"].as_str().map(|q| format!(" [{q}]")).unwrap_or_default();
    format!(
        "{}{query} {} (limit {}) {}",
        s(&g["name"]),
        num(&g["value"]),
        num(&g["limit"]),
        s(&g["result"])
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_external_gate_shows_its_query() {
        let g = serde_json::json!({"name": "queue", "value": 7.0, "limit": 5.0, "result": "failing", "query": "max(q{color=\"green\"})"});
        assert_eq!(gate(&g), "queue [max(q{color=\"green\"})] 7 (limit 5) failing");
        let builtin = serde_json::json!({"name": "error_rate", "value": null, "limit": 0.01, "result": "inconclusive"});
        assert_eq!(gate(&builtin), "error_rate - (limit 0.01) inconclusive");
    }

    #[test]
    fn a_multi_line_reason_is_one_row_in_tables() {
        let r = "smoke check \"chat\" failed: status 500\n  log: line one\n  log: line two\n";
        assert_eq!(summary(r), "smoke check \"chat\" failed: status 500 (+2 lines)");
        assert_eq!(summary("one line"), "one line");
        let long = "x".repeat(SUMMARY_CHARS + 10);
        assert_eq!(summary(&long).chars().count(), SUMMARY_CHARS + 1);
        let table = releases(
            &serde_json::json!({"service": "chat", "releases": [{"id": 3, "version": "bad", "color": "green",
                "outcome": "aborted", "created_at": "2026-12-06T10:00:00Z", "actor": "cli:me", "reason": r}]}),
            10,
        );
        assert_eq!(table.lines().count(), 2, "{table}");
        let h = history(
            &serde_json::json!({"service": "chat", "history": [{"at": "2026-12-06T10:00:00Z",
            "kind": "release_aborted", "to": "green", "generation": 2, "version": "bad", "actor": "controller", "reason": r}]}),
        );
        assert_eq!(h.lines().count(), 2, "{h}");
    }

    #[test]
    fn a_first_release_reads_from_nothing_live() {
        let d = serde_json::json!({"service": "chat", "id": 1, "version": "v1", "color": "blue",
            "previous_color": null, "previous_version": null, "created_at": "t", "actor": "a", "phases": []});
        assert!(
            release(&d).starts_with("chat: release #1 of v1 into blue (from nothing live), started"),
            "{}",
            release(&d)
        );
    }
}
