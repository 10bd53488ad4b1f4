//! One probe of one endpoint, by kind: an HTTP `GET` with expected statuses, a
//! `grpc.health.v1.Health/Check` over h2c, or a tiny real request (a generation) whose answer
//! is checked. Each probe opens a fresh connection (TLS to `https://` endpoints, the same
//! checks as the proxy's own connections) and says what it saw in a [`ProbeRecord`].

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::{header, HeaderMap, HeaderName, HeaderValue, Method, Request, Response};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::settings::Protocol;
use crate::stats::{now_ms, ProbeReason, ProbeRecord};
use crate::tls::UpstreamTls;

/// TLS to a probed endpoint: how, and the name its certificate must carry.
pub type TlsTarget<'a> = (&'a UpstreamTls, &'a rustls::pki_types::ServerName<'static>);

/// What a probe asks.
#[derive(Debug, Clone)]
pub enum Probe {
    /// `GET path`; healthy when the status is in one of the inclusive ranges.
    Http { path: String, status: Vec<(u16, u16)> },
    /// `grpc.health.v1.Health/Check` for `service` (`""`: the whole server); healthy only on
    /// `SERVING`. Always HTTP/2.
    Grpc { service: String },
    /// A configured request whose answer must match.
    Generation(Generation),
}

/// A generation probe: a tiny real request (a 1-token completion) and what its answer must be.
#[derive(Debug, Clone)]
pub struct Generation {
    pub method: Method,
    pub path: String,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub body: Bytes,
    /// Inclusive status ranges that pass.
    pub status: Vec<(u16, u16)>,
    /// JSON pointer → the value it must hold.
    pub json: Vec<(String, serde_json::Value)>,
    pub body_contains: Option<String>,
}

impl Probe {
    /// Short words for logs and errors: `GET /health`, `gRPC health "chat"`, `POST /v1/completions`.
    pub fn describe(&self) -> String {
        match self {
            Probe::Http { path, .. } => format!("GET {path}"),
            Probe::Grpc { service } => format!("gRPC health check of {service:?}"),
            Probe::Generation(g) => format!("{} {}", g.method, g.path),
        }
    }
}

/// The most of an answer a probe reads: enough for a completion, never a whole stream.
const BODY_LIMIT: usize = 1 << 20;
const USER_AGENT: &str = "cutover-health";
const GRPC_CHECK: &str = "/grpc.health.v1.Health/Check";

/// What one answer said: its status, and a pass or the reason it failed.
struct Seen {
    status: Option<u16>,
    verdict: Result<String, (ProbeReason, String)>,
}

impl Seen {
    fn failed(status: Option<u16>, why: ProbeReason, msg: String) -> Seen {
        Seen {
            status,
            verdict: Err((why, msg)),
        }
    }
}

/// Probes `addr` once, within `timeout` (connect and TLS handshake included).
pub async fn run(
    addr: SocketAddr,
    protocol: Protocol,
    probe: &Probe,
    timeout: Duration,
    tls: Option<TlsTarget<'_>>,
) -> ProbeRecord {
    let started = Instant::now();
    let seen = match tokio::time::timeout(timeout, ask(addr, protocol, probe, tls)).await {
        Ok(seen) => seen,
        Err(_) => Seen::failed(None, ProbeReason::Timeout, format!("no answer within {timeout:?}")),
    };
    let (failure, message) = match seen.verdict {
        Ok(m) => (None, m),
        Err((why, m)) => (Some(why), m),
    };
    ProbeRecord {
        at: SystemTime::now(),
        at_ms: now_ms(),
        latency: started.elapsed(),
        status: seen.status,
        failure,
        message,
        counted: true,
    }
}

/// A fresh connection in the probe's protocol.
enum Conn {
    H1(http1::SendRequest<Full<Bytes>>),
    H2(http2::SendRequest<Full<Bytes>>),
}

/// Why a connection could not be opened: a failed TLS handshake is a reason of its own.
enum OpenError {
    Connect(String),
    Tls(String),
}

impl Conn {
    async fn open(addr: SocketAddr, h2: bool, tls: Option<TlsTarget<'_>>) -> Result<Conn, OpenError> {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| OpenError::Connect(format!("connect: {e}")))?;
        let _ = stream.set_nodelay(true);
        match tls {
            None => Conn::handshake(TokioIo::new(stream), h2).await,
            Some((t, name)) => {
                let s = t
                    .connect(name, stream)
                    .await
                    .map_err(|e| OpenError::Tls(format!("TLS handshake: {e}")))?;
                Conn::handshake(TokioIo::new(s), h2).await
            }
        }
        .map_err(OpenError::Connect)
    }

