//! Shared listeners (`[listeners.NAME]`) and the services that take their requests from one
//! (`listener = "NAME"` with a `match`): each address read once, each service's match
//! checked, and no two services on one listener answering the same model, Host or prefix.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;

use toml::Spanned;

use super::{keep, Claims, Source, Span};
use crate::error::ConfigError;
use crate::model::{ListenerConfig, ServiceConfig, SharedMatch};
use crate::raw::{RawListener, RawService};

impl Source<'_> {
    /// Every `[listeners.NAME]`, its address claimed like a service's own listener.
    pub(super) fn listeners(
        &self,
        raw: &BTreeMap<String, Spanned<RawListener>>,
        claims: &mut Claims,
        errors: &mut Vec<ConfigError>,
    ) -> BTreeMap<String, ListenerConfig> {
        let mut out = BTreeMap::new();
        for (name, l) in raw {
            let key = format!("listeners.{name}.listen");
            let listen = l.get_ref().listen.clone();
            let addr = self
                .addr(&listen, key.clone())
                .and_then(|a| self.claim(claims, a, key, listen.span()).map(|_| a));
            let tls_key = format!("listeners.{name}.tls");
            let tls = keep(errors, self.tls(l.get_ref().tls.as_ref(), &tls_key, l.span()));
            if let Some(a) = keep(errors, addr) {
                // Known to the services even when its `tls` is wrong: one error, not one more
                // per service that names it.
                claims.listeners.insert(name.clone(), a);
                if let Some(tls) = tls {
                    let listen = a;
                    out.insert(
                        name.clone(),
                        ListenerConfig {
                            name: name.clone(),
                            listen,
                            tls,
                        },
                    );
                }
            }
        }
        out
    }

    /// The service's address: its own `listen`, or (with `listener`) the shared listener's
    /// address and the match that picks the service there. Exactly one of the two is set.
    pub(super) fn service_listen(
        &self,
        name: &str,
        svc: &RawService,
        claims: &mut Claims,
        span: &Span,
    ) -> Result<(SocketAddr, Option<SharedMatch>), ConfigError> {
        let k = |rest: &str| format!("services.{name}.{rest}");
        match (&svc.listen, &svc.listener) {
            (Some(l), None) => {
                if let Some(m) = &svc.matches {
                    return self.err(m.span(), k("match"), "`match` picks a service on a shared listener: set `listener = \"NAME\"` instead of `listen`, or remove `match`".into());
                }
                let a = self.addr(l, k("listen"))?;
                self.claim(claims, a, k("listen"), l.span())?;
                Ok((a, None))
            }
            (Some(l), Some(_)) => self.err(
                l.span(),
                k("listen"),
                "set either `listen` (the service's own address) or `listener` (a shared [listeners.NAME]), not both".into(),
            ),
            (None, None) => self.err(
                span.clone(),
                k("listen"),
                "missing `listen` (the service's own address, e.g. \"127.0.0.1:8080\") or `listener` (the name of a shared [listeners.NAME])".into(),
            ),
            (None, Some(l)) => {
                let Some(&addr) = claims.listeners.get(l.get_ref()) else {
                    let known: Vec<&String> = claims.listeners.keys().collect();
                    return self.err(
                        l.span(),
                        k("listener"),
                        format!("no [listeners.{}] is configured (configured: {known:?})", l.get_ref()),
                    );
                };
                if svc.tls.is_some() {
                    return self.err_at(k("tls"), span.clone(), format!("a service on a shared listener cannot have its own `tls`: the listener's connections are shared; set `tls` in [listeners.{}]", l.get_ref()));
                }
                let m = self.shared_match(name, svc, span)?;
                Ok((addr, Some(SharedMatch { listener: l.get_ref().clone(), ..m })))
            }
        }
    }

    /// The `match` of a service on a shared listener: at least one of model, host,
    /// path_prefix, each well formed.
    fn shared_match(&self, name: &str, svc: &RawService, span: &Span) -> Result<SharedMatch, ConfigError> {
        let key = format!("services.{name}.match");
        let Some(m) = &svc.matches else {
            return self.err(span.clone(), key, "a service on a shared listener needs `match = { model = [\"NAME\", ...] }`, `{ host = \"...\" }` or `{ path_prefix = \"/...\" }`: how its requests are told apart".into());
        };
        let raw = m.get_ref();
        if raw.model.is_empty() && raw.host.is_none() && raw.path_prefix.is_none() {
            return self.err(
                m.span(),
                key,
                "`match` is empty: give `model`, `host` or `path_prefix`".into(),
            );
        }
        let mut model = Vec::new();
        for (i, s) in raw.model.iter().enumerate() {
            if s.get_ref().is_empty() {
                return self.err(
                    s.span(),
                    format!("{key}.model[{i}]"),
                    "a model name cannot be empty".into(),
                );
            }
            model.push(s.get_ref().clone());
        }
        let host = match &raw.host {
            Some(h) if h.get_ref().is_empty() || h.get_ref().contains(['/', ' ', ':']) => {
                return self.err(
                    h.span(),
                    format!("{key}.host"),
                    format!(
                        "expected a host name such as \"embed.example.com\" (no port, scheme or path), got {:?}",
                        h.get_ref()
                    ),
                );
            }
            h => h.as_ref().map(|h| h.get_ref().to_ascii_lowercase()),
        };
        let path_prefix = match &raw.path_prefix {
            Some(p) if !p.get_ref().starts_with('/') || p.get_ref().contains(['?', '#', ' ']) => {
                return self.err(
                    p.span(),
                    format!("{key}.path_prefix"),
                    format!(
                        "expected a path prefix such as \"/embed\" (starting with '/', no query), got {:?}",
                        p.get_ref()
                    ),
                );
            }
            p => p.as_ref().map(|p| p.get_ref().clone()),
        };
        Ok(SharedMatch {
            listener: String::new(),
            model,
            host,
            path_prefix,
        })
    }

    /// Across services: no two on one listener with the same model, Host or path prefix
    /// (a request would have two services), and no listener that no service uses.
    pub(super) fn shared_routes(
        &self,
        raw: &BTreeMap<String, Spanned<RawListener>>,
        services: &BTreeMap<String, ServiceConfig>,
    ) -> Vec<ConfigError> {
        let mut errors = Vec::new();
        let mut seen: HashMap<(String, &'static str, String), &str> = HashMap::new();
        for (name, svc) in services {
            let Some(m) = &svc.shared else { continue };
            let keys = m
                .model
                .iter()
                .map(|v| ("model", v.clone()))
                .chain(m.host.iter().map(|v| ("host", v.clone())))
                .chain(m.path_prefix.iter().map(|v| ("path_prefix", v.clone())));
            for (kind, value) in keys {
                if let Some(other) = seen.insert((m.listener.clone(), kind, value.clone()), name) {
                    let key = format!("services.{name}.match.{kind}");
                    let span = self
                        .span_of(&key)
                        .or_else(|| self.span_of(&format!("services.{name}")))
                        .unwrap_or(0..0);
                    keep(
                        &mut errors,
                        self.err::<()>(
                            span,
                            key,
                            format!(
                                "{kind} {value:?} on listener {:?} is already matched by service {other}",
                                m.listener
                            ),
                        ),
                    );
                }
            }
        }
        for (name, l) in raw {
            if !services
                .values()
                .any(|s| s.shared.as_ref().is_some_and(|m| &m.listener == name))
                && errors.is_empty()
            {
                keep(&mut errors, self.err::<()>(l.span(), format!("listeners.{name}"), format!("no service takes its requests from this listener: set `listener = \"{name}\"` in a service, or remove it")));
            }
        }
        errors
    }
}
