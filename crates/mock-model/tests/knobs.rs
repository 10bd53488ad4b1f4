//! mock-model's knobs over real HTTP: a server on port 0 per test, raw HTTP/1.0 requests (the
//! answer is delimited by the connection's close, so streams need no chunked decoding), and
//! the answers read by cutover's own shadow engine.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use clap::Parser;
use cutover_release::shadow::{Accumulator, Answer, Class, Pair, Profile, RawAnswer, Thresholds, Timings};
use cutover_release::GateResult;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

async fn start(flags: &[&str]) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let args = mock_model::Args::parse_from(std::iter::once("mock-model").chain(flags.iter().copied()));
    tokio::spawn(mock_model::serve(listener, args));
    addr
}

struct Reply {
    status: u16,
    content_type: String,
    body: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }

    /// The answer as the shadow engine assembles it.
    fn answer(&self) -> Answer {
        Answer::assemble(&RawAnswer {
            status: self.status,
            content_type: Some(&self.content_type),
            body: self.body.as_bytes(),
            truncated: false,
            timings: Timings::default(),
        })
    }
}

async fn send(addr: SocketAddr, method: &str, path: &str, body: &str) -> Reply {
    send_with(addr, method, path, "", body).await
}

/// `send` with extra header lines (each ending in `\r\n`).
async fn send_with(addr: SocketAddr, method: &str, path: &str, headers: &str, body: &str) -> Reply {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "{method} {path} HTTP/1.0\r\nhost: x\r\ncontent-type: application/json\r\n{headers}content-length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.unwrap();
    let raw = String::from_utf8(raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    let status = head[9..12].parse().unwrap();
    let content_type = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-type: ")
                .map(str::to_string)
        })
        .unwrap_or_default();
    Reply {
        status,
        content_type,
        body: body.to_string(),
    }
}

fn chat(prompt: &str, extra: Value) -> String {
    let mut v = json!({"model": "m", "messages": [{"role": "user", "content": prompt}], "temperature": 0});
    v.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    v.to_string()
}

