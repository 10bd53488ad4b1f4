//! HTTP/1.1 conformance, table-driven: every case of `tests/conformance/cases.toml` is sent
//! as raw bytes to a real router in front of a raw recording upstream, on both engines (the
//! own HTTP/1.1 one and hyper), and what the client got and the exact bytes the upstream got
//! are checked. All failures of a run are reported together, one line per case.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::*;

const CASES: &str = include_str!("../../../../tests/conformance/cases.toml");

#[derive(Deserialize)]
struct Table {
    case: Vec<Case>,
}

#[derive(Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct Case {
    pub name: String,
    pub class: String,
    pub request: String,
    pub expect: toml::Value,
    #[serde(default)]
    pub responses: Option<usize>,
    #[serde(default)]
    pub head: bool,
    #[serde(default)]
    pub forwarded: Option<usize>,
    #[serde(default)]
    pub response: Option<String>,
    #[serde(default)]
    pub upstream_closes: bool,
    /// The request reaches the upstream on a pooled keep-alive connection (a warm-up
    /// request on the same client connection opened it), which the upstream closes after
    /// reading it, without a byte of answer; on a new connection it is answered.
    #[serde(default)]
    pub pooled_dies: bool,
    #[serde(default)]
    pub upstream_has: Vec<String>,
    #[serde(default)]
    pub upstream_lacks: Vec<String>,
    #[serde(default)]
    pub upstream_once: Vec<String>,
    #[serde(default)]
    pub upstream_body: Option<String>,
    #[serde(default)]
    pub client_has: Vec<String>,
    #[serde(default)]
    pub client_lacks: Vec<String>,
    #[serde(default)]
    #[allow(dead_code)] // read by bench/conformance.py and the docs, not by this test
    pub why: Option<String>,
    /// What the hyper engine does instead (its own parser reads the request).
    #[serde(default)]
    pub hyper: Option<HyperCase>,
}

#[derive(Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct HyperCase {
    #[serde(default)]
    pub expect: Option<toml::Value>,
    #[serde(default)]
    pub client_has: Option<Vec<String>>,
    #[serde(default)]
    pub upstream_body: Option<String>,
    pub why: String,
}

impl Case {
    /// The case as the hyper engine must pass it.
    fn for_hyper(&self) -> Case {
        let mut c = self.clone();
        if let Some(h) = &self.hyper {
            assert!(!h.why.is_empty());
            if let Some(e) = &h.expect {
                c.expect = e.clone();
            }
            if h.upstream_body.is_some() {
                c.upstream_body = h.upstream_body.clone();
            }
            if let Some(v) = &h.client_has {
                c.client_has = v.clone();
            }
        }
        c
    }
}

