//! One request's lifecycle, shared by both engines (the own HTTP/1.1 engine in `h1` and the
//! hyper engine in `forward`): pick the route with one atomic load, hold the color's
//! in-flight guard, choose endpoints, run the attempt loop and decide whether a failed
//! attempt may go again, count what happened, and build the proxy's own error answers. The
//! engines keep only the wire: each implements [`Attempts`] (one attempt) and its relay.
//!
//! A feature that touches every request (mirroring to the idle color, weighted routing, a
//! new statistic) is one change here.

use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{HeaderMap, Method, StatusCode};

use crate::error::{ProxyError, Source};
use crate::guard::{Access, Guard, Kind};
use crate::route::Service;
use crate::route::{ColorRoute, Endpoint, EndpointLoad};
use crate::settings::ServiceSettings;
pub(crate) use crate::split::RequestView;
use crate::upstream::ConnectError;

/// Bodies up to this size are read whole before the request is sent, so it can be sent
/// again: a chat request is a few KiB; an image upload is streamed.
pub(crate) const REPLAY_BUFFER: u64 = 64 * 1024;

/// Forwards the requests of one listener (live or preview) of one service.
pub struct Forwarder {
    pub service: Arc<Service>,
    /// The preview listener routes to the idle color instead of the live one.
    pub preview: bool,
    /// The service's name, shared with access-log lines.
    pub(crate) service_name: Arc<str>,
    /// Set on a shared listener's forwarder: each request goes to the service it picks
    /// (`service` is then the listener's own, routing nowhere, whose settings are the
    /// connections').
    pub shared: Option<Arc<SharedListener>>,
}

/// A shared listener's services, each behind its forwarder.
pub type SharedListener = crate::shared::Shared<Arc<Forwarder>>;

impl crate::shared::Target for Arc<Forwarder> {
    fn service(&self) -> &Service {
        &self.service
    }
}

impl Forwarder {
    pub fn new(service: Arc<Service>, preview: bool) -> Forwarder {
        let service_name = Arc::from(service.name.as_str());
        Forwarder {
            service,
            preview,
            service_name,
            shared: None,
        }
    }

    /// The forwarder of a shared listener: its connections take `settings` (limits,
    /// timeouts, trusted proxies), each request the service `shared` picks for it.
    pub fn for_shared(shared: SharedListener, settings: ServiceSettings) -> Forwarder {
        let front = Service::new(shared.name.clone(), settings, crate::route::RouteTable::default());
        let mut fwd = Forwarder::new(front, false);
        fwd.shared = Some(Arc::new(shared));
        fwd
    }
}

/// A request on its way: pinned to one color from its first byte to its last.
pub(crate) struct Exchange {
    pub(crate) route: Arc<ColorRoute>,
    /// Held until the response's last byte (then handed to the response body), so the
    /// color's in-flight count covers streams.
    pub(crate) guard: Option<Guard>,
    pub(crate) started: Instant,
    retries: Retries,
    /// Set when the shadow comparison copies this exchange: the request body's side.
    pub(crate) capture: Option<Arc<crate::mirror::Capture>>,
}

impl Exchange {
    /// Load the route table once, pick the color (`req` is read only while a progressive
    /// release splits traffic, or for the header route) and take a place in the color's
    /// in-flight count. Err: nothing to route to on this listener (no route, so nothing to
    /// count), or the header route was asked for without its token.
    pub(crate) fn begin(
        fwd: &Forwarder,
        started: Instant,
        method: &Method,
        req: &impl RequestView,
        access: impl FnOnce() -> Access,
    ) -> Result<Exchange, ProxyError> {
        let settings = fwd.service.settings();
        let route = fwd
            .service
            .target(fwd.preview, &settings, req)
            .map_err(|_| header_route_refused(&settings))?
            .ok_or_else(|| no_route(fwd))?;
        let access = settings.access_log.then(|| Box::new(access()));
        let post = *method == Method::POST;
        Ok(Exchange {
            guard: Some(Guard::new(route.clone(), started, post, access)),
            route,
            started,
            retries: Retries::default(),
            capture: None,
        })
    }