async fn content(addr: SocketAddr, body: &str) -> String {
    let r = send(addr, "POST", "/v1/chat/completions", body).await;
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn two_servers_of_one_model_agree_at_temperature_0_and_vary_when_sampling() {
    let (a, b) = (start(&[]).await, start(&[]).await);
    let p = chat("What is blue-green?", json!({}));
    assert_eq!(content(a, &p).await, content(b, &p).await);
    assert_ne!(
        content(a, &p).await,
        content(a, &chat("Something else", json!({}))).await
    );
    let sampled = chat("What is blue-green?", json!({"temperature": 0.8}));
    assert_ne!(content(a, &sampled).await, content(a, &sampled).await);
    let seeded = chat("What is blue-green?", json!({"temperature": 0.8, "seed": 5}));
    assert_eq!(content(a, &seeded).await, content(b, &seeded).await);
}

#[tokio::test]
async fn a_stream_carries_the_same_text_as_a_plain_answer() {
    let a = start(&["--token-interval", "1ms"]).await;
    let plain = content(a, &chat("hi", json!({"max_tokens": 5}))).await;
    let stream = send(
        a,
        "POST",
        "/v1/chat/completions",
        &chat("hi", json!({"max_tokens": 5, "stream": true})),
    )
    .await;
    let answer = stream.answer();
    assert!(answer.stream && !answer.is_error(), "{answer:?}");
    assert_eq!(answer.content, plain);
    assert_eq!(answer.finish_reason.as_deref(), Some("stop"));
    assert_eq!(
        stream.body.matches("data: ").count(),
        5 + 2,
        "5 tokens, the finish chunk, [DONE]"
    );
}

#[tokio::test]
async fn completions_answer_with_text_completion_objects() {
    let a = start(&["--token-interval", "1ms"]).await;
    let body = json!({"model": "m", "prompt": "Say hi", "temperature": 0, "max_tokens": 4}).to_string();
    let r = send(a, "POST", "/v1/completions", &body).await;
    assert_eq!(r.json()["object"], "text_completion");
    let text = r.json()["choices"][0]["text"].as_str().unwrap().to_string();
    let streamed = json!({"model": "m", "prompt": "Say hi", "temperature": 0, "max_tokens": 4, "stream": true});
    let s = send(a, "POST", "/v1/completions", &streamed.to_string()).await;
    assert_eq!(s.answer().content, text);
}

#[tokio::test]
async fn output_noise_changes_one_word_even_at_temperature_0() {
    let (clean, noisy) = (start(&[]).await, start(&["--output-noise", "1"]).await);
    let p = chat("a prompt", json!({}));
    let (c, n) = (content(clean, &p).await, content(noisy, &p).await);
    let changed = c.split(' ').zip(n.split(' ')).filter(|(x, y)| x != y).count();
    assert_eq!(changed, 1, "{c} / {n}");
}

#[tokio::test]
async fn perturb_replaces_the_answers_of_its_share_of_prompts() {
    let base = start(&[]).await;
    let perturbed = start(&["--model-version", "v2", "--perturb-for", "v2=0.3"]).await;
    let mut changed = 0;
    for i in 0..200 {
        let p = chat(&format!("prompt {i}"), json!({}));
        changed += usize::from(content(base, &p).await != content(perturbed, &p).await);
    }
    // 30% of 200 = 60, binomial 3-sigma ≈ 19.
    assert!((41..=79).contains(&changed), "{changed}");
}

#[tokio::test]
async fn refusal_rate_answers_with_the_refusal() {
    let a = start(&["--refusal-rate", "1"]).await;
    assert_eq!(
        content(a, &chat("help me", json!({}))).await,
        mock_model::reply::REFUSAL
    );
}

#[tokio::test]
async fn json_mode_answers_valid_json_unless_told_to_break_it() {
    let (good, bad) = (start(&[]).await, start(&["--invalid-json-rate", "1"]).await);
    let p = chat("json please", json!({"response_format": {"type": "json_object"}}));
    let v: Value = serde_json::from_str(&content(good, &p).await).unwrap();
    assert!(v["answer"].is_string(), "{v}");
    assert!(serde_json::from_str::<Value>(&content(bad, &p).await).is_err());
    let schema = json!({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object",
        "properties": {"name": {"type": "string"}, "age": {"type": "integer"}}, "required": ["name", "age"]}}});
    let v: Value = serde_json::from_str(&content(good, &chat("x", json!({"response_format": schema}))).await).unwrap();
    assert!(v["name"].is_string() && v["age"].is_u64(), "{v}");
}

#[tokio::test]
async fn ttft_shift_delays_the_first_byte() {
    let a = start(&["--ttft-shift", "300ms"]).await;
    let t = Instant::now();
    content(a, &chat("x", json!({}))).await;
    assert!(t.elapsed() >= Duration::from_millis(300));
}

#[tokio::test]
async fn embedding_dimension_and_jitter() {
    let a = start(&["--embedding-dim", "16", "--embedding-jitter", "0.05"]).await;
    let body = json!({"model": "m", "input": ["one", "two"]}).to_string();
    let (x, y) = (
        send(a, "POST", "/v1/embeddings", &body).await.answer(),
        send(a, "POST", "/v1/embeddings", &body).await.answer(),
    );
    assert_eq!(x.embeddings.len(), 2);
    assert!(x.embeddings.iter().all(|v| v.len() == 16));
    let cos: f64 = x.embeddings[0].iter().zip(&y.embeddings[0]).map(|(p, q)| p * q).sum();
    assert!(cos < 0.99999 && cos > 0.9, "jitter moves vectors a little: {cos}");
}

