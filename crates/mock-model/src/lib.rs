//! A stand-in OpenAI-compatible model server for the demo, the tests and the benchmarks.
//!
//! It answers `/health`, `/v1/models`, `/v1/chat/completions` and `/v1/completions` (plain and
//! `"stream": true` server-sent events) and `/v1/embeddings`, puts its version in every
//! response (`model` field and `x-model-version` header), and injects faults on request: an
//! error rate, extra latency, a slow token rate, failing health, a crash after N requests, a
//! wedged engine behind a healthy `/health`, and health routes that queue behind running
//! requests.
//!
//! Answers depend on the prompt (see `reply`), so two servers of one model agree, and knobs
//! make a version differ in controlled ways for the shadow comparison: output noise, a
//! systematic perturbation, refusals, invalid JSON, a time-to-first-token shift, the
//! embedding dimension and jitter. Like vLLM it serves Prometheus metrics at `/metrics`
//! (`metrics`) and sleep mode: `POST /sleep?level=1`, `POST /wake_up`, `GET /is_sleeping`.
//!
//! Test hooks (not part of any real model server): `GET /mock/stats` counts what happened
//! (`shadow_requests`: those marked `x-cutover-shadow: 1`),
//! `POST /mock/health?fail=true|false` flips health at run time, `POST /mock/wedge?on=true|false`
//! wedges the engine at run time (see `--wedged`), `POST /mock/exit?code=N` makes the process
//! exit with that code (after answering), `POST /mock/metric?NAME=VALUE` pushes a metric, and
//! a request header `x-mock-delay` adds latency (e.g. `2s`) to that request only. `/mock/echo`
//! answers with the request's method, URI, HTTP version and headers, to check what a proxy
//! forwarded.
//!
//! # Layout
//! - `lib.rs`: flags, the listener and the routes;
//! - `reply`: the answers' text, JSON and vectors, and the knobs that change them;
//! - `stream`: the SSE body of a streamed answer;
//! - `metrics`: the vLLM-like `/metrics` and the values pushed into it.

#![forbid(unsafe_code)]

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use clap::Parser;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{json, Value};
use tokio::net::TcpListener;

pub mod metrics;
pub mod reply;
mod stream;

pub use reply::Knobs;
pub use stream::TokenStream;

