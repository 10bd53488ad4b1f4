//! Supervision of managed processes through the real binary: the pipeline trusts the process
//! it started, not whatever answers on its port (a stray server on the port, an exit in any
//! phase), the live color's processes are restarted by the policy (adopted ones too), every
//! stop drains the color first, a rolled-back version is stopped after `scale_down_delay`, and
//! planned stops and empty colors log no health warnings.

use std::time::Duration;

use http::Method;
use serde_json::Value;

use crate::support::*;

const VERIFY_SHORT: &str = "[services.chat.release.verify]\nbake = \"1s\"\nmin_requests = 5\n";

/// Makes the mock-model on `port` exit with `code` (after it answered).
async fn mock_exit(port: u16, code: i32) {
    let r = send(
        &http_client(),
        Method::POST,
        &format!("http://127.0.0.1:{port}/mock/exit?code={code}"),
        &[],
        "",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
}

async fn mock_pid(port: u16) -> Option<u64> {
    let r = get(&format!("http://127.0.0.1:{port}/mock/stats")).await.ok()?;
    r.json()["pid"].as_u64()
}

async fn history(r: &Router) -> Vec<Value> {
    r.api(Method::GET, "/v1/services/chat/history", Value::Null)
        .await
        .json()["history"]
        .as_array()
        .unwrap()
        .clone()
}

/// The history lines of `kind`, newest first.
async fn events(r: &Router, kind: &str) -> Vec<Value> {
    history(r).await.into_iter().filter(|e| e["kind"] == kind).collect()
}

async fn released(r: &Router, version: &str) -> Value {
    let id = r.release(version).await;
    let d = r.wait_end(id, Duration::from_secs(30)).await;
    assert_eq!(d["outcome"], "completed", "{d}");
    d
}

/// A stream of `tokens` through `url`, read to its end on its own task.
async fn stream(url: String, tokens: u32) -> tokio::task::JoinHandle<(Vec<String>, Option<String>)> {
    let req = http::Request::post(url)
        .body(http_body_util::Full::new(bytes::Bytes::from(format!(
            r#"{{"stream":true,"max_tokens":{tokens}}}"#
        ))))
        .unwrap();
    let resp = http_client().request(req).await.unwrap();
    tokio::spawn(read_stream(resp))
}

/// Regression: the new model server exited with "Address already in use", health checks
/// passed on the stray server, the release completed and the stray served live traffic.
#[tokio::test]
async fn a_stray_server_on_a_managed_port_fails_provisioning_and_names_it() {
    let ports = ManagedPorts::new();
    let r = Router::start(&managed_service(&ports, &[], VERIFY_SHORT)).await;
    released(&r, "v1").await;
    let stray = Mock::start_on(ports.green, "stray", &[]).await;
    let id = r.release("v2").await;
    let d = r.wait_end(id, Duration::from_secs(30)).await;
    assert_eq!(d["outcome"], "aborted", "{d}");
    assert_eq!(d["phases"][0]["phase"], "provisioning", "{d}");
    let reason = d["reason"].as_str().unwrap();
    assert!(
        reason.contains(&format!("port {} on 127.0.0.1 is already in use", ports.green))
            && reason.contains(&format!("pid {} (", stray.proc.pid()))
            && reason.contains("mock-model"),
        "says who holds it: {reason}"
    );
    let st = r.status().await;
    assert_eq!(
        (st["live"].as_str(), st["generation"].as_u64()),
        (Some("blue"), Some(1))
    );
    for _ in 0..10 {
        let resp = get(&r.url("/v1/models")).await.unwrap();
        assert_eq!(resp.header("x-cutover-version"), "v1");
    }
    assert_eq!(
        mock_pid(ports.green).await,
        Some(stray.proc.pid() as u64),
        "the stray was left alone"
    );
}

/// Regression: an exit after the health checks passed went unnoticed until verification (or
/// never, with a stray server answering on the port).
#[tokio::test]
async fn a_model_server_exit_while_awaiting_approval_aborts_with_its_status_and_log_lines() {
    let ports = ManagedPorts::new();
    let r = Router::start(&managed_service(
        &ports,
        &[],
        &format!("promotion = \"manual\"\n{VERIFY_SHORT}"),
    ))
    .await;
    released(&r, "v1").await;
    let id = r.release("v2").await;
    r.wait_phase(id, "awaiting_approval", Duration::from_secs(30)).await;
    mock_exit(ports.green, 3).await;
    let d = r.wait_end(id, Duration::from_secs(20)).await;
    assert_eq!(d["outcome"], "aborted", "{d}");
    let reason = d["reason"].as_str().unwrap();
    assert!(
        reason
            .starts_with("a model server of the new color exited during awaiting_approval: green replica 0 (v2, pid ")
            && reason.contains("exited: exit status: 3"),
        "{reason}"
    );
    assert!(
        reason.contains("last lines:\n")
            && reason.contains("| mock-model: exiting with code 3 as asked (POST /mock/exit)"),
        "quotes the log: {reason}"
    );
    let log = reason.split("log: ").nth(1).and_then(|s| s.split(';').next()).unwrap();
    assert!(log.contains("/logs/chat-green-0-") && log.ends_with(".log"), "{log}");
    let text = std::fs::read_to_string(log).unwrap();
    assert!(
        text.starts_with("=== cutover start ") && text.contains("version=v2 port="),
        "a header line opens each start's file: {text}"
    );
    let st = r.status().await;
    assert_eq!(
        (st["live"].as_str(), st["colors"]["green"]["state"].as_str()),
        (Some("blue"), Some("stopped"))
    );
    let exited = events(&r, "process_exited").await;
    assert!(
        exited[0]["reason"].as_str().unwrap().contains("is being released"),
        "{exited:?}"
    );
}

/// Regression: a crashed live model server was not restarted and its exit not reported:
/// 502s until a human acted.
#[tokio::test]
async fn a_crashed_live_model_server_is_restarted_recorded_and_counted() {
    let ports = ManagedPorts::new();
    let r = Router::start(&managed_service(&ports, &[], VERIFY_SHORT)).await;
    released(&r, "v1").await;
    let before = mock_pid(ports.blue).await.unwrap();
    mock_exit(ports.blue, 7).await;
    let st = wait_for("blue to be restarted", Duration::from_secs(20), || async {
        let st = r.status().await;
        (st["colors"]["blue"]["processes"]["restarts"] == 1).then_some(st)
    })
    .await;
    let procs = &st["colors"]["blue"]["processes"];
    assert_eq!(procs["role"], "serving");
    assert_eq!(procs["last_exit"]["status"], "exit status: 7", "{procs}");
    assert!(procs["last_exit"]["at"].is_string());
    let pid = procs["running"][0]["pid"].as_u64().unwrap();
    assert_ne!(pid, before);
    let after = wait_for("the new process to answer", Duration::from_secs(20), || async {
        mock_pid(ports.blue).await.filter(|p| *p == pid)
    })
    .await;
    assert_eq!(after, pid);
    wait_for(
        "requests through the router to succeed",
        Duration::from_secs(20),
        || async {
            let r = send(&http_client(), Method::POST, &r.url("/v1/chat/completions"), &[], "{}")
                .await
                .ok()?;
            (r.status == 200 && r.header("x-cutover-version") == "v1").then_some(())
        },
    )
    .await;
    let exited = events(&r, "process_exited").await;
    let reason = exited[0]["reason"].as_str().unwrap();
    assert!(
        reason.contains(&format!("blue replica 0 (v1, pid {before}) exited: exit status: 7"))
            && reason.contains("| mock-model: exiting with code 7")
            && reason.contains("restarting in 1 s"),
        "{reason}"
    );
    let restarted = events(&r, "process_restarted").await;
    assert!(
        restarted[0]["reason"]
            .as_str()
            .unwrap()
            .contains(&format!("started again as pid {pid} after 1 s (was pid {before})")),
        "{restarted:?}"
    );
    assert_eq!(restarted[0]["actor"], "supervisor");
    let m = get(&r.admin_url("/metrics")).await.unwrap().text();
    assert!(
        m.contains("cutover_process_restarts_total{service=\"chat\",color=\"blue\",version=\"v1\"} 1"),
        "{m}"
    );
    // One log file per start: the crashed one and the restarted one.
    let logs: Vec<String> = std::fs::read_dir(r.dir.path().join("cutover-data/logs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("chat-blue-0-2"))
        .collect();
    assert_eq!(logs.len(), 2, "{logs:?}");
    assert!(r.log().contains("model server exited; restarting in 1 s"));
}

#[tokio::test]
async fn the_restart_limit_ends_a_crash_loop_and_says_so() {
    let ports = ManagedPorts::new();
    let text = managed_service(&ports, &[], VERIFY_SHORT).replace(
        "stop_timeout = \"2s\"",
        "stop_timeout = \"2s\"\nrestart_limit = 1\nrestart_window = \"10m\"",
    );
    let r = Router::start(&text).await;
    released(&r, "v1").await;
    mock_exit(ports.blue, 1).await;
    let pid = wait_for("the first restart", Duration::from_secs(20), || async {
        let st = r.status().await;
        let p = &st["colors"]["blue"]["processes"];
        (p["restarts"] == 1).then(|| p["running"][0]["pid"].as_u64()).flatten()
    })
    .await;
    wait_for("the restarted process to answer", Duration::from_secs(20), || async {
        mock_pid(ports.blue).await.filter(|p| *p == pid)
    })
    .await;
    mock_exit(ports.blue, 1).await;
    let given_up = wait_for("the exit past the limit", Duration::from_secs(20), || async {
        events(&r, "process_exited")
            .await
            .into_iter()
            .find(|e| e["reason"].as_str().unwrap_or("").contains("restart_limit reached"))
    })
    .await;
    assert!(
        given_up["reason"]
            .as_str()
            .unwrap()
            .contains(&format!("(v1, pid {pid}) exited: exit status: 1")),
        "{given_up}"
    );
    assert_eq!(r.status().await["colors"]["blue"]["processes"]["restarts"], 1);
    assert_eq!(events(&r, "process_restarted").await.len(), 1);
}

#[tokio::test]
async fn restart_never_reports_the_exit_and_leaves_the_process_down() {
    let ports = ManagedPorts::new();
    let text = managed_service(&ports, &[], VERIFY_SHORT)
        .replace("stop_timeout = \"2s\"", "stop_timeout = \"2s\"\nrestart = \"never\"");
    let r = Router::start(&text).await;
    released(&r, "v1").await;
    mock_exit(ports.blue, 4).await;
    let e = wait_for("the exit to be recorded", Duration::from_secs(20), || async {
        events(&r, "process_exited").await.into_iter().next()
    })
    .await;
    let reason = e["reason"].as_str().unwrap();
    assert!(
        reason.contains("exit status: 4") && reason.contains("not restarted: restart = \"never\""),
        "{reason}"
    );
    assert_eq!(
        r.status().await["colors"]["blue"]["processes"]["last_exit"]["status"],
        "exit status: 4"
    );
    assert!(events(&r, "process_restarted").await.is_empty());
    assert!(mock_pid(ports.blue).await.is_none(), "nothing listens on blue's port");
}

/// Regression: after cutover restarted and adopted its model servers, their exits went
/// unnoticed (they are no longer its children).
#[tokio::test]
async fn an_adopted_live_model_server_is_still_restarted_after_a_cutover_restart() {
    let ports = ManagedPorts::new();
    let mut r = Router::start(&managed_service(&ports, &[], VERIFY_SHORT)).await;
    released(&r, "v1").await;
    let before = mock_pid(ports.blue).await.unwrap();
    r.proc.kill9();
    r.spawn().await;
    assert_eq!(mock_pid(ports.blue).await, Some(before), "adopted, not restarted");
    assert_eq!(
        r.status().await["colors"]["blue"]["processes"]["running"][0]["pid"].as_u64(),
        Some(before)
    );
    mock_exit(ports.blue, 9).await;
    let pid = wait_for("blue to be restarted", Duration::from_secs(20), || async {
        let st = r.status().await;
        let p = &st["colors"]["blue"]["processes"];
        (p["restarts"] == 1).then(|| p["running"][0]["pid"].as_u64()).flatten()
    })
    .await;
    assert_ne!(pid, before);
    wait_for("the new process to answer", Duration::from_secs(20), || async {
        mock_pid(ports.blue).await.filter(|p| *p == pid)
    })
    .await;
    let exited = events(&r, "process_exited").await;
    assert!(
        exited[0]["reason"]
            .as_str()
            .unwrap()
            .contains("status unknown (adopted"),
        "{exited:?}"
    );
}

/// Regression: a release into the color that was still warm stopped it at once, cutting the
/// streams still running there (vLLM's default shutdown aborts in-flight requests too).
#[tokio::test]
async fn a_release_into_the_warm_color_lets_its_stream_finish_before_sigterm() {
    let ports = ManagedPorts::new();
    let release = format!("scale_down_delay = \"10m\"\ndrain_timeout = \"30s\"\n{VERIFY_SHORT}");
    let r = Router::start(&managed_service(&ports, &["--token-interval", "20ms"], &release)).await;
    released(&r, "v1").await;
    // A 5-second stream on blue (v1), which stays warm after v2 goes live ...
    let reader = stream(r.url("/v1/chat/completions"), 250).await;
    released(&r, "v2").await;
    assert_eq!(r.status().await["colors"]["blue"]["in_flight"], 1, "still streaming");
    // ... and v3 is released into blue while the stream runs.
    let id = r.release("v3").await;
    let (events, err) = reader.await.unwrap();
    assert_eq!(err, None, "the stream was not cut");
    assert_eq!(stream_versions(&events).unwrap(), vec!["v1"; 251]);
    let d = r.wait_end(id, Duration::from_secs(60)).await;
    assert_eq!(d["outcome"], "completed", "{d}");
    let detail = d["phases"][0]["detail"].as_str().unwrap();
    assert!(
        detail.starts_with("stopped the previous processes (drained in "),
        "{detail}"
    );
}

#[tokio::test]
async fn abort_lets_a_preview_stream_finish_before_stopping_the_idle_color() {
    let ports = ManagedPorts::new();
    let release = format!("promotion = \"manual\"\ndrain_timeout = \"30s\"\n{VERIFY_SHORT}");
    let r = Router::start(&managed_service(&ports, &["--token-interval", "20ms"], &release)).await;
    released(&r, "v1").await;
    let id = r.release("v2").await;
    r.wait_phase(id, "awaiting_approval", Duration::from_secs(30)).await;
    // A tester's 3-second stream on green through the preview listener.
    let reader = stream(r.preview_url("/v1/chat/completions"), 150).await;
    let (code, _, err) = r.cli_async(&["abort", "chat"]).await;
    assert_eq!(code, 0, "{err}");
    let (events, err) = reader.await.unwrap();
    assert_eq!(err, None, "the stream was not cut");
    assert_eq!(stream_versions(&events).unwrap(), vec!["v2"; 151]);
    assert_eq!(r.wait_end(id, Duration::from_secs(30)).await["outcome"], "aborted");
    wait_for("green to be stopped", Duration::from_secs(10), || async {
        (r.status().await["colors"]["green"]["state"] == "stopped").then_some(())
    })
    .await;
    assert!(mock_pid(ports.green).await.is_none());
}

/// Regression: after an automatic rollback the failed version's processes kept running
/// (seen 55 s later with scale_down_delay = 30 s).
#[tokio::test]
async fn after_an_automatic_rollback_the_failed_version_stops_after_scale_down_delay() {
    let ports = ManagedPorts::new();
    let release = "scale_down_delay = \"500ms\"\ndrain_timeout = \"5s\"\n[services.chat.release.verify]\nbake = \"20s\"\nmin_requests = 5\nmax_error_rate = 0.05\n";
    let r = Router::start(&managed_service(&ports, &["--error-rate-for", "v2=1.0"], release)).await;
    released(&r, "v1").await;
    let traffic = Traffic::start(r.url("/v1/chat/completions"), 2, Duration::from_millis(5));
    let id = r.release("v2").await;
    let d = r.wait_end(id, Duration::from_secs(30)).await;
    traffic.stop().await;
    assert_eq!(d["outcome"], "rolled_back", "{d}");
    assert!(d["scale_down_at"].is_u64(), "{d}");
    wait_for("green (v2) to be stopped", Duration::from_secs(20), || async {
        (r.status().await["colors"]["green"]["state"] == "stopped").then_some(())
    })
    .await;
    assert!(mock_pid(ports.green).await.is_none(), "v2's process is gone");
    let sd = events(&r, "scaled_down").await;
    assert!(
        sd[0]["reason"]
            .as_str()
            .unwrap()
            .starts_with("green (v2) scaled down after scale_down_delay"),
        "{sd:?}"
    );
    let logs = std::fs::read_dir(r.dir.path().join("cutover-data/logs"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with("chat-green-0-2")
        })
        .count();
    assert_eq!(logs, 1, "the failed version's log is kept");
    assert_eq!(r.status().await["live"], "blue");
}

/// Health warnings only for what an operator must act on: never for an empty color, nor for
/// a color that was scaled down on purpose.
#[tokio::test]
async fn empty_and_scaled_down_colors_log_no_endpoint_unhealthy() {
    let ports = ManagedPorts::new();
    let release = format!("scale_down_delay = \"200ms\"\ndrain_timeout = \"1s\"\n{VERIFY_SHORT}");
    let r = Router::start(&managed_service(&ports, &[], &release)).await;
    released(&r, "v1").await;
    // Health checks run every 100 ms per endpoint: ten probes of blue mean green, empty, would
    // have been probed as often.
    let probes_of = |port: u16| async move {
        get(&format!("http://127.0.0.1:{port}/mock/stats"))
            .await
            .ok()
            .and_then(|r| r.json()["requests"].as_u64())
            .unwrap_or(0)
    };
    let seen = probes_of(ports.blue).await;
    wait_for("ten more probes of blue", Duration::from_secs(20), || async {
        (probes_of(ports.blue).await >= seen + 10).then_some(())
    })
    .await;
    let log = r.log();
    let noisy: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("endpoint unhealthy") && l.contains("color=green"))
        .collect();
    assert!(noisy.is_empty(), "warnings about the empty color: {noisy:#?}");
    assert!(r.status().await["colors"]["green"]["endpoints"][0]["healthy"].is_null());

    released(&r, "v2").await;
    wait_for("blue to be scaled down", Duration::from_secs(20), || async {
        (r.status().await["colors"]["blue"]["state"] == "stopped").then_some(())
    })
    .await;
    let mark = r.log().len();
    let seen = probes_of(ports.green).await;
    wait_for("ten more probes of green", Duration::from_secs(20), || async {
        (probes_of(ports.green).await >= seen + 10).then_some(())
    })
    .await;
    let log = r.log();
    let noisy: Vec<&str> = log[mark..]
        .lines()
        .filter(|l| l.contains("endpoint unhealthy"))
        .collect();
    assert!(noisy.is_empty(), "warnings after a planned scale-down: {noisy:#?}");
    assert!(r.status().await["colors"]["blue"]["endpoints"][0]["healthy"].is_null());
}
