//! Endpoint names: a `NAME:PORT` endpoint is one endpoint per address the name resolves to,
//! and follows the name's answers while traffic and streams run. The router resolves through
//! the system resolver (getaddrinfo), reading a hosts file the test controls: it runs in a
//! mount namespace of its own with that file over `/etc/hosts`.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use serde_json::Value;

use crate::support::*;

/// A mock-model listening on `ip:port` (any loopback address: all of 127/8 is local).
struct At {
    _proc: Proc,
}

async fn mock_at(ip: &str, port: u16, version: &str, extra: &[&str]) -> At {
    let child = Command::new(MOCK)
        .args(["--host", ip, "--port", &port.to_string(), "--model-version", version])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn mock-model");
    let url = format!("http://{ip}:{port}/v1/models");
    let want = version.to_string();
    wait_for(
        &format!("mock {version} on {ip}:{port}"),
        Duration::from_secs(30),
        || {
            let (url, want) = (url.clone(), want.clone());
            async move { get(&url).await.ok().filter(|r| r.header("x-model-version") == want) }
        },
    )
    .await;
    At {
        _proc: Proc(Some(child)),
    }
}

/// Rewrites the hosts file in place (the bind mount pins the inode: a rename would not be seen).
fn write_hosts(path: &Path, lines: &[&str]) {
    let mut text = String::from("127.0.0.1 localhost\n");
    for l in lines {
        text.push_str(l);
        text.push('\n');
    }
    std::fs::write(path, text).unwrap();
}

fn service(blue: &str, green: &str) -> String {
    format!(
        "[services.chat]\nlisten = \"{{listen}}\"\npreview_listen = \"{{preview}}\"\nresolve_interval = \"1s\"\n\
         health = {{ path = \"/health\", interval = \"200ms\", timeout = \"1s\" }}\n\n\
         [services.chat.blue]\nendpoints = [\"{blue}\"]\nversion = \"blue-v\"\n\n\
         [services.chat.green]\nendpoints = [\"{green}\"]\nversion = \"green-v\"\n"
    )
}

fn addresses(status: &Value, color: &str) -> BTreeSet<String> {
    status["colors"][color]["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["address"].as_str().unwrap().to_string())
        .collect()
}

/// Which mocks (by their own version header) answered `n` requests through the live listener.
async fn served_by(r: &Router, n: usize) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    for _ in 0..n {
        let resp = get(&r.url("/v1/models")).await.unwrap();
        assert_eq!(resp.status, 200, "{}", resp.text());
        seen.insert(resp.header("x-model-version").to_string());
    }
    seen
}

/// Waits until `traffic` has had `n` more answers than now.
async fn more_traffic(traffic: &Traffic, n: u64, what: &str) {
    let from = traffic.ok.load(Ordering::Relaxed);
    wait_for(what, Duration::from_secs(20), || async {
        (traffic.ok.load(Ordering::Relaxed) >= from + n).then_some(())
    })
    .await;
}