#[derive(Parser, Debug, Clone)]
#[command(
    name = "mock-model",
    about = "A stand-in OpenAI-compatible model server with fault injection"
)]
pub struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port to listen on (0 picks a free one; the chosen address is printed).
    #[arg(long, default_value_t = 0)]
    pub port: u16,
    /// Version label, returned in every response.
    #[arg(long = "model-version", alias = "version", default_value = "v1")]
    pub version: String,
    /// Fraction of model requests (0.0-1.0) answered with HTTP 500, spread evenly.
    #[arg(long, default_value_t = 0.0)]
    pub error_rate: f64,
    /// `VERSION=RATE`: use this error rate when running as VERSION (repeatable). Lets one
    /// command template play a faulty release, as the demo does.
    #[arg(long = "error-rate-for", value_parser = parse_version_rate)]
    pub error_rate_for: Vec<(String, f64)>,
    /// Probability (0.0-1.0), drawn per request, that one word of the answer changes, even at
    /// temperature 0: the batch-induced nondeterminism of real servers.
    #[arg(long, default_value_t = 0.0)]
    pub output_noise: f64,
    /// `VERSION=P`: `--output-noise` when running as VERSION (repeatable).
    #[arg(long = "output-noise-for", value_parser = parse_version_rate)]
    pub output_noise_for: Vec<(String, f64)>,
    /// Share of prompts (chosen by the prompt's hash) whose answer is replaced by a different
    /// one: a systematic change of the model.
    #[arg(long, default_value_t = 0.0)]
    pub perturb: f64,
    /// `VERSION=P`: `--perturb` when running as VERSION (repeatable).
    #[arg(long = "perturb-for", value_parser = parse_version_rate)]
    pub perturb_for: Vec<(String, f64)>,
    /// Share of prompts (by hash) answered "I'm sorry, but I can't help with that."
    #[arg(long, default_value_t = 0.0)]
    pub refusal_rate: f64,
    /// `VERSION=P`: `--refusal-rate` when running as VERSION (repeatable).
    #[arg(long = "refusal-rate-for", value_parser = parse_version_rate)]
    pub refusal_rate_for: Vec<(String, f64)>,
    /// Share of JSON-mode prompts (`response_format` json_object / json_schema, by hash)
    /// answered with broken JSON; the others get a valid object.
    #[arg(long, default_value_t = 0.0)]
    pub invalid_json_rate: f64,
    /// `VERSION=P`: `--invalid-json-rate` when running as VERSION (repeatable).
    #[arg(long = "invalid-json-rate-for", value_parser = parse_version_rate)]
    pub invalid_json_rate_for: Vec<(String, f64)>,
    /// Extra delay before the first byte (first token) of every model answer.
    #[arg(long, value_parser = parse_duration, default_value = "0s")]
    pub ttft_shift: Duration,
    /// `VERSION=DURATION`: `--ttft-shift` when running as VERSION (repeatable).
    #[arg(long = "ttft-shift-for", value_parser = parse_version_duration)]
    pub ttft_shift_for: Vec<(String, Duration)>,
    /// Dimension of the embedding vectors.
    #[arg(long, default_value_t = 8)]
    pub embedding_dim: usize,
    /// `VERSION=N`: `--embedding-dim` when running as VERSION (repeatable).
    #[arg(long = "embedding-dim-for", value_parser = parse_version_dim)]
    pub embedding_dim_for: Vec<(String, usize)>,
    /// Standard deviation of the noise added per component (per request) to embeddings,
    /// before they are normalized.
    #[arg(long, default_value_t = 0.0)]
    pub embedding_jitter: f64,
    /// `VERSION=X`: `--embedding-jitter` when running as VERSION (repeatable).
    #[arg(long = "embedding-jitter-for", value_parser = parse_version_rate)]
    pub embedding_jitter_for: Vec<(String, f64)>,
    /// `NAME=VALUE`: serve this value at /metrics (repeatable), e.g.
    /// `vllm:num_requests_waiting=7`; a vLLM metric's pushed value replaces the counted one,
    /// any other name is served as a gauge.
    #[arg(long = "metric", value_parser = metrics::parse_metric)]
    pub metrics: Vec<(String, f64)>,
    /// How long `POST /wake_up` takes to wake a sleeping server.
    #[arg(long, value_parser = parse_duration, default_value = "500ms")]
    pub wake_time: Duration,
    /// Extra latency before every model response's head.
    #[arg(long, value_parser = parse_duration, default_value = "0s")]
    pub latency: Duration,
    /// Time between streamed tokens.
    #[arg(long, value_parser = parse_duration, default_value = "10ms")]
    pub token_interval: Duration,
    /// Tokens per completion unless the request's `max_tokens` says otherwise.
    #[arg(long, default_value_t = 16)]
    pub tokens: u64,
    /// Answer /health with 503 from the start.
    #[arg(long)]
    pub fail_health: bool,
    /// A wedged engine, as vLLM's can be: /health keeps answering 200 while model requests
    /// never get an answer (they wait until the client goes away).
    #[arg(long)]
    pub wedged: bool,
    /// While a model request is running, /health and /v1/models answer only after this
    /// long, as llama-cpp-python's /v1/models queues behind running generations.
    #[arg(long, value_parser = parse_duration, default_value = "0s")]
    pub busy_health_delay: Duration,
    /// Exit the process (code 1) when the Nth model request arrives.
    #[arg(long)]
    pub crash_after: Option<u64>,
    /// Delay before the listener opens, like a model loading its weights.
    #[arg(long, value_parser = parse_duration, default_value = "0s")]
    pub startup_delay: Duration,
    /// Worker threads (1 = a single-threaded runtime).
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
}

/// `VERSION=VALUE` with the value read by `parse`.
fn parse_for<T>(s: &str, what: &str, parse: impl Fn(&str) -> Result<T, String>) -> Result<(String, T), String> {
    let (v, x) = s
        .split_once('=')
        .ok_or_else(|| format!("expected VERSION={what}, got {s:?}"))?;
    Ok((v.to_string(), parse(x)?))
}

fn parse_version_rate(s: &str) -> Result<(String, f64), String> {
    parse_for(s, "RATE", |r| r.parse().map_err(|_| format!("invalid rate {r:?}")))
}

fn parse_version_duration(s: &str) -> Result<(String, Duration), String> {
    parse_for(s, "DURATION", parse_duration)
}