/// `\xHH` stands for one byte; `{N*c}` for `c` repeated N times (N digits).
fn bytes_of(s: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && b.get(i + 1) == Some(&b'x') && i + 3 < b.len() {
            let hex = std::str::from_utf8(&b[i + 2..i + 4]).unwrap();
            out.push(u8::from_str_radix(hex, 16).expect("\\xHH"));
            i += 4;
        } else if let Some((n, c, end)) = repeat_at(s, i) {
            out.extend(c.as_bytes().repeat(n));
            i = end + 1;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

/// A `{N*c}` at `i`: (N, c, index of the `}`). Any other `{` (a JSON body) is itself.
fn repeat_at(s: &str, i: usize) -> Option<(usize, &str, usize)> {
    let rest = s[i..].strip_prefix('{')?;
    let end = rest.find('}')?;
    let (n, c) = rest[..end].split_once('*')?;
    let n = n.parse().ok().filter(|_| n.bytes().all(|b| b.is_ascii_digit()))?;
    Some((n, c, i + 1 + end))
}

/// One request as the upstream received it.
#[derive(Clone, Debug)]
struct Received {
    head: Vec<u8>,
    body: Vec<u8>,
}

/// A raw upstream: records every request but health checks, answers each with the current
/// canned response, and counts bytes it holds that do not (yet) form a whole request.
#[derive(Clone, Default)]
struct Recorder {
    /// The port it listens on.
    port: u16,
    got: Arc<Mutex<Vec<Received>>>,
    pending: Arc<AtomicIsize>,
    response: Arc<Mutex<Vec<u8>>>,
    /// Close the connection after answering.
    close: Arc<std::sync::atomic::AtomicBool>,
    /// The next request that arrives on a connection which already answered one is
    /// recorded, then its connection closed without an answer (once).
    die_on_reused: Arc<std::sync::atomic::AtomicBool>,
}

const DEFAULT_RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";

impl Recorder {
    async fn start() -> (Recorder, String) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let rec = Recorder {
            port: l.local_addr().unwrap().port(),
            ..Recorder::default()
        };
        *rec.response.lock().unwrap() = DEFAULT_RESPONSE.to_vec();
        let r = rec.clone();
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                tokio::spawn(r.clone().serve(s));
            }
        });
        (rec, addr)
    }

    async fn serve(self, mut s: TcpStream) {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 16384];
        // This connection's share of `pending`.
        let mut mine = 0isize;
        let mut answered = 0usize;
        'conn: loop {
            let n = match s.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            buf.extend_from_slice(&chunk[..n]);
            while let Some((head_len, total)) = whole_request(&buf) {
                let req = Received {
                    head: buf[..head_len].to_vec(),
                    body: buf[head_len..total].to_vec(),
                };
                buf.drain(..total);
                let health = req.head.starts_with(b"GET /health ");
                let answer = if health {
                    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec()
                } else {
                    self.got.lock().unwrap().push(req);
                    if answered > 0 && self.die_on_reused.swap(false, Ordering::Relaxed) {
                        break 'conn;
                    }
                    self.response.lock().unwrap().clone()
                };
                answered += 1;
                if s.write_all(&answer).await.is_err() || (!health && self.close.load(Ordering::Relaxed)) {
                    break 'conn;
                }
            }
            let now = buf.len() as isize;
            self.pending.fetch_add(now - mine, Ordering::Relaxed);
            mine = now;
        }
        self.pending.fetch_sub(mine, Ordering::Relaxed);
    }

    /// Waits until no connection to the recorder holds bytes it has not read (the receive
    /// queues of its accepted sockets in `/proc/net/tcp`). The proxy writes upstream before it
    /// answers the client, and on loopback a write lands in the receiver's queue at once; the
    /// recorder handles what it read before it yields (these tests run on one thread). So
    /// once the client has its answer and this returns, what the recorder holds is final.
    async fn drained(&self) -> Result<(), String> {
        let local = format!("0100007F:{:04X}", self.port);
        let unread = || -> u64 {
            let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
            table
                .lines()
                .skip(1)
                .map(|l| l.split_whitespace().collect::<Vec<_>>())
                // Accepted connections only (state 0A is the listening socket).
                .filter(|f| f.get(1) == Some(&local.as_str()) && f.get(3) != Some(&"0A"))
                .filter_map(|f| u64::from_str_radix(f.get(4)?.split(':').nth(1)?, 16).ok())
                .sum()
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while unread() > 0 {
            if tokio::time::Instant::now() > deadline {
                return Err(format!("the upstream left {} bytes unread for 5 s", unread()));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(())
    }

    fn reset(&self, response: Option<&[u8]>) {
        self.got.lock().unwrap().clear();
        *self.response.lock().unwrap() = response.unwrap_or(DEFAULT_RESPONSE).to_vec();
        self.close.store(false, Ordering::Relaxed);
        self.die_on_reused.store(false, Ordering::Relaxed);
    }
}

/// Where a whole request ends in `buf`: (head length, total length). The recorder's own
/// reading, independent of the proxy's: httparse for the head, a plain chunked reader.
fn whole_request(buf: &[u8]) -> Option<(usize, usize)> {
    let mut hs = [httparse::EMPTY_HEADER; 128];
    let mut r = httparse::Request::new(&mut hs);
    let head_len = match r.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        _ => return None,
    };
    let header = |name: &str| {
        r.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| String::from_utf8_lossy(h.value).to_string())
    };
    if header("transfer-encoding").is_some() {
        return chunked_end(&buf[head_len..]).map(|n| (head_len, head_len + n));
    }
    let len: usize = header("content-length").map_or(0, |v| v.trim().parse().unwrap_or(0));
    (buf.len() >= head_len + len).then_some((head_len, head_len + len))
}

