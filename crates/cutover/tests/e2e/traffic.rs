//! Progressive traffic (`traffic = canary | linear`), sticky keys and the header route,
//! through the real binary with real mock-model upstreams: the split's statistics, a breach
//! at a step, streams across steps, keys that stay on their color, a testers' header.

use std::time::Duration;

use bytes::Bytes;
use cutover_proxy::split::{bucket_of, fnv};
use http::{Method, Request};
use http_body_util::Full;
use serde_json::{json, Value};

use crate::support::*;

/// A static service, blue (v1) live, green (v2) idle, with `release` as its release table.
async fn router(green_args: &[&str], release: &str) -> (Router, Mock, Mock) {
    let blue = Mock::start("v1", &[]).await;
    let green = Mock::start("v2", green_args).await;
    let r = Router::start(&format!(
        "{}\n[services.chat.release]\n{release}\n",
        static_service(&[&blue], &[&green], "")
    ))
    .await;
    assert_eq!(r.switch("blue").await.status, 200);
    (r, blue, green)
}

/// Waits until the release's current step gives green `weight` percent.
async fn wait_weight(r: &Router, weight: u64) -> Value {
    wait_for(&format!("green at {weight}%"), Duration::from_secs(30), || async {
        let st = r.status().await;
        (st["colors"]["green"]["weight"] == weight).then_some(st)
    })
    .await
}

/// A user key whose bucket is in `range`: the test knows where the key goes at each weight.
fn key_in(range: std::ops::Range<u8>, skip: usize) -> String {
    (0..)
        .map(|i| format!("user-{i}"))
        .filter(|k| range.contains(&bucket_of(fnv(k.as_bytes()))))
        .nth(skip)
        .unwrap()
}

#[tokio::test]
async fn a_10_percent_canary_splits_10k_requests_within_binomial_bounds_and_abort_returns_all() {
    let (r, _b, _g) = router(&[], "traffic = { canary = { percent = 10, bake = \"10m\" } }").await;
    let id = r.release("v2").await;
    let st = wait_weight(&r, 10).await;
    assert_eq!(st["colors"]["blue"]["weight"], 90);
    assert_eq!(st["traffic"], "canary");
    let c = http_client();
    let (n, workers) = (10_000u64, 8u64);
    let mut tasks = Vec::new();
    for _ in 0..workers {
        let (c, url) = (c.clone(), r.url("/v1/models"));
        tasks.push(tokio::spawn(async move {
            let mut green = 0u64;
            for _ in 0..n / workers {
                let resp = send(&c, Method::GET, &url, &[], "").await.unwrap();
                assert_eq!(resp.status, 200);
                green += u64::from(resp.header("x-cutover-color") == "green");
            }
            green
        }));
    }
    let mut green = 0;
    for t in tasks {
        green += t.await.unwrap();
    }
    // Binomial(10000, 0.1): mean 1000, σ = 30. The draw is unseeded: 5σ either side, so
    // chance fails it one run in 1.7 million (3σ: one in 370); 8% or 12% still fail.
    assert!((850..=1150).contains(&green), "{green} of {n} on green");
    let doc = r.release_doc(id).await;
    assert_eq!(
        (doc["phase"].as_str(), doc["weight"].as_u64()),
        (Some("stepping"), Some(10))
    );
    let m = get(&r.admin_url("/metrics")).await.unwrap().text();
    assert!(
        m.contains("cutover_traffic_weight{service=\"chat\",color=\"green\",version=\"v2\"} 10"),
        "{m}"
    );
    let abort = r
        .api(
            Method::POST,
            &format!("/v1/services/chat/releases/{id}/abort"),
            json!({}),
        )
        .await;
    assert_eq!(abort.status, 200, "{}", abort.text());
    let d = r.wait_end(id, Duration::from_secs(20)).await;
    assert_eq!(d["outcome"], "aborted", "{d}");
    assert_eq!(d["steps"][0]["result"], "aborted", "{d}");
    let st = r.status().await;
    assert_eq!(
        (st["live"].as_str(), st["colors"]["green"]["weight"].as_u64()),
        (Some("blue"), Some(0))
    );
    for _ in 0..50 {
        let resp = send(&c, Method::GET, &r.url("/v1/models"), &[], "").await.unwrap();
        assert_eq!(resp.header("x-cutover-color"), "blue", "all back on the old color");
    }
    let h = r
        .api(Method::GET, "/v1/services/chat/history", Value::Null)
        .await
        .json();
    let kinds: Vec<&str> = h["history"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["kind"].as_str())
        .collect();
    assert!(
        kinds.contains(&"stepped") && kinds.contains(&"rolled_back"),
        "{kinds:?}"
    );
}

