//! `fleet-sim`: N lightweight watchers that apply and ack switches like routers, on a real
//! etcd. Each one is a real `cutover_control` controller (its own SQLite snapshot, its own
//! etcd client, watch and lease) joined to the fleet by `cutover_control::fleet::start`, the
//! code `serve` runs, without listeners: what one router costs etcd, without the processes
//! two cores cannot hold. Switches go through watcher 0's controller and wait for every
//! watcher's ack (`FleetLink::await_acks`, as the admin API's answer does).
//!
//! etcd requests are read from the members' own `/metrics` (`grpc_server_started_total`,
//! which the JSON gateway's calls go through too), before and after; the lease keepalives'
//! background rate is measured over an idle period first and taken out of the per-switch
//! count.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cutover_control::fleet::FleetLink;
use cutover_control::service::switch::SwitchRequest;
use cutover_control::Controller;
use cutover_proxy::Color;
use http_body_util::{BodyExt, Full};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::percentile;

pub struct Opts {
    pub members: Vec<String>,
    pub watchers: usize,
    pub switches: u64,
    pub fleet: String,
    pub dir: PathBuf,
    pub idle: Duration,
}

/// Answers every request with 200: the endpoints the watchers' health checks probe.
async fn health_server() -> std::io::Result<u16> {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = l.local_addr()?.port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                    if s.write_all(ok).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    Ok(port)
}

fn config_text(port: u16) -> String {
    format!(
        "[store]\npath = \"cutover.db\"\n\n[services.chat]\nlisten = \"127.0.0.1:0\"\n\
         allow_shared_endpoints = true\n\
         health = {{ path = \"/health\", interval = \"10s\", timeout = \"1s\" }}\n\n\
         [services.chat.blue]\nendpoints = [\"127.0.0.1:{port}\"]\nversion = \"v1\"\n\n\
         [services.chat.green]\nendpoints = [\"127.0.0.1:{port}\"]\nversion = \"v2\"\n"
    )
}

