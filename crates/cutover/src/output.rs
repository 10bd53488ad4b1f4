//! Human output for the CLI (JSON with `--json`).

use serde_json::Value;

use crate::client::Failure;
use crate::Remote;

pub fn print(r: &Remote, v: &Value, human: impl Fn(&Value) -> String) -> Result<(), Failure> {
    if r.json {
        println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
    } else {
        println!("{}", human(v));
    }
    Ok(())
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or("-")
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
            .map(|e| format!("{} {}", s(&e["address"]), s(&e["health"])))
            .collect();
        out.push_str(&format!(
            "  {:<6} {:<8} {:<12} in-flight {:<4} {}\n",
            color,
            s(&c["state"]),
            s(&c["version"]),
            c["in_flight"],
            eps.join(", ")
        ));
    }
    if let Some(r) = v.get("release").filter(|r| !r.is_null()) {
        out.push_str(&format!(
            "  release #{} {} → {}: {}\n",
            r["id"],
            s(&r["version"]),
            s(&r["color"]),
            s(&r["phase"])
        ));
    }
    out.trim_end().to_string()
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
            s(&e["reason"])
        ));
    }
    out.trim_end().to_string()
}

/// Polls a release and prints each phase as it ends (with a live line on a terminal).
pub async fn follow_release(c: &crate::client::Client, service: &str, id: i64, quiet: bool) -> Result<Value, Failure> {
    use std::io::{IsTerminal, Write};
    let tty = std::io::stdout().is_terminal() && !quiet;
    let mut printed = 0;
    let started = std::time::Instant::now();
    loop {
        let doc = c.get(&format!("/v1/services/{service}/releases/{id}")).await?;
        let phases = doc["phases"].as_array().cloned().unwrap_or_default();
        if !quiet {
            if tty {
                print!("\r\x1b[2K");
            }
            while printed < phases.len() {
                let p = &phases[printed];
                if p["ended_at"].is_null() {
                    break;
                }
                let ms = p["elapsed_ms"].as_u64().unwrap_or(0);
                println!(
                    "  {:<18} {:>7.1} s  {}",
                    s(&p["phase"]),
                    ms as f64 / 1000.0,
                    s(&p["detail"])
                );
                printed += 1;
            }
            if tty && doc["outcome"].is_null() {
                print!("  {:<18} … {:.1} s", s(&doc["phase"]), started.elapsed().as_secs_f64());
                let gates: Vec<String> = doc["gates"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|g| format!("{}={}", s(&g["name"]), s(&g["result"])))
                    .collect();
                if !gates.is_empty() {
                    print!("  [{}]", gates.join(" "));
                }
                let _ = std::io::stdout().flush();
            }
        }
        if !doc["outcome"].is_null() {
            if !quiet {
                println!(
                    "release #{id} of {} {}: {}",
                    s(&doc["version"]),
                    s(&doc["outcome"]),
                    s(&doc["reason"])
                );
            }
            return Ok(doc);
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}
