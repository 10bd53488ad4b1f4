//! Faults, races and hostile input: each test fails if its guarantee breaks.

use std::io::{Read, Write};
use std::net::TcpStream as StdTcp;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::Method;
use serde_json::json;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_concurrent_compare_and_swap_switches_leave_gap_free_generations() {
    let blue = Mock::start("v1", &[]).await;
    let green = Mock::start("v2", &[]).await;
    let r = Arc::new(Router::start(&static_service(&[&blue], &[&green], "")).await);
    assert_eq!(r.switch("blue").await.status, 200);
    let mut won = Vec::new();
    for _round in 0..3 {
        let st = r.status().await;
        let g = st["generation"].as_u64().unwrap();
        let to = if st["live"] == "blue" { "green" } else { "blue" };
        let mut tasks = Vec::new();
        for _ in 0..20 {
            let r = r.clone();
            tasks.push(tokio::spawn(async move {
                r.api(
                    Method::POST,
                    "/v1/services/chat/switch",
                    json!({"to": to, "if_generation": g}),
                )
                .await
            }));
        }
        let mut ok = 0;
        for t in tasks {
            let resp = t.await.unwrap();
            match resp.status.as_u16() {
                200 => {
                    ok += 1;
                    won.push(resp.json()["generation"].as_u64().unwrap());
                }
                409 => assert_eq!(resp.json()["error"]["code"], "stale_generation"),
                s => panic!("unexpected {s}: {}", resp.text()),
            }
        }
        assert_eq!(ok, 1, "exactly one compare-and-swap wins per generation");
    }
    assert_eq!(won, vec![2, 3, 4]);
    let h = r
        .api(Method::GET, "/v1/services/chat/history", serde_json::Value::Null)
        .await
        .json();
    let gens: Vec<u64> = h["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["generation"].as_u64().unwrap())
        .collect();
    assert_eq!(
        gens,
        vec![4, 3, 2, 1],
        "history matches: one line per acknowledged switch, no gaps"
    );
}

#[tokio::test]
async fn kill_9_during_a_switch_storm_never_loses_an_acknowledged_switch() {
    let blue = Mock::start("v1", &[]).await;
    let green = Mock::start("v2", &[]).await;
    let mut r = Router::start(&static_service(&[&blue], &[&green], "")).await;
    let mut acked = 0u64;
    let mut last_live = String::new();
    for round in 0..4 {
        // Switch as fast as possible, and kill the router at a moment nobody chose.
        let kill_after = Duration::from_millis(80 + 37 * round);
        let started = Instant::now();
        while started.elapsed() < kill_after {
            let to = if last_live == "blue" { "green" } else { "blue" };
            let resp = r.switch(to).await;
            assert_eq!(resp.status, 200, "{}", resp.text());
            acked = resp.json()["generation"].as_u64().unwrap();
            last_live = to.to_string();
        }
        r.proc.kill9();
        r.spawn().await;
        let st = r.status().await;
        assert_eq!(st["generation"].as_u64().unwrap(), acked, "round {round}");
        assert_eq!(st["live"], last_live.as_str());
        let out = std::process::Command::new("sqlite3")
            .arg(r.dir.path().join("cutover.db"))
            .arg("PRAGMA integrity_check; SELECT count(*), count(DISTINCT generation), max(generation) FROM history;")
            .output()
            .expect("the sqlite3 shell is installed (bash .ci/run installs it)");
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            text,
            format!("ok\n{acked}|{acked}|{acked}\n"),
            "every acknowledged switch exactly once"
        );
    }
}

