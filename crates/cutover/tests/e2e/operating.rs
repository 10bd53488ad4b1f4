//! Operating a router day to day (issue #25): stopping a managed color on purpose, revoking
//! a named token, the x-cutover-* response headers on both engines, a busy listener port
//! that names its holder, the dashboard URL in the log, and releases counted by outcome.

use std::process::Command;
use std::time::Duration;

use http::Method;
use serde_json::{json, Value};

use crate::support::*;

const VERIFY_SHORT: &str = "[services.chat.release.verify]\nbake = \"1s\"\nmin_requests = 0\n";

async fn history_kinds(r: &Router) -> Vec<String> {
    let h = r
        .api(Method::GET, "/v1/services/chat/history", Value::Null)
        .await
        .json();
    h["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap_or("").to_string())
        .collect()
}

#[tokio::test]
async fn stop_drains_the_idle_color_refuses_the_live_one_and_is_recorded() {
    let ports = ManagedPorts::new();
    let release = format!("scale_down_delay = \"10m\"\ndrain_timeout = \"2s\"\n{VERIFY_SHORT}");
    let r = Router::start(&managed_service(&ports, &[], &release)).await;
    for v in ["v1", "v2"] {
        let id = r.release(v).await;
        assert_eq!(r.wait_end(id, Duration::from_secs(30)).await["outcome"], "completed");
    }
    let blue_health = format!("http://127.0.0.1:{}/health", ports.blue);
    assert!(get(&blue_health).await.is_ok(), "blue (v1) stays warm for 10m");

    // The live color is refused without --force; nothing stops.
    let (code, _, err) = r.cli_async(&["stop", "chat", "green"]).await;
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("green is live") && err.contains("--force"), "{err}");

    // The idle color by default: drained, stopped, not checked, in the history.
    let (code, out, err) = r.cli_async(&["stop", "chat", "--reason", "free the GPU"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("chat: stopped blue (v1); drained in"), "{out}");
    assert!(get(&blue_health).await.is_err(), "blue's model server is gone");
    let st = r.status().await;
    let blue = &st["colors"]["blue"];
    assert_eq!(
        (blue["state"].as_str(), blue["endpoints"][0]["health"].as_str()),
        (Some("stopped"), Some("not_checked")),
        "{st}"
    );
    assert_eq!(st["live"], "green");
    assert_eq!(history_kinds(&r).await[0], "stopped");
    let h = r
        .api(Method::GET, "/v1/services/chat/history", Value::Null)
        .await
        .json();
    let reason = h["history"][0]["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("free the GPU: blue (v1) stopped on request"),
        "{reason}"
    );

    // Again: nothing to stop, not an error.
    let (code, out, _) = r.cli_async(&["stop", "chat", "blue"]).await;
    assert_eq!(code, 0);
    assert!(out.contains("nothing to stop"), "{out}");

    // With --force even the live color, which the restart policy then leaves down.
    let (code, out, err) = r.cli_async(&["stop", "chat", "green", "--force", "--json"]).await;
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (v["color"].as_str(), v["was_live"].as_bool()),
        (Some("green"), Some(true))
    );
    assert!(get(&format!("http://127.0.0.1:{}/health", ports.green)).await.is_err());
    assert_eq!(r.status().await["colors"]["green"]["processes"]["role"], "idle");
}

#[tokio::test]
async fn stop_is_refused_for_static_services_and_during_a_release() {
    let blue = Mock::start("v1", &[]).await;
    let green = Mock::start("v2", &[]).await;
    let r = Router::start(&format!(
        "{}\n[services.chat.release]\npromotion = \"manual\"\n",
        static_service(&[&blue], &[&green], "")
    ))
    .await;
    assert_eq!(r.switch("blue").await.status, 200);
    let resp = r.api(Method::POST, "/v1/services/chat/stop", json!({})).await;
    assert_eq!(resp.status, 409, "{}", resp.text());
    assert_eq!(resp.json()["error"]["code"], "not_managed");
    let bad = r
        .api(Method::POST, "/v1/services/chat/stop", json!({"color": "red"}))
        .await;
    assert_eq!(bad.status, 400, "{}", bad.text());

    let ports = ManagedPorts::new();
    let m = Router::start(&managed_service(
        &ports,
        &[],
        &format!("promotion = \"manual\"\n{VERIFY_SHORT}"),
    ))
    .await;
    let id = m.release("v1").await;
    m.wait_end(id, Duration::from_secs(30)).await;
    let id = m.release("v2").await;
    m.wait_phase(id, "awaiting_approval", Duration::from_secs(30)).await;
    let (code, _, err) = m.cli_async(&["stop", "chat"]).await;
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("is in progress"), "{err}");
    assert_eq!(m.release_doc(id).await["phase"], "awaiting_approval");
}