fn chunked_end(b: &[u8]) -> Option<usize> {
    let mut at = 0;
    loop {
        let nl = b[at..].windows(2).position(|w| w == b"\r\n")? + at;
        let size_text = String::from_utf8_lossy(&b[at..nl]);
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        at = nl + 2;
        if size == 0 {
            // Trailer lines up to the empty one.
            loop {
                let nl = b[at..].windows(2).position(|w| w == b"\r\n")? + at;
                let empty = nl == at;
                at = nl + 2;
                if empty {
                    return Some(at);
                }
            }
        }
        at += size + 2;
        if at > b.len() {
            return None;
        }
    }
}

/// What the client read: complete responses (status, whole text) and the rest.
struct ClientView {
    statuses: Vec<u16>,
    text: String,
    /// Bytes that did not make a complete response (a cut body).
    incomplete: bool,
}

/// Send `req`, read until `want` complete responses arrived, the server closed, or 5 s.
async fn client(port: u16, req: &[u8], want: usize, head: bool) -> ClientView {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    client_on(&mut s, req, want, head).await
}

/// `client` on a connection that already carried a warm-up request: the proxy handles a
/// client connection's requests in order, so the upstream connection that answered the
/// warm-up is back in the pool before `req` is read.
async fn after_warm_up(port: u16, rec: &Recorder, req: &[u8], want: usize, head: bool) -> Result<ClientView, String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    s.write_all(b"GET /warm HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while whole_response(&buf, false).is_none() {
        match tokio::time::timeout(Duration::from_secs(5), s.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            _ => {
                return Err(format!(
                    "the warm-up request got no answer: {:?}",
                    trunc(&String::from_utf8_lossy(&buf))
                ))
            }
        }
    }
    rec.got.lock().unwrap().clear();
    rec.die_on_reused.store(true, Ordering::Relaxed);
    Ok(client_on(&mut s, req, want, head).await)
}

async fn client_on(s: &mut TcpStream, req: &[u8], want: usize, head: bool) -> ClientView {
    let _ = s.write_all(req).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let mut buf = Vec::new();
    let mut statuses = Vec::new();
    let mut at = 0;
    let mut chunk = [0u8; 65536];
    loop {
        // Take every complete response already in the buffer.
        while let Some((status, len)) = whole_response(&buf[at..], head && statuses.is_empty()) {
            statuses.push(status);
            at += len;
        }
        if statuses.len() >= want {
            break;
        }
        match tokio::time::timeout_at(deadline, s.read(&mut chunk)).await {
            Ok(Ok(0)) => {
                // A body delimited by the close is complete now.
                if let Some(code) = close_delimited(&buf[at..]) {
                    statuses.push(code);
                    at = buf.len();
                }
                break;
            }
            Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    ClientView {
        statuses,
        incomplete: at < buf.len(),
        text: String::from_utf8_lossy(&buf).into_owned(),
    }
}

/// The status of a response with neither Content-Length nor Transfer-Encoding (its body
/// ends at the close).
fn close_delimited(buf: &[u8]) -> Option<u16> {
    let mut hs = [httparse::EMPTY_HEADER; 128];
    let mut r = httparse::Response::new(&mut hs);
    let Ok(httparse::Status::Complete(_)) = r.parse(buf) else {
        return None;
    };
    let framed = r
        .headers
        .iter()
        .any(|h| h.name.eq_ignore_ascii_case("content-length") || h.name.eq_ignore_ascii_case("transfer-encoding"));
    (!framed).then_some(r.code?)
}

fn whole_response(buf: &[u8], head: bool) -> Option<(u16, usize)> {
    let mut hs = [httparse::EMPTY_HEADER; 128];
    let mut r = httparse::Response::new(&mut hs);
    let head_len = match r.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        _ => return None,
    };
    let code = r.code?;
    let header = |name: &str| {
        r.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| String::from_utf8_lossy(h.value).to_string())
    };
    if head || code == 204 || code == 304 || (100..200).contains(&code) {
        return Some((code, head_len));
    }
    if header("transfer-encoding").is_some() {
        return chunked_end(&buf[head_len..]).map(|n| (code, head_len + n));
    }
    match header("content-length") {
        Some(v) => {
            let n: usize = v.trim().parse().ok()?;
            (buf.len() >= head_len + n).then_some((code, head_len + n))
        }
        // Close-delimited: complete only at close, which the caller sees as the end.
        None => None,
    }
}

