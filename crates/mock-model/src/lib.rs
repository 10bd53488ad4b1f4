//! A stand-in OpenAI-compatible model server for the demo, the tests and the benchmarks.
//!
//! It answers `/health`, `/v1/models`, `/v1/chat/completions` (plain and `"stream": true`
//! server-sent events) and `/v1/embeddings`, puts its version in every response (`model`
//! field and `x-model-version` header), and injects faults on request: an error rate, extra
//! latency, a slow token rate, failing health, a crash after N requests, a wedged engine
//! behind a healthy `/health`, and health routes that queue behind running requests.
//!
//! Test hooks (not part of any real model server): `GET /mock/stats` counts what happened,
//! `POST /mock/health?fail=true|false` flips health at run time, `POST /mock/wedge?on=true|false`
//! wedges the engine at run time (see `--wedged`), `POST /mock/exit?code=N` makes the process
//! exit with that code (after answering), and a request header
//! `x-mock-delay` adds latency (e.g. `2s`) to that request only. `/mock/echo` answers with the
//! request's method, URI, HTTP version and headers, to check what a proxy forwarded.

#![forbid(unsafe_code)]

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use clap::Parser;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{json, Value};
use tokio::net::TcpListener;

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

fn parse_version_rate(s: &str) -> Result<(String, f64), String> {
    let (v, r) = s
        .split_once('=')
        .ok_or_else(|| format!("expected VERSION=RATE, got {s:?}"))?;
    let r: f64 = r.parse().map_err(|_| format!("invalid rate {r:?}"))?;
    Ok((v.to_string(), r))
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (expected e.g. 500ms, 2s)"))
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
}

struct State {
    args: Args,
    version: HeaderValue,
    health_failing: AtomicBool,
    wedged: AtomicBool,
    /// Model requests whose answer has not finished (streams until their last token).
    in_flight: AtomicI64,
    stats: Stats,
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
    let listener = TcpListener::bind((args.host.as_str(), args.port)).await?;
    let addr = listener.local_addr()?;
    println!("mock-model {} listening on {addr}", args.version);
    serve(listener, args).await
}