#[tokio::test]
async fn token_delete_revokes_a_named_token_of_a_running_router() {
    let blue = Mock::start("v1", &[]).await;
    let green = Mock::start("v2", &[]).await;
    let r = Router::start(&static_service(&[&blue], &[&green], "")).await;
    let run = |args: &[&str]| {
        let out = Command::new(CUTOVER)
            .args(args)
            .arg("-c")
            .arg(&r.config)
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, token, err) = run(&["token", "create", "ci", "--role", "viewer"]);
    assert_eq!(code, 0, "{err}");
    let token = token.trim().to_string();
    let url = r.admin_url("/v1/services");
    let with = |t: String| {
        let url = url.clone();
        async move {
            send(
                &http_client(),
                Method::GET,
                &url,
                &[("authorization", &format!("Bearer {t}"))],
                "",
            )
            .await
            .unwrap()
            .status
        }
    };
    assert_eq!(with(token.clone()).await, 200);
    let (code, out, err) = run(&["token", "delete", "ci"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("deleted token \"ci\" (role viewer)"), "{out}");
    wait_for(
        "the router to refuse the deleted token",
        Duration::from_secs(10),
        || {
            let t = token.clone();
            let w = &with;
            async move { (w(t).await == 401).then_some(()) }
        },
    )
    .await;
    let (_, out, _) = run(&["token", "list"]);
    assert!(!out.contains("ci "), "{out}");
    let (code, _, err) = run(&["token", "delete", "ci"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("no token named \"ci\""), "{err}");
}

async fn headers_off(engine: &str) {
    let blue = Mock::start("v1", &[]).await;
    let green = Mock::start("v2", &[]).await;
    let r = Router::start(&on_engine(
        &static_service(&[&blue], &[&green], "response_headers = false"),
        engine,
    ))
    .await;
    let before = get(&r.url("/v1/models")).await.unwrap();
    assert_eq!(before.status, 503, "nothing live yet: the proxy's own error");
    assert_eq!(before.header("x-cutover-color"), "", "{engine}: {:?}", before.headers);
    assert_eq!(r.switch("blue").await.status, 200);
    let resp = send(
        &http_client(),
        Method::POST,
        &r.url("/v1/chat/completions"),
        &[("content-type", "application/json")],
        r#"{"max_tokens":2}"#,
    )
    .await
    .unwrap();
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("x-model-version"), "v1", "served by blue");
    assert_eq!(
        (resp.header("x-cutover-color"), resp.header("x-cutover-version")),
        ("", ""),
        "{engine}: {:?}",
        resp.headers
    );
}

#[tokio::test]
async fn response_headers_false_hides_color_and_version_on_the_http1_engine() {
    headers_off("own").await;
}

#[tokio::test]
async fn response_headers_false_hides_color_and_version_on_the_hyper_engine() {
    headers_off("hyper").await;
}

#[tokio::test]
async fn a_busy_listener_port_names_the_process_that_holds_it() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let dir = TempDir::new("busy");
    let config = dir.path().join("cutover.toml");
    std::fs::write(
        &config,
        format!(
            "[admin]\nlisten = \"127.0.0.1:0\"\n[store]\npath = \"cutover.db\"\n\
             [services.chat]\nlisten = \"127.0.0.1:{port}\"\n\
             [services.chat.blue]\nendpoints = [\"127.0.0.1:1\"]\n[services.chat.green]\nendpoints = [\"127.0.0.1:2\"]\n"
        ),
    )
    .unwrap();
    let out = Command::new(CUTOVER)
        .args(["serve", "-c"])
        .arg(&config)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("cannot listen on services.chat.listen 127.0.0.1:{port}")),
        "{err}"
    );
    assert!(err.contains(&format!("held by pid {}", std::process::id())), "{err}");
    drop(taken);
}

#[tokio::test]
async fn serve_logs_the_dashboard_url() {
    let blue = Mock::start("v1", &[]).await;
    let green = Mock::start("v2", &[]).await;
    let r = Router::start(&static_service(&[&blue], &[&green], "")).await;
    let log = r.log();
    let line = log
        .lines()
        .find(|l| l.contains("dashboard"))
        .unwrap_or_else(|| panic!("{log}"));
    assert!(line.contains(&format!("http://127.0.0.1:{}/", r.admin)), "{line}");
    assert!(line.contains("admin.token"), "{line}");
}

#[tokio::test]
async fn releases_are_counted_by_outcome_for_alerting() {
    let blue = Mock::start("v1", &[]).await;
    let green = Mock::start("v2", &[]).await;
    let r = Router::start(&format!(
        "{}\n[services.chat.release]\npromotion = \"manual\"\n{VERIFY_SHORT}",
        static_service(&[&blue], &[&green], "")
    ))
    .await;
    let metric = |text: &str, outcome: &str| -> Option<String> {
        let key = format!("cutover_releases_total{{service=\"chat\",outcome=\"{outcome}\"}} ");
        text.lines().find_map(|l| l.strip_prefix(&key).map(str::to_string))
    };
    let text = get(&r.admin_url("/metrics")).await.unwrap().text();
    for o in ["completed", "aborted", "rolled_back", "interrupted"] {
        assert_eq!(metric(&text, o).as_deref(), Some("0"), "{o} shows at 0:\n{text}");
    }
    let id = r.release("v1").await;
    assert_eq!(r.wait_end(id, Duration::from_secs(30)).await["outcome"], "completed");
    let id = r.release("v2").await;
    r.wait_phase(id, "awaiting_approval", Duration::from_secs(30)).await;
    assert_eq!(r.cli_async(&["abort", "chat"]).await.0, 0);
    r.wait_end(id, Duration::from_secs(30)).await;
    let text = get(&r.admin_url("/metrics")).await.unwrap().text();
    assert_eq!(
        (
            metric(&text, "completed").as_deref(),
            metric(&text, "aborted").as_deref()
        ),
        (Some("1"), Some("1")),
        "{text}"
    );
}
