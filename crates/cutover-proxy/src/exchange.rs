//! One request's lifecycle, shared by both engines (the own HTTP/1.1 engine in `h1` and the
//! hyper engine in `forward`): pick the route with one atomic load, hold the color's
//! in-flight guard, choose endpoints, decide whether a failed attempt may go again, count
//! what happened, and build the proxy's own error answers. The engines keep only the wire.
//!
//! A feature that touches every request (mirroring to the idle color, weighted routing, a
//! new statistic) is one change here.

use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{Method, StatusCode};

use crate::error::{ProxyError, Source};
use crate::guard::{Access, Guard, Kind};
use crate::route::Service;
use crate::route::{ColorRoute, Endpoint};
use crate::upstream::ConnectError;

/// Forwards the requests of one listener (live or preview) of one service.
pub struct Forwarder {
    pub service: Arc<Service>,
    /// The preview listener routes to the idle color instead of the live one.
    pub preview: bool,
    /// The service's name, shared with access-log lines.
    pub(crate) service_name: Arc<str>,
}

impl Forwarder {
    pub fn new(service: Arc<Service>, preview: bool) -> Forwarder {
        let service_name = Arc::from(service.name.as_str());
        Forwarder {
            service,
            preview,
            service_name,
        }
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
}

impl Exchange {
    /// Load the route table once and take a place in the color's in-flight count. Err:
    /// nothing to route to on this listener (no route, so nothing to count).
    pub(crate) fn begin(
        fwd: &Forwarder,
        started: Instant,
        method: &Method,
        access: impl FnOnce() -> Access,
    ) -> Result<Exchange, ProxyError> {
        let route = fwd.service.target(fwd.preview).ok_or_else(|| no_route(fwd))?;
        let access = fwd.service.settings().access_log.then(|| Box::new(access()));
        let post = *method == Method::POST;
        Ok(Exchange {
            guard: Some(Guard::new(route.clone(), started, post, access)),
            route,
            started,
            retries: Retries::default(),
        })
    }

    /// The endpoint for the first attempt.
    pub(crate) fn first_endpoint(&self, fwd: &Forwarder) -> Result<Arc<Endpoint>, ProxyError> {
        self.route.pick(None).ok_or_else(|| no_endpoint(fwd, &self.route))
    }

    /// An attempt on `endpoint` failed with `retry`: what to do next. `replay` says whether
    /// the request could be sent again at all.
    pub(crate) fn after_failure(&mut self, retry: Retry, endpoint: &Arc<Endpoint>, replay: Replay) -> Next {
        match retry {
            Retry::Never => Next::GiveUp,
            // Nothing was sent: another endpoint of the same color, once; never the other color.
            Retry::OtherEndpoint if !self.retries.moved => match self.route.pick(Some(endpoint)) {
                Some(next) => {
                    self.retries.moved = true;
                    Next::OtherEndpoint(next)
                }
                None => Next::GiveUp,
            },
            Retry::OtherEndpoint => Next::GiveUp,
            // Most likely the upstream closed an idle connection as we reused it; it may
            // also have read the request, so only a request that is safe to repeat goes
            // again, once, on a new connection to the same endpoint.
            Retry::ReusedConnection if !self.retries.refreshed && replay.whole_body && replay.idempotent => {
                self.retries.refreshed = true;
                Next::FreshConnection
            }
            Retry::ReusedConnection => Next::GiveUp,
        }
    }

    /// The response head arrived: time to first byte and status are counted now.
    pub(crate) fn answered(&mut self, status: u16, sse: bool) {
        self.route.stats.ttfb.observe(self.started.elapsed());
        self.route.stats.record_status(status);
        if let Some(g) = self.guard.as_mut() {
            g.answered(status, sse);
        }
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

/// What a failed attempt allows, decided where the failure happened (pingora's `RetryType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Retry {
    /// Bytes may have been processed, or an answer came: the request is never sent again.
    Never,
    /// No connection could be made, so nothing was sent.
    OtherEndpoint,
    /// A reused keep-alive connection died before any byte of response.
    ReusedConnection,
}

/// Whether the request could be sent again.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Replay {
    /// The whole body is still at hand (it was empty, or fully buffered).
    pub(crate) whole_body: bool,
    pub(crate) idempotent: bool,
}

impl Replay {
    /// `any_method`: the service's `retry_non_idempotent`, which lets a POST count as safe
    /// to repeat.
    pub(crate) fn of(method: &Method, whole_body: bool, any_method: bool) -> Replay {
        Replay {
            whole_body,
            idempotent: any_method || idempotent(method),
        }
    }
}

/// The next step after a failed attempt.
pub(crate) enum Next {
    OtherEndpoint(Arc<Endpoint>),
    FreshConnection,
    GiveUp,
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
