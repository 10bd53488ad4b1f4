//! `limits = { ... }`: the limits and timeouts of a service's listeners and upstream calls.
//! The data plane's `ServiceSettings` is built from these (cutover-control's
//! `settings_from`): this table is where the defaults are.

use serde::Deserialize;

use crate::value::Duration;

/// Limits and timeouts of a service's listeners and upstream calls. A key left out takes
/// its value from [`LimitsConfig::default`].
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Largest request head (request line + headers); larger gets 431.
    pub max_header_bytes: usize,
    /// Longest single header line (431) or request line (414).
    pub max_header_line_bytes: usize,
    /// A client must send its whole request head within this time.
    pub header_read_timeout: Duration,
    /// Largest request body; larger gets 413.
    pub max_body_bytes: u64,
    /// Client connections open at once per listener; more wait in the kernel backlog.
    pub max_connections: usize,
    pub connect_timeout: Duration,
    /// Time from sending the request to the upstream's response head (a model may think long).
    pub first_byte_timeout: Duration,
    /// Whole exchange, first request byte to last response byte; the only limit on a live stream.
    pub request_timeout: Duration,
    /// Idle upstream connections kept per endpoint.
    pub pool_max_idle: usize,
    pub pool_idle_timeout: Duration,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_header_bytes: 64 * 1024,
            // nginx allows 8 KiB per line, HAProxy 16 KiB for a whole head: 16 KiB fits a long
            // JWT or a cookie jar and refuses a 60 KB value.
            max_header_line_bytes: 16 * 1024,
            header_read_timeout: Duration::from_secs(10),
            // Streamed, never buffered: room for a 25 MiB image sent as base64 in JSON.
            max_body_bytes: 256 * 1024 * 1024,
            max_connections: 10_000,
            connect_timeout: Duration::from_secs(2),
            // The official openai client waits 600 s and retries a 504 twice: a shorter limit
            // runs a long non-streaming generation three times and still fails.
            first_byte_timeout: Duration::from_secs(600),
            request_timeout: Duration::from_secs(3600),
            pool_max_idle: 256,
            // Below uvicorn's 5 s keep-alive (vLLM and many Python model servers), so we stop
            // reusing a connection before the server may close it under our feet.
            pool_idle_timeout: Duration::from_secs(4),
        }
    }
}
