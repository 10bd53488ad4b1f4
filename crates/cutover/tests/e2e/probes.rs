//! Health probes by kind against real servers: gRPC health on a real grpcio server, a
//! generation probe that catches an engine wedged behind a healthy `/health`, probe timeouts
//! under load that the proxy's own successful traffic excuses (and a dead server that is still
//! taken out), what probes last saw in the API and the release reason, the failure metric,
//! and the example configs.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use http::Method;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::support::*;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A service `chat` with static endpoints and the given `health` line (and other keys).
fn service(blue: &[String], green: &[String], keys: &str) -> String {
    let eps = |v: &[String]| v.iter().map(|a| format!("\"{a}\"")).collect::<Vec<_>>().join(", ");
    format!(
        "[services.chat]\nlisten = \"{{listen}}\"\npreview_listen = \"{{preview}}\"\n{keys}\n\
         [services.chat.blue]\nendpoints = [{}]\nversion = \"v1\"\n\n[services.chat.green]\nendpoints = [{}]\nversion = \"v2\"\n",
        eps(blue),
        eps(green)
    )
}

/// The status document's entry for `color`'s first endpoint.
fn endpoint(st: &Value, color: &str) -> Value {
    st["colors"][color]["endpoints"][0].clone()
}

/// Waits until `color`'s first endpoint shows `healthy` and a last probe that `fits`.
async fn wait_endpoint(r: &Router, color: &str, healthy: bool, fits: impl Fn(&Value) -> bool) -> Value {
    let what = format!("{color} to be healthy={healthy} with the expected last probe");
    wait_for(&what, Duration::from_secs(20), || async {
        let e = endpoint(&r.status().await, color);
        (e["healthy"] == healthy && fits(&e["last_probe"])).then_some(e)
    })
    .await
}

async fn force_switch(r: &Router, to: &str) -> Resp {
    r.api(
        Method::POST,
        "/v1/services/chat/switch",
        json!({"to": to, "force": true}),
    )
    .await
}

// ---- gRPC ----------------------------------------------------------------------------------

/// A real grpcio server with the standard health service on the port in argv (or any):
/// writes its pid to `grpc-PORT.pid`, prints `ready PORT`, then sets the status of "" and
/// "chat" to each line it reads (`SERVING`, `NOT_SERVING`); serves on when stdin closes.
const GRPC_SERVER: &str = r#"
import os, sys
from concurrent import futures
import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
servicer = health.HealthServicer()
health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
port = server.add_insecure_port("127.0.0.1:" + (sys.argv[1] if len(sys.argv) > 1 else "0"))
server.start()
with open("grpc-%d.pid" % port, "w") as f:
    f.write(str(os.getpid()))

def set_all(name):
    for svc in ("", "chat"):
        servicer.set(svc, getattr(health_pb2.HealthCheckResponse, name))

set_all("SERVING")
print("ready", port, flush=True)
for line in sys.stdin:
    set_all(line.strip())
    print("set", line.strip(), flush=True)
server.wait_for_termination()
"#;

struct GrpcServer {
    port: u16,
    stdin: tokio::process::ChildStdin,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    _child: tokio::process::Child,
}