/// Both framings at once is how requests are smuggled past proxies (one side reads the
/// Content-Length, the other the chunked framing). RFC 9112 §6.3 lets a server refuse such a
/// request; cutover does: 400, the connection closed, and nothing reaches the upstream.
#[tokio::test]
async fn conflicting_content_length_and_transfer_encoding_cannot_smuggle() {
    let blue = Mock::start("v1", &[]).await;
    let green = Mock::start("v2", &[]).await;
    let r = Router::start(&static_service(&[&blue], &[&green], "")).await;
    assert_eq!(r.switch("blue").await.status, 200);
    let port = r.listen;
    let (resp, closed) = tokio::task::spawn_blocking(move || {
        raw(
            port,
            b"POST /mock/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 40\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nPOST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n\r\n",
        )
    })
    .await
    .unwrap();
    assert!(closed, "the connection is closed after the answer");
    assert!(resp.starts_with("HTTP/1.1 400"), "{resp}");
    assert_eq!(resp.matches("HTTP/1.1 ").count(), 1, "only one answer: {resp}");
    assert!(resp.contains("ambiguous message length"), "{resp}");
    let stats = blue.stats().await;
    assert_eq!(stats["model_requests"], 0, "nothing reached the model: {stats}");
    // Other framing tricks get the same treatment.
    for bad in [
        &b"POST /mock/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!"[..],
        b"POST /mock/echo HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
        b"POST /mock/echo HTTP/1.0\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"POST /mock/echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
        b"GET / HTTP/1.1\r\n\r\n",
    ] {
        let (resp, closed) = tokio::task::spawn_blocking(move || raw(port, bad)).await.unwrap();
        assert!(
            resp.starts_with("HTTP/1.1 400"),
            "{}: {resp}",
            String::from_utf8_lossy(bad)
        );
        assert!(closed, "{}", String::from_utf8_lossy(bad));
    }
    let (resp, _) = tokio::task::spawn_blocking(move || {
        raw(
            port,
            b"POST /mock/echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
        )
    })
    .await
    .unwrap();
    assert!(resp.starts_with("HTTP/1.1 501"), "{resp}");
}

