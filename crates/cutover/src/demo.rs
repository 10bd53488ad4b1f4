//! `cutover demo`: the whole story on this machine with no set-up. A router in a temporary
//! folder with managed `mock-model` environments takes steady mixed traffic while v1, then v2
//! are released, then a faulty v3 that the shadow comparison catches before any user sees it.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client as HyperClient};
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

use crate::cli::{Progress, Remote};
use crate::client::{Client, Failure};
use crate::{follow, output};

fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// What the traffic saw, per version.
#[derive(Default)]
struct Tally {
    ok: BTreeMap<String, u64>,
    failed: BTreeMap<String, u64>,
    streams: u64,
    first_failures: Vec<String>,
}

impl Tally {
    fn fail(&mut self, version: &str, what: String) {
        *self.failed.entry(version.to_string()).or_insert(0) += 1;
        // Two different examples: the same failure twice says nothing more.
        if self.first_failures.len() < 2 && !self.first_failures.contains(&what) {
            self.first_failures.push(what);
        }
    }
}

async fn one_request(
    c: &HyperClient<HttpConnector, Full<Bytes>>,
    url: &str,
    stream: bool,
    prompt: u64,
    tally: &Mutex<Tally>,
) {
    // Deterministic requests (temperature 0) on a few dozen prompts: what the shadow
    // comparison reads best, answer against answer.
    let body = serde_json::json!({
        "model": "chat",
        "messages": [{"role": "user", "content": format!("question {}", prompt % 40)}],
        "temperature": 0,
        "stream": stream,
        "max_tokens": if stream { 20 } else { 4 },
    });
    let req = Request::post(url)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("static request");
    let resp = match c.request(req).await {
        Ok(r) => r,
        Err(e) => {
            tally
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .fail("-", format!("request failed: {e}"));
            return;
        }
    };
    let status = resp.status();
    let version = resp
        .headers()
        .get("x-cutover-version")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
        .to_string();
    let body = resp.into_body().collect().await.map(|b| b.to_bytes());
    let mut t = tally.lock().unwrap_or_else(|p| p.into_inner());
    match body {
        Ok(b) if status == 200 => {
            let text = String::from_utf8_lossy(&b);
            // A stream must end with [DONE] and every chunk must come from one version.
            let intact = !stream || (text.ends_with("data: [DONE]\n\n") && !text.contains("event: error"));
            let mixed = text
                .match_indices("\"model\":\"")
                .any(|(i, _)| !text[i + 9..].starts_with(&format!("{version}\"")));
            if intact && !mixed {
                *t.ok.entry(version).or_insert(0) += 1;
                if stream {
                    t.streams += 1;
                }
            } else {
                t.fail(&version, format!("stream from {version} cut short or mixed"));
            }
        }
        Ok(b) => {
            let why = String::from_utf8_lossy(&b).chars().take(120).collect::<String>();
            t.fail(&version, format!("HTTP {status} from {version}: {why}"));
        }
        Err(e) => t.fail(&version, format!("body from {version} failed: {e}")),
    }
}

fn start_traffic(url: String, stop: Arc<AtomicBool>, tally: Arc<Mutex<Tally>>) -> Vec<tokio::task::JoinHandle<()>> {
    let c: HyperClient<HttpConnector, Full<Bytes>> =
        HyperClient::builder(TokioExecutor::new()).build(HttpConnector::new());
    (0..6)
        .map(|w| {
            let (c, url, stop, tally) = (c.clone(), url.clone(), stop.clone(), tally.clone());
            tokio::spawn(async move {
                let mut n = w as u64;
                while !stop.load(Relaxed) {
                    n += 7;
                    one_request(&c, &url, w < 2, n, &tally).await;
                    tokio::time::sleep(Duration::from_millis(15)).await;
                }
            })
        })
        .collect()
}

