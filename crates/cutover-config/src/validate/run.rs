//! `[services.NAME.run]`: a managed environment's template (its placeholders, that each
//! replica is told its port), its ports (distinct, balanced, not taken by a listener of
//! ours) and its host agents.

use std::net::SocketAddr;

use toml::Spanned;

use super::{Claims, Source, Span};
use crate::error::ConfigError;
use crate::model::{RunConfig, PLACEHOLDERS};
use crate::value::is_host_name;

/// The `{name}` placeholders in one template string (`{` ... `}` around a plain word; JSON
/// such as `{"a": 1}` in an argument is not one).
pub(crate) fn placeholders(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = s;
    while let Some(i) = rest.find('{') {
        let after = &rest[i + 1..];
        let Some(j) = after.find('}') else { break };
        let inner = &after[..j];
        if !inner.is_empty() && inner.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            out.push(inner);
        }
        rest = &after[j..];
    }
    out
}

/// Edit distance, for "did you mean {port}?".
pub(crate) fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

fn unknown_placeholder(name: &str, value: &str) -> String {
    let known: Vec<String> = PLACEHOLDERS.iter().map(|p| format!("{{{p}}}")).collect();
    let near = PLACEHOLDERS
        .iter()
        .map(|p| (distance(name, p), p))
        .min()
        .filter(|(d, _)| *d <= 2)
        .map(|(_, p)| format!(" (did you mean {{{p}}}?)"))
        .unwrap_or_default();
    format!(
        "unknown placeholder {{{name}}} in {value:?}{near}; the known ones are {}",
        known.join(", ")
    )
}

impl Source<'_> {
    pub(super) fn managed(
        &self,
        name: &str,
        run: Spanned<RunConfig>,
        claims: &mut Claims,
    ) -> Result<RunConfig, ConfigError> {
        let k = |rest: &str| format!("services.{name}.{rest}");
        let rspan = run.span();
        let mut run = run.into_inner();
        if run.command.is_empty() {
            return self.err(rspan, k("run.command"), "must name a program to run".into());
        }
        self.run_template(name, &run, &rspan)?;
        // The line of `ports` (or of the offending port) when the file has it, not the header.
        let at = |key: &str| self.span_of(key).unwrap_or_else(|| rspan.clone());
        if run.ports.blue.is_empty() || run.ports.green.is_empty() {
            return self.err(
                at(&k("run.ports")),
                k("run.ports"),
                "each color needs at least one port (one per replica)".into(),
            );
        }
        if run.ports.blue.len() != run.ports.green.len() {
            return self.err(
                at(&k("run.ports")),
                k("run.ports"),
                "both colors must have the same number of ports: they are identical environments".into(),
            );
        }
        for (color, ports) in [("blue", &run.ports.blue), ("green", &run.ports.green)] {
            for (i, p) in ports.iter().enumerate() {
                let key = format!("{}.{color}", k("run.ports"));
                let span = at(&format!("{key}.{i}"));
                if *p == 0 {
                    return self.err(
                        span,
                        key,
                        "port 0 is not allowed: cutover must know where the model server listens".into(),
                    );
                }
                if let Some(other) = claims.managed_ports.insert(*p, key.clone()) {
                    return self.err(span, key, format!("port {p} is also used by `{other}`"));
                }
                // On host agents the ports are the agents' machines', not this one's.
                if !run.hosts.is_empty() {
                    continue;
                }
                self.claim(claims, SocketAddr::new(run.host, *p), key, span)?;
            }
        }
        self.run_hosts(name, &run, &rspan, claims.fleet)?;
        run.workdir = run.workdir.map(|w| self.resolve(&w));
        Ok(run)
    }

    /// `run.hosts`: fleet mode only, each a host agent's name (it becomes part of etcd keys
    /// and of endpoint names), no name twice.
    pub(super) fn run_hosts(&self, name: &str, run: &RunConfig, rspan: &Span, fleet: bool) -> Result<(), ConfigError> {
        if run.hosts.is_empty() {
            return Ok(());
        }
        let key = format!("services.{name}.run.hosts");
        let span = self.span_of(&key).unwrap_or_else(|| rspan.clone());
        if !fleet {
            return self.err(
                span,
                key,
                "host agents are a fleet mode feature: set `store.url = \"etcd://HOST:PORT,...\"` and `store.fleet`, or leave `hosts` out to run the processes on this machine".into(),
            );
        }
        for (i, h) in run.hosts.iter().enumerate() {
            if !is_host_name(h) {
                return self.err(
                    span,
                    format!("{key}[{i}]"),
                    format!("{h:?} is not a host agent name (letters, digits, `-`, `.`; what `cutover agent --host` was given)"),
                );
            }
            if run.hosts[..i].contains(h) {
                return self.err(span, format!("{key}[{i}]"), format!("host {h:?} is listed twice"));
            }
        }
        Ok(())
    }

    /// Errors of a managed environment's template: unknown placeholders, and no `{port}`.
    fn run_template(&self, name: &str, run: &RunConfig, rspan: &Span) -> Result<(), ConfigError> {
        let k = |rest: &str| format!("services.{name}.run.{rest}");
        for (i, arg) in run.command.iter().enumerate() {
            if let Some(p) = placeholders(arg).into_iter().find(|p| !PLACEHOLDERS.contains(p)) {
                let span = self.near(&[&k(&format!("command.{i}")), &k("command")], rspan);
                return self.err(span, format!("{}[{i}]", k("command")), unknown_placeholder(p, arg));
            }
        }
        for (key, value) in &run.env {
            if let Some(p) = placeholders(value).into_iter().find(|p| !PLACEHOLDERS.contains(p)) {
                let span = self.near(&[&k(&format!("env.{key}")), &k("env")], rspan);
                return self.err(span, k(&format!("env.{key}")), unknown_placeholder(p, value));
            }
        }
        let told_port = run
            .command
            .iter()
            .chain(run.env.values())
            .any(|s| placeholders(s).contains(&"port"));
        if !told_port {
            let span = self.near(&[&k("command")], rspan);
            return self.err(
                span,
                k("command"),
                "no {port} in the command or its env: each replica must listen on the port cutover gives it (run.ports), \
                 or the release waits out its whole health_timeout (default 10m) and fails; add e.g. \"--port\", \"{port}\""
                    .into(),
            );
        }
        Ok(())
    }
}