impl GrpcServer {
    async fn start(dir: &Path) -> GrpcServer {
        let script = dir.join("grpc_health_server.py");
        std::fs::write(&script, GRPC_SERVER).unwrap();
        let mut child = tokio::process::Command::new("python3")
            .arg(&script)
            .current_dir(dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("python3");
        let stdin = child.stdin.take().unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let first = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .expect("the gRPC server starts within 30 s")
            .unwrap()
            .unwrap_or_else(|| {
                panic!(
                    "the gRPC server exited: are grpcio and grpcio-health-checking installed? (.ci/run installs them)"
                )
            });
        let port = first.strip_prefix("ready ").expect("ready PORT").parse().unwrap();
        GrpcServer {
            port,
            stdin,
            lines,
            _child: child,
        }
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    async fn set(&mut self, status: &str) {
        self.stdin.write_all(format!("{status}\n").as_bytes()).await.unwrap();
        self.stdin.flush().await.unwrap();
        let ack = self.lines.next_line().await.unwrap().unwrap();
        assert_eq!(ack, format!("set {status}"));
    }
}

#[tokio::test]
async fn grpc_probe_passes_a_serving_grpcio_server_and_refuses_one_not_serving() {
    let dir = TempDir::new("grpc");
    let mut blue = GrpcServer::start(dir.path()).await;
    let green = GrpcServer::start(dir.path()).await;
    let r = Router::start(&service(
        &[blue.addr()],
        &[green.addr()],
        "upstream_protocol = \"h2c\"\nhealth = { kind = \"grpc\", service = \"chat\", interval = \"100ms\", timeout = \"2s\" }",
    ))
    .await;

    // SERVING: a switch needs no force (an HTTP GET was reset by grpcio: always refused).
    let sw = r.switch("green").await;
    assert_eq!(sw.status, 200, "{}", sw.text());
    let e = wait_endpoint(&r, "blue", true, |p| p["message"] == "SERVING").await;
    assert_eq!(e["last_probe"]["ok"], true, "{e}");
    assert_eq!(e["last_probe"]["status"], 200, "{e}");

    // NOT_SERVING: taken out, and the status says what the probe saw.
    blue.set("NOT_SERVING").await;
    let e = wait_endpoint(&r, "blue", false, |p| p["reason"] == "grpc_not_serving").await;
    assert_eq!(e["last_probe"]["message"], "NOT_SERVING", "{e}");
    assert_eq!(e["last_probe"]["counted"], true, "{e}");
    // A healthy endpoint is taken out by unhealthy_threshold (2) failures in a row.
    assert!(e["probe_failures"].as_u64().unwrap() >= 2, "{e}");
    assert!(e["last_probe"]["at"].as_str().unwrap().ends_with('Z'), "{e}");

    let refused = r.switch("blue").await;
    assert_eq!(refused.status, 409, "{}", refused.text());
    assert_eq!(refused.json()["error"]["code"], "target_unhealthy");
    let msg = refused.json()["error"]["message"].as_str().unwrap().to_string();
    assert!(
        msg.contains(&blue.addr()) && msg.contains("NOT_SERVING"),
        "the refusal names the endpoint and what it said: {msg}"
    );
    assert_eq!(force_switch(&r, "blue").await.status, 200, "force still switches");

    // `cutover status --json` carries the same fields.
    let (code, out, err) = r.cli_async(&["status", "chat", "--json"]).await;
    assert_eq!(code, 0, "{out}{err}");
    let st: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        endpoint(&st, "blue")["last_probe"]["reason"],
        "grpc_not_serving",
        "{st}"
    );

    // Back to SERVING: healthy again.
    blue.set("SERVING").await;
    wait_endpoint(&r, "blue", true, |p| p["ok"] == true).await;
}

#[tokio::test]
async fn a_managed_grpc_release_gets_past_waiting_healthy_and_completes() {
    let ports = ManagedPorts::new();
    let dir = TempDir::new("grpc-managed");
    let script = dir.path().join("grpc_health_server.py");
    std::fs::write(&script, GRPC_SERVER).unwrap();
    let r = Router::start(&format!(
        "[services.chat]\nlisten = \"{{listen}}\"\nupstream_protocol = \"h2c\"\n\
         health = {{ kind = \"grpc\", interval = \"100ms\", timeout = \"2s\" }}\n\
         [services.chat.run]\ncommand = [\"python3\", {script:?}, \"{{port}}\"]\nports = {{ blue = [{}], green = [{}] }}\nstop_timeout = \"2s\"\n\
         [services.chat.release]\nhealth_timeout = \"30s\"\n[services.chat.release.verify]\nbake = \"300ms\"\nmin_requests = 0\n",
        ports.blue, ports.green
    ))
    .await;
    let id = r.release("v1").await;
    let d = r.wait_end(id, Duration::from_secs(60)).await;
    // The managed processes outlive cutover on purpose: stop them by the pid they wrote.
    for entry in std::fs::read_dir(r.dir.path()).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        if let Some(pid) = std::fs::read_to_string(r.dir.path().join(&name))
            .ok()
            .filter(|_| name.starts_with("grpc-") && name.ends_with(".pid"))
        {
            let _ = std::process::Command::new("kill").args(["-9", pid.trim()]).status();
        }
    }
    assert_eq!(d["outcome"], "completed", "{d}");
    let waited = d["phases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["phase"] == "waiting_healthy")
        .cloned()
        .unwrap_or_default();
    assert!(
        waited["detail"].as_str().unwrap_or("").contains("1 endpoint healthy"),
        "{waited}"
    );
    let st = r.status().await;
    assert_eq!(st["live"], "blue", "{st}");
    assert_eq!(endpoint(&st, "blue")["last_probe"]["message"], "SERVING", "{st}");
}

// ---- generation probes -----------------------------------------------------------------------

const GENERATION: &str = "health = { kind = \"generation\", interval = \"100ms\", timeout = \"500ms\", \
     request = { method = \"POST\", path = \"/v1/chat/completions\", body = '{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"max_tokens\":1}' }, \
     expect = { status = 200, json = { \"/object\" = \"chat.completion\" } } }";

#[tokio::test]
async fn generation_probe_takes_out_a_server_whose_completions_fail_while_health_is_200() {
    let blue = Mock::start("v1", &[]).await;
    let green = Mock::start("v2", &["--error-rate", "1.0"]).await;
    assert_eq!(
        get(&format!("http://{}/health", green.addr())).await.unwrap().status,
        200,
        "its /health says all is well"
    );
    let r = Router::start(&format!(
        "{}\n[services.chat.release]\nhealth_timeout = \"1500ms\"\n",
        service(&[blue.addr()], &[green.addr()], GENERATION)
    ))
    .await;
    assert_eq!(r.switch("blue").await.status, 200);
    let e = wait_endpoint(&r, "green", false, |p| p["reason"] == "status").await;
    let msg = e["last_probe"]["message"].as_str().unwrap();
    assert!(
        msg.starts_with("status 500") && msg.contains("injected failure"),
        "the status and an excerpt of the answer: {e}"
    );
    assert!(green.stats().await["model_requests"].as_u64().unwrap() >= 1);
    let blue_probe = endpoint(&r.status().await, "blue")["last_probe"].clone();
    assert_eq!(blue_probe["ok"], true, "{blue_probe}");
    assert!(
        blue_probe["message"].as_str().unwrap().starts_with("status 200"),
        "{blue_probe}"
    );

    // A release to it ends at health_timeout, and the reason says which endpoint and why.
    let id = r.release("v2").await;
    let d = r.wait_end(id, Duration::from_secs(20)).await;
    assert_eq!(d["outcome"], "aborted", "{d}");
    let reason = d["reason"].as_str().unwrap();
    assert!(
        reason.contains("waiting for health did not finish within its deadline"),
        "{reason}"
    );
    assert!(
        reason.contains(&format!("{} unhealthy, last probe", green.addr())) && reason.contains("status 500"),
        "names the endpoint and its last result: {reason}"
    );
}

#[tokio::test]
async fn generation_probe_catches_an_engine_that_wedges_behind_a_healthy_health_route() {
    let blue = Mock::start("v1", &[]).await;
    let green = Mock::start("v2", &[]).await;
    let r = Router::start(&service(&[blue.addr()], &[green.addr()], GENERATION)).await;
    assert_eq!(r.switch("green").await.status, 200, "a working engine passes");
    wait_endpoint(&r, "green", true, |p| p["ok"] == true).await;

    let c = http_client();
    let wedge = send(
        &c,
        Method::POST,
        &format!("http://{}/mock/wedge?on=true", green.addr()),
        &[],
        "",
    )
    .await
    .unwrap();
    assert_eq!(wedge.status, 200);
    let e = wait_endpoint(&r, "green", false, |p| p["reason"] == "timeout").await;
    assert!(
        e["last_probe"]["message"]
            .as_str()
            .unwrap()
            .starts_with("no answer within 500ms"),
        "{e}"
    );
    assert_eq!(
        get(&format!("http://{}/health", green.addr())).await.unwrap().status,
        200,
        "its /health still says all is well"
    );
}

// ---- passive evidence ------------------------------------------------------------------------

#[tokio::test]
async fn a_probe_that_times_out_under_load_does_not_take_out_an_endpoint_that_serves() {
    // /health waits 1.5 s while a request runs (as llama-cpp-python's /v1/models does); each
    // request takes 150 ms, so with four clients one is nearly always running.
    let blue = Mock::start("v1", &["--busy-health-delay", "1500ms", "--latency", "150ms"]).await;
    let green = Mock::start("v2", &[]).await;
    let r = Router::start(&service(
        &[blue.addr()],
        &[green.addr()],
        "health = { path = \"/health\", interval = \"100ms\", timeout = \"300ms\", unhealthy_threshold = 2 }",
    ))
    .await;
    assert_eq!(r.switch("blue").await.status, 200);
    wait_endpoint(&r, "blue", true, |p| p["ok"] == true).await;

    let traffic = Traffic::start(r.url("/v1/chat/completions"), 4, Duration::ZERO);
    // Several timeouts in a row, none counted; blue stays healthy throughout.
    let excused = wait_for("several excused probe timeouts", Duration::from_secs(30), || async {
        let e = endpoint(&r.status().await, "blue");
        assert_ne!(e["healthy"], false, "a serving endpoint was taken out: {e}");
        let p = &e["last_probe"];
        let timeouts = e["probe_failures"].as_u64().unwrap_or(0);
        (p["reason"] == "timeout" && p["counted"] == false && timeouts >= 6).then_some(e)
    })
    .await;
    assert!(
        excused["last_probe"]["message"]
            .as_str()
            .unwrap()
            .contains("not counted: it answered proxied requests 2xx/3xx"),
        "{excused}"
    );
    let (ok, failed, _) = traffic.stop().await;
    assert!(failed.is_empty(), "{failed:?}");
    assert!(ok > 20, "{ok}");
    let log = r.log();
    assert!(!log.contains("endpoint unhealthy"), "no flip was logged: {log}");

    // A server that is really down is still taken out, traffic or not.
    let traffic = Traffic::start(r.url("/v1/chat/completions"), 2, Duration::from_millis(20));
    let mut blue = blue;
    blue.proc.kill9();
    let e = wait_endpoint(&r, "blue", false, |p| p["reason"] == "connect").await;
    assert_eq!(e["last_probe"]["counted"], true, "{e}");
    let _ = traffic.stop().await;
}

#[tokio::test]
async fn a_hung_server_gets_no_cover_from_requests_that_never_finish() {
    let blue = Mock::start("v1", &[]).await;
    // Requests hang (wedged); /health queues behind them, so it times out too.
    let green = Mock::start("v2", &["--wedged", "--busy-health-delay", "10s"]).await;
    let r = Router::start(&service(
        &[blue.addr()],
        &[green.addr()],
        "health = { path = \"/health\", interval = \"100ms\", timeout = \"300ms\" }",
    ))
    .await;
    assert_eq!(r.switch("green").await.status, 200, "healthy while idle");
    wait_endpoint(&r, "green", true, |p| p["ok"] == true).await;
    // Proxied requests that never get an answer.
    let hung: Vec<_> = (0..2)
        .map(|_| {
            let url = r.url("/v1/chat/completions");
            tokio::spawn(async move {
                let _ = send(&http_client(), Method::POST, &url, &[], r#"{"max_tokens":1}"#).await;
            })
        })
        .collect();
    wait_for("the hung requests to reach green", Duration::from_secs(10), || async {
        (green.stats().await["in_flight"].as_i64() == Some(2)).then_some(())
    })
    .await;
    let e = wait_endpoint(&r, "green", false, |p| p["reason"] == "timeout").await;
    assert_eq!(e["last_probe"]["counted"], true, "{e}");
    for h in hung {
        h.abort();
    }
}

// ---- metrics -------------------------------------------------------------------------------

fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

#[tokio::test]
async fn failed_probes_are_counted_by_reason_and_pass_promtool() {
    let blue = Mock::start("v1", &[]).await;
    let green = Mock::start("v2", &["--fail-health"]).await;
    let r = Router::start(&service(
        &[blue.addr()],
        &[green.addr()],
        "health = { path = \"/health\", interval = \"100ms\", timeout = \"1s\" }",
    ))
    .await;
    assert_eq!(r.switch("blue").await.status, 200);
    wait_endpoint(&r, "green", false, |p| p["reason"] == "status").await;
    let series = |color: &str, version: &str, ep: &str, reason: &str| {
        format!("cutover_probe_failures_total{{service=\"chat\",color=\"{color}\",version=\"{version}\",endpoint=\"{ep}\",reason=\"{reason}\"}}")
    };
    let scrape = || async { get(&r.admin_url("/metrics")).await.unwrap().text() };
    let first = scrape().await;
    let status_failures = sample(&first, &series("green", "v2", &green.addr(), "status")).expect(&first);
    assert!(status_failures >= 1.0, "{first}");
    for reason in ["timeout", "connect", "grpc_not_serving", "body"] {
        assert_eq!(
            sample(&first, &series("green", "v2", &green.addr(), reason)),
            Some(0.0),
            "{reason}"
        );
        assert_eq!(sample(&first, &series("blue", "v1", &blue.addr(), reason)), Some(0.0));
    }
    assert_eq!(sample(&first, &series("blue", "v1", &blue.addr(), "status")), Some(0.0));
    wait_for(
        "the count to grow with every failed probe",
        Duration::from_secs(10),
        || async {
            let now = sample(&scrape().await, &series("green", "v2", &green.addr(), "status"))?;
            (now > status_failures).then_some(())
        },
    )
    .await;

    let mut p = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool is installed (.ci/run installs the Debian package prometheus)");
    p.stdin.take().unwrap().write_all(first.as_bytes()).unwrap();
    let out = p.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

// ---- examples ------------------------------------------------------------------------------

#[test]
fn every_example_config_passes_cutover_check() {
    let mut checked = Vec::new();
    for entry in std::fs::read_dir(repo().join("examples")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|x| x != "toml") {
            continue;
        }
        let out = std::process::Command::new(CUTOVER)
            .arg("check")
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}: {}{}",
            path.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name == "shared-listener.toml" {
            // A chat and an embedding service behind one port.
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(stdout.contains("ok (2 services, 1 shared listener)"), "{stdout}");
        }
        checked.push(name);
    }
    checked.sort();
    for want in [
        "llama-server.toml",
        "shared-listener.toml",
        "triton-grpc.toml",
        "triton-http.toml",
        "vllm.toml",
    ] {
        assert!(checked.iter().any(|c| c == want), "{want} is among {checked:?}");
    }
}
