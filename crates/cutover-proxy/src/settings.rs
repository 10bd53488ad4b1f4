//! A service's limits, timeouts and protocol: fixed when the service is built, read by
//! every part of the data plane (a leaf module: it depends only on the header and TLS types).

use std::time::Duration;

use crate::headers::TrustedProxies;
use crate::tls::UpstreamTls;

/// The upstream protocol of a service's endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Protocol {
    #[default]
    Http1,
    H2c,
}

/// Limits and timeouts of one service, fixed at start.
#[derive(Debug, Clone)]
pub struct ServiceSettings {
    pub protocol: Protocol,
    pub max_header_bytes: usize,
    pub header_read_timeout: Duration,
    pub max_body_bytes: u64,
    pub max_connections: usize,
    pub connect_timeout: Duration,
    pub first_byte_timeout: Duration,
    pub request_timeout: Duration,
    pub pool_max_idle: usize,
    pub pool_idle_timeout: Duration,
    /// One log line per request (target `cutover::access`), written when its last byte went.
    pub access_log: bool,
    /// Longest single header line (request line included); one past it is refused with
    /// 431 (414 for the request line), like nginx's and HAProxy's per-line buffers.
    pub max_header_line_bytes: usize,
    /// Peers whose forwarding headers are kept (see [`TrustedProxies`]).
    pub trusted_proxies: TrustedProxies,
    /// A request that failed on a reused keep-alive connection before any byte of response
    /// is sent again on a new connection even when its method is not idempotent (model
    /// generations have no side effect beyond their cost), provided its whole body is at hand.
    pub retry_non_idempotent: bool,
    /// The endpoints are `https://`: connections to them are TLS (and take the hyper engine).
    pub upstream_tls: Option<UpstreamTls>,
    /// `x-cutover-color` and `x-cutover-version` on answers to clients (both engines, the
    /// proxy's own errors included).
    pub response_headers: bool,
}

impl Default for ServiceSettings {
    fn default() -> Self {
        ServiceSettings {
            protocol: Protocol::Http1,
            max_header_bytes: 64 * 1024,
            header_read_timeout: Duration::from_secs(10),
            max_body_bytes: 256 << 20,
            max_connections: 10_000,
            connect_timeout: Duration::from_secs(2),
            first_byte_timeout: Duration::from_secs(600),
            request_timeout: Duration::from_secs(3600),
            pool_max_idle: 256,
            pool_idle_timeout: Duration::from_secs(4),
            access_log: false,
            max_header_line_bytes: 16 * 1024,
            trusted_proxies: TrustedProxies::default(),
            retry_non_idempotent: true,
            upstream_tls: None,
            response_headers: true,
        }
    }
}