fn parse_version_dim(s: &str) -> Result<(String, usize), String> {
    parse_for(s, "N", |n| n.parse().map_err(|_| format!("invalid dimension {n:?}")))
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (expected e.g. 500ms, 2s)"))
}

impl Args {
    /// Applies every `--…-for VERSION=…` that names this version (the last one wins).
    fn resolve_versions(&mut self) {
        fn pick<T: Copy>(version: &str, list: &[(String, T)], value: &mut T) {
            if let Some((_, x)) = list.iter().rev().find(|(v, _)| v == version) {
                *value = *x;
            }
        }
        let v = self.version.clone();
        pick(&v, &self.error_rate_for, &mut self.error_rate);
        pick(&v, &self.output_noise_for, &mut self.output_noise);
        pick(&v, &self.perturb_for, &mut self.perturb);
        pick(&v, &self.refusal_rate_for, &mut self.refusal_rate);
        pick(&v, &self.invalid_json_rate_for, &mut self.invalid_json_rate);
        pick(&v, &self.ttft_shift_for, &mut self.ttft_shift);
        pick(&v, &self.embedding_dim_for, &mut self.embedding_dim);
        pick(&v, &self.embedding_jitter_for, &mut self.embedding_jitter);
    }

    fn knobs(&self) -> Knobs {
        Knobs {
            output_noise: self.output_noise.clamp(0.0, 1.0),
            perturb: self.perturb.clamp(0.0, 1.0),
            refusal_rate: self.refusal_rate.clamp(0.0, 1.0),
            invalid_json_rate: self.invalid_json_rate.clamp(0.0, 1.0),
            embedding_dim: self.embedding_dim.clamp(1, 65_536),
            embedding_jitter: self.embedding_jitter.max(0.0),
        }
    }
}

/// Counters served at `/mock/stats`.
#[derive(Default)]
pub struct Stats {
    pub connections: AtomicU64,
    pub requests: AtomicU64,
    pub model_requests: AtomicU64,
    pub errors_injected: AtomicU64,
    pub streams_started: AtomicU64,
    pub streams_completed: AtomicU64,
    /// Streams whose client went away before the last token: the proxy cancelled them.
    pub streams_cancelled: AtomicU64,
    /// Requests marked `x-cutover-shadow: 1` (mirrors), on any path: lets a test check what
    /// a proxy mirrored, and that nothing with side effects was.
    pub shadow_requests: AtomicU64,
}

struct State {
    args: Args,
    knobs: Knobs,
    version: HeaderValue,
    health_failing: AtomicBool,
    wedged: AtomicBool,
    /// Sleep mode (`POST /sleep`): health fails and model requests get 503 until woken.
    sleeping: AtomicBool,
    /// +1 on every `POST /sleep`, so a wake that was overtaken by a new sleep does not wake.
    sleep_epoch: AtomicU64,
    /// Model requests whose answer has not finished (streams until their last token).
    in_flight: AtomicI64,
    /// Random per process: sampled answers and per-request noise differ between servers.
    salt: u64,
    stats: Stats,
    metrics: metrics::Metrics,
}

/// One model request's place in `State::in_flight`, given back on drop.
struct Running(Arc<State>);

impl Running {
    fn new(state: &Arc<State>) -> Running {
        state.in_flight.fetch_add(1, Relaxed);
        Running(state.clone())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Relaxed);
    }
}

/// `--busy-health-delay`: the health routes wait while a model request runs.
async fn queue_behind_running(state: &State) {
    let d = state.args.busy_health_delay;
    if !d.is_zero() && state.in_flight.load(Relaxed) > 0 {
        tokio::time::sleep(d).await;
    }
}

/// Parses arguments, builds the runtime and serves until killed.
pub fn main_with_args(args: Args) -> ! {
    let rt = if args.threads <= 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(args.threads)
            .enable_all()
            .build()
    };
    let rt = rt.unwrap_or_else(|e| {
        eprintln!("mock-model: cannot start runtime: {e}");
        std::process::exit(1)
    });
    match rt.block_on(run(args)) {
        Ok(()) => std::process::exit(0),
        Err(e) => {
            eprintln!("mock-model: {e}");
            std::process::exit(1)
        }
    }
}