/// The demo's config: cutover's own listeners on port 0 (the kernel picks, `serve` reports),
/// the managed model servers on the given ports (cutover must know where they listen).
fn config_text(exe: &str, blue: u16, green: u16, canary: bool) -> String {
    let text = format!(
        r#"# Written by `cutover demo`.
[admin]
listen = "127.0.0.1:0"

[store]
path = "cutover.db"

[services.chat]
listen = "127.0.0.1:0"
health = {{ path = "/health", interval = "200ms", timeout = "1s" }}

[services.chat.run]
# v3 plays a faulty build: 30% of its answers are HTTP 500.
command = [{exe:?}, "mock-model", "--port", "{{port}}", "--model-version", "{{version}}", "--token-interval", "10ms", "--error-rate-for", "v3=0.3"]
ports = {{ blue = [{blue}], green = [{green}] }}
stop_timeout = "5s"

[services.chat.release]
health_timeout = "30s"
scale_down_delay = "5m"
drain_timeout = "30s"
# The demo lets up to 4 failed warm-up requests through, so v3 reaches the shadow
# comparison and the story can show it caught there; the default (0) would stop it here.
warmup = {{ requests = 10, concurrency = 2, max_failures = 4, request = {{ method = "POST", path = "/v1/chat/completions", body = '{{"max_tokens":4}}' }} }}

[[services.chat.release.smoke]]
name = "chat answers"
request = {{ method = "POST", path = "/v1/chat/completions", body = '{{"max_tokens":1}}' }}
expect = {{ status = 200, json = {{ "/object" = "chat.completion" }}, max_latency = "2s" }}

# Before any user sees a new version, a quarter of live requests are mirrored to it and
# its answers compared with the live ones (half of them also sent to live a second time:
# the noise baseline).
[services.chat.release.shadow]
sample = 0.25
duration = "30s"
min_pairs = 40
baseline = 0.5

[services.chat.release.verify]
bake = "8s"
max_error_rate = 0.02
max_p99_latency = "2s"
min_requests = 30
"#
    );
    if canary {
        canary_config(&text)
    } else {
        text
    }
}

/// `--canary`: the same service without the shadow comparison, releasing through a 10%
/// canary step judged by the same gates.
fn canary_config(text: &str) -> String {
    let start = text.find("# Before any user sees").unwrap_or(text.len());
    let end = text.find("[services.chat.release.verify]").unwrap_or(text.len());
    let text = format!("{}{}", &text[..start], &text[end..]);
    text.replace(
        "[services.chat.release]\n",
        "[services.chat.release]\n# A new version first gets 10% of the live traffic for 8 s, judged by the verify\n# gates on its own share; then all of it.\ntraffic = { canary = { percent = 10, bake = \"8s\" } }\n",
    )
    .replace("min_requests = 30", "min_requests = 15")
}

async fn release(c: &Client, version: &str) -> Result<Value, Failure> {
    let v = c
        .post("/v1/services/chat/releases", &serde_json::json!({ "version": version }))
        .await?;
    let id = v["id"].as_i64().unwrap_or(0);
    output::line(&format!(
        "\n▶ release #{id}: {version} into {}",
        v["color"].as_str().unwrap_or("?")
    ))?;
    let remote = Remote::default();
    follow::release(
        c,
        &remote,
        "chat",
        id,
        Progress {
            heartbeat: Duration::from_secs(15),
            timeout: None,
        },
    )
    .await
}

