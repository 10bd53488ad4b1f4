//! Shared harness: real `cutover` and `mock-model` processes on loopback, a temp folder per
//! router, and plain HTTP clients.
//!
//! A router's own listeners (admin, service, preview) are configured on port 0 and read back
//! from the file `serve --addresses-file` writes once everything serves: no port is picked
//! here and handed over. Model servers (mock, managed, on host agents) must be told their
//! port before they run, since cutover's config names it: `free_port` hands out one the
//! kernel never picks for anyone else (outside its ephemeral range), reserved against other
//! test processes by an abstract Unix socket.

#![allow(dead_code)]

use std::collections::HashSet;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

pub const CUTOVER: &str = env!("CARGO_BIN_EXE_cutover");
pub const MOCK: &str = env!("CARGO_BIN_EXE_mock-model");

/// `services` with every `[services.NAME]` table set to serve HTTP/1.1 clients on `engine`
/// (`http1_engine`: "own" or "hyper"), for the tests that run one case on both engines.
pub fn on_engine(services: &str, engine: &str) -> String {
    let mut out = String::with_capacity(services.len() + 64);
    for line in services.split_inclusive('\n') {
        out.push_str(line);
        let t = line.trim();
        let table = t.strip_prefix("[services.").and_then(|r| r.strip_suffix(']'));
        if table.is_some_and(|name| !name.contains('.')) {
            if !line.ends_with('\n') {
                out.push('\n');
            }
            out.push_str(&format!("http1_engine = \"{engine}\"\n"));
        }
    }
    out
}

/// A port for a server this test starts on a fixed port (a model server, a managed color),
/// free on every address when handed out and not handed out again.
///
/// A port from the kernel's ephemeral range (what a bind to port 0 returns) can be taken by
/// any process between this call and the server's bind: every outgoing connection and every
/// port-0 bind draws from that range. So the port comes from outside it, where only an
/// explicit bind can take it, and is reserved against the other test processes of this
/// machine (parallel suites) by an abstract Unix socket named after it: bound by one process
/// at a time, released by the kernel when that process ends, however it ends.
pub fn free_port() -> u16 {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr, UnixListener};
    static GIVEN: Mutex<Option<(HashSet<u16>, Vec<UnixListener>)>> = Mutex::new(None);
    let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
    let (ports, locks) = given.get_or_insert_with(Default::default);
    let candidates = outside_ephemeral_range();
    // Start somewhere else in each process, so parallel suites rarely meet at one lock.
    let start = (std::process::id() as usize).wrapping_mul(7919) % candidates.len();
    for &p in candidates.iter().cycle().skip(start).take(candidates.len()) {
        if ports.contains(&p) {
            continue;
        }
        let name = SocketAddr::from_abstract_name(format!("cutover-e2e-port-{p}")).unwrap();
        let Ok(lock) = UnixListener::bind_addr(&name) else {
            continue;
        };
        // Free on every address (host agents and DNS tests listen on 127.0.0.x).
        if std::net::TcpListener::bind(("0.0.0.0", p)).is_err() {
            continue;
        }
        ports.insert(p);
        locks.push(lock);
        return p;
    }
    panic!("no free port outside the ephemeral range {:?}", ephemeral_range());
}

/// The kernel's ephemeral port range (`ip_local_port_range`), Linux's default if unreadable.
fn ephemeral_range() -> (u16, u16) {
    let text = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap_or_default();
    let mut it = text.split_whitespace().filter_map(|v| v.parse().ok());
    match (it.next(), it.next()) {
        (Some(lo), Some(hi)) => (lo, hi),
        _ => (32768, 60999),
    }
}

/// Up to 10,000 unprivileged ports below the ephemeral range, then those above it.
fn outside_ephemeral_range() -> Vec<u16> {
    let (lo, hi) = ephemeral_range();
    let below = lo.saturating_sub(10_000).max(1024)..lo;
    let above = hi.saturating_add(1).max(1024)..=u16::MAX;
    let v: Vec<u16> = below.chain(above.filter(|&p| p > hi)).collect();
    assert!(!v.is_empty(), "the ephemeral range {lo}-{hi} leaves no port outside it");
    v
}

