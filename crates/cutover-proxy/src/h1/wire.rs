//! HTTP/1.1 message framing for the fast path: pooled buffers, request and response heads
//! parsed with `httparse` and rewritten in one pass, and an incremental chunked decoder.
//!
//! Everything here is synchronous: the head parsers borrow the connection's buffer and
//! write the head for the other side before any await, so a connection's task never holds
//! a parsed header array across a suspension point (that keeps idle connections small).

use std::cell::RefCell;

use http::{Method, StatusCode};

/// Size of a pooled buffer: a whole typical head plus the start of its body in one read.
pub(crate) const BUF_SIZE: usize = 16 * 1024;
/// Buffers kept per thread for reuse; past that they go back to the allocator.
const KEEP_PER_THREAD: usize = 256;
/// Header lines accepted in one head (hyper's default is 100 too).
pub(crate) const MAX_HEADERS: usize = 100;
/// Longest response head accepted from an upstream.
pub(crate) const MAX_RESPONSE_HEAD: usize = 64 * 1024;

thread_local! {
    static FREE: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

fn take_vec() -> Vec<u8> {
    FREE.try_with(|f| f.borrow_mut().pop())
        .ok()
        .flatten()
        .unwrap_or_else(|| Vec::with_capacity(BUF_SIZE))
}

fn give_vec(mut v: Vec<u8>) {
    // Only standard-size buffers are kept: one grown for a huge head goes back to malloc.
    if v.capacity() != BUF_SIZE {
        return;
    }
    v.clear();
    let _ = FREE.try_with(|f| {
        let mut f = f.borrow_mut();
        if f.len() < KEEP_PER_THREAD {
            f.push(v);
        }
    });
}

/// A byte buffer with a read cursor. Holds no memory while empty and released, which is
/// what an idle keep-alive connection does: its buffer goes back to the thread's pool.
pub(crate) struct Buf {
    /// Filled bytes are `data[start..]`; spare capacity is where reads land.
    pub(crate) data: Vec<u8>,
    start: usize,
}

impl Buf {
    pub(crate) const fn new() -> Buf {
        Buf {
            data: Vec::new(),
            start: 0,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.data.len() - self.start
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub(crate) fn bytes(&self) -> &[u8] {
        &self.data[self.start..]
    }

    pub(crate) fn consume(&mut self, n: usize) {
        self.start += n;
        debug_assert!(self.start <= self.data.len());
        if self.start == self.data.len() {
            self.data.clear();
            self.start = 0;
        }
    }

    /// Give the memory back to the pool if nothing is buffered.
    pub(crate) fn release(&mut self) {
        if self.is_empty() && self.data.capacity() > 0 {
            give_vec(std::mem::take(&mut self.data));
            self.start = 0;
        }
    }

    /// Make room for a read: take a pooled buffer, move unread bytes to the front, or grow
    /// up to `max` bytes. False when the buffer already holds `max` bytes.
    pub(crate) fn reserve(&mut self, max: usize) -> bool {
        if self.data.capacity() == 0 {
            self.data = take_vec();
            self.start = 0;
        }
        if self.data.len() < self.data.capacity() {
            return true;
        }
        if self.start > 0 {
            self.data.drain(..self.start);
            self.start = 0;
            return true;
        }
        if self.data.len() >= max {
            return false;
        }
        let want = (self.data.capacity() * 2).min(max.max(BUF_SIZE));
        self.data.reserve_exact(want - self.data.len());
        true
    }
}

impl Drop for Buf {
    fn drop(&mut self) {
        if self.data.capacity() > 0 {
            give_vec(std::mem::take(&mut self.data));
        }
    }
}

/// An output buffer from the same pool, taken at its first write.
pub(crate) struct Out(pub(crate) Vec<u8>);

impl Out {
    pub(crate) const fn new() -> Out {
        Out(Vec::new())
    }

    /// The buffer to write to.
    pub(crate) fn vec(&mut self) -> &mut Vec<u8> {
        if self.0.capacity() == 0 {
            self.0 = take_vec();
        }
        &mut self.0
    }

    /// Give the memory back while there is nothing to send (a stream between events).
    pub(crate) fn release(&mut self) {
        if self.0.is_empty() && self.0.capacity() > 0 {
            give_vec(std::mem::take(&mut self.0));
        }
    }
}

impl Drop for Out {
    fn drop(&mut self) {
        give_vec(std::mem::take(&mut self.0));
    }
}

/// How a message body is delimited on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    None,
    Length(u64),
    Chunked,
    /// Until the sender closes (responses only).
    Close,
}

/// Why a request head is refused.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum HeadError {
    /// 400 with this message.
    Bad(String),
    /// 431: too many or too long header lines.
    TooLarge,
    /// 501: a transfer coding other than chunked.
    Unsupported(String),
}

/// What the proxy needs to know about a request after its head was rewritten.
#[derive(Debug)]
pub(crate) struct RequestHead {
    pub(crate) head_len: usize,
    pub(crate) method: Method,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub(crate) minor: u8,
    pub(crate) body: Framing,
    pub(crate) keep_alive: bool,
    pub(crate) expect_continue: bool,
    /// No Host came with the request: the upstream head still needs one.
    pub(crate) needs_host: bool,
    /// Present only when an access log wants it.
    pub(crate) path: Option<String>,
}

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Whether `b` starts an HTTP/2 prior-knowledge connection: `Some(true)` it does,
/// `Some(false)` it does not, `None` too few bytes to tell.
pub(crate) fn h2_preface(b: &[u8]) -> Option<bool> {
    let n = b.len().min(PREFACE.len());
    if b[..n] != PREFACE[..n] {
        Some(false)
    } else if n == PREFACE.len() {
        Some(true)
    } else {
        None
    }
}

fn is(name: &str, lower: &str) -> bool {
    name.eq_ignore_ascii_case(lower)
}

/// Tokens of a `Connection` header: whether it says close / keep-alive, and the other
/// names it lists (those headers are hop-by-hop too).
struct ConnectionTokens<'a> {
    close: bool,
    keep_alive: bool,
    names: [&'a str; 8],
    n: usize,
    /// More names than fit: every unknown header is then checked against the raw values.
    overflow: bool,
}

impl<'a> ConnectionTokens<'a> {
    fn parse(headers: &[httparse::Header<'a>]) -> ConnectionTokens<'a> {
        let mut t = ConnectionTokens {
            close: false,
            keep_alive: false,
            names: [""; 8],
            n: 0,
            overflow: false,
        };
        for h in headers.iter().filter(|h| is(h.name, "connection")) {
            let v = std::str::from_utf8(h.value).unwrap_or("");
            for tok in v.split(',').map(str::trim).filter(|t| !t.is_empty()) {
                if is(tok, "close") {
                    t.close = true;
                } else if is(tok, "keep-alive") {
                    t.keep_alive = true;
                } else if t.n < t.names.len() {
                    t.names[t.n] = tok;
                    t.n += 1;
                } else {
                    t.overflow = true;
                }
            }
        }
        t
    }

    fn names(&self, name: &str, headers: &[httparse::Header<'a>]) -> bool {
        if self.names[..self.n].iter().any(|n| is(n, name)) {
            return true;
        }
        self.overflow
            && headers.iter().filter(|h| is(h.name, "connection")).any(|h| {
                std::str::from_utf8(h.value)
                    .unwrap_or("")
                    .split(',')
                    .any(|t| is(t.trim(), name))
            })
    }
}

/// Headers never forwarded as they came: hop-by-hop ones, framing (rewritten), and the
/// forwarding headers the proxy sets itself.
fn hop_by_hop(name: &str) -> bool {
    // Dispatch on length first: most names are rejected with one comparison.
    match name.len() {
        2 => is(name, "te"),
        6 => is(name, "expect"),
        7 => is(name, "trailer") || is(name, "upgrade"),
        10 => is(name, "connection") || is(name, "keep-alive"),
        14 => is(name, "content-length"),
        16 => is(name, "proxy-connection") || is(name, "x-forwarded-host"),
        17 => is(name, "transfer-encoding") || is(name, "x-forwarded-for") || is(name, "x-forwarded-proto"),
        _ => false,
    }
}

fn content_length(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 18 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}

/// Where the request goes, for the head written upstream.
pub(crate) struct Target<'a> {
    /// `X-Forwarded-For` value of this connection's peer.
    pub(crate) peer_ip: &'a [u8],
    pub(crate) want_path: bool,
}

/// Parse a request head at the start of `buf` and write the upstream's version of it to
/// `out`. `Ok(None)`: the head is not complete yet.
pub(crate) fn request_head(buf: &[u8], t: &Target<'_>, out: &mut Vec<u8>) -> Result<Option<RequestHead>, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooLarge),
        Err(e) => return Err(HeadError::Bad(format!("malformed request head: {e}"))),
    };
    let (Some(method), Some(target), Some(minor)) = (req.method, req.path, req.version) else {
        return Err(HeadError::Bad("malformed request line".into()));
    };
    let headers = &*req.headers;
    let method = Method::from_bytes(method.as_bytes()).map_err(|_| HeadError::Bad("malformed method".into()))?;
    if method == Method::CONNECT {
        return Err(HeadError::Bad("CONNECT is not supported by a reverse proxy".into()));
    }

    // Absolute-form targets (sent to proxies) carry the host; origin-form is forwarded as is.
    let absolute;
    let (path, uri_host): (&str, Option<&str>) =
        if target.starts_with('/') || (target == "*" && method == Method::OPTIONS) {
            (target, None)
        } else if starts_with_ignore_case(target, "http://") || starts_with_ignore_case(target, "https://") {
            absolute = target
                .parse::<http::Uri>()
                .map_err(|e| HeadError::Bad(format!("malformed request target: {e}")))?;
            let auth = absolute.authority().map(|a| a.as_str());
            (absolute.path_and_query().map_or("/", |p| p.as_str()), auth)
        } else {
            return Err(HeadError::Bad(format!("malformed request target {target:?}")));
        };

    let conn = ConnectionTokens::parse(headers);
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut host: Option<&[u8]> = None;
    let mut hosts = 0;
    let mut expect_continue = false;
    for h in headers {
        if is(h.name, "content-length") {
            let n = content_length(h.value).ok_or_else(|| HeadError::Bad("malformed content-length".into()))?;
            if length.is_some_and(|l| l != n) {
                return Err(HeadError::Bad("conflicting content-length headers".into()));
            }
            length = Some(n);
        } else if is(h.name, "transfer-encoding") {
            if minor == 0 {
                return Err(HeadError::Bad("transfer-encoding in an HTTP/1.0 request".into()));
            }
            let v = std::str::from_utf8(h.value).unwrap_or("");
            for coding in v.split(',').map(str::trim).filter(|c| !c.is_empty()) {
                if chunked || !is(coding, "chunked") {
                    return Err(HeadError::Unsupported(format!(
                        "transfer-encoding {v:?} is not supported: only chunked is"
                    )));
                }
                chunked = true;
            }
        } else if is(h.name, "host") {
            hosts += 1;
            host = Some(h.value);
        } else if is(h.name, "expect") && h.value.eq_ignore_ascii_case(b"100-continue") {
            expect_continue = true;
        }
    }
    // RFC 9112 §6.3 lets a server reject both framings at once; it is how requests are
    // smuggled past proxies that read one and upstreams that read the other.
    if chunked && length.is_some() {
        return Err(HeadError::Bad(
            "both content-length and transfer-encoding: ambiguous message length".into(),
        ));
    }
    if hosts > 1 {
        return Err(HeadError::Bad("more than one host header".into()));
    }
    if hosts == 0 && minor == 1 && uri_host.is_none() {
        return Err(HeadError::Bad("HTTP/1.1 request without a host header".into()));
    }
    let host: Option<&[u8]> = uri_host.map(str::as_bytes).or(host);
    let body = if chunked {
        Framing::Chunked
    } else {
        match length {
            Some(0) | None => Framing::None,
            Some(n) => Framing::Length(n),
        }
    };
    let keep_alive = if minor == 1 {
        !conn.close
    } else {
        conn.keep_alive && !conn.close
    };

    // The upstream's head: always HTTP/1.1, hop-by-hop headers dropped, framing restated.
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(path.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for h in headers {
        if hop_by_hop(h.name) {
            // gRPC needs `te: trailers` end to end.
            if !(is(h.name, "te") && h.value.eq_ignore_ascii_case(b"trailers")) {
                continue;
            }
        } else if ((conn.n > 0 || conn.overflow) && conn.names(h.name, headers))
            || (uri_host.is_some() && is(h.name, "host"))
        {
            // Named by Connection, or a Host the absolute-form target overrides.
            continue;
        }
        out.extend_from_slice(h.name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(h.value);
        out.extend_from_slice(b"\r\n");
    }
    // Earlier proxies' X-Forwarded-For values, in order, then this connection's peer.
    out.extend_from_slice(b"x-forwarded-for: ");
    for h in headers
        .iter()
        .filter(|h| is(h.name, "x-forwarded-for") && !h.value.is_empty())
    {
        out.extend_from_slice(h.value);
        out.extend_from_slice(b", ");
    }
    out.extend_from_slice(t.peer_ip);
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(b"x-forwarded-proto: http\r\n");
    // HTTP/1.0 without Host: the caller adds the endpoint's address once it has one.
    if let Some(h) = host {
        if uri_host.is_some() {
            out.extend_from_slice(b"host: ");
            out.extend_from_slice(h);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"x-forwarded-host: ");
        out.extend_from_slice(h);
        out.extend_from_slice(b"\r\n");
    }
    match body {
        Framing::Length(n) => {
            out.extend_from_slice(b"content-length: ");
            out.extend_from_slice(itoa(n, &mut [0u8; 20]));
            out.extend_from_slice(b"\r\n");
        }
        Framing::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        Framing::None | Framing::Close => {}
    }
    out.extend_from_slice(b"\r\n");
    Ok(Some(RequestHead {
        head_len,
        // Without the query: query strings may carry secrets.
        path: t.want_path.then(|| path.split('?').next().unwrap_or(path).to_string()),
        method,
        minor,
        body,
        keep_alive,
        expect_continue,
        needs_host: host.is_none(),
    }))
}

/// Compared as bytes: a request target may carry non-ASCII bytes, and slicing it as a
/// string at a fixed index could split a character (a panic the fuzzer found).
fn starts_with_ignore_case(s: &str, prefix: &str) -> bool {
    s.len() >= prefix.len() && s.as_bytes()[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
}

/// `n` in decimal, without allocating.
pub(crate) fn itoa(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[i..];
        }
    }
}

/// How the response body is written to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OutMode {
    None,
    /// Content-Length bytes, as they came.
    Length,
    /// The upstream's chunked encoding, byte for byte (validated on the way).
    Raw,
    /// Decoded and chunked again by the proxy: close-delimited upstream bodies, and event
    /// streams (so an error event can be added at any point).
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
    /// A 1xx interim response of this many bytes: skipped, the final one follows.
    Interim(usize),
    Head(ResponseHead),
}

/// What the response head written to the client depends on.
pub(crate) struct ResponseContext<'a> {
    pub(crate) head_request: bool,
    pub(crate) client_minor: u8,
    pub(crate) client_keep_alive: bool,
    pub(crate) color: &'a [u8],
    pub(crate) version: Option<&'a [u8]>,
}

fn response_skip(name: &str) -> bool {
    match name.len() {
        2 => is(name, "te"),
        7 => is(name, "trailer") || is(name, "upgrade"),
        10 => is(name, "connection") || is(name, "keep-alive"),
        14 => is(name, "content-length"),
        15 => is(name, "x-cutover-color"),
        16 => is(name, "proxy-connection"),
        17 => is(name, "transfer-encoding") || is(name, "x-cutover-version"),
        _ => false,
    }
}

/// Parse an upstream response head and write the client's version of it to `out`.
pub(crate) fn response_head(buf: &[u8], cx: &ResponseContext<'_>, out: &mut Vec<u8>) -> Result<ResponseParse, String> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
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
        return Err("101 Switching Protocols to a request whose upgrade was not forwarded".into());
    }
    if (100..200).contains(&code) {
        return Ok(ResponseParse::Interim(head_len));
    }
    let status = StatusCode::from_u16(code).map_err(|_| format!("invalid status code {code}"))?;
    let headers = &*resp.headers;
    let conn = ConnectionTokens::parse(headers);

    let mut length: Option<u64> = None;
    let mut te: Option<bool> = None;
    let mut sse = false;
    for h in headers {
        if is(h.name, "content-length") {
            let n = content_length(h.value).ok_or("malformed content-length")?;
            if length.is_some_and(|l| l != n) {
                return Err("conflicting content-length headers".into());
            }
            length = Some(n);
        } else if is(h.name, "transfer-encoding") {
            let v = std::str::from_utf8(h.value).unwrap_or("");
            let last = v.rsplit(',').map(str::trim).find(|c| !c.is_empty()).unwrap_or("");
            te = Some(is(last, "chunked"));
        } else if is(h.name, "content-type") {
            sse = h.value.len() >= 17 && h.value[..17].eq_ignore_ascii_case(b"text/event-stream");
        }
    }
    let no_body = cx.head_request || code == 204 || code == 304;
    let body = if no_body {
        Framing::None
    } else {
        match (te, length) {
            (Some(true), _) => Framing::Chunked,
            (Some(false), _) => Framing::Close,
            (None, Some(n)) => Framing::Length(n),
            (None, None) => Framing::Close,
        }
    };
    let mut upstream_keep_alive = if minor == 1 {
        !conn.close
    } else {
        conn.keep_alive && !conn.close
    };
    // Both framings, or a body that ends at close: this connection cannot carry another.
    if body == Framing::Close || (te.is_some() && length.is_some()) {
        upstream_keep_alive = false;
    }
    let mut close_client = !cx.client_keep_alive;
    let mode = match body {
        Framing::None => OutMode::None,
        Framing::Length(_) => OutMode::Length,
        Framing::Chunked | Framing::Close if cx.client_minor == 0 => {
            close_client = true;
            OutMode::Close
        }
        Framing::Chunked if !sse => OutMode::Raw,
        Framing::Chunked | Framing::Close => OutMode::Rechunk,
    };

    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    let reason = status.canonical_reason().or(resp.reason).unwrap_or("");
    out.extend_from_slice(reason.as_bytes());
    out.extend_from_slice(b"\r\n");
    for h in headers {
        if response_skip(h.name) {
            // A HEAD or 304 answer states the length its GET would have had: keep it.
            let keep = no_body && code != 204 && te.is_none() && is(h.name, "content-length");
            if !keep {
                continue;
            }
        } else if (conn.n > 0 || conn.overflow) && conn.names(h.name, headers) {
            continue;
        }
        out.extend_from_slice(h.name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(h.value);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"x-cutover-color: ");
    out.extend_from_slice(cx.color);
    out.extend_from_slice(b"\r\n");
    if let Some(v) = cx.version {
        out.extend_from_slice(b"x-cutover-version: ");
        out.extend_from_slice(v);
        out.extend_from_slice(b"\r\n");
    }
    match (mode, body) {
        (OutMode::Length, Framing::Length(n)) => {
            out.extend_from_slice(b"content-length: ");
            out.extend_from_slice(itoa(n, &mut [0u8; 20]));
            out.extend_from_slice(b"\r\n");
        }
        (OutMode::Raw | OutMode::Rechunk, _) => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        _ => {}
    }
    if close_client {
        out.extend_from_slice(b"connection: close\r\n");
    } else if cx.client_minor == 0 {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
    Ok(ResponseParse::Head(ResponseHead {
        head_len,
        status: code,
        body,
        upstream_keep_alive,
        sse,
        out: mode,
        close_client,
    }))
}

/// Incremental decoder of the chunked transfer coding (RFC 9112 §7.1), strict about CRLFs
/// and bounded in what it accepts outside data: it never buffers, it only tells where the
/// data is and where the message ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Chunked {
    Size { value: u64, digits: u8 },
    Ext { value: u64, len: u16 },
    SizeLf { value: u64 },
    Data(u64),
    DataCr,
    DataLf,
    Trailer { line: usize, total: usize },
    TrailerLf { empty: bool, total: usize },
    Done,
}

/// Longest chunk extension accepted (nobody sends them; a long one is an attack).
const MAX_CHUNK_EXT: u16 = 4096;
/// Trailer section limit.
const MAX_TRAILERS: usize = 16 * 1024;

impl Chunked {
    pub(crate) const fn new() -> Chunked {
        Chunked::Size { value: 0, digits: 0 }
    }

    pub(crate) fn done(&self) -> bool {
        *self == Chunked::Done
    }

    /// Consume `input` up to the end of the message; `data` sees each piece of body data.
    /// Returns the bytes consumed (less than `input.len()` only when the message ended).
    pub(crate) fn feed(&mut self, input: &[u8], mut data: impl FnMut(&[u8])) -> Result<usize, &'static str> {
        let mut i = 0;
        while i < input.len() {
            if let Chunked::Data(left) = *self {
                let take = (input.len() - i).min(usize::try_from(left).unwrap_or(usize::MAX));
                data(&input[i..i + take]);
                i += take;
                let left = left - take as u64;
                *self = if left == 0 {
                    Chunked::DataCr
                } else {
                    Chunked::Data(left)
                };
                continue;
            }
            let b = input[i];
            i += 1;
            *self = match *self {
                Chunked::Size { value, digits } => match b {
                    b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                        if digits >= 15 {
                            return Err("chunk size too large");
                        }
                        let d = (b as char).to_digit(16).unwrap_or(0) as u64;
                        Chunked::Size {
                            value: value * 16 + d,
                            digits: digits + 1,
                        }
                    }
                    b';' | b' ' | b'\t' if digits > 0 => Chunked::Ext { value, len: 0 },
                    b'\r' if digits > 0 => Chunked::SizeLf { value },
                    _ => return Err("malformed chunk size"),
                },
                Chunked::Ext { value, len } => match b {
                    b'\r' => Chunked::SizeLf { value },
                    b'\n' => return Err("bare LF in chunk extension"),
                    _ if len >= MAX_CHUNK_EXT => return Err("chunk extension too long"),
                    _ => Chunked::Ext { value, len: len + 1 },
                },
                Chunked::SizeLf { value } => match b {
                    b'\n' if value == 0 => Chunked::Trailer { line: 0, total: 0 },
                    b'\n' => Chunked::Data(value),
                    _ => return Err("expected LF after chunk size"),
                },
                Chunked::DataCr => match b {
                    b'\r' => Chunked::DataLf,
                    _ => return Err("expected CRLF after chunk data"),
                },
                Chunked::DataLf => match b {
                    b'\n' => Chunked::new(),
                    _ => return Err("expected CRLF after chunk data"),
                },
                Chunked::Trailer { line, total } => match b {
                    b'\r' => Chunked::TrailerLf {
                        empty: line == 0,
                        total,
                    },
                    b'\n' => return Err("bare LF in trailers"),
                    _ if total >= MAX_TRAILERS => return Err("trailer section too large"),
                    _ => Chunked::Trailer {
                        line: line + 1,
                        total: total + 1,
                    },
                },
                Chunked::TrailerLf { empty, total } => match b {
                    b'\n' if empty => {
                        *self = Chunked::Done;
                        return Ok(i);
                    }
                    b'\n' => Chunked::Trailer { line: 0, total },
                    _ => return Err("expected LF in trailers"),
                },
                Chunked::Data(_) => unreachable!("handled above"),
                Chunked::Done => return Ok(i - 1),
            };
        }
        Ok(i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn req(raw: &str) -> Result<(RequestHead, String), HeadError> {
        let mut out = Vec::new();
        let t = Target {
            peer_ip: b"10.0.0.9",
            want_path: true,
        };
        let h = request_head(raw.as_bytes(), &t, &mut out)?.expect("complete head");
        Ok((h, String::from_utf8(out).unwrap()))
    }

    #[test]
    fn request_heads_are_rewritten_for_the_upstream() {
        let raw = "POST /v1/chat?x=1 HTTP/1.1\r\nHost: api\r\nConnection: keep-alive, X-Private\r\nX-Private: 1\r\n\
             Keep-Alive: timeout=5\r\nTE: trailers\r\nUpgrade: h2c\r\nX-Forwarded-For: 1.1.1.1\r\nx-forwarded-for: 2.2.2.2\r\n\
             X-Forwarded-Host: evil\r\nContent-Length: 0005\r\nX-Kept: yes\r\n\r\nhello";
        let (h, out) = req(raw).unwrap();
        assert_eq!(h.head_len, raw.len() - 5, "the head ends before the body");
        assert_eq!(h.body, Framing::Length(5));
        assert!(h.keep_alive && !h.needs_host);
        assert_eq!(h.path.as_deref(), Some("/v1/chat"), "the logged path has no query");
        assert!(out.starts_with("POST /v1/chat?x=1 HTTP/1.1\r\n"), "{out}");
        for gone in ["Connection", "X-Private", "Keep-Alive", "Upgrade", "evil", "0005"] {
            assert!(!out.contains(gone), "{gone} in {out}");
        }
        for kept in [
            "Host: api\r\n",
            "TE: trailers\r\n",
            "X-Kept: yes\r\n",
            "x-forwarded-for: 1.1.1.1, 2.2.2.2, 10.0.0.9\r\n",
            "x-forwarded-proto: http\r\n",
            "x-forwarded-host: api\r\n",
            "content-length: 5\r\n",
        ] {
            assert!(out.contains(kept), "{kept:?} missing from {out}");
        }
        assert!(out.ends_with("\r\n\r\n"));
    }

    #[test]
    fn absolute_form_http10_and_chunked_requests() {
        let (h, out) = req("GET http://models.internal:8000/v1/models HTTP/1.1\r\nHost: other\r\n\r\n").unwrap();
        assert!(out.starts_with("GET /v1/models HTTP/1.1\r\n"), "{out}");
        assert!(
            out.contains("host: models.internal:8000\r\n") && !out.contains("other"),
            "{out}"
        );
        assert_eq!(h.body, Framing::None);

        let (h, out) = req("GET / HTTP/1.0\r\n\r\n").unwrap();
        assert!(!h.keep_alive && h.needs_host && h.minor == 0);
        assert!(!out.to_ascii_lowercase().contains("host:"));
        let (h, _) = req("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n").unwrap();
        assert!(h.keep_alive);
        let (h, _) = req("GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").unwrap();
        assert!(!h.keep_alive);

        let (h, out) =
            req("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked\r\nExpect: 100-continue\r\n\r\n").unwrap();
        assert_eq!(h.body, Framing::Chunked);
        assert!(h.expect_continue);
        assert!(
            out.contains("transfer-encoding: chunked\r\n") && !out.contains("Expect"),
            "{out}"
        );
    }

    #[test]
    fn ambiguous_or_malformed_requests_are_refused() {
        let bad = |raw: &str| match req(raw) {
            Err(HeadError::Bad(m)) => m,
            other => panic!("{raw:?} gave {other:?}"),
        };
        assert!(
            bad("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n")
                .contains("ambiguous")
        );
        assert!(
            bad("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n").contains("conflicting")
        );
        bad("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +3\r\n\r\n");
        bad("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999\r\n\r\n");
        bad("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n");
        bad("GET / HTTP/1.1\r\n\r\n");
        bad("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n");
        bad("CONNECT a:443 HTTP/1.1\r\nHost: a\r\n\r\n");
        bad("GET nowhere HTTP/1.1\r\nHost: a\r\n\r\n");
        // Found by the fuzzer: a non-ASCII byte where "http://" would end must not panic.
        let mut out = Vec::new();
        let t = Target {
            peer_ip: b"1",
            want_path: false,
        };
        let r = request_head("GET http:/ח)1 HTTP/1.0\r\n\r\n".as_bytes(), &t, &mut out);
        assert!(matches!(r, Err(HeadError::Bad(_))), "{r:?}");
        bad("GET / HTTP/1.1\r\nHost: a\r\nBad Header: x\r\n\r\n");
        assert!(matches!(
            req("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"),
            Err(HeadError::Unsupported(_))
        ));
        assert!(matches!(
            req("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, chunked\r\n\r\n"),
            Err(HeadError::Unsupported(_))
        ));
        let many: String = (0..MAX_HEADERS + 1).map(|i| format!("x-{i}: v\r\n")).collect();
        assert_eq!(
            req(&format!("GET / HTTP/1.1\r\nHost: a\r\n{many}\r\n")).err(),
            Some(HeadError::TooLarge)
        );
        let mut out = Vec::new();
        let t = Target {
            peer_ip: b"1",
            want_path: false,
        };
        assert!(request_head(b"GET / HTTP/1.1\r\nHost: a\r\n", &t, &mut out)
            .unwrap()
            .is_none());
        assert!(out.is_empty(), "nothing written for a partial head");
    }

    fn resp(raw: &str, head_request: bool, minor: u8, keep: bool) -> (ResponseHead, String) {
        let cx = ResponseContext {
            head_request,
            client_minor: minor,
            client_keep_alive: keep,
            color: b"green",
            version: Some(b"v2"),
        };
        let mut out = Vec::new();
        match response_head(raw.as_bytes(), &cx, &mut out).unwrap() {
            ResponseParse::Head(h) => (h, String::from_utf8(out).unwrap()),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn response_framing_decides_how_the_client_gets_the_body() {
        let (h, out) = resp(
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\nX-Cutover-Color: blue\r\nDate: x\r\n\r\nhi",
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
        assert!(!out.contains("Connection"), "{out}");

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
        assert_eq!(h.out, OutMode::Raw);
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
        let (h, _) = resp(
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n",
            false,
            1,
            true,
        );
        assert_eq!((h.body, h.upstream_keep_alive), (Framing::Chunked, false));
    }

    #[test]
    fn interim_and_bad_responses() {
        let cx = ResponseContext {
            head_request: false,
            client_minor: 1,
            client_keep_alive: true,
            color: b"blue",
            version: None,
        };
        let mut out = Vec::new();
        let raw = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n";
        assert!(matches!(
            response_head(raw, &cx, &mut out),
            Ok(ResponseParse::Interim(25))
        ));
        assert!(matches!(
            response_head(&raw[25..], &cx, &mut out),
            Ok(ResponseParse::Partial)
        ));
        assert!(response_head(b"HTTP/1.1 101 Switching\r\n\r\n", &cx, &mut out).is_err());
        assert!(response_head(b"HTTP/1.1 abc\r\n\r\n", &cx, &mut out).is_err());
        assert!(response_head(
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            &cx,
            &mut out
        )
        .is_err());
        assert!(out.is_empty());
    }

    fn encode(pieces: &[Vec<u8>], ext: bool, trailers: bool) -> Vec<u8> {
        let mut v = Vec::new();
        for p in pieces.iter().filter(|p| !p.is_empty()) {
            v.extend_from_slice(format!("{:X}", p.len()).as_bytes());
            if ext {
                v.extend_from_slice(b";name=value");
            }
            v.extend_from_slice(b"\r\n");
            v.extend_from_slice(p);
            v.extend_from_slice(b"\r\n");
        }
        v.extend_from_slice(b"0\r\n");
        if trailers {
            v.extend_from_slice(b"grpc-status: 0\r\n");
        }
        v.extend_from_slice(b"\r\n");
        v
    }

    proptest! {
        #[test]
        fn chunked_decoding_survives_any_split(
            pieces in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..8),
            splits in proptest::collection::vec(1usize..64, 1..40),
            ext: bool,
            trailers: bool,
        ) {
            let mut wire = encode(&pieces, ext, trailers);
            let end = wire.len();
            wire.extend_from_slice(b"GET /next HTTP/1.1\r\n");
            let mut dec = Chunked::new();
            let mut data = Vec::new();
            let mut at = 0;
            let mut splits = splits.iter().cycle();
            while !dec.done() && at < wire.len() {
                let n = (*splits.next().unwrap()).min(wire.len() - at);
                let used = dec.feed(&wire[at..at + n], |d| data.extend_from_slice(d)).unwrap();
                prop_assert!(used == n || dec.done());
                at += used;
            }
            prop_assert!(dec.done());
            prop_assert_eq!(at, end, "stops exactly at the end of the message");
            prop_assert_eq!(data, pieces.concat());
        }
    }

    const NAMES: [&str; 11] = [
        "Host",
        "Connection",
        "Content-Length",
        "Transfer-Encoding",
        "TE",
        "Upgrade",
        "X-A",
        "Keep-Alive",
        "X-Forwarded-For",
        "Expect",
        "content-length",
    ];
    const VALUES: [&str; 12] = [
        "close",
        "keep-alive, X-A",
        "5",
        "chunked",
        "trailers",
        "h2c",
        "1.2.3.4",
        "",
        "100-continue",
        "gzip, chunked",
        "x-a",
        "7",
    ];

    proptest! {
        /// Whatever mix of framing and hop-by-hop headers a client sends, an accepted request
        /// is rewritten into a head that parses completely, states at most one framing, and
        /// carries no hop-by-hop header; a refused one writes nothing. Arbitrary bytes never
        /// panic any of the parsers.
        #[test]
        fn any_header_mix_is_refused_or_rewritten_cleanly(
            minor in 0u8..2,
            lines in proptest::collection::vec((0..NAMES.len(), 0..VALUES.len()), 0..8),
            noise in proptest::collection::vec(any::<u8>(), 0..200),
        ) {
            let mut raw = format!("POST /p HTTP/1.{minor}\r\n");
            for (n, v) in &lines {
                raw.push_str(&format!("{}: {}\r\n", NAMES[*n], VALUES[*v]));
            }
            raw.push_str("\r\n");
            let t = Target { peer_ip: b"9.9.9.9", want_path: false };
            let mut out = Vec::new();
            match request_head(raw.as_bytes(), &t, &mut out) {
                Ok(Some(h)) => {
                    let mut hs = [httparse::EMPTY_HEADER; MAX_HEADERS + 8];
                    let mut r = httparse::Request::new(&mut hs);
                    let parsed = r.parse(&out);
                    prop_assert!(matches!(parsed, Ok(httparse::Status::Complete(n)) if n == out.len()), "{}", String::from_utf8_lossy(&out));
                    let framing: Vec<_> = r.headers.iter()
                        .filter(|x| is(x.name, "content-length") || is(x.name, "transfer-encoding"))
                        .collect();
                    prop_assert!(framing.len() <= 1, "{}", String::from_utf8_lossy(&out));
                    prop_assert_eq!(framing.is_empty(), h.body == Framing::None);
                    for x in r.headers.iter() {
                        for bad in ["connection", "keep-alive", "upgrade", "expect", "x-a"] {
                            let named = raw.to_ascii_lowercase().contains("connection: keep-alive, x-a");
                            if bad != "x-a" || named {
                                prop_assert!(!is(x.name, bad), "{} in {}", bad, String::from_utf8_lossy(&out));
                            }
                        }
                    }
                }
                Ok(None) => prop_assert!(false, "a complete head is never partial"),
                Err(_) => prop_assert!(out.is_empty()),
            }
            let mut junk = raw.into_bytes();
            junk.extend_from_slice(&noise);
            let _ = request_head(&noise, &t, &mut Vec::new());
            let cx = ResponseContext { head_request: false, client_minor: 1, client_keep_alive: true, color: b"blue", version: None };
            let _ = response_head(&junk, &cx, &mut Vec::new());
            let _ = response_head(&noise, &cx, &mut Vec::new());
            let _ = Chunked::new().feed(&noise, |_| {});
        }
    }

    #[test]
    fn malformed_chunked_bodies_are_errors() {
        for bad in [
            &b"zz\r\nhello\r\n0\r\n\r\n"[..],
            b"5\r\nhelloXX0\r\n\r\n",
            b"5\nhello\r\n0\r\n\r\n",
            b"\r\n",
            b"10000000000000000\r\n",
            b"0\r\nbad\ntrailer\r\n\r\n",
        ] {
            let mut dec = Chunked::new();
            assert!(dec.feed(bad, |_| {}).is_err(), "{}", String::from_utf8_lossy(bad));
        }
        let mut long_ext = b"5;".to_vec();
        long_ext.extend(std::iter::repeat_n(b'x', 5000));
        assert!(Chunked::new().feed(&long_ext, |_| {}).is_err());
    }

    #[test]
    fn idle_buffers_hold_no_memory_and_grow_only_to_the_limit() {
        let mut b = Buf::new();
        assert_eq!(b.data.capacity(), 0);
        assert!(b.reserve(64 * 1024));
        assert_eq!(b.data.capacity(), BUF_SIZE);
        b.data.extend_from_slice(b"abc");
        b.consume(1);
        assert_eq!(b.bytes(), b"bc");
        b.consume(2);
        b.release();
        assert_eq!(b.data.capacity(), 0, "released when empty");
        assert!(b.reserve(BUF_SIZE));
        b.data.resize(BUF_SIZE, 7);
        assert!(!b.reserve(BUF_SIZE), "full at the limit");
        assert!(b.reserve(2 * BUF_SIZE), "grows up to a larger limit");
        assert!(b.data.capacity() >= 2 * BUF_SIZE);
        assert_eq!(h2_preface(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), Some(true));
        assert_eq!(h2_preface(b"PRI * HT"), None);
        assert_eq!(h2_preface(b"GET / HTTP/1.1"), Some(false));
        assert_eq!(itoa(0, &mut [0; 20]), b"0");
        assert_eq!(itoa(u64::MAX, &mut [0; 20]), u64::MAX.to_string().as_bytes());
    }
}
