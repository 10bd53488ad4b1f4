//! The release pipeline through the real binary with real processes: each phase's success and
//! failure path, approval and abort, verification and automatic rollback, restarts, adoption
//! and scale-down.

use std::time::Duration;

use http::Method;
use serde_json::json;

use crate::support::*;

const VERIFY_SHORT: &str = "[services.chat.release.verify]\nbake = \"1s\"\nmin_requests = 5\n";

/// A static service with blue (v1) live and green (v2) idle, and `release` as its release table.
async fn static_router(green_args: &[&str], release: &str) -> (Router, Mock, Mock) {
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

async fn live(r: &Router) -> (String, u64) {
    let st = r.status().await;
    (
        st["live"].as_str().unwrap_or("none").to_string(),
        st["generation"].as_u64().unwrap(),
    )
}

#[tokio::test]
async fn health_that_never_comes_aborts_at_the_deadline_and_live_is_untouched() {
    let (r, _b, _g) = static_router(&["--fail-health"], "health_timeout = \"1s\"").await;
    let id = r.release("v2").await;
    let d = r.wait_end(id, Duration::from_secs(20)).await;
    assert_eq!(d["outcome"], "aborted");
    assert_eq!(d["phase"], "aborted");
    let reason = d["reason"].as_str().unwrap();
    assert!(
        reason.contains("waiting for health did not finish within its deadline"),
        "{reason}"
    );
    assert_eq!(live(&r).await, ("blue".into(), 1));
    assert_eq!(
        get(&r.url("/v1/models")).await.unwrap().header("x-cutover-color"),
        "blue"
    );
}

#[tokio::test]
async fn smoke_failure_aborts_with_the_check_name_expectation_and_an_excerpt() {
    let release = "[[services.chat.release.smoke]]\nname = \"chat answers\"\nrequest = { method = \"POST\", path = \"/v1/chat/completions\", body = '{\"max_tokens\":1}' }\nexpect = { status = 200 }\n";
    let (r, _b, green) = static_router(&["--error-rate", "1.0"], release).await;
    let (code, out, err) = r.cli(&["release", "chat", "v2", "--wait"]);
    assert_eq!(code, 1, "{out}{err}");
    let id = 1;
    let d = r.release_doc(id).await;
    assert_eq!(d["outcome"], "aborted");
    let reason = d["reason"].as_str().unwrap();
    assert!(reason.contains("smoke check \"chat answers\" failed on"), "{reason}");
    assert!(reason.contains("expected status 200, got 500"), "{reason}");
    assert!(reason.contains("injected failure"), "excerpt of the body: {reason}");
    assert!(out.contains("smoke_testing"), "progress shows the phase: {out}");
    // Issue #25: the reason was printed three times (phase line, last line, error).
    let said = format!("{out}{err}").matches("expected status 200, got 500").count();
    assert_eq!(said, 1, "the reason once: {out}{err}");
    assert!(out.contains("release #1 of v2 aborted: smoke check"), "{out}");
    assert!(err.contains("release #1 aborted: why is above"), "{err}");
    assert_eq!(live(&r).await, ("blue".into(), 1));
    assert_eq!(
        green.stats().await["model_requests"],
        1,
        "the smoke request went to green directly"
    );
}

#[tokio::test]
async fn failing_pre_switch_hook_aborts_and_hooks_see_the_release() {
    let dir = TempDir::new("hooks");
    let envfile = dir.path().join("env.txt");
    let release = format!(
        "[services.chat.release.hooks]\npre_switch = [[\"sh\", \"-c\", \"env | grep ^CUTOVER_ | sort > {}\"], [\"sh\", \"-c\", \"echo migration failed >&2; exit 3\"]]\n",
        envfile.display()
    );
    let (r, _b, _g) = static_router(&[], &release).await;
    let id = r.release("v2").await;
    let d = r.wait_end(id, Duration::from_secs(20)).await;
    assert_eq!(d["outcome"], "aborted");
    let reason = d["reason"].as_str().unwrap();
    assert!(
        reason.contains("exit status: 3") && reason.contains("migration failed"),
        "{reason}"
    );
    let env = std::fs::read_to_string(&envfile).unwrap();
    for want in [
        "CUTOVER_COLOR=green",
        "CUTOVER_PREVIOUS_VERSION=v1",
        "CUTOVER_SERVICE=chat",
        "CUTOVER_VERSION=v2",
    ] {
        assert!(env.contains(want), "{want} in {env}");
    }
    assert_eq!(live(&r).await, ("blue".into(), 1));
}

#[tokio::test]
async fn manual_promotion_waits_for_approve_and_abort_leaves_live_alone() {
    let release = format!("promotion = \"manual\"\n{VERIFY_SHORT}");
    let (r, _b, _g) = static_router(&[], &release).await;
    let id = r.release("v2").await;
    let d = r.wait_phase(id, "awaiting_approval", Duration::from_secs(20)).await;
    assert_eq!(d["phase"], "awaiting_approval");
    // One release at a time.
    let second = r
        .api(Method::POST, "/v1/services/chat/releases", json!({"version": "v9"}))
        .await;
    assert_eq!(second.status, 409);
    assert_eq!(second.json()["error"]["code"], "release_in_progress");
    // The switch comes only after this phase (phases run in order): still here, still blue.
    let d = r.release_doc(id).await;
    assert_eq!(d["phase"], "awaiting_approval", "{d}");
    assert!(d["switch_ms"].is_null(), "{d}");
    assert_eq!(live(&r).await, ("blue".into(), 1), "nothing switches without approval");
    let (code, out, err) = r.cli(&["approve", "chat"]);
    assert_eq!(code, 0, "{out}{err}");
    let d = r.wait_end(id, Duration::from_secs(20)).await;
    assert_eq!(d["outcome"], "completed", "{d}");
    assert!(d["phases"].as_array().unwrap().iter().any(|p| p["detail"]
        .as_str()
        .unwrap_or("")
        .starts_with("approved by token:admin (cli:")));
    assert_eq!(live(&r).await, ("green".into(), 2));

    // The next release goes to blue; abort it while it waits.
    let id = r.release("v3").await;
    r.wait_phase(id, "awaiting_approval", Duration::from_secs(20)).await;
    let (code, _, err) = r.cli(&["abort", "chat"]);
    assert_eq!(code, 0, "{err}");
    let d = r.wait_end(id, Duration::from_secs(20)).await;
    assert_eq!(d["outcome"], "aborted");
    assert!(d["reason"]
        .as_str()
        .unwrap()
        .starts_with("aborted by token:admin (cli:"));
    assert_eq!(live(&r).await, ("green".into(), 2));
    let refused = r
        .api(
            Method::POST,
            &format!("/v1/services/chat/releases/{id}/approve"),
            json!({}),
        )
        .await;
    assert_eq!(refused.status, 409);
}

#[tokio::test]
async fn verification_breach_rolls_back_by_itself_and_new_requests_succeed() {
    let release = "[services.chat.release.verify]\nbake = \"20s\"\nmin_requests = 10\nmax_error_rate = 0.05\n";
    let (r, _b, _g) = static_router(&["--error-rate", "0.5"], release).await;
    let traffic = Traffic::start(r.url("/v1/chat/completions"), 4, Duration::from_millis(5));
    let (code, out, _) = r.cli_async(&["release", "chat", "v2", "--wait"]).await;
    assert_eq!(code, 1, "a rolled back release exits 1: {out}");
    let (_, failed, _) = traffic.stop().await;
    assert!(!failed.is_empty(), "the faulty version did fail some requests");
    let d = r.release_doc(1).await;
    assert_eq!(d["outcome"], "rolled_back", "{d}");
    let reason = d["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("error rate ") && reason.contains("> 5.0% over"),
        "{reason}"
    );
    assert!(d["rollback_ms"].as_f64().is_some());
    let gate = d["gates"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["name"] == "error_rate")
        .unwrap()
        .clone();
    assert_eq!(gate["result"], "failing");
    assert_eq!(live(&r).await, ("blue".into(), 3));
    // After the rollback every request succeeds, on blue.
    let c = http_client();
    for _ in 0..30 {
        let resp = send(&c, Method::POST, &r.url("/v1/chat/completions"), &[], "{}")
            .await
            .unwrap();
        assert_eq!((resp.status.as_u16(), resp.header("x-cutover-color")), (200, "blue"));
    }
    let h = r
        .api(Method::GET, "/v1/services/chat/history", serde_json::Value::Null)
        .await
        .json();
    let rb = h["history"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == "rolled_back")
        .unwrap()
        .clone();
    assert_eq!(
        (rb["actor"].as_str(), rb["to"].as_str()),
        (Some("controller"), Some("blue"))
    );
}

#[tokio::test]
async fn too_few_requests_is_inconclusive_and_configuration_decides() {
    let (r, _b, _g) = static_router(
        &[],
        "[services.chat.release.verify]\nbake = \"500ms\"\nmin_requests = 20\n",
    )
    .await;
    let id = r.release("v2").await;
    let d = r.wait_end(id, Duration::from_secs(20)).await;
    assert_eq!(d["outcome"], "completed");
    assert!(
        d["reason"]
            .as_str()
            .unwrap()
            .starts_with("inconclusive, completed as configured"),
        "{d}"
    );
    assert_eq!(live(&r).await.0, "green");

    let release =
        "[services.chat.release.verify]\nbake = \"500ms\"\nmin_requests = 20\non_inconclusive = \"rollback\"\n";
    let (r, _b, _g) = static_router(&[], release).await;
    let id = r.release("v2").await;
    let d = r.wait_end(id, Duration::from_secs(20)).await;
    assert_eq!(d["outcome"], "rolled_back");
    assert!(d["reason"].as_str().unwrap().contains("only 0 requests"), "{d}");
    assert_eq!(live(&r).await.0, "blue", "{d}");
}

#[tokio::test]
async fn restart_during_verifying_reports_interrupted_and_keeps_committed_routing() {
    let (mut r, _b, _g) = static_router(&[], "[services.chat.release.verify]\nbake = \"5m\"\n").await;
    let id = r.release("v2").await;
    r.wait_phase(id, "verifying", Duration::from_secs(20)).await;
    r.proc.kill9();
    r.spawn().await;
    let d = r.release_doc(id).await;
    assert_eq!(d["outcome"], "interrupted");
    let reason = d["reason"].as_str().unwrap();
    assert!(
        reason.contains("restarted during verifying") && reason.contains("live: green, generation 2"),
        "{reason}"
    );
    assert_eq!(live(&r).await, ("green".into(), 2));
    assert!(r.status().await["release"].is_null(), "nothing is left running");
    // A new release can start.
    let id = r.release("v3").await;
    assert!(id > 1);
}

#[tokio::test]
async fn managed_processes_are_adopted_after_kill_9_not_restarted() {
    let ports = ManagedPorts::new();
    let mut r = Router::start(&managed_service(&ports, &[], "")).await;
    let id = r.release("v1").await;
    let d = r.wait_end(id, Duration::from_secs(30)).await;
    assert_eq!(d["outcome"], "completed", "{d}");
    let pid = get(&format!("http://127.0.0.1:{}/mock/stats", ports.blue))
        .await
        .unwrap()
        .json()["pid"]
        .clone();
    r.proc.kill9();
    r.spawn().await;
    assert_eq!(live(&r).await, ("blue".into(), 1));
    let resp = get(&r.url("/mock/stats")).await.unwrap();
    assert_eq!(resp.status, 200);
    assert_eq!(
        resp.json()["pid"],
        pid,
        "the same model server process serves after the restart"
    );
    assert!(r.log().contains("adopted running model server"));
}

#[tokio::test]
async fn old_color_scales_down_after_the_delay_but_not_before_its_stream_drains() {
    let ports = ManagedPorts::new();
    let release = format!(
        "scale_down_delay = \"300ms\"\ndrain_timeout = \"30s\"\n{VERIFY_SHORT}on_inconclusive = \"complete\"\n"
    );
    let r = Router::start(&managed_service(&ports, &["--token-interval", "20ms"], &release)).await;
    let id = r.release("v1").await;
    assert_eq!(r.wait_end(id, Duration::from_secs(30)).await["outcome"], "completed");
    // A 3-second stream on blue (v1) ...
    let c = http_client();
    let req = http::Request::post(r.url("/v1/chat/completions"))
        .body(http_body_util::Full::new(bytes::Bytes::from(
            r#"{"stream":true,"max_tokens":150}"#,
        )))
        .unwrap();
    let reader = tokio::spawn(read_stream(c.request(req).await.unwrap()));
    // ... while v2 is released to green and the delay passes.
    let id = r.release("v2").await;
    let d = r.wait_end(id, Duration::from_secs(30)).await;
    assert_eq!(d["outcome"], "completed", "{d}");
    // The scale-down has begun (scale_down_delay passed) and waits for blue's stream.
    wait_for(
        "the scale-down to wait for the stream",
        Duration::from_secs(10),
        || async {
            r.log()
                .contains("waiting for requests to finish before stopping the color")
                .then_some(())
        },
    )
    .await;
    assert!(!reader.is_finished());
    assert_eq!(r.status().await["colors"]["blue"]["in_flight"], 1);
    assert!(
        get(&format!("http://127.0.0.1:{}/health", ports.blue)).await.is_ok(),
        "blue still runs while its stream drains"
    );
    let (events, err) = reader.await.unwrap();
    assert_eq!(err, None);
    assert_eq!(stream_versions(&events).unwrap(), vec!["v1"; 151]);
    wait_for("blue to be scaled down", Duration::from_secs(10), || async {
        (r.status().await["colors"]["blue"]["state"] == "stopped").then_some(())
    })
    .await;
    assert!(
        get(&format!("http://127.0.0.1:{}/health", ports.blue)).await.is_err(),
        "blue's process is gone"
    );
    let (code, _, err) = r.cli(&["rollback", "chat"]);
    assert_eq!(code, 1);
    assert!(err.contains("--redeploy"), "{err}");
}

#[tokio::test]
async fn good_release_under_load_fails_no_request() {
    let ports = ManagedPorts::new();
    let r = Router::start(&managed_service(&ports, &[], VERIFY_SHORT)).await;
    let id = r.release("v1").await;
    assert_eq!(r.wait_end(id, Duration::from_secs(30)).await["outcome"], "completed");
    let traffic = Traffic::start(r.url("/v1/chat/completions"), 4, Duration::from_millis(2));
    let served = |v: &'static str| {
        let by = traffic.by_version.clone();
        move || {
            let n = by.lock().unwrap().get(v).copied().unwrap_or(0);
            async move { (n > 10).then_some(()) }
        }
    };
    wait_for("traffic to v1", Duration::from_secs(10), served("v1")).await;
    let (code, out, err) = r.cli_async(&["release", "chat", "v2", "--wait"]).await;
    assert_eq!(code, 0, "{out}{err}");
    wait_for("traffic to v2", Duration::from_secs(10), served("v2")).await;
    let (ok, failed, by) = traffic.stop().await;
    assert!(failed.is_empty(), "{:?}", &failed[..failed.len().min(5)]);
    assert!(
        by.get("v1").copied().unwrap_or(0) > 10 && by.get("v2").copied().unwrap_or(0) > 10,
        "{by:?}"
    );
    assert!(ok > 50);
}