/// How many connections wait, not yet accepted, in the accept queue of the TCP listener on
/// 127.0.0.1:`port` (Linux: the receive queue of a listening socket in `/proc/net/tcp`).
pub fn accept_queue(port: u16) -> Option<u32> {
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    let local = format!("0100007F:{port:04X}");
    table.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        // local_address, rem_address, st (0A: LISTEN), tx_queue:rx_queue.
        (f.get(1) == Some(&local.as_str()) && f.get(3) == Some(&"0A"))
            .then(|| u32::from_str_radix(f.get(4)?.split(':').nth(1)?, 16).ok())
            .flatten()
    })
}

/// A folder removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicU64 = AtomicU64::new(0);
        let p = std::env::temp_dir().join(format!(
            "cutover-e2e-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Polls `f` until it returns `Some`, or panics with `what` after `timeout`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn http_client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(64)
        .build(HttpConnector::new())
}

pub struct Resp {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Resp {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.text()))
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn header(&self, name: &str) -> &str {
        self.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
    }
}

pub async fn send(
    c: &Client<HttpConnector, Full<Bytes>>,
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Result<Resp, String> {
    let mut b = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let req = b.body(Full::new(Bytes::from(body.to_string()))).unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(30), c.request(req))
        .await
        .map_err(|_| format!("{url}: no answer in 30 s"))?
        .map_err(|e| format!("{url}: {e:?}"))?;
    let (parts, body) = resp.into_parts();
    let body = body
        .collect()
        .await
        .map_err(|e| format!("{url}: body: {e}"))?
        .to_bytes();
    Ok(Resp {
        status: parts.status,
        headers: parts.headers,
        body,
    })
}

pub async fn get(url: &str) -> Result<Resp, String> {
    send(&http_client(), Method::GET, url, &[], "").await
}

/// A child process killed (SIGKILL) when dropped.
pub struct Proc(pub Option<Child>);

