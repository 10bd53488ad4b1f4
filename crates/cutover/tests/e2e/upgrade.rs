//! `cutover serve --upgrade`: a new router process takes the running one's listening sockets
//! (by config key, port 0 included), store and managed processes; the old one drains and
//! exits 0. Under load nothing fails and no connection is refused; a failed upgrade leaves the
//! old one serving and its control plane working.

use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Method;
use http_body_util::Full;
use serde_json::Value;

use crate::support::*;

/// Runs `serve --upgrade` on the router's config and waits until the new process serves
/// (its addresses file written). `r.proc` becomes the new process; the old one is returned.
/// The listeners were handed over, so every port is the one the old process had.
pub async fn upgrade(r: &mut Router) -> Proc {
    let before = (r.admin, r.listen, r.preview);
    let addresses = r.addresses_file();
    let _ = std::fs::remove_file(&addresses);
    let child = r
        .serve_command(&r.config, &addresses)
        .arg("--upgrade")
        .spawn()
        .expect("spawn cutover serve --upgrade");
    let old = std::mem::replace(&mut r.proc, Proc(Some(child)));
    let proc = &mut r.proc;
    let bound: Value = wait_for(
        "the new process to write its addresses",
        Duration::from_secs(30),
        || {
            if let Ok(Some(st)) = proc.0.as_mut().unwrap().try_wait() {
                panic!("cutover serve --upgrade exited with {st}");
            }
            let text = std::fs::read_to_string(&addresses).ok();
            async move { text.and_then(|t| serde_json::from_str(&t).ok()) }
        },
    )
    .await;
    let port = |v: &Value| {
        v.as_str()
            .map_or(0, |a| a.parse::<std::net::SocketAddr>().unwrap().port())
    };
    let after = (
        port(&bound["admin"]),
        port(&bound["services"]["chat"]["listen"]),
        port(&bound["services"]["chat"]["preview_listen"]),
    );
    assert_eq!(after, before, "every listener was handed over, not bound anew");
    old
}

/// Waits for the old process to exit after its drain; its exit code.
pub fn exit_code(old: &mut Proc) -> Option<i32> {
    tokio::task::block_in_place(|| old.wait_exit(Duration::from_secs(20)))
}