#[tokio::test]
async fn warm_up_failing_aborts_before_any_traffic_moves() {
    let release = "warmup = { requests = 10, concurrency = 2, request = { method = \"POST\", path = \"/v1/chat/completions\", body = '{}' } }\n";
    let (r, _b, green) = static_router(&["--error-rate", "1.0"], release).await;
    let id = r.release("v2").await;
    let d = r.wait_end(id, Duration::from_secs(20)).await;
    assert_eq!(d["outcome"], "aborted");
    let reason = d["reason"].as_str().unwrap();
    assert!(
        reason.contains("warm-up of") && reason.contains("10 of 10 requests failed"),
        "{reason}"
    );
    assert_eq!(
        green.stats().await["model_requests"],
        10,
        "warm-up went to green directly"
    );
    assert_eq!(live(&r).await, ("blue".into(), 1));
}

#[tokio::test]
async fn killing_the_new_model_server_during_verification_rolls_back() {
    let ports = ManagedPorts::new();
    let release = "[services.chat.release.verify]\nbake = \"60s\"\nmin_requests = 1000\n";
    let r = Router::start(&managed_service(&ports, &[], release)).await;
    let id = r.release("v1").await;
    assert_eq!(r.wait_end(id, Duration::from_secs(30)).await["outcome"], "completed");
    let id = r.release("v2").await;
    r.wait_phase(id, "verifying", Duration::from_secs(30)).await;
    kill_mock_on(ports.green);
    let d = r.wait_end(id, Duration::from_secs(20)).await;
    assert_eq!(d["outcome"], "rolled_back");
    // The exit itself is the reason (seen at once), not the health checks noticing later.
    let reason = d["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("a model server of the new color exited during verifying: green replica 0 (v2, pid ")
            && reason.contains("signal: 9 (SIGKILL)"),
        "{d}"
    );
    assert_eq!(live(&r).await.0, "blue");
    let c = http_client();
    for _ in 0..20 {
        let resp = send(&c, Method::POST, &r.url("/v1/chat/completions"), &[], "{}")
            .await
            .unwrap();
        assert_eq!((resp.status.as_u16(), resp.header("x-cutover-version")), (200, "v1"));
    }
}

#[tokio::test]
async fn rollback_after_scale_down_redeploys_the_previous_version_through_the_pipeline() {
    let ports = ManagedPorts::new();
    // No traffic: min_requests = 0 keeps the redeploy's bake conclusive (else exit 4).
    let release = "scale_down_delay = \"200ms\"\ndrain_timeout = \"1s\"\n[services.chat.release.verify]\nbake = \"1s\"\nmin_requests = 0\n";
    let r = Router::start(&managed_service(&ports, &[], release)).await;
    for v in ["v1", "v2"] {
        let id = r.release(v).await;
        assert_eq!(r.wait_end(id, Duration::from_secs(30)).await["outcome"], "completed");
    }
    wait_for("blue to be scaled down", Duration::from_secs(10), || async {
        (r.status().await["colors"]["blue"]["state"] == "stopped").then_some(())
    })
    .await;
    let (code, out, err) = r.cli_async(&["rollback", "chat", "--redeploy"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("redeploying v1 as release #3"), "{out}");
    let st = r.status().await;
    assert_eq!(
        (st["live"].as_str(), st["colors"]["blue"]["version"].as_str()),
        (Some("blue"), Some("v1"))
    );
    assert_eq!(
        get(&r.url("/v1/models")).await.unwrap().header("x-cutover-version"),
        "v1"
    );
}

#[tokio::test]
async fn manual_release_promotes_itself_after_auto_promote_after() {
    let release = format!("promotion = \"manual\"\nauto_promote_after = \"300ms\"\n{VERIFY_SHORT}");
    let (r, _b, _g) = static_router(&[], &release).await;
    let id = r.release("v2").await;
    let d = r.wait_end(id, Duration::from_secs(20)).await;
    assert_eq!(d["outcome"], "completed");
    let approved = d["phases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["phase"] == "awaiting_approval")
        .unwrap()
        .clone();
    assert_eq!(approved["detail"], "approved by auto_promote_after (300ms)");
}

#[tokio::test]
async fn abort_tears_the_managed_idle_color_down_and_leaves_live_alone() {
    let ports = ManagedPorts::new();
    let r = Router::start(&managed_service(
        &ports,
        &[],
        &format!("promotion = \"manual\"\n{VERIFY_SHORT}"),
    ))
    .await;
    let id = r.release("v1").await;
    assert_eq!(
        r.wait_end(id, Duration::from_secs(30)).await["outcome"],
        "completed",
        "the first release needs no approval"
    );
    let id = r.release("v2").await;
    r.wait_phase(id, "awaiting_approval", Duration::from_secs(30)).await;
    assert!(
        get(&format!("http://127.0.0.1:{}/health", ports.green)).await.is_ok(),
        "green runs v2 while it waits"
    );
    let (code, _, err) = r.cli_async(&["abort", "chat"]).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(r.wait_end(id, Duration::from_secs(20)).await["outcome"], "aborted");
    wait_for("green's process to stop", Duration::from_secs(10), || async {
        get(&format!("http://127.0.0.1:{}/health", ports.green))
            .await
            .is_err()
            .then_some(())
    })
    .await;
    let st = r.status().await;
    assert_eq!(
        (st["live"].as_str(), st["colors"]["green"]["state"].as_str()),
        (Some("blue"), Some("stopped"))
    );
    assert_eq!(
        get(&r.url("/v1/models")).await.unwrap().header("x-cutover-version"),
        "v1"
    );
}

#[tokio::test]
async fn a_stalled_stream_is_cut_at_the_drain_deadline_and_counted() {
    let ports = ManagedPorts::new();
    // One chunk at once, then one every 30 s: a stream that outlives any drain.
    let release = format!("scale_down_delay = \"200ms\"\ndrain_timeout = \"500ms\"\n{VERIFY_SHORT}");
    let r = Router::start(&managed_service(&ports, &["--token-interval", "30s"], &release)).await;
    let id = r.release("v1").await;
    assert_eq!(r.wait_end(id, Duration::from_secs(30)).await["outcome"], "completed");
    let c = http_client();
    let req = http::Request::post(r.url("/v1/chat/completions"))
        .body(http_body_util::Full::new(bytes::Bytes::from(
            r#"{"stream":true,"max_tokens":5}"#,
        )))
        .unwrap();
    let resp = c.request(req).await.unwrap();
    let reader = tokio::spawn(async move {
        let (text, cut) = read_text(resp).await;
        (text, cut.is_some())
    });
    let id = r.release("v2").await;
    assert_eq!(r.wait_end(id, Duration::from_secs(30)).await["outcome"], "completed");
    let (text, cut) = tokio::time::timeout(Duration::from_secs(15), reader)
        .await
        .expect("cut at the deadline, not after 2 minutes")
        .unwrap();
    assert!(cut, "the transfer ends in an error: {text}");
    // Cut by the drain, not ended by the model: its first chunk only (the next is 30 s away).
    assert_eq!(text.matches("chat.completion.chunk").count(), 1, "{text}");
    assert!(
        text.contains("chat.completion.chunk") && text.contains("event: error") && text.contains("drain deadline"),
        "{text}"
    );
    let m = get(&r.admin_url("/metrics")).await.unwrap().text();
    assert!(
        m.contains("cutover_drain_closed_total{service=\"chat\",color=\"blue\",version=\"v1\"} 1"),
        "{m}"
    );
    wait_for("blue to be stopped", Duration::from_secs(10), || async {
        (r.status().await["colors"]["blue"]["state"] == "stopped").then_some(())
    })
    .await;
}

/// A managed `chat` where v1 went live on blue, then v2 on green (approved), blue was
/// scaled down, and a release of `bad` into blue was aborted: the scene of issue #25.
pub async fn scaled_down_then_aborted(ports: &ManagedPorts) -> Router {
    let release =
        format!("promotion = \"manual\"\nscale_down_delay = \"200ms\"\ndrain_timeout = \"1s\"\n{VERIFY_SHORT}");
    let r = Router::start(&managed_service(ports, &[], &release)).await;
    let id = r.release("v1").await;
    assert_eq!(r.wait_end(id, Duration::from_secs(30)).await["outcome"], "completed");
    let id = r.release("v2").await;
    r.wait_phase(id, "awaiting_approval", Duration::from_secs(30)).await;
    let (code, _, err) = r.cli_async(&["approve", "chat"]).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(r.wait_end(id, Duration::from_secs(30)).await["outcome"], "completed");
    wait_for("blue (v1) to be scaled down", Duration::from_secs(10), || async {
        (r.status().await["colors"]["blue"]["state"] == "stopped").then_some(())
    })
    .await;
    let id = r.release("bad").await;
    r.wait_phase(id, "awaiting_approval", Duration::from_secs(30)).await;
    assert_eq!(r.status().await["colors"]["blue"]["version"], "bad", "while it runs");
    let (code, _, err) = r.cli_async(&["abort", "chat"]).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(r.wait_end(id, Duration::from_secs(20)).await["outcome"], "aborted");
    r
}

/// Issue #25: after aborted releases into the scaled-down color, `rollback --redeploy` (and
/// the dashboard's Roll back, which reads the 409's message) offered the aborted build.
#[tokio::test]
async fn redeploy_brings_back_the_version_last_live_not_an_aborted_build() {
    let ports = ManagedPorts::new();
    let r = scaled_down_then_aborted(&ports).await;
    let st = wait_for("blue's label to settle", Duration::from_secs(10), || async {
        let st = r.status().await;
        (st["colors"]["blue"]["state"] == "stopped").then_some(st)
    })
    .await;
    assert_eq!(st["colors"]["blue"]["version"], "v1", "{st}");
    assert_eq!(st["colors"]["blue"]["endpoints"][0]["health"], "not_checked", "{st}");
    let plain = r.api(Method::POST, "/v1/services/chat/rollback", json!({})).await;
    assert_eq!(plain.status, 409, "{}", plain.text());
    assert!(plain.text().contains("to release v1 again"), "{}", plain.text());
    let redeploy = r
        .api(Method::POST, "/v1/services/chat/rollback", json!({"redeploy": true}))
        .await;
    assert_eq!(redeploy.status, 202, "{}", redeploy.text());
    let doc = redeploy.json();
    assert_eq!(
        (doc["release"]["version"].as_str(), doc["release"]["color"].as_str()),
        (Some("v1"), Some("blue")),
        "{doc}"
    );
    let id = doc["release"]["id"].as_i64().unwrap();
    r.wait_phase(id, "awaiting_approval", Duration::from_secs(30)).await;
    let (code, _, err) = r.cli_async(&["abort", "chat"]).await;
    assert_eq!(code, 0, "{err}");
    r.wait_end(id, Duration::from_secs(20)).await;
}

/// Issue #25: the gate read `healthy_endpoints 1 (limit 1)` for a color with 2 healthy ones.
#[tokio::test]
async fn the_healthy_endpoints_gate_reads_the_real_count() {
    let blue = Mock::start("v1", &[]).await;
    let (g1, g2) = (Mock::start("v2", &[]).await, Mock::start("v2", &[]).await);
    let r = Router::start(&format!(
        "{}\n[services.chat.release]\n[services.chat.release.verify]\nbake = \"500ms\"\nmin_requests = 0\n",
        static_service(&[&blue], &[&g1, &g2], "")
    ))
    .await;
    assert_eq!(r.switch("blue").await.status, 200);
    let id = r.release("v2").await;
    let d = r.wait_end(id, Duration::from_secs(30)).await;
    assert_eq!(d["outcome"], "completed", "{d}");
    let gate = d["gates"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["name"] == "healthy_endpoints")
        .cloned()
        .unwrap_or_else(|| panic!("{d}"));
    assert_eq!(
        (gate["value"].as_f64(), gate["limit"].as_f64()),
        (Some(2.0), Some(1.0)),
        "{gate}"
    );
}
