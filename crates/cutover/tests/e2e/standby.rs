//! Standby of the old color (`release.standby`): with `"sleep"`, the old color is put to
//! sleep once the release completes (vLLM sleep mode on mock-model), and a rollback wakes it,
//! waits until it answers, then switches, with no failed request under load; a color that
//! does not wake fails the rollback and live traffic stays where it was.

use std::time::Duration;

use http::Method;
use serde_json::Value;

use crate::support::*;

async fn is_sleeping(m: &Mock) -> Option<bool> {
    let r = get(&format!("http://127.0.0.1:{}/is_sleeping", m.port)).await.ok()?;
    r.json()["is_sleeping"].as_bool()
}

/// Blue (v1) live, then a release of v2 onto green with `standby = "sleep"`; returns once
/// blue is asleep by its own word and by cutover's status.
async fn released_with_sleeping_blue() -> (Router, Mock, Mock) {
    let blue = Mock::start("v1", &["--wake-time", "300ms"]).await;
    let green = Mock::start("v2", &[]).await;
    let r = Router::start(&format!(
        "{}\n[services.chat.release]\nstandby = \"sleep\"\nwake_timeout = \"10s\"\n\
         [services.chat.release.verify]\nbake = \"1s\"\nmin_requests = 0\n",
        static_service(&[&blue], &[&green], "")
    ))
    .await;
    assert_eq!(r.switch("blue").await.status, 200);
    let id = r.release("v2").await;
    assert_eq!(r.wait_end(id, Duration::from_secs(60)).await["outcome"], "completed");
    wait_for("blue to be put to sleep", Duration::from_secs(30), || async {
        let state = r.status().await["colors"]["blue"]["state"].clone();
        (is_sleeping(&blue).await == Some(true) && state == "sleeping").then_some(())
    })
    .await;
    assert_eq!(r.release_doc(id).await["standby_sleeping"], true);
    (r, blue, green)
}

#[tokio::test]
async fn a_rollback_wakes_the_sleeping_old_color_then_switches_without_a_failed_request() {
    let (r, blue, _green) = released_with_sleeping_blue().await;
    let traffic = Traffic::start(r.url("/v1/chat/completions"), 4, Duration::from_millis(5));
    wait_for("traffic on green", Duration::from_secs(10), || async {
        (traffic.ok.load(std::sync::atomic::Ordering::Relaxed) > 20).then_some(())
    })
    .await;
    let resp = r.api(Method::POST, "/v1/services/chat/rollback", Value::Null).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    // Awake before it was live: the switch came after the wake, not before.
    assert_eq!(is_sleeping(&blue).await, Some(false));
    wait_for("traffic on blue", Duration::from_secs(10), || async {
        let by = traffic.by_version.lock().unwrap().get("v1").copied().unwrap_or(0);
        (by > 20).then_some(())
    })
    .await;
    let (ok, failed, by_version) = traffic.stop().await;
    assert!(
        failed.is_empty(),
        "{} failed of {}: {:?}",
        failed.len(),
        ok,
        &failed[..failed.len().min(5)]
    );
    // Served by v2 until the rollback and by v1 after it (the waits above saw 20 of each), by
    // nothing else.
    let versions: Vec<&str> = by_version.keys().map(String::as_str).collect();
    assert_eq!(versions, ["v1", "v2"], "{by_version:?}");
    let status = r.status().await;
    assert_eq!(
        (status["live"].as_str(), status["colors"]["blue"]["state"].as_str()),
        (Some("blue"), Some("live"))
    );
}

#[tokio::test]
async fn a_failed_wake_fails_the_rollback_and_leaves_live_traffic_where_it_was() {
    let (r, mut blue, _green) = released_with_sleeping_blue().await;
    let generation = r.status().await["generation"].clone();
    blue.proc.kill9();
    let resp = r.api(Method::POST, "/v1/services/chat/rollback", Value::Null).await;
    assert_eq!(resp.status, 409, "{}", resp.text());
    let err = resp.json();
    assert_eq!(err["error"]["code"], "wake_failed", "{err}");
    assert!(
        err["error"]["message"].as_str().unwrap().contains("did not wake"),
        "{err}"
    );
    let status = r.status().await;
    assert_eq!(
        (status["live"].as_str(), &status["generation"]),
        (Some("green"), &generation)
    );
    let resp = send(&r.http, Method::POST, &r.url("/v1/chat/completions"), &[], "{}")
        .await
        .unwrap();
    assert_eq!((resp.status.as_u16(), resp.header("x-model-version")), (200, "v2"));
}