    /// The endpoint for the first attempt.
    pub(crate) fn first_endpoint(&self, fwd: &Forwarder) -> Result<Arc<Endpoint>, ProxyError> {
        self.route.pick(None).ok_or_else(|| no_endpoint(fwd, &self.route))
    }

    /// An attempt on `endpoint` failed with `retry` and error `e`: what to do next.
    /// `resend` is the request's verdict under [`resend`] (asked only when a reused
    /// connection died under it, so the engines can read the request's facts lazily).
    fn after_failure(
        &mut self,
        retry: Retry,
        endpoint: &Arc<Endpoint>,
        e: ProxyError,
        resend: impl FnOnce() -> Result<ResendReason, Refusal>,
    ) -> Next {
        match retry {
            // Nothing was sent: another endpoint of the same color, once; never the other color.
            Retry::OtherEndpoint if !self.retries.moved => match self.route.pick(Some(endpoint)) {
                Some(next) => {
                    self.retries.moved = true;
                    Next::OtherEndpoint(next)
                }
                None => Next::GiveUp(e),
            },
            Retry::OtherEndpoint => Next::GiveUp(e),
            // Most likely the upstream closed an idle connection as we reused it; it may
            // also have read the request, so only a request that is safe to repeat goes
            // again, once, on a new connection to the same endpoint.
            Retry::ReusedConnection if !self.retries.refreshed => match resend() {
                Ok(reason) => {
                    self.retries.refreshed = true;
                    self.route.stats.record_resend(reason);
                    Next::FreshConnection
                }
                Err(why) => {
                    self.route.stats.record_not_resent(why);
                    Next::GiveUp(not_resent(endpoint, why))
                }
            },
            Retry::ReusedConnection => Next::GiveUp(e),
        }
    }

    /// The one attempt loop of both engines: attempts (each engine's own, through
    /// [`Attempts`]) on `endpoint` and then where [`Exchange::after_failure`] says, until one
    /// gets a response head or `first_byte_timeout` from the request's start passes.
    pub(crate) async fn attempts<A: Attempts>(
        &mut self,
        fwd: &Forwarder,
        a: &mut A,
        mut endpoint: Arc<Endpoint>,
        limit: Duration,
    ) -> Result<(A::Answer, EndpointLoad), A::Error> {
        let deadline = tokio::time::Instant::from_std(self.started) + limit;
        let mut fresh = false;
        loop {
            let load = endpoint.claim();
            let (retry, e) = match tokio::time::timeout_at(deadline, a.attempt(&endpoint, fresh)).await {
                Err(_) => return Err(first_byte_timeout(&endpoint, limit).into()),
                Ok(Ok(answer)) => return Ok((answer, load)),
                Ok(Err(Failed::Connect(e))) => {
                    tracing::debug!(service = %fwd.service.name, endpoint = %endpoint.addr, error = %e, "upstream connect failed");
                    (Retry::OtherEndpoint, connect_failed(&e, &endpoint, &self.route))
                }
                Ok(Err(Failed::Stale(e))) => (Retry::ReusedConnection, e),
                Ok(Err(Failed::Final(e))) => return Err(e),
            };
            match self.after_failure(retry, &endpoint, e, || a.resend()) {
                Next::OtherEndpoint(next) => endpoint = next,
                Next::FreshConnection => fresh = true,
                Next::GiveUp(e) => return Err(e.into()),
            }
        }
    }

    /// The response head arrived: time to first byte and status are counted now.
    pub(crate) fn answered(&mut self, status: u16, sse: bool) {
        self.route.stats.ttfb.observe(self.started.elapsed());
        self.route.stats.record_status(status);
        if let Some(g) = self.guard.as_mut() {
            g.answered(status, sse);
            g.mirror_head(sse);
        }
    }