    async fn handshake<T>(io: T, h2: bool) -> Result<Conn, String>
    where
        T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        if h2 {
            let (send, conn) = http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .handshake(io)
                .await
                .map_err(|e| format!("HTTP/2 handshake: {e}"))?;
            tokio::spawn(conn);
            Ok(Conn::H2(send))
        } else {
            let (send, conn) = http1::handshake(io).await.map_err(|e| format!("handshake: {e}"))?;
            tokio::spawn(conn);
            Ok(Conn::H1(send))
        }
    }

    /// Sends `path` with `headers` and `body`: origin-form with Host on HTTP/1.1, an
    /// absolute URI (the `:authority`) on HTTP/2.
    async fn send(
        &mut self,
        scheme: &str,
        addr: SocketAddr,
        method: Method,
        path: &str,
        headers: &[(HeaderName, HeaderValue)],
        body: Bytes,
    ) -> Result<Response<Incoming>, String> {
        let h2 = matches!(self, Conn::H2(_));
        let uri = if h2 {
            format!("{scheme}://{addr}{path}")
        } else {
            path.to_string()
        };
        let mut b = Request::builder().method(method).uri(uri);
        if !h2 {
            b = b
                .header(header::HOST, addr.to_string())
                .header(header::CONNECTION, "close");
        }
        b = b.header(header::USER_AGENT, USER_AGENT);
        for (k, v) in headers {
            b = b.header(k, v);
        }
        let req = b.body(Full::new(body)).map_err(|e| e.to_string())?;
        let sent = match self {
            Conn::H1(s) => s.send_request(req).await,
            Conn::H2(s) => s.send_request(req).await,
        };
        sent.map_err(|e| match std::error::Error::source(&e) {
            Some(inner) => format!("{e}: {inner}"),
            None => e.to_string(),
        })
    }
}

async fn ask(addr: SocketAddr, protocol: Protocol, probe: &Probe, tls: Option<TlsTarget<'_>>) -> Seen {
    let h2 = matches!(probe, Probe::Grpc { .. }) || protocol == Protocol::H2c;
    let scheme = if tls.is_some() { "https" } else { "http" };
    let mut conn = match Conn::open(addr, h2, tls).await {
        Ok(c) => c,
        Err(OpenError::Connect(e)) => return Seen::failed(None, ProbeReason::Connect, e),
        Err(OpenError::Tls(e)) => return Seen::failed(None, ProbeReason::Tls, e),
    };
    let (method, path, headers, body) = match probe {
        Probe::Http { path, .. } => (Method::GET, path.as_str(), Vec::new(), Bytes::new()),
        Probe::Grpc { service } => (
            Method::POST,
            GRPC_CHECK,
            vec![
                (header::CONTENT_TYPE, HeaderValue::from_static("application/grpc")),
                (header::TE, HeaderValue::from_static("trailers")),
            ],
            grpc_check_request(service),
        ),
        Probe::Generation(g) => (g.method.clone(), g.path.as_str(), g.headers.clone(), g.body.clone()),
    };
    let resp = match conn.send(scheme, addr, method, path, &headers, body).await {
        Ok(r) => r,
        Err(e) => return Seen::failed(None, ProbeReason::Connect, e),
    };
    let status = resp.status().as_u16();
    match probe {
        Probe::Http { status: want, .. } => {
            if in_ranges(want, status) {
                Seen {
                    status: Some(status),
                    verdict: Ok(format!("status {status}")),
                }
            } else {
                let body = read(resp).await.map(|(b, _)| b).unwrap_or_default();
                Seen::failed(
                    Some(status),
                    ProbeReason::Status,
                    format!("status {status}{}", excerpt(&body)),
                )
            }
        }
        Probe::Grpc { .. } => grpc_verdict(status, resp).await,
        Probe::Generation(g) => generation_verdict(g, status, resp).await,
    }
}

fn in_ranges(ranges: &[(u16, u16)], status: u16) -> bool {
    ranges.iter().any(|(lo, hi)| (*lo..=*hi).contains(&status))
}

/// The answer's body (at most [`BODY_LIMIT`]) and trailers.
async fn read(resp: Response<Incoming>) -> Result<(Bytes, Option<HeaderMap>), String> {
    let collected = Limited::new(resp.into_body(), BODY_LIMIT)
        .collect()
        .await
        .map_err(|e| format!("reading the answer: {e}"))?;
    let trailers = collected.trailers().cloned();
    Ok((collected.to_bytes(), trailers))
}

/// `: ` and the start of a body on one line, or nothing for an empty body.
fn excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let one_line: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if one_line.is_empty() {
        return String::new();
    }
    let mut cut: String = one_line.chars().take(200).collect();
    if cut.len() < one_line.len() {
        cut.push('…');
    }
    format!(": {cut}")
}