fn set<const N: usize>(items: [&str; N]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

#[tokio::test]
async fn a_name_is_one_endpoint_per_address_and_follows_its_answers_under_traffic() {
    let dir = TempDir::new("dns");
    let hosts = dir.path().join("hosts");
    let port = free_port();
    write_hosts(
        &hosts,
        &["127.0.0.2 gpu-a.test", "127.0.0.3 gpu-a.test", "127.0.0.6 gpu-b.test"],
    );
    let _a2 = mock_at("127.0.0.2", port, "a2", &[]).await;
    let _a3 = mock_at("127.0.0.3", port, "a3", &["--token-interval", "30ms"]).await;
    let _a4 = mock_at("127.0.0.4", port, "a4", &[]).await;
    let _b = mock_at("127.0.0.6", port, "b6", &[]).await;
    let name = format!("gpu-a.test:{port}");
    let r = Router::start_with_hosts(&service(&name, &format!("gpu-b.test:{port}")), &hosts).await;

    let st = r.status().await;
    let blue = &st["colors"]["blue"]["endpoints"];
    assert_eq!(
        addresses(&st, "blue"),
        set([&format!("127.0.0.2:{port}"), &format!("127.0.0.3:{port}")]),
        "both addresses of the name are endpoints: {blue}"
    );
    assert!(
        blue.as_array().unwrap().iter().all(|e| e["name"] == name.as_str()),
        "{blue}"
    );
    assert_eq!(r.switch("blue").await.status, 200);
    assert_eq!(
        served_by(&r, 20).await,
        set(["a2", "a3"]),
        "traffic reaches both addresses"
    );

    // A stream on 127.0.0.3, then the name moves away from .2 and .3 to .4 only.
    let traffic = Traffic::start(r.url("/v1/chat/completions"), 3, Duration::from_millis(20));
    let stream = loop {
        let req = Request::post(r.url("/v1/chat/completions"))
            .body(Full::new(Bytes::from(r#"{"stream":true,"max_tokens":60}"#)))
            .unwrap();
        let resp = http_client().request(req).await.unwrap();
        if resp.headers()["x-model-version"] == "a3" {
            break tokio::spawn(read_stream(resp));
        }
    };
    write_hosts(&hosts, &["127.0.0.4 gpu-a.test", "127.0.0.6 gpu-b.test"]);
    wait_for(
        "blue to follow the name to 127.0.0.4",
        Duration::from_secs(10),
        || async { (addresses(&r.status().await, "blue") == set([&format!("127.0.0.4:{port}")])).then_some(()) },
    )
    .await;
    more_traffic(&traffic, 50, "traffic after the move").await;
    assert_eq!(
        served_by(&r, 10).await,
        set(["a4"]),
        "new requests go to the new address only"
    );
    let (events, err) = stream.await.unwrap();
    assert_eq!(err, None, "the stream on a removed address finishes there");
    let versions = stream_versions(&events).unwrap();
    assert_eq!(versions.len(), 61);
    assert!(versions.iter().all(|v| v == "a3"), "{versions:?}");

    // The name stops resolving: its last addresses stay (a DNS outage must not empty a color).
    write_hosts(&hosts, &["127.0.0.6 gpu-b.test"]);
    wait_for("the failed lookup to be logged", Duration::from_secs(10), || async {
        r.log()
            .contains("cannot resolve endpoint name; keeping its last addresses")
            .then_some(())
    })
    .await;
    assert_eq!(
        addresses(&r.status().await, "blue"),
        set([&format!("127.0.0.4:{port}")])
    );
    more_traffic(&traffic, 50, "traffic while the name does not resolve").await;
    assert_eq!(served_by(&r, 5).await, set(["a4"]));
    let (_, failed, _) = traffic.stop().await;
    assert!(failed.is_empty(), "no request failed while the name moved: {failed:?}");
    // The color is one object throughout: its request count covers every address it had.
    let st = r.status().await;
    assert_eq!(st["generation"], 1, "re-resolution is not a switch");
}

#[tokio::test]
async fn a_new_address_that_is_down_is_probed_before_it_takes_traffic() {
    let dir = TempDir::new("dns-down");
    let hosts = dir.path().join("hosts");
    let port = free_port();
    write_hosts(&hosts, &["127.0.0.2 gpu-a.test", "127.0.0.6 gpu-b.test"]);
    let _a2 = mock_at("127.0.0.2", port, "a2", &[]).await;
    let _b = mock_at("127.0.0.6", port, "b6", &[]).await;
    let r = Router::start_with_hosts(
        &service(&format!("gpu-a.test:{port}"), &format!("gpu-b.test:{port}")),
        &hosts,
    )
    .await;
    assert_eq!(r.switch("blue").await.status, 200);
    let traffic = Traffic::start(r.url("/v1/chat/completions"), 3, Duration::from_millis(10));
    // 127.0.0.5 has no server: it joins already known unhealthy, so no request waits on it.
    write_hosts(
        &hosts,
        &["127.0.0.2 gpu-a.test", "127.0.0.5 gpu-a.test", "127.0.0.6 gpu-b.test"],
    );
    let down = format!("127.0.0.5:{port}");
    let ep = wait_for("the new address to join", Duration::from_secs(10), || async {
        let st = r.status().await;
        st["colors"]["blue"]["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["address"] == down.as_str())
            .cloned()
    })
    .await;
    assert_eq!(ep["health"], "unhealthy", "probed before it joined: {ep}");
    assert!(!ep["last_probe"].is_null(), "{ep}");
    // 100 requests while the dead address is among the endpoints (instead of a pause of
    // some length): none may fail.
    more_traffic(&traffic, 100, "100 requests after it joined").await;
    let (_, failed, _) = traffic.stop().await;
    assert!(failed.is_empty(), "{failed:?}");
    assert_eq!(served_by(&r, 10).await, set(["a2"]));
}

#[tokio::test]
async fn a_name_that_does_not_resolve_at_start_serves_once_it_does() {
    let dir = TempDir::new("dns-late");
    let hosts = dir.path().join("hosts");
    let port = free_port();
    write_hosts(&hosts, &["127.0.0.6 gpu-b.test"]);
    let _a = mock_at("127.0.0.2", port, "a2", &[]).await;
    let _b = mock_at("127.0.0.6", port, "b6", &[]).await;
    let r = Router::start_with_hosts(
        &service(&format!("gpu-late.test:{port}"), &format!("gpu-b.test:{port}")),
        &hosts,
    )
    .await;
    assert!(
        r.log()
            .contains("cannot resolve endpoint name; it has no endpoints until it resolves"),
        "{}",
        r.log()
    );
    assert!(addresses(&r.status().await, "blue").is_empty());
    // A switch to a color without endpoints is refused, and says why.
    let refused = r.switch("blue").await;
    assert_eq!(refused.status, 409, "{}", refused.text());
    assert!(refused.text().contains("did not resolve yet"), "{}", refused.text());
    write_hosts(&hosts, &["127.0.0.2 gpu-late.test", "127.0.0.6 gpu-b.test"]);
    wait_for(
        "the name to resolve (retried every second)",
        Duration::from_secs(10),
        || async { (!addresses(&r.status().await, "blue").is_empty()).then_some(()) },
    )
    .await;
    assert_eq!(r.switch("blue").await.status, 200);
    assert_eq!(served_by(&r, 5).await, set(["a2"]));
}

#[test]
fn check_accepts_names_and_refuses_what_is_not_an_endpoint() {
    let dir = TempDir::new("dns-check");
    let write = |eps: &str| {
        let p = dir.path().join("c.toml");
        std::fs::write(
            &p,
            format!(
                "[services.chat]\nlisten = \"127.0.0.1:0\"\n[services.chat.blue]\nendpoints = [{eps}]\n\
                 [services.chat.green]\nendpoints = [\"10.0.0.9:8000\"]\n"
            ),
        )
        .unwrap();
        let out = Command::new(CUTOVER).arg("check").arg(&p).output().unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (code, err) = write(r#""gpu-a.internal:8000", "http://10.0.0.5:8000", "[::1]:8000""#);
    assert_eq!(code, Some(0), "{err}");
    for (bad, says) in [
        (r#""gpu-a.internal""#, "has no port"),
        (r#""gpu_a.internal:8000""#, "neither an IP address nor a DNS name"),
        (r#""10.0.0.300:8000""#, "neither an IP address nor a DNS name"),
        (r#""gpu-a:0""#, "the port must be 1 to 65535"),
        (r#""http://gpu-a:80/v1""#, "is not an address"),
        (r#""ftp://gpu-a:21""#, "unknown scheme"),
    ] {
        let (code, err) = write(bad);
        assert_eq!(code, Some(2), "{bad}: {err}");
        assert!(
            err.contains(says) && err.contains("services.chat.blue.endpoints"),
            "{bad}: {err}"
        );
        assert!(err.contains(":4"), "names the line: {err}");
    }
}