/// Binds and serves forever.
pub async fn run(args: Args) -> std::io::Result<()> {
    if !args.startup_delay.is_zero() {
        tokio::time::sleep(args.startup_delay).await;
    }
    let listener = bind(&args.host, args.port).await?;
    let addr = listener.local_addr()?;
    println!("mock-model {} listening on {addr}", args.version);
    serve(listener, args).await
}

/// A listen backlog as deep as the proxies' (4096): std's and tokio's `bind` listen with
/// 128, so thousands of streams opened at once overflowed this server's accept queue and each
/// dropped SYN cost its client a 1 s retransmit, which benchmarks then charged to the proxy in
/// front (issue #24's 4,000-stream p99).
async fn bind(host: &str, port: u16) -> std::io::Result<TcpListener> {
    let addr = tokio::net::lookup_host((host, port))
        .await?
        .next()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::AddrNotAvailable, format!("{host}: no address")))?;
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
}

/// A random number without a random-number crate: std's hasher keys are random per process.
fn process_salt() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.finish()
}

/// Serves on an already bound listener (used by tests that want the port first).
pub async fn serve(listener: TcpListener, mut args: Args) -> std::io::Result<()> {
    args.resolve_versions();
    let state = Arc::new(State {
        version: HeaderValue::from_str(&args.version).unwrap_or(HeaderValue::from_static("invalid")),
        health_failing: AtomicBool::new(args.fail_health),
        wedged: AtomicBool::new(args.wedged),
        sleeping: AtomicBool::new(false),
        sleep_epoch: AtomicU64::new(0),
        in_flight: AtomicI64::new(0),
        salt: process_salt(),
        knobs: args.knobs(),
        metrics: metrics::Metrics::new(&args.metrics),
        args,
        stats: Stats::default(),
    });
    loop {
        let (stream, _peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                // Out of file descriptors and friends: back off instead of spinning.
                eprintln!("mock-model: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        state.stats.connections.fetch_add(1, Relaxed);
        let state = state.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| handle(state.clone(), req));
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

type MockBody = http_body_util::Either<Full<Bytes>, TokenStream>;

fn body_response(state: &State, status: StatusCode, content_type: &'static str, body: String) -> Response<MockBody> {
    let mut r = Response::new(http_body_util::Either::Left(Full::new(Bytes::from(body))));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r.headers_mut().insert("x-model-version", state.version.clone());
    r
}

fn json_response(state: &State, status: StatusCode, v: &Value) -> Response<MockBody> {
    body_response(state, status, "application/json", v.to_string())
}

fn error_response(state: &State, status: StatusCode, message: &str, kind: &str) -> Response<MockBody> {
    json_response(state, status, &json!({"error": {"message": message, "type": kind}}))
}

/// A query parameter's value (`a=1&b=2`), percent-decoded.
fn query_param(req: &Request<Incoming>, name: &str) -> Option<String> {
    req.uri().query()?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (percent_decode(k) == name).then(|| percent_decode(v))
    })
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = b
            .get(i + 1..i + 3)
            .and_then(|h| u8::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok());
        match (b[i], hex) {
            (b'%', Some(x)) => {
                out.push(x);
                i += 3;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

async fn handle(state: Arc<State>, req: Request<Incoming>) -> Result<Response<MockBody>, Infallible> {
    state.stats.requests.fetch_add(1, Relaxed);
    if req.headers().get("x-cutover-shadow").is_some_and(|v| v == "1") {
        state.stats.shadow_requests.fetch_add(1, Relaxed);
    }
    let path = req.uri().path().to_string();
    let resp = match (req.method().clone(), path.as_str()) {
        (Method::GET, "/health") => health(&state).await,
        (Method::GET, "/v1/models") => {
            queue_behind_running(&state).await;
            json_response(
                &state,
                StatusCode::OK,
                &json!({"object": "list", "data": [{"id": state.args.version, "object": "model", "owned_by": "mock-model"}]}),
            )
        }
        (Method::GET, "/metrics") => {
            let text = state.metrics.render(&state.args.version, state.in_flight.load(Relaxed));
            body_response(&state, StatusCode::OK, "text/plain; version=0.0.4", text)
        }
        (Method::GET, "/is_sleeping") => json_response(
            &state,
            StatusCode::OK,
            &json!({"is_sleeping": state.sleeping.load(Relaxed)}),
        ),
        (Method::POST, "/sleep") => sleep(&state, &req),
        (Method::POST, "/wake_up") => wake_up(&state).await,
        (_, p) if p.starts_with("/mock/") => mock_hook(&state, req, &path).await,
        (Method::POST, "/v1/chat/completions" | "/v1/completions" | "/v1/embeddings") => {
            model_request(&state, req, &path).await
        }
        (_, "/health" | "/v1/models" | "/v1/chat/completions" | "/v1/completions" | "/v1/embeddings") => {
            error_response(
                &state,
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed",
                "invalid_request_error",
            )
        }
        _ => error_response(
            &state,
            StatusCode::NOT_FOUND,
            &format!("no route for {path}"),
            "invalid_request_error",
        ),
    };
    Ok(resp)
}

async fn health(state: &State) -> Response<MockBody> {
    queue_behind_running(state).await;
    let (status, word) = if state.sleeping.load(Relaxed) {
        (StatusCode::SERVICE_UNAVAILABLE, "sleeping")
    } else if state.health_failing.load(Relaxed) {
        (StatusCode::SERVICE_UNAVAILABLE, "failing")
    } else {
        (StatusCode::OK, "ok")
    };
    json_response(state, status, &json!({"status": word, "version": state.args.version}))
}

/// vLLM's `POST /sleep?level=1|2`: answers 200 with an empty body, as vLLM does.
fn sleep(state: &State, req: &Request<Incoming>) -> Response<MockBody> {
    let level = query_param(req, "level").unwrap_or_else(|| "1".into());
    if level != "1" && level != "2" {
        let msg = format!("level must be 1 or 2, not {level:?}");
        return error_response(state, StatusCode::BAD_REQUEST, &msg, "invalid_request_error");
    }
    state.sleep_epoch.fetch_add(1, Relaxed);
    state.sleeping.store(true, Relaxed);
    body_response(state, StatusCode::OK, "application/json", String::new())
}

/// vLLM's `POST /wake_up`: answers once awake (after `--wake-time`), with an empty body.
async fn wake_up(state: &State) -> Response<MockBody> {
    if state.sleeping.load(Relaxed) {
        let epoch = state.sleep_epoch.load(Relaxed);
        tokio::time::sleep(state.args.wake_time).await;
        // A sleep that came while waking wins: the server stays asleep.
        if state.sleep_epoch.load(Relaxed) == epoch {
            state.sleeping.store(false, Relaxed);
        }
    }
    body_response(state, StatusCode::OK, "application/json", String::new())
}

/// The `/mock/...` test hooks.
async fn mock_hook(state: &Arc<State>, req: Request<Incoming>, path: &str) -> Response<MockBody> {
    let flag = |name: &str| query_param(&req, name).as_deref() == Some("true");
    match (req.method().clone(), path) {
        (Method::GET, "/mock/stats") => json_response(state, StatusCode::OK, &stats(state)),
        (_, "/mock/echo") => echo(state, req).await,
        (Method::POST, "/mock/wedge") => {
            let on = flag("on");
            state.wedged.store(on, Relaxed);
            json_response(state, StatusCode::OK, &json!({"wedged": on}))
        }
        (Method::POST, "/mock/exit") => {
            // A crash on cue (tests of supervision): answer first, then exit with the code.
            let code: i32 = query_param(&req, "code").and_then(|c| c.parse().ok()).unwrap_or(1);
            eprintln!("mock-model: exiting with code {code} as asked (POST /mock/exit)");
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                std::process::exit(code);
            });
            json_response(state, StatusCode::OK, &json!({"exiting": code}))
        }
        (Method::POST, "/mock/health") => {
            let fail = flag("fail");
            state.health_failing.store(fail, Relaxed);
            json_response(state, StatusCode::OK, &json!({"health_failing": fail}))
        }
        (Method::POST, "/mock/metric") => push_metrics(state, &req),
        _ => error_response(
            state,
            StatusCode::NOT_FOUND,
            &format!("no route for {path}"),
            "invalid_request_error",
        ),
    }
}

fn stats(state: &State) -> Value {
    let s = &state.stats;
    json!({
        "version": state.args.version,
        "pid": std::process::id(),
        "connections": s.connections.load(Relaxed),
        "requests": s.requests.load(Relaxed),
        "model_requests": s.model_requests.load(Relaxed),
        "errors_injected": s.errors_injected.load(Relaxed),
        "streams_started": s.streams_started.load(Relaxed),
        "streams_completed": s.streams_completed.load(Relaxed),
        "streams_cancelled": s.streams_cancelled.load(Relaxed),
        "shadow_requests": s.shadow_requests.load(Relaxed),
        "in_flight": state.in_flight.load(Relaxed),
    })
}

async fn echo(state: &State, req: Request<Incoming>) -> Response<MockBody> {
    let headers: serde_json::Map<String, Value> = req
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                Value::String(String::from_utf8_lossy(v.as_bytes()).into()),
            )
        })
        .collect();
    let method = req.method().to_string();
    let uri = req.uri().to_string();
    let version = format!("{:?}", req.version());
    let body = req.into_body().collect().await.map(|b| b.to_bytes().len()).unwrap_or(0);
    json_response(
        state,
        StatusCode::OK,
        &json!({"method": method, "uri": uri, "http_version": version, "headers": headers, "body_bytes": body}),
    )
}