async fn generation_verdict(g: &Generation, status: u16, resp: Response<Incoming>) -> Seen {
    let body = match read(resp).await {
        Ok((b, _)) => b,
        Err(e) => return Seen::failed(Some(status), ProbeReason::Connect, e),
    };
    if !in_ranges(&g.status, status) {
        return Seen::failed(
            Some(status),
            ProbeReason::Status,
            format!("status {status}{}", excerpt(&body)),
        );
    }
    match check_body(g, &body) {
        Ok(()) => Seen {
            status: Some(status),
            verdict: Ok(format!("status {status}, {} bytes as expected", body.len())),
        },
        Err(why) => Seen::failed(Some(status), ProbeReason::Body, format!("{why}{}", excerpt(&body))),
    }
}

/// The body against `body_contains` and the JSON pointers; `Err` says what differed.
fn check_body(g: &Generation, body: &[u8]) -> Result<(), String> {
    if let Some(needle) = &g.body_contains {
        if !String::from_utf8_lossy(body).contains(needle.as_str()) {
            return Err(format!("expected the body to contain {needle:?}"));
        }
    }
    if g.json.is_empty() {
        return Ok(());
    }
    let v: serde_json::Value = serde_json::from_slice(body).map_err(|e| format!("expected a JSON body ({e})"))?;
    for (pointer, want) in &g.json {
        match v.pointer(pointer) {
            Some(got) if got == want => {}
            Some(got) => return Err(format!("expected {pointer} = {want}, got {got}")),
            None => return Err(format!("expected {pointer} = {want}, but the body has no {pointer}")),
        }
    }
    Ok(())
}

// ---- gRPC health, encoded by hand: one string field out, one enum field back ----------------

/// `HealthCheckRequest { service = 1 }` in a gRPC frame (uncompressed flag, u32 length).
fn grpc_check_request(service: &str) -> Bytes {
    let mut msg = BytesMut::new();
    if !service.is_empty() {
        msg.put_u8(0x0a); // field 1, length-delimited
        put_varint(&mut msg, service.len() as u64);
        msg.put_slice(service.as_bytes());
    }
    let mut frame = BytesMut::with_capacity(5 + msg.len());
    frame.put_u8(0);
    frame.put_u32(msg.len() as u32);
    frame.put_slice(&msg);
    frame.freeze()
}

fn put_varint(b: &mut BytesMut, mut v: u64) {
    while v >= 0x80 {
        b.put_u8((v as u8) | 0x80);
        v >>= 7;
    }
    b.put_u8(v as u8);
}

fn get_varint(b: &mut &[u8]) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        if !b.has_remaining() {
            return None;
        }
        let byte = b.get_u8();
        v |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// `HealthCheckResponse.status` (field 1, an enum) from one gRPC frame; absent means 0,
/// proto3's default (`UNKNOWN`).
fn grpc_serving_status(frame: &[u8]) -> Result<u64, String> {
    if frame.len() < 5 {
        return Err(format!(
            "a gRPC message needs a 5-byte frame header, got {} bytes",
            frame.len()
        ));
    }
    if frame[0] != 0 {
        return Err("the answer is compressed, which was not asked for".into());
    }
    let len = u32::from_be_bytes([frame[1], frame[2], frame[3], frame[4]]) as usize;
    let mut msg = frame
        .get(5..5 + len)
        .ok_or_else(|| format!("the frame says {len} bytes, {} came", frame.len() - 5))?;
    let mut status = 0;
    while msg.has_remaining() {
        let tag = get_varint(&mut msg).ok_or("a truncated field tag")?;
        match (tag >> 3, tag & 7) {
            (1, 0) => status = get_varint(&mut msg).ok_or("a truncated status")?,
            (_, 0) => {
                get_varint(&mut msg).ok_or("a truncated field")?;
            }
            (_, 1) if msg.remaining() >= 8 => msg.advance(8),
            (_, 5) if msg.remaining() >= 4 => msg.advance(4),
            (_, 2) => {
                let n = get_varint(&mut msg).ok_or("a truncated length")? as usize;
                if msg.remaining() < n {
                    return Err("a truncated field".into());
                }
                msg.advance(n);
            }
            _ => return Err(format!("an unreadable field (tag {tag})")),
        }
    }
    Ok(status)
}

fn serving_status_name(s: u64) -> &'static str {
    match s {
        0 => "UNKNOWN",
        1 => "SERVING",
        2 => "NOT_SERVING",
        3 => "SERVICE_UNKNOWN",
        _ => "an unknown status",
    }
}

