//! WebSocket (and any `Upgrade`) through the HTTP/1.1 engine, with the `websockets` Python
//! package on both ends: a session is tunnelled to the color it started on, stays there
//! across a switch, counts in that color's in-flight until it closes, and new sessions go to
//! the new color.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Duration;

use crate::support::*;

fn repo_file(p: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").join(p)
}

/// A `websockets` echo server answering "VERSION:message".
pub struct EchoServer {
    pub port: u16,
    _proc: Proc,
}

impl EchoServer {
    pub async fn start(version: &str) -> EchoServer {
        let port = free_port();
        let mut child = Command::new("python3")
            .arg(repo_file("tests/ws/echo_server.py"))
            .args([&port.to_string(), version])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3 with the websockets package (pip install websockets)");
        let out = child.stdout.take().unwrap();
        let line = tokio::task::spawn_blocking(move || {
            let mut l = String::new();
            BufReader::new(out).read_line(&mut l).unwrap();
            l
        })
        .await
        .unwrap();
        assert_eq!(
            line.trim(),
            "listening",
            "the echo server did not start (is `websockets` installed?)"
        );
        EchoServer {
            port,
            _proc: Proc(Some(child)),
        }
    }
}

/// One session driven line by line (tests/ws/session.py).
pub struct Session {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
    pub color: String,
    pub version: String,
}

impl Session {
    fn open(url: &str) -> Session {
        Session::open_trusting(url, None)
    }

    /// A session to `url`; a `wss://` one trusts the CA certificate file `ca`.
    pub fn open_trusting(url: &str, ca: Option<&std::path::Path>) -> Session {
        let mut child = Command::new("python3")
            .arg(repo_file("tests/ws/session.py"))
            .arg(url)
            .args(ca)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut headers = Vec::new();
        loop {
            let mut l = String::new();
            assert!(
                stdout.read_line(&mut l).unwrap() > 0,
                "the session ended before it opened"
            );
            if l.trim() == "open" {
                break;
            }
            headers.push(l.trim().split(' ').nth(2).unwrap_or("-").to_string());
        }
        Session {
            child,
            stdin,
            stdout,
            color: headers[0].clone(),
            version: headers[1].clone(),
        }
    }

    pub fn say(&mut self, msg: &str) -> String {
        writeln!(self.stdin.as_mut().unwrap(), "{msg}").unwrap();
        let mut l = String::new();
        self.stdout.read_line(&mut l).unwrap();
        l.trim()
            .strip_prefix("reply ")
            .unwrap_or_else(|| panic!("no reply: {l:?}"))
            .to_string()
    }

    pub fn close(mut self) -> String {
        drop(self.stdin.take());
        let mut l = String::new();
        self.stdout.read_line(&mut l).unwrap();
        let _ = self.child.wait();
        l.trim().to_string()
    }
}

pub async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

#[tokio::test]
async fn a_websocket_session_stays_on_its_color_across_a_switch() {
    let blue = EchoServer::start("v1").await;
    let green = EchoServer::start("v2").await;
    let services = format!(
        "[services.chat]\nlisten = \"{{listen}}\"\nhealth = {{ path = \"/health\", interval = \"200ms\" }}\n\
         [services.chat.blue]\nendpoints = [\"127.0.0.1:{}\"]\nversion = \"v1\"\n\n\
         [services.chat.green]\nendpoints = [\"127.0.0.1:{}\"]\nversion = \"v2\"\n",
        blue.port, green.port
    );
    let r = Router::start(&services).await;
    assert_eq!(r.switch("blue").await.status, 200);
    let url = format!("ws://127.0.0.1:{}/v1/realtime", r.listen);

    let u = url.clone();
    let mut a = blocking(move || Session::open(&u)).await;
    assert_eq!((a.color.as_str(), a.version.as_str()), ("blue", "v1"));
    let (a, reply) = blocking(move || {
        let r = a.say("one");
        (a, r)
    })
    .await;
    assert_eq!(reply, "v1:one");
    assert_eq!(
        r.status().await["colors"]["blue"]["in_flight"],
        1,
        "an open session is in flight"
    );

    assert_eq!(r.switch("green").await.status, 200);
    let u = url.clone();
    let (b, b_reply) = blocking(move || {
        let mut b = Session::open(&u);
        let reply = b.say("two");
        (b, reply)
    })
    .await;
    assert_eq!(
        (b.color.as_str(), b_reply.as_str()),
        ("green", "v2:two"),
        "new sessions go to the new color"
    );
    let (mut a, reply) = blocking(move || {
        let mut a = a;
        let r = a.say("three");
        (a, r)
    })
    .await;
    assert_eq!(reply, "v1:three", "the open session stays where it started");
    let st = r.status().await;
    assert_eq!(st["colors"]["blue"]["in_flight"], 1, "{st}");
    assert_eq!(st["colors"]["green"]["in_flight"], 1, "{st}");

    let reply = blocking(move || {
        let r = a.say("four");
        (r, a.close())
    })
    .await;
    assert_eq!(reply.0, "v1:four");
    assert_eq!(reply.1, "closed 1000", "a clean close passes through");
    wait_for("blue's session to leave in-flight", Duration::from_secs(10), || async {
        (r.status().await["colors"]["blue"]["in_flight"] == 0).then_some(())
    })
    .await;
    let closed = blocking(move || b.close()).await;
    assert_eq!(closed, "closed 1000");
}