/// Serves on an already bound listener (used by tests that want the port first).
pub async fn serve(listener: TcpListener, mut args: Args) -> std::io::Result<()> {
    if let Some((_, rate)) = args.error_rate_for.iter().find(|(v, _)| *v == args.version) {
        args.error_rate = *rate;
    }
    let state = Arc::new(State {
        version: HeaderValue::from_str(&args.version).unwrap_or(HeaderValue::from_static("invalid")),
        health_failing: AtomicBool::new(args.fail_health),
        wedged: AtomicBool::new(args.wedged),
        in_flight: AtomicI64::new(0),
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

fn json_response(state: &State, status: StatusCode, v: &Value) -> Response<MockBody> {
    let mut r = Response::new(http_body_util::Either::Left(Full::new(Bytes::from(v.to_string()))));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r.headers_mut().insert("x-model-version", state.version.clone());
    r
}

async fn handle(state: Arc<State>, req: Request<Incoming>) -> Result<Response<MockBody>, Infallible> {
    state.stats.requests.fetch_add(1, Relaxed);
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    let resp = match (method, path.as_str()) {
        (Method::GET, "/health") => {
            queue_behind_running(&state).await;
            if state.health_failing.load(Relaxed) {
                json_response(
                    &state,
                    StatusCode::SERVICE_UNAVAILABLE,
                    &json!({"status": "failing", "version": state.args.version}),
                )
            } else {
                json_response(
                    &state,
                    StatusCode::OK,
                    &json!({"status": "ok", "version": state.args.version}),
                )
            }
        }
        (Method::GET, "/v1/models") => {
            queue_behind_running(&state).await;
            json_response(
                &state,
                StatusCode::OK,
                &json!({"object": "list", "data": [{"id": state.args.version, "object": "model", "owned_by": "mock-model"}]}),
            )
        }
        (Method::GET, "/mock/stats") => {
            let s = &state.stats;
            json_response(
                &state,
                StatusCode::OK,
                &json!({
                    "version": state.args.version,
                    "pid": std::process::id(),
                    "connections": s.connections.load(Relaxed),
                    "requests": s.requests.load(Relaxed),
                    "model_requests": s.model_requests.load(Relaxed),
                    "errors_injected": s.errors_injected.load(Relaxed),
                    "streams_started": s.streams_started.load(Relaxed),
                    "streams_completed": s.streams_completed.load(Relaxed),
                    "streams_cancelled": s.streams_cancelled.load(Relaxed),
                    "in_flight": state.in_flight.load(Relaxed),
                }),
            )
        }
        (_, "/mock/echo") => {
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
                &state,
                StatusCode::OK,
                &json!({"method": method, "uri": uri, "http_version": version, "headers": headers, "body_bytes": body}),
            )
        }
        (Method::POST, "/mock/wedge") => {
            let on = req.uri().query().is_some_and(|q| q.contains("on=true"));
            state.wedged.store(on, Relaxed);
            json_response(&state, StatusCode::OK, &json!({"wedged": on}))
        }
        (Method::POST, "/mock/exit") => {
            // A crash on cue (tests of supervision): answer first, then exit with the code.
            let code: i32 = req
                .uri()
                .query()
                .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("code=")))
                .and_then(|c| c.parse().ok())
                .unwrap_or(1);
            eprintln!("mock-model: exiting with code {code} as asked (POST /mock/exit)");
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                std::process::exit(code);
            });
            json_response(&state, StatusCode::OK, &json!({"exiting": code}))
        }
        (Method::POST, "/mock/health") => {
            let fail = req.uri().query().is_some_and(|q| q.contains("fail=true"));
            state.health_failing.store(fail, Relaxed);
            json_response(&state, StatusCode::OK, &json!({"health_failing": fail}))
        }
        (Method::POST, "/v1/chat/completions")
        | (Method::POST, "/v1/completions")
        | (Method::POST, "/v1/embeddings") => model_request(&state, req, &path).await,
        (_, "/health" | "/v1/models" | "/v1/chat/completions" | "/v1/completions" | "/v1/embeddings") => json_response(
            &state,
            StatusCode::METHOD_NOT_ALLOWED,
            &json!({"error": {"message": "method not allowed", "type": "invalid_request_error"}}),
        ),
        _ => json_response(
            &state,
            StatusCode::NOT_FOUND,
            &json!({"error": {"message": format!("no route for {path}"), "type": "invalid_request_error"}}),
        ),
    };
    Ok(resp)
}