/// `POST /mock/metric?NAME=VALUE[&NAME=VALUE...]`.
fn push_metrics(state: &State, req: &Request<Incoming>) -> Response<MockBody> {
    let mut pushed = serde_json::Map::new();
    for kv in req.uri().query().unwrap_or("").split('&').filter(|kv| !kv.is_empty()) {
        match metrics::parse_metric(&percent_decode(kv)) {
            Ok((name, v)) => {
                state.metrics.push(&name, v);
                pushed.insert(name, json!(v));
            }
            Err(e) => return error_response(state, StatusCode::BAD_REQUEST, &e, "invalid_request_error"),
        }
    }
    json_response(state, StatusCode::OK, &json!({"pushed": pushed}))
}

async fn model_request(state: &Arc<State>, req: Request<Incoming>, path: &str) -> Response<MockBody> {
    let n = state.stats.model_requests.fetch_add(1, Relaxed) + 1;
    let running = Running::new(state);
    if state.args.crash_after.is_some_and(|limit| n >= limit) {
        eprintln!("mock-model: crashing on request {n} as asked (--crash-after)");
        std::process::exit(1);
    }
    if state.sleeping.load(Relaxed) {
        // vLLM refuses requests that need the weights while asleep.
        let msg = "the model is sleeping (POST /wake_up)";
        return error_response(state, StatusCode::SERVICE_UNAVAILABLE, msg, "service_unavailable");
    }
    let delay = req
        .headers()
        .get("x-mock-delay")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| humantime::parse_duration(v).ok())
        .unwrap_or_default()
        + state.args.latency
        + state.args.ttft_shift;
    let parsed = match read_json(state, req).await {
        Ok(v) => v,
        Err(resp) => return resp,
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    if state.wedged.load(Relaxed) {
        // The engine took the request and will never answer: only the client leaving ends it.
        std::future::pending::<()>().await;
    }
    if let Some(resp) = injected_error(state, n) {
        return resp;
    }
    state.metrics.observe_ttft(delay);
    state.metrics.success();
    let nonce = reply::mix(state.salt ^ n);
    if path == "/v1/embeddings" {
        return embeddings(state, &parsed, nonce);
    }
    completion(state, &parsed, path == "/v1/completions", n, nonce, running)
}

