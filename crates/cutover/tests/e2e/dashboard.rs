//! The dashboard in a real browser: headless Chromium (Debian's) driven by playwright-core.
//! It must show what the API says, a click on "Switch" must switch and show it, and "Roll
//! back" after a scale-down must offer to redeploy the version last live there.
//! Screenshots land in target/dashboard-{before,after}.png.

use std::path::PathBuf;
use std::time::Duration;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_shows_the_api_state_and_switches_on_click() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let script = root.join("tests/browser/dashboard.mjs");
    assert!(
        root.join("tests/browser/node_modules/playwright-core").exists(),
        "playwright-core is missing: run `npm ci --prefix tests/browser` (bash .ci/run does) and install chromium"
    );
    let blue = Mock::start("v1", &[]).await;
    let green = Mock::start("v2", &[]).await;
    let r = Router::start(&static_service(&[&blue], &[&green], "")).await;
    assert_eq!(r.switch("blue").await.status, 200);
    // Some traffic, so the chart has something to draw.
    for _ in 0..20 {
        get(&r.url("/v1/models")).await.unwrap();
    }
    // The chart draws from the 2-second samples: wait for one that saw the traffic.
    wait_for("a sample with traffic", Duration::from_secs(10), || async {
        let s = r
            .api(http::Method::GET, "/v1/services/chat/series", serde_json::Value::Null)
            .await
            .json();
        s["points"]
            .as_array()?
            .iter()
            .any(|p| p["colors"]["blue"]["rps"].as_f64().unwrap_or(0.0) > 0.0)
            .then_some(())
    })
    .await;
    // Under the clone's target/ even when CARGO_TARGET_DIR points elsewhere: CI keeps it.
    let target = root.join("target");
    std::fs::create_dir_all(&target).unwrap();
    let shot = target.join("dashboard");
    let out = tokio::process::Command::new("node")
        .arg(&script)
        .arg(r.admin_url(""))
        .arg(&r.token)
        .arg(&shot)
        .output()
        .await
        .expect("node runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "browser test failed: {text}");
    assert!(text.contains("ok: blue -> green, generation 2"), "{text}");
    assert_eq!(r.status().await["live"], "green");
    assert!(target.join("dashboard-after.png").exists());
}

/// Issue #25: the Roll back button, after the previous color was scaled down and a release
/// into it aborted, named the aborted build and offered nothing; it offers to redeploy the
/// version last live there, and does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roll_back_offers_to_redeploy_the_version_last_live() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    assert!(
        root.join("tests/browser/node_modules/playwright-core").exists(),
        "playwright-core is missing: run `npm ci --prefix tests/browser` (bash .ci/run does) and install chromium"
    );
    let ports = ManagedPorts::new();
    let r = crate::release::scaled_down_then_aborted(&ports).await;
    let out = tokio::process::Command::new("node")
        .arg(root.join("tests/browser/rollback.mjs"))
        .arg(r.admin_url(""))
        .arg(&r.token)
        .output()
        .await
        .expect("node runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "browser test failed: {text}");
    assert!(
        text.contains("to release v1 again") && text.contains("Redeploy it now?"),
        "{text}"
    );
    assert!(!text.contains("bad"), "the aborted build is not offered: {text}");
    assert!(text.contains("release: v1"), "{text}");
    let st = r.status().await;
    assert_eq!(
        (st["release"]["version"].as_str(), st["release"]["color"].as_str()),
        (Some("v1"), Some("blue")),
        "{st}"
    );
    let (code, _, err) = r.cli_async(&["abort", "chat"]).await;
    assert_eq!(code, 0, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_shows_each_colors_share_and_the_steps_of_a_canary() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let script = root.join("tests/browser/steps.mjs");
    assert!(
        root.join("tests/browser/node_modules/playwright-core").exists(),
        "playwright-core is missing: run `npm ci --prefix tests/browser` (bash .ci/run does) and install chromium"
    );
    let blue = Mock::start("v1", &[]).await;
    let green = Mock::start("v2", &[]).await;
    let r = Router::start(&format!(
        "{}\n[services.chat.release]\ntraffic = {{ canary = {{ percent = 10, bake = \"10m\" }} }}\n",
        static_service(&[&blue], &[&green], "")
    ))
    .await;
    assert_eq!(r.switch("blue").await.status, 200);
    let _id = r.release("v2").await;
    wait_for("the canary step", Duration::from_secs(20), || async {
        (r.status().await["colors"]["green"]["weight"] == 10).then_some(())
    })
    .await;
    let out = tokio::process::Command::new("node")
        .arg(&script)
        .arg(r.admin_url(""))
        .arg(&r.token)
        .output()
        .await
        .expect("node runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "browser test failed: {text}");
    assert!(text.contains("ok: green 10%, step 1/1 running"), "{text}");
}

/// The dashboard shows an external gate while the release bakes: its name, the metric it
/// reads with the reduction, its value and result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_shows_external_gate_values_and_queries() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    assert!(
        root.join("tests/browser/node_modules/playwright-core").exists(),
        "playwright-core is missing: run `npm ci --prefix tests/browser` (bash .ci/run does) and install chromium"
    );
    let blue = Mock::start("v1", &[]).await;
    let g1 = Mock::start("v2", &["--metric", "vllm:num_requests_waiting=3"]).await;
    let g2 = Mock::start("v2", &["--metric", "vllm:num_requests_waiting=4"]).await;
    let r = Router::start(&format!(
        "{}\n[services.chat.release]\n[services.chat.release.verify]\nbake = \"5m\"\nmin_requests = 0\n\
         [[services.chat.release.verify.scrape]]\nname = \"queue\"\nmetric = \"vllm:num_requests_waiting\"\nreduce = \"sum\"\nmax = 100\ninterval = \"200ms\"\n",
        static_service(&[&blue], &[&g1, &g2], "")
    ))
    .await;
    assert_eq!(r.switch("blue").await.status, 200);
    let id = r.release("v2").await;
    r.wait_phase(id, "verifying", Duration::from_secs(30)).await;
    let out = tokio::process::Command::new("node")
        .arg(root.join("tests/browser/gates.mjs"))
        .arg(r.admin_url(""))
        .arg(&r.token)
        .output()
        .await
        .expect("node runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "browser test failed: {text}");
    assert!(
        text.contains("gate: queue | sum(vllm:num_requests_waiting) | 7.000 | passing"),
        "{text}"
    );
}