fn lower(b: &[u8]) -> String {
    String::from_utf8_lossy(b).to_ascii_lowercase()
}

/// Run one case; Err says what differed.
async fn run(case: &Case, port: u16, rec: &Recorder) -> Result<(), String> {
    let resp = case.response.as_deref().map(bytes_of);
    rec.reset(resp.as_deref());
    rec.close.store(case.upstream_closes, Ordering::Relaxed);
    // Bytes some earlier case left in the upstream are not this case's.
    let pending_before = rec.pending.load(Ordering::Relaxed);
    let req = bytes_of(&case.request);
    let want = case.responses.unwrap_or(1);
    let view = if case.pooled_dies {
        after_warm_up(port, rec, &req, want, case.head).await?
    } else {
        client(port, &req, want, case.head).await
    };
    let expect_cut = case.expect.as_str() == Some("cut");
    let expect_status = case.expect.as_integer().map(|n| n as u16);
    match (expect_status, view.statuses.first()) {
        _ if expect_cut => {
            let complete_2xx = view.statuses.first().is_some_and(|s| (200..300).contains(s)) && !view.incomplete;
            if complete_2xx {
                return Err(format!("expected a cut response, got a complete one: {:?}", view.text));
            }
        }
        (Some(want), Some(&got)) if want == got => {}
        (Some(want), got) => {
            return Err(format!("expected {want}, got {got:?}: {:?}", trunc(&view.text)));
        }
        (None, _) => return Err(format!("bad expect {:?}", case.expect)),
    }
    let text = view.text.to_ascii_lowercase();
    for s in &case.client_has {
        if !text.contains(&s.to_ascii_lowercase()) {
            return Err(format!("client lacks {s:?}: {:?}", trunc(&view.text)));
        }
    }
    for s in &case.client_lacks {
        if text.contains(&s.to_ascii_lowercase()) {
            return Err(format!("client got {s:?}: {:?}", trunc(&view.text)));
        }
    }

    // The upstream answered before the client got anything, so what it holds now is final
    // for forwarded requests; a refused one must leave nothing there, not even a part.
    let default_forwarded =
        usize::from(case.response.is_some() || expect_status.is_some_and(|s| (200..300).contains(&s)));
    let forwarded = case.forwarded.unwrap_or(default_forwarded);
    rec.drained().await?;
    let got: VecDeque<Received> = rec.got.lock().unwrap().iter().cloned().collect();
    if got.len() != forwarded {
        return Err(format!(
            "upstream received {} requests, expected {forwarded}: {:?}",
            got.len(),
            got.iter().map(|r| lower(&r.head)).collect::<Vec<_>>()
        ));
    }
    if forwarded == 0 && rec.pending.load(Ordering::Relaxed) > pending_before {
        return Err("upstream holds part of a request that should have been refused".into());
    }
    let Some(first) = got.front() else { return Ok(()) };
    let head = lower(&first.head);
    for s in &case.upstream_has {
        if !head.contains(&s.to_ascii_lowercase()) {
            return Err(format!("upstream head lacks {s:?}: {head:?}"));
        }
    }
    let all = format!("{head}{}", lower(&first.body));
    for s in &case.upstream_lacks {
        if all.contains(&s.to_ascii_lowercase()) {
            return Err(format!("upstream got {s:?}: {all:?}"));
        }
    }
    for name in &case.upstream_once {
        let n = head
            .split("\r\n")
            .filter(|l| l.starts_with(&format!("{name}:")))
            .count();
        if n != 1 {
            return Err(format!("upstream head has {n} {name} lines: {head:?}"));
        }
    }
    if let Some(body) = &case.upstream_body {
        let want = bytes_of(body);
        if first.body != want {
            return Err(format!(
                "upstream body {:?}, expected {:?}",
                String::from_utf8_lossy(&first.body),
                String::from_utf8_lossy(&want)
            ));
        }
    }
    Ok(())
}

