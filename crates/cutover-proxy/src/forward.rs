//! The request path: one atomic load picks the color, then an endpoint of that color gets the
//! request and the response streams back. The request stays on that color to its last byte.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use http::{Request, Response, StatusCode, Uri, Version};
use http_body::Body as _;
use http_body_util::BodyExt as _;
use hyper::body::Incoming;

use crate::body::RespBody;
use crate::error::{ProxyError, Source};
use crate::exchange::{self, Exchange, Failed, ReplayFacts};
use crate::headers::{self, Class, Codings};
use crate::request_body::{BodyTooLarge, ClientFault, ReqBody};
use crate::route::{Endpoint, EndpointLoad};
use crate::settings::{Protocol, ServiceSettings};
use crate::shared::{Choice, Model};
use crate::upstream::{Conn, ConnectError, SendError};
use crate::Refusal;

pub use crate::exchange::Forwarder;

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Who is on the other end of a client connection, worked out once per connection.
#[derive(Clone)]
pub struct Peer {
    pub addr: SocketAddr,
    /// `addr`'s IP as a header value, for `X-Forwarded-For`.
    pub ip: HeaderValue,
    /// One of the service's trusted proxies: its forwarding headers are kept.
    pub trusted: bool,
    /// The connection came over TLS: `X-Forwarded-Proto: https`.
    pub https: bool,
}

impl Peer {
    pub fn new(addr: SocketAddr, settings: &ServiceSettings) -> Peer {
        Peer {
            addr,
            ip: HeaderValue::from_str(&addr.ip().to_string()).expect("an IP address is a valid header value"),
            trusted: !settings.trusted_proxies.is_empty() && settings.trusted_proxies.contains(addr.ip()),
            https: false,
        }
    }
}

