//! A shared listener: a chat service and an embedding service behind one address, routed by
//! the OpenAI `model` field (and by Host and path prefix), driven with the official `openai`
//! Python client (`tests/shared/openai_client.py`) on both engines.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use http::Method;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::support::*;

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/shared/openai_client.py")
}

fn python() -> String {
    std::env::var("CUTOVER_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// The engine of HTTP/1.1 clients: the own one by default, hyper on request.
fn engine(hyper: bool) -> &'static str {
    if hyper {
        "hyper"
    } else {
        "own"
    }
}

/// `chat` (blue, green) and `embed` (blue, green) on listener `api`, each with its `match`.
fn config(chat: [&Mock; 2], embed: [&Mock; 2], chat_match: &str, embed_match: &str) -> String {
    let svc = |name: &str, m: [&Mock; 2], matches: &str| {
        format!(
            "[services.{name}]\nlistener = \"api\"\nmatch = {matches}\n\
             health = {{ path = \"/health\", interval = \"200ms\", timeout = \"1s\" }}\n\
             [services.{name}.blue]\nendpoints = [\"{}\"]\nversion = \"{}\"\n\
             [services.{name}.green]\nendpoints = [\"{}\"]\nversion = \"{}\"\n\n",
            m[0].addr(),
            m[0].version,
            m[1].addr(),
            m[1].version
        )
    };
    // A short bake: the release test waits for the whole release.
    format!(
        "[listeners.api]\nlisten = \"{{listen}}\"\n\n{}{}[services.chat.release.verify]\nbake = \"2s\"\nmin_requests = 5\n",
        svc("chat", chat, chat_match),
        svc("embed", embed, embed_match)
    )
}

/// Four mocks and a router with both services live on blue.
async fn start(hyper: bool, chat_match: &str, embed_match: &str) -> (Router, Vec<Mock>) {
    start_with(hyper, chat_match, embed_match, "").await
}

/// As `start`, with `listener_extra` (TOML lines) in `[listeners.api]`.
async fn start_with(hyper: bool, chat_match: &str, embed_match: &str, listener_extra: &str) -> (Router, Vec<Mock>) {
    let mocks = vec![
        Mock::start("chat-v1", &[]).await,
        Mock::start("chat-v2", &[]).await,
        Mock::start("embed-v1", &[]).await,
        Mock::start("embed-v2", &[]).await,
    ];
    let text = config([&mocks[0], &mocks[1]], [&mocks[2], &mocks[3]], chat_match, embed_match);
    let text = text.replacen("[listeners.api]\n", &format!("[listeners.api]\n{listener_extra}\n"), 1);
    let r = Router::start(&on_engine(&text, engine(hyper))).await;
    for svc in ["chat", "embed"] {
        let s = r
            .api(
                Method::POST,
                &format!("/v1/services/{svc}/switch"),
                json!({"to": "blue"}),
            )
            .await;
        assert_eq!(s.status, 200, "{svc}: {}", s.text());
    }
    (r, mocks)
}

const BY_MODEL: (&str, &str) = (r#"{ model = ["llama-3-8b"] }"#, r#"{ model = ["bge-small"] }"#);

/// Runs the client script in `mode` and returns its one JSON line.
async fn client(mode: &str, base: &str) -> Value {
    client_with(mode, base, &[]).await
}

async fn client_with(mode: &str, base: &str, extra: &[&str]) -> Value {
    let out = tokio::process::Command::new(python())
        .arg(script())
        .args([mode, "--base-url", base])
        .args(extra)
        .output()
        .await
        .expect("run python3 with the openai client (.ci/llama-setup.sh installs it)");
    assert!(
        out.status.success(),
        "{mode}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

async fn routes_by_model(hyper: bool) {
    let (r, _mocks) = start(hyper, BY_MODEL.0, BY_MODEL.1).await;
    let got = client("once", &r.url("/v1")).await;
    assert_eq!(got["chat_version"], "chat-v1", "{got}");
    assert_eq!(got["stream_versions"], json!(["chat-v1"]), "{got}");
    assert_eq!(got["embed_version"], "embed-v1", "{got}");
    assert_eq!(got["embed_dims"], 8, "mock-model's default --embedding-dim: {got}");
    assert_eq!(got["models"], json!(["bge-small", "llama-3-8b"]), "{got}");
    let unknown = &got["unknown"];
    assert_eq!(
        (
            &unknown["status"],
            &unknown["code"],
            &unknown["type"],
            &unknown["param"]
        ),
        (
            &json!(404),
            &json!("model_not_found"),
            &json!("invalid_request_error"),
            &json!("model")
        ),
        "{got}"
    );
    assert!(unknown["message"].as_str().unwrap().contains("gpt-9"), "{got}");

    // A body of 1 MiB whose model comes first is routed from its first bytes and arrives
    // whole; one whose model is past the cap is refused, not buffered.
    let big = "x".repeat(1 << 20);
    // Written out: `json!` sorts its keys, which would put `input` first.
    let first = format!(r#"{{"model":"bge-small","input":"{big}"}}"#);
    let resp = send(
        &r.http,
        Method::POST,
        &r.url("/v1/embeddings"),
        &[("content-type", "application/json")],
        &first,
    )
    .await
    .unwrap();
    assert_eq!(
        (resp.status.as_u16(), resp.header("x-cutover-version")),
        (200, "embed-v1"),
        "{}",
        resp.text()
    );
    let late = format!(r#"{{"input":"{big}","model":"bge-small"}}"#);
    let resp = send(&r.http, Method::POST, &r.url("/v1/embeddings"), &[], &late)
        .await
        .unwrap();
    assert_eq!(resp.status, 400, "{}", resp.text());
    assert_eq!(
        resp.json()["error"]["code"],
        "model_not_in_first_bytes",
        "{}",
        resp.text()
    );

    // A chunked body whose model spans chunks, and an HTTP/2 client, are routed alike.
    let body = r#"{"model":"bge-small","input":"hi"}"#;
    let chunks: String = body
        .as_bytes()
        .chunks(5)
        .map(|c| format!("{:x}\r\n{}\r\n", c.len(), std::str::from_utf8(c).unwrap()))
        .collect();
    let req = format!(
        "POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{chunks}0\r\n\r\n"
    );
    let (answer, _) = raw(r.listen, req.as_bytes());
    assert!(
        answer.starts_with("HTTP/1.1 200") && answer.contains("x-cutover-version: embed-v1"),
        "{answer}"
    );
    // A client that waits for `100 Continue` before its body gets it: the body is needed to
    // pick the service.
    let port = r.listen;
    let continued = tokio::task::spawn_blocking(move || expect_continue(port, body))
        .await
        .unwrap();
    assert!(
        continued.starts_with("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200")
            && continued.contains("x-cutover-version: embed-v1"),
        "{continued}"
    );
    let h2 = tokio::process::Command::new("curl")
        .args([
            "-s",
            "--http2-prior-knowledge",
            "-D",
            "-",
            "-o",
            "/dev/null",
            "-H",
            "content-type: application/json",
        ])
        .args([
            "-d",
            r#"{"model":"llama-3-8b","messages":[{"role":"user","content":"hi"}]}"#,
        ])
        .arg(r.url("/v1/chat/completions"))
        .output()
        .await
        .unwrap();
    let head = String::from_utf8_lossy(&h2.stdout);
    assert!(
        head.starts_with("HTTP/2 200") && head.contains("x-cutover-version: chat-v1"),
        "{head}"
    );

    // Each service counts its own requests.
    let metrics = get(&r.admin_url("/metrics")).await.unwrap().text();
    for svc in ["chat", "embed"] {
        let counted: f64 = metrics
            .lines()
            .filter(|l| l.starts_with("cutover_requests_total{") && l.contains(&format!("service=\"{svc}\"")))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        assert!(counted >= 2.0, "{svc} counted {counted}:\n{metrics}");
    }
}

/// Sends a head with `Expect: 100-continue`, waits for the interim answer, then the body;
/// returns all that came back.
fn expect_continue(port: u16, body: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let head = format!(
        "POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    let mut got = vec![0u8; 25];
    s.read_exact(&mut got).expect("100 Continue before the body");
    s.write_all(body.as_bytes()).unwrap();
    let _ = s.read_to_end(&mut got);
    String::from_utf8_lossy(&got).into_owned()
}

#[tokio::test]
async fn shared_listener_routes_openai_chat_and_embeddings_by_model() {
    routes_by_model(false).await;
}

#[tokio::test]
async fn shared_listener_routes_openai_chat_and_embeddings_by_model_on_hyper() {
    routes_by_model(true).await;
}

/// The load mode of the client script.
struct Load {
    child: tokio::process::Child,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    /// Every `seen` line read so far (they come in any order).
    seen: std::collections::HashSet<String>,
}

impl Load {
    fn start(base: &str) -> Load {
        let mut child = tokio::process::Command::new(python())
            .arg(script())
            .args(["load", "--base-url", base, "--workers", "4"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn python3");
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        Load {
            child,
            lines,
            seen: Default::default(),
        }
    }

    /// Waits for the script to say it saw an answer of `kind` from `version`.
    async fn seen(&mut self, kind: &str, version: &str) {
        let want = format!("seen {kind} {version}");
        let wait = async {
            while !self.seen.contains(&want) {
                match self.lines.next_line().await.unwrap() {
                    Some(l) => self.seen.insert(l),
                    None => panic!("the load ended before {want}"),
                };
            }
        };
        tokio::time::timeout(Duration::from_secs(60), wait)
            .await
            .unwrap_or_else(|_| panic!("no {want} in 60 s"));
    }

    async fn finish(mut self) -> Value {
        drop(self.child.stdin.take());
        let summary = tokio::time::timeout(Duration::from_secs(60), async {
            while let Some(l) = self.lines.next_line().await.unwrap() {
                if let Some(s) = l.strip_prefix("summary ") {
                    return serde_json::from_str::<Value>(s).unwrap();
                }
            }
            panic!("the load gave no summary");
        })
        .await
        .expect("a summary within 60 s");
        let _ = self.child.wait().await;
        summary
    }
}

async fn release_one_while_the_other_serves(hyper: bool) {
    let (r, _mocks) = start(hyper, BY_MODEL.0, BY_MODEL.1).await;
    let mut load = Load::start(&r.url("/v1"));
    load.seen("chat", "chat-v1").await;
    load.seen("embed", "embed-v1").await;
    let id = r.release("chat-v2").await;
    let d = r.wait_end(id, Duration::from_secs(60)).await;
    assert_eq!(d["outcome"], "completed", "{d}");
    load.seen("chat", "chat-v2").await;
    let summary = load.finish().await;
    eprintln!("load summary: {summary}");
    assert_eq!(summary["failures"], json!([]), "{summary}");
    // Chat answered from both versions, embed from its live one only: it was not released.
    let counts = summary["counts"].as_object().unwrap();
    let kinds: Vec<&str> = counts.keys().map(String::as_str).collect();
    assert_eq!(kinds, ["chat chat-v1", "chat chat-v2", "embed embed-v1"], "{summary}");
    let embed = r.api(Method::GET, "/v1/services/embed", Value::Null).await.json();
    assert_eq!(
        (&embed["live"], &embed["generation"]),
        (&json!("blue"), &json!(1)),
        "{embed}"
    );
    assert_eq!(r.status().await["live"], "green");
}

#[tokio::test]
async fn a_release_on_a_shared_listener_leaves_the_other_service_serving() {
    release_one_while_the_other_serves(false).await;
}

#[tokio::test]
async fn a_release_on_a_shared_listener_leaves_the_other_service_serving_on_hyper() {
    release_one_while_the_other_serves(true).await;
}

async fn routes_by_host_and_prefix(hyper: bool) {
    let (r, _mocks) = start(
        hyper,
        r#"{ host = "chat.example" }"#,
        r#"{ path_prefix = "/v1/embeddings" }"#,
    )
    .await;
    let got = client("hosts", &r.url("/v1")).await;
    assert_eq!(got["chat_by_host"], "chat-v1", "{got}");
    assert_eq!(got["embed_by_prefix"], "embed-v1", "{got}");
    assert_eq!(got["no_match"]["status"], 404, "{got}");
    assert_eq!(got["no_match"]["code"], "no_service_matches", "{got}");
    // A host outranks a prefix, as nginx picks the server before the location.
    let resp = send(
        &r.http,
        Method::POST,
        &r.url("/v1/embeddings"),
        &[("host", "Chat.Example:80")],
        r#"{"input":"x"}"#,
    )
    .await
    .unwrap();
    assert_eq!(resp.header("x-cutover-version"), "chat-v1", "{}", resp.text());
}

#[tokio::test]
async fn a_shared_listener_routes_by_host_and_path_prefix() {
    routes_by_host_and_prefix(false).await;
}

#[tokio::test]
async fn a_shared_listener_routes_by_host_and_path_prefix_on_hyper() {
    routes_by_host_and_prefix(true).await;
}

/// In a fleet, every router reads the same rules from its config and the switches come
/// from etcd: two routers answer the openai client alike, before and after a switch of one
/// service made through the other router.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_routers_of_a_fleet_route_a_shared_listener_alike() {
    let etcd = crate::fleet::cluster::Cluster::start(1).await;
    let mocks = [
        Mock::start("chat-v1", &[]).await,
        Mock::start("chat-v2", &[]).await,
        Mock::start("embed-v1", &[]).await,
        Mock::start("embed-v2", &[]).await,
    ];
    let text = config([&mocks[0], &mocks[1]], [&mocks[2], &mocks[3]], BY_MODEL.0, BY_MODEL.1);
    let fleet = crate::fleet::in_fleet(&etcd.url_of(0), "shared", &text);
    let routers = [Router::start(&fleet).await, Router::start(&fleet).await];
    crate::fleet::wait_routers(&routers[0], 2, "SYNCED").await;
    let switch = |r: usize, svc: &'static str, to: &'static str| {
        let r = &routers[r];
        async move {
            let s = r
                .api(Method::POST, &format!("/v1/services/{svc}/switch"), json!({"to": to}))
                .await;
            assert_eq!(s.status, 200, "{svc}: {}", s.text());
            assert_eq!(s.json()["sync"]["synced"], 2, "both routers acked: {}", s.text());
        }
    };
    switch(0, "chat", "blue").await;
    switch(0, "embed", "blue").await;
    for (chat, embed) in [("chat-v1", "embed-v1"), ("chat-v2", "embed-v1")] {
        for r in &routers {
            let got = client("once", &r.url("/v1")).await;
            assert_eq!(
                (got["chat_version"].as_str(), got["embed_version"].as_str()),
                (Some(chat), Some(embed)),
                "{got}"
            );
            assert_eq!(got["models"], json!(["bge-small", "llama-3-8b"]), "{got}");
            assert_eq!(got["unknown"]["code"], "model_not_found", "{got}");
        }
        // Acked means applied: the switch is seen by both routers at once.
        if chat == "chat-v1" {
            switch(1, "chat", "green").await;
        }
    }
}

/// A reload that would change a shared listener's rules is refused and changes nothing;
/// `serve --upgrade` hands the shared listener's socket over by its key, and the new process
/// routes alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_listener_refuses_a_rule_change_on_reload_and_survives_an_upgrade() {
    let (mut r, _mocks) = start(false, BY_MODEL.0, BY_MODEL.1).await;
    let text = std::fs::read_to_string(&r.config).unwrap();
    std::fs::write(
        &r.config,
        text.replace(r#"["bge-small"]"#, r#"["bge-small", "bge-large"]"#),
    )
    .unwrap();
    let (code, out, err) = r.cli_async(&["reload"]).await;
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains("shared listeners") && err.contains("read at start only"),
        "{out}{err}"
    );
    let got = client("once", &r.url("/v1")).await;
    assert_eq!(got["models"], json!(["bge-small", "llama-3-8b"]), "unchanged: {got}");

    std::fs::write(&r.config, &text).unwrap();
    let mut old = crate::upgrade::upgrade(&mut r).await;
    assert_eq!(crate::upgrade::exit_code(&mut old), Some(0));
    let got = client("once", &r.url("/v1")).await;
    assert_eq!(
        (got["chat_version"].as_str(), got["embed_version"].as_str()),
        (Some("chat-v1"), Some("embed-v1")),
        "{got}"
    );
}

/// A shared listener with `tls`: the openai client, trusting the test CA, is routed by model
/// over HTTPS (TLS connections take the hyper engine).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_listener_with_tls_routes_the_openai_client_by_model() {
    let pki = crate::tls::Pki::new();
    pki.write_leaf("api", 1);
    let (r, _mocks) = start_with(false, BY_MODEL.0, BY_MODEL.1, &pki.tls_line("api")).await;
    let base = format!("https://127.0.0.1:{}/v1", r.listen);
    let got = client_with("once", &base, &["--ca", pki.ca.to_str().unwrap()]).await;
    assert_eq!(
        (got["chat_version"].as_str(), got["embed_version"].as_str()),
        (Some("chat-v1"), Some("embed-v1")),
        "{got}"
    );
    assert_eq!(got["models"], json!(["bge-small", "llama-3-8b"]), "{got}");
    assert_eq!(got["unknown"]["code"], "model_not_found", "{got}");
}

/// Shadow mirroring on a shared listener: a release of `chat` in its shadowing phase gets
/// copies of the chat requests that came through the shared listener (body read for the
/// model included) and none of the embedding service's, on both engines.
async fn shadow_mirrors_only_its_service(hyper: bool) {
    let shadow = "[services.chat.release.shadow]\nsample = 1.0\nduration = \"120s\"\nmin_pairs = 100000\nbaseline = 0\npaths = [\"/v1/chat/completions\"]\n";
    let (r, mocks) = start(hyper, BY_MODEL.0, BY_MODEL.1).await;
    // The shadow table is added to the running config's file before the release reads it.
    let text = std::fs::read_to_string(&r.config).unwrap();
    std::fs::write(&r.config, format!("{text}{shadow}")).unwrap();
    let (code, out, err) = r.cli_async(&["reload"]).await;
    assert_eq!(code, 0, "{out}{err}");
    let id = r.release("chat-v2").await;
    // Mirroring starts after the phase's reference window: its first reading is then in
    // the release document.
    wait_for("mirroring to start", Duration::from_secs(20), || async {
        let d = r.release_doc(id).await;
        (d["phase"] == "shadowing" && !d["shadow"].is_null()).then_some(())
    })
    .await;
    let chat = r#"{"model":"llama-3-8b","messages":[{"role":"user","content":"hello"}],"temperature":0}"#;
    let h = [("content-type", "application/json")];
    for _ in 0..20 {
        let a = send(&r.http, Method::POST, &r.url("/v1/chat/completions"), &h, chat)
            .await
            .unwrap();
        assert_eq!(
            (a.status.as_u16(), a.header("x-cutover-version")),
            (200, "chat-v1"),
            "{}",
            a.text()
        );
        let e = send(
            &r.http,
            Method::POST,
            &r.url("/v1/embeddings"),
            &h,
            r#"{"model":"bge-small","input":"x"}"#,
        )
        .await
        .unwrap();
        assert_eq!(
            (e.status.as_u16(), e.header("x-cutover-version")),
            (200, "embed-v1"),
            "{}",
            e.text()
        );
    }
    let s = wait_for("20 mirrors compared", Duration::from_secs(20), || async {
        let s = r.release_doc(id).await["shadow"].clone();
        (s["pairs"] == 20).then_some(s)
    })
    .await;
    // The copies carried the whole body, the bytes read for the model included: the
    // candidate answered each one as the live color did.
    let all = s["classes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["class"] == "all")
        .unwrap();
    let mismatch = all["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["metric"] == "status_mismatch")
        .unwrap();
    assert_eq!(mismatch["value"], 0.0, "{s}");
    assert_eq!(mocks[1].stats().await["shadow_requests"], 20, "{s}");
    for m in [&mocks[0], &mocks[2], &mocks[3]] {
        assert_eq!(m.stats().await["shadow_requests"], 0, "{} got copies", m.version);
    }
    let (code, out, err) = r.cli_async(&["abort", "chat"]).await;
    assert_eq!(code, 0, "{out}{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_mirroring_on_a_shared_listener_copies_only_its_service() {
    shadow_mirrors_only_its_service(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_mirroring_on_a_shared_listener_copies_only_its_service_on_hyper() {
    shadow_mirrors_only_its_service(true).await;
}
