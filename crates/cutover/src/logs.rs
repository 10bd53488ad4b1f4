//! `cutover logs SERVICE [COLOR] [-f]`: the current log of each replica of a managed color,
//! read through `GET /v1/services/{svc}/logs`; following polls from the offset each answer
//! gives, and starts a replica's new file from its beginning after a process restart.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;

use crate::client::{Client, Failure};
use crate::output;

/// How often `-f` asks for more.
const POLL: Duration = Duration::from_millis(500);

/// What to show.
pub struct LogsArgs<'a> {
    pub service: &'a str,
    pub color: Option<&'a str>,
    pub follow: bool,
    pub tail: usize,
    pub replica: Option<u32>,
    pub json: bool,
}

/// Where each replica's log was read up to: (color, replica) → (file, next offset).
type Cursors = BTreeMap<(String, u64), (String, u64)>;

pub async fn run(c: &Client, a: &LogsArgs<'_>) -> Result<(), Failure> {
    let mut query = format!("/v1/services/{}/logs?tail={}", a.service, a.tail);
    if let Some(col) = a.color {
        query.push_str(&format!("&color={col}"));
    }
    if let Some(r) = a.replica {
        query.push_str(&format!("&replica={r}"));
    }
    // A service with static endpoints has no logs here: a usage error (exit 2), not a failure.
    let v = c.get(&query).await.map_err(|mut f| {
        if f.code.as_deref() == Some("not_managed") {
            f.exit = 2;
        }
        f
    })?;
    if a.json && !a.follow {
        return output::line(&serde_json::to_string_pretty(&v).unwrap_or_default());
    }
    let chunks = v["logs"].as_array().cloned().unwrap_or_default();
    // A prefix only when lines of several logs could mix.
    let prefix = chunks.len() > 1;
    let mut cursors = Cursors::new();
    for ch in &chunks {
        if ch["file"].is_null() {
            eprintln_quiet(&format!("[{}] no log yet: never started", label(ch)));
        }
        show(ch, prefix, a.json, a.follow)?;
        remember(&mut cursors, ch, a.follow);
    }
    if !a.follow {
        return Ok(());
    }
    loop {
        tokio::time::sleep(POLL).await;
        for ((color, replica), (file, offset)) in cursors.clone() {
            let q = format!(
                "/v1/services/{}/logs?color={color}&replica={replica}&offset={offset}&file={file}",
                a.service
            );
            let v = c.get(&q).await?;
            for ch in v["logs"].as_array().into_iter().flatten() {
                if ch["rotated"] == true {
                    eprintln_quiet(&format!(
                        "[{}] --- now {} ---",
                        label(ch),
                        ch["file"].as_str().unwrap_or("?")
                    ));
                }
                show(ch, prefix, a.json, true)?;
                remember(&mut cursors, ch, true);
            }
        }
    }
}

fn label(ch: &Value) -> String {
    format!("{}/{}", ch["color"].as_str().unwrap_or("?"), ch["replica"])
}

/// A chunk's whole lines and the offset after them. While following, a line still being
/// written waits for its end (unless it is already very long), so it prints once, whole.
fn whole_lines(ch: &Value, follow: bool) -> (&str, u64) {
    let text = ch["text"].as_str().unwrap_or("");
    let end = ch["next_offset"].as_u64().unwrap_or(0);
    if !follow || text.ends_with('\n') || text.len() >= 64 * 1024 {
        return (text, end);
    }
    let cut = text.rfind('\n').map(|i| i + 1).unwrap_or(0);
    let start = ch["offset"].as_u64().unwrap_or(0);
    (&text[..cut], start + cut as u64)
}

fn remember(cursors: &mut Cursors, ch: &Value, follow: bool) {
    let key = (
        ch["color"].as_str().unwrap_or("").to_string(),
        ch["replica"].as_u64().unwrap_or(0),
    );
    let file = ch["file"].as_str().unwrap_or("").to_string();
    cursors.insert(key, (file, whole_lines(ch, follow).1));
}

/// Prints a chunk's lines (prefixed with `[color/replica]` when several logs are shown), or
/// the chunk itself as one JSON line (`--json -f`).
fn show(ch: &Value, prefix: bool, json: bool, follow: bool) -> Result<(), Failure> {
    let (text, _) = whole_lines(ch, follow);
    if text.is_empty() {
        return Ok(());
    }
    if json {
        return output::line(&ch.to_string());
    }
    let body = text.strip_suffix('\n').unwrap_or(text);
    for l in body.split('\n') {
        if prefix {
            output::line(&format!("[{}] {l}", label(ch)))?;
        } else {
            output::line(l)?;
        }
    }
    Ok(())
}

/// A note on stderr; a closed stderr is no reason to stop.
fn eprintln_quiet(text: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{text}");
}