fn trunc(s: &str) -> String {
    s.chars().take(300).collect()
}

/// Green's endpoint: the cases only route to blue, and blue and green may not share an endpoint
/// (`cutover check` refuses it: a switch would change nothing). Nothing listens on port 1.
const IDLE: &str = "127.0.0.1:1";

pub fn cases() -> Vec<Case> {
    toml::from_str::<Table>(CASES)
        .expect("tests/conformance/cases.toml")
        .case
}

async fn run_all(engine: &str) {
    let (rec, addr) = Recorder::start().await;
    let services = format!(
        "[services.chat]\nlisten = \"{{listen}}\"\nhealth = {{ path = \"/health\", interval = \"1h\", timeout = \"2s\" }}\n\
         [services.chat.blue]\nendpoints = [\"{addr}\"]\nversion = \"v1\"\n\n\
         [services.chat.green]\nendpoints = [\"{IDLE}\"]\nversion = \"v2\"\n"
    );
    let r = Router::start(&on_engine(&services, engine)).await;
    assert_eq!(r.switch("blue").await.status, 200);
    let cases = cases();
    assert!(cases.len() >= 80, "the table shrank to {}", cases.len());
    let mut failures = Vec::new();
    for case in &cases {
        let case = if engine == "hyper" {
            case.for_hyper()
        } else {
            case.clone()
        };
        let case = &case;
        if let Err(e) = run(case, r.listen, &rec).await {
            failures.push(format!("{} [{}]: {e}", case.name, case.class));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} conformance cases failed on the {engine} engine:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[tokio::test]
async fn every_case_on_the_http1_engine() {
    run_all("own").await;
}

#[tokio::test]
async fn every_case_on_the_hyper_engine() {
    run_all("hyper").await;
}

/// An upstream that answers the first request of each connection and, on the second, reads
/// it and closes without a byte of answer (what a server that times out idle keep-alive
/// connections does as a request arrives). Returns the request lines it saw, in order.
async fn closes_second_request() -> (String, Arc<Mutex<Vec<String>>>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let log = log.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let mut n_req = 0;
                loop {
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                    while let Some((head_len, total)) = whole_request(&buf) {
                        let line = String::from_utf8_lossy(&buf[..head_len])
                            .lines()
                            .next()
                            .unwrap_or("")
                            .to_string();
                        buf.drain(..total);
                        n_req += 1;
                        if line.starts_with("GET /health ") {
                            let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await;
                            continue;
                        }
                        log.lock().unwrap().push(line);
                        if n_req >= 2 {
                            return; // closes the connection, nothing answered
                        }
                        let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await;
                    }
                }
            });
        }
    });
    (addr, seen)
}

