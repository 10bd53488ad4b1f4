//! The request path: one atomic load picks the color, then an endpoint of that color gets the
//! request and the response streams back. The request stays on that color to its last byte.

use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Instant;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use http::{Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;

use crate::body::{Access, BodyTooLarge, Guard, ReqBody, RespBody};
use crate::error::{ProxyError, Source};
use crate::route::{ColorRoute, Endpoint, Protocol, Service};
use crate::upstream::{Conn, ConnectError, SendError};

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

const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static X_CUTOVER_COLOR: HeaderName = HeaderName::from_static("x-cutover-color");
static X_CUTOVER_VERSION: HeaderName = HeaderName::from_static("x-cutover-version");

/// Remove hop-by-hop headers, including those the `Connection` header names. `te: trailers`
/// survives: gRPC needs it end to end.
fn strip_hop_by_hop(h: &mut HeaderMap) {
    // Most messages carry none of these: one pass of cheap name comparisons instead of a hash
    // lookup per hop-by-hop name (this runs twice per request).
    if !h.keys().any(|k| HOP_BY_HOP.contains(k)) {
        return;
    }
    if let Some(c) = h.get(header::CONNECTION) {
        let named: Vec<HeaderName> = c
            .to_str()
            .unwrap_or("")
            .split(',')
            .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
            .collect();
        for n in named {
            h.remove(n);
        }
    }
    let trailers = h
        .get(header::TE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    for n in &HOP_BY_HOP {
        h.remove(n);
    }
    if trailers {
        h.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

impl Forwarder {
    /// `peer_ip` is `peer`'s address as a header value, made once per connection.
    pub async fn handle(&self, req: Request<Incoming>, peer: SocketAddr, peer_ip: &HeaderValue) -> Response<RespBody> {
        let started = Instant::now();
        let svc = &*self.service;
        let Some(route) = svc.target(self.preview) else {
            return self.no_route().into_response(&svc.name, None);
        };
        let access = svc.settings.access_log.then(|| {
            Box::new(Access {
                service: self.service_name.clone(),
                method: req.method().clone(),
                path: req.uri().path().to_string(),
                peer,
                status: 0,
            })
        });
        let mut guard = Some(Guard::new(route.clone(), started, access));
        match self.forward(req, peer, peer_ip, &route, &mut guard, started).await {
            Ok(resp) => resp,
            Err(e) => {
                if let Some(g) = guard.as_mut() {
                    g.set_status(e.status.as_u16());
                }
                drop(guard);
                route.stats.record_status(e.status.as_u16());
                if e.source != Source::Client {
                    route.stats.upstream_failures.fetch_add(1, Relaxed);
                }
                e.into_response(&svc.name, Some(&route))
            }
        }
    }

    async fn forward(
        &self,
        req: Request<Incoming>,
        peer: SocketAddr,
        peer_ip: &HeaderValue,
        route: &Arc<ColorRoute>,
        guard: &mut Option<Guard>,
        started: Instant,
    ) -> Result<Response<RespBody>, ProxyError> {
        let settings = &self.service.settings;
        let (mut parts, body) = req.into_parts();
        if let Some(len) = parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        {
            if len > settings.max_body_bytes {
                return Err(ProxyError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "body_too_large",
                    Source::Client,
                    format!(
                        "request body of {len} bytes is larger than the limit of {} bytes",
                        settings.max_body_bytes
                    ),
                ));
            }
        }

        let original_host = parts.headers.get(header::HOST).cloned().or_else(|| {
            parts
                .uri
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        });
        strip_hop_by_hop(&mut parts.headers);
        // The common case (no X-Forwarded-For yet) reuses the connection's value: no
        // formatting or allocation per request.
        let xff = match parts.headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
            Some(prev) => HeaderValue::from_str(&format!("{prev}, {}", peer.ip())).ok(),
            None => Some(peer_ip.clone()),
        };
        if let Some(v) = xff {
            parts.headers.insert(X_FORWARDED_FOR.clone(), v);
        }
        parts
            .headers
            .insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static("http"));
        if let Some(h) = &original_host {
            parts.headers.insert(X_FORWARDED_HOST.clone(), h.clone());
        }

        let Some(mut endpoint) = route.pick(None) else {
            return Err(self.no_endpoint(route));
        };
        // A refcounted handle on the client's path, not a copy.
        let path = parts.uri.path_and_query().cloned();
        let mut upstream_req = Request::from_parts(parts, ReqBody::new(body, settings.max_body_bytes));
        let mut retried = false;
        let first_byte_deadline = tokio::time::Instant::from_std(started) + settings.first_byte_timeout;

        // Connect failures move to another endpoint of the same color, once; a request whose
        // bytes may have reached an upstream is never sent again.
        let (resp, conn, endpoint) = loop {
            prepare(
                &mut upstream_req,
                endpoint,
                settings.protocol,
                path.as_ref(),
                original_host.as_ref(),
            );
            let attempt = tokio::time::timeout_at(first_byte_deadline, send(endpoint, upstream_req));
            match attempt.await {
                Err(_) => return Err(first_byte_timeout(endpoint, settings.first_byte_timeout)),
                Ok(Ok((resp, conn))) => break (resp, conn, endpoint),
                Ok(Err(Attempt::Connect(e, req))) => {
                    tracing::debug!(service = %self.service.name, endpoint = %endpoint.addr, error = %e, "upstream connect failed");
                    match route.pick(Some(endpoint)) {
                        Some(next) if !retried => {
                            retried = true;
                            endpoint = next;
                            upstream_req = req;
                        }
                        _ => return Err(connect_failed(&e, endpoint, route)),
                    }
                }
                Ok(Err(Attempt::Failed(e))) => return Err(classify(&e, endpoint)),
            }
        };

        route.stats.ttfb.observe(started.elapsed());
        route.stats.record_status(resp.status().as_u16());
        let (mut parts, body) = resp.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        parts
            .headers
            .insert(X_CUTOVER_COLOR.clone(), route.color_header.clone());
        if let Some(v) = &route.version_header {
            parts.headers.insert(X_CUTOVER_VERSION.clone(), v.clone());
        }
        let sse = parts
            .headers
            .get(header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
        let deadline = tokio::time::Instant::from_std(started) + settings.request_timeout;
        let mut guard = guard.take().expect("the guard is taken once, here");
        guard.set_status(parts.status.as_u16());
        let body = RespBody::proxied(body, guard, (endpoint.clone(), conn), deadline, sse);
        Ok(Response::from_parts(parts, body))
    }
}

impl Forwarder {
    /// Nothing to route to on this listener.
    pub(crate) fn no_route(&self) -> ProxyError {
        let svc = &self.service.name;
        let msg = if self.preview {
            format!("service {svc} has no idle color to preview")
        } else {
            format!("service {svc} has no live color yet: switch to a color or release a version first")
        };
        ProxyError::new(StatusCode::SERVICE_UNAVAILABLE, "no_live_color", Source::Routing, msg)
    }

    pub(crate) fn no_endpoint(&self, route: &ColorRoute) -> ProxyError {
        ProxyError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "no_healthy_endpoint",
            Source::Routing,
            format!(
                "no healthy endpoint in color {} of service {}",
                route.color, self.service.name
            ),
        )
    }
}

pub(crate) fn first_byte_timeout(endpoint: &Endpoint, limit: std::time::Duration) -> ProxyError {
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
    ProxyError::new(
        status,
        "upstream_connect_failed",
        Source::Upstream,
        format!("cannot reach {} of color {}: {e}", endpoint.addr, route.color),
    )
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
                .scheme("http")
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
    Failed(hyper::Error),
}

/// Send on a pooled connection, or a new one. A pooled connection that died while idle
/// gives the request back and the next one is tried.
async fn send(endpoint: &Arc<Endpoint>, mut req: Request<ReqBody>) -> Result<(Response<Incoming>, Conn), Attempt> {
    while let Some(mut conn) = endpoint.pool.take() {
        match conn.send(req).await {
            Ok(resp) => return Ok((resp, conn)),
            Err(SendError::NotSent(r)) => req = r,
            Err(SendError::Failed(e)) => return Err(Attempt::Failed(e)),
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
        Err(SendError::Failed(e)) => Err(Attempt::Failed(e)),
    }
}

fn classify(e: &hyper::Error, endpoint: &Endpoint) -> ProxyError {
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

/// `ip` as a header value, for `X-Forwarded-For` (made once per connection).
pub fn ip_header(peer: SocketAddr) -> HeaderValue {
    HeaderValue::from_str(&peer.ip().to_string()).expect("an IP address is a valid header value")
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
        strip_hop_by_hop(&mut h);
        assert!(h.get("x-private").is_none());
        assert!(h.get("keep-alive").is_none());
        assert!(h.get(header::CONNECTION).is_none());
        assert!(h.get(header::UPGRADE).is_none());
        assert_eq!(h.get(header::TE).unwrap(), "trailers");
        assert_eq!(h.get("x-kept").unwrap(), "yes");

        let mut h = HeaderMap::new();
        h.insert(header::TE, HeaderValue::from_static("gzip"));
        strip_hop_by_hop(&mut h);
        assert!(h.get(header::TE).is_none());
    }
}