async fn model_request(state: &Arc<State>, req: Request<Incoming>, path: &str) -> Response<MockBody> {
    let n = state.stats.model_requests.fetch_add(1, Relaxed) + 1;
    let running = Running::new(state);
    if state.args.crash_after.is_some_and(|limit| n >= limit) {
        eprintln!("mock-model: crashing on request {n} as asked (--crash-after)");
        std::process::exit(1);
    }
    let delay = req
        .headers()
        .get("x-mock-delay")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| humantime::parse_duration(v).ok())
        .unwrap_or_default()
        + state.args.latency;
    let body = match Limited::new(req.into_body(), 8 << 20).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            return json_response(
                state,
                StatusCode::BAD_REQUEST,
                &json!({"error": {"message": format!("cannot read body: {e}")}}),
            )
        }
    };
    let parsed: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            return json_response(
                state,
                StatusCode::BAD_REQUEST,
                &json!({"error": {"message": format!("body is not JSON: {e}"), "type": "invalid_request_error"}}),
            )
        }
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    if state.wedged.load(Relaxed) {
        // The engine took the request and will never answer: only the client leaving ends it.
        std::future::pending::<()>().await;
    }
    // Spread errors evenly: request n fails when floor(n*rate) steps up, so a rate of 0.25
    // fails exactly every 4th request instead of a random quarter.
    let rate = state.args.error_rate.clamp(0.0, 1.0);
    if rate > 0.0 && ((n as f64) * rate).floor() > (((n - 1) as f64) * rate).floor() {
        state.stats.errors_injected.fetch_add(1, Relaxed);
        return json_response(
            state,
            StatusCode::INTERNAL_SERVER_ERROR,
            &json!({"error": {"message": "injected failure (--error-rate)", "type": "server_error"}}),
        );
    }
    let version = &state.args.version;
    if path == "/v1/embeddings" {
        let inputs: Vec<String> = match &parsed["input"] {
            Value::String(s) => vec![s.clone()],
            Value::Array(a) => a.iter().map(|v| v.as_str().unwrap_or_default().to_string()).collect(),
            _ => vec![String::new()],
        };
        let data: Vec<Value> = inputs
            .iter()
            .enumerate()
            .map(|(i, text)| json!({"object": "embedding", "index": i, "embedding": embed(text)}))
            .collect();
        return json_response(
            state,
            StatusCode::OK,
            &json!({"object": "list", "data": data, "model": version, "usage": {"prompt_tokens": inputs.len(), "total_tokens": inputs.len()}}),
        );
    }
    let tokens = parsed["max_tokens"]
        .as_u64()
        .unwrap_or(state.args.tokens)
        .clamp(1, 100_000);
    let id = format!("chatcmpl-{n}");
    if parsed["stream"].as_bool() == Some(true) {
        state.stats.streams_started.fetch_add(1, Relaxed);
        let mut r = Response::new(http_body_util::Either::Right(TokenStream {
            state: state.clone(),
            id,
            sent: 0,
            tokens,
            done: false,
            sleep: Box::pin(tokio::time::sleep(Duration::ZERO)),
            _running: running,
        }));
        r.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
        r.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        r.headers_mut().insert("x-model-version", state.version.clone());
        return r;
    }
    let content: Vec<String> = (0..tokens).map(|i| format!("tok{i}")).collect();
    json_response(
        state,
        StatusCode::OK,
        &json!({
            "id": id, "object": "chat.completion", "created": unix_now(), "model": version,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content.join(" ")}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": tokens, "total_tokens": tokens + 1}
        }),
    )
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A deterministic 8-dimensional unit vector, so equal inputs embed equally.
fn embed(text: &str) -> Vec<f64> {
    let mut h: u64 = 0xcbf29ce484222325;
    let mut v = Vec::with_capacity(8);
    for i in 0..8u8 {
        for b in text.bytes().chain([i]) {
            h = (h ^ b as u64).wrapping_mul(0x100000001b3);
        }
        v.push((h % 2000) as f64 / 1000.0 - 1.0);
    }
    let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt().max(1e-9);
    v.into_iter().map(|x| x / norm).collect()
}

/// An SSE body that produces one chunk per token interval, then `[DONE]`.
pub struct TokenStream {
    state: Arc<State>,
    id: String,
    sent: u64,
    tokens: u64,
    done: bool,
    sleep: Pin<Box<tokio::time::Sleep>>,
    /// Counts the stream as a running request until its last token.
    _running: Running,
}

impl Body for TokenStream {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.done {
            return Poll::Ready(None);
        }
        if self.sleep.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        let this = &mut *self;
        let version = &this.state.args.version;
        let chunk = if this.sent < this.tokens {
            let i = this.sent;
            this.sent += 1;
            let deadline = tokio::time::Instant::now() + this.state.args.token_interval;
            this.sleep.as_mut().reset(deadline);
            let v = json!({"id": this.id, "object": "chat.completion.chunk", "model": version,
                "choices": [{"index": 0, "delta": {"content": format!("tok{i} ")}, "finish_reason": null}]});
            format!("data: {v}\n\n")
        } else {
            this.done = true;
            this.state.stats.streams_completed.fetch_add(1, Relaxed);
            let v = json!({"id": this.id, "object": "chat.completion.chunk", "model": version,
                "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]});
            format!("data: {v}\n\ndata: [DONE]\n\n")
        };
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(chunk)))))
    }
}

impl Drop for TokenStream {
    fn drop(&mut self) {
        if !self.done {
            self.state.stats.streams_cancelled.fetch_add(1, Relaxed);
        }
    }
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
    fn embeddings_are_deterministic_unit_vectors() {
        let a = embed("hello");
        assert_eq!(a, embed("hello"));
        assert_ne!(a, embed("world"));
        let norm: f64 = a.iter().map(|x| x * x).sum();
        assert!((norm - 1.0).abs() < 1e-9);
    }
}
