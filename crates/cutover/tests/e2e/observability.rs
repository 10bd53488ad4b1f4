//! Metrics as Prometheus sees them: the figures match the traffic, and promtool accepts them.

use std::io::Write;
use std::process::{Command, Stdio};

use bytes::Bytes;
use http::Request;
use http_body_util::Full;

use crate::support::*;

fn sample(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

#[tokio::test]
async fn metrics_count_the_traffic_per_color_and_pass_promtool() {
    let blue = Mock::start("v1", &[]).await;
    let green = Mock::start("v2", &[]).await;
    let r = Router::start(&static_service(&[&blue], &[&green], "")).await;
    assert_eq!(r.switch("blue").await.status, 200);
    let c = http_client();
    for _ in 0..5 {
        assert_eq!(get(&r.url("/v1/models")).await.unwrap().status, 200);
    }
    assert_eq!(get(&r.url("/nope")).await.unwrap().status, 404);
    let req = Request::post(r.url("/v1/chat/completions"))
        .body(Full::new(Bytes::from(r#"{"stream":true,"max_tokens":7}"#)))
        .unwrap();
    let (events, _) = read_stream(c.request(req).await.unwrap()).await;
    assert_eq!(events.len(), 9);
    assert_eq!(r.switch("green").await.status, 200);

    let m = get(&r.admin_url("/metrics")).await.unwrap();
    assert_eq!(m.status, 200, "no token needed");
    assert!(m.header("content-type").starts_with("text/plain; version=0.0.4"));
    let text = m.text();
    let l = r#"{service="chat",color="blue",version="v1""#;
    assert_eq!(
        sample(&text, &format!("cutover_requests_total{l},code=\"200\"}}")),
        Some(6.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, &format!("cutover_requests_total{l},code=\"404\"}}")),
        Some(1.0)
    );
    // 7 tokens, the final chunk and [DONE]: 9 events.
    assert_eq!(sample(&text, &format!("cutover_stream_events_total{l}}}")), Some(9.0));
    assert_eq!(
        sample(&text, &format!("cutover_request_duration_seconds_count{l}}}")),
        Some(7.0)
    );
    assert_eq!(
        sample(&text, &format!("cutover_time_to_first_byte_seconds_count{l}}}")),
        Some(7.0)
    );
    assert_eq!(sample(&text, &format!("cutover_in_flight{l}}}")), Some(0.0));
    assert_eq!(sample(&text, &format!("cutover_live_info{l}}}")), Some(0.0));
    assert_eq!(
        sample(&text, r#"cutover_live_info{service="chat",color="green",version="v2"}"#),
        Some(1.0)
    );
    assert_eq!(sample(&text, r#"cutover_generation{service="chat"}"#), Some(2.0));
    assert_eq!(sample(&text, r#"cutover_switches_total{service="chat"}"#), Some(2.0));
    assert_eq!(
        sample(
            &text,
            &format!("cutover_endpoint_healthy{l},endpoint=\"{}\"}}", blue.addr())
        ),
        Some(1.0)
    );

    let mut p = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool is installed (.ci/run installs the Debian package prometheus)");
    p.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = p.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    let om = send(
        &c,
        http::Method::GET,
        &r.admin_url("/metrics"),
        &[("accept", "application/openmetrics-text; version=1.0.0")],
        "",
    )
    .await
    .unwrap();
    assert!(
        om.text().ends_with("# EOF\n"),
        "OpenMetrics for scrapers that ask for it"
    );
}

#[tokio::test]
async fn access_log_writes_one_line_per_request_when_asked_and_none_by_default() {
    let blue = Mock::start("v1", &[]).await;
    let green = Mock::start("v2", &[]).await;
    let on = Router::start(&static_service(&[&blue], &[&green], "access_log = true")).await;
    let off = Router::start(&static_service(&[&blue], &[&green], "")).await;
    for r in [&on, &off] {
        assert_eq!(r.switch("blue").await.status, 200);
        assert_eq!(get(&r.url("/v1/models?x=1")).await.unwrap().status, 200);
        assert_eq!(get(&r.url("/missing")).await.unwrap().status, 404);
    }
    let log = wait_for("the access lines", std::time::Duration::from_secs(5), || async {
        let log = on.log();
        (log.matches("cutover::access").count() >= 2).then_some(log)
    })
    .await;
    let line = log
        .lines()
        .find(|l| l.contains("cutover::access") && l.contains("/v1/models"))
        .unwrap();
    for want in [
        "service=chat",
        "color=blue",
        "version=\"v1\"",
        "method=GET",
        "status=200",
    ] {
        assert!(line.contains(want), "{want} in {line}");
    }
    assert!(
        !line.contains("x=1"),
        "query strings (which may carry secrets) stay out of the log: {line}"
    );
    assert!(log
        .lines()
        .any(|l| l.contains("cutover::access") && l.contains("path=/missing") && l.contains("status=404")));
    assert!(!off.log().contains("cutover::access"), "off by default");
}
