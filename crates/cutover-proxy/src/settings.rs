//! A service's limits, timeouts and protocol: fixed when the service is built, read by
//! every part of the data plane (a leaf module: it depends only on the header and TLS types).

use std::time::Duration;

use crate::headers::TrustedProxies;
use crate::tls::UpstreamTls;

/// The upstream protocol of a service's endpoints: the workspace's one protocol type.
pub use cutover_types::Protocol;

pub use cutover_types::Http1Engine;

/// Limits and timeouts of one service, fixed at start.
#[derive(Debug, Clone)]
pub struct ServiceSettings {
    pub protocol: Protocol,
    pub http1_engine: Http1Engine,
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
    /// The master switch for re-sending a non-idempotent request after a reused keep-alive
    /// connection died under it before any byte of response: off, only idempotent methods
    /// go again; on, also requests with an `Idempotency-Key` and those on `retry_paths`
    /// (the rule is `exchange::resend`).
    pub retry_non_idempotent: bool,
    /// Paths (exact, without the query) whose non-idempotent requests are side-effect free
    /// (generations, embeddings, tokenization): such a request may be sent once more.
    pub retry_paths: Vec<String>,
    /// `Upgrade` tokens, lowercase, that are tunnelled after a 101 (`websocket`); any other
    /// upgrade request is served as plain HTTP without its Upgrade. Never `h2c`.
    pub upgrade_protocols: Vec<String>,
    /// The endpoints are `https://`: connections to them are TLS (and take the hyper engine).
    pub upstream_tls: Option<UpstreamTls>,
    /// `x-cutover-color` and `x-cutover-version` on answers to clients (both engines, the
    /// proxy's own errors included).
    pub response_headers: bool,
    /// What keeps a client on one color while a progressive release splits traffic
    /// (`None`: every request is drawn on its own).
    pub sticky: Option<crate::split::Sticky>,
    /// The testers' way to the idle color on the main listener (`None`: off).
    pub header_route: Option<crate::split::HeaderRoute>,
}

impl ServiceSettings {
    /// Whether an `Upgrade` value names a protocol this service tunnels. A list
    /// (`websocket, foo`) is judged by its first token, the one the upstream would pick first;
    /// `h2c` is refused whatever the list says (h2c smuggling: RFC 9113 §3.1 deprecated it).
    pub fn tunnels(&self, upgrade: &[u8]) -> bool {
        tunnels(&self.upgrade_protocols, upgrade)
    }
}

/// [`ServiceSettings::tunnels`] on a bare list (the HTTP/1.1 engine's head parser holds the
/// list, not the settings).
pub(crate) fn tunnels(allowed: &[String], upgrade: &[u8]) -> bool {
    {
        let Some(first) = crate::headers::list(upgrade).next() else {
            return false;
        };
        // A protocol may carry a version (`websocket/13`): the name is what is allowed.
        let name = first.split(|&b| b == b'/').next().unwrap_or(first);
        if name.eq_ignore_ascii_case(b"h2c") {
            return false;
        }
        allowed.iter().any(|p| p.as_bytes().eq_ignore_ascii_case(name))
    }
}

/// For the data plane's own tests and for embedding it as a library: cutover never serves
/// with these. Each service's settings are built from its config (cutover-control's
/// `settings_from`), whose defaults are cutover-config's one table (`LimitsConfig` and the
/// `ServiceConfig` constants, beside their fields). These mirror them so that a test sees
/// what a service with no `limits` table would; cutover-config's tests hold the two equal.
impl Default for ServiceSettings {
    fn default() -> Self {
        ServiceSettings {
            protocol: Protocol::Http1,
            http1_engine: Http1Engine::Own,
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
            // The config's defaults (cutover-config `ServiceConfig::RETRY_PATHS`) fill this in;
            // a bare `ServiceSettings` (unit tests) re-sends only by method or by key.
            retry_paths: Vec::new(),
            upgrade_protocols: vec!["websocket".to_string()],
            upstream_tls: None,
            response_headers: true,
            sticky: None,
            header_route: None,
        }
    }
}
