//! The control plane's pause during a hand-over (`serve --upgrade`): admin mutations get 503
//! `upgrading`, a switch waits without touching the store, and everything resumes after.

use std::io::{Read, Write};
use std::time::Duration;

use cutover_proxy::Color;
use cutover_store::SwitchKind;

use super::support::{controller, TempDir, TinyServer};
use crate::api::admin::{self, AdminState};
use crate::api::token::Tokens;
use crate::service::switch::SwitchRequest;

/// One admin call over a real connection: the status line and the body.
fn call(addr: std::net::SocketAddr, token: &str, method: &str, path: &str, body: &str) -> (String, String) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {token}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap();
    (head.lines().next().unwrap().to_string(), body.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_quiesced_mutations_get_503_upgrading_reads_answer_and_all_resumes_after() {
    let dir = TempDir::new("quiesce-admin");
    let (blue, green) = (TinyServer::start("v1").await, TinyServer::start("v2").await);
    let ctl = controller(&dir, blue.addr, green.addr, "");
    let tokens = Tokens::load(&ctl.config.admin).unwrap();
    let token = std::fs::read_to_string(&ctl.config.admin.token_file)
        .unwrap()
        .trim()
        .to_string();
    let app = admin::router(AdminState::new(ctl.clone(), tokens));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await });

    let paused = ctl.quiesce(Duration::from_secs(5)).await.unwrap();
    let t = token.clone();
    let switch = move |to: &'static str| {
        let t = t.clone();
        tokio::task::spawn_blocking(move || {
            call(
                addr,
                &t,
                "POST",
                "/v1/services/chat/switch",
                &format!("{{\"to\":\"{to}\"}}"),
            )
        })
    };
    let (status, body) = switch("blue").await.unwrap();
    assert!(status.contains(" 503 "), "{status} {body}");
    assert!(body.contains("\"code\":\"upgrading\""), "{body}");
    let t = token.clone();
    let (status, _) = tokio::task::spawn_blocking(move || call(addr, &t, "GET", "/v1/services/chat", ""))
        .await
        .unwrap();
    assert!(status.contains(" 200 "), "reads still answer: {status}");

    // A switch from inside (a release run's) waits, and commits nothing meanwhile.
    let c = ctl.clone();
    let inside = tokio::spawn(async move {
        c.switch(
            "chat",
            SwitchRequest {
                to: Some(Color::Green),
                if_generation: None,
                force: true,
                kind: SwitchKind::Switched,
                actor: "test".into(),
                reason: "inside".into(),
                release_id: None,
            },
        )
        .await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!inside.is_finished(), "the switch waits while paused");
    assert!(ctl.history("chat", 10).await.unwrap().is_empty(), "nothing stored");

    drop(paused);
    assert_eq!(inside.await.unwrap().unwrap().generation, 1);
    let (status, body) = switch("blue").await.unwrap();
    assert!(status.contains(" 200 "), "mutations work again: {status} {body}");
}