fn grpc_code_name(code: &str) -> &'static str {
    match code {
        "1" => "CANCELLED",
        "2" => "UNKNOWN",
        "4" => "DEADLINE_EXCEEDED",
        "5" => "NOT_FOUND",
        "12" => "UNIMPLEMENTED",
        "13" => "INTERNAL",
        "14" => "UNAVAILABLE",
        _ => "error",
    }
}

async fn grpc_verdict(status: u16, resp: Response<Incoming>) -> Seen {
    // A trailers-only answer (an error before any message) carries grpc-status in the head.
    let head_status = resp.headers().get("grpc-status").cloned();
    let head_message = resp.headers().get("grpc-message").cloned();
    let (body, trailers) = match read(resp).await {
        Ok(r) => r,
        Err(e) => return Seen::failed(Some(status), ProbeReason::Connect, e),
    };
    if status != 200 {
        return Seen::failed(
            Some(status),
            ProbeReason::Status,
            format!("status {status} (a gRPC server answers 200){}", excerpt(&body)),
        );
    }
    let from_trailers = |name: &str| trailers.as_ref().and_then(|t| t.get(name).cloned());
    let code = from_trailers("grpc-status").or(head_status);
    let message = from_trailers("grpc-message").or(head_message);
    let text = |v: &Option<HeaderValue>| {
        v.as_ref()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .unwrap_or_default()
    };
    let code_text = text(&code);
    if code.is_none() {
        return Seen::failed(Some(status), ProbeReason::Body, "no grpc-status in the answer".into());
    }
    if code_text != "0" {
        let msg = text(&message);
        return Seen::failed(
            Some(status),
            ProbeReason::GrpcNotServing,
            format!(
                "grpc-status {code_text} ({}){}",
                grpc_code_name(&code_text),
                if msg.is_empty() {
                    String::new()
                } else {
                    format!(": {msg}")
                }
            ),
        );
    }
    match grpc_serving_status(&body) {
        Ok(1) => Seen {
            status: Some(status),
            verdict: Ok("SERVING".into()),
        },
        Ok(s) => Seen::failed(
            Some(status),
            ProbeReason::GrpcNotServing,
            serving_status_name(s).to_string(),
        ),
        Err(e) => Seen::failed(
            Some(status),
            ProbeReason::Body,
            format!("unreadable health answer: {e}"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_request_is_one_frame_with_the_service_as_field_one() {
        assert_eq!(&grpc_check_request("")[..], &[0, 0, 0, 0, 0]);
        assert_eq!(
            &grpc_check_request("chat")[..],
            &[0, 0, 0, 0, 6, 0x0a, 4, b'c', b'h', b'a', b't']
        );
        let long = "x".repeat(200);
        let f = grpc_check_request(&long);
        // 200 needs two varint bytes: 0xc8 0x01.
        assert_eq!(&f[..8], &[0, 0, 0, 0, 203, 0x0a, 0xc8, 0x01]);
    }

    #[test]
    fn grpc_response_status_is_read_and_other_fields_skipped() {
        assert_eq!(grpc_serving_status(&[0, 0, 0, 0, 2, 0x08, 1]), Ok(1));
        assert_eq!(grpc_serving_status(&[0, 0, 0, 0, 2, 0x08, 2]), Ok(2));
        // An empty message is proto3's default: UNKNOWN.
        assert_eq!(grpc_serving_status(&[0, 0, 0, 0, 0]), Ok(0));
        // An unknown length-delimited field 2 before the status.
        assert_eq!(grpc_serving_status(&[0, 0, 0, 0, 5, 0x12, 1, b'z', 0x08, 1]), Ok(1));
        assert!(grpc_serving_status(&[0, 0, 0]).is_err());
        assert!(grpc_serving_status(&[1, 0, 0, 0, 2, 0x08, 1]).is_err(), "compressed");
        assert!(grpc_serving_status(&[0, 0, 0, 0, 9, 0x08]).is_err(), "short");
    }

    #[test]
    fn generation_body_checks_say_what_differed() {
        let g = Generation {
            method: Method::POST,
            path: "/v1/completions".into(),
            headers: Vec::new(),
            body: Bytes::new(),
            status: vec![(200, 200)],
            json: vec![("/object".into(), serde_json::json!("text_completion"))],
            body_contains: None,
        };
        assert_eq!(check_body(&g, br#"{"object":"text_completion"}"#), Ok(()));
        assert_eq!(
            check_body(&g, br#"{"object":"error"}"#).unwrap_err(),
            "expected /object = \"text_completion\", got \"error\""
        );
        assert!(check_body(&g, b"not json")
            .unwrap_err()
            .starts_with("expected a JSON body"));
        assert_eq!(
            excerpt(b"  {\"message\":\n \"Loading model\"} "),
            ": {\"message\": \"Loading model\"}"
        );
        assert_eq!(excerpt(b""), "");
    }
}
