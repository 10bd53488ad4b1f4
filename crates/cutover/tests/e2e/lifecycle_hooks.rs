//! The hooks of the seed's steps: `provision` brings up a static color with the user's own
//! script (cutover then waits for its health), and `post_scale_down` runs once the old color
//! has stopped (the contract step of an expand/contract migration).

use std::time::Duration;

use http::Method;

use crate::support::*;

const VERIFY: &str = "[services.chat.release.verify]\nbake = \"1s\"\nmin_requests = 0\n";

/// Green is an address where nothing runs; the provision hook starts a mock-model there
/// with the release's version, and the release goes live on it.
#[tokio::test]
async fn a_provision_hook_brings_up_a_static_color() {
    let blue = Mock::start("v1", &[]).await;
    // Its drop kills whatever the hook left listening on the green port.
    let ports = ManagedPorts::new();
    let script =
        format!("{MOCK} --port ${{CUTOVER_ENDPOINTS##*:}} --model-version \"$CUTOVER_VERSION\" >/dev/null 2>&1 &");
    let r = Router::start(&format!(
        "[services.chat]\nlisten = \"{{listen}}\"\nhealth = {{ path = \"/health\", interval = \"200ms\", timeout = \"1s\" }}\n\
         [services.chat.blue]\nendpoints = [\"{}\"]\nversion = \"v1\"\n[services.chat.green]\nendpoints = [\"127.0.0.1:{}\"]\n\
         [services.chat.release]\n{VERIFY}[services.chat.release.hooks]\nprovision = [[\"sh\", \"-c\", {script:?}]]\n",
        blue.addr(),
        ports.green
    ))
    .await;
    assert_eq!(r.switch("blue").await.status, 200);
    assert!(
        get(&format!("http://127.0.0.1:{}/health", ports.green)).await.is_err(),
        "nothing at green yet"
    );
    let id = r.release("v2").await;
    let d = r.wait_end(id, Duration::from_secs(60)).await;
    assert_eq!(d["outcome"], "completed", "{d}");
    let provisioning = d["phases"][0]["detail"].as_str().unwrap_or_default();
    assert!(provisioning.contains("1 provision hook succeeded"), "{d}");
    let resp = send(&r.http, Method::POST, &r.url("/v1/chat/completions"), &[], "{}")
        .await
        .unwrap();
    assert_eq!(resp.status, 200);
    // Served by the process the hook started, with the version it was given.
    assert_eq!(
        (resp.header("x-cutover-color"), resp.header("x-model-version")),
        ("green", "v2")
    );
}

/// After v2 replaces v1 and `scale_down_delay` passes, the hook runs: by then v1's process
/// no longer listens, v2's does, and the hook is told which version was stopped.
#[tokio::test]
async fn a_post_scale_down_hook_runs_once_the_old_color_has_stopped() {
    let ports = ManagedPorts::new();
    let dir = TempDir::new("post-scale-down");
    let marker = dir.path().join("marker");
    let probe = |color: &str, port: u16| {
        format!("if (exec 3<>/dev/tcp/127.0.0.1/{port}) 2>/dev/null; then echo {color}=up; else echo {color}=down; fi")
    };
    let script = format!(
        "{{ {}; {}; echo stopped=$CUTOVER_STOPPED_VERSION; }} > {}",
        probe("blue", ports.blue),
        probe("green", ports.green),
        marker.display()
    );
    let r = Router::start(&managed_service(
        &ports,
        &[],
        &format!("scale_down_delay = \"1s\"\n{VERIFY}[services.chat.release.hooks]\npost_scale_down = [[\"bash\", \"-c\", {script:?}]]\n"),
    ))
    .await;
    let first = r.release("v1").await;
    assert_eq!(r.wait_end(first, Duration::from_secs(60)).await["color"], "blue");
    assert!(!marker.exists(), "no scale-down after a first release");
    let id = r.release("v2").await;
    assert_eq!(r.wait_end(id, Duration::from_secs(60)).await["outcome"], "completed");
    let d = wait_for("the scale-down's hook", Duration::from_secs(30), || async {
        let d = r.release_doc(id).await;
        d["post_scale_down"].is_string().then_some(d)
    })
    .await;
    assert_eq!(d["post_scale_down"], "1 post_scale_down hook succeeded", "{d}");
    let text = std::fs::read_to_string(&marker).unwrap();
    assert_eq!(text, "blue=down\ngreen=up\nstopped=v1\n");
}