async fn reused_connection_rule(engine: &str, retry_non_idempotent: bool) {
    let (addr, seen) = closes_second_request().await;
    let services = format!(
        "[services.chat]\nlisten = \"{{listen}}\"\nretry_non_idempotent = {retry_non_idempotent}\n\
         limits = {{ pool_idle_timeout = \"1h\" }}\n\
         health = {{ path = \"/health\", interval = \"1h\" }}\n\
         [services.chat.blue]\nendpoints = [\"{addr}\"]\n\n[services.chat.green]\nendpoints = [\"{IDLE}\"]\n"
    );
    let r = Router::start(&on_engine(&services, engine)).await;
    assert_eq!(r.switch("blue").await.status, 200);
    let what = format!("{engine} engine, retry_non_idempotent = {retry_non_idempotent}");
    // One client connection for all: the proxy handles its requests in order, so the
    // upstream connection that answered one is back in the pool when the next is read.
    let conn = tokio::sync::Mutex::new(TcpStream::connect(("127.0.0.1", r.listen)).await.unwrap());
    let send = |req: &'static [u8]| {
        let conn = &conn;
        async move { client_on(&mut *conn.lock().await, req, 1, false).await }
    };
    assert_eq!(
        send(b"GET /warm HTTP/1.1\r\nHost: a\r\n\r\n").await.statuses,
        vec![200],
        "{what}"
    );
    seen.lock().unwrap().clear();
    // The pooled connection dies under a GET: sent again once, on a new connection.
    let v = send(b"GET /again HTTP/1.1\r\nHost: a\r\n\r\n").await;
    assert_eq!(v.statuses, vec![200], "{what}: {}", v.text);
    assert_eq!(*seen.lock().unwrap(), vec!["GET /again HTTP/1.1"; 2], "{what}");
    // The same under a POST to a retry path (TGI's /generate) whose small body is at hand
    // (both engines read it whole first): sent again only when the master switch is on.
    seen.lock().unwrap().clear();
    let v = send(b"POST /generate HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhi").await;
    if retry_non_idempotent {
        assert_eq!(v.statuses, vec![200], "{what}: {}", v.text);
        assert_eq!(*seen.lock().unwrap(), vec!["POST /generate HTTP/1.1"; 2], "{what}");
    } else {
        assert_eq!(v.statuses, vec![502], "{what}: {}", v.text);
        assert!(v.text.contains("upstream_closed_not_resent"), "{what}: {}", v.text);
        assert!(v.text.contains("retry_non_idempotent = false"), "{what}: {}", v.text);
        assert_eq!(*seen.lock().unwrap(), vec!["POST /generate HTTP/1.1"], "{what}");
    }
    // Counted by reason for /metrics.
    let m = get(&r.admin_url("/metrics")).await.unwrap().text();
    let line = |name: &str, reason: &str| {
        m.lines()
            .find(|l| {
                l.starts_with(name) && l.contains("color=\"blue\"") && l.contains(&format!("reason=\"{reason}\""))
            })
            .and_then(|l| l.rsplit(' ').next())
            .map(str::to_string)
    };
    assert_eq!(
        line("cutover_upstream_resends_total", "idempotent_method").as_deref(),
        Some("1"),
        "{what}:\n{m}"
    );
    let (resent_path, refused) = if retry_non_idempotent { ("1", "0") } else { ("0", "1") };
    assert_eq!(
        line("cutover_upstream_resends_total", "retry_path").as_deref(),
        Some(resent_path),
        "{what}"
    );
    assert_eq!(
        line("cutover_upstream_not_resent_total", "retry_non_idempotent_off").as_deref(),
        Some(refused),
        "{what}"
    );
}

/// One retry rule on both engines (docs/reliability.md): a request that failed on a reused
/// keep-alive connection before any response byte is sent again on a fresh connection only
/// when its whole body is at hand and it is idempotent, or (with `retry_non_idempotent`)
/// on a retry path or with an Idempotency-Key; re-sends and refusals are counted by reason.
#[tokio::test]
async fn a_request_lost_on_a_reused_connection_is_resent_by_one_rule_on_both_engines() {
    for engine in ["own", "hyper"] {
        for retry_non_idempotent in [true, false] {
            reused_connection_rule(engine, retry_non_idempotent).await;
        }
    }
}

