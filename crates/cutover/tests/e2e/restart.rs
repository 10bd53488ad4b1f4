//! A router killed with SIGKILL comes back with every acknowledged switch; a second router
//! started by mistake on the same config leaves the running one untouched.

use std::time::Duration;

use http::Method;

use crate::support::*;

#[tokio::test]
async fn kill_9_then_restart_keeps_live_color_and_generation() {
    let blue = Mock::start("v1", &[]).await;
    let green = Mock::start("v2", &[]).await;
    let mut r = Router::start(&static_service(&[&blue], &[&green], "")).await;
    for to in ["blue", "green", "blue", "green", "blue"] {
        assert_eq!(r.switch(to).await.status, 200);
    }
    let before = r.status().await;
    // Kill right after an acknowledged switch: it must be on disk already.
    assert_eq!(r.switch("green").await.status, 200);
    r.proc.kill9();
    r.spawn().await;
    let after = r.status().await;
    assert_eq!(after["live"], "green");
    assert_eq!(after["generation"], before["generation"].as_u64().unwrap() + 1);
    let resp = get(&r.url("/v1/models")).await.unwrap();
    assert_eq!(resp.header("x-cutover-color"), "green");
    let h = r
        .api(Method::GET, "/v1/services/chat/history", serde_json::Value::Null)
        .await
        .json();
    assert_eq!(h["history"].as_array().unwrap().len(), 6);
    assert!(r.log().contains("restored routing from the store"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_a_running_stream_finish_then_exits_0() {
    let blue = Mock::start("v1", &["--token-interval", "20ms"]).await;
    let green = Mock::start("v2", &[]).await;
    let mut r = Router::start(&static_service(&[&blue], &[&green], "")).await;
    assert_eq!(r.switch("blue").await.status, 200);
    let c = http_client();
    let req = http::Request::post(r.url("/v1/chat/completions"))
        .body(http_body_util::Full::new(bytes::Bytes::from(
            r#"{"stream":true,"max_tokens":50}"#,
        )))
        .unwrap();
    let resp = c.request(req).await.unwrap();
    let reader = tokio::spawn(read_stream(resp));
    wait_for("the stream to be in flight", Duration::from_secs(10), || async {
        (r.status().await["colors"]["blue"]["in_flight"] == 1).then_some(())
    })
    .await;
    r.proc.signal("TERM");
    // New connections are refused soon after; the running stream goes on.
    wait_for("the listener to close", Duration::from_secs(5), || async {
        tokio::net::TcpStream::connect(("127.0.0.1", r.listen))
            .await
            .is_err()
            .then_some(())
    })
    .await;
    let (events, err) = reader.await.unwrap();
    assert_eq!(err, None);
    assert_eq!(stream_versions(&events).unwrap().len(), 51);
    let code = tokio::task::block_in_place(|| r.proc.wait_exit(Duration::from_secs(10)));
    assert_eq!(code, Some(0));
    assert!(
        r.log().contains("managed model servers keep running"),
        "SIGTERM says what happens to managed processes: {}",
        r.log()
    );
}

/// SIGHUP (a closed SSH session sends it) used to kill `cutover serve` at once and cut every
/// live stream. It reloads the configuration now (here: unchanged): the stream finishes, the
/// router keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_no_longer_kills_the_router_or_its_streams() {
    let blue = Mock::start("v1", &["--token-interval", "20ms"]).await;
    let green = Mock::start("v2", &[]).await;
    let r = Router::start(&static_service(&[&blue], &[&green], "")).await;
    assert_eq!(r.switch("blue").await.status, 200);
    let c = http_client();
    let req = http::Request::post(r.url("/v1/chat/completions"))
        .body(http_body_util::Full::new(bytes::Bytes::from(
            r#"{"stream":true,"max_tokens":30}"#,
        )))
        .unwrap();
    let resp = c.request(req).await.unwrap();
    let reader = tokio::spawn(read_stream(resp));
    wait_for("the stream to be in flight", Duration::from_secs(10), || async {
        (r.status().await["colors"]["blue"]["in_flight"] == 1).then_some(())
    })
    .await;
    r.proc.signal("HUP");
    let (events, err) = reader.await.unwrap();
    assert_eq!(err, None, "the stream was not cut");
    assert_eq!(stream_versions(&events).unwrap().len(), 31);
    wait_for("the reload", Duration::from_secs(5), || async {
        let log = r.log();
        (log.contains("SIGHUP: reloading the configuration") && log.contains("configuration reloaded")).then_some(())
    })
    .await;
    assert_eq!(get(&r.url("/v1/models")).await.unwrap().status, 200, "still serving");
}

/// Regression: a second `serve` of the same config used to open the store first, marking the
/// live instance's running release `release_interrupted`, and only then fail to bind. Now
/// every listener is bound before the store is opened.
#[tokio::test]
async fn a_second_serve_of_the_same_config_fails_to_bind_and_writes_nothing() {
    let blue = Mock::start("v1", &[]).await;
    let green = Mock::start("v2", &[]).await;
    let r = Router::start(&format!(
        "{}\n[services.chat.release.verify]\nbake = \"5m\"\n",
        static_service(&[&blue], &[&green], "")
    ))
    .await;
    assert_eq!(r.switch("blue").await.status, 200);
    let id = r.release("v2").await;
    r.wait_phase(id, "verifying", Duration::from_secs(20)).await;
    let history = |r: &Router| {
        let out = std::process::Command::new("sqlite3")
            .arg(r.dir.path().join("cutover.db"))
            // Not the whole document: verification rewrites its gate readings every 2 s.
            .arg("SELECT id, kind, generation FROM history ORDER BY id; SELECT id, finished, json_extract(doc, '$.phase'), json_extract(doc, '$.outcome'), json_extract(doc, '$.reason') FROM releases ORDER BY id;")
            .output()
            .expect("the sqlite3 shell is installed (bash .ci/run installs it)");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let before = history(&r);
    assert!(
        before.contains("release_started") && before.contains("1|0|verifying||"),
        "{before}"
    );

    // The same config, with the ports the first instance bound: same store, same listeners.
    let again = r.dir.path().join("cutover-again.toml");
    std::fs::write(&again, r.config_as_bound()).unwrap();
    let out = r
        .serve_command(&again, &r.dir.path().join("addresses-again.json"))
        .stderr(std::process::Stdio::piped())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("cannot listen on admin.listen 127.0.0.1:{}", r.admin)),
        "the error names the listener it could not bind: {err}"
    );
    assert!(err.contains("Address already in use"), "{err}");
    assert!(!r.dir.path().join("addresses-again.json").exists());

    assert_eq!(history(&r), before, "the second serve wrote nothing into the store");
    let d = r.release_doc(id).await;
    assert_eq!(
        (d["phase"].as_str(), d["outcome"].is_null()),
        (Some("verifying"), true),
        "{d}"
    );
    let st = r.status().await;
    assert_eq!(
        (st["live"].as_str(), st["generation"].as_u64()),
        (Some("green"), Some(2))
    );
    assert_eq!(st["release"]["id"], id);
}

/// `serve` reports the ports it bound for a config that says port 0: in the addresses file,
/// in a log line per listener, and in the service status (`bound`), next to the configured
/// addresses.
#[tokio::test]
async fn port_0_listeners_are_reported_in_the_log_the_file_and_the_status() {
    let blue = Mock::start("v1", &[]).await;
    let green = Mock::start("v2", &[]).await;
    let r = Router::start(&static_service(&[&blue], &[&green], "")).await;
    assert!(r.admin != 0 && r.listen != 0 && r.preview != 0);
    assert_eq!(
        [r.admin, r.listen, r.preview]
            .iter()
            .collect::<std::collections::BTreeSet<_>>()
            .len(),
        3
    );
    let st = r.status().await;
    assert_eq!(st["listen"], "127.0.0.1:0", "the configured address is still shown");
    assert_eq!(st["bound"]["listen"], format!("127.0.0.1:{}", r.listen));
    assert_eq!(st["bound"]["preview_listen"], format!("127.0.0.1:{}", r.preview));
    let log = r.log();
    for (port, what) in [
        (r.admin, "admin API listening"),
        (r.listen, "data plane listening"),
        (r.preview, "data plane listening"),
    ] {
        assert!(
            log.lines()
                .any(|l| l.contains(what) && l.contains(&format!("127.0.0.1:{port}"))),
            "a log line for {port}: {log}"
        );
    }
    let (code, out, err) = r.cli(&["status", "chat"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&format!("127.0.0.1:{}", r.listen)), "{out}");
}
