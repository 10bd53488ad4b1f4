//! Switches under load: no request fails, none mixes versions, and the first request after an
//! acknowledged switch already lands on the new color.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::Full;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switch_storm_under_load_fails_no_request_and_mixes_no_versions() {
    let blue = Mock::start("v1", &["--token-interval", "2ms"]).await;
    let green = Mock::start("v2", &["--token-interval", "2ms"]).await;
    let r = Arc::new(Router::start(&static_service(&[&blue], &[&green], "")).await);
    assert_eq!(r.switch("blue").await.status, 200);

    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(Mutex::new(Vec::<String>::new()));
    let (plain_ok, streams_ok) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut workers = Vec::new();
    for w in 0..8 {
        let (r, stop, errors, plain_ok, streams_ok) = (
            r.clone(),
            stop.clone(),
            errors.clone(),
            plain_ok.clone(),
            streams_ok.clone(),
        );
        workers.push(tokio::spawn(async move {
            let c = http_client();
            let streaming = w % 3 == 0;
            while !stop.load(Relaxed) {
                let body = if streaming {
                    r#"{"stream":true,"max_tokens":10}"#
                } else {
                    r#"{"max_tokens":2}"#
                };
                let req = Request::post(r.url("/v1/chat/completions"))
                    .body(Full::new(Bytes::from(body)))
                    .unwrap();
                let resp = match c.request(req).await {
                    Ok(resp) => resp,
                    Err(e) => {
                        errors.lock().unwrap().push(format!("request failed: {e:?}"));
                        continue;
                    }
                };
                if resp.status() != 200 {
                    errors.lock().unwrap().push(format!("status {}", resp.status()));
                    continue;
                }
                let header_version = resp.headers()["x-cutover-version"].to_str().unwrap().to_string();
                if streaming {
                    let (events, err) = read_stream(resp).await;
                    if let Some(e) = err {
                        errors.lock().unwrap().push(format!("stream cut: {e}"));
                        continue;
                    }
                    match stream_versions(&events) {
                        Ok(vs) if vs.len() == 11 && vs.iter().all(|v| *v == header_version) => {
                            streams_ok.fetch_add(1, Relaxed);
                        }
                        Ok(vs) => errors
                            .lock()
                            .unwrap()
                            .push(format!("stream mixed or short: {vs:?} vs {header_version}")),
                        Err(e) => errors.lock().unwrap().push(e),
                    }
                } else {
                    use http_body_util::BodyExt;
                    let body = resp.into_body().collect().await.unwrap().to_bytes();
                    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
                    if v["model"] != header_version.as_str() {
                        errors
                            .lock()
                            .unwrap()
                            .push(format!("body from {} but header says {header_version}", v["model"]));
                    } else {
                        plain_ok.fetch_add(1, Relaxed);
                    }
                }
            }
        }));
    }

    wait_for("traffic to flow", Duration::from_secs(10), || async {
        (plain_ok.load(Relaxed) > 10).then_some(())
    })
    .await;
    let probe = http_client();
    let started = Instant::now();
    let switches = 200;
    for i in 0..switches {
        let to = if i % 2 == 0 { "green" } else { "blue" };
        let s = r.switch(to).await;
        assert_eq!(s.status, 200, "switch {i}: {}", s.text());
        assert_eq!(s.json()["generation"], i + 2);
        // The very next request, on a pooled keep-alive connection, must see the new color.
        let after = send(&probe, Method::GET, &r.url("/v1/models"), &[], "").await.unwrap();
        assert_eq!(after.header("x-cutover-color"), to, "first request after switch {i}");
    }
    let elapsed = started.elapsed();
    stop.store(true, Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    let errors = errors.lock().unwrap().clone();
    eprintln!(
        "switch storm: {switches} switches in {elapsed:?} ({:.0}/s), {} plain + {} streams ok, {} errors",
        switches as f64 / elapsed.as_secs_f64(),
        plain_ok.load(Relaxed),
        streams_ok.load(Relaxed),
        errors.len()
    );
    assert!(
        errors.is_empty(),
        "failures during the storm: {:?}",
        &errors[..errors.len().min(10)]
    );
    assert!(
        plain_ok.load(Relaxed) > 100 && streams_ok.load(Relaxed) > 10,
        "too little load to mean anything"
    );
    let st = r.status().await;
    assert_eq!(st["generation"], switches + 1);
    // A request leaves in-flight when the proxy is done with it, a moment after its client
    // read the last byte: wait for the counts instead of reading them at once.
    wait_for("every request to leave in-flight", Duration::from_secs(10), || async {
        let st = r.status().await;
        (st["colors"]["blue"]["in_flight"] == 0 && st["colors"]["green"]["in_flight"] == 0).then_some(())
    })
    .await;
}

#[tokio::test]
async fn keep_alive_connection_follows_the_switch() {
    let blue = Mock::start("v1", &[]).await;
    let green = Mock::start("v2", &[]).await;
    let r = Router::start(&static_service(&[&blue], &[&green], "")).await;
    assert_eq!(r.switch("blue").await.status, 200);

    // One TCP connection, opened before the switch, used for both requests.
    let (mut send, conn) = h1_connection(r.listen).await;
    let req = || {
        Request::get("/v1/models")
            .header("host", "chat")
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    let first = send.send_request(req()).await.unwrap();
    assert_eq!(first.headers()["x-cutover-color"], "blue");
    http_body_util::BodyExt::collect(first.into_body()).await.unwrap();

    assert_eq!(r.switch("green").await.status, 200);
    send.ready().await.unwrap();
    let second = send.send_request(req()).await.unwrap();
    assert_eq!(second.headers()["x-cutover-color"], "green");
    assert_eq!(second.headers()["x-cutover-version"], "v2");
    assert!(!conn.is_finished(), "the same connection carried both requests");
}

#[tokio::test]
async fn long_stream_started_on_blue_finishes_on_blue_after_switch() {
    let blue = Mock::start("v1", &["--token-interval", "20ms"]).await;
    let green = Mock::start("v2", &[]).await;
    let r = Router::start(&static_service(&[&blue], &[&green], "")).await;
    assert_eq!(r.switch("blue").await.status, 200);

    let c = http_client();
    let req = Request::post(r.url("/v1/chat/completions"))
        .body(Full::new(Bytes::from(r#"{"stream":true,"max_tokens":100}"#)))
        .unwrap();
    let resp = c.request(req).await.unwrap();
    assert_eq!(resp.headers()["x-cutover-color"], "blue");
    let reader = tokio::spawn(read_stream(resp));

    // The stream counts while it runs.
    wait_for(
        "the stream to count in blue's in-flight",
        Duration::from_secs(10),
        || async { (r.status().await["colors"]["blue"]["in_flight"] == 1).then_some(()) },
    )
    .await;
    assert_eq!(r.switch("green").await.status, 200);
    let after = get(&r.url("/v1/models")).await.unwrap();
    assert_eq!(after.header("x-cutover-color"), "green");

    let (events, err) = reader.await.unwrap();
    assert_eq!(err, None);
    let versions = stream_versions(&events).unwrap();
    assert_eq!(versions.len(), 101);
    assert!(versions.iter().all(|v| v == "v1"), "every chunk from v1: {versions:?}");
    wait_for("blue in-flight back to 0", Duration::from_secs(5), || async {
        (r.status().await["colors"]["blue"]["in_flight"] == 0).then_some(())
    })
    .await;
}