/// Summed over every member: `grpc_server_started_total` (calls etcd began serving) and
/// `etcd_debugging_mvcc_events_total` (events sent to watchers: the fan-out).
async fn etcd_calls(members: &[String]) -> anyhow::Result<(f64, f64)> {
    let client =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http::<Full<Bytes>>();
    let (mut total, mut events) = (0.0, 0.0);
    let value = |line: &str| {
        line.rsplit(' ')
            .next()
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    for m in members {
        let resp = client.get(format!("http://{m}/metrics").parse()?).await?;
        let body = resp.into_body().collect().await?.to_bytes();
        for line in String::from_utf8_lossy(&body).lines() {
            if line.starts_with("grpc_server_started_total{") {
                total += value(line);
            } else if line.starts_with("etcd_debugging_mvcc_events_total ") {
                events += value(line);
            }
        }
    }
    Ok((total, events))
}

struct Watcher {
    ctl: Arc<Controller>,
    link: Arc<FleetLink>,
    _tasks: cutover_control::fleet::FleetTasks,
}

async fn watcher(o: &Opts, i: usize, port: u16) -> anyhow::Result<Watcher> {
    let dir = o.dir.join(format!("w{i}"));
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("cutover.toml");
    let config = cutover_config::parse(&path, &config_text(port)).map_err(|e| anyhow::anyhow!("{e}"))?;
    let store = cutover_store::Store::open(&dir.join("cutover.db"))?;
    let ctl = Arc::new(Controller::build(config, store)?);
    let link = Arc::new(FleetLink::new(
        // Spread over the members as `serve` does (a hash of the router id).
        cutover_fleet::Etcd::new(o.members.clone()).spread_by(&format!("sim-{i}")),
        &o.fleet,
        format!("sim-{i}"),
        format!("sim://{i}"),
        Duration::from_secs(10),
    ));
    ctl.attach_fleet(link.clone());
    let tasks = cutover_control::fleet::start(ctl.clone(), link.clone(), Duration::from_secs(10)).await;
    Ok(Watcher {
        ctl,
        link,
        _tasks: tasks,
    })
}

/// Waits until watcher 0 reads every watcher's ack of the generation it serves.
async fn all_synced(lead: &Watcher, n: usize) -> anyhow::Result<()> {
    let start = Instant::now();
    loop {
        let g = lead.ctl.service("chat")?.proxy.table().generation;
        lead.link.refresh_routers().await;
        let r = lead.link.report("chat", g);
        if r.synced == n {
            return Ok(());
        }
        anyhow::ensure!(
            start.elapsed() < Duration::from_secs(120),
            "only {}/{n} watchers synced after 120 s",
            r.synced
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// etcd calls and watch events per second while nothing happens.
async fn idle_rates(o: &Opts) -> anyhow::Result<(f64, f64)> {
    let (calls0, events0) = etcd_calls(&o.members).await?;
    tokio::time::sleep(o.idle).await;
    let (calls1, events1) = etcd_calls(&o.members).await?;
    let secs = o.idle.as_secs_f64();
    Ok(((calls1 - calls0) / secs, (events1 - events0) / secs))
}

/// `switches` switches through watcher 0, each waiting for every ack as the admin API's
/// answer does: the latencies (µs) and how many answers counted fewer than `n` synced.
async fn switch_loop(ws: &[Watcher], switches: u64, n: usize) -> anyhow::Result<(Vec<u64>, u64)> {
    let lead = &ws[0];
    let mut lat = Vec::new();
    let mut short = 0u64;
    for k in 0..switches {
        let to = if k % 2 == 0 { Color::Green } else { Color::Blue };
        let t0 = tokio::time::Instant::now();
        let req = SwitchRequest {
            to: Some(to),
            if_generation: None,
            force: true,
            kind: cutover_store::SwitchKind::Switched,
            actor: "fleet-sim".into(),
            reason: format!("switch {k}"),
            release_id: None,
        };
        let out = lead
            .ctl
            .switch("chat", req)
            .await
            .map_err(|e| anyhow::anyhow!("switch {k}: {e}"))?;
        let r = lead.link.await_acks("chat", out.generation, t0).await;
        lat.push(t0.elapsed().as_micros() as u64);
        if r.synced != n {
            if short == 0 {
                behind(ws, out.generation);
            }
            short += 1;
        }
    }
    Ok((lat, short))
}

/// The first switch some watcher did not ack in time: what each one that is behind serves,
/// and what its link has seen, to standard error (a simulated router has no admin API).
fn behind(ws: &[Watcher], generation: u64) {
    for (i, w) in ws.iter().enumerate() {
        let Ok(svc) = w.ctl.service("chat") else { continue };
        let serving = svc.proxy.table().generation;
        if serving < generation {
            eprintln!(
                "fleet-sim: watcher {i} serves generation {serving} of {generation}: revision {}, connected {:?}, applied {:?}",
                w.link.revision(),
                w.link.connected(),
                w.link.applied("chat"),
            );
        }
    }
}

pub async fn run(o: Opts) -> anyhow::Result<()> {
    let port = health_server().await?;
    let mut ws = Vec::new();
    for i in 0..o.watchers {
        ws.push(watcher(&o, i, port).await?);
    }
    let lead = &ws[0];
    // Everyone acked the state read at start before anything is measured.
    all_synced(lead, o.watchers).await?;
    let (idle_rate, idle_events) = idle_rates(&o).await?;
    let (before, events_before) = etcd_calls(&o.members).await?;
    let began = Instant::now();
    let (mut lat, short) = switch_loop(&ws, o.switches, o.watchers).await?;
    let spent = began.elapsed().as_secs_f64();
    let (after, events_after) = etcd_calls(&o.members).await?;
    let per_switch = (after - before - idle_rate * spent) / o.switches as f64;
    let events = (events_after - events_before - idle_events * spent) / o.switches as f64;
    lat.sort_unstable();
    let round = |x: f64| (x * 10.0).round() / 10.0;
    println!(
        "{}",
        json!({"watchers": o.watchers, "switches": o.switches, "not_all_acked": short,
               "p50_us": percentile(&lat, 0.5), "p99_us": percentile(&lat, 0.99), "max_us": lat.last().copied().unwrap_or(0),
               "etcd_calls_per_switch": round(per_switch),
               "watch_events_per_switch": events.round(),
               "idle_etcd_calls_per_s": round(idle_rate),
               "idle_calls_per_router_per_min": round(idle_rate * 60.0 / o.watchers as f64)})
    );
    Ok(())
}