async fn read_json(state: &State, req: Request<Incoming>) -> Result<Value, Response<MockBody>> {
    let body = match Limited::new(req.into_body(), 8 << 20).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            let msg = format!("cannot read body: {e}");
            return Err(error_response(
                state,
                StatusCode::BAD_REQUEST,
                &msg,
                "invalid_request_error",
            ));
        }
    };
    serde_json::from_slice(&body).map_err(|e| {
        let msg = format!("body is not JSON: {e}");
        error_response(state, StatusCode::BAD_REQUEST, &msg, "invalid_request_error")
    })
}

/// `--error-rate`, spread evenly: request n fails when floor(n*rate) steps up, so a rate of
/// 0.25 fails exactly every 4th request instead of a random quarter.
fn injected_error(state: &State, n: u64) -> Option<Response<MockBody>> {
    let rate = state.args.error_rate.clamp(0.0, 1.0);
    if rate > 0.0 && ((n as f64) * rate).floor() > (((n - 1) as f64) * rate).floor() {
        state.stats.errors_injected.fetch_add(1, Relaxed);
        let msg = "injected failure (--error-rate)";
        return Some(error_response(
            state,
            StatusCode::INTERNAL_SERVER_ERROR,
            msg,
            "server_error",
        ));
    }
    None
}