    /// On the live listener, while a shadow comparison runs: copy this exchange if the tap
    /// samples it (`headers` is built only then). One atomic load when none runs.
    pub(crate) fn mirror(&mut self, fwd: &Forwarder, method: &Method, path: &str, headers: impl FnOnce() -> HeaderMap) {
        if fwd.preview {
            return;
        }
        let capture = fwd.service.mirror(method, || path, headers);
        self.attach(capture);
    }

    /// A copy decided by the engine itself (the HTTP/1.1 engine decides before its head's
    /// bytes are released).
    pub(crate) fn attach(&mut self, capture: Option<Arc<crate::mirror::Capture>>) {
        let Some(c) = capture else { return };
        if let Some(g) = self.guard.as_mut() {
            g.mirror(c.clone());
        }
        self.capture = Some(c);
    }

    /// The exchange became a tunnel (101 Switching Protocols): still in flight until it
    /// closes, but not a latency sample.
    pub(crate) fn tunnel(&mut self) {
        if let Some(g) = self.guard.as_mut() {
            g.kind = Kind::Tunnel;
        }
    }

    /// The request ends with the proxy's own error: count it (as an upstream failure unless
    /// the client was to blame) and leave the in-flight count.
    pub(crate) fn failed(&mut self, e: &ProxyError) {
        if let Some(mut g) = self.guard.take() {
            g.set_status(e.status.as_u16());
        }
        self.route.stats.record_status(e.status.as_u16());
        if e.source != Source::Client {
            self.route.stats.upstream_failures.fetch_add(1, Relaxed);
        }
    }
}

/// What an engine does for [`Exchange::attempts`] (pingora's `proxy_common` split): one
/// attempt on one connection, and the request's verdict under [`resend`].
pub(crate) trait Attempts {
    /// What a successful attempt hands to the engine's relay: the response head and the
    /// upstream connection.
    type Answer;
    /// The engine's own error (its proxy error, or more: a client that went away).
    type Error: From<ProxyError>;

    /// Send the request to `endpoint` (on a new connection when `fresh`, else on a pooled
    /// one if any) and read the response head.
    async fn attempt(&mut self, endpoint: &Arc<Endpoint>, fresh: bool) -> Result<Self::Answer, Failed<Self::Error>>;

    /// Whether the request may go again after a reused connection died under it (asked only
    /// then, so the engine reads the request's facts lazily).
    fn resend(&self) -> Result<ResendReason, Refusal>;
}

/// Why an attempt got no response head.
pub(crate) enum Failed<E> {
    /// No connection could be made: nothing was sent, another endpoint may be tried.
    Connect(ConnectError),
    /// A reused connection died before any byte of response (the error if it is not sent
    /// again).
    Stale(ProxyError),
    /// Nothing more to try: answer with this.
    Final(E),
}

impl<E> From<E> for Failed<E> {
    fn from(e: E) -> Failed<E> {
        Failed::Final(e)
    }
}

/// The one check of a body length known up front (Content-Length, or a body read whole)
/// against `max_body_bytes`, on both engines.
pub(crate) fn within_body_limit(n: u64, s: &ServiceSettings) -> Result<(), ProxyError> {
    if n > s.max_body_bytes {
        return Err(too_large(n, s.max_body_bytes));
    }
    Ok(())
}

/// What a failed attempt allows, decided where the failure happened (pingora's
/// `RetryType`; a failure that allows nothing is [`Failed::Final`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Retry {
    /// No connection could be made, so nothing was sent.
    OtherEndpoint,
    /// A reused keep-alive connection died before any byte of response.
    ReusedConnection,
}

/// What of a request decides whether it may be sent again after a reused connection died
/// under it, read by each engine from its own representation of the request.
pub(crate) struct ReplayFacts<'a> {
    pub(crate) method: &'a Method,
    /// The path, without the query.
    pub(crate) path: &'a [u8],
    /// The request carries an `Idempotency-Key` header (IETF httpapi draft): the client says
    /// a repeat has the effect of one request.
    pub(crate) idempotency_key: bool,
    /// The whole body as it went out, when it is still at hand (`Some(b"")` for no body);
    /// `None`: part of it was streamed and is gone.
    pub(crate) body: Option<&'a [u8]>,
}

