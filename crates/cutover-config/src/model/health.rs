//! `health = { ... }`: how a service's endpoints are probed. The probe is one variant per
//! kind, each with only its own keys (a key of another kind is refused where it stands,
//! as the raw table is turned into this one); the timing keys are the same for every kind.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::value::{Duration, StatusSet};

/// A service's active health checks.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthConfig {
    /// What one probe asks an endpoint.
    pub probe: ProbeConfig,
    pub interval: Duration,
    pub timeout: Duration,
    /// Consecutive successes before an unhealthy endpoint is healthy again.
    pub healthy_threshold: u32,
    /// Consecutive failures before a healthy endpoint is taken out of rotation.
    pub unhealthy_threshold: u32,
    /// A probe that times out is not counted against an endpoint that finished proxied
    /// requests within this window while its color answered 2xx/3xx; `"0s"` turns it off.
    pub passive_window: Duration,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            probe: ProbeConfig::default(),
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            healthy_threshold: 1,
            unhealthy_threshold: 2,
            // A few probe intervals: long enough to span a probe that queued behind a
            // generation (llama-cpp-python's /v1/models took 1.5-9.5 s under load), short
            // enough that a server that stopped answering loses its cover within seconds.
            passive_window: Duration::from_secs(10),
        }
    }
}

/// What an active health check asks an endpoint: one variant per `health.kind`.
#[derive(Debug, Clone, PartialEq)]
pub enum ProbeConfig {
    /// `GET path`, healthy on one of `status`.
    Http { path: String, status: StatusSet },
    /// `grpc.health.v1.Health/Check` over h2c for `service` (`""`: the server as a whole),
    /// healthy only on `SERVING`.
    Grpc { service: String },
    /// A tiny real request, its answer checked against `expect` (status 2xx when `expect`
    /// gives none): a model server whose `/health` stays 200 while its engine is wedged
    /// fails this one.
    Generation { request: RequestSpec, expect: Expect },
}

impl ProbeConfig {
    pub fn kind(&self) -> ProbeKind {
        match self {
            ProbeConfig::Http { .. } => ProbeKind::Http,
            ProbeConfig::Grpc { .. } => ProbeKind::Grpc,
            ProbeConfig::Generation { .. } => ProbeKind::Generation,
        }
    }

    /// The `http` probe's `path` when not given.
    pub const HTTP_PATH: &'static str = "/health";
}

impl Default for ProbeConfig {
    /// `GET /health`, healthy on 2xx and 3xx (what `http` probes accepted before `status`
    /// existed).
    fn default() -> Self {
        ProbeConfig::Http {
            path: ProbeConfig::HTTP_PATH.to_string(),
            status: StatusSet::success_or_redirect(),
        }
    }
}

/// `health.kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ProbeKind {
    #[default]
    Http,
    Grpc,
    Generation,
}

impl ProbeKind {
    /// The name the file writes.
    pub fn name(self) -> &'static str {
        match self {
            ProbeKind::Http => "http",
            ProbeKind::Grpc => "grpc",
            ProbeKind::Generation => "generation",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestSpec {
    #[serde(default = "method")]
    pub method: String,
    pub path: String,
    #[serde(default)]
    pub body: Option<String>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    #[serde(default)]
    pub status: Option<u16>,
    /// JSON pointer → expected value.
    #[serde(default)]
    pub json: BTreeMap<String, toml::Value>,
    #[serde(default)]
    pub body_contains: Option<String>,
    #[serde(default)]
    pub max_latency: Option<Duration>,
}

fn method() -> String {
    "GET".into()
}
