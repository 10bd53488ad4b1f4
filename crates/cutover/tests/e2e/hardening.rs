//! Faults, races and hostile input: each test fails if its guarantee breaks.

use std::io::{Read, Write};
use std::net::TcpStream as StdTcp;
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
            .output();
        if let Ok(out) = out {
            let text = String::from_utf8_lossy(&out.stdout);
            assert_eq!(
                text,
                format!("ok\n{acked}|{acked}|{acked}\n"),
                "every acknowledged switch exactly once"
            );
        }
    }
}

fn raw(port: u16, bytes: &[u8]) -> (String, bool) {
    let mut s = StdTcp::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(bytes).unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let closed = loop {
        match s.read(&mut chunk) {
            Ok(0) => break true,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(_) => break false,
        }
    };
    (String::from_utf8_lossy(&buf).into_owned(), closed)
}

/// Both framings at once is how requests are smuggled past proxies. hyper follows RFC 9112
/// §6.3: the body is framed by Transfer-Encoding alone, the Content-Length is dropped, and the
/// connection is closed after the answer. The guarantee tested: the upstream never sees the
/// ambiguous length, and the bytes after the first body are never served as a request.
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
    assert_eq!(
        resp.matches("HTTP/1.1 ").count(),
        1,
        "the smuggled second request was not served: {resp}"
    );
    let body = &resp[resp.find("\r\n\r\n").unwrap() + 4..];
    let body = body.trim_start_matches(|c: char| c.is_ascii_hexdigit()).trim();
    assert!(body.contains("\"body_bytes\":0"), "{resp}");
    assert!(
        !body.contains("\"content-length\":\"40\""),
        "the ambiguous length reached the upstream: {resp}"
    );
    assert_eq!(
        blue.stats().await["model_requests"],
        0,
        "the smuggled request never reached the model"
    );
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
    let extra = "limits = { header_read_timeout = \"1s\" }";
    let r = Router::start(&static_service(&[&blue], &[&green], extra)).await;
    assert_eq!(r.switch("blue").await.status, 200);
    let port = r.listen;
    // 100 slowloris connections, one header byte every 200 ms.
    let slow = tokio::task::spawn_blocking(move || {
        let mut conns: Vec<StdTcp> = (0..100)
            .map(|_| StdTcp::connect(("127.0.0.1", port)).unwrap())
            .collect();
        let started = Instant::now();
        let head = b"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n";
        let mut cut_at = None;
        for (i, b) in head.iter().enumerate() {
            let mut alive = 0;
            for c in conns.iter_mut() {
                if c.write_all(&[*b]).is_ok() {
                    alive += 1;
                }
            }
            if alive == 0 {
                cut_at = Some((i, started.elapsed()));
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        cut_at
    });
    // Meanwhile a normal client is served promptly.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t = Instant::now();
    let resp = get(&r.url("/v1/models")).await.unwrap();
    assert_eq!(resp.status, 200);
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "normal client waited {:?}",
        t.elapsed()
    );
    let cut = slow.await.unwrap();
    let (_, when) = cut.expect("the slow connections were closed before they finished their headers");
    assert!(when < Duration::from_secs(6), "closed after {when:?}");
}