fn embeddings(state: &State, parsed: &Value, nonce: u64) -> Response<MockBody> {
    let inputs: Vec<String> = match &parsed["input"] {
        Value::String(s) => vec![s.clone()],
        Value::Array(a) => a.iter().map(|v| v.as_str().unwrap_or_default().to_string()).collect(),
        _ => vec![String::new()],
    };
    let k = &state.knobs;
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(i, text)| {
            let v = reply::embed(text, k.embedding_dim, k.embedding_jitter, reply::mix(nonce ^ i as u64));
            json!({"object": "embedding", "index": i, "embedding": v})
        })
        .collect();
    json_response(
        state,
        StatusCode::OK,
        &json!({"object": "list", "data": data, "model": state.args.version, "usage": {"prompt_tokens": inputs.len(), "total_tokens": inputs.len()}}),
    )
}

fn completion(
    state: &Arc<State>,
    parsed: &Value,
    completions: bool,
    n: u64,
    nonce: u64,
    running: Running,
) -> Response<MockBody> {
    let tokens = parsed["max_tokens"]
        .as_u64()
        .unwrap_or(state.args.tokens)
        .clamp(1, 100_000);
    let answer = reply::reply(&state.knobs, parsed, tokens, nonce);
    let id = if completions {
        format!("cmpl-{n}")
    } else {
        format!("chatcmpl-{n}")
    };
    if parsed["stream"].as_bool() == Some(true) {
        state.stats.streams_started.fetch_add(1, Relaxed);
        let body = TokenStream::new(
            state.clone(),
            id,
            completions,
            answer.pieces,
            answer.finish_reason,
            running,
        );
        let mut r = Response::new(http_body_util::Either::Right(body));
        r.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
        r.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        r.headers_mut().insert("x-model-version", state.version.clone());
        return r;
    }
    let content = answer.content();
    let (object, choice) = if completions {
        (
            "text_completion",
            json!({"index": 0, "text": content, "finish_reason": answer.finish_reason}),
        )
    } else {
        let message = json!({"role": "assistant", "content": content});
        (
            "chat.completion",
            json!({"index": 0, "message": message, "finish_reason": answer.finish_reason}),
        )
    };
    let used = answer.pieces.len() as u64;
    json_response(
        state,
        StatusCode::OK,
        &json!({
            "id": id, "object": object, "created": unix_now(), "model": state.args.version,
            "choices": [choice],
            "usage": {"prompt_tokens": 1, "completion_tokens": used, "total_tokens": used + 1}
        }),
    )
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_spread_evenly() {
        let rate: f64 = 0.25;
        let failing: Vec<u64> = (1..=12u64)
            .filter(|n| ((*n as f64) * rate).floor() > (((n - 1) as f64) * rate).floor())
            .collect();
        assert_eq!(failing, vec![4, 8, 12]);
    }

    #[test]
    fn per_version_knobs_apply_to_their_version_only() {
        let parse = |v: &str| {
            let mut a = Args::parse_from([
                "mock-model",
                "--model-version",
                v,
                "--refusal-rate-for",
                "v3=0.4",
                "--ttft-shift-for",
                "v3=200ms",
                "--embedding-dim-for",
                "v3=16",
                "--perturb",
                "0.1",
            ]);
            a.resolve_versions();
            a
        };
        let (v2, v3) = (parse("v2"), parse("v3"));
        assert_eq!(
            (v2.refusal_rate, v2.ttft_shift, v2.embedding_dim),
            (0.0, Duration::ZERO, 8)
        );
        assert_eq!(
            (v3.refusal_rate, v3.ttft_shift, v3.embedding_dim),
            (0.4, Duration::from_millis(200), 16)
        );
        assert_eq!((v2.perturb, v3.perturb), (0.1, 0.1));
    }

    #[test]
    fn percent_decoding_reads_metric_names() {
        assert_eq!(
            percent_decode("vllm%3Anum_requests_waiting=7"),
            "vllm:num_requests_waiting=7"
        );
        assert_eq!(percent_decode("a%zz"), "a%zz");
    }
}