#[tokio::test]
async fn a_breach_at_step_2_of_linear_returns_all_to_the_old_color_with_no_failed_request() {
    // Green answers correctly but slowly: a latency breach, so no client sees an error. The
    // traffic's keys have buckets in [20, 40): on blue at step 1 (20%), on green at step 2.
    let release = "traffic = { linear = { step = 20, interval = \"3s\" } }\nsticky = { header = \"x-user-id\" }\n\
                   [services.chat.release.verify]\nbake = \"30s\"\nmin_requests = 5\nmax_p99_latency = \"150ms\"\non_inconclusive = \"complete\"\n";
    let (r, _b, _g) = router(&["--latency", "300ms"], release).await;
    let keys: Vec<String> = (0..8).map(|i| key_in(20..40, i)).collect();
    let id = r.release("v2").await;
    wait_weight(&r, 20).await;
    let c = http_client();
    let mut seen = std::collections::BTreeMap::<String, Vec<String>>::new();
    let mut failed = Vec::new();
    let d = loop {
        // One request per key at once: enough of the step's share in a few hundred ms.
        let round: Vec<_> = keys
            .iter()
            .map(|k| {
                let (c, url, k) = (c.clone(), r.url("/v1/chat/completions"), k.clone());
                tokio::spawn(async move {
                    let resp = send(&c, Method::POST, &url, &[("x-user-id", &k)], "{}").await;
                    (k, resp)
                })
            })
            .collect();
        for t in round {
            match t.await.unwrap() {
                (k, Ok(resp)) if resp.status == 200 => seen
                    .entry(k)
                    .or_default()
                    .push(resp.header("x-cutover-color").to_string()),
                (_, Ok(resp)) => failed.push(format!("{} {}", resp.status, resp.text())),
                (_, Err(e)) => failed.push(e),
            }
        }
        let d = r.release_doc(id).await;
        if !d["outcome"].is_null() {
            break d;
        }
    };
    assert!(failed.is_empty(), "{failed:?}");
    assert_eq!(d["outcome"], "rolled_back", "{d}");
    let steps = d["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 2, "{d}");
    assert_eq!(
        (steps[0]["weight"].as_u64(), steps[0]["result"].as_str()),
        (Some(20), Some("passed"))
    );
    assert_eq!(
        (steps[1]["weight"].as_u64(), steps[1]["result"].as_str()),
        (Some(40), Some("failed"))
    );
    let reason = d["reason"].as_str().unwrap();
    assert!(reason.contains("p99") && reason.contains("step 2/4 (40%)"), "{reason}");
    // Each key moved at most once, blue → green, and never back while the release ran.
    for (k, colors) in &seen {
        let first_green = colors.iter().position(|c| c == "green").unwrap_or(colors.len());
        assert!(colors[first_green..].iter().all(|c| c == "green"), "{k}: {colors:?}");
    }
    let st = r.status().await;
    assert_eq!(
        (st["live"].as_str(), st["colors"]["green"]["weight"].as_u64()),
        (Some("blue"), Some(0))
    );
    for k in &keys {
        let resp = send(
            &c,
            Method::POST,
            &r.url("/v1/chat/completions"),
            &[("x-user-id", k)],
            "{}",
        )
        .await
        .unwrap();
        assert_eq!(resp.header("x-cutover-color"), "blue", "100% back on the old color");
    }
}

#[tokio::test]
async fn streams_that_started_on_a_color_finish_there_across_steps() {
    let release = "traffic = { linear = { step = 50, interval = \"500ms\" } }\n\
                   [services.chat.release.verify]\nbake = \"300ms\"\nmin_requests = 0\n";
    let blue = Mock::start("v1", &["--token-interval", "20ms"]).await;
    let green = Mock::start("v2", &["--token-interval", "20ms"]).await;
    let r = Router::start(&format!(
        "{}\n[services.chat.release]\n{release}\n",
        static_service(&[&blue], &[&green], "")
    ))
    .await;
    assert_eq!(r.switch("blue").await.status, 200);
    let id = r.release("v2").await;
    wait_weight(&r, 50).await;
    let c = http_client();
    let mut readers = Vec::new();
    for _ in 0..12 {
        let req = Request::post(r.url("/v1/chat/completions"))
            .body(Full::new(Bytes::from(r#"{"stream":true,"max_tokens":100}"#)))
            .unwrap();
        let resp = c.request(req).await.unwrap();
        let color = resp.headers()["x-cutover-color"].to_str().unwrap().to_string();
        readers.push((color, tokio::spawn(read_stream(resp))));
    }
    let colors: Vec<&str> = readers.iter().map(|(c, _)| c.as_str()).collect();
    assert!(colors.contains(&"blue") && colors.contains(&"green"), "{colors:?}");
    let d = r.wait_end(id, Duration::from_secs(30)).await;
    assert_eq!(d["outcome"], "completed", "{d}");
    for (color, reader) in readers {
        let (events, err) = reader.await.unwrap();
        assert_eq!(err, None);
        let versions = stream_versions(&events).unwrap();
        let want = if color == "blue" { "v1" } else { "v2" };
        assert_eq!(versions.len(), 101);
        assert!(versions.iter().all(|v| v == want), "a {color} stream: {versions:?}");
    }
    let st = r.status().await;
    assert_eq!(
        (st["live"].as_str(), st["colors"]["green"]["weight"].as_u64()),
        (Some("green"), Some(100))
    );
}

#[tokio::test]
async fn the_user_field_of_a_chunked_body_keeps_each_user_on_its_color() {
    let release = "traffic = { canary = { percent = 50, bake = \"10m\" } }\nsticky = { body_field = \"user\" }";
    let (r, _b, _g) = router(&[], release).await;
    let _id = r.release("v2").await;
    wait_weight(&r, 50).await;
    let port: u16 = r
        .url("")
        .rsplit(':')
        .next()
        .unwrap()
        .trim_end_matches('/')
        .parse()
        .unwrap();
    for i in 0..16 {
        let user = format!("user-{i}");
        let want = if bucket_of(fnv(user.as_bytes())) < 50 {
            "green"
        } else {
            "blue"
        };
        for _ in 0..3 {
            // The field is in the first chunk; the rest of the body is a second chunk.
            let first = format!("{{\"user\":\"{user}\",");
            let rest = r#""max_tokens":2}"#;
            let req = format!(
                "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n{:x}\r\n{first}\r\n{:x}\r\n{rest}\r\n0\r\n\r\n",
                first.len(),
                rest.len()
            );
            let (text, _) = raw(port, req.as_bytes());
            assert!(text.starts_with("HTTP/1.1 200"), "{text}");
            assert!(
                text.to_ascii_lowercase().contains(&format!("x-cutover-color: {want}")),
                "{user} (bucket {}) should be on {want}: {text}",
                bucket_of(fnv(user.as_bytes()))
            );
        }
    }
}

#[tokio::test]
async fn the_header_route_reaches_the_idle_color_only_with_a_token() {
    let dir = TempDir::new("header-route");
    let tokens = dir.path().join("testers.tokens");
    std::fs::write(&tokens, "# testers\ns3cret-tester\n").unwrap();
    let release = format!(
        "header_route = {{ header = \"x-cutover-color\", tokens_file = \"{}\" }}",
        tokens.display()
    );
    let (r, _b, _g) = router(&[], &release).await;
    let c = http_client();
    let url = r.url("/v1/models");
    let with = send(&c, Method::GET, &url, &[("x-cutover-color", "s3cret-tester")], "")
        .await
        .unwrap();
    assert_eq!((with.status.as_u16(), with.header("x-cutover-color")), (200, "green"));
    let wrong = send(&c, Method::GET, &url, &[("x-cutover-color", "green")], "")
        .await
        .unwrap();
    assert_eq!(wrong.status, 403, "{}", wrong.text());
    assert_eq!(wrong.json()["error"]["code"], "header_route_refused");
    let plain = send(&c, Method::GET, &url, &[], "").await.unwrap();
    assert_eq!((plain.status.as_u16(), plain.header("x-cutover-color")), (200, "blue"));
    // The hyper engine (HTTP/2 clients) follows the same rule.
    let h2 = |value: &str| {
        let out = std::process::Command::new("curl")
            .args(["-sS", "-i", "--http2-prior-knowledge", "-H"])
            .arg(format!("x-cutover-color: {value}"))
            .arg(&url)
            .output()
            .expect("curl is installed");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let text = h2("s3cret-tester");
    assert!(
        text.starts_with("HTTP/2 200") && text.contains("x-cutover-color: green"),
        "{text}"
    );
    let text = h2("green");
    assert!(
        text.starts_with("HTTP/2 403") && text.contains("header_route_refused"),
        "{text}"
    );
}

#[tokio::test]
async fn a_manual_rollback_at_a_step_returns_all_to_the_old_color_and_ends_the_release() {
    let (r, _b, _g) = router(&[], "traffic = { linear = { step = 25, interval = \"10m\" } }").await;
    let id = r.release("v2").await;
    wait_weight(&r, 25).await;
    // A manual switch is refused during the steps, as after a blue-green switch.
    let refused = r.switch("green").await;
    assert_eq!(refused.status, 409, "{}", refused.text());
    assert_eq!(refused.json()["error"]["code"], "release_in_progress");
    let (code, out, err) = r.cli_async(&["status", "chat"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("step 1/3 25% running"), "{out}");
    let (code, out, err) = r.cli_async(&["rollback", "chat"]).await;
    assert_eq!(code, 0, "{out}{err}");
    let d = r.wait_end(id, Duration::from_secs(20)).await;
    assert_eq!(d["outcome"], "rolled_back", "{d}");
    assert!(d["reason"].as_str().unwrap().contains("manual rollback"), "{d}");
    let st = r.status().await;
    assert_eq!(
        (st["live"].as_str(), st["colors"]["blue"]["weight"].as_u64()),
        (Some("blue"), Some(100))
    );
    let c = http_client();
    for _ in 0..30 {
        let resp = send(&c, Method::GET, &r.url("/v1/models"), &[], "").await.unwrap();
        assert_eq!(resp.header("x-cutover-color"), "blue");
    }
}

#[tokio::test]
async fn a_restart_during_a_step_interrupts_the_release_and_serves_the_old_color_only() {
    let (mut r, _b, _g) = router(&[], "traffic = { canary = { percent = 50, bake = \"10m\" } }").await;
    let id = r.release("v2").await;
    let st = wait_weight(&r, 50).await;
    let generation = st["generation"].as_u64().unwrap();
    r.proc.kill9();
    r.spawn().await;
    let d = r.wait_end(id, Duration::from_secs(20)).await;
    assert_eq!(d["outcome"], "interrupted", "{d}");
    let st = r.status().await;
    assert_eq!(
        st["generation"].as_u64(),
        Some(generation),
        "the step was committed: {st}"
    );
    assert_eq!(
        (st["live"].as_str(), st["colors"]["green"]["weight"].as_u64()),
        (Some("blue"), Some(0))
    );
    let c = http_client();
    for _ in 0..30 {
        let resp = send(&c, Method::GET, &r.url("/v1/models"), &[], "").await.unwrap();
        assert_eq!(resp.header("x-cutover-color"), "blue");
    }
}
