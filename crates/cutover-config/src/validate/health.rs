//! `health = { ... }`: the raw table becomes a [`HealthConfig`] whose probe is the variant
//! of its kind, built from that kind's keys only. A key of another kind is refused where it
//! stands, as an unknown key is: it would otherwise be silently ignored.

use toml::Spanned;

use super::{Source, Span};
use crate::error::ConfigError;
use crate::model::{Expect, HealthConfig, ProbeConfig, ProbeKind, RequestSpec, UpstreamProtocol};
use crate::raw::RawHealth;
use crate::value::{http_method_invalid, StatusSet};

/// The keys of one kind of probe the file gave, each with its kind and place.
fn kind_keys(raw: &RawHealth) -> [(&'static str, ProbeKind, Option<Span>); 5] {
    [
        ("path", ProbeKind::Http, raw.path.as_ref().map(Spanned::span)),
        ("status", ProbeKind::Http, raw.status.as_ref().map(Spanned::span)),
        ("service", ProbeKind::Grpc, raw.service.as_ref().map(Spanned::span)),
        (
            "request",
            ProbeKind::Generation,
            raw.request.as_ref().map(Spanned::span),
        ),
        ("expect", ProbeKind::Generation, raw.expect.as_ref().map(Spanned::span)),
    ]
}

impl Source<'_> {
    /// The service's health checks; `span` is the service's table (a default has no line
    /// of its own: errors about one name the `health` table, or else the service).
    pub(super) fn health(
        &self,
        name: &str,
        raw: RawHealth,
        protocol: UpstreamProtocol,
        span: Span,
    ) -> Result<HealthConfig, ConfigError> {
        let k = |rest: &str| format!("services.{name}.health{rest}");
        let near = self.span_of(&k("")).unwrap_or(span.clone());
        let d = HealthConfig::default();
        let h = HealthConfig {
            interval: raw.interval.unwrap_or(d.interval),
            timeout: raw.timeout.unwrap_or(d.timeout),
            healthy_threshold: raw.healthy_threshold.unwrap_or(d.healthy_threshold),
            unhealthy_threshold: raw.unhealthy_threshold.unwrap_or(d.unhealthy_threshold),
            passive_window: raw.passive_window.unwrap_or(d.passive_window),
            probe: self.probe(name, raw, protocol, &near)?,
        };
        if h.healthy_threshold == 0 || h.unhealthy_threshold == 0 {
            return self.err_at(
                k(""),
                span,
                "healthy_threshold and unhealthy_threshold must be at least 1".into(),
            );
        }
        if h.interval.get().is_zero() || h.timeout.get().is_zero() {
            return self.err_at(k(""), span, "interval and timeout must be greater than zero".into());
        }
        Ok(h)
    }

    /// The probe of the table's kind (`http` when not given), from its own keys.
    fn probe(
        &self,
        name: &str,
        raw: RawHealth,
        protocol: UpstreamProtocol,
        near: &Span,
    ) -> Result<ProbeConfig, ConfigError> {
        let k = |rest: &str| format!("services.{name}.health.{rest}");
        let kind = raw.kind.as_ref().map_or(ProbeKind::default(), |k| *k.get_ref());
        let misplaced = kind_keys(&raw)
            .into_iter()
            .find_map(|(key, owner, at)| at.filter(|_| owner != kind).map(|at| (key, owner, at)));
        if let Some((key, owner, at)) = misplaced {
            return self.err(
                at,
                k(key),
                format!(
                    "`{key}` is for kind = \"{}\" probes; this one is kind = \"{}\"",
                    owner.name(),
                    kind.name()
                ),
            );
        }
        let kind_at = || raw.kind.as_ref().map_or_else(|| near.clone(), Spanned::span);
        match kind {
            ProbeKind::Http => {
                let path = raw.path.map_or_else(|| ProbeConfig::HTTP_PATH.to_string(), Spanned::into_inner);
                if !path.starts_with('/') {
                    return self.err_at(k("path"), near.clone(), format!("must start with '/', got {path:?}"));
                }
                let status = raw.status.map_or_else(StatusSet::success_or_redirect, Spanned::into_inner);
                Ok(ProbeConfig::Http { path, status })
            }
            ProbeKind::Grpc if protocol != UpstreamProtocol::H2c => self.err(
                kind_at(),
                k("kind"),
                "a grpc probe speaks HTTP/2 to the endpoints: set upstream_protocol = \"h2c\" (gRPC model servers need it for their traffic too)".into(),
            ),
            ProbeKind::Grpc => Ok(ProbeConfig::Grpc {
                service: raw.service.map(Spanned::into_inner).unwrap_or_default(),
            }),
            ProbeKind::Generation => {
                let Some(request) = raw.request.map(Spanned::into_inner) else {
                    return self.err(
                        kind_at(),
                        k("kind"),
                        "a generation probe needs `request = { method, path, body }`, e.g. a 1-token completion".into(),
                    );
                };
                let expect = raw.expect.map(Spanned::into_inner).unwrap_or_default();
                self.generation(name, &request, &expect, near)?;
                Ok(ProbeConfig::Generation { request, expect })
            }
        }
    }

    /// A generation probe's request and expected answer, each key well formed.
    fn generation(&self, name: &str, req: &RequestSpec, e: &Expect, near: &Span) -> Result<(), ConfigError> {
        let k = |rest: &str| format!("services.{name}.health.{rest}");
        let fail = |key: String, message: String| self.err_at(key, near.clone(), message);
        if !req.path.starts_with('/') {
            return fail(k("request.path"), format!("must start with '/', got {:?}", req.path));
        }
        if http_method_invalid(&req.method) {
            return fail(
                k("request.method"),
                format!("{:?} is not an HTTP method such as \"POST\"", req.method),
            );
        }
        if let Some(name) = req.headers.keys().find(|n| http_method_invalid(n)) {
            return fail(k("request.headers"), format!("{name:?} is not a header name"));
        }
        let control = |v: &String| v.bytes().any(|b| b < 0x20 && b != b'\t' || b == 0x7f);
        if let Some((name, _)) = req.headers.iter().find(|(_, v)| control(v)) {
            return fail(
                k(&format!("request.headers.{name}")),
                "a header value may not hold control characters (line breaks included)".into(),
            );
        }
        if let Some(st) = e.status.filter(|s| !(100..=599).contains(s)) {
            return fail(k("expect.status"), format!("status {st} is not 100 to 599"));
        }
        if e.max_latency.is_some() {
            return fail(
                k("expect.max_latency"),
                "a probe's time limit is `health.timeout`".into(),
            );
        }
        if let Some(bad) = e.json.keys().find(|p| !p.is_empty() && !p.starts_with('/')) {
            return fail(
                k("expect.json"),
                format!("{bad:?} is not a JSON pointer such as \"/object\""),
            );
        }
        Ok(())
    }
}