/// The one resend rule of both engines (RFC 9110 §9.2.2: a proxy repeats a non-idempotent
/// request only when it knows the repeat is safe). An idempotent method may go again;
/// another only when `retry_non_idempotent` is on and the request carries an
/// `Idempotency-Key` or has its path in `retry_paths` with a body that asks to store
/// nothing (`"store": true`). Either way the whole body must still be at hand.
pub(crate) fn resend(f: &ReplayFacts<'_>, s: &ServiceSettings) -> Result<ResendReason, Refusal> {
    let reason = if idempotent(f.method) {
        ResendReason::IdempotentMethod
    } else if !s.retry_non_idempotent {
        return Err(Refusal::Disabled);
    } else if f.idempotency_key {
        ResendReason::IdempotencyKey
    } else if s.retry_paths.iter().any(|p| p.as_bytes() == f.path) {
        ResendReason::RetryPath
    } else {
        return Err(Refusal::NotRetryPath);
    };
    let body = f.body.ok_or(Refusal::BodyNotAtHand)?;
    if reason == ResendReason::RetryPath && asks_to_store(body) {
        return Err(Refusal::AsksToStore);
    }
    Ok(reason)
}

/// Whether the rule could ever allow a resend of this request once its body is at hand: the
/// hyper engine buffers a small body only then (an upload to `/v1/files` keeps streaming).
pub(crate) fn may_resend(method: &Method, path: &[u8], idempotency_key: bool, s: &ServiceSettings) -> bool {
    let facts = ReplayFacts {
        method,
        path,
        idempotency_key,
        body: Some(b""),
    };
    resend(&facts, s).is_ok()
}

/// A JSON body that sets `"store": true` anywhere (OpenAI's `/v1/responses` and chat
/// completions store the answer server-side then): read as bytes, not parsed, so a nested
/// `store` counts too; erring towards "stores" only costs a 502 instead of a repeat.
pub(crate) fn asks_to_store(body: &[u8]) -> bool {
    const KEY: &[u8] = b"\"store\"";
    let mut rest = body;
    while let Some(at) = rest.windows(KEY.len()).position(|w| w == KEY) {
        rest = &rest[at + KEY.len()..];
        let after = rest.trim_ascii_start();
        if let Some(value) = after.strip_prefix(b":") {
            if value.trim_ascii_start().starts_with(b"true") {
                return true;
            }
        }
    }
    false
}

pub use crate::resend::{Refusal, ResendReason};

/// The next step after a failed attempt.
enum Next {
    OtherEndpoint(Arc<Endpoint>),
    FreshConnection,
    /// Answer the client with this error.
    GiveUp(ProxyError),
}

/// Retries already spent: one move to another endpoint, one fresh connection.
#[derive(Default)]
struct Retries {
    moved: bool,
    refreshed: bool,
}

/// RFC 9110 §9.2.2: methods whose repetition has the same effect as one request.
pub(crate) fn idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// What an access-log line starts with.
pub(crate) fn access(fwd: &Forwarder, method: &Method, path: String, peer: SocketAddr) -> Access {
    Access {
        service: fwd.service_name.clone(),
        method: method.clone(),
        path,
        peer,
        status: 0,
    }
}

/// The header route's header came with a value that is none of its tokens: refused rather
/// than ignored, so a tester whose token is wrong learns it instead of silently testing the
/// live version.
fn header_route_refused(s: &ServiceSettings) -> ProxyError {
    let header = s.header_route.as_ref().map_or("", |r| r.header.as_str());
    ProxyError::new(
        StatusCode::FORBIDDEN,
        "header_route_refused",
        Source::Client,
        format!("the {header} header reaches the idle color only with a valid token"),
    )
}

