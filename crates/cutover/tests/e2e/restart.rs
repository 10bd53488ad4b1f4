//! A router killed with SIGKILL comes back with every acknowledged switch.

use std::time::Duration;

use http::Method;

use crate::support::*;

#[tokio::test]
async fn kill_9_then_restart_keeps_live_color_and_generation() {
    let blue = Mock::start("v1", &[]).await;
    let green = Mock::start("v2", &[]).await;
    let mut r = Router::start(&static_service(&[&blue], &[&green], "")).await;
    for to in ["blue", "green", "blue", "green", "blue"] {
        assert_eq!(r.switch(to).await.status, 200);
    }
    let before = r.status().await;
    // Kill right after an acknowledged switch: it must be on disk already.
    assert_eq!(r.switch("green").await.status, 200);
    r.proc.kill9();
    r.spawn().await;
    let after = r.status().await;
    assert_eq!(after["live"], "green");
    assert_eq!(after["generation"], before["generation"].as_u64().unwrap() + 1);
    let resp = get(&r.url("/v1/models")).await.unwrap();
    assert_eq!(resp.header("x-cutover-color"), "green");
    let h = r
        .api(Method::GET, "/v1/services/chat/history", serde_json::Value::Null)
        .await
        .json();
    assert_eq!(h["history"].as_array().unwrap().len(), 6);
    assert!(r.log().contains("restored routing from the store"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_a_running_stream_finish_then_exits_0() {
    let blue = Mock::start("v1", &["--token-interval", "20ms"]).await;
    let green = Mock::start("v2", &[]).await;
    let mut r = Router::start(&static_service(&[&blue], &[&green], "")).await;
    assert_eq!(r.switch("blue").await.status, 200);
    let c = http_client();
    let req = http::Request::post(r.url("/v1/chat/completions"))
        .body(http_body_util::Full::new(bytes::Bytes::from(
            r#"{"stream":true,"max_tokens":50}"#,
        )))
        .unwrap();
    let resp = c.request(req).await.unwrap();
    let reader = tokio::spawn(read_stream(resp));
    tokio::time::sleep(Duration::from_millis(200)).await;
    r.proc.signal("TERM");
    // New connections are refused soon after; the running stream goes on.
    wait_for("the listener to close", Duration::from_secs(5), || async {
        tokio::net::TcpStream::connect(("127.0.0.1", r.listen))
            .await
            .is_err()
            .then_some(())
    })
    .await;
    let (events, err) = reader.await.unwrap();
    assert_eq!(err, None);
    assert_eq!(stream_versions(&events).unwrap().len(), 51);
    let code = tokio::task::block_in_place(|| r.proc.wait_exit(Duration::from_secs(10)));
    assert_eq!(code, Some(0));
}
