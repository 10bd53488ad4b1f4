//! What the data plane does with a request: headers, protocols, errors, retries, limits.

use std::process::Command;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};

use crate::support::*;

#[tokio::test]
async fn nothing_live_answers_503_with_a_json_reason() {
    let blue = Mock::start("v1", &[]).await;
    let green = Mock::start("v2", &[]).await;
    let r = Router::start(&static_service(&[&blue], &[&green], "")).await;
    let resp = get(&r.url("/v1/models")).await.unwrap();
    assert_eq!(resp.status, 503);
    let v = resp.json();
    assert_eq!(v["error"]["code"], "no_live_color");
    assert!(v["error"]["message"].as_str().unwrap().contains("no live color"));
}

#[tokio::test]
async fn proxy_headers_are_set_and_hop_by_hop_headers_removed() {
    let blue = Mock::start("v1", &[]).await;
    let green = Mock::start("v2", &[]).await;
    let r = Router::start(&static_service(&[&blue], &[&green], "")).await;
    assert_eq!(r.switch("blue").await.status, 200);
    let c = http_client();
    let resp = send(
        &c,
        Method::POST,
        &r.url("/mock/echo?x=1"),
        &[
            ("host", "models.example"),
            ("connection", "x-secret"),
            ("x-secret", "drop me"),
            ("x-forwarded-for", "10.0.0.1"),
            ("x-kept", "yes"),
        ],
        "hello",
    )
    .await
    .unwrap();
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("x-cutover-color"), "blue");
    assert_eq!(resp.header("x-cutover-version"), "v1");
    let v = resp.json();
    let h = &v["headers"];
    assert_eq!(v["uri"], "/mock/echo?x=1");
    assert_eq!(v["body_bytes"], 5);
    // The client is not a trusted proxy: its own X-Forwarded-For is replaced, not extended.
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-forwarded-host"], "models.example");
    assert_eq!(h["host"], "models.example");
    assert_eq!(h["x-kept"], "yes");
    assert!(
        h.get("x-secret").is_none(),
        "header named in Connection must not be forwarded: {h}"
    );
}

