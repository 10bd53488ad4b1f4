//! The upstream's response head: parsed with `httparse` and rewritten for the client, with
//! the framing the client's connection needs (the body is always framed by the proxy).

use http::StatusCode;

use super::{connection_lines, header_line as header, Framing};
use crate::headers::{self, Class, Codings, ConnectionTokens};
use crate::route::ColorRoute;

/// Longest response head accepted from an upstream.
pub(crate) const MAX_RESPONSE_HEAD: usize = 64 * 1024;

/// How the response body is written to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OutMode {
    None,
    /// Content-Length bytes, as they came.
    Length,
    /// Decoded and chunked again by the proxy (chunked and close-delimited upstream bodies):
    /// the client reads only framing the proxy wrote, and an event stream can be given an
    /// error event at any point.
    Rechunk,
    /// Decoded data until the proxy closes (HTTP/1.0 clients).
    Close,
}

#[derive(Debug)]
pub(crate) struct ResponseHead {
    pub(crate) head_len: usize,
    pub(crate) status: u16,
    pub(crate) body: Framing,
    pub(crate) upstream_keep_alive: bool,
    pub(crate) sse: bool,
    pub(crate) out: OutMode,
    pub(crate) close_client: bool,
}

#[derive(Debug)]
pub(crate) enum ResponseParse {
    Partial,
    /// `101 Switching Protocols` to an upgrade request, `len` bytes: the client's 101 head is
    /// in `out`, and what follows is the new protocol, both ways.
    Switching {
        len: usize,
    },
    /// A 1xx interim response of `len` bytes; the final one follows. `relay` is its head
    /// for the client when it is to be passed on (see [`response_head`]), else empty.
    Interim {
        len: usize,
        relay: bool,
    },
    Head(ResponseHead),
}

/// What the response head written to the client depends on.
pub(crate) struct ResponseContext<'a> {
    pub(crate) head_request: bool,
    /// The request asked to switch protocols: a 101 is the start of a tunnel.
    pub(crate) upgrade: bool,
    pub(crate) client_minor: u8,
    pub(crate) client_keep_alive: bool,
    /// The route whose `x-cutover-*` headers the answer carries; `None`: none
    /// (`response_headers = false`).
    pub(crate) tags: Option<&'a ColorRoute>,
}

impl ResponseContext<'_> {
    /// The same, for a head written while the listener drains (`draining`): the client's
    /// connection closes after it.
    pub(crate) fn draining(&self, draining: bool) -> ResponseContext<'_> {
        ResponseContext {
            client_keep_alive: self.client_keep_alive && !draining,
            ..*self
        }
    }
}

/// `x-cutover-color` and `x-cutover-version`, unless the service turned them off.
fn cutover_headers(out: &mut Vec<u8>, cx: &ResponseContext<'_>) {
    for (name, value) in cx.tags.iter().flat_map(|r| r.tags()) {
        header(out, name.as_str().as_bytes(), value.as_bytes());
    }
}

/// Parse an upstream response head and write the client's version of it to `out`.
pub(crate) fn response_head(buf: &[u8], cx: &ResponseContext<'_>, out: &mut Vec<u8>) -> Result<ResponseParse, String> {
    let mut headers = [httparse::EMPTY_HEADER; super::request::MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let head_len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(ResponseParse::Partial),
        Err(e) => return Err(format!("malformed response head: {e}")),
    };
    let (Some(code), Some(minor)) = (resp.code, resp.version) else {
        return Err("malformed status line".into());
    };
    if code == 101 {
        return switching(resp.headers, head_len, cx, out);
    }
    if (100..200).contains(&code) {
        return Ok(interim(&resp, code, head_len, cx, out));
    }
    let status = StatusCode::from_u16(code).map_err(|_| format!("invalid status code {code}"))?;
    let reason = status.canonical_reason().or(resp.reason).unwrap_or("");
    final_head(resp.headers, (status, reason, minor), head_len, cx, out).map(ResponseParse::Head)
}

