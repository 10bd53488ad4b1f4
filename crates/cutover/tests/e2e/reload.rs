//! Configuration reload (`cutover reload`, SIGHUP) on a router under load: the differences
//! are applied without dropping a request or a stream; an invalid file or a change reload
//! cannot make changes nothing and says why.

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::Full;
use serde_json::Value;

use crate::support::*;

fn edit(r: &Router, f: impl FnOnce(String) -> String) {
    let text = std::fs::read_to_string(&r.config).unwrap();
    std::fs::write(&r.config, f(text)).unwrap();
}

async fn open_stream(r: &Router, url: String) -> tokio::task::JoinHandle<(Vec<String>, Option<String>)> {
    let req = Request::post(url)
        .body(Full::new(Bytes::from(r#"{"stream":true,"max_tokens":80}"#)))
        .unwrap();
    let resp = r.http.request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    tokio::spawn(read_stream(resp))
}

fn endpoints(st: &Value, color: &str) -> Vec<String> {
    st["colors"][color]["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["address"].as_str().unwrap().to_string())
        .collect()
}

fn bound_port(r: &Router, service: &str) -> u16 {
    let v: Value = serde_json::from_str(&std::fs::read_to_string(r.addresses_file()).unwrap()).unwrap();
    let a = v["services"][service]["listen"]
        .as_str()
        .unwrap_or_else(|| panic!("{service} in {v}"));
    a.parse::<std::net::SocketAddr>().unwrap().port()
}

async fn reloads(r: &Router, result: &str) -> String {
    let m = get(&r.admin_url("/metrics")).await.unwrap().text();
    m.lines()
        .find(|l| l.starts_with(&format!("cutover_config_reloads_total{{result=\"{result}\"}}")))
        .unwrap_or_else(|| panic!("no reload metric in:\n{m}"))
        .rsplit(' ')
        .next()
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn reload_applies_endpoints_health_and_a_new_service_under_load_without_dropping_anything() {
    let b1 = Mock::start("v1", &["--token-interval", "25ms"]).await;
    let b2 = Mock::start("v1", &[]).await;
    let g = Mock::start("v2", &[]).await;
    let e1 = Mock::start("e1", &[]).await;
    let e2 = Mock::start("e2", &[]).await;
    let r = Router::start(&static_service(&[&b1], &[&g], "")).await;
    assert_eq!(r.switch("blue").await.status, 200);
    let traffic = Traffic::start(r.url("/v1/chat/completions"), 4, Duration::from_millis(5));
    let stream = open_stream(&r, r.url("/v1/chat/completions")).await;

    edit(&r, |t| {
        let t = t
            .replace(
                &format!("endpoints = [\"{}\"]\nversion = \"v1\"", b1.addr()),
                &format!("endpoints = [\"{}\", \"{}\"]\nversion = \"v1\"", b1.addr(), b2.addr()),
            )
            .replace("interval = \"200ms\"", "interval = \"300ms\"");
        format!(
            "{t}\n[services.embed]\nlisten = \"127.0.0.1:0\"\n[services.embed.blue]\nendpoints = [\"{}\"]\nversion = \"e1\"\n\
             [services.embed.green]\nendpoints = [\"{}\"]\nversion = \"e2\"\n",
            e1.addr(),
            e2.addr()
        )
    });
    let (code, out, err) = r.cli_async(&["reload"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("added embed"), "{out}");
    assert!(
        out.contains("chat: ") && out.contains("health") && out.contains("blue.endpoints"),
        "{out}"
    );

    let st = r.status().await;
    assert_eq!(endpoints(&st, "blue"), vec![b1.addr(), b2.addr()], "{st}");
    assert_eq!(st["generation"], 1, "a reload is not a switch");
    // The new service serves on the port it bound (written to the addresses file again).
    let embed = bound_port(&r, "embed");
    let sw = r
        .api(
            Method::POST,
            "/v1/services/embed/switch",
            serde_json::json!({"to": "green"}),
        )
        .await;
    assert_eq!(sw.status, 200, "{}", sw.text());
    let resp = get(&format!("http://127.0.0.1:{embed}/v1/models")).await.unwrap();
    assert_eq!((resp.status.as_u16(), resp.header("x-model-version")), (200, "e2"));
    // Both blue endpoints take traffic now.
    wait_for("the new endpoint to take requests", Duration::from_secs(10), || async {
        (b2.stats().await["model_requests"].as_u64().unwrap_or(0) > 0).then_some(())
    })
    .await;

    let (events, cut) = stream.await.unwrap();
    assert_eq!(cut, None, "the stream open across the reload finished");
    assert_eq!(stream_versions(&events).unwrap().len(), 81);
    let (ok, failed, _) = traffic.stop().await;
    assert!(ok > 50, "{ok}");
    assert!(failed.is_empty(), "no request failed across the reload: {failed:?}");
    assert_eq!(reloads(&r, "ok").await, "1");

    let (_, hist, _) = r.cli(&["history", "chat", "--json"]);
    assert!(
        hist.contains("reconfigured") && hist.contains("reload: changed"),
        "{hist}"
    );
    let (_, hist, _) = r.cli(&["history", "embed", "--json"]);
    assert!(hist.contains("reload: added"), "{hist}");
}

#[tokio::test]
async fn an_invalid_file_or_a_refused_change_changes_nothing_and_sighup_reloads() {
    let b = Mock::start("v1", &["--token-interval", "25ms"]).await;
    let b2 = Mock::start("v1", &[]).await;
    let g = Mock::start("v2", &[]).await;
    let r = Router::start(&static_service(&[&b], &[&g], "")).await;
    assert_eq!(r.switch("blue").await.status, 200);
    let good = std::fs::read_to_string(&r.config).unwrap();

    // An unknown key: the file, its line and the key are named; nothing changes.
    edit(&r, |t| {
        t.replace(
            "[services.chat.blue]\n",
            "[services.chat.blue]\nendpointz = [\"127.0.0.1:1\"]\n",
        )
    });
    let line = std::fs::read_to_string(&r.config)
        .unwrap()
        .lines()
        .position(|l| l.starts_with("endpointz"))
        .unwrap()
        + 1;
    let (code, out, err) = r.cli_async(&["reload"]).await;
    assert_eq!(code, 2, "{out}{err}");
    assert!(
        err.contains(&format!("cutover.toml:{line}")) && err.contains("endpointz"),
        "{err}"
    );
    assert!(err.contains("nothing changed"), "{err}");

    // A change reload cannot make in place is refused before anything else applies.
    std::fs::write(
        &r.config,
        good.replace("[services.chat]\n", "[services.chat]\nupstream_protocol = \"h2c\"\n"),
    )
    .unwrap();
    let resp = r.api(Method::POST, "/v1/reload", Value::Null).await;
    assert_eq!(resp.status, 409, "{}", resp.text());
    assert_eq!(resp.json()["error"]["code"], "reload_refused");
    assert!(resp.text().contains("upstream_protocol"), "{}", resp.text());

    // SIGHUP with an invalid file: logged and counted; the router lives on.
    std::fs::write(&r.config, "[services.chat\n").unwrap();
    let stream = open_stream(&r, r.url("/v1/chat/completions")).await;
    r.proc.signal("HUP");
    // Two failures came before (the CLI's and the API's): the signal's is the third.
    wait_for(
        "the failed SIGHUP reload to be counted",
        Duration::from_secs(10),
        || async { (reloads(&r, "error").await == "3").then_some(()) },
    )
    .await;
    assert!(r.log().contains("configuration reload failed"), "{}", r.log());
    assert_eq!(endpoints(&r.status().await, "blue"), vec![b.addr()]);

    // SIGHUP with a good change: applied, the stream open across both signals finishes.
    std::fs::write(
        &r.config,
        good.replace(
            &format!("endpoints = [\"{}\"]\nversion = \"v1\"", b.addr()),
            &format!("endpoints = [\"{}\"]\nversion = \"v1\"", b2.addr()),
        ),
    )
    .unwrap();
    r.proc.signal("HUP");
    wait_for("SIGHUP to apply the new endpoint", Duration::from_secs(10), || async {
        (endpoints(&r.status().await, "blue") == vec![b2.addr()]).then_some(())
    })
    .await;
    let (events, cut) = stream.await.unwrap();
    assert_eq!(cut, None);
    assert_eq!(stream_versions(&events).unwrap().len(), 81);
    let resp = get(&r.url("/v1/models")).await.unwrap();
    assert_eq!(resp.status, 200);
    assert_eq!(reloads(&r, "ok").await, "1");
    assert!(
        r.log().contains("actor=signal:SIGHUP") || r.log().contains("signal:SIGHUP"),
        "{}",
        r.log()
    );
}

#[tokio::test]
async fn a_changed_listen_address_is_rebound_and_a_removed_service_drains() {
    let b = Mock::start("v1", &["--token-interval", "25ms"]).await;
    let g = Mock::start("v2", &[]).await;
    let e = Mock::start("e1", &[]).await;
    let e2 = Mock::start("e2", &[]).await;
    let extra = format!(
        "\n[services.embed]\nlisten = \"127.0.0.1:0\"\n[services.embed.blue]\nendpoints = [\"{}\"]\nversion = \"e1\"\n\
         [services.embed.green]\nendpoints = [\"{}\"]\nversion = \"e2\"\n",
        e.addr(),
        e2.addr()
    );
    let r = Router::start(&format!("{}{extra}", static_service(&[&b], &[&g], ""))).await;
    assert_eq!(r.switch("blue").await.status, 200);
    let embed_switch = r
        .api(
            Method::POST,
            "/v1/services/embed/switch",
            serde_json::json!({"to": "green"}),
        )
        .await;
    assert_eq!(embed_switch.status, 200, "{}", embed_switch.text());
    let old_port = r.listen;
    let stream = open_stream(&r, r.url("/v1/chat/completions")).await;
    let embed_port = bound_port(&r, "embed");

    // chat moves to another address (port 0 again: the reload rewrites the addresses file
    // with the port it bound); embed goes away.
    edit(&r, |t| {
        let t = t.replacen(
            "[services.chat]\nlisten = \"127.0.0.1:0\"",
            "[services.chat]\nlisten = \"127.0.0.2:0\"",
            1,
        );
        t.replace(&extra, "")
    });
    let (code, out, err) = r.cli_async(&["reload"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("removed embed") && out.contains("listen"), "{out}");
    let new_port = bound_port(&r, "chat");
    assert_ne!(new_port, 0);
    let resp = get(&format!("http://127.0.0.2:{new_port}/v1/models")).await.unwrap();
    assert_eq!((resp.status.as_u16(), resp.header("x-model-version")), (200, "v1"));
    // The old listener accepts no more, but the stream it carried finishes.
    wait_for("the old port to stop accepting", Duration::from_secs(5), || async {
        get(&format!("http://127.0.0.1:{old_port}/v1/models"))
            .await
            .is_err()
            .then_some(())
    })
    .await;
    let (events, cut) = stream.await.unwrap();
    assert_eq!(cut, None);
    assert_eq!(stream_versions(&events).unwrap().len(), 81);
    assert!(
        get(&format!("http://127.0.0.1:{embed_port}/v1/models")).await.is_err(),
        "embed's listener is gone"
    );
    let missing = r.api(Method::GET, "/v1/services/embed", Value::Null).await;
    assert_eq!(missing.status, 404);
    // Issue #25: its history stays readable (it was "no service named").
    let (code, out, err) = r.cli_async(&["history", "embed"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("switched") && out.contains("→ green"), "{out}");
    let (code, _, err) = r.cli_async(&["history", "never-was"]).await;
    assert_eq!(code, 2, "an unknown name is still unknown: {err}");
}