#[tokio::test]
async fn http2_prior_knowledge_client_with_curl() {
    let blue = Mock::start("v1", &[]).await;
    let green = Mock::start("v2", &[]).await;
    let r = Router::start(&static_service(&[&blue], &[&green], "")).await;
    assert_eq!(r.switch("green").await.status, 200);
    let out = Command::new("curl")
        .args([
            "-sS",
            "-i",
            "--http2-prior-knowledge",
            "-d",
            r#"{"stream":true,"max_tokens":3}"#,
        ])
        .arg(r.url("/v1/chat/completions"))
        .output()
        .expect("curl is installed (.ci/run installs it)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("HTTP/2 200"), "{text}");
    assert!(text.contains("x-cutover-color: green"), "{text}");
    assert!(text.contains("data: [DONE]"), "{text}");
    // The preview listener serves the idle color, over HTTP/2 as well.
    let out = Command::new("curl")
        .args(["-sS", "-i", "--http2-prior-knowledge"])
        .arg(r.preview_url("/v1/models"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("x-cutover-color: blue"), "{text}");
}

#[tokio::test]
async fn h2c_upstreams_carry_requests_and_streams() {
    let blue = Mock::start("v1", &[]).await;
    let green = Mock::start("v2", &[]).await;
    let r = Router::start(&static_service(&[&blue], &[&green], "upstream_protocol = \"h2c\"")).await;
    assert_eq!(r.switch("blue").await.status, 200);
    let resp = get(&r.url("/mock/echo")).await.unwrap();
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.json()["http_version"], "HTTP/2.0");
    let c = http_client();
    let req = Request::post(r.url("/v1/chat/completions"))
        .body(Full::new(Bytes::from(r#"{"stream":true,"max_tokens":5}"#)))
        .unwrap();
    let (events, err) = read_stream(c.request(req).await.unwrap()).await;
    assert_eq!(err, None);
    assert_eq!(stream_versions(&events).unwrap(), vec!["v1"; 6]);
}

#[tokio::test]
async fn one_dead_endpoint_of_the_live_color_costs_no_request() {
    let mut b1 = Mock::start("v1", &[]).await;
    let b2 = Mock::start("v1", &[]).await;
    let green = Mock::start("v2", &[]).await;
    let r = Router::start(&static_service(&[&b1, &b2], &[&green], "")).await;
    assert_eq!(r.switch("blue").await.status, 200);
    b1.proc.kill9();
    // Before and after health checks notice: connect failures move to the other blue endpoint.
    let c = http_client();
    for i in 0..60 {
        let resp = send(&c, Method::POST, &r.url("/v1/chat/completions"), &[], "{}")
            .await
            .unwrap();
        assert_eq!(resp.status, 200, "request {i}: {}", resp.text());
        assert_eq!(resp.header("x-cutover-color"), "blue", "never the other color");
        if i == 30 {
            let dead = b1.addr();
            wait_for(
                "health checks to mark the dead endpoint",
                Duration::from_secs(10),
                || async {
                    let st = r.status().await;
                    let eps = st["colors"]["blue"]["endpoints"]
                        .as_array()
                        .cloned()
                        .unwrap_or_default();
                    eps.iter()
                        .any(|e| e["address"] == dead.as_str() && e["health"] == "unhealthy")
                        .then_some(())
                },
            )
            .await;
        }
    }
    assert!(b2.stats().await["model_requests"].as_u64().unwrap() >= 60);
    assert_eq!(green.stats().await["model_requests"], 0);
    let st = r.status().await;
    assert_eq!(st["colors"]["blue"]["endpoints"][0]["health"], "unhealthy");
}

#[tokio::test]
async fn all_endpoints_down_gives_a_json_502_not_a_hang() {
    let mut blue = Mock::start("v1", &[]).await;
    let green = Mock::start("v2", &[]).await;
    let r = Router::start(&static_service(&[&blue], &[&green], "")).await;
    assert_eq!(r.switch("blue").await.status, 200);
    blue.proc.kill9();
    for _ in 0..3 {
        let resp = get(&r.url("/v1/models")).await.unwrap();
        assert_eq!(resp.status, 502);
        assert_eq!(resp.json()["error"]["code"], "upstream_connect_failed");
        assert_eq!(resp.header("x-cutover-color"), "blue", "never the other color");
    }
    // Health checks mark it down; requests still try it (panic routing) and fail fast.
    wait_for("health to mark blue down", Duration::from_secs(5), || async {
        (r.status().await["colors"]["blue"]["endpoints"][0]["health"] == "unhealthy").then_some(())
    })
    .await;
    let resp = get(&r.url("/v1/models")).await.unwrap();
    assert_eq!(resp.status, 502);
    assert_eq!(green.stats().await["model_requests"], 0);
}

#[tokio::test]
async fn endpoints_marked_unhealthy_that_still_answer_keep_serving() {
    // Health says "down" (the probe path fails) but the server answers: panic routing keeps
    // traffic flowing instead of turning a flaky probe into an outage.
    let blue = Mock::start("v1", &["--fail-health"]).await;
    let green = Mock::start("v2", &[]).await;
    let r = Router::start(&static_service(&[&blue], &[&green], "")).await;
    let forced = r
        .api(
            http::Method::POST,
            "/v1/services/chat/switch",
            serde_json::json!({"to": "blue", "force": true}),
        )
        .await;
    assert_eq!(forced.status, 200);
    wait_for("health to mark blue down", Duration::from_secs(5), || async {
        (r.status().await["colors"]["blue"]["endpoints"][0]["health"] == "unhealthy").then_some(())
    })
    .await;
    let resp = get(&r.url("/v1/models")).await.unwrap();
    assert_eq!((resp.status.as_u16(), resp.header("x-cutover-color")), (200, "blue"));
}

#[tokio::test]
async fn slow_first_byte_is_a_504_and_fast_requests_are_unaffected() {
    let blue = Mock::start("v1", &[]).await;
    let green = Mock::start("v2", &[]).await;
    let extra = "limits = { first_byte_timeout = \"400ms\" }";
    let r = Router::start(&static_service(&[&blue], &[&green], extra)).await;
    assert_eq!(r.switch("blue").await.status, 200);
    let c = http_client();
    let url = r.url("/v1/chat/completions");
    let slow = send(&c, Method::POST, &url, &[("x-mock-delay", "3s")], "{}");
    let fast = send(&c, Method::POST, &url, &[], "{}");
    let (slow, fast) = tokio::join!(slow, fast);
    let slow = slow.unwrap();
    assert_eq!(slow.status, 504, "{}", slow.text());
    assert_eq!(slow.json()["error"]["code"], "upstream_timeout");
    assert_eq!(fast.unwrap().status, 200);
}

#[tokio::test]
async fn client_disconnect_mid_stream_cancels_the_upstream_request() {
    let blue = Mock::start("v1", &["--token-interval", "20ms"]).await;
    let green = Mock::start("v2", &[]).await;
    let r = Router::start(&static_service(&[&blue], &[&green], "")).await;
    assert_eq!(r.switch("blue").await.status, 200);

    let (mut send, conn) = h1_connection(r.listen).await;
    let req = Request::post("/v1/chat/completions")
        .header("host", "chat")
        .body(Full::new(Bytes::from(r#"{"stream":true,"max_tokens":1000}"#)))
        .unwrap();
    let mut body = send.send_request(req).await.unwrap().into_body();
    for _ in 0..3 {
        body.frame().await.unwrap().unwrap();
    }
    // The client goes away: drop everything, which closes the socket.
    drop(body);
    drop(send);
    conn.abort();

    wait_for(
        "the model server to see its stream cancelled",
        Duration::from_secs(5),
        || async {
            let s = blue.stats().await;
            (s["streams_cancelled"] == 1).then_some(())
        },
    )
    .await;
    assert_eq!(blue.stats().await["streams_completed"], 0);
    wait_for("blue in-flight back to 0", Duration::from_secs(5), || async {
        (r.status().await["colors"]["blue"]["in_flight"] == 0).then_some(())
    })
    .await;
}

#[tokio::test]
async fn oversized_headers_get_431_and_oversized_bodies_413() {
    let blue = Mock::start("v1", &[]).await;
    let green = Mock::start("v2", &[]).await;
    let extra = "limits = { max_header_bytes = 8192, max_body_bytes = 1000 }";
    let r = Router::start(&static_service(&[&blue], &[&green], extra)).await;
    assert_eq!(r.switch("blue").await.status, 200);
    let big = "x".repeat(20_000);
    let resp = send(
        &http_client(),
        Method::GET,
        &r.url("/v1/models"),
        &[("x-big", &big)],
        "",
    )
    .await
    .unwrap();
    assert_eq!(resp.status, 431);
    let resp = send(
        &http_client(),
        Method::POST,
        &r.url("/v1/chat/completions"),
        &[],
        &"y".repeat(5000),
    )
    .await
    .unwrap();
    assert_eq!(resp.status, 413);
    assert_eq!(resp.json()["error"]["code"], "body_too_large");
    assert_eq!(blue.stats().await["model_requests"], 0, "nothing reached the model");
    // A chunked body has no length up front: it is cut where it passes the limit.
    let port = r.listen;
    let resp = tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let _ = s.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n");
        for _ in 0..10 {
            let _ = s.write_all(b"200\r\n");
            let _ = s.write_all(&[b'z'; 512]);
            let _ = s.write_all(b"\r\n");
        }
        let _ = s.write_all(b"0\r\n\r\n");
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    })
    .await
    .unwrap();
    assert!(resp.starts_with("HTTP/1.1 413"), "{resp}");
    assert!(resp.contains("body_too_large"), "{resp}");
}

/// gRPC over h2c: an h2c upstream's trailers (`grpc-status`) reach an HTTP/2 client intact,
/// and `te: trailers` reaches the upstream.
#[tokio::test]
async fn grpc_style_trailers_pass_through_h2c_both_ways() {
    use http_body_util::BodyExt;

    // A tiny h2c "gRPC" server: echoes whether it saw `te: trailers`, then sends trailers.
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else { return };
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|req: http::Request<hyper::body::Incoming>| async move {
                    let te = req
                        .headers()
                        .get("te")
                        .map(|v| v.to_str().unwrap_or("").to_string())
                        .unwrap_or_default();
                    let mut trailers = http::HeaderMap::new();
                    trailers.insert("grpc-status", "0".parse().unwrap());
                    trailers.insert("grpc-message", "ok".parse().unwrap());
                    let body = Trailered {
                        data: Some(Bytes::from(format!("te={te}"))),
                        trailers: Some(trailers),
                    };
                    let mut resp = http::Response::new(body);
                    resp.headers_mut()
                        .insert("content-type", "application/grpc".parse().unwrap());
                    Ok::<_, std::convert::Infallible>(resp)
                });
                let _ = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                    .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    let green = Mock::start("v2", &[]).await;
    let cfg = format!(
        "[services.chat]\nlisten = \"{{listen}}\"\nupstream_protocol = \"h2c\"\nhealth = {{ path = \"/health\", interval = \"10m\" }}\n\
         [services.chat.blue]\nendpoints = [\"127.0.0.1:{port}\"]\nversion = \"v1\"\n[services.chat.green]\nendpoints = [\"{}\"]\nversion = \"v2\"\n",
        green.addr()
    );
    let r = Router::start(&cfg).await;
    let forced = r
        .api(
            Method::POST,
            "/v1/services/chat/switch",
            serde_json::json!({"to": "blue", "force": true}),
        )
        .await;
    assert_eq!(forced.status, 200);

    let stream = tokio::net::TcpStream::connect(("127.0.0.1", r.listen)).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
        .handshake::<_, Full<Bytes>>(hyper_util::rt::TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::post(format!("http://127.0.0.1:{}/model.Generate/Stream", r.listen))
        .header("te", "trailers")
        .header("content-type", "application/grpc")
        .body(Full::new(Bytes::from_static(b"\0\0\0\0\0")))
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.headers()["x-cutover-color"], "blue");
    let collected = resp.into_body().collect().await.unwrap();
    let trailers = collected.trailers().cloned().expect("trailers arrived");
    assert_eq!(trailers["grpc-status"], "0");
    assert_eq!(trailers["grpc-message"], "ok");
    assert_eq!(collected.to_bytes(), Bytes::from_static(b"te=trailers"));
}

/// A body of one data frame followed by trailers, as a gRPC server sends.
struct Trailered {
    data: Option<Bytes>,
    trailers: Option<http::HeaderMap>,
}

impl hyper::body::Body for Trailered {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        use hyper::body::Frame;
        if let Some(d) = self.data.take() {
            return std::task::Poll::Ready(Some(Ok(Frame::data(d))));
        }
        std::task::Poll::Ready(self.trailers.take().map(|t| Ok(Frame::trailers(t))))
    }
}

/// With one endpoint of four down, the three live ones share its load evenly (round-robin
/// handed all of a dead endpoint's turns to its neighbour: 60/30/30 was seen).
#[tokio::test]
async fn a_down_endpoint_s_share_is_spread_over_the_live_ones() {
    let mut dead = Mock::start("v1", &[]).await;
    let live = [
        Mock::start("v1", &[]).await,
        Mock::start("v1", &[]).await,
        Mock::start("v1", &[]).await,
    ];
    let green = Mock::start("v2", &[]).await;
    let blue: Vec<&Mock> = std::iter::once(&dead).chain(live.iter()).collect();
    let r = Router::start(&static_service(&blue, &[&green], "")).await;
    assert_eq!(r.switch("blue").await.status, 200);
    dead.proc.kill9();
    wait_for(
        "health to mark the dead endpoint down",
        Duration::from_secs(10),
        || async { (r.status().await["colors"]["blue"]["endpoints"][0]["health"] == "unhealthy").then_some(()) },
    )
    .await;
    let before: Vec<u64> = model_requests_of(&live).await;
    let c = http_client();
    for i in 0..300 {
        let resp = send(&c, Method::POST, &r.url("/v1/chat/completions"), &[], "{}")
            .await
            .unwrap();
        assert_eq!(resp.status, 200, "request {i}: {}", resp.text());
    }
    let after = model_requests_of(&live).await;
    let st = r.status().await;
    for e in st["colors"]["blue"]["endpoints"].as_array().unwrap() {
        assert_eq!(e["in_flight"], 0, "every endpoint's requests ended: {st}");
    }
    let shares: Vec<u64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
    assert_eq!(shares.iter().sum::<u64>(), 300, "{shares:?}");
    for s in &shares {
        assert!(
            (80..=120).contains(s),
            "uneven shares over the live endpoints: {shares:?}"
        );
    }
}

async fn model_requests_of(mocks: &[Mock]) -> Vec<u64> {
    let mut v = Vec::new();
    for m in mocks {
        v.push(m.stats().await["model_requests"].as_u64().unwrap());
    }
    v
}

/// A client's oversized chunked body on an h2c service is the client's mistake: 413, and not
/// counted against the color (it came back as 502 `upstream_failed`, an upstream failure
/// that verification reads, so a client could roll back a good release).
#[tokio::test]
async fn an_oversized_body_on_an_h2c_service_is_a_413_not_an_upstream_failure() {
    let blue = Mock::start("v1", &[]).await;
    let green = Mock::start("v2", &[]).await;
    let extra = "upstream_protocol = \"h2c\"\nlimits = { max_body_bytes = 1000 }";
    let r = Router::start(&static_service(&[&blue], &[&green], extra)).await;
    assert_eq!(r.switch("blue").await.status, 200);
    for h2 in [false, true] {
        // A streamed body with no length up front, so it is cut where it passes the limit.
        let req = Request::post(r.url("/v1/chat/completions"))
            .body(Chunks(8, 512))
            .unwrap();
        let resp = if h2 {
            let c = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .http2_only(true)
                .build_http();
            c.request(req).await.unwrap()
        } else {
            let c = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
            c.request(req).await.unwrap()
        };
        let status = resp.status();
        let (text, _) = read_text(resp).await;
        assert_eq!(status, 413, "h2 client: {h2}: {text}");
        assert!(text.contains("body_too_large"), "{text}");
    }
    let m = get(&r.admin_url("/metrics")).await.unwrap().text();
    let blue_failures: Vec<&str> = m
        .lines()
        .filter(|l| l.starts_with("cutover_upstream_failures_total") && l.contains("color=\"blue\""))
        .collect();
    assert_eq!(blue_failures.len(), 1, "the counter is exported: {blue_failures:?}");
    assert!(
        !m.lines().any(|l| l.starts_with("cutover_upstream_failures_total")
            && l.contains("color=\"blue\"")
            && !l.ends_with(" 0")),
        "a client's mistake counted as an upstream failure:\n{}",
        m.lines()
            .filter(|l| l.contains("upstream_failures"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// `.0` chunks of `.1` bytes, sent as a stream (no Content-Length).
struct Chunks(usize, usize);

impl hyper::body::Body for Chunks {
    type Data = Bytes;
    type Error = std::io::Error;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        if self.0 == 0 {
            return std::task::Poll::Ready(None);
        }
        self.0 -= 1;
        let size = self.1;
        std::task::Poll::Ready(Some(Ok(hyper::body::Frame::data(Bytes::from(vec![b'z'; size])))))
    }
}

/// `limits.request_timeout` bounds a live stream too: cut where it stands, with an error
/// event the client can read, on both engines (the relay's one timer per response).
#[tokio::test]
async fn a_stream_past_request_timeout_is_cut_with_an_error_event_on_both_engines() {
    let blue = Mock::start("v1", &["--token-interval", "100ms"]).await;
    let green = Mock::start("v2", &[]).await;
    for engine in ["own", "hyper"] {
        let extra = format!("http1_engine = \"{engine}\"\nlimits = {{ request_timeout = \"1s\" }}");
        let r = Router::start(&static_service(&[&blue], &[&green], &extra)).await;
        assert_eq!(r.switch("blue").await.status, 200);
        let out = Command::new("curl")
            .args([
                "-sN",
                "--max-time",
                "20",
                "-X",
                "POST",
                "-d",
                r#"{"stream":true,"max_tokens":40}"#,
            ])
            .arg(r.url("/v1/chat/completions"))
            .output()
            .expect("curl is installed (.ci/run installs it)");
        let text = String::from_utf8_lossy(&out.stdout);
        let chunks = text.matches("chat.completion.chunk").count();
        // 40 tokens 100 ms apart take 4 s: cut after about 10, never run to the end.
        assert!((1..40).contains(&chunks), "{engine}: {chunks} chunks: {text}");
        assert!(!text.contains("[DONE]"), "{engine}: {text}");
        assert!(
            text.contains("event: error") && text.contains("request timeout"),
            "{engine}: {text}"
        );
        assert!(!out.status.success(), "{engine}: curl sees the transfer cut: {text}");
    }
}
