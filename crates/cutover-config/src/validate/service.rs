//! One `[services.NAME]`: its listeners, environments, forwarding keys and limits, each
//! checked on its own; the health table, the run template and the release table have
//! files of their own.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use toml::Spanned;

use super::{keep, Claims, Source, Span};
use crate::error::ConfigError;
use crate::model::{
    Environments, ReleaseConfig, RunConfig, ServiceConfig, SharedMatch, StaticColor, TlsConfig, UpstreamTls,
};
use crate::pem::ca_certificates;
use crate::raw::{RawService, RawStaticColor, RawUpstreamTls};
use crate::value::{cidr, EndpointSpec};

/// A service's listening side, checked.
struct Net {
    listen: SocketAddr,
    shared: Option<SharedMatch>,
    preview_listen: Option<SocketAddr>,
    tls: Option<TlsConfig>,
    trusted_proxies: Vec<(std::net::IpAddr, u8)>,
}

impl Source<'_> {
    /// One service, every independent check run: all their errors, or the service.
    pub(super) fn service(
        &self,
        name: &str,
        svc: Spanned<RawService>,
        claims: &mut Claims,
    ) -> Result<ServiceConfig, Vec<ConfigError>> {
        let span = svc.span();
        let mut svc = svc.into_inner();
        self.service_name(name, &span)?;
        let mut errors = Vec::new();
        let net = self.service_net(name, &svc, claims, &span, &mut errors);
        let raw_health = std::mem::take(&mut svc.health);
        let health = keep(
            &mut errors,
            self.health(name, raw_health, svc.upstream_protocol, span.clone()),
        );
        errors.extend(self.limits(name, &svc, &span));
        let (blue, green, run) = (svc.blue.take(), svc.green.take(), svc.run.take());
        let environments = keep(
            &mut errors,
            self.environments(name, blue, green, run, span.clone(), claims),
        );
        let upstream_tls = environments.as_ref().and_then(|env| {
            if !svc.allow_shared_endpoints {
                keep(&mut errors, self.colors_apart(name, env));
            }
            keep(
                &mut errors,
                self.upstream_tls(name, svc.upstream_tls.as_ref(), env, span.clone()),
            )
        });
        let retry_paths = keep(&mut errors, self.retry_paths(name, svc.retry_paths.as_deref()));
        let upgrade_protocols = keep(
            &mut errors,
            self.upgrade_protocols(name, svc.upgrade_protocols.as_deref()),
        );
        errors.extend(self.release(name, &svc.release, span.clone()));
        errors.extend(self.traffic(name, &mut svc.release, span));
        let (
            Some(net),
            Some(health),
            Some(environments),
            Some(upstream_tls),
            Some(retry_paths),
            Some(upgrade_protocols),
        ) = (net, health, environments, upstream_tls, retry_paths, upgrade_protocols)
        else {
            return Err(errors);
        };
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(ServiceConfig {
            name: name.to_string(),
            listen: net.listen,
            shared: net.shared,
            preview_listen: net.preview_listen,
            tls: net.tls,
            upstream_tls,
            upstream_protocol: svc.upstream_protocol,
            http1_engine: svc.http1_engine,
            access_log: svc.access_log,
            response_headers: svc.response_headers.unwrap_or(ServiceConfig::RESPONSE_HEADERS),
            trusted_proxies: net.trusted_proxies,
            retry_non_idempotent: svc.retry_non_idempotent.unwrap_or(ServiceConfig::RETRY_NON_IDEMPOTENT),
            retry_paths,
            upgrade_protocols,
            resolve_interval: svc.resolve_interval.unwrap_or(ServiceConfig::RESOLVE_INTERVAL),
            health,
            limits: svc.limits,
            environments,
            release: self.release_paths(svc.release),
        })
    }

    /// A service's name is a word: it appears in metrics labels, etcd keys and URLs.
    fn service_name(&self, name: &str, span: &std::ops::Range<usize>) -> Result<(), Vec<ConfigError>> {
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
            return Err(vec![ConfigError {
                file: self.path.to_path_buf(),
                line: self.line_of(span.start),
                key: format!("services.{name}"),
                message: "service names may use only letters, digits, '-' and '_'".into(),
            }]);
        }
        Ok(())
    }

    /// Where the service is reached: its listeners (claimed), their TLS and the proxies
    /// whose forwarding headers it trusts; `None` when any of them is wrong (the errors
    /// join `errors`).
    fn service_net(
        &self,
        name: &str,
        svc: &RawService,
        claims: &mut Claims,
        span: &Span,
        errors: &mut Vec<ConfigError>,
    ) -> Option<Net> {
        let k = |rest: &str| format!("services.{name}.{rest}");
        let listen = keep(errors, self.service_listen(name, svc, claims, span));
        let preview_listen = keep(errors, self.preview_listen(name, svc, claims));
        let tls = keep(errors, self.tls(svc.tls.as_ref(), &k("tls"), span.clone()));
        let trusted_proxies = keep(
            errors,
            svc.trusted_proxies
                .iter()
                .enumerate()
                .map(|(i, p)| cidr(p.get_ref()).or_else(|m| self.err(p.span(), k(&format!("trusted_proxies[{i}]")), m)))
                .collect::<Result<Vec<_>, _>>(),
        );
        let ((listen, shared), preview_listen, tls, trusted_proxies) =
            (listen?, preview_listen?, tls?, trusted_proxies?);
        Some(Net {
            listen,
            shared,
            preview_listen,
            tls,
            trusted_proxies,
        })
    }

    /// The release's files (webhook secrets) resolved against the config's folder.
    pub(super) fn release_paths(&self, mut rel: ReleaseConfig) -> ReleaseConfig {
        for w in &mut rel.webhooks {
            w.secret_file = w.secret_file.as_deref().map(|p| self.resolve(p));
        }
        if let Some(a) = &mut rel.approval_webhook {
            a.secret_file = a.secret_file.as_deref().map(|p| self.resolve(p));
        }
        rel
    }

    /// Each path absolute, without a query or fragment (they are matched exactly against
    /// the request's path).
    pub(super) fn retry_paths(
        &self,
        name: &str,
        paths: Option<&[Spanned<String>]>,
    ) -> Result<Vec<String>, ConfigError> {
        let Some(paths) = paths else {
            return Ok(ServiceConfig::RETRY_PATHS.iter().map(|p| p.to_string()).collect());
        };
        paths
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let v = p.get_ref();
                if !v.starts_with('/') || v.contains(['?', '#']) || v.bytes().any(|b| b <= b' ' || b == 0x7f) {
                    return self.err(
                        p.span(),
                        format!("services.{name}.retry_paths[{i}]"),
                        format!("expected a path such as \"/v1/chat/completions\" (starting with '/', no query, no spaces), got {v:?}"),
                    );
                }
                Ok(v.clone())
            })
            .collect()
    }

    /// Upgrade tokens (RFC 9110 §7.8 protocol names), lowercased; `h2c` is refused: a
    /// tunnelled HTTP/2 connection would bypass every per-request rule of the proxy.
    pub(super) fn upgrade_protocols(
        &self,
        name: &str,
        list: Option<&[Spanned<String>]>,
    ) -> Result<Vec<String>, ConfigError> {
        let Some(list) = list else {
            return Ok(ServiceConfig::UPGRADE_PROTOCOLS.iter().map(|p| p.to_string()).collect());
        };
        list.iter()
            .enumerate()
            .map(|(i, p)| {
                let v = p.get_ref();
                let key = format!("services.{name}.upgrade_protocols[{i}]");
                if v.eq_ignore_ascii_case("h2c") {
                    return self.err(
                        p.span(),
                        key,
                        "h2c is never tunnelled (h2c smuggling; RFC 9113 §3.1 deprecated the upgrade): HTTP/2 clients use prior knowledge, which cutover serves itself".into(),
                    );
                }
                let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
                if v.is_empty() || !v.bytes().all(token) {
                    return self.err(
                        p.span(),
                        key,
                        format!("expected an Upgrade protocol name such as \"websocket\" (a token, no version or spaces), got {v:?}"),
                    );
                }
                Ok(v.to_ascii_lowercase())
            })
            .collect()
    }

    pub(super) fn preview_listen(
        &self,
        name: &str,
        svc: &RawService,
        claims: &mut Claims,
    ) -> Result<Option<SocketAddr>, ConfigError> {
        let key = format!("services.{name}.preview_listen");
        let Some(s) = &svc.preview_listen else { return Ok(None) };
        let a = self.addr(s, key.clone())?;
        if !a.ip().is_loopback() && !svc.preview_allow_remote {
            return self.err(
                s.span(),
                key,
                format!("{a} is not a loopback address; the preview listener serves an unreleased version, so set `preview_allow_remote = true` to expose it on purpose"),
            );
        }
        self.claim(claims, a, key, s.span())?;
        Ok(Some(a))
    }

    /// The service's limits and resolve interval, each checked on its own.
    pub(super) fn limits(&self, name: &str, svc: &RawService, span: &Span) -> Vec<ConfigError> {
        let k = |rest: &str| format!("services.{name}.{rest}");
        let mut errors = Vec::new();
        if svc.limits.max_header_line_bytes < 1024 {
            keep(
                &mut errors,
                self.err_at::<()>(
                    k("limits.max_header_line_bytes"),
                    span.clone(),
                    "must be at least 1024".into(),
                ),
            );
        }
        let resolve_interval = svc.resolve_interval.unwrap_or(ServiceConfig::RESOLVE_INTERVAL);
        if resolve_interval.get() < std::time::Duration::from_secs(1) {
            keep(
                &mut errors,
                self.err_at::<()>(
                    k("resolve_interval"),
                    span.clone(),
                    "must be at least 1s: names are resolved again this often".into(),
                ),
            );
        }
        if svc.limits.max_connections == 0 {
            keep(
                &mut errors,
                self.err_at::<()>(k("limits.max_connections"), span.clone(), "must be at least 1".into()),
            );
        }
        errors
    }

    pub(super) fn environments(
        &self,
        name: &str,
        blue: Option<Spanned<RawStaticColor>>,
        green: Option<Spanned<RawStaticColor>>,
        run: Option<Spanned<RunConfig>>,
        span: Span,
        claims: &mut Claims,
    ) -> Result<Environments, ConfigError> {
        let k = |rest: &str| format!("services.{name}.{rest}");
        match (blue, green, run) {
            (Some(b), Some(g), None) => Ok(Environments::Static {
                blue: self.static_color(b, &k("blue"))?,
                green: self.static_color(g, &k("green"))?,
            }),
            (None, None, Some(run)) => self.managed(name, run, claims).map(Environments::Managed),
            (None, None, None) => self.err(
                span,
                format!("services.{name}"),
                "needs either static endpoints ([services.NAME.blue] and [services.NAME.green]) or a managed environment ([services.NAME.run])".into(),
            ),
            (b, g, Some(run)) if b.is_some() || g.is_some() => {
                self.err(run.span(), k("run"), "use either static endpoints (blue/green) or `run`, not both".into())
            }
            _ => self.err(span, format!("services.{name}"), "static endpoints need both [blue] and [green] tables".into()),
        }
    }

    pub(super) fn static_color(&self, c: Spanned<RawStaticColor>, key: &str) -> Result<StaticColor, ConfigError> {
        let span = c.span();
        let c = c.into_inner();
        if c.endpoints.is_empty() {
            return self.err(span, format!("{key}.endpoints"), "needs at least one HOST:PORT".into());
        }
        let mut endpoints = Vec::new();
        for e in &c.endpoints {
            let a = EndpointSpec::parse(e.get_ref()).or_else(|m| self.err(e.span(), format!("{key}.endpoints"), m))?;
            if endpoints.contains(&a) {
                return self.err(
                    e.span(),
                    format!("{key}.endpoints"),
                    format!("endpoint {a} is listed twice"),
                );
            }
            endpoints.push(a);
        }
        Ok(StaticColor {
            endpoints,
            version: c.version,
        })
    }

    /// A listener of ours on an upstream's address would proxy to itself.
    pub(super) fn no_self_proxy(
        &self,
        services: &BTreeMap<String, ServiceConfig>,
        claims: &Claims,
    ) -> Result<(), ConfigError> {
        for svc in services.values() {
            let Environments::Static { blue, green } = &svc.environments else {
                continue;
            };
            for (color, c) in [("blue", blue), ("green", green)] {
                for e in c.endpoints.iter().filter_map(EndpointSpec::literal) {
                    if let Some(owner) = claims.addrs.get(&e) {
                        let key = format!("services.{}.{color}.endpoints", svc.name);
                        let span = self.span_of(&key).unwrap_or(0..0);
                        return self.err(
                            span,
                            key,
                            format!("endpoint {e} is also the address of `{owner}`; cutover would proxy to itself"),
                        );
                    }
                }
            }
        }
        Ok(())
    }

    /// TLS to the endpoints: on when they are `https://`, which must then be all of them (one
    /// connection pool kind and one engine per service); `upstream_tls` only with them.
    pub(super) fn upstream_tls(
        &self,
        name: &str,
        raw: Option<&RawUpstreamTls>,
        env: &Environments,
        span: Span,
    ) -> Result<Option<UpstreamTls>, ConfigError> {
        let k = |rest: &str| format!("services.{name}.{rest}");
        let https = match env {
            Environments::Static { blue, green } => {
                let all: Vec<(&str, &EndpointSpec)> = blue
                    .endpoints
                    .iter()
                    .map(|e| ("blue", e))
                    .chain(green.endpoints.iter().map(|e| ("green", e)))
                    .collect();
                if let Some((color, plain)) = all
                    .iter()
                    .find(|(_, e)| !e.tls)
                    .filter(|_| all.iter().any(|(_, e)| e.tls))
                {
                    return self.err_at(
                        k(&format!("{color}.endpoints")),
                        span,
                        format!("{plain} is plain HTTP while other endpoints of the service are https://: TLS to model servers is per service, so write every endpoint of both colors with https://, or none"),
                    );
                }
                all.iter().any(|(_, e)| e.tls)
            }
            Environments::Managed(_) => false,
        };
        match (https, raw) {
            (false, None) => Ok(None),
            (false, Some(_)) => self.err_at(
                k("upstream_tls"),
                span,
                "has no effect: no endpoint of the service is https:// (managed environments are always plain HTTP)"
                    .into(),
            ),
            (true, None) => Ok(Some(UpstreamTls::default())),
            (true, Some(r)) => {
                let ca_file = r.ca_file.as_deref().map(|p| self.resolve(p));
                if let Some(p) = &ca_file {
                    if let Err(m) = ca_certificates(p) {
                        return self.err_at(k("upstream_tls.ca_file"), span, m);
                    }
                }
                Ok(Some(UpstreamTls { ca_file }))
            }
        }
    }

    /// Blue and green are two environments: one endpoint in both would make a switch a no-op.
    fn colors_apart(&self, name: &str, env: &Environments) -> Result<(), ConfigError> {
        let Environments::Static { blue, green } = env else {
            return Ok(());
        };
        let Some((i, e)) = green
            .endpoints
            .iter()
            .enumerate()
            .find(|(_, e)| blue.endpoints.contains(e))
        else {
            return Ok(());
        };
        let key = format!("services.{name}.green.endpoints");
        let span = self.near(&[&format!("{key}.{i}"), &key], &(0..0));
        self.err(
            span,
            key,
            format!("endpoint {e} is in both blue and green: the colors must be two separate environments, or a switch changes nothing (a benchmark or test rig that means it sets `allow_shared_endpoints = true` in [services.{name}])"),
        )
    }
}