/// New connections, one request each (connection: close), until stopped: every one must be
/// accepted and answered, whichever process accepts it.
/// `ok` counts the answered ones as they come; the failures are returned.
fn fresh_connections(port: u16, stop: Arc<AtomicBool>, ok: Arc<AtomicU64>) -> std::thread::JoinHandle<Vec<String>> {
    std::thread::spawn(move || {
        let mut failed = Vec::new();
        while !stop.load(Relaxed) {
            let r = std::net::TcpStream::connect(("127.0.0.1", port)).and_then(|mut s| {
                s.set_read_timeout(Some(Duration::from_secs(10)))?;
                s.write_all(b"GET /v1/models HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")?;
                let mut buf = String::new();
                s.read_to_string(&mut buf)?;
                Ok(buf)
            });
            match r {
                Ok(b) if b.starts_with("HTTP/1.1 200") => {
                    ok.fetch_add(1, Relaxed);
                }
                Ok(b) => failed.push(b.lines().next().unwrap_or("(empty answer)").to_string()),
                Err(e) => failed.push(e.to_string()),
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        failed
    })
}

/// Waits until both kinds of traffic have had `n` more answers than now.
async fn more_answers(traffic: &Traffic, fresh: &AtomicU64, n: u64, what: &str) {
    let (t0, f0) = (traffic.ok.load(Relaxed), fresh.load(Relaxed));
    wait_for(what, Duration::from_secs(30), || async {
        (traffic.ok.load(Relaxed) >= t0 + n && fresh.load(Relaxed) >= f0 + n).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_under_load_and_50_streams_fails_nothing_and_the_new_process_serves() {
    let blue = Mock::start("v1", &["--token-interval", "20ms"]).await;
    let green = Mock::start("v2", &[]).await;
    let mut r = Router::start(&static_service(&[&blue], &[&green], "")).await;
    assert_eq!(r.switch("blue").await.status, 200);
    let old_pid = r.proc.pid();

    // 50 streams of 100 tokens (2 s each), open on the old process when it hands over.
    let c = http_client();
    let mut streams = Vec::new();
    for _ in 0..50 {
        let req = http::Request::post(r.url("/v1/chat/completions"))
            .body(Full::new(Bytes::from(r#"{"stream":true,"max_tokens":100}"#)))
            .unwrap();
        let c = c.clone();
        streams.push(tokio::spawn(async move {
            let resp = c.request(req).await.map_err(|e| e.to_string())?;
            Ok::<_, String>(read_stream(resp).await)
        }));
    }
    wait_for("50 streams in flight", Duration::from_secs(10), || async {
        (r.status().await["colors"]["blue"]["in_flight"].as_u64() >= Some(50)).then_some(())
    })
    .await;
    let traffic = Traffic::start(r.url("/v1/chat/completions"), 4, Duration::from_millis(5));
    let stop = Arc::new(AtomicBool::new(false));
    let fresh_ok = Arc::new(AtomicU64::new(0));
    let fresh = fresh_connections(r.listen, stop.clone(), fresh_ok.clone());
    more_answers(&traffic, &fresh_ok, 20, "traffic before the upgrade").await;

    let mut old = upgrade(&mut r).await;
    let new_pid = r.proc.pid();
    // Traffic runs on after the hand-over, through the new process's listeners.
    let handed = format!("upgrade: handed 3 listeners to pid {new_pid}");
    wait_for("the old process to hand over", Duration::from_secs(10), || async {
        r.log().contains(&handed).then_some(())
    })
    .await;
    more_answers(&traffic, &fresh_ok, 20, "traffic after the hand-over").await;
    stop.store(true, Relaxed);
    let fresh_failed = tokio::task::block_in_place(|| fresh.join().unwrap());
    let (_, failed, _) = traffic.stop().await;
    assert!(failed.is_empty(), "{} failed requests: {failed:?}", failed.len());
    assert!(
        fresh_failed.is_empty(),
        "new connections refused or failed: {fresh_failed:?}"
    );
    for s in streams {
        let (events, err) = s.await.unwrap().unwrap();
        assert_eq!(err, None, "a stream was cut; the routers' log:\n{}", r.log());
        assert_eq!(
            stream_versions(&events).unwrap(),
            vec!["v1"; 101],
            "every event of every stream"
        );
    }
    assert_eq!(exit_code(&mut old), Some(0), "the old process drained and exited 0");
    let log = r.log();
    assert!(
        log.contains(&format!("upgrade: handed 3 listeners to pid {new_pid}")),
        "{log}"
    );
    assert!(
        log.contains("upgrade: took over listeners from the running cutover"),
        "{log}"
    );
    assert!(log.contains(&format!("from_pid={old_pid}")), "{log}");

    // The new process is the router now: it says so, its admin API answers, a switch works.
    let health = get(&r.admin_url("/healthz")).await.unwrap().json();
    assert_eq!(health["pid"], new_pid, "{health}");
    assert_eq!(health["upgraded_from_pid"], old_pid, "{health}");
    assert_eq!(r.status().await["live"], "blue");
    assert_eq!(r.switch("green").await.status, 200);
    let after = get(&r.url("/v1/models")).await.unwrap();
    assert_eq!(after.header("x-cutover-version"), "v2");
    assert!(r.proc.0.as_mut().unwrap().try_wait().unwrap().is_none());
}

async fn mock_pid(port: u16) -> Option<u64> {
    let r = get(&format!("http://127.0.0.1:{port}/mock/stats")).await.ok()?;
    r.json()["pid"].as_u64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_keeps_the_managed_model_servers_and_the_new_router_supervises_them() {
    let ports = ManagedPorts::new();
    let verify = "[services.chat.release.verify]\nbake = \"1s\"\nmin_requests = 0\n";
    let mut r = Router::start(&managed_service(&ports, &[], verify)).await;
    let id = r.release("v1").await;
    assert_eq!(r.wait_end(id, Duration::from_secs(60)).await["outcome"], "completed");
    let before = mock_pid(ports.blue).await.unwrap();

    let mut old = upgrade(&mut r).await;
    assert_eq!(exit_code(&mut old), Some(0));
    assert_eq!(
        mock_pid(ports.blue).await,
        Some(before),
        "the same model server, never restarted"
    );
    let st = r.status().await;
    assert_eq!(
        st["colors"]["blue"]["processes"]["running"][0]["pid"].as_u64(),
        Some(before),
        "{st}"
    );
    assert_eq!(get(&r.url("/v1/models")).await.unwrap().status, 200);

    // The new router watches it: killed, it is restarted by the new router's policy.
    let kill = std::process::Command::new("kill")
        .args(["-9", &before.to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let pid = wait_for(
        "blue to be restarted by the new router",
        Duration::from_secs(20),
        || async {
            let st = r.status().await;
            let p = &st["colors"]["blue"]["processes"];
            (p["restarts"] == 1).then(|| p["running"][0]["pid"].as_u64()).flatten()
        },
    )
    .await;
    assert_ne!(pid, before);
    wait_for(
        "the restarted model server to answer",
        Duration::from_secs(20),
        || async { mock_pid(ports.blue).await.filter(|p| *p == pid) },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_upgrade_leaves_the_old_router_serving_with_its_control_plane_working() {
    let blue = Mock::start("v1", &[]).await;
    let green = Mock::start("v2", &[]).await;
    let mut r = Router::start(&static_service(&[&blue], &[&green], "")).await;
    assert_eq!(r.switch("blue").await.status, 200);
    let traffic = Traffic::start(r.url("/v1/chat/completions"), 2, Duration::from_millis(5));
    wait_for("traffic before the upgrade", Duration::from_secs(10), || async {
        (traffic.ok.load(Relaxed) >= 20).then_some(())
    })
    .await;

    // The new process's store cannot open (its folder would be inside a file); the upgrade
    // socket is found through the same data_dir.
    let text = std::fs::read_to_string(&r.config).unwrap().replace(
        "path = \"cutover.db\"",
        "path = \"cutover.toml/cutover.db\"\ndata_dir = \"cutover-data\"",
    );
    let bad = r.dir.path().join("bad.toml");
    std::fs::write(&bad, text).unwrap();
    let out = tokio::task::block_in_place(|| {
        r.serve_command(&bad, &r.dir.path().join("bad-addresses.json"))
            .arg("--upgrade")
            .stderr(std::process::Stdio::piped())
            .output()
            .unwrap()
    });
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("cannot create the store folder"), "{stderr}");
    assert!(!r.dir.path().join("bad-addresses.json").exists());

    // The old process resumed (it logs why once it read the new one's reason, which may be
    // just after the new one exited): it serves, its admin mutations work, nothing failed.
    wait_for(
        "the old process to log the failed upgrade",
        Duration::from_secs(10),
        || async { r.log().contains("upgrade failed").then_some(()) },
    )
    .await;
    let log = r.log();
    assert!(log.contains("upgrade: handed 3 listeners to pid"), "{log}");
    assert!(log.contains("upgrade failed"), "{log}");
    assert!(
        log.contains("cannot create the store folder"),
        "the old process logs why: {log}"
    );
    assert_eq!(r.switch("green").await.status, 200);
    assert_eq!(
        get(&r.url("/v1/models")).await.unwrap().header("x-cutover-version"),
        "v2"
    );
    let resumed = traffic.ok.load(Relaxed);
    wait_for("traffic after the failed upgrade", Duration::from_secs(10), || async {
        (traffic.ok.load(Relaxed) >= resumed + 20).then_some(())
    })
    .await;
    let (_, failed, _) = traffic.stop().await;
    assert!(failed.is_empty(), "failed: {failed:?}");
    assert!(
        r.proc.0.as_mut().unwrap().try_wait().unwrap().is_none(),
        "still running"
    );

    // And a later upgrade still works.
    let mut old = upgrade(&mut r).await;
    assert_eq!(exit_code(&mut old), Some(0));
    assert_eq!(r.status().await["live"], "green");
}

/// Two services whose every listener says port 0: each socket reaches the new process under
/// its own key (an address-keyed hand-over could not tell them apart), twice in a row, the
/// second time from the process the first upgrade started.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn port_0_listeners_are_handed_over_by_key_twice_in_a_row() {
    let (a, b) = (Mock::start("a1", &[]).await, Mock::start("a2", &[]).await);
    let (x, y) = (Mock::start("x1", &[]).await, Mock::start("x2", &[]).await);
    let other = static_service(&[&x], &[&y], "").replace("services.chat", "services.other");
    let mut r = Router::start(&format!("{}\n{other}", static_service(&[&a], &[&b], ""))).await;
    assert_eq!(r.switch("blue").await.status, 200);
    let bound: Value = serde_json::from_str(&std::fs::read_to_string(r.addresses_file()).unwrap()).unwrap();
    let other_port: u16 = bound["services"]["other"]["listen"]
        .as_str()
        .unwrap()
        .parse::<std::net::SocketAddr>()
        .unwrap()
        .port();
    let other_url = format!("http://127.0.0.1:{other_port}/v1/models");
    let r2 = r
        .api(
            Method::POST,
            "/v1/services/other/switch",
            serde_json::json!({"to": "green"}),
        )
        .await;
    assert_eq!(r2.status, 200, "{}", r2.text());

    for round in 0..2 {
        let mut old = upgrade(&mut r).await;
        let new_pid = r.proc.pid();
        assert_eq!(exit_code(&mut old), Some(0), "round {round}");
        assert!(r
            .log()
            .contains(&format!("upgrade: handed 5 listeners to pid {new_pid}")));
        let now: Value = serde_json::from_str(&std::fs::read_to_string(r.addresses_file()).unwrap()).unwrap();
        assert_eq!(now["services"], bound["services"], "round {round}: the same sockets");
        // Each port still reaches its own service, with the live color the store says.
        let chat = get(&r.url("/v1/models")).await.unwrap();
        assert_eq!(chat.header("x-cutover-version"), "a1", "round {round}");
        let other = get(&other_url).await.unwrap();
        assert_eq!(other.header("x-cutover-version"), "x2", "round {round}");
    }
    assert_eq!(r.switch("green").await.status, 200);
}

/// Kills a process this test did not start itself (the successor a router started) at the end.
struct KillOnDrop(u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-9", &self.0.to_string()])
            .status();
    }
}

/// The next message on a stand-in for systemd's notify socket.
fn next_notification(sock: &std::os::unix::net::UnixDatagram) -> String {
    let mut buf = [0u8; 512];
    // A signal to this test process (another test's child exiting) interrupts the wait: retry.
    let n = loop {
        match sock.recv(&mut buf) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            r => break r.expect("a notification within the read timeout"),
        }
    };
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

/// The way under systemd (`Type=notify`): SIGUSR2 makes the router start its successor itself
/// (inside the unit, same arguments plus `--upgrade`), which it names the main process with
/// `MAINPID=` once the successor is ready; each process says `READY=1` when it serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigusr2_starts_the_successor_and_names_it_the_main_process_to_systemd() {
    let blue = Mock::start("v1", &[]).await;
    let green = Mock::start("v2", &[]).await;
    let dir = TempDir::new("notify");
    let path = dir.path().join("notify.sock");
    let notify = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
    notify.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut r = Router::start_with_env(
        &static_service(&[&blue], &[&green], ""),
        &[("NOTIFY_SOCKET", path.to_str().unwrap())],
    )
    .await;
    let next = |n: &std::os::unix::net::UnixDatagram| {
        let n = n.try_clone().unwrap();
        tokio::task::block_in_place(move || next_notification(&n))
    };
    assert_eq!(next(&notify), "READY=1");
    assert_eq!(r.switch("blue").await.status, 200);
    let old_pid = r.proc.pid();

    r.proc.signal("USR2");
    let main = next(&notify);
    let new_pid: u32 = main
        .strip_prefix("MAINPID=")
        .unwrap_or_else(|| panic!("MAINPID first, got {main:?}"))
        .parse()
        .unwrap();
    let _successor = KillOnDrop(new_pid);
    assert_ne!(new_pid, old_pid);
    assert_eq!(
        next(&notify),
        "READY=1",
        "the successor is ready once it is the main process"
    );
    assert_eq!(exit_code(&mut r.proc), Some(0), "the old process drained and exited 0");

    let health = get(&r.admin_url("/healthz")).await.unwrap().json();
    assert_eq!(health["pid"], new_pid, "{health}");
    assert_eq!(health["upgraded_from_pid"], old_pid, "{health}");
    assert_eq!(r.status().await["live"], "blue");
    assert_eq!(r.switch("green").await.status, 200);
    assert_eq!(
        get(&r.url("/v1/models")).await.unwrap().header("x-cutover-version"),
        "v2"
    );
    assert!(
        r.log().contains("upgrade: SIGUSR2: started the new process"),
        "{}",
        r.log()
    );
}

/// The listeners handed over are the ones serving at the hand-over, not those bound at start:
/// a listener a reload moved to a new address goes to the successor under its key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_a_reload_moved_is_the_one_handed_over() {
    let blue = Mock::start("v1", &[]).await;
    let green = Mock::start("v2", &[]).await;
    let mut r = Router::start(&static_service(&[&blue], &[&green], "")).await;
    assert_eq!(r.switch("blue").await.status, 200);
    // Moved to another loopback address, port 0 again: the port is read back from the
    // addresses file the reload rewrites.
    let text = std::fs::read_to_string(&r.config).unwrap().replacen(
        "listen = \"127.0.0.1:0\"\npreview_listen",
        "listen = \"127.0.0.2:0\"\npreview_listen",
        1,
    );
    std::fs::write(&r.config, text).unwrap();
    let (code, out, err) = r.cli_async(&["reload"]).await;
    assert_eq!(code, 0, "{out}{err}");
    let moved = bound_listen(&r);
    assert_eq!(moved.ip().to_string(), "127.0.0.2");
    r.listen = moved.port();
    let url = format!("http://{moved}/v1/models");
    assert_eq!(get(&url).await.unwrap().status, 200);

    let mut old = upgrade(&mut r).await;
    assert_eq!(exit_code(&mut old), Some(0));
    assert!(
        r.log()
            .contains("taken=3 keys=admin, services.chat.listen, services.chat.preview_listen"),
        "every key taken over, the moved one included: {}",
        r.log()
    );
    assert_eq!(bound_listen(&r), moved, "the successor serves the moved address");
    assert_eq!(get(&url).await.unwrap().header("x-cutover-version"), "v1");
}

/// The address `services.chat.listen` is bound to, from the addresses file.
fn bound_listen(r: &Router) -> std::net::SocketAddr {
    let v: Value = serde_json::from_str(&std::fs::read_to_string(r.addresses_file()).unwrap()).unwrap();
    v["services"]["chat"]["listen"].as_str().unwrap().parse().unwrap()
}

/// Keep-alive clients that never retry, in a closed loop: `http.client` (HTTP/1.1, one
/// connection each) and httpx over h2c (prior knowledge). Prints `running` once every client
/// has an answer, then runs until its stdin closes and prints what happened as JSON.
const KEEP_ALIVE_CLIENTS: &str = r#"
import http.client, json, sys, threading
import httpx
port, n1, n2 = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
body = b'{"model":"m","messages":[{"role":"user","content":"hi"}],"max_tokens":2}'
head = {"content-type": "application/json"}
stop, lock, started = threading.Event(), threading.Lock(), threading.Semaphore(0)
res = {"h1_ok": 0, "h1_closes": 0, "h2_ok": 0, "errors": []}

def fail(who, e):
    with lock:
        res["errors"].append(f"{who}: {type(e).__name__}: {e}")

def h1():
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    ok = closes = 0
    while not stop.is_set():
        try:
            c.request("POST", "/v1/chat/completions", body, head)
            r = c.getresponse()
            r.read()
            if r.status != 200:
                raise RuntimeError(f"status {r.status}")
            ok += 1
            closes += r.will_close
            if ok == 1:
                started.release()
        except Exception as e:
            fail("http.client", e)
            c.close()
    with lock:
        res["h1_ok"] += ok
        res["h1_closes"] += closes

def h2():
    ok = 0
    with httpx.Client(http1=False, http2=True, timeout=30) as c:
        while not stop.is_set():
            try:
                r = c.post(f"http://127.0.0.1:{port}/v1/chat/completions", content=body, headers=head)
                if r.status_code != 200 or r.http_version != "HTTP/2":
                    raise RuntimeError(f"status {r.status_code} over {r.http_version}")
                ok += 1
                if ok == 1:
                    started.release()
            except Exception as e:
                fail("httpx h2c", e)
    with lock:
        res["h2_ok"] += ok

threads = [threading.Thread(target=h1) for _ in range(n1)] + [threading.Thread(target=h2) for _ in range(n2)]
for t in threads:
    t.start()
for _ in threads:
    started.acquire()
print("running", flush=True)
sys.stdin.read()
stop.set()
for t in threads:
    t.join()
print(json.dumps(res), flush=True)
"#;

/// The blue color's answered requests as the router's metrics count them.
async fn blue_requests(r: &Router) -> u64 {
    let m = get(&r.admin_url("/metrics"))
        .await
        .map(|m| m.text())
        .unwrap_or_default();
    m.lines()
        .filter(|l| l.starts_with("cutover_requests_total{") && l.contains("color=\"blue\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

async fn keep_alive_clients_across_an_upgrade(engine: &str) {
    use std::io::BufRead;
    let blue = Mock::start("v1", &[]).await;
    let green = Mock::start("v2", &[]).await;
    let mut r = Router::start(&on_engine(&static_service(&[&blue], &[&green], ""), engine)).await;
    assert_eq!(r.switch("blue").await.status, 200);
    let (n1, n2) = (20, 5);
    let mut py = std::process::Command::new("python3")
        .args([
            "-c",
            KEEP_ALIVE_CLIENTS,
            &r.listen.to_string(),
            &n1.to_string(),
            &n2.to_string(),
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3 with httpx and h2");
    let mut out = std::io::BufReader::new(py.stdout.take().unwrap());
    let mut line = String::new();
    tokio::task::block_in_place(|| out.read_line(&mut line)).unwrap();
    assert_eq!(line.trim(), "running", "{engine}: the clients did not start");

    let mut old = upgrade(&mut r).await;
    assert_eq!(
        exit_code(&mut old),
        Some(0),
        "{engine}: the old process drained and exited 0"
    );
    // The clients go on against the new process (its own count starts at 0).
    wait_for(
        "the clients to keep going on the new process",
        Duration::from_secs(20),
        || async { (blue_requests(&r).await >= 200).then_some(()) },
    )
    .await;
    drop(py.stdin.take());
    line.clear();
    tokio::task::block_in_place(|| out.read_line(&mut line)).unwrap();
    let _ = py.wait();
    let res: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{engine}: {e}: {line:?}"));
    assert_eq!(res["errors"], serde_json::json!([]), "{engine}: {res}\n{}", r.log());
    // Every HTTP/1.1 connection was told to close by the drain (and reopened on its own);
    // nothing else closes them.
    assert!(res["h1_closes"].as_u64() >= Some(n1), "{engine}: {res}");
    assert!(res["h2_ok"].as_u64() > Some(n2), "{engine}: {res}");
}

/// `serve --upgrade` under keep-alive clients that never retry: every HTTP/1.1 answer of the
/// drain says `Connection: close` and its connection closes after it (none is closed under
/// a request on its way), and an h2c connection ends with one GOAWAY at a moment with
/// nothing in flight: not one error, on both engines.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_clients_that_never_retry_see_no_error_across_an_upgrade_on_both_engines() {
    for engine in ["own", "hyper"] {
        keep_alive_clients_across_an_upgrade(engine).await;
    }
}
