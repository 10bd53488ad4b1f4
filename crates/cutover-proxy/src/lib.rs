//! The data plane: per-service listeners that route every request to the live color.
//!
//! It knows nothing of releases, stores or the admin API. The control plane hands it complete,
//! immutable routing snapshots ([`RouteTable`]) and reads back its per-color statistics.
//!
//! # Layout
//! - [`route`]: [`Color`], [`RouteTable`], [`ColorRoute`], [`Endpoint`] and the per-service
//!   [`Service`] that holds one `ArcSwap<RouteTable>`, replaced whole on a switch.
//! - `h1`: the HTTP/1.1 fast path (client and upstream both HTTP/1.1), one task per
//!   connection, no hyper in between; HTTP/2 clients are handed to hyper.
//! - `exchange`: one request's lifecycle for both engines: route pick, in-flight guard, the
//!   attempt loop and its retry decision, failure accounting, the proxy's error answers.
//! - [`forward`]: the hyper request path: pick a color (one atomic load), an endpoint, forward, stream back.
//! - [`upstream`]: per-endpoint connection pools (HTTP/1.1 or h2c) with explicit timeouts.
//! - [`settings`]: a service's limits, timeouts and protocol (a leaf: depends on nothing here).
//! - [`headers`]: what happens to each header, and the framing and Host rules, for both engines.
//! - [`body`]: the hyper engine's response body (streams, counts, hands connections back).
//! - [`request_body`]: the hyper engine's request body, cut off past the size limit (a leaf).
//! - `guard`: a request's place in its color's in-flight count, its access-log record, and
//!   what a stream cut short is told.
//! - `h2drain`: an HTTP/2 client connection's drain: streams in flight, one GOAWAY at the end.
//! - [`accept`]: the one accept loop of every listener in the process (data plane and admin
//!   API): connection cap, gauge, drain.
//! - [`listener`]: a data-plane listener's connections: HTTP/1.1 + HTTP/2 serving, engines.
//! - [`health`]: active health checks with consecutive-result thresholds, tempered by the
//!   proxy's own traffic (a probe timeout does not count while proxied requests succeed).
//! - [`probe`]: one probe by kind: HTTP status, gRPC health (h2c), a generation request.
//! - [`stats`]: lock-free per-color counters and histograms, read by gates and metrics.
//! - [`error`]: the proxy's own error responses (JSON, with where the error came from).
//! - [`mirror`]: the copy of a sampled live exchange for the shadow comparison, handed to
//!   an installed [`mirror::Tap`] when it ends (never waited for).
//! - [`peek`]: one top-level string field of a JSON body (`model`, `user`) read from the
//!   first bytes, never by buffering the body.
//! - [`shared`]: a shared listener: the service picked per request by Host, path prefix or
//!   the OpenAI `model` field, before the exchange begins.
//! - [`split`]: a progressive release's per-request choice: header route, sticky key
//!   bucket, or a draw against the route table's weight.
//! - [`tls`]: rustls configs for listeners and upstreams; certificates reloaded without a drop.

#![forbid(unsafe_code)]

pub mod accept;
pub mod body;
pub mod error;
mod exchange;
pub mod forward;
mod guard;
mod h1;
mod h2drain;
pub mod headers;
pub mod health;
pub mod listener;
pub mod mirror;
pub mod peek;
pub mod probe;
pub mod request_body;
mod resend;
pub mod route;
pub mod settings;
pub mod shared;
pub mod split;
pub mod stats;
pub mod tls;
pub mod upstream;

/// Entry points for `fuzz/` (cargo-fuzz builds with `--cfg fuzzing`): not an API.
#[cfg(fuzzing)]
#[doc(hidden)]
pub mod fuzzing {
    /// Any bytes as an HTTP/1.1 request head, response head and chunked body.
    pub fn h1_wire(data: &[u8]) {
        crate::h1::fuzz::wire(data);
    }
}

pub use exchange::{Refusal, ResendReason};
pub use headers::TrustedProxies;
pub use route::{Color, ColorRoute, Endpoint, Health, RouteTable, Service};
pub use settings::{Http1Engine, Protocol, ServiceSettings};
pub use stats::{ColorStats, EndpointStats, HistogramSnapshot, ProbeReason, ProbeRecord, StatsSnapshot};