#[tokio::test]
async fn metrics_are_served_and_can_be_pushed() {
    let a = start(&["--metric", "vllm:num_requests_waiting=7"]).await;
    content(a, &chat("x", json!({}))).await;
    let pushed = send(
        a,
        "POST",
        "/mock/metric?vllm%3Akv_cache_usage_perc=0.9&tgi_queue_size=3",
        "",
    )
    .await;
    assert_eq!(pushed.status, 200, "{}", pushed.body);
    let m = send(a, "GET", "/metrics", "").await;
    assert!(m.content_type.starts_with("text/plain"), "{}", m.content_type);
    for line in [
        "vllm:num_requests_waiting{model_name=\"v1\"} 7",
        "vllm:kv_cache_usage_perc{model_name=\"v1\"} 0.9",
        "vllm:request_success_total{model_name=\"v1\",finished_reason=\"stop\"} 1",
        "vllm:time_to_first_token_seconds_count{model_name=\"v1\"} 1",
        "tgi_queue_size 3",
    ] {
        assert!(m.body.lines().any(|l| l == line), "no {line:?} in\n{}", m.body);
    }
    assert_eq!(send(a, "POST", "/mock/metric?bad-name=1", "").await.status, 400);
}

#[tokio::test]
async fn sleep_mode_fails_health_and_requests_until_woken() {
    let a = start(&["--wake-time", "300ms"]).await;
    assert_eq!(
        send(a, "GET", "/is_sleeping", "").await.json(),
        json!({"is_sleeping": false})
    );
    assert_eq!(send(a, "POST", "/sleep?level=3", "").await.status, 400);
    assert_eq!(send(a, "POST", "/sleep?level=1", "").await.status, 200);
    assert_eq!(
        send(a, "GET", "/is_sleeping", "").await.json(),
        json!({"is_sleeping": true})
    );
    assert_eq!(send(a, "GET", "/health", "").await.status, 503);
    assert_eq!(
        send(a, "POST", "/v1/chat/completions", &chat("x", json!({})))
            .await
            .status,
        503
    );
    let t = Instant::now();
    assert_eq!(send(a, "POST", "/wake_up", "").await.status, 200);
    assert!(t.elapsed() >= Duration::from_millis(300), "waking takes --wake-time");
    assert_eq!(
        send(a, "GET", "/is_sleeping", "").await.json(),
        json!({"is_sleeping": false})
    );
    assert_eq!(send(a, "GET", "/health", "").await.status, 200);
    content(a, &chat("x", json!({}))).await;
}

/// The whole comparison on real answers: the same model passes, a version that refuses a
/// share of prompts fails with a reason naming the class and the figures.
async fn shadow_verdict(live: SocketAddr, shadow: SocketAddr, pairs: u64) -> (GateResult, String) {
    let mut acc = Accumulator::new(Thresholds {
        min_pairs: 50,
        ..Thresholds::default()
    });
    let profile = Profile::of(Class::DeterministicChat);
    for key in 0..pairs {
        let body = chat(&format!("question {key}"), json!({}));
        let l = send(live, "POST", "/v1/chat/completions", &body).await.answer();
        let s = send(shadow, "POST", "/v1/chat/completions", &body).await.answer();
        acc.add_pair(&Pair {
            key,
            profile: &profile,
            request: None,
            live: &l,
            shadow: &s,
        });
    }
    let v = acc.judge();
    (v.result, v.reason)
}

#[tokio::test]
async fn the_shadow_engine_passes_one_model_and_fails_a_refusing_version() {
    let v1 = start(&[]).await;
    let same = start(&[]).await;
    let refusing = start(&["--model-version", "v3", "--refusal-rate-for", "v3=0.3"]).await;
    let (result, reason) = shadow_verdict(v1, same, 60).await;
    assert_eq!(result, GateResult::Passing, "{reason}");
    let (result, reason) = shadow_verdict(v1, refusing, 60).await;
    assert_eq!(result, GateResult::Failing, "{reason}");
    assert!(reason.contains("deterministic chat: refusal-rate increase"), "{reason}");
}

#[tokio::test]
async fn mirrored_requests_are_counted() {
    let a = start(&[]).await;
    content(a, &chat("live", json!({}))).await;
    let body = chat("mirrored", json!({}));
    let r = send_with(a, "POST", "/v1/chat/completions", "x-cutover-shadow: 1\r\n", &body).await;
    assert_eq!(r.status, 200);
    let stats = send(a, "GET", "/mock/stats", "").await.json();
    assert_eq!(
        (stats["model_requests"].as_u64(), stats["shadow_requests"].as_u64()),
        (Some(2), Some(1))
    );
}
