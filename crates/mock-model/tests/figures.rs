//! The figures in docs/shadow.md: mock-model versions that differ in controlled ways, 200
//! requests each through the shadow engine, with and without a noise baseline; each
//! scenario's verdict is asserted, and `--nocapture` prints the figures the doc quotes:
//! `cargo test -p mock-model --test figures -- --nocapture`.

use clap::Parser;
use cutover_release::shadow::*;
use cutover_release::GateResult;
use serde_json::{json, Value};
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

async fn start(flags: &[&str]) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let args = mock_model::Args::parse_from(std::iter::once("mock-model").chain(flags.iter().copied()));
    tokio::spawn(mock_model::serve(listener, args));
    addr
}
async fn send(addr: SocketAddr, path: &str, body: &str) -> Answer {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "POST {path} HTTP/1.0\r\nhost: x\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.unwrap();
    let raw = String::from_utf8(raw).unwrap();
    let (head, b) = raw.split_once("\r\n\r\n").unwrap();
    let status: u16 = head[9..12].parse().unwrap();
    let ct = if head.contains("event-stream") {
        "text/event-stream"
    } else {
        "application/json"
    };
    Answer::assemble(&RawAnswer {
        status,
        content_type: Some(ct),
        body: b.as_bytes(),
        truncated: false,
        timings: Timings::default(),
    })
}
/// Live and a second live server run `live`, the candidate `cand`; prints the reading.
async fn scenario(name: &str, live: &[&str], cand: &[&str], baseline: bool, kind: &str) -> GateResult {
    let (l, l2, c) = (start(live).await, start(live).await, start(cand).await);
    let mut acc = Accumulator::new(Thresholds::default());
    for key in 0..200u64 {
        let (path, body): (&str, Value) = match kind {
            "emb" => ("/v1/embeddings", json!({"model":"m","input": format!("text {key}")})),
            "json" => (
                "/v1/chat/completions",
                json!({"model":"m","messages":[{"role":"user","content":format!("q {key}")}],"temperature":0,"response_format":{"type":"json_object"}}),
            ),
            _ => (
                "/v1/chat/completions",
                json!({"model":"m","messages":[{"role":"user","content":format!("q {key}")}],"temperature":0}),
            ),
        };
        let b = body.to_string();
        let p = eligible_body(path, b.as_bytes(), true).unwrap();
        let la = send(l, path, &b).await;
        let ca = send(c, path, &b).await;
        acc.add_pair(&Pair {
            key,
            profile: &p,
            request: None,
            live: &la,
            shadow: &ca,
        });
        if baseline {
            let l2a = send(l2, path, &b).await;
            acc.add_baseline(&Pair {
                key,
                profile: &p,
                request: None,
                live: &la,
                shadow: &l2a,
            });
        }
    }
    let r = acc.reading();
    println!("## {name}\n{:?}: {}", r.result, r.reason);
    for c in &r.classes {
        for m in &c.metrics {
            if !matches!(
                m.metric,
                Metric::TtftRatio | Metric::TotalTimeRatio | Metric::StatusMismatch
            ) {
                println!("   {}", m.text);
            }
        }
    }
    r.result
}
#[tokio::test(flavor = "current_thread")]
async fn figures() {
    use GateResult::*;
    assert_eq!(scenario("identical", &[], &[], false, "chat").await, Passing);
    assert_eq!(
        scenario(
            "noise 0.3 both, no baseline",
            &["--output-noise", "0.3"],
            &["--output-noise", "0.3"],
            false,
            "chat",
        )
        .await,
        Failing
    );
    assert_eq!(
        scenario(
            "noise 0.3 both, baseline",
            &["--output-noise", "0.3"],
            &["--output-noise", "0.3"],
            true,
            "chat",
        )
        .await,
        Passing
    );
    assert_eq!(
        scenario(
            "noise 0.1 + perturb 0.2, baseline",
            &["--output-noise", "0.1"],
            &["--output-noise", "0.1", "--perturb", "0.2"],
            true,
            "chat",
        )
        .await,
        Failing
    );
    assert_eq!(
        scenario("refusal 0.1, baseline", &[], &["--refusal-rate", "0.1"], true, "chat").await,
        Failing
    );
    assert_eq!(
        scenario(
            "invalid json 0.1, baseline",
            &[],
            &["--invalid-json-rate", "0.1"],
            true,
            "json",
        )
        .await,
        Failing
    );
    assert_eq!(
        scenario("embedding dim 16", &[], &["--embedding-dim", "16"], false, "emb").await,
        Failing
    );
    assert_eq!(
        scenario(
            "embedding jitter 0.05",
            &[],
            &["--embedding-jitter", "0.05"],
            false,
            "emb",
        )
        .await,
        Passing
    );
}