/// Without `Connection: upgrade` the Upgrade header is hop-by-hop and goes; an upstream's
/// 101 to a request that did not ask is a 502 (tested in the conformance table); here the
/// positive path on the wire: the 101 reaches the client with the proxy's headers.
#[tokio::test]
async fn the_upgrade_handshake_passes_through_with_the_proxy_s_headers() {
    let blue = EchoServer::start("v1").await;
    let green = EchoServer::start("v2").await;
    let services = format!(
        "[services.chat]\nlisten = \"{{listen}}\"\nhealth = {{ path = \"/health\", interval = \"200ms\" }}\n\
         [services.chat.blue]\nendpoints = [\"127.0.0.1:{}\"]\nversion = \"v1\"\n\n\
         [services.chat.green]\nendpoints = [\"127.0.0.1:{}\"]\nversion = \"v2\"\n",
        blue.port, green.port
    );
    let r = Router::start(&services).await;
    assert_eq!(r.switch("blue").await.status, 200);
    let port = r.listen;
    let head = blocking(move || {
        use std::io::Read;
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(
            b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
              Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        )
        .unwrap();
        let mut buf = vec![0u8; 4096];
        let n = s.read(&mut buf).unwrap();
        String::from_utf8_lossy(&buf[..n]).to_ascii_lowercase()
    })
    .await;
    assert!(head.starts_with("http/1.1 101 switching protocols\r\n"), "{head}");
    assert!(
        head.contains("upgrade: websocket\r\n") && head.contains("connection: upgrade\r\n"),
        "{head}"
    );
    // RFC 6455's example key has this accept value: the upstream's handshake came through.
    assert!(
        head.contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo=\r\n"),
        "{head}"
    );
    assert!(head.contains("x-cutover-color: blue\r\n"), "{head}");
}

/// A session still open on the old color when its drain deadline passes is cut then and
/// counted in `cutover_drain_closed_total`, like a stream (kamal-proxy cuts them when the drain
/// starts; cutover keeps them until `drain_timeout`), and the old color is then stopped.
#[tokio::test]
async fn a_session_on_the_old_color_is_cut_at_its_drain_deadline() {
    let ports = ManagedPorts::new();
    let script = repo_file("tests/ws/echo_server.py");
    let services = format!(
        "[services.chat]\nlisten = \"{{listen}}\"\nhealth = {{ path = \"/health\", interval = \"100ms\" }}\n\
         [services.chat.run]\ncommand = [\"python3\", {script:?}, \"{{port}}\", \"{{version}}\"]\n\
         ports = {{ blue = [{}], green = [{}] }}\nstop_timeout = \"2s\"\n\n\
         [services.chat.release]\nscale_down_delay = \"200ms\"\ndrain_timeout = \"1s\"\n\
         [services.chat.release.verify]\nbake = \"300ms\"\nmin_requests = 0\n",
        ports.blue, ports.green
    );
    let r = Router::start(&services).await;
    let id = r.release("v1").await;
    assert_eq!(r.wait_end(id, Duration::from_secs(60)).await["outcome"], "completed");
    let url = format!("ws://127.0.0.1:{}/ws", r.listen);
    let (a, reply) = blocking(move || {
        let mut a = Session::open(&url);
        let reply = a.say("one");
        (a, reply)
    })
    .await;
    assert_eq!(reply, "v1:one");
    let id = r.release("v2").await;
    assert_eq!(r.wait_end(id, Duration::from_secs(60)).await["outcome"], "completed");
    wait_for(
        "the drain deadline to cut the session",
        Duration::from_secs(20),
        || async {
            let m = get(&r.admin_url("/metrics")).await.unwrap().text();
            m.contains("cutover_drain_closed_total{service=\"chat\",color=\"blue\",version=\"v1\"} 1")
                .then_some(())
        },
    )
    .await;
    let closed = blocking(move || {
        let mut a = a;
        // The tunnel is gone: the next message finds the connection closed.
        writeln!(a.stdin.as_mut().unwrap(), "two").ok();
        let mut l = String::new();
        a.stdout.read_line(&mut l).ok();
        let _ = a.child.wait();
        l
    })
    .await;
    assert!(
        !closed.contains("v1:two"),
        "the session outlived its drain deadline: {closed}"
    );
    wait_for("blue to be stopped", Duration::from_secs(15), || async {
        (r.status().await["colors"]["blue"]["state"] == "stopped").then_some(())
    })
    .await;
}
