//! `cutover-bench`: the load generator behind `bench/run.py`.
//!
//! - `rate`: open-loop HTTP/1.1 POSTs at a fixed rate over keep-alive connections. Latency is
//!   measured from when each request was *scheduled*, so a stalled server cannot hide its
//!   queueing (no coordinated omission). Prints p50/p99/p99.9 and failures as JSON.
//! - `stream`: N concurrent SSE streams; time to first byte, the largest gap between chunks,
//!   and whether each stream ended with `[DONE]`.
//! - `idle`: opens N keep-alive connections, makes one request on each, then holds them open.
//! - `fleet-sim`: N watchers that apply and ack switches like routers (the same sync code,
//!   no listeners) on a real etcd; switch → last ack p50/p99 and etcd calls per switch.

#![forbid(unsafe_code)]

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::{Parser, Subcommand};
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::net::TcpStream;

mod fleet_sim;

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand)]
enum Mode {
    Rate {
        /// host:port
        addr: String,
        #[arg(long, default_value = "/")]
        path: String,
        /// Requests per second in total.
        #[arg(long)]
        rps: u64,
        #[arg(long, default_value_t = 16)]
        connections: u64,
        #[arg(long, value_parser = humantime::parse_duration, default_value = "5s")]
        duration: Duration,
        #[arg(long, default_value = "{\"max_tokens\":4}")]
        body: String,
    },
    Stream {
        addr: String,
        #[arg(long, default_value = "/v1/chat/completions")]
        path: String,
        #[arg(long)]
        streams: u64,
        #[arg(long, default_value_t = 200)]
        tokens: u64,
    },
    Idle {
        addr: String,
        #[arg(long, default_value = "/")]
        path: String,
        #[arg(long)]
        connections: u64,
        /// How long to hold the connections after they are all open.
        #[arg(long, value_parser = humantime::parse_duration, default_value = "5s")]
        hold: Duration,
    },
    FleetSim {
        /// The etcd members' client addresses, `host:port,host:port,...`.
        #[arg(long, value_delimiter = ',')]
        members: Vec<String>,
        #[arg(long)]
        watchers: usize,
        #[arg(long, default_value_t = 100)]
        switches: u64,
        /// The fleet's name (keys under `/cutover/<fleet>/`); use a fresh one per run.
        #[arg(long, default_value = "sim")]
        fleet: String,
        /// Where the watchers' snapshots go (one folder each).
        #[arg(long)]
        dir: std::path::PathBuf,
        /// Idle time measured first: the keepalives' background rate of etcd calls.
        #[arg(long, value_parser = humantime::parse_duration, default_value = "3s")]
        idle: Duration,
    },
}

type Sender = http1::SendRequest<Full<Bytes>>;

async fn connect(addr: &str) -> std::io::Result<Sender> {
    let s = TcpStream::connect(addr).await?;
    let _ = s.set_nodelay(true);
    let (send, conn) = http1::handshake(TokioIo::new(s)).await.map_err(std::io::Error::other)?;
    tokio::spawn(conn);
    Ok(send)
}

fn post(addr: &str, path: &str, body: &str) -> Request<Full<Bytes>> {
    Request::post(path)
        .header("host", addr)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("valid request")
}

fn percentile(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1]
}