/// Nothing to route to on this listener.
pub(crate) fn no_route(fwd: &Forwarder) -> ProxyError {
    let svc = &fwd.service.name;
    let msg = if fwd.preview {
        format!("service {svc} has no idle color to preview")
    } else {
        format!("service {svc} has no live color yet: switch to a color or release a version first")
    };
    ProxyError::new(StatusCode::SERVICE_UNAVAILABLE, "no_live_color", Source::Routing, msg)
}

pub(crate) fn no_endpoint(fwd: &Forwarder, route: &ColorRoute) -> ProxyError {
    ProxyError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "no_healthy_endpoint",
        Source::Routing,
        format!(
            "no healthy endpoint in color {} of service {}",
            route.color, fwd.service.name
        ),
    )
}

pub(crate) fn first_byte_timeout(endpoint: &Endpoint, limit: Duration) -> ProxyError {
    ProxyError::new(
        StatusCode::GATEWAY_TIMEOUT,
        "upstream_timeout",
        Source::Upstream,
        format!(
            "{} did not answer within limits.first_byte_timeout ({limit:?})",
            endpoint.addr
        ),
    )
}

/// No endpoint of the color could be reached (after the one retry).
pub(crate) fn connect_failed(e: &ConnectError, endpoint: &Endpoint, route: &ColorRoute) -> ProxyError {
    let status = if matches!(e, ConnectError::Timeout) {
        StatusCode::GATEWAY_TIMEOUT
    } else {
        StatusCode::BAD_GATEWAY
    };
    // A certificate problem is a configuration problem, not a down server: its own code.
    let code = if matches!(e, ConnectError::Tls(_)) {
        "upstream_tls_failed"
    } else {
        "upstream_connect_failed"
    };
    ProxyError::new(
        status,
        code,
        Source::Upstream,
        format!("cannot reach {} of color {}: {e}", endpoint.addr, route.color),
    )
}

/// A reused connection died after the request went out and before any answer, and the
/// request is not safe to send again: the upstream may have acted on it.
pub(crate) fn not_resent(endpoint: &Endpoint, why: Refusal) -> ProxyError {
    ProxyError::new(
        StatusCode::BAD_GATEWAY,
        "upstream_closed_not_resent",
        Source::Upstream,
        format!(
            "{} closed a reused connection after the request went out and before any answer; it may have acted on the request, which is not sent again: {}",
            endpoint.addr,
            why.explain()
        ),
    )
}

pub(crate) fn upstream_failed(endpoint: &Endpoint, m: &str) -> ProxyError {
    ProxyError::new(
        StatusCode::BAD_GATEWAY,
        "upstream_failed",
        Source::Upstream,
        format!("{} {m}", endpoint.addr),
    )
}

pub(crate) fn bad_response(endpoint: &Endpoint, m: &str) -> ProxyError {
    ProxyError::new(
        StatusCode::BAD_GATEWAY,
        "upstream_bad_response",
        Source::Upstream,
        format!("{} sent a malformed response: {m}", endpoint.addr),
    )
}

pub(crate) fn too_large(n: u64, limit: u64) -> ProxyError {
    ProxyError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "body_too_large",
        Source::Client,
        format!("request body of {n} bytes is larger than the limit of {limit} bytes"),
    )
}

pub(crate) fn bad_body(m: &str) -> ProxyError {
    ProxyError::new(
        StatusCode::BAD_REQUEST,
        "client_body_failed",
        Source::Client,
        format!("reading the request body failed: {m}"),
    )
}

/// A request the framing, Host or header rules refuse (400).
pub(crate) fn malformed(m: impl Into<String>) -> ProxyError {
    ProxyError::new(StatusCode::BAD_REQUEST, "malformed_request", Source::Client, m)
}

pub(crate) fn unsupported_coding(m: impl Into<String>) -> ProxyError {
    ProxyError::new(
        StatusCode::NOT_IMPLEMENTED,
        "unsupported_transfer_coding",
        Source::Client,
        m,
    )
}