pub async fn run(canary: bool) -> Result<(), Failure> {
    let started = Instant::now();
    let dir = std::env::temp_dir().join(format!("cutover-demo-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| Failure::new(1, format!("cannot create {}: {e}", dir.display())))?;
    let exe = std::env::current_exe().map_err(|e| Failure::new(1, format!("cannot find my own binary: {e}")))?;
    let ports = (|| Ok::<_, std::io::Error>((free_port()?, free_port()?)))()
        .map_err(|e| Failure::new(1, format!("no free port: {e}")))?;
    let (blue, green) = ports;
    let cfg_path = dir.join("cutover.toml");
    std::fs::write(&cfg_path, config_text(&exe.to_string_lossy(), blue, green, canary))
        .map_err(|e| Failure::new(1, e.to_string()))?;
    let config = cutover_config::load(&cfg_path).map_err(|e| Failure::new(2, e.to_string()))?;
    let store_path = config.store.path.clone();
    let listeners = cutover_control::serve::Listeners::bind(&config)
        .await
        .map_err(|e| Failure::new(1, format!("{e:#}")))?;
    let bound = listeners
        .addresses(&config)
        .map_err(|e| Failure::new(1, format!("cannot read the bound addresses: {e}")))?;
    let (admin, listen) = (bound.admin.port(), bound.services["chat"].listen.port());
    intro(&dir, listen, admin, (blue, green))?;

    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(cutover_control::serve::run(
        config,
        listeners,
        cutover_control::serve::ServeOptions {
            grace: Duration::from_secs(5),
            addresses_file: None,
            upgrade: false,
        },
        async move {
            let _ = stop_rx.await;
        },
    ));
    let remote = Remote {
        admin: Some(format!("http://127.0.0.1:{admin}")),
        token: None,
        token_file: Some(dir.join("admin.token")),
        config: None,
        cacert: None,
        json: false,
    };
    let story = async {
        let c = router_up(&dir, &remote).await?;
        if canary {
            canary_story(&c, listen, started).await
        } else {
            story(&c, listen, started).await
        }
    };
    let result = tokio::select! {
        r = story => r,
        _ = tokio::signal::ctrl_c() => Err(Failure::new(1, "interrupted")),
    };
    let _ = stop_tx.send(());
    let _ = server.await;
    clean_up(&store_path, &dir).await;
    result
}

/// Says where everything runs.
fn intro(dir: &std::path::Path, listen: u16, admin: u16, (blue, green): (u16, u16)) -> Result<(), Failure> {
    output::line(&format!(
        "cutover demo — everything runs on this machine, in {}",
        dir.display()
    ))?;
    output::line(&format!(
        "  router: 127.0.0.1:{listen} (service `chat`), admin API: 127.0.0.1:{admin}"
    ))?;
    output::line(&format!(
        "  model servers: managed `mock-model` processes, blue on :{blue}, green on :{green}"
    ))?;
    output::line("  traffic: 4 clients of plain chat completions + 2 of 20-token streams, all the time")
}

/// A client once the router answers its admin API (it writes its token first), for 5 s at most.
async fn router_up(dir: &std::path::Path, remote: &Remote) -> Result<Client, Failure> {
    for _ in 0..100 {
        if std::fs::metadata(dir.join("admin.token")).is_ok() {
            if let Ok(c) = Client::new(remote) {
                if c.get("/v1/services").await.is_ok() {
                    return Ok(c);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(Failure::new(1, "the router did not come up"))
}

/// Stops the managed model servers (they outlive cutover on purpose, the demo cleans up
/// after itself) and removes the demo's folder.
async fn clean_up(store_path: &std::path::Path, dir: &std::path::Path) {
    if let Ok(store) = cutover_store::Store::open(store_path) {
        if let Ok(procs) = store.processes("chat") {
            cutover_control::procs::supervisor::stop(&procs, Duration::from_secs(5)).await;
        }
    }
    let _ = std::fs::remove_dir_all(dir);
}

async fn story(c: &Client, listen: u16, started: Instant) -> Result<(), Failure> {
    let v1 = release(c, "v1").await?;
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Mutex::new(Tally::default()));
    let traffic = start_traffic(
        format!("http://127.0.0.1:{listen}/v1/chat/completions"),
        stop.clone(),
        tally.clone(),
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before_v2 = snapshot(&tally);
    let v2 = release(c, "v2").await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after_v2 = snapshot(&tally);
    let v3 = release(c, "v3").await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Relaxed);
    for t in traffic {
        let _ = t.await;
    }
    let status = c.get("/v1/services/chat").await?;
    output::line(&format!("\n{}", output::status(&status)))?;

    let t = tally.lock().unwrap_or_else(|p| p.into_inner());
    output::line(&format!("\nSummary ({:.0} s)", started.elapsed().as_secs_f64()))?;
    served_table(&t)?;
    releases_table(&v1, &v2, &v3)?;
    let v2_window_failures = after_v2.1.saturating_sub(before_v2.1);
    output::line(&format!(
        "  failed requests across the v1 → v2 release: {v2_window_failures}"
    ))?;
    output::line(&format!("  v2 shadow comparison: {}", shadow_line(&v2)))?;
    output::line(&format!("  v3 shadow comparison: {}", shadow_line(&v3)))?;
    if let Some(r) = v3["reason"].as_str() {
        output::line(&format!("  v3 was stopped before the switch because: {r}"))?;
    }
    for f in &t.first_failures {
        output::line(&format!("    e.g. {f}"))?;
    }
    let v3_served = t.ok.get("v3").copied().unwrap_or(0) + t.failed.get("v3").copied().unwrap_or(0);
    let ok = v1["outcome"] == "completed"
        && v2["outcome"] == "completed"
        && v3["outcome"] == "aborted"
        && v3["shadow"]["result"] == "failing"
        && v3_served == 0
        && v2_window_failures == 0;
    if ok {
        output::line("\n✔ v2 shipped with zero failed requests; the faulty v3 was caught by the shadow comparison before any user saw it.")?;
        Ok(())
    } else {
        Err(Failure::new(1, "the demo did not go as expected (see above)"))
    }
}

/// `--canary`: v1, then v2 and the faulty v3 through a 10% canary step each; v3 is caught
/// at its step, while it has only its share of the traffic, and all of it goes back to v2.
async fn canary_story(c: &Client, listen: u16, started: Instant) -> Result<(), Failure> {
    let v1 = release(c, "v1").await?;
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Mutex::new(Tally::default()));
    let url = format!("http://127.0.0.1:{listen}/v1/chat/completions");
    let traffic = start_traffic(url, stop.clone(), tally.clone());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let v2 = release(c, "v2").await?;
    let before_v3 = snapshot(&tally);
    let v3 = release(c, "v3").await?;
    let after_v3 = snapshot(&tally);
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Relaxed);
    for t in traffic {
        let _ = t.await;
    }
    let status = c.get("/v1/services/chat").await?;
    output::line(&format!("\n{}", output::status(&status)))?;
    let t = tally.lock().unwrap_or_else(|p| p.into_inner());
    output::line(&format!("\nSummary ({:.0} s)", started.elapsed().as_secs_f64()))?;
    for v in ["v1", "v2", "v3"] {
        let (ok, failed) = (t.ok.get(v).unwrap_or(&0), t.failed.get(v).unwrap_or(&0));
        output::line(&format!("  {v:<8} served {ok:>8}  failed {failed:>6}"))?;
    }
    let step = &v3["steps"][0];
    let window = (after_v3.0 + after_v3.1).saturating_sub(before_v3.0 + before_v3.1);
    let v3_served = t.ok.get("v3").copied().unwrap_or(0) + t.failed.get("v3").copied().unwrap_or(0);
    output::line(&format!(
        "  v3 canary step: {}% of the traffic, {}: {}",
        step["weight"],
        step["result"].as_str().unwrap_or("?"),
        step["detail"].as_str().unwrap_or("-")
    ))?;
    output::line(&format!(
        "  during v3's release {v3_served} of {window} requests reached v3; every other went to v2"
    ))?;
    // v3 had its share only: well under half of the requests while it was released.
    let ok = v1["outcome"] == "completed"
        && v2["outcome"] == "completed"
        && v3["outcome"] == "rolled_back"
        && step["result"] == "failed"
        && v3_served * 4 < window.max(1)
        && status["colors"]["green"]["weight"].as_u64().unwrap_or(0)
            + status["colors"]["blue"]["weight"].as_u64().unwrap_or(0)
            == 100;
    if ok {
        output::line("\n✔ v2 shipped through its canary; the faulty v3 was caught at its 10% step and all traffic went back to v2 at once.")?;
        Ok(())
    } else {
        Err(Failure::new(1, "the demo did not go as expected (see above)"))
    }
}

/// Requests served and failed per version, and the streams that completed intact.
fn served_table(t: &Tally) -> Result<(), Failure> {
    output::line(&format!("  {:<8} {:>10} {:>8}", "version", "served", "failed"))?;
    let mut versions: Vec<&String> = t.ok.keys().chain(t.failed.keys()).collect();
    versions.sort();
    versions.dedup();
    for v in versions {
        output::line(&format!(
            "  {:<8} {:>10} {:>8}",
            v,
            t.ok.get(v).unwrap_or(&0),
            t.failed.get(v).unwrap_or(&0)
        ))?;
    }
    output::line(&format!("  streams completed intact: {}", t.streams))
}

/// The three releases' outcomes, with the switch time of the two that went live.
fn releases_table(v1: &Value, v2: &Value, v3: &Value) -> Result<(), Failure> {
    let ms = |d: &Value, k: &str| {
        d[k].as_f64()
            .map(|x| format!("{x:.1} ms"))
            .unwrap_or_else(|| "-".into())
    };
    output::line(&format!("  {:<28} {:>12} {:>14}", "release", "outcome", "time"))?;
    output::line(&format!(
        "  {:<28} {:>12} {:>14}",
        "v1 (first, straight to live)",
        v1["outcome"].as_str().unwrap_or("?"),
        format!("switch {}", ms(v1, "switch_ms"))
    ))?;
    output::line(&format!(
        "  {:<28} {:>12} {:>14}",
        "v2 (verified)",
        v2["outcome"].as_str().unwrap_or("?"),
        format!("switch {}", ms(v2, "switch_ms"))
    ))?;
    output::line(&format!(
        "  {:<28} {:>12} {:>14}",
        "v3 (30% errors)",
        v3["outcome"].as_str().unwrap_or("?"),
        "never live"
    ))
}

/// (successes, failures) so far.
fn snapshot(t: &Mutex<Tally>) -> (u64, u64) {
    let t = t.lock().unwrap_or_else(|p| p.into_inner());
    (t.ok.values().sum(), t.failed.values().sum())
}

/// A release's shadow reading in one line: verdict, pairs, baseline pairs.
fn shadow_line(d: &Value) -> String {
    let s = &d["shadow"];
    match s["result"].as_str() {
        Some(r) => format!(
            "{r}, {} pairs compared ({} noise-baseline pairs)",
            s["pairs"].as_u64().unwrap_or(0),
            s["baseline_pairs"].as_u64().unwrap_or(0)
        ),
        None => "did not run".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue #25: the demo ended with two identical `e.g.` lines.
    #[test]
    fn the_examples_of_failures_are_two_different_ones() {
        let mut t = Tally::default();
        for what in ["v3: HTTP 500", "v3: HTTP 500", "v3: stream cut", "v3: other"] {
            t.fail("v3", what.to_string());
        }
        assert_eq!(t.first_failures, ["v3: HTTP 500", "v3: stream cut"]);
        assert_eq!(t.failed["v3"], 4);
    }
}
