//! The old color's scale-down after a release: drained and marked after the delay, not at all
//! if it is live again by then, and cancelled by the next release.

use std::time::Duration;

use cutover_proxy::Color;
use cutover_store::SwitchKind;

use super::support::{controller, kinds, TempDir, TinyServer};
use crate::release::scale_down::ScaleDowns;
use crate::service::switch::SwitchRequest;
use crate::service::ColorState;

fn to(color: Color) -> SwitchRequest {
    SwitchRequest {
        to: Some(color),
        if_generation: None,
        force: false,
        kind: SwitchKind::Switched,
        actor: "test".into(),
        reason: "because".into(),
        release_id: None,
    }
}

/// Waits (in paused time) until `downs` has no task left for `chat`.
async fn settled(downs: &ScaleDowns) {
    let waiting = async {
        while downs.is_pending("chat") {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(3600), waiting)
        .await
        .expect("the scale-down ends within a (virtual) hour");
}

#[tokio::test(start_paused = true)]
async fn the_old_static_color_goes_stale_after_the_delay_and_history_says_so() {
    let (blue, green) = (TinyServer::start("v1").await, TinyServer::start("v2").await);
    let dir = TempDir::new("scale-down");
    let ctl = controller(&dir, blue.addr, green.addr, "");
    ctl.switch("chat", to(Color::Blue)).await.unwrap();
    ctl.switch("chat", to(Color::Green)).await.unwrap();
    let svc = ctl.service("chat").unwrap().clone();
    let downs = ScaleDowns::default();
    downs.schedule(svc.clone(), Color::Blue, Duration::from_secs(600), 1);
    assert!(downs.is_pending("chat"));
    assert_eq!(svc.color_state(Color::Blue), ColorState::Idle, "up during the delay");
    settled(&downs).await;
    assert_eq!(svc.color_state(Color::Blue), ColorState::Stale);
    assert!(!svc.watched(Color::Blue), "a static color's checks stop with it");
    assert_eq!(kinds(&ctl).await.first().map(String::as_str), Some("scaled_down"));
}

#[tokio::test(start_paused = true)]
async fn a_color_live_again_by_then_is_left_alone() {
    let (blue, green) = (TinyServer::start("v1").await, TinyServer::start("v2").await);
    let dir = TempDir::new("scale-down-live");
    let ctl = controller(&dir, blue.addr, green.addr, "");
    ctl.switch("chat", to(Color::Blue)).await.unwrap();
    ctl.switch("chat", to(Color::Green)).await.unwrap();
    let svc = ctl.service("chat").unwrap().clone();
    let downs = ScaleDowns::default();
    downs.schedule(svc.clone(), Color::Blue, Duration::from_secs(600), 1);
    // A rollback within the delay.
    ctl.switch("chat", to(Color::Blue)).await.unwrap();
    settled(&downs).await;
    assert_eq!(svc.color_state(Color::Blue), ColorState::Live);
    assert!(!kinds(&ctl).await.iter().any(|k| k == "scaled_down"));
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_scale_down_never_runs() {
    let (blue, green) = (TinyServer::start("v1").await, TinyServer::start("v2").await);
    let dir = TempDir::new("scale-down-cancel");
    let ctl = controller(&dir, blue.addr, green.addr, "");
    ctl.switch("chat", to(Color::Blue)).await.unwrap();
    ctl.switch("chat", to(Color::Green)).await.unwrap();
    let svc = ctl.service("chat").unwrap().clone();
    let downs = ScaleDowns::default();
    downs.schedule(svc.clone(), Color::Blue, Duration::from_secs(600), 1);
    downs.cancel("chat");
    assert!(!downs.is_pending("chat"), "the task left the set when cancelled");
    // A second schedule replaces a pending one: only one scale-down per service.
    downs.schedule(svc.clone(), Color::Blue, Duration::from_secs(600), 1);
    downs.schedule(svc.clone(), Color::Blue, Duration::from_secs(1200), 1);
    tokio::time::sleep(Duration::from_secs(900)).await;
    assert_eq!(
        svc.color_state(Color::Blue),
        ColorState::Idle,
        "the first schedule was replaced"
    );
    settled(&downs).await;
    assert_eq!(svc.color_state(Color::Blue), ColorState::Stale);
}