#[tokio::test]
async fn malformed_requests_get_400() {
    let blue = Mock::start("v1", &[]).await;
    let green = Mock::start("v2", &[]).await;
    let r = Router::start(&static_service(&[&blue], &[&green], "")).await;
    assert_eq!(r.switch("blue").await.status, 200);
    let port = r.listen;
    let (resp, _) = tokio::task::spawn_blocking(move || raw(port, b"GARBAGE\r\n\r\n"))
        .await
        .unwrap();
    assert!(resp.starts_with("HTTP/1.1 400"), "{resp:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_cut_at_the_header_timeout_and_others_are_served() {
    let blue = Mock::start("v1", &[]).await;
    let green = Mock::start("v2", &[]).await;
    let extra = "limits = { header_read_timeout = \"2s\" }";
    let r = Router::start(&static_service(&[&blue], &[&green], extra)).await;
    assert_eq!(r.switch("blue").await.status, 200);
    let port = r.listen;
    let head = b"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n";
    // 100 slowloris connections, one header byte every 200 ms (16 s for the whole head).
    let alive = Arc::new(AtomicUsize::new(0));
    let (started_tx, started) = tokio::sync::oneshot::channel();
    let slow = tokio::task::spawn_blocking({
        let alive = alive.clone();
        move || {
            let mut conns: Vec<StdTcp> = (0..100)
                .map(|_| StdTcp::connect(("127.0.0.1", port)).unwrap())
                .collect();
            let mut started_tx = Some(started_tx);
            for (i, b) in head.iter().enumerate() {
                let n = conns.iter_mut().filter_map(|c| c.write_all(&[*b]).ok()).count();
                alive.store(n, Ordering::SeqCst);
                if let Some(tx) = started_tx.take() {
                    let _ = tx.send(());
                }
                if n == 0 {
                    return (Some(i), conns);
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            (None, conns)
        }
    });
    // A normal client is served while the 100 hold their connections open.
    started.await.unwrap();
    let resp = get(&r.url("/v1/models")).await.unwrap();
    assert_eq!(resp.status, 200);
    let open = alive.load(Ordering::SeqCst);
    assert!(open > 0, "answered only after the slow connections were cut");
    let (cut_at, conns) = slow.await.unwrap();
    let i = cut_at.expect("the slow connections were closed before they finished their headers");
    assert!(i < head.len(), "cut after {i} of {} bytes", head.len());
    // Closed by the proxy without a word: no answer was written to any of them.
    for mut c in conns {
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 256];
        let got = c.read(&mut buf);
        assert!(
            !matches!(got, Ok(n) if n > 0),
            "a cut connection got an answer: {:?}",
            String::from_utf8_lossy(&buf)
        );
    }
}

/// Files made immutable for the life of the guard (so a failing test leaves no undeletable files).
struct Immutable(Vec<std::path::PathBuf>);

impl Immutable {
    fn set(files: Vec<std::path::PathBuf>) -> Immutable {
        chattr("+i", &files);
        Immutable(files)
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        chattr("-i", &self.0);
    }
}

fn chattr(flag: &str, paths: &[std::path::PathBuf]) {
    for p in paths.iter().filter(|p| p.exists()) {
        let st = std::process::Command::new("chattr")
            .arg(flag)
            .arg(p)
            .status()
            .expect("chattr (e2fsprogs) is installed");
        assert!(
            st.success(),
            "chattr {flag} {} (the tests run as root in CI)",
            p.display()
        );
    }
}

#[tokio::test]
async fn unwritable_store_refuses_switches_and_releases_and_the_data_plane_keeps_serving() {
    let blue = Mock::start("v1", &[]).await;
    let green = Mock::start("v2", &[]).await;
    let r = Router::start(&static_service(&[&blue], &[&green], "")).await;
    assert_eq!(r.switch("blue").await.status, 200);
    // Immutable files: every write fails, as on a read-only or failing disk (root ignores
    // modes). Not the -shm file: SQLite maps it, and a write to a mapped immutable file is a
    // SIGBUS, which no real disk failure produces.
    let files: Vec<_> = ["cutover.db", "cutover.db-wal"]
        .iter()
        .map(|f| r.dir.path().join(f))
        .collect();
    let guard = Immutable::set(files);
    let refused = r.switch("green").await;
    let rel = r
        .api(Method::POST, "/v1/services/chat/releases", json!({"version": "v9"}))
        .await;
    let served = get(&r.url("/v1/models")).await.unwrap();
    drop(guard);
    assert_eq!(refused.status, 503, "{}", refused.text());
    assert_eq!(refused.json()["error"]["code"], "store_unavailable");
    assert!(refused.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("the change was not made"));
    assert_eq!(rel.status, 503, "{}", rel.text());
    assert_eq!(
        (served.status.as_u16(), served.header("x-cutover-color")),
        (200, "blue"),
        "still serving the live color"
    );
    let st = r.status().await;
    assert_eq!(
        (st["live"].as_str(), st["generation"].as_u64()),
        (Some("blue"), Some(1)),
        "nothing acknowledged that was not stored"
    );
    // Once the disk is back, so are switches.
    assert_eq!(r.switch("green").await.status, 200);
    assert_eq!(r.status().await["generation"], 2);
}

/// Makes the close an RST (SO_LINGER 0), as a crashed upstream's is. With a zero timeout the
/// drop does not block, which is what the deprecation warns about.
#[allow(deprecated)]
fn reset_on_drop(s: &tokio::net::TcpStream) {
    let _ = s.set_linger(Some(Duration::ZERO));
}

/// A misbehaving upstream: `mode` decides what it does with each connection.
async fn bad_upstream(mode: &'static str) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else { return };
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                loop {
                    let mut got = Vec::new();
                    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => got.extend_from_slice(&buf[..n]),
                        }
                    }
                    let text = String::from_utf8_lossy(&got).to_string();
                    if text.starts_with("GET /health") {
                        let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await;
                        continue;
                    }
                    match mode {
                        "malformed" => {
                            let _ = s.write_all(b"HTTP/1.1 abc\r\n\xff\xfe garbage\r\n\r\n").await;
                            return;
                        }
                        "reset_mid_body" => {
                            let _ = s
                                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\npartial...")
                                .await;
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            reset_on_drop(&s);
                            return;
                        }
                        "reset_mid_stream" => {
                            let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n").await;
                            let _ = s.write_all(b"10\r\ndata: {\"a\":1}\n\n\r\n").await;
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            reset_on_drop(&s);
                            return;
                        }
                        // Answers, then closes the keep-alive connection at once, as servers
                        // with short keep-alive timeouts do.
                        _ => {
                            let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nhi").await;
                            return;
                        }
                    }
                }
            });
        }
    });
    port
}

