//! The controller's switch, compare-and-swap and rollback, against a real store.

use cutover_proxy::Color;
use cutover_store::SwitchKind;

use super::support::{controller, kinds, TempDir, TinyServer};
use crate::base::error::{ControlError, SwitchError};
use crate::service::switch::{RollbackRequest, SwitchRequest};
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

fn rollback() -> RollbackRequest {
    RollbackRequest {
        actor: "test".into(),
        ..RollbackRequest::default()
    }
}

#[tokio::test(start_paused = true)]
async fn a_switch_is_stored_then_published_and_survives_a_rebuild() {
    let (blue, green) = (TinyServer::start("v1").await, TinyServer::start("v2").await);
    let dir = TempDir::new("switch");
    let ctl = controller(&dir, blue.addr, green.addr, "");
    let svc = ctl.service("chat").unwrap().clone();
    assert_eq!(svc.live(), None);

    let out = ctl.switch("chat", to(Color::Blue)).await.unwrap();
    assert_eq!((out.live, out.previous, out.generation), (Color::Blue, None, 1));
    assert_eq!(out.version.as_deref(), Some("v1"));
    let table = svc.proxy.table();
    assert_eq!((table.live_color(), table.generation), (Some(Color::Blue), 1));
    assert_eq!(svc.color_state(Color::Blue), ColorState::Live);
    assert_eq!(svc.color_state(Color::Green), ColorState::Idle);
    assert!(
        blue.hits.load(std::sync::atomic::Ordering::Relaxed) > 0,
        "the target was probed first"
    );

    // Without a color: the idle one.
    let out = ctl
        .switch(
            "chat",
            SwitchRequest {
                to: None,
                ..to(Color::Blue)
            },
        )
        .await
        .unwrap();
    assert_eq!(
        (out.live, out.previous, out.generation),
        (Color::Green, Some(Color::Blue), 2)
    );
    assert_eq!(kinds(&ctl).await, ["switched", "switched"]);

    // What the store holds is what a new controller publishes.
    drop(ctl);
    let again = controller(&dir, blue.addr, green.addr, "");
    let table = again.service("chat").unwrap().proxy.table();
    assert_eq!((table.live_color(), table.generation), (Some(Color::Green), 2));
}

#[tokio::test(start_paused = true)]
async fn a_stale_generation_is_refused_and_changes_nothing() {
    let (blue, green) = (TinyServer::start("v1").await, TinyServer::start("v2").await);
    let dir = TempDir::new("stale");
    let ctl = controller(&dir, blue.addr, green.addr, "");
    ctl.switch("chat", to(Color::Blue)).await.unwrap();
    let stale = SwitchRequest {
        if_generation: Some(0),
        ..to(Color::Green)
    };
    match ctl.switch("chat", stale).await {
        Err(ControlError::Switch(SwitchError::StaleGeneration { expected: 0, actual: 1 })) => {}
        other => panic!("expected a stale generation, got {other:?}"),
    }
    let table = ctl.service("chat").unwrap().proxy.table();
    assert_eq!((table.live_color(), table.generation), (Some(Color::Blue), 1));
    assert_eq!(kinds(&ctl).await, ["switched"], "nothing was recorded");
    let current = SwitchRequest {
        if_generation: Some(1),
        ..to(Color::Green)
    };
    assert_eq!(ctl.switch("chat", current).await.unwrap().generation, 2);
}

#[tokio::test(start_paused = true)]
async fn an_unhealthy_target_is_refused_unless_forced() {
    let blue = TinyServer::start("v1").await;
    // A port nobody listens on: the probe made at once finds it refusing connections.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let dir = TempDir::new("unhealthy");
    let ctl = controller(&dir, blue.addr, closed, "");
    ctl.switch("chat", to(Color::Blue)).await.unwrap();
    match ctl.switch("chat", to(Color::Green)).await {
        Err(ControlError::Switch(SwitchError::TargetUnhealthy {
            color: Color::Green,
            detail,
        })) => {
            assert!(detail.contains(&format!("{closed} unhealthy")), "{detail}");
        }
        other => panic!("expected an unhealthy target, got {other:?}"),
    }
    assert_eq!(ctl.service("chat").unwrap().live(), Some(Color::Blue));
    let forced = SwitchRequest {
        force: true,
        ..to(Color::Green)
    };
    assert_eq!(ctl.switch("chat", forced).await.unwrap().live, Color::Green);
}

#[tokio::test(start_paused = true)]
async fn rollback_goes_back_once_and_refuses_a_stopped_color() {
    let (blue, green) = (TinyServer::start("v1").await, TinyServer::start("v2").await);
    let dir = TempDir::new("rollback");
    let ctl = controller(&dir, blue.addr, green.addr, "");
    match ctl.rollback("chat", rollback()).await {
        Err(ControlError::Switch(SwitchError::NothingToRollBack { .. })) => {}
        other => panic!("nothing is live yet, got {other:?}"),
    }
    ctl.switch("chat", to(Color::Blue)).await.unwrap();
    ctl.switch("chat", to(Color::Green)).await.unwrap();
    let out = ctl.rollback("chat", rollback()).await.unwrap();
    assert_eq!(
        (out.live, out.previous, out.generation),
        (Color::Blue, Some(Color::Green), 3)
    );
    let h = ctl.history("chat", 1).await.unwrap();
    assert_eq!(h[0].kind.to_string(), "rolled_back");
    assert_eq!(h[0].reason, "rollback from green to blue");
    let svc = ctl.service("chat").unwrap();
    assert_eq!(svc.rollbacks.load(std::sync::atomic::Ordering::Relaxed), 1);
    assert_eq!(svc.switches.load(std::sync::atomic::Ordering::Relaxed), 3);

    // The safety check: a scaled-down color is not one switch away any more.
    svc.set_state(Color::Green, Some(ColorState::Stopped));
    match ctl.rollback("chat", rollback()).await {
        Err(ControlError::Switch(SwitchError::ScaledDown {
            color: Color::Green,
            version,
            ..
        })) => {
            assert_eq!(version, "v2");
        }
        other => panic!("expected scaled_down, got {other:?}"),
    }
    assert_eq!(svc.live(), Some(Color::Blue));
}