impl Proc {
    pub fn pid(&self) -> u32 {
        self.0.as_ref().expect("running").id()
    }
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
    pub fn signal(&self, sig: &str) {
        let st = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status()
            .unwrap();
        assert!(st.success());
    }
    /// Waits for the process to exit and returns its exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let start = Instant::now();
        let c = self.0.as_mut()?;
        loop {
            if let Some(st) = c.try_wait().unwrap() {
                self.0 = None;
                return st.code();
            }
            if start.elapsed() > timeout {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A running `mock-model`.
pub struct Mock {
    pub port: u16,
    pub version: String,
    pub proc: Proc,
}

impl Mock {
    /// Starts a mock on a `free_port`. A mock has to be told its port (cutover's config names
    /// it), so the port is picked here; if a process bound it explicitly meanwhile the mock
    /// exits at its bind and is started again on a new one.
    pub async fn start(version: &str, extra: &[&str]) -> Mock {
        for _ in 0..5 {
            if let Some(m) = Mock::try_start_on(free_port(), version, extra).await {
                return m;
            }
        }
        panic!("mock-model could not bind a free port five times in a row");
    }

    pub async fn start_on(port: u16, version: &str, extra: &[&str]) -> Mock {
        Mock::try_start_on(port, version, extra)
            .await
            .unwrap_or_else(|| panic!("mock-model exited instead of listening on {port}"))
    }

    /// `None` when the process exited before it listened (its port was taken).
    async fn try_start_on(port: u16, version: &str, extra: &[&str]) -> Option<Mock> {
        let child = Command::new(MOCK)
            .args(["--port", &port.to_string(), "--model-version", version])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn mock-model");
        let mut m = Mock {
            port,
            version: version.into(),
            proc: Proc(Some(child)),
        };
        let url = format!("http://127.0.0.1:{port}/v1/models");
        let version = m.version.clone();
        let proc = &mut m.proc;
        // Generous: on a loaded machine (the whole suite at once on 2 cores) a start is slow.
        let listening = wait_for("mock-model to listen", Duration::from_secs(30), || {
            let exited = matches!(proc.0.as_mut().map(|c| c.try_wait()), Some(Ok(Some(_))));
            let (url, version) = (url.clone(), version.clone());
            async move {
                if exited {
                    return Some(false);
                }
                // Only this mock answers with its version: not whoever else holds the port.
                let r = get(&url).await.ok()?;
                (r.header("x-model-version") == version).then_some(true)
            }
        })
        .await;
        listening.then_some(m)
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub async fn stats(&self) -> Value {
        get(&format!("http://127.0.0.1:{}/mock/stats", self.port))
            .await
            .unwrap()
            .json()
    }
}

/// A running `cutover serve` in its own folder.
pub struct Router {
    pub dir: TempDir,
    /// The ports the running process bound, read from its addresses file; a restart
    /// (`spawn`) binds new ones and updates these.
    pub admin: u16,
    pub listen: u16,
    /// 0 when the service has no preview listener.
    pub preview: u16,
    pub token: String,
    pub config: PathBuf,
    pub proc: Proc,
    pub http: Client<HttpConnector, Full<Bytes>>,
    /// Extra environment for the serve process.
    pub env: Vec<(String, String)>,
    /// A hosts file the serve process sees as `/etc/hosts` (its own mount namespace), for
    /// endpoint names whose answers a test changes.
    pub hosts: Option<PathBuf>,
}

impl Router {
    /// `services` is TOML for `[services.chat...]`; `{listen}` and `{preview}` become port 0.
    pub async fn start(services: &str) -> Router {
        Router::start_with_env(services, &[]).await
    }

    pub async fn start_with_env(services: &str, env: &[(&str, &str)]) -> Router {
        Router::start_full(services, env, None).await
    }

    /// A router whose `/etc/hosts` is `hosts` (bind-mounted in a mount namespace of its own:
    /// the machine's file is untouched). Edit `hosts` in place, never by rename: the mount
    /// holds the file, not the name.
    pub async fn start_with_hosts(services: &str, hosts: &Path) -> Router {
        Router::start_full(services, &[], Some(hosts.to_path_buf())).await
    }

    async fn start_full(services: &str, env: &[(&str, &str)], hosts: Option<PathBuf>) -> Router {
        let dir = TempDir::new("router");
        let text = format!(
            "[admin]\nlisten = \"127.0.0.1:0\"\naddress_file = \"admin.addr\"\n\n[store]\npath = \"cutover.db\"\n\n{}",
            services
                .replace("{listen}", "127.0.0.1:0")
                .replace("{preview}", "127.0.0.1:0")
        );
        let config = dir.path().join("cutover.toml");
        std::fs::write(&config, text).unwrap();
        let mut r = Router {
            dir,
            admin: 0,
            listen: 0,
            preview: 0,
            token: String::new(),
            config,
            proc: Proc(None),
            http: http_client(),
            env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            hosts,
        };
        r.spawn().await;
        r
    }

    /// The file the serve process writes its bound addresses to.
    pub fn addresses_file(&self) -> PathBuf {
        self.dir.path().join("addresses.json")
    }

    /// Starts (again) the serve process on the same folder; it binds new ports.
    pub async fn spawn(&mut self) {
        let addresses = self.addresses_file();
        let _ = std::fs::remove_file(&addresses);
        let child = self
            .serve_command(&self.config, &addresses)
            .spawn()
            .expect("spawn cutover");
        self.proc = Proc(Some(child));
        let proc = &mut self.proc;
        let log_path = self.dir.path().join("serve.log");
        let bound: Value = wait_for("cutover to write its addresses", Duration::from_secs(15), || {
            if let Some(c) = proc.0.as_mut() {
                if let Ok(Some(st)) = c.try_wait() {
                    panic!(
                        "cutover exited with {st}: {}",
                        std::fs::read_to_string(&log_path).unwrap_or_default()
                    );
                }
            }
            // Written with a rename once everything serves: present means complete.
            let text = std::fs::read_to_string(&addresses).ok();
            async move { text.and_then(|t| serde_json::from_str(&t).ok()) }
        })
        .await;
        let port = |v: &Value| -> u16 {
            v.as_str()
                .map(|a| a.parse::<std::net::SocketAddr>().expect("an address").port())
                .unwrap_or(0)
        };
        self.admin = port(&bound["admin"]);
        self.listen = port(&bound["services"]["chat"]["listen"]);
        self.preview = port(&bound["services"]["chat"]["preview_listen"]);
        let url = format!("http://127.0.0.1:{}/healthz", self.admin);
        wait_for("cutover to serve", Duration::from_secs(15), || {
            let url = url.clone();
            async move { get(&url).await.ok().filter(|r| r.status == 200) }
        })
        .await;
        self.token = std::fs::read_to_string(self.dir.path().join("admin.token"))
            .unwrap()
            .trim()
            .to_string();
    }

    /// A `cutover serve` of `config` with this router's log and environment, writing its
    /// bound addresses to `addresses`.
    pub fn serve_command(&self, config: &Path, addresses: &Path) -> Command {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("serve.log"))
            .unwrap();
        let mut cmd = match &self.hosts {
            None => Command::new(CUTOVER),
            Some(hosts) => {
                let mut c = Command::new("unshare");
                c.args(["--mount", "sh", "-c", r#"mount --bind "$0" /etc/hosts && exec "$@""#])
                    .arg(hosts)
                    .arg(CUTOVER);
                c
            }
        };
        cmd.args(["serve", "--config"])
            .arg(config)
            .args(["--grace", "5s", "--addresses-file"])
            .arg(addresses)
            .env("RUST_LOG", "info")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(log);
        cmd
    }

    /// The config with every port 0 replaced by the port the running process bound: a
    /// second `serve` of it competes for exactly the live instance's listeners.
    pub fn config_as_bound(&self) -> String {
        std::fs::read_to_string(&self.config)
            .unwrap()
            .replacen("127.0.0.1:0", &format!("127.0.0.1:{}", self.admin), 1)
            .replacen("127.0.0.1:0", &format!("127.0.0.1:{}", self.listen), 1)
            .replacen("127.0.0.1:0", &format!("127.0.0.1:{}", self.preview), 1)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("serve.log")).unwrap_or_default()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.listen)
    }

    pub fn preview_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.preview)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.admin)
    }