async fn router_with_blue_on(port: u16) -> (Router, Mock) {
    let green = Mock::start("v2", &[]).await;
    let cfg = format!(
        "[services.chat]\nlisten = \"{{listen}}\"\npreview_listen = \"{{preview}}\"\nhealth = {{ path = \"/health\", interval = \"200ms\" }}\n\
         [services.chat.blue]\nendpoints = [\"127.0.0.1:{port}\"]\nversion = \"v1\"\n[services.chat.green]\nendpoints = [\"{}\"]\nversion = \"v2\"\n",
        green.addr()
    );
    let r = Router::start(&cfg).await;
    assert_eq!(r.switch("blue").await.status, 200);
    (r, green)
}

#[tokio::test]
async fn malformed_upstream_response_is_a_clear_502() {
    let (r, _g) = router_with_blue_on(bad_upstream("malformed").await).await;
    let resp = get(&r.url("/x")).await.unwrap();
    assert_eq!(resp.status, 502);
    assert_eq!(resp.json()["error"]["code"], "upstream_bad_response", "{}", resp.text());
}

#[tokio::test]
async fn upstream_reset_mid_body_cuts_the_response_visibly_and_others_are_fine() {
    let (r, _g) = router_with_blue_on(bad_upstream("reset_mid_body").await).await;
    let resp = send(&http_client(), Method::GET, &r.url("/x"), &[], "").await;
    assert!(
        resp.is_err(),
        "a cut body must not look complete: {:?}",
        resp.map(|r| r.text())
    );
    // A stream reset mid-way ends with an error event the client can see.
    let (r2, _g2) = router_with_blue_on(bad_upstream("reset_mid_stream").await).await;
    let c = http_client();
    let req = http::Request::get(r2.url("/s"))
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let (text, cut) = read_text(c.request(req).await.unwrap()).await;
    let failed = cut.is_some();
    assert!(text.contains("data: {\"a\":1}"), "{text}");
    assert!(
        text.contains("event: error") && text.contains("upstream_stream_failed"),
        "{text}"
    );
    assert!(failed, "and the transfer itself ends in an error");
    let m = get(&r2.admin_url("/metrics")).await.unwrap().text();
    assert!(
        m.contains("cutover_aborted_bodies_total{service=\"chat\",color=\"blue\",version=\"v1\"} 1"),
        "{m}"
    );
}

