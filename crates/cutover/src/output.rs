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
    let mut out = format!(
        "{}  live: {}  generation {}  listen {}\n",
        s(&v["name"]),
        v["live"].as_str().unwrap_or("none"),
        v["generation"],
        s(&v["listen"])
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
        out.push_str(&format!(
            "  {}  gen {:<4} {:<18} {} → {}  {}  by {}: {}\n",
            s(&e["at"]),
            e["generation"],
            s(&e["kind"]),
            e["from"].as_str().unwrap_or("none"),
            s(&e["to"]),
            s(&e["version"]),
            s(&e["actor"]),
            s(&e["reason"])
        ));
    }
    out.trim_end().to_string()
}