/// A peer in `trusted_proxies` keeps its chain (all its X-Forwarded-For lines, in one line,
/// then the peer) and its proto and host, on both engines.
#[tokio::test]
async fn a_trusted_proxy_keeps_its_forwarding_headers_on_both_engines() {
    let (rec, addr) = Recorder::start().await;
    for engine in ["own", "hyper"] {
        let services = format!(
            "[services.chat]\nlisten = \"{{listen}}\"\ntrusted_proxies = [\"127.0.0.0/8\"]\n\
             health = {{ path = \"/health\", interval = \"1h\" }}\n\
             [services.chat.blue]\nendpoints = [\"{addr}\"]\n\n[services.chat.green]\nendpoints = [\"{IDLE}\"]\n"
        );
        let r = Router::start(&on_engine(&services, engine)).await;
        assert_eq!(r.switch("blue").await.status, 200);
        rec.reset(None);
        let v = client(
            r.listen,
            b"GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 1.1.1.1, 2.2.2.2\r\nx-forwarded-for: 3.3.3.3\r\n\
              X-Forwarded-Proto: https\r\nX-Forwarded-Host: public.example\r\nX-Real-IP: 1.1.1.1\r\n\r\n",
            1,
            false,
        )
        .await;
        assert_eq!(v.statuses, vec![200], "{engine}: {}", v.text);
        let head = lower(&rec.got.lock().unwrap()[0].head);
        assert!(
            head.contains("x-forwarded-for: 1.1.1.1, 2.2.2.2, 3.3.3.3, 127.0.0.1\r\n"),
            "{engine}: {head}"
        );
        assert_eq!(head.matches("x-forwarded-for:").count(), 1, "{engine}: {head}");
        assert!(head.contains("x-forwarded-proto: https\r\n"), "{engine}: {head}");
        assert!(
            head.contains("x-forwarded-host: public.example\r\n"),
            "{engine}: {head}"
        );
        assert!(head.contains("x-real-ip: 1.1.1.1\r\n"), "{engine}: {head}");
    }
}

/// Answers that look like success but carry no generation count as errors for verification
/// (`cutover_empty_generations_total`), on both engines: an event stream that ends cleanly
/// with a bare `[DONE]` (how llama.cpp's server answers a prompt longer than its context), and
/// a POST answered 200 with an empty body. A real stream and an empty GET do not count.
#[tokio::test]
async fn answers_without_a_generation_are_counted_on_both_engines() {
    let (rec, addr) = Recorder::start().await;
    for engine in ["own", "hyper"] {
        let services = format!(
            "[services.chat]\nlisten = \"{{listen}}\"\nhealth = {{ path = \"/health\", interval = \"1h\" }}\n\
             [services.chat.blue]\nendpoints = [\"{addr}\"]\n\n[services.chat.green]\nendpoints = [\"{IDLE}\"]\n"
        );
        let r = Router::start(&on_engine(&services, engine)).await;
        assert_eq!(r.switch("blue").await.status, 200);
        let sse = |body: &str| {
            format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n",
                body.len()
            )
            .into_bytes()
        };
        let post = b"POST /v1/chat/completions HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\n{}";
        let cases: [(Vec<u8>, &[u8], u64); 4] = [
            (sse("data: [DONE]\n\n"), post, 1),
            (b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n".to_vec(), post, 2),
            (sse("data: {\"a\":1}\n\ndata: {\"b\":2}\n\ndata: [DONE]\n\n"), post, 2),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n".to_vec(),
                b"GET /v1/models HTTP/1.1\r\nHost: a\r\n\r\n",
                2,
            ),
        ];
        for (i, (response, request, want)) in cases.into_iter().enumerate() {
            rec.reset(Some(&response));
            let v = client(r.listen, request, 1, false).await;
            assert_eq!(v.statuses, vec![200], "{engine} case {i}: {}", v.text);
            let line = "cutover_empty_generations_total{service=\"chat\",color=\"blue\",version=\"\"}";
            let mut seen = String::new();
            for _ in 0..100 {
                let m = get(&r.admin_url("/metrics")).await.unwrap().text();
                seen = m
                    .lines()
                    .filter(|l| l.contains("empty_generations"))
                    .collect::<Vec<_>>()
                    .join("\n");
                if m.lines()
                    .any(|l| l.starts_with(line) && l.ends_with(&format!(" {want}")))
                {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            assert!(
                seen.contains(&format!("{line} {want}")),
                "{engine} case {i}: want {want}:\n{seen}"
            );
        }
    }
}