/// Remove what must not be forwarded as it came: hop-by-hop headers (those `Connection`
/// names too, unless the proxy needs them) and `x-cutover-*`. `te: trailers` survives: gRPC
/// needs it end to end. Transfer-Encoding goes (hyper frames the message anew);
/// Content-Length stays (hyper frames from it). Forwarding headers are `forwarding`'s.
fn strip(h: &mut HeaderMap) {
    let special = |n: &HeaderName| {
        matches!(
            headers::class(n.as_str().as_bytes()),
            Class::HopByHop | Class::Te | Class::Cutover | Class::TransferEncoding
        )
    };
    // Most messages carry none of these: one pass of cheap name comparisons first.
    if !h.keys().any(special) {
        return;
    }
    if let Some(c) = h.get(header::CONNECTION) {
        let named: Vec<HeaderName> = headers::list(c.as_bytes())
            .filter_map(|t| HeaderName::from_bytes(t).ok())
            .filter(|n| headers::class(n.as_str().as_bytes()).removable_by_connection())
            .collect();
        for n in named {
            h.remove(n);
        }
    }
    let trailers = h
        .get(header::TE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    let gone: Vec<HeaderName> = h.keys().filter(|n| special(n)).cloned().collect();
    for n in gone {
        h.remove(n);
    }
    if trailers {
        h.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

/// The rules a request must meet before any of it is forwarded, the same as the HTTP/1.1
/// engine's: one framing, a valid Transfer-Encoding, a plain Host, no header line past the
/// per-line limit, a body within the size limit.
fn check(parts: &mut http::request::Parts, settings: &ServiceSettings) -> Result<(), ProxyError> {
    let max_line = settings.max_header_line_bytes;
    if parts.method == http::Method::CONNECT {
        return Err(exchange::malformed("CONNECT is not supported by a reverse proxy"));
    }
    if parts.uri.to_string().len() + parts.method.as_str().len() + 10 > max_line {
        return Err(ProxyError::new(
            StatusCode::URI_TOO_LONG,
            "uri_too_long",
            Source::Client,
            "the request line is longer than limits.max_header_line_bytes",
        ));
    }
    let h1 = parts.version < Version::HTTP_2;
    // An absolute-form target names the host (RFC 9112 §3.2.2): it replaces Host.
    if h1 {
        if let Some(a) = parts.uri.authority() {
            if let Ok(v) = HeaderValue::from_str(a.as_str()) {
                parts.headers.insert(header::HOST, v);
            }
        }
        if parts.version == Version::HTTP_11 && !parts.headers.contains_key(header::HOST) {
            return Err(exchange::malformed("HTTP/1.1 request without a host header"));
        }
    }
    check_framing(&mut parts.headers, settings)?;
    let mut hosts = parts.headers.get_all(header::HOST).iter();
    if let Some(host) = hosts.next() {
        if hosts.next().is_some() {
            return Err(exchange::malformed("more than one host header"));
        }
        if !headers::valid_host(host.as_bytes()) {
            return Err(exchange::malformed(format!(
                "malformed host header {:?}: expected host[:port] without userinfo, path or list",
                String::from_utf8_lossy(host.as_bytes())
            )));
        }
    }
    if let Some(a) = parts.uri.authority() {
        if a.as_str().contains('@') || !headers::valid_host(a.as_str().as_bytes()) {
            return Err(exchange::malformed(format!("malformed authority {:?}", a.as_str())));
        }
    }
    Ok(())
}

/// The header lines and the body's framing: one line per header within the limit, a valid
/// Transfer-Encoding alone, one Content-Length within the body limit (restated without
/// leading zeros, as the HTTP/1.1 engine writes it).
fn check_framing(h: &mut HeaderMap, settings: &ServiceSettings) -> Result<(), ProxyError> {
    if h.iter()
        .any(|(k, v)| k.as_str().len() + v.len() + 4 > settings.max_header_line_bytes)
    {
        return Err(exchange::header_line_too_large());
    }
    if h.contains_key(header::TRANSFER_ENCODING) {
        if h.contains_key(header::CONTENT_LENGTH) {
            return Err(exchange::malformed(
                "both content-length and transfer-encoding: ambiguous message length",
            ));
        }
        match headers::transfer_codings(h.get_all(header::TRANSFER_ENCODING).iter().map(|v| v.as_bytes())) {
            Codings::Chunked => {}
            Codings::Unsupported(c) => {
                return Err(exchange::unsupported_coding(format!(
                    "transfer coding {c:?} is not supported: only chunked is"
                )))
            }
            Codings::NotChunkedFinal => {
                return Err(exchange::malformed(
                    "transfer-encoding whose final coding is not chunked",
                ))
            }
            Codings::Invalid(m) => return Err(exchange::malformed(m)),
        }
    }
    let mut lengths = h.get_all(header::CONTENT_LENGTH).iter();
    if let Some(first) = lengths.next() {
        let n =
            headers::content_length(first.as_bytes()).ok_or_else(|| exchange::malformed("malformed content-length"))?;
        if lengths.next().is_some() {
            return Err(exchange::malformed("more than one content-length header"));
        }
        exchange::within_body_limit(n, settings)?;
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
    }
    Ok(())
}

/// Write the forwarding headers ([`headers::Forwarded::write`]) in place of the request's
/// own; `Forwarded` and `X-Real-IP` stay only from a trusted proxy.
fn forwarding(h: &mut HeaderMap, peer: &Peer, host: Option<&HeaderValue>) -> Result<(), ProxyError> {
    let mut lines = Lines::default();
    let f = headers::Forwarded {
        trusted: peer.trusted,
        peer_ip: peer.ip.as_bytes(),
        scheme: if peer.https { b"https" } else { b"http" },
        proto: h.get(&X_FORWARDED_PROTO).map(HeaderValue::as_bytes),
        fwd_host: h.get(&X_FORWARDED_HOST).map(HeaderValue::as_bytes),
        host: host.map(HeaderValue::as_bytes),
    };
    f.write(
        h.get_all(&X_FORWARDED_FOR).iter().map(HeaderValue::as_bytes),
        &mut lines,
    );
    h.remove(&X_FORWARDED_FOR);
    h.remove(&X_FORWARDED_PROTO);
    h.remove(&X_FORWARDED_HOST);
    for (name, value) in lines.done {
        let value = HeaderValue::from_bytes(&value).map_err(|_| exchange::malformed(format!("malformed {name}")))?;
        h.insert(HeaderName::from_static(name), value);
    }
    if !peer.trusted {
        h.remove(header::FORWARDED);
        h.remove("x-real-ip");
    }
    Ok(())
}

/// Header lines gathered for a header map.
#[derive(Default)]
struct Lines {
    done: Vec<(&'static str, Vec<u8>)>,
}

impl headers::HeaderSink for Lines {
    fn begin(&mut self, name: &'static str) {
        self.done.push((name, Vec::new()));
    }
    fn push(&mut self, value: &[u8]) {
        if let Some((_, v)) = self.done.last_mut() {
            v.extend_from_slice(value);
        }
    }
    fn end(&mut self) {}
}

/// The request's headers as they go upstream: hop-by-hop ones and the header route's token
/// out, the forwarding headers the proxy's own, an upgrade restated for this hop.
fn upstream_head(
    h: &mut HeaderMap,
    peer: &Peer,
    host: Option<&HeaderValue>,
    upgrade: Option<&HeaderValue>,
    settings: &ServiceSettings,
) -> Result<(), ProxyError> {
    strip(h);
    drop_route_token(h, settings);
    forwarding(h, peer, host)?;
    if let Some(u) = upgrade {
        h.insert(header::UPGRADE, u.clone());
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
    Ok(())
}

/// The header route's header is the tester's credential, not the model server's business.
fn drop_route_token(h: &mut HeaderMap, s: &ServiceSettings) {
    if let Some(r) = &s.header_route {
        h.remove(&r.header);
    }
}

/// The first bytes of a request body read already (to find its `model` on a shared
/// listener), and whether they are all of it.
pub(crate) type Start = Option<(Bytes, bool)>;
/// What routing reads of a request in this engine: its headers only. A `body_field` sticky
/// key is never looked for here: the first body frame is not at hand when the head is (it is
/// polled from the connection later), and waiting for it would delay or buffer the request;
/// such a request is keyless (drawn per request). Most clients reach the HTTP/1.1 engine,
/// which reads the field from the bytes that came with the head.
struct Heads<'a>(&'a HeaderMap);

impl crate::split::RequestView for Heads<'_> {
    fn header(&self, name: &http::HeaderName) -> Option<&[u8]> {
        self.0.get(name).map(|v| v.as_bytes())
    }
    fn body_prefix(&self) -> Option<std::borrow::Cow<'_, [u8]>> {
        None
    }
}

impl Forwarder {
    pub async fn handle(&self, req: Request<Incoming>, peer: &Peer) -> Response<RespBody> {
        match &self.shared {
            Some(shared) => self.handle_shared(shared, req, peer).await,
            None => self.handle_one(req, peer, None).await,
        }
    }

    /// On a shared listener: pick the service by the head, or by the body's first bytes,
    /// then run its exchange with those bytes sent first.
    async fn handle_shared(
        &self,
        shared: &exchange::SharedListener,
        req: Request<Incoming>,
        peer: &Peer,
    ) -> Response<RespBody> {
        let (choice, head) = {
            // HTTP/2 says the host in `:authority`, which hyper puts in the URI.
            let host = req
                .headers()
                .get(header::HOST)
                .map(HeaderValue::as_bytes)
                .or_else(|| req.uri().authority().map(|a| a.as_str().as_bytes()));
            let path = req.uri().path().as_bytes();
            let choice = shared.by_head(req.method(), host, path);
            let head = matches!(choice, Choice::ByModel(_)).then(|| (host.map(<[u8]>::to_vec), path.to_vec()));
            (choice, head)
        };
        let refuse = |e: ProxyError| e.into_response(&shared.name, None, false);
        match choice {
            Choice::Service(f) => f.handle_one(req, peer, None).await,
            Choice::Models(json) => models_response(json),
            Choice::Refuse(e) => refuse(e),
            Choice::ByModel(candidates) => {
                let (host, path) = head.unwrap_or_default();
                let (parts, mut body) = req.into_parts();
                let timeout = self.service.settings().header_read_timeout;
                let (start, ended, model) = match body_start(&mut body, timeout).await {
                    Ok(s) => s,
                    Err(e) => return refuse(e),
                };
                match shared.by_model(candidates, &model, host.as_deref(), &path) {
                    Ok(f) => {
                        f.handle_one(Request::from_parts(parts, body), peer, Some((start, ended)))
                            .await
                    }
                    Err(e) => refuse(e),
                }
            }
        }
    }

    async fn handle_one(&self, req: Request<Incoming>, peer: &Peer, start: Start) -> Response<RespBody> {
        let started = Instant::now();
        let svc = &*self.service;
        let begun = Exchange::begin(self, started, req.method(), &Heads(req.headers()), || {
            exchange::access(self, req.method(), req.uri().path().to_string(), peer.addr)
        });
        let mut ex = match begun {
            Ok(ex) => ex,
            Err(e) => return e.into_response(&svc.name, None, false),
        };
        match self.forward(req, peer, &mut ex, start).await {
            Ok(resp) => resp,
            Err(e) => {
                ex.failed(&e);
                e.into_response(&svc.name, Some(&ex.route), svc.settings().response_headers)
            }
        }
    }

    async fn forward(
        &self,
        req: Request<Incoming>,
        peer: &Peer,
        ex: &mut Exchange,
        start: Start,
    ) -> Result<Response<RespBody>, ProxyError> {
        let settings = &*self.service.settings();
        let (mut parts, body) = req.into_parts();
        let client_version = parts.version;
        check(&mut parts, settings)?;
        let pq = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        ex.mirror(self, &parts.method, pq, || crate::mirror::end_to_end(&parts.headers));
        let close = client_asks_close(&parts.headers);
        let original_host = host_of(&parts);
        // An upgrade (WebSocket) keeps its Upgrade through `strip`; the client's half of the
        // tunnel is taken out of the request before it goes upstream.
        let upgrade = upgrade_of(&parts, body.is_end_stream() && start.is_none(), settings);
        let client_side = upgrade
            .as_ref()
            .and_then(|_| parts.extensions.remove::<hyper::upgrade::OnUpgrade>());
        upstream_head(
            &mut parts.headers,
            peer,
            original_host.as_ref(),
            upgrade.as_ref(),
            settings,
        )?;
        let endpoint = ex.first_endpoint(self)?;
        let (mut resp, conn, mut load) = self
            .send_with_retries(parts, (body, start), ex, endpoint, original_host.as_ref())
            .await?;

        let switching = resp.status() == StatusCode::SWITCHING_PROTOCOLS && client_side.is_some();
        let upstream_side = switching.then(|| hyper::upgrade::on(&mut resp));
        let (mut parts, body) = resp.into_parts();
        check_response(&parts, switching).map_err(|m| exchange::bad_response(load.endpoint(), &m))?;
        let upgraded_to = parts.headers.get(header::UPGRADE).cloned();
        let sse = parts
            .headers
            .get(header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
        ex.answered(parts.status.as_u16(), sse);
        load.answered(parts.status.as_u16());
        // The client's protocol, not the upstream's: an HTTP/1.0 upstream's answer goes to an
        // HTTP/1.1 client as HTTP/1.1 (hyper frames it for that client).
        parts.version = client_version;
        strip(&mut parts.headers);
        if close {
            parts
                .headers
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        if settings.response_headers {
            ex.route.tag(&mut parts.headers);
        }
        let deadline = tokio::time::Instant::from_std(ex.started) + settings.request_timeout;
        if let (Some(client), Some(upstream)) = (client_side.filter(|_| switching), upstream_side) {
            ex.tunnel();
            if let Some(u) = upgraded_to.or(upgrade) {
                parts.headers.insert(header::UPGRADE, u);
            }
            parts
                .headers
                .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            let guard = ex.guard.take().expect("the guard is taken once, here");
            let route = ex.route.clone();
            // The upstream connection is the tunnel's now: never pooled again.
            drop(conn);
            tokio::spawn(tunnel(client, upstream, route, deadline, (guard, load)));
            return Ok(Response::from_parts(parts, RespBody::full(Bytes::new())));
        }
        let guard = ex.guard.take().expect("the guard is taken once, here");
        let body = RespBody::proxied(body, guard, (load, conn), deadline, sse);
        Ok(Response::from_parts(parts, body))
    }
}

/// The request's host: its Host header, else its URI's authority (HTTP/2's `:authority`).
fn host_of(parts: &http::request::Parts) -> Option<HeaderValue> {
    parts.headers.get(header::HOST).cloned().or_else(|| {
        parts
            .uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    })
}

/// The Upgrade value of a request that asks to switch protocols the way the HTTP/1.1 engine
/// tunnels them: HTTP/1.1, no body, `Connection: upgrade`, an `Upgrade` the service tunnels
/// (never h2c), and an HTTP/1.1 upstream (HTTP/2 has no Upgrade). Any other upgrade request
/// is served as plain HTTP: `strip` drops its Upgrade and Connection tokens.
fn upgrade_of(parts: &http::request::Parts, no_body: bool, settings: &ServiceSettings) -> Option<HeaderValue> {
    if parts.version != Version::HTTP_11 || !no_body || settings.protocol != Protocol::Http1 {
        return None;
    }
    let asks = parts
        .headers
        .get_all(header::CONNECTION)
        .iter()
        .any(|v| headers::list(v.as_bytes()).any(|t| t.eq_ignore_ascii_case(b"upgrade")));
    let value = parts
        .headers
        .get(header::UPGRADE)
        .filter(|v| !v.is_empty() && settings.tunnels(v.as_bytes()))?;
    asks.then(|| value.clone())
}

/// After a 101 on the hyper path: bytes copied both ways between the client's and the
/// upstream's upgraded connections until either side closes, the request timeout, or the old
/// color's drain deadline (counted in `drain_closed`), as the HTTP/1.1 engine's tunnels do.
/// `held` (the color's and the endpoint's in-flight places) lasts as long as the session.
async fn tunnel<H: Send>(
    client: hyper::upgrade::OnUpgrade,
    upstream: hyper::upgrade::OnUpgrade,
    route: Arc<crate::route::ColorRoute>,
    deadline: tokio::time::Instant,
    held: H,
) {
    let _held = held;
    let (Ok(client), Ok(upstream)) = tokio::join!(client, upstream) else {
        return;
    };
    let (mut client, mut upstream) = (
        hyper_util::rt::TokioIo::new(client),
        hyper_util::rt::TokioIo::new(upstream),
    );
    if route.closing.load(std::sync::atomic::Ordering::Relaxed) {
        route
            .stats
            .drain_closed
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        return;
    }
    let mut closed = route.close_signal.subscribe();
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {}
        _ = tokio::time::sleep_until(deadline) => {}
        _ = closed.wait_for(|c| *c) => {
            route.stats.drain_closed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

impl Forwarder {
    /// Attempts until one gets a response head within the first-byte deadline, by the
    /// retry rule of [`exchange`].
    async fn send_with_retries(
        &self,
        parts: http::request::Parts,
        (body, start): (Incoming, Start),
        ex: &mut Exchange,
        endpoint: Arc<Endpoint>,
        host: Option<&HeaderValue>,
    ) -> Result<(Response<Incoming>, Conn, EndpointLoad), ProxyError> {
        let settings = &*self.service.settings();
        // A refcounted handle on the client's path, not a copy.
        let path = parts.uri.path_and_query().cloned();
        let key = parts.headers.contains_key(&IDEMPOTENCY_KEY);
        let (mut body, at_hand) = match start {
            Some(start) => body_from_start(start, body, settings)?,
            None => body_at_hand(&parts, body, key, settings).await?,
        };
        if let Some(c) = &ex.capture {
            match &at_hand {
                Some(b) => c.request_data(b),
                None => body.capture(c.clone()),
            }
        }
        // The head and body are kept for a second attempt only when the rule could allow one
        // (the body itself is read by the rule only if a reused connection dies).
        let method = parts.method.clone();
        let spare = at_hand
            .filter(|_| exchange::may_resend(&method, parts.uri.path().as_bytes(), key, settings))
            .map(|b| (parts.clone(), b));
        let fault = body.fault();
        let mut tries = Tries {
            req: Some(Request::from_parts(parts, body)),
            spare,
            method,
            path,
            key,
            host,
            settings,
            fault,
        };
        let limit = settings.first_byte_timeout;
        let ((resp, conn), load) = ex.attempts(self, &mut tries, endpoint, limit).await?;
        Ok((resp, conn, load))
    }
}

/// This engine's side of [`Exchange::attempts`]: the request, and what is kept of it for a
/// second attempt.
struct Tries<'a, F> {
    /// The request for the next attempt: the original, given back by an attempt that could
    /// not connect, or one rebuilt from `spare`.
    req: Option<Request<ReqBody>>,
    /// The head and whole body, kept only when the resend rule could allow a second attempt.
    spare: Option<(http::request::Parts, Bytes)>,
    method: http::Method,
    /// A refcounted handle on the client's path, not a copy.
    path: Option<PathAndQuery>,
    key: bool,
    host: Option<&'a HeaderValue>,
    settings: &'a ServiceSettings,
    /// Whether the client's body broke the attempt (too large, or cut off).
    fault: F,
}

impl<F: Fn() -> ClientFault> exchange::Attempts for Tries<'_, F> {
    type Answer = (Response<Incoming>, Conn);
    type Error = ProxyError;

    async fn attempt(&mut self, endpoint: &Arc<Endpoint>, fresh: bool) -> Result<Self::Answer, Failed<ProxyError>> {
        let Some(mut req) = self.req.take() else {
            // No spare means the rule refused, and a refusal never asks for a resend.
            return Err(Failed::Final(exchange::not_resent(endpoint, Refusal::BodyNotAtHand)));
        };
        prepare(
            &mut req,
            endpoint,
            self.settings.protocol,
            self.path.as_ref(),
            self.host,
        );
        match send(endpoint, req, fresh).await {
            Ok(answer) => Ok(answer),
            Err(Attempt::Connect(e, req)) => {
                self.req = Some(req);
                Err(Failed::Connect(e))
            }
            Err(Attempt::Failed { error, reused }) => {
                self.req = self
                    .spare
                    .as_ref()
                    .map(|(p, b)| Request::from_parts(p.clone(), ReqBody::full(b.clone())));
                let e = classify(&error, endpoint, (self.fault)(), self.settings.max_body_bytes);
                Err(if reused && died_before_response(&error) {
                    Failed::Stale(e)
                } else {
                    Failed::Final(e)
                })
            }
        }
    }

    fn resend(&self) -> Result<exchange::ResendReason, Refusal> {
        let facts = ReplayFacts {
            method: &self.method,
            path: self.path.as_ref().map_or(&b"/"[..], |p| p.path().as_bytes()),
            idempotency_key: self.key,
            body: self.spare.as_ref().map(|(_, b)| &b[..]),
        };
        exchange::resend(&facts, self.settings)
    }
}

static IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

/// The request body, and a copy of it when it is at hand: an empty body, or a small one
/// (Content-Length up to `REPLAY_BUFFER`) read whole first when the resend rule could let
/// the request go again, as the HTTP/1.1 engine does. The client has `header_read_timeout`
/// to send it, like a head. Any other body streams, never buffered.
async fn body_at_hand(
    parts: &http::request::Parts,
    body: Incoming,
    key: bool,
    settings: &ServiceSettings,
) -> Result<(ReqBody, Option<Bytes>), ProxyError> {
    if body.is_end_stream() {
        return Ok((ReqBody::new(body, settings.max_body_bytes), Some(Bytes::new())));
    }
    let small = body.size_hint().exact().is_some_and(|n| n <= exchange::REPLAY_BUFFER);
    if !small || !exchange::may_resend(&parts.method, parts.uri.path().as_bytes(), key, settings) {
        return Ok((ReqBody::new(body, settings.max_body_bytes), None));
    }
    let read = tokio::time::timeout(settings.header_read_timeout, body.collect()).await;
    let data = match read {
        Err(_) => {
            return Err(exchange::bad_body(
                "the client did not send its body within limits.header_read_timeout",
            ))
        }
        Ok(Err(e)) => return Err(exchange::bad_body(&e.to_string())),
        Ok(Ok(c)) => c.to_bytes(),
    };
    Ok((ReqBody::full(data.clone()), Some(data)))
}

/// The request body when its first bytes were read already: all of it at hand when they
/// were the whole body, else those bytes first and the rest streamed.
fn body_from_start(
    (start, ended): (Bytes, bool),
    body: Incoming,
    settings: &ServiceSettings,
) -> Result<(ReqBody, Option<Bytes>), ProxyError> {
    if !ended {
        return Ok((ReqBody::prefixed(start, body, settings.max_body_bytes), None));
    }
    exchange::within_body_limit(start.len() as u64, settings)?;
    Ok((ReqBody::full(start.clone()), Some(start)))
}

/// Reads a body's first bytes until they say what its `model` is (at most about
/// [`crate::shared::MODEL_PEEK`]), within the client's `header_read_timeout`. Returns them,
/// whether they are the whole body, and the verdict. A trailer section is not kept: the JSON
/// bodies routed by model do not have one.
async fn body_start(body: &mut Incoming, timeout: std::time::Duration) -> Result<(Bytes, bool, Model), ProxyError> {
    let mut buf = bytes::BytesMut::new();
    let read = async {
        loop {
            let ended = body.is_end_stream();
            if let Some(m) = Model::read(&buf, ended) {
                return Ok((ended, m));
            }
            match body.frame().await {
                None => return Ok((true, Model::read(&buf, true).unwrap_or(Model::Missing))),
                Some(Err(e)) => return Err(exchange::bad_body(&e.to_string())),
                Some(Ok(f)) => {
                    if let Ok(d) = f.into_data() {
                        buf.extend_from_slice(&d);
                    }
                }
            }
        }
    };
    let (ended, model) = tokio::time::timeout(timeout, read).await.map_err(|_| {
        exchange::bad_body("the client did not send the start of its body within limits.header_read_timeout")
    })??;
    Ok((buf.freeze(), ended, model))
}

/// The answer to `GET /v1/models` on a shared listener.
fn models_response(json: String) -> Response<RespBody> {
    let mut resp = Response::new(RespBody::full(json));
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

/// Whether any `Connection` line of the request says close, read byte by byte (hyper's own
/// reading gives up on a line that is not valid text).
fn client_asks_close(h: &HeaderMap) -> bool {
    h.get_all(header::CONNECTION)
        .iter()
        .any(|v| headers::list(v.as_bytes()).any(|t| t.eq_ignore_ascii_case(b"close")))
}

/// What the HTTP/1.1 engine refuses in an upstream's response, refused here too (502): a
/// transfer coding other than chunked, both framings at once, an upgrade nobody asked for.
fn check_response(parts: &http::response::Parts, upgrade_asked: bool) -> Result<(), String> {
    if parts.status == StatusCode::SWITCHING_PROTOCOLS && !upgrade_asked {
        return Err("101 Switching Protocols to a request whose upgrade was not forwarded".into());
    }
    let h = &parts.headers;
    if h.contains_key(header::TRANSFER_ENCODING) {
        if h.contains_key(header::CONTENT_LENGTH) {
            return Err("both content-length and transfer-encoding".into());
        }
        if headers::transfer_codings(h.get_all(header::TRANSFER_ENCODING).iter().map(|v| v.as_bytes()))
            != Codings::Chunked
        {
            return Err("a transfer coding other than chunked".into());
        }
    }
    Ok(())
}

/// A failure of a reused connection that looks like the upstream closed it as we wrote:
/// nothing of a response came back.
fn died_before_response(e: &hyper::Error) -> bool {
    if e.is_incomplete_message() || e.is_canceled() {
        return true;
    }
    let mut src: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = src {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind as K;
            return matches!(
                io.kind(),
                K::ConnectionReset | K::BrokenPipe | K::ConnectionAborted | K::UnexpectedEof
            );
        }
        src = s.source();
    }
    false
}

/// Point the request at `endpoint` in the form its protocol wants.
fn prepare(
    req: &mut Request<ReqBody>,
    endpoint: &Endpoint,
    protocol: Protocol,
    path: Option<&PathAndQuery>,
    host: Option<&HeaderValue>,
) {
    match protocol {
        Protocol::Http1 => {
            *req.version_mut() = Version::HTTP_11;
            // HTTP/1.1 clients already send origin-form; only HTTP/2 clients' absolute URIs
            // need rewriting.
            if req.uri().scheme().is_some() || req.uri().authority().is_some() {
                let pq = path.cloned().unwrap_or_else(|| PathAndQuery::from_static("/"));
                *req.uri_mut() = Uri::from(pq);
            }
            if !req.headers().contains_key(header::HOST) {
                let h = host
                    .cloned()
                    .or_else(|| HeaderValue::from_str(&endpoint.addr.to_string()).ok());
                if let Some(h) = h {
                    req.headers_mut().insert(header::HOST, h);
                }
            }
        }
        Protocol::H2c => {
            *req.version_mut() = Version::HTTP_2;
            let authority = host
                .and_then(|h| h.to_str().ok())
                .map(str::to_string)
                .unwrap_or_else(|| endpoint.addr.to_string());
            if let Ok(u) = Uri::builder()
                .scheme(if endpoint.pool.tls().is_some() { "https" } else { "http" })
                .authority(authority)
                .path_and_query(path.cloned().unwrap_or_else(|| PathAndQuery::from_static("/")))
                .build()
            {
                *req.uri_mut() = u;
            }
            req.headers_mut().remove(header::HOST);
        }
    }
}

// The request rides back on the rare retry path; the Ok side carries a Response of
// similar size, so boxing would add an allocation without shrinking the Result.
#[allow(clippy::large_enum_variant)]
enum Attempt {
    /// No connection could be made; the request is returned untouched.
    Connect(ConnectError, Request<ReqBody>),
    /// The request (or part of it) may have reached the upstream.
    Failed { error: hyper::Error, reused: bool },
}

/// Send on a pooled connection (unless `fresh`), or a new one. A pooled connection that
/// died while idle gives the request back and the next one is tried.
async fn send(
    endpoint: &Arc<Endpoint>,
    mut req: Request<ReqBody>,
    fresh: bool,
) -> Result<(Response<Incoming>, Conn), Attempt> {
    while let Some(mut conn) = if fresh { None } else { endpoint.pool.take() } {
        match conn.send(req).await {
            Ok(resp) => return Ok((resp, conn)),
            Err(SendError::NotSent(r)) => req = r,
            Err(SendError::Failed(error)) => return Err(Attempt::Failed { error, reused: true }),
        }
    }
    let mut conn = match endpoint.pool.connect().await {
        Ok(c) => c,
        Err(e) => return Err(Attempt::Connect(e, req)),
    };
    match conn.send(req).await {
        Ok(resp) => Ok((resp, conn)),
        Err(SendError::NotSent(r)) => Err(Attempt::Connect(
            ConnectError::Io(std::io::Error::other("connection closed at once")),
            r,
        )),
        Err(SendError::Failed(error)) => Err(Attempt::Failed { error, reused: false }),
    }
}

fn classify(e: &hyper::Error, endpoint: &Endpoint, fault: ClientFault, limit: u64) -> ProxyError {
    if fault == ClientFault::TooLarge {
        return ProxyError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            Source::Client,
            format!("request body larger than the limit of {limit} bytes"),
        );
    }
    if fault == ClientFault::Failed {
        return ProxyError::new(
            StatusCode::BAD_REQUEST,
            "client_body_failed",
            Source::Client,
            format!("reading the request body failed: {e}"),
        );
    }
    let mut src: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = src {
        if let Some(t) = s.downcast_ref::<BodyTooLarge>() {
            return ProxyError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                Source::Client,
                t.to_string(),
            );
        }
        src = s.source();
    }
    if e.is_parse() {
        return ProxyError::new(
            StatusCode::BAD_GATEWAY,
            "upstream_bad_response",
            Source::Upstream,
            format!("{} sent a malformed response: {e}", endpoint.addr),
        );
    }
    if e.is_user() || e.is_body_write_aborted() {
        return ProxyError::new(
            StatusCode::BAD_REQUEST,
            "client_body_failed",
            Source::Client,
            format!("reading the request body failed: {e}"),
        );
    }
    ProxyError::new(
        StatusCode::BAD_GATEWAY,
        "upstream_failed",
        Source::Upstream,
        format!("{} failed before answering: {e}", endpoint.addr),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_go_and_te_trailers_stays() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("keep-alive, x-private"));
        h.insert("x-private", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert("x-kept", HeaderValue::from_static("yes"));
        strip(&mut h);
        assert!(h.get("x-private").is_none());
        assert!(h.get("keep-alive").is_none());
        assert!(h.get(header::CONNECTION).is_none());
        assert!(h.get(header::UPGRADE).is_none());
        assert_eq!(h.get(header::TE).unwrap(), "trailers");
        assert_eq!(h.get("x-kept").unwrap(), "yes");

        let mut h = HeaderMap::new();
        h.insert(header::TE, HeaderValue::from_static("gzip"));
        strip(&mut h);
        assert!(h.get(header::TE).is_none());
    }
}
