//! One release run end to end in paused time: phases stored in order, the switch, a bake of
//! minutes, the scale-down after its delay, and the rollback path.

use std::time::Duration;

use cutover_proxy::Color;
use cutover_release::{Outcome, Phase};
use cutover_store::SwitchKind;

use super::support::{controller, kinds, wait_end, TempDir, TinyServer};
use crate::service::switch::SwitchRequest;
use crate::service::ColorState;

const SMOKE: &str = "[[services.chat.release.smoke]]\nname = \"answers as v2\"\nrequest = { path = \"/v1/models\" }\nexpect = { status = 200, json = { \"/model\" = \"v2\" } }\n";

async fn blue_live(ctl: &crate::Controller) {
    ctl.switch(
        "chat",
        SwitchRequest {
            to: Some(Color::Blue),
            if_generation: None,
            force: false,
            kind: SwitchKind::Switched,
            actor: "test".into(),
            reason: "start".into(),
            release_id: None,
        },
    )
    .await
    .unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_release_completes_after_a_ten_minute_bake_then_scales_the_old_color_down() {
    let (blue, green) = (TinyServer::start("v1").await, TinyServer::start("v2").await);
    let dir = TempDir::new("release-ok");
    let release = format!(
        "scale_down_delay = \"30m\"\n{SMOKE}[services.chat.release.verify]\nbake = \"10m\"\nmin_requests = 0\n"
    );
    let ctl = controller(&dir, blue.addr, green.addr, &release);
    blue_live(&ctl).await;
    let real = std::time::Instant::now();

    let doc = ctl.start_release("chat", "v2", "test").await.unwrap();
    assert_eq!((doc.color, doc.previous_color), (Color::Green, Some(Color::Blue)));
    let d = wait_end(&ctl, doc.id).await;
    assert_eq!(d.outcome, Some(Outcome::Completed), "{:?}", d.reason);
    let phases: Vec<Phase> = d.phases.iter().map(|p| p.phase).collect();
    assert_eq!(
        phases,
        [
            Phase::Provisioning,
            Phase::WaitingHealthy,
            Phase::WarmingUp,
            Phase::SmokeTesting,
            Phase::PreSwitchHooks,
            Phase::Switching,
            Phase::Verifying
        ]
    );
    assert_eq!(
        d.phases[3].detail.as_deref(),
        Some("1 check passed on 1 endpoint (1 requests)")
    );
    let baked = d.phases[6].elapsed_ms.unwrap();
    assert!(
        (600_000..610_000).contains(&baked),
        "the bake took {baked} ms of tokio time"
    );
    assert!(
        real.elapsed() < Duration::from_secs(30),
        "paused time: the bake took no real time"
    );
    assert!(
        d.reason.as_deref().unwrap().starts_with("bake of 10m passed"),
        "{:?}",
        d.reason
    );
    assert_eq!(d.generation, Some(2));
    let svc = ctl.service("chat").unwrap().clone();
    assert_eq!(svc.live(), Some(Color::Green));
    assert_eq!(svc.color_state(Color::Blue), ColorState::Warm);
    assert_eq!(
        kinds(&ctl).await,
        ["release_completed", "switched", "release_started", "switched"]
    );

    // Warm for scale_down_delay, then marked stale (static endpoints are not ours to stop).
    tokio::time::sleep(Duration::from_secs(29 * 60)).await;
    assert_eq!(svc.color_state(Color::Blue), ColorState::Warm);
    tokio::time::sleep(Duration::from_secs(2 * 60)).await;
    assert_eq!(svc.color_state(Color::Blue), ColorState::Stale);
    assert_eq!(kinds(&ctl).await[0], "scaled_down");
    assert!(ctl.release_doc("chat", doc.id).await.unwrap().scaled_down);
}

#[tokio::test(start_paused = true)]
async fn an_inconclusive_bake_rolls_back_when_configured_to() {
    let (blue, green) = (TinyServer::start("v1").await, TinyServer::start("v2").await);
    let dir = TempDir::new("release-rollback");
    let release = "[services.chat.release.verify]\nbake = \"2m\"\nmin_requests = 20\non_inconclusive = \"rollback\"\n";
    let ctl = controller(&dir, blue.addr, green.addr, release);
    blue_live(&ctl).await;
    let id = ctl.start_release("chat", "v2", "test").await.unwrap().id;
    let d = wait_end(&ctl, id).await;
    assert_eq!(d.outcome, Some(Outcome::RolledBack));
    let reason = d.reason.unwrap();
    assert!(
        reason.contains("only 0 requests, fewer than min_requests 20"),
        "{reason}"
    );
    assert_eq!(d.generation, Some(3), "switched at 2, back at 3");
    let svc = ctl.service("chat").unwrap();
    assert_eq!(svc.live(), Some(Color::Blue));
    assert_eq!(svc.color_state(Color::Green), ColorState::Failed);
    let h = ctl.history("chat", 10).await.unwrap();
    let lines: Vec<(String, Option<i64>)> = h.iter().map(|e| (e.kind.to_string(), e.release_id)).collect();
    assert_eq!(
        lines,
        [
            ("release_rolled_back".to_string(), Some(id)),
            ("rolled_back".to_string(), Some(id)),
            ("switched".to_string(), Some(id)),
            ("release_started".to_string(), Some(id)),
            ("switched".to_string(), None),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn a_failing_smoke_check_aborts_before_the_switch() {
    let (blue, green) = (TinyServer::start("v1").await, TinyServer::start("v3").await);
    let dir = TempDir::new("release-abort");
    let ctl = controller(&dir, blue.addr, green.addr, SMOKE);
    blue_live(&ctl).await;
    let id = ctl.start_release("chat", "v2", "test").await.unwrap().id;
    let d = wait_end(&ctl, id).await;
    assert_eq!((d.outcome, d.phase), (Some(Outcome::Aborted), Phase::Aborted));
    let reason = d.reason.unwrap();
    assert!(
        reason.contains("smoke check \"answers as v2\" failed")
            && reason.contains("expected /model = \"v2\", got \"v3\""),
        "{reason}"
    );
    let svc = ctl.service("chat").unwrap();
    assert_eq!(
        (svc.live(), svc.proxy.table().generation),
        (Some(Color::Blue), 1),
        "live untouched"
    );
    assert_eq!(svc.color_state(Color::Green), ColorState::Failed);
    assert_eq!(kinds(&ctl).await, ["release_aborted", "release_started", "switched"]);
}
