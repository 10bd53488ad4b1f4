//! `[services.NAME.release]`: each key in range, each reported on its own line (or the
//! nearest table the file has, for a key that only has its default); the header route's
//! tokens file is read here.

use super::{keep, Source, Span};
use crate::error::ConfigError;
use crate::model::{invalid_url, tokens_of, ReleaseConfig, ShadowConfig, VerifyConfig};

impl Source<'_> {
    /// Every error of a service's release table, each on the line of its key.
    pub(super) fn release(&self, name: &str, rel: &ReleaseConfig, span: Span) -> Vec<ConfigError> {
        // The nearest table the file has, for a key that only has its default.
        let near = |sub: &str| {
            self.span_of(&format!("services.{name}.release.{sub}"))
                .or_else(|| self.span_of(&format!("services.{name}.release")))
                .unwrap_or(span.clone())
        };
        let mut errors = Vec::new();
        if let Some(v) = &rel.verify {
            errors.extend(self.verify(name, v, &near));
            errors.extend(self.external_gates(name, v, near("verify")));
        }
        errors.extend(self.webhooks(name, rel, near("webhooks")));
        if let Some(sh) = &rel.shadow {
            errors.extend(self.shadow(name, sh, near("shadow")));
        }
        errors.extend(self.requests(name, rel, &near));
        errors.extend(self.hooks(name, rel, near("hooks")));
        errors
    }

    /// `verify`'s thresholds in range.
    fn verify(&self, name: &str, v: &VerifyConfig, near: &dyn Fn(&str) -> Span) -> Vec<ConfigError> {
        let k = |rest: &str| format!("services.{name}.release.verify.{rest}");
        let mut errors = Vec::new();
        if !(0.0..=1.0).contains(&v.max_error_rate) {
            let message = format!("must be between 0 and 1, got {}", v.max_error_rate);
            keep::<()>(&mut errors, self.err_at(k("max_error_rate"), near("verify"), message));
        }
        if let Some(t) = v.min_tokens_per_second.filter(|t| !(t.is_finite() && *t > 0.0)) {
            let message = format!("must be a positive number of tokens per second, got {t}");
            keep::<()>(
                &mut errors,
                self.err_at(
                    k("min_tokens_per_second"),
                    near("verify.min_tokens_per_second"),
                    message,
                ),
            );
        }
        errors
    }

    /// The requests a release sends itself: smoke checks (repeated at least once, paths
    /// absolute) and warm-up (at least one at a time).
    fn requests(&self, name: &str, rel: &ReleaseConfig, near: &dyn Fn(&str) -> Span) -> Vec<ConfigError> {
        let k = |rest: &str| format!("services.{name}.release.{rest}");
        let mut errors = Vec::new();
        if let Some((i, _)) = rel.smoke.iter().enumerate().find(|(_, s)| s.repeat == 0) {
            let e = self.err_at(
                k(&format!("smoke.{i}.repeat")),
                near("smoke"),
                "must be at least 1".into(),
            );
            keep::<()>(&mut errors, e);
        }
        if rel.warmup.as_ref().is_some_and(|w| w.concurrency == 0) {
            let e = self.err_at(k("warmup.concurrency"), near("warmup"), "must be at least 1".into());
            keep::<()>(&mut errors, e);
        }
        for (i, s) in rel.smoke.iter().enumerate() {
            if !s.request.path.starts_with('/') {
                let span = self
                    .span_of(&k(&format!("smoke.{i}.request.path")))
                    .unwrap_or_else(|| near("smoke"));
                let message = format!("smoke check {:?}: path must start with '/'", s.name);
                keep::<()>(&mut errors, self.err(span, k("smoke.request.path"), message));
            }
        }
        errors
    }

    /// No hook is an empty argv list (numbered across stages, as they run).
    fn hooks(&self, name: &str, rel: &ReleaseConfig, near: Span) -> Vec<ConfigError> {
        let k = |rest: &str| format!("services.{name}.release.{rest}");
        let h = &rel.hooks;
        let stages = [
            ("provision", &h.provision),
            ("pre_switch", &h.pre_switch),
            ("post_switch", &h.post_switch),
            ("on_rollback", &h.on_rollback),
            ("post_scale_down", &h.post_scale_down),
        ];
        let mut errors = Vec::new();
        let mut n = 0;
        for (stage, hooks) in stages {
            for (i, hook) in hooks.iter().enumerate() {
                n += 1;
                if hook.is_empty() {
                    let span = self
                        .span_of(&k(&format!("hooks.{stage}.{i}")))
                        .unwrap_or_else(|| near.clone());
                    let e = self.err(span, k("hooks"), format!("hook #{n} is an empty argv list"));
                    keep::<()>(&mut errors, e);
                }
            }
        }
        errors
    }

    /// `traffic`, `sticky` and `header_route`: each in range; the header route's tokens are
    /// read here (an unreadable or empty file is an error, not a route nobody can use).
    pub(super) fn traffic(&self, name: &str, rel: &mut ReleaseConfig, span: Span) -> Vec<ConfigError> {
        let k = |rest: &str| format!("services.{name}.release.{rest}");
        let near = |sub: &str| {
            self.span_of(&k(sub))
                .or_else(|| self.span_of(&format!("services.{name}.release")))
                .unwrap_or(span.clone())
        };
        let mut errors = Vec::new();
        let dotted = |table: &str, key: &str| {
            if key.is_empty() {
                k(table)
            } else {
                k(&format!("{table}.{key}"))
            }
        };
        if let Some((key, message)) = rel.traffic.invalid() {
            keep::<()>(
                &mut errors,
                self.err_at(dotted("traffic", key), near("traffic"), message),
            );
        }
        if let Some((key, message)) = rel.sticky.as_ref().and_then(|s| s.invalid()) {
            keep::<()>(&mut errors, self.err_at(dotted("sticky", key), near("sticky"), message));
        }
        if let Some(hr) = rel.header_route.as_mut() {
            if http::HeaderName::from_bytes(hr.header.as_bytes()).is_err() {
                let message = format!("{:?} is not a valid header name", hr.header);
                keep::<()>(
                    &mut errors,
                    self.err_at(k("header_route.header"), near("header_route"), message),
                );
            }
            hr.tokens_file = self.resolve(&hr.tokens_file);
            match std::fs::read_to_string(&hr.tokens_file) {
                Ok(text) if !tokens_of(&text).is_empty() => hr.tokens = tokens_of(&text),
                r => {
                    let why = r.err().map_or("it has no token".to_string(), |e| e.to_string());
                    let message = format!("cannot use {}: {why} (one token per line)", hr.tokens_file.display());
                    keep::<()>(
                        &mut errors,
                        self.err_at(k("header_route.tokens_file"), near("header_route"), message),
                    );
                }
            }
        }
        errors
    }

    /// `[[...webhooks]]` and `[...approval_webhook]`: http:// URLs, known events.
    pub(super) fn webhooks(&self, name: &str, rel: &ReleaseConfig, near: Span) -> Vec<ConfigError> {
        let mut errors = Vec::new();
        let k = |rest: &str| format!("services.{name}.release.{rest}");
        for (i, w) in rel.webhooks.iter().enumerate() {
            if let Some((key, message)) = w.invalid() {
                let span = self
                    .span_of(&k(&format!("webhooks.{i}.{key}")))
                    .or_else(|| self.span_of(&k(&format!("webhooks.{i}"))))
                    .unwrap_or_else(|| near.clone());
                keep::<()>(&mut errors, self.err(span, k(&format!("webhooks.{key}")), message));
            }
        }
        if let Some((key, message)) = rel.approval_webhook.as_ref().and_then(|a| invalid_url(&a.url)) {
            let key = k(&format!("approval_webhook.{key}"));
            keep::<()>(&mut errors, self.err_at(key, near, message));
        }
        errors
    }

    /// `[[...verify.prometheus]]` and `[[...verify.scrape]]`: a threshold each, valid sources.
    pub(super) fn external_gates(&self, name: &str, v: &VerifyConfig, near: Span) -> Vec<ConfigError> {
        let mut errors = Vec::new();
        let found = v
            .prometheus
            .iter()
            .enumerate()
            .filter_map(|(i, g)| g.invalid().map(|e| ("prometheus", i, e)))
            .chain(
                v.scrape
                    .iter()
                    .enumerate()
                    .filter_map(|(i, g)| g.invalid().map(|e| ("scrape", i, e))),
            );
        for (kind, i, (key, message)) in found {
            let at = format!("services.{name}.release.verify.{kind}.{i}");
            let span = self
                .span_of(&format!("{at}.{key}"))
                .or_else(|| self.span_of(&at))
                .unwrap_or_else(|| near.clone());
            keep::<()>(
                &mut errors,
                self.err(span, format!("services.{name}.release.verify.{kind}.{key}"), message),
            );
        }
        errors
    }

    /// `[services.NAME.release.shadow]`: each key in range, `min_pairs` set where the phase
    /// reads it.
    pub(super) fn shadow(&self, name: &str, sh: &ShadowConfig, table: Span) -> Vec<ConfigError> {
        let k = |rest: &str| format!("services.{name}.release.shadow.{rest}");
        let mut errors = Vec::new();
        if let Some((key, message)) = sh.invalid() {
            keep::<()>(&mut errors, self.err_at(k(key), table.clone(), message));
        }
        if let Some(span) = self.span_of(&k("thresholds.min_pairs")) {
            let msg = "set the phase's shadow.min_pairs instead".to_string();
            keep::<()>(&mut errors, self.err(span, k("thresholds.min_pairs"), msg));
        }
        errors
    }
}