async fn rate(addr: String, path: String, rps: u64, conns: u64, duration: Duration, body: String) {
    let per_conn = Duration::from_secs_f64(conns as f64 / rps as f64);
    let lat = Arc::new(Mutex::new(Vec::<u64>::new()));
    let failed = Arc::new(AtomicU64::new(0));
    let start = Instant::now() + Duration::from_millis(100);
    let mut tasks = Vec::new();
    for i in 0..conns {
        let (addr, path, body, lat, failed) = (addr.clone(), path.clone(), body.clone(), lat.clone(), failed.clone());
        tasks.push(tokio::spawn(async move {
            let mut send = connect(&addr).await.ok();
            let mut local = Vec::new();
            // Stagger the connections evenly over one interval.
            let mut due = start + per_conn.mul_f64(i as f64 / conns as f64);
            while due < start + duration {
                tokio::time::sleep_until(due.into()).await;
                let ok = async {
                    if send.as_ref().is_none_or(|s| s.is_closed()) {
                        send = Some(connect(&addr).await.ok()?);
                    }
                    let s = send.as_mut()?;
                    s.ready().await.ok()?;
                    let resp = s.send_request(post(&addr, &path, &body)).await.ok()?;
                    let okay = resp.status().is_success();
                    resp.into_body().collect().await.ok()?;
                    okay.then_some(())
                }
                .await;
                match ok {
                    // From the scheduled time: queueing behind a slow answer counts.
                    Some(()) => local.push(due.elapsed().as_micros() as u64),
                    None => {
                        failed.fetch_add(1, Relaxed);
                        send = None;
                    }
                }
                due += per_conn;
            }
            lat.lock().unwrap().extend(local);
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let mut l = lat.lock().unwrap().clone();
    l.sort_unstable();
    println!(
        "{}",
        json!({"requests": l.len(), "failed": failed.load(Relaxed), "p50_us": percentile(&l, 0.5),
               "p99_us": percentile(&l, 0.99), "p999_us": percentile(&l, 0.999), "max_us": l.last().copied().unwrap_or(0)})
    );
}

async fn stream(addr: String, path: String, streams: u64, tokens: u64) {
    let results = Arc::new(Mutex::new(Vec::<(u64, u64, bool)>::new()));
    let mut tasks = Vec::new();
    for _ in 0..streams {
        let (addr, path, results) = (addr.clone(), path.clone(), results.clone());
        tasks.push(tokio::spawn(async move {
            let r = async {
                let mut s = connect(&addr).await.ok()?;
                let started = Instant::now();
                let body = format!("{{\"stream\":true,\"max_tokens\":{tokens}}}");
                let resp = s.send_request(post(&addr, &path, &body)).await.ok()?;
                let mut body = resp.into_body();
                let mut ttfb = None;
                let mut last = Instant::now();
                let mut max_gap = 0u64;
                let mut tail = Vec::new();
                while let Some(f) = body.frame().await {
                    let f = f.ok()?;
                    if let Some(d) = f.data_ref() {
                        let now = Instant::now();
                        if ttfb.is_none() {
                            ttfb = Some(started.elapsed().as_micros() as u64);
                        } else {
                            max_gap = max_gap.max(now.duration_since(last).as_micros() as u64);
                        }
                        last = now;
                        tail.extend_from_slice(d);
                        if tail.len() > 64 {
                            tail.drain(..tail.len() - 64);
                        }
                    }
                }
                let intact = tail.ends_with(b"data: [DONE]\n\n");
                Some((ttfb?, max_gap, intact))
            }
            .await;
            results.lock().unwrap().push(r.unwrap_or((0, 0, false)));
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let r = results.lock().unwrap().clone();
    let mut ttfb: Vec<u64> = r.iter().map(|x| x.0).collect();
    let mut gaps: Vec<u64> = r.iter().map(|x| x.1).collect();
    ttfb.sort_unstable();
    gaps.sort_unstable();
    let broken = r.iter().filter(|x| !x.2).count();
    println!(
        "{}",
        json!({"streams": r.len(), "broken": broken, "ttfb_p50_us": percentile(&ttfb, 0.5), "ttfb_p99_us": percentile(&ttfb, 0.99),
               "max_gap_p50_us": percentile(&gaps, 0.5), "max_gap_p99_us": percentile(&gaps, 0.99)})
    );
}

async fn idle(addr: String, path: String, n: u64, hold: Duration) {
    let mut held = Vec::new();
    let mut failed = 0;
    for _ in 0..n {
        match async {
            let mut s = connect(&addr).await.ok()?;
            let resp = s
                .send_request(
                    Request::get(path.as_str())
                        .header("host", addr.as_str())
                        .body(Full::new(Bytes::new()))
                        .ok()?,
                )
                .await
                .ok()?;
            resp.into_body().collect().await.ok()?;
            Some(s)
        }
        .await
        {
            Some(s) => held.push(s),
            None => failed += 1,
        }
    }
    println!("{}", json!({"open": held.len(), "failed": failed}));
    tokio::time::sleep(hold).await;
    drop(held);
}

fn main() {
    let cli = Cli::parse();
    if let Mode::FleetSim {
        members,
        watchers,
        switches,
        fleet,
        dir,
        idle,
    } = cli.mode
    {
        // What the simulated routers log (their fleet warnings), to standard error.
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
            .with_writer(std::io::stderr)
            .init();
        // Many watchers' syncs, health checks and SQLite writes: both cores, like routers.
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let o = fleet_sim::Opts {
            members,
            watchers: watchers.max(1),
            switches,
            fleet,
            dir,
            idle,
        };
        if let Err(e) = rt.block_on(fleet_sim::run(o)) {
            eprintln!("fleet-sim: {e:#}");
            std::process::exit(1);
        }
        return;
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        match cli.mode {
            Mode::Rate {
                addr,
                path,
                rps,
                connections,
                duration,
                body,
            } => rate(addr, path, rps, connections, duration, body).await,
            Mode::Stream {
                addr,
                path,
                streams,
                tokens,
            } => stream(addr, path, streams, tokens).await,
            Mode::Idle {
                addr,
                path,
                connections,
                hold,
            } => idle(addr, path, connections, hold).await,
            Mode::FleetSim { .. } => unreachable!("run above"),
        }
    });
}