pub(crate) fn header_line_too_large() -> ProxyError {
    ProxyError::new(
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        "header_line_too_large",
        Source::Client,
        "a header line is longer than limits.max_header_line_bytes",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts<'a>(method: &'a Method, path: &'a str, key: bool, body: Option<&'a [u8]>) -> ReplayFacts<'a> {
        ReplayFacts {
            method,
            path: path.as_bytes(),
            idempotency_key: key,
            body,
        }
    }

    fn settings(master: bool) -> ServiceSettings {
        ServiceSettings {
            retry_non_idempotent: master,
            retry_paths: vec!["/v1/chat/completions".into()],
            ..ServiceSettings::default()
        }
    }

    #[test]
    fn the_resend_rule_reads_method_path_key_and_body() {
        let (post, get) = (Method::POST, Method::GET);
        let on = settings(true);
        let chat = br#"{"model":"m","messages":[]}"#;
        let cases: [(ReplayFacts<'_>, Result<ResendReason, Refusal>); 8] = [
            (facts(&get, "/x", false, Some(b"")), Ok(ResendReason::IdempotentMethod)),
            (facts(&get, "/x", false, None), Err(Refusal::BodyNotAtHand)),
            (
                facts(&post, "/v1/chat/completions", false, Some(chat)),
                Ok(ResendReason::RetryPath),
            ),
            (
                facts(&post, "/v1/chat/completions", true, None),
                Err(Refusal::BodyNotAtHand),
            ),
            (
                facts(&post, "/v1/chat/completions", false, Some(br#"{"store" : true}"#)),
                Err(Refusal::AsksToStore),
            ),
            (
                facts(&post, "/v1/files", false, Some(b"{}")),
                Err(Refusal::NotRetryPath),
            ),
            (
                facts(&post, "/v1/files", true, Some(b"{}")),
                Ok(ResendReason::IdempotencyKey),
            ),
            // A retry path is matched exactly: a prefix is another path.
            (
                facts(&post, "/v1/chat/completions/x", false, Some(b"{}")),
                Err(Refusal::NotRetryPath),
            ),
        ];
        for (f, want) in cases {
            assert_eq!(
                resend(&f, &on),
                want,
                "{} {:?}",
                f.method,
                String::from_utf8_lossy(f.path)
            );
        }
        let off = settings(false);
        assert_eq!(
            resend(&facts(&post, "/v1/files", true, Some(b"")), &off),
            Err(Refusal::Disabled)
        );
        assert_eq!(
            resend(&facts(&post, "/v1/chat/completions", false, Some(b"")), &off),
            Err(Refusal::Disabled)
        );
        assert_eq!(
            resend(&facts(&get, "/x", false, Some(b"")), &off),
            Ok(ResendReason::IdempotentMethod)
        );
    }

    #[test]
    fn a_body_asks_to_store_only_with_store_true() {
        for yes in [
            &br#"{"store":true}"#[..],
            br#"{"a":{"store" :	 true}}"#,
            br#"{"store": false, "x": {"store":true}}"#,
        ] {
            assert!(asks_to_store(yes), "{}", String::from_utf8_lossy(yes));
        }
        for no in [
            &br#"{"store":false}"#[..],
            br#"{"stored":true}"#,
            br#"{"x":"store", "y": true}"#,
            b"",
            br#""store""#,
        ] {
            assert!(!asks_to_store(no), "{}", String::from_utf8_lossy(no));
        }
    }

    #[test]
    fn h2c_is_never_tunnelled_and_other_protocols_only_when_listed() {
        let mut s = ServiceSettings::default();
        assert!(s.tunnels(b"websocket") && s.tunnels(b"WebSocket") && s.tunnels(b"websocket/13"));
        assert!(!s.tunnels(b"h2c") && !s.tunnels(b"foo") && !s.tunnels(b"") && !s.tunnels(b", "));
        s.upgrade_protocols = vec!["h2c".into(), "foo".into()];
        assert!(
            !s.tunnels(b"h2c") && !s.tunnels(b"H2C, foo"),
            "h2c whatever the list says"
        );
        assert!(s.tunnels(b"foo/2, websocket"));
    }
}