/// `standby = "keep"`: no scale-down is scheduled (none is ever due), the old color stays
/// awake and checked, and a rollback is one switch.
#[tokio::test]
async fn standby_keep_schedules_no_scale_down_and_a_rollback_is_one_switch() {
    let blue = Mock::start("v1", &[]).await;
    let green = Mock::start("v2", &[]).await;
    let r = Router::start(&format!(
        "{}\n[services.chat.release]\nstandby = \"keep\"\nscale_down_delay = \"100ms\"\n\
         [services.chat.release.verify]\nbake = \"1s\"\nmin_requests = 0\n",
        static_service(&[&blue], &[&green], "")
    ))
    .await;
    assert_eq!(r.switch("blue").await.status, 200);
    let id = r.release("v2").await;
    let d = r.wait_end(id, Duration::from_secs(60)).await;
    assert_eq!(d["outcome"], "completed", "{d}");
    // The outcome shows once the run has ended, after it decided the old color's standby.
    assert!(d["scale_down_at"].is_null(), "{d}");
    assert_eq!(is_sleeping(&blue).await, Some(false));
    let resp = r.api(Method::POST, "/v1/services/chat/rollback", Value::Null).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(r.status().await["live"], "blue");
}

/// A cutover restart keeps knowing the old color is asleep (its servers kept running, asleep):
/// a rollback after it still wakes the color first.
#[tokio::test]
async fn after_a_restart_a_sleeping_color_is_still_woken_before_a_rollback() {
    let (mut r, blue, _green) = released_with_sleeping_blue().await;
    r.proc.kill9();
    r.spawn().await;
    assert_eq!(r.status().await["colors"]["blue"]["state"], "sleeping");
    let resp = r.api(Method::POST, "/v1/services/chat/rollback", Value::Null).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(is_sleeping(&blue).await, Some(false));
    assert_eq!(r.status().await["live"], "blue");
}

/// The next release onto the sleeping static color wakes it while provisioning (nobody
/// restarts static endpoints), then goes through health and the switch as usual; the color it
/// leaves is put to sleep in turn.
#[tokio::test]
async fn a_release_onto_a_sleeping_static_color_wakes_it_first() {
    let (r, blue, green) = released_with_sleeping_blue().await;
    let id = r.release("v1").await;
    let d = r.wait_end(id, Duration::from_secs(60)).await;
    assert_eq!(
        (d["outcome"].as_str(), d["color"].as_str()),
        (Some("completed"), Some("blue")),
        "{d}"
    );
    assert_eq!(is_sleeping(&blue).await, Some(false));
    wait_for("green to be put to sleep", Duration::from_secs(30), || async {
        (is_sleeping(&green).await == Some(true)).then_some(())
    })
    .await;
    assert_eq!(r.status().await["live"], "blue");
}

/// The same with managed processes: cutover's own blue process is put to sleep after v2's
/// release (it keeps running, asleep), and a rollback under load wakes it before switching.
#[tokio::test]
async fn a_managed_old_color_sleeps_and_a_rollback_under_load_wakes_it() {
    let ports = ManagedPorts::new();
    let r = Router::start(&managed_service(
        &ports,
        &["--wake-time", "300ms"],
        "standby = \"sleep\"\n[services.chat.release.verify]\nbake = \"1s\"\nmin_requests = 0\n",
    ))
    .await;
    for version in ["v1", "v2"] {
        let id = r.release(version).await;
        assert_eq!(r.wait_end(id, Duration::from_secs(60)).await["outcome"], "completed");
    }
    let sleeping = |port: u16| async move {
        let r = get(&format!("http://127.0.0.1:{port}/is_sleeping")).await.ok()?;
        r.json()["is_sleeping"].as_bool()
    };
    wait_for("blue to be put to sleep", Duration::from_secs(30), || async {
        (sleeping(ports.blue).await == Some(true)).then_some(())
    })
    .await;
    let traffic = Traffic::start(r.url("/v1/chat/completions"), 4, Duration::from_millis(5));
    wait_for("traffic on green", Duration::from_secs(10), || async {
        (traffic.ok.load(std::sync::atomic::Ordering::Relaxed) > 20).then_some(())
    })
    .await;
    let resp = r.api(Method::POST, "/v1/services/chat/rollback", Value::Null).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(sleeping(ports.blue).await, Some(false));
    wait_for("traffic on blue", Duration::from_secs(10), || async {
        let by = traffic.by_version.lock().unwrap().get("v1").copied().unwrap_or(0);
        (by > 20).then_some(())
    })
    .await;
    let (_, failed, _) = traffic.stop().await;
    assert!(
        failed.is_empty(),
        "{} failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
}