#[tokio::test]
async fn upstream_closing_keep_alive_connections_costs_no_request() {
    let (r, _g) = router_with_blue_on(bad_upstream("close_after_each").await).await;
    let c = http_client();
    for i in 0..50 {
        let resp = send(&c, Method::POST, &r.url("/x"), &[], "{}").await.unwrap();
        assert_eq!(resp.status, 200, "request {i}: {}", resp.text());
        if i % 10 == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_cap_wait_and_the_cap_is_logged() {
    let blue = Mock::start("v1", &[]).await;
    let green = Mock::start("v2", &[]).await;
    let r = Router::start(&static_service(&[&blue], &[&green], "limits = { max_connections = 3 }")).await;
    assert_eq!(r.switch("blue").await.status, 200);
    let mut idle: Vec<StdTcp> = (0..3)
        .map(|_| StdTcp::connect(("127.0.0.1", r.listen)).unwrap())
        .collect();
    // Logged when the accept loop waits for a place: the three are accepted.
    wait_for("the cap to be reached", Duration::from_secs(10), || async {
        r.log().contains("connection cap reached").then_some(())
    })
    .await;
    let url = r.url("/v1/models");
    let waiting = tokio::spawn(async move { get(&url).await });
    // The fourth waits in the kernel's accept queue: connected, never accepted.
    let port = r.listen;
    wait_for(
        "a fourth connection in the accept queue",
        Duration::from_secs(10),
        || async move { (accept_queue(port) == Some(1)).then_some(()) },
    )
    .await;
    assert!(
        !waiting.is_finished(),
        "a fourth connection is not served while three are open"
    );
    idle.pop();
    let resp = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("served once a slot frees")
        .unwrap()
        .unwrap();
    assert_eq!(resp.status, 200);
}

/// A burst of new connections waits in the kernel's accept queue instead of having SYNs
/// dropped (a dropped SYN costs a client a 1 s retransmit). With the cap at 1 nothing is
/// accepted, so every one of 600 connects completes only if the queue holds them all
/// (`TcpListener::bind`'s default of 128 would not).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_connections_waits_in_a_deep_accept_queue() {
    let blue = Mock::start("v1", &[]).await;
    let green = Mock::start("v2", &[]).await;
    let r = Router::start(&static_service(&[&blue], &[&green], "limits = { max_connections = 1 }")).await;
    let _held = StdTcp::connect(("127.0.0.1", r.listen)).unwrap();
    wait_for("the cap to be reached", Duration::from_secs(10), || async {
        r.log().contains("connection cap reached").then_some(())
    })
    .await;
    let port = r.listen;
    let attempts: Vec<_> = (0..600)
        .map(|_| {
            tokio::spawn(async move {
                tokio::time::timeout(
                    Duration::from_millis(800),
                    tokio::net::TcpStream::connect(("127.0.0.1", port)),
                )
                .await
            })
        })
        .collect();
    let mut open = Vec::new();
    for a in attempts {
        if let Ok(Ok(s)) = a.await.unwrap() {
            open.push(s);
        }
    }
    assert_eq!(
        open.len(),
        600,
        "every connect completed at once, none waits for a SYN retransmit"
    );
    // And each is queued, none was dropped at the full queue after its handshake.
    assert_eq!(accept_queue(port), Some(600), "the listener's accept queue");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_admin_client_is_cut_at_the_header_timeout() {
    let blue = Mock::start("v1", &[]).await;
    let green = Mock::start("v2", &[]).await;
    let r = Router::start(&static_service(&[&blue], &[&green], "")).await;
    let port = r.admin;
    let (sent_tx, sent) = tokio::sync::oneshot::channel();
    let slow = tokio::task::spawn_blocking(move || {
        let mut s = StdTcp::connect(("127.0.0.1", port)).unwrap();
        // Longer than the admin listener's header timeout (10 s): a read that ends before
        // it is the server's doing.
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        s.write_all(b"GET /v1/services HTTP/1.1\r\nHost: x\r\n").unwrap();
        let _ = sent_tx.send(());
        let mut buf = [0u8; 1024];
        // The head never ends; the server must give up on it, not wait forever.
        s.read(&mut buf)
            .map(|n| String::from_utf8_lossy(&buf[..n]).into_owned())
    });
    sent.await.unwrap();
    assert_eq!(r.status().await["name"], "chat", "others are served meanwhile");
    let got = slow.await.unwrap();
    assert!(
        matches!(&got, Ok(text) if text.is_empty() || text.starts_with("HTTP/1.1 408")),
        "the server closed the connection (or answered 408), not our read timeout: {got:?}"
    );
}