    /// An admin call with the right token.
    pub async fn api(&self, method: Method, path: &str, body: Value) -> Resp {
        let auth = format!("Bearer {}", self.token);
        let b = if body.is_null() {
            String::new()
        } else {
            body.to_string()
        };
        send(
            &self.http,
            method,
            &self.admin_url(path),
            &[("authorization", &auth)],
            &b,
        )
        .await
        .unwrap()
    }

    pub async fn switch(&self, to: &str) -> Resp {
        self.api(
            Method::POST,
            "/v1/services/chat/switch",
            serde_json::json!({ "to": to }),
        )
        .await
    }

    pub async fn status(&self) -> Value {
        let r = self.api(Method::GET, "/v1/services/chat", Value::Null).await;
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()
    }

    /// `cli` without blocking the test's runtime (for tests that keep traffic running).
    pub async fn cli_async(&self, args: &[&str]) -> (i32, String, String) {
        let out = tokio::process::Command::new(CUTOVER)
            .args(args)
            .env("CUTOVER_ADMIN", self.admin_url(""))
            .env("CUTOVER_TOKEN", &self.token)
            .output()
            .await
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Runs the CLI against this router; returns (exit code, stdout, stderr).
    pub fn cli(&self, args: &[&str]) -> (i32, String, String) {
        let out = Command::new(CUTOVER)
            .args(args)
            .env("CUTOVER_ADMIN", self.admin_url(""))
            .env("CUTOVER_TOKEN", &self.token)
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

/// The config of a service `chat` with static endpoints.
pub fn static_service(blue: &[&Mock], green: &[&Mock], extra: &str) -> String {
    let eps = |ms: &[&Mock]| {
        ms.iter()
            .map(|m| format!("\"{}\"", m.addr()))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let ver = |ms: &[&Mock]| ms.first().map(|m| m.version.clone()).unwrap_or_default();
    format!(
        "[services.chat]\nlisten = \"{{listen}}\"\npreview_listen = \"{{preview}}\"\nhealth = {{ path = \"/health\", interval = \"200ms\", timeout = \"1s\" }}\n{extra}\n\
         [services.chat.blue]\nendpoints = [{}]\nversion = \"{}\"\n\n[services.chat.green]\nendpoints = [{}]\nversion = \"{}\"\n",
        eps(blue),
        ver(blue),
        eps(green),
        ver(green)
    )
}

/// Reads a response body to its end: the text, and the error that cut it, if one did.
pub async fn read_text(resp: http::Response<hyper::body::Incoming>) -> (String, Option<String>) {
    let mut body = resp.into_body();
    let mut buf = String::new();
    while let Some(f) = body.frame().await {
        match f {
            Ok(f) => {
                if let Some(d) = f.data_ref() {
                    buf.push_str(&String::from_utf8_lossy(d));
                }
            }
            Err(e) => return (buf, Some(e.to_string())),
        }
    }
    (buf, None)
}

/// Reads a streaming response to its end, returning the SSE `data:` payloads, or the error
/// that cut it.
pub async fn read_stream(resp: http::Response<hyper::body::Incoming>) -> (Vec<String>, Option<String>) {
    let (buf, err) = read_text(resp).await;
    let events = buf
        .split("\n\n")
        .filter_map(|e| e.strip_prefix("data: ").map(str::to_string))
        .collect();
    (events, err)
}

/// The `model` of each chunk of a chat completion stream, checking it ends with `[DONE]`.
pub fn stream_versions(events: &[String]) -> Result<Vec<String>, String> {
    if events.last().map(String::as_str) != Some("[DONE]") {
        return Err(format!("stream did not end with [DONE]: last {:?}", events.last()));
    }
    events[..events.len() - 1]
        .iter()
        .map(|e| {
            let v: Value = serde_json::from_str(e).map_err(|x| format!("bad chunk {e:?}: {x}"))?;
            v["model"]
                .as_str()
                .map(str::to_string)
                .ok_or_else(|| format!("chunk without model: {e}"))
        })
        .collect()
}

/// Kills whatever `mock-model` listens on `port` (managed processes outlive cutover on
/// purpose, so tests clean them up themselves).
pub fn kill_mock_on(port: u16) {
    kill_mock_at("127.0.0.1", port)
}

/// Kills whatever `mock-model` listens on `ip:port` (a host agent's, on 127.0.0.2).
pub fn kill_mock_at(ip: &str, port: u16) {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect((ip, port)) else {
        return;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = s.write_all(b"GET /mock/stats HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
    let mut buf = String::new();
    let _ = s.read_to_string(&mut buf);
    let Some(i) = buf.find("\"pid\":") else { return };
    let pid: String = buf[i + 6..].chars().take_while(|c| c.is_ascii_digit()).collect();
    let _ = Command::new("kill").args(["-9", &pid]).status();
}

/// Ports of a managed service's two colors; their processes are killed when this drops.
pub struct ManagedPorts {
    pub blue: u16,
    pub green: u16,
}

impl ManagedPorts {
    pub fn new() -> ManagedPorts {
        ManagedPorts {
            blue: free_port(),
            green: free_port(),
        }
    }
}

impl Drop for ManagedPorts {
    fn drop(&mut self) {
        kill_mock_on(self.blue);
        kill_mock_on(self.green);
    }
}

/// A service whose colors cutover starts itself from the mock-model template. `release` is
/// TOML for the body of `[services.chat.release]` and its sub-tables.
pub fn managed_service(ports: &ManagedPorts, mock_args: &[&str], release: &str) -> String {
    let mut cmd = vec![
        MOCK.to_string(),
        "--port".into(),
        "{port}".into(),
        "--model-version".into(),
        "{version}".into(),
    ];
    cmd.extend(mock_args.iter().map(|s| s.to_string()));
    let cmd: Vec<String> = cmd.iter().map(|s| format!("{s:?}")).collect();
    format!(
        "[services.chat]\nlisten = \"{{listen}}\"\npreview_listen = \"{{preview}}\"\nhealth = {{ path = \"/health\", interval = \"100ms\", timeout = \"1s\" }}\n\
         [services.chat.run]\ncommand = [{}]\nports = {{ blue = [{}], green = [{}] }}\nstop_timeout = \"2s\"\n\n[services.chat.release]\n{release}\n",
        cmd.join(", "),
        ports.blue,
        ports.green
    )
}

impl Router {
    /// Starts a release and returns its id.
    pub async fn release(&self, version: &str) -> i64 {
        let r = self
            .api(
                Method::POST,
                "/v1/services/chat/releases",
                serde_json::json!({ "version": version }),
            )
            .await;
        assert_eq!(r.status, 202, "{}", r.text());
        r.json()["id"].as_i64().unwrap()
    }

    pub async fn release_doc(&self, id: i64) -> Value {
        let r = self
            .api(Method::GET, &format!("/v1/services/chat/releases/{id}"), Value::Null)
            .await;
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()
    }

    /// Waits for a release to reach `phase` (or end), returning its document.
    pub async fn wait_phase(&self, id: i64, phase: &str, timeout: Duration) -> Value {
        wait_for(&format!("release {id} to reach {phase}"), timeout, || async {
            let d = self.release_doc(id).await;
            (d["phase"] == phase || !d["outcome"].is_null()).then_some(d)
        })
        .await
    }

    /// Waits for a release to end.
    pub async fn wait_end(&self, id: i64, timeout: Duration) -> Value {
        wait_for(&format!("release {id} to end"), timeout, || async {
            let d = self.release_doc(id).await;
            (!d["outcome"].is_null()).then_some(d)
        })
        .await
    }
}

/// Sends requests through the live listener until stopped; counts successes and failures.
pub struct Traffic {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    handles: Vec<tokio::task::JoinHandle<()>>,
    pub ok: std::sync::Arc<AtomicU64>,
    pub failed: std::sync::Arc<Mutex<Vec<String>>>,
    pub by_version: std::sync::Arc<Mutex<std::collections::BTreeMap<String, u64>>>,
}

impl Traffic {
    pub fn start(url: String, workers: usize, pause: Duration) -> Traffic {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let ok = std::sync::Arc::new(AtomicU64::new(0));
        let failed = std::sync::Arc::new(Mutex::new(Vec::new()));
        let by_version = std::sync::Arc::new(Mutex::new(std::collections::BTreeMap::new()));
        let mut handles = Vec::new();
        for _ in 0..workers {
            let (stop, ok, failed, by_version, url) = (
                stop.clone(),
                ok.clone(),
                failed.clone(),
                by_version.clone(),
                url.clone(),
            );
            handles.push(tokio::spawn(async move {
                let c = http_client();
                while !stop.load(Ordering::Relaxed) {
                    match send(&c, Method::POST, &url, &[], r#"{"max_tokens":2}"#).await {
                        Ok(r) if r.status == 200 => {
                            ok.fetch_add(1, Ordering::Relaxed);
                            *by_version
                                .lock()
                                .unwrap()
                                .entry(r.header("x-cutover-version").to_string())
                                .or_insert(0) += 1;
                        }
                        Ok(r) => failed.lock().unwrap().push(format!("{} {}", r.status, r.text())),
                        Err(e) => failed.lock().unwrap().push(e),
                    }
                    tokio::time::sleep(pause).await;
                }
            }));
        }
        Traffic {
            stop,
            handles,
            ok,
            failed,
            by_version,
        }
    }

    pub async fn stop(self) -> (u64, Vec<String>, std::collections::BTreeMap<String, u64>) {
        self.stop.store(true, Ordering::Relaxed);
        for h in self.handles {
            let _ = h.await;
        }
        let failed = self.failed.lock().unwrap().clone();
        let by = self.by_version.lock().unwrap().clone();
        (self.ok.load(Ordering::Relaxed), failed, by)
    }
}

/// One raw HTTP/1.1 client connection to `port` (so a test controls exactly which connection a
/// request uses, and when it closes).
pub async fn h1_connection(
    port: u16,
) -> (
    hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    tokio::task::JoinHandle<hyper::Result<()>>,
) {
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let (send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
        .await
        .unwrap();
    (send, tokio::spawn(conn))
}

/// Writes `bytes` on a new connection, then reads until the server closes: the text, and
/// whether it closed. Bounded (10 s, 8 MiB) so a server that never stops answering fails the
/// test instead of hanging it.
pub fn raw(port: u16, bytes: &[u8]) -> (String, bool) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(bytes).unwrap();
    let until = std::time::Instant::now() + Duration::from_secs(10);
    let mut buf = Vec::new();
    let mut chunk = [0u8; 65536];
    let closed = loop {
        if std::time::Instant::now() >= until || buf.len() >= 8 << 20 {
            break false;
        }
        match s.read(&mut chunk) {
            Ok(0) => break true,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(_) => break false,
        }
    };
    (String::from_utf8_lossy(&buf).into_owned(), closed)
}