/// A 101 to an upgrade request: the client's 101 head.
fn switching(
    headers: &[httparse::Header<'_>],
    head_len: usize,
    cx: &ResponseContext<'_>,
    out: &mut Vec<u8>,
) -> Result<ResponseParse, String> {
    if !cx.upgrade {
        return Err("101 Switching Protocols to a request whose upgrade was not forwarded".into());
    }
    out.extend_from_slice(b"HTTP/1.1 101 Switching Protocols\r\n");
    for h in headers {
        // Upgrade and Connection are restated for this hop; the rest (Sec-WebSocket-*)
        // is the two ends' business.
        if !headers::response_skip(h.name.as_bytes()) || h.name.eq_ignore_ascii_case("upgrade") {
            header(out, h.name.as_bytes(), h.value);
        }
    }
    out.extend_from_slice(b"connection: upgrade\r\n");
    cutover_headers(out, cx);
    out.extend_from_slice(b"\r\n");
    Ok(ResponseParse::Switching { len: head_len })
}

/// RFC 9110 §15.2: a proxy passes 1xx on, but never to an HTTP/1.0 client, and not 100
/// Continue: cutover answers `Expect: 100-continue` itself and does not forward Expect, so
/// an upstream's 100 would be a second one.
fn interim(
    resp: &httparse::Response<'_, '_>,
    code: u16,
    len: usize,
    cx: &ResponseContext<'_>,
    out: &mut Vec<u8>,
) -> ResponseParse {
    let relay = code != 100 && cx.client_minor == 1;
    if relay {
        out.extend_from_slice(format!("HTTP/1.1 {code} {}\r\n", resp.reason.unwrap_or("")).as_bytes());
        for h in resp
            .headers
            .iter()
            .filter(|h| !headers::response_skip(h.name.as_bytes()))
        {
            header(out, h.name.as_bytes(), h.value);
        }
        out.extend_from_slice(b"\r\n");
    }
    ResponseParse::Interim { len, relay }
}

/// A final answer (2xx-5xx): its framing for the client, and the client's head.
fn final_head(
    headers: &[httparse::Header<'_>],
    (status, reason, minor): (StatusCode, &str, u8),
    head_len: usize,
    cx: &ResponseContext<'_>,
    out: &mut Vec<u8>,
) -> Result<ResponseHead, String> {
    let conn = ConnectionTokens::parse(connection_lines(headers));
    // Each header's class, found once by `framing` and read again by `write_head`.
    let mut classes = [Class::Plain; super::request::MAX_HEADERS];
    let classes = &mut classes[..headers.len()];
    let f = framing(headers, classes, status.as_u16(), cx)?;
    let upstream_keep_alive = f.body != Framing::Close
        && if minor == 1 {
            !conn.close
        } else {
            conn.keep_alive && !conn.close
        };
    let mut close_client = !cx.client_keep_alive;
    let mode = match f.body {
        Framing::None => OutMode::None,
        Framing::Length(_) => OutMode::Length,
        Framing::Chunked | Framing::Close if cx.client_minor == 0 => {
            close_client = true;
            OutMode::Close
        }
        Framing::Chunked | Framing::Close => OutMode::Rechunk,
    };
    let client = ClientFraming {
        status,
        reason,
        mode,
        close_client,
    };
    write_head(out, &client, headers, classes, &conn, &f, cx);
    Ok(ResponseHead {
        head_len,
        status: status.as_u16(),
        body: f.body,
        upstream_keep_alive,
        sse: f.sse,
        out: mode,
        close_client,
    })
}

/// How the upstream framed the body, and whether it is an event stream.
struct Found {
    body: Framing,
    sse: bool,
    /// A HEAD or 304 answer, whose Content-Length is the GET's and is kept.
    no_body: bool,
    te: bool,
}

fn framing(
    headers: &[httparse::Header<'_>],
    classes: &mut [Class],
    code: u16,
    cx: &ResponseContext<'_>,
) -> Result<Found, String> {
    let mut length: Option<u64> = None;
    let mut te = false;
    let mut sse = false;
    for (h, class) in headers.iter().zip(classes.iter_mut()) {
        *class = headers::class(h.name.as_bytes());
        match *class {
            Class::ContentLength => {
                let n = headers::content_length(h.value).ok_or("malformed content-length")?;
                if length.is_some_and(|l| l != n) {
                    return Err("conflicting content-length headers".into());
                }
                length = Some(n);
            }
            Class::TransferEncoding => te = true,
            _ if h.name.eq_ignore_ascii_case("content-type") => {
                sse = h.value.len() >= 17 && h.value[..17].eq_ignore_ascii_case(b"text/event-stream");
            }
            _ => {}
        }
    }
    // RFC 9112 §6.3 lets Transfer-Encoding win, but hyper's client reads such a response by
    // its Content-Length: refused (502) on both engines, so no two readings can differ.
    if te && length.is_some() {
        return Err("both content-length and transfer-encoding".into());
    }
    let no_body = cx.head_request || code == 204 || code == 304;
    let body = if no_body {
        Framing::None
    } else if te {
        // Only chunked is relayed: under any other coding the client would get bytes it
        // cannot decode, and a malformed value is a response the proxy cannot frame.
        let lines = headers
            .iter()
            .filter(|h| headers::class(h.name.as_bytes()) == Class::TransferEncoding)
            .map(|h| h.value);
        match headers::transfer_codings(lines) {
            Codings::Chunked => Framing::Chunked,
            Codings::Unsupported(c) => return Err(format!("unsupported transfer coding {c:?}")),
            Codings::NotChunkedFinal => return Err("a transfer coding other than chunked".into()),
            Codings::Invalid(m) => return Err(m),
        }
    } else {
        length.map_or(Framing::Close, Framing::Length)
    };
    Ok(Found { body, sse, no_body, te })
}

/// The client's status line and how its body is framed.
struct ClientFraming<'a> {
    status: StatusCode,
    reason: &'a str,
    mode: OutMode,
    close_client: bool,
}

/// The client's head: HTTP/1.1, the upstream's end-to-end headers, the proxy's own color
/// and version, and the framing the client's connection needs.
fn write_head(
    out: &mut Vec<u8>,
    c: &ClientFraming<'_>,
    headers: &[httparse::Header<'_>],
    classes: &[Class],
    conn: &ConnectionTokens<'_>,
    f: &Found,
    cx: &ResponseContext<'_>,
) {
    let (status, reason, mode, close_client) = (&c.status, c.reason, c.mode, c.close_client);
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(reason.as_bytes());
    out.extend_from_slice(b"\r\n");
    for (h, &class) in headers.iter().zip(classes) {
        let name = h.name.as_bytes();
        if class.response_skip() {
            // A HEAD or 304 answer states the length its GET would have had: keep it.
            let keep = f.no_body && *status != StatusCode::NO_CONTENT && !f.te && class == Class::ContentLength;
            if !keep {
                continue;
            }
        } else if conn.any() && class.removable_by_connection() && conn.names(name, connection_lines(headers)) {
            continue;
        }
        header(out, name, h.value);
    }
    cutover_headers(out, cx);
    match (mode, f.body) {
        (OutMode::Length, Framing::Length(n)) => header(out, b"content-length", super::buf::itoa(n, &mut [0u8; 20])),
        (OutMode::Rechunk, _) => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        _ => {}
    }
    if close_client {
        out.extend_from_slice(b"connection: close\r\n");
    } else if cx.client_minor == 0 {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route::Color;

    fn route(color: Color, version: Option<&str>) -> std::sync::Arc<ColorRoute> {
        ColorRoute::with_endpoints(color, version.map(str::to_string), Vec::new())
    }

    fn resp(raw: &str, head_request: bool, minor: u8, keep: bool) -> (ResponseHead, String) {
        let cx = ResponseContext {
            upgrade: false,
            head_request,
            client_minor: minor,
            client_keep_alive: keep,
            tags: Some(&route(Color::Green, Some("v2"))),
        };
        let mut out = Vec::new();
        match response_head(raw.as_bytes(), &cx, &mut out).unwrap() {
            ResponseParse::Head(h) => (h, String::from_utf8(out).unwrap()),
            other => panic!("{other:?}"),
        }
    }

    fn refused(raw: &[u8]) -> String {
        let cx = ResponseContext {
            upgrade: false,
            head_request: false,
            client_minor: 1,
            client_keep_alive: true,
            tags: Some(&route(Color::Blue, None)),
        };
        let mut out = Vec::new();
        let e = response_head(raw, &cx, &mut out).expect_err(&String::from_utf8_lossy(raw));
        assert!(out.is_empty(), "nothing written for a refused head");
        e
    }

    #[test]
    fn response_framing_decides_how_the_client_gets_the_body() {
        let (h, out) = resp(
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\nX-Cutover-Color: blue\r\nX-Cutover-Other: 1\r\nDate: x\r\n\r\nhi",
            false,
            1,
            true,
        );
        assert_eq!(
            (h.body, h.out, h.upstream_keep_alive, h.close_client),
            (Framing::Length(2), OutMode::Length, true, false)
        );
        assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
        assert!(out.contains("content-length: 2\r\n") && out.contains("Date: x\r\n"));
        assert!(
            out.contains("x-cutover-color: green\r\nx-cutover-version: v2\r\n") && !out.contains("blue"),
            "{out}"
        );
        assert!(!out.contains("Connection") && !out.contains("X-Cutover-Other"), "{out}");

        let sse = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n";
        let (h, out) = resp(sse, false, 1, true);
        assert_eq!((h.out, h.sse), (OutMode::Rechunk, true));
        assert!(out.contains("transfer-encoding: chunked\r\n"));
        let (h, out) = resp(sse, false, 0, true);
        assert_eq!(
            (h.out, h.close_client),
            (OutMode::Close, true),
            "HTTP/1.0 clients get the data until close"
        );
        assert!(
            out.contains("connection: close\r\n") && !out.contains("chunked"),
            "{out}"
        );

        let (h, _) = resp("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", false, 1, true);
        assert_eq!(h.out, OutMode::Rechunk, "chunked bodies are framed anew, not relayed");
        let (h, out) = resp("HTTP/1.0 200 OK\r\n\r\n", false, 1, true);
        assert_eq!(
            (h.body, h.out, h.upstream_keep_alive),
            (Framing::Close, OutMode::Rechunk, false)
        );
        assert!(out.contains("transfer-encoding: chunked"));

        let (h, out) = resp("HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n", true, 1, true);
        assert_eq!(h.body, Framing::None);
        assert!(out.contains("Content-Length: 1234\r\n"), "HEAD keeps its length: {out}");
        let (h, out) = resp("HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n", false, 0, true);
        assert_eq!((h.body, h.upstream_keep_alive), (Framing::None, false));
        assert!(
            out.contains("connection: keep-alive\r\n"),
            "HTTP/1.0 keep-alive restated: {out}"
        );
        let (h, out) = resp("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n", false, 1, false);
        assert!(h.close_client && out.contains("connection: close\r\n"));
        // A non-ASCII byte in Connection does not switch the header off.
        let (h, out) = resp(
            "HTTP/1.1 200 OK\r\nConnection: x-a\u{e9}, close, x-b\r\nX-B: 1\r\nContent-Length: 0\r\n\r\n",
            false,
            1,
            true,
        );
        assert!(!h.upstream_keep_alive && !out.contains("X-B"), "{out}");
        let (_, out) = resp(
            "HTTP/1.1 200 OK\r\nConnection: content-length\r\nContent-Length: 2\r\n\r\n",
            false,
            1,
            true,
        );
        assert!(out.contains("content-length: 2"), "{out}");
    }

    #[test]
    fn a_101_opens_a_tunnel_only_for_an_upgrade_request() {
        let raw = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: x\r\nX-Cutover-Color: red\r\n\r\nFRAME";
        let cx = ResponseContext {
            upgrade: true,
            head_request: false,
            client_minor: 1,
            client_keep_alive: true,
            tags: Some(&route(Color::Blue, None)),
        };
        let mut out = Vec::new();
        assert!(
            matches!(response_head(raw, &cx, &mut out), Ok(ResponseParse::Switching { len }) if len == raw.len() - 5)
        );
        let out = String::from_utf8(out).unwrap();
        assert!(
            out.starts_with("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"),
            "{out}"
        );
        assert!(
            out.contains("Sec-WebSocket-Accept: x\r\nconnection: upgrade\r\nx-cutover-color: blue\r\n"),
            "{out}"
        );
        assert!(!out.contains("red") && !out.contains("Connection: Upgrade"), "{out}");
        refused(raw);
    }

    #[test]
    fn interim_and_bad_responses() {
        let cx = ResponseContext {
            upgrade: false,
            head_request: false,
            client_minor: 1,
            client_keep_alive: true,
            tags: Some(&route(Color::Blue, None)),
        };
        let mut out = Vec::new();
        let raw = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n";
        assert!(matches!(
            response_head(raw, &cx, &mut out),
            Ok(ResponseParse::Interim { len: 25, relay: false })
        ));
        assert!(matches!(
            response_head(&raw[25..], &cx, &mut out),
            Ok(ResponseParse::Partial)
        ));
        assert!(out.is_empty(), "a 100 is not passed on");
        assert!(matches!(
            response_head(
                b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\nConnection: x\r\n\r\n",
                &cx,
                &mut out
            ),
            Ok(ResponseParse::Interim { len: _, relay: true })
        ));
        assert_eq!(out, b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n");
        out.clear();
        refused(b"HTTP/1.1 101 Switching\r\n\r\n");
        refused(b"HTTP/1.1 abc\r\n\r\n");
        refused(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n");
        refused(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n");
        refused(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n");
        refused(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\xff\r\n\r\n");
        refused(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: \r\n\r\n");
        refused(b"HTTP/1.1 200 OK\r\nContent-Length: +2\r\n\r\n");
        refused(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n");
    }
}
