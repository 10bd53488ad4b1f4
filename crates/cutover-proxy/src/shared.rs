//! A shared listener: one address for several services, the service picked per request —
//! before its exchange begins — by `Host`, path prefix, or the OpenAI `model` field of a JSON
//! body read from its first bytes (never by buffering the body).
//!
//! The rules are fixed when the listener starts (a reload that would change them is
//! refused by the control plane), so picking reads an immutable list: no lock, no swap.
//! Each picked service then runs its own exchange: its own route table (loaded once),
//! colors, statistics and shadow tap.

use http::{Method, StatusCode};

use crate::error::{ProxyError, Source};
use crate::peek::{json_string_field, Peek};
use crate::route::Service;

/// What a shared listener hands a request to: one service's forwarder. A trait, so this
/// module does not depend on `exchange`, whose forwarder holds a shared listener.
pub trait Target: Send + Sync {
    fn service(&self) -> &Service;
}

/// How much of a body's start is read to find its `model` field: a chat request puts it
/// in its first bytes; one that does not within this many is answered 400, not buffered.
pub const MODEL_PEEK: usize = 64 * 1024;

/// Most services one shared listener can have (candidates are kept in a bit set).
pub const MAX_SERVICES: usize = 64;

/// What picks one service on a shared listener. Every field given must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rule {
    /// OpenAI model names, as the request body's `model` field says them.
    pub models: Vec<String>,
    /// The `Host`, lowercase, without its port.
    pub host: Option<String>,
    pub path_prefix: Option<String>,
}

/// The services of one shared listener, each with its rule (fixed at start).
pub struct Shared<T> {
    /// The listener's name (`[listeners.NAME]`), said in its own answers.
    pub name: String,
    routes: Vec<(Rule, T)>,
}

/// What the head of a request decides on a shared listener.
pub(crate) enum Choice<'a, T> {
    Service(&'a T),
    /// The `model` field decides, among the candidates (a bit set over the routes).
    ByModel(u64),
    /// `GET /v1/models`: answered by the listener itself, with this JSON.
    Models(String),
    Refuse(ProxyError),
}

/// What the first bytes of a body say about its `model`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Model {
    Found(String),
    /// No body, not a JSON object, or one without a string `model`.
    Missing,
    /// Not within the first [`MODEL_PEEK`] bytes.
    PastCap,
}

impl Model {
    /// The verdict on `bytes` (the body's start; `ended`: that is all of it), or `None`
    /// when more bytes are needed.
    pub(crate) fn read(bytes: &[u8], ended: bool) -> Option<Model> {
        match json_string_field(bytes, "model") {
            Peek::Found(m) => Some(Model::Found(m.into_owned())),
            Peek::Absent | Peek::NotJson => Some(Model::Missing),
            Peek::NeedMore if ended => Some(Model::Missing),
            Peek::NeedMore if bytes.len() >= MODEL_PEEK => Some(Model::PastCap),
            Peek::NeedMore => None,
        }
    }
}

impl<T: Target> Shared<T> {
    /// Fails when there are more services than [`MAX_SERVICES`].
    pub fn new(name: impl Into<String>, routes: Vec<(Rule, T)>) -> Result<Shared<T>, String> {
        let name = name.into();
        if routes.len() > MAX_SERVICES {
            return Err(format!(
                "listener {name} has {} services; at most {MAX_SERVICES} share one listener",
                routes.len()
            ));
        }
        Ok(Shared { name, routes })
    }

    /// The services of this listener, in order.
    pub fn targets(&self) -> impl Iterator<Item = &T> {
        self.routes.iter().map(|(_, t)| t)
    }

    /// Picks by the head: `host` is the `Host` header's value, `path` the target's path.
    pub(crate) fn by_head(&self, method: &Method, host: Option<&[u8]>, path: &[u8]) -> Choice<'_, T> {
        let host = host.map(without_port);
        let mut by_model = 0u64;
        let mut model_weight = 0;
        let mut best: Option<(usize, &T)> = None;
        for (i, (rule, fwd)) in self.routes.iter().enumerate() {
            if !head_matches(rule, host, path) {
                continue;
            }
            let weight = specificity(rule);
            if !rule.models.is_empty() {
                by_model |= 1 << i;
                model_weight = model_weight.max(weight);
                continue;
            }
            if best.is_none_or(|(w, _)| weight > w) {
                best = Some((weight, fwd));
            }
        }
        // A Host or prefix rule more specific than every model rule that matched takes the
        // request without reading its body (`admin.example` beside models on any host).
        if let Some((w, fwd)) = best {
            if by_model != 0 && w > model_weight {
                return Choice::Service(fwd);
            }
        }
        if by_model != 0 {
            if *method == Method::GET && path == b"/v1/models" {
                return Choice::Models(self.models(by_model));
            }
            if body_method(method) {
                return Choice::ByModel(by_model);
            }
        }
        match best {
            Some((_, fwd)) => Choice::Service(fwd),
            None if by_model != 0 => Choice::Refuse(self.needs_model(method)),
            None => Choice::Refuse(self.no_match(host, path)),
        }
    }

    /// Picks by the `model` among the candidates `by_head` found; a head-only rule that
    /// matched too takes requests with no model or an unknown one.
    pub(crate) fn by_model(
        &self,
        candidates: u64,
        model: &Model,
        host: Option<&[u8]>,
        path: &[u8],
    ) -> Result<&T, ProxyError> {
        if let Model::Found(m) = model {
            let hit = self
                .routes
                .iter()
                .enumerate()
                .find(|(i, (rule, _))| candidates & (1 << i) != 0 && rule.models.iter().any(|x| x == m));
            if let Some((_, (_, fwd))) = hit {
                return Ok(fwd);
            }
        }
        if let Choice::Service(fwd) = self.by_head(&Method::OPTIONS, host, path) {
            return Ok(fwd);
        }
        Err(match model {
            Model::Found(m) => ProxyError::new(
                StatusCode::NOT_FOUND,
                "model_not_found",
                Source::Routing,
                format!(
                    "The model `{m}` does not exist on this endpoint (listener {}); GET /v1/models lists the models served",
                    self.name
                ),
            )
            .about_field("model"),
            Model::Missing => ProxyError::new(
                StatusCode::BAD_REQUEST,
                "model_required",
                Source::Client,
                format!("listener {} routes by the `model` field: send a JSON body with a string `model`", self.name),
            )
            .about_field("model"),
            Model::PastCap => ProxyError::new(
                StatusCode::BAD_REQUEST,
                "model_not_in_first_bytes",
                Source::Client,
                format!(
                    "the body's `model` field is not within its first {MODEL_PEEK} bytes (listener {} reads no further, so a large body is never buffered): put `model` before large fields such as `messages` or `input`",
                    self.name
                ),
            )
            .about_field("model"),
        })
    }

    /// The OpenAI model list: the configured models of the candidates that have a live
    /// color. Read from the configuration, not asked of the model servers: what the
    /// listener routes is what it lists, and a listing never waits on a slow server.
    fn models(&self, candidates: u64) -> String {
        let data: Vec<serde_json::Value> = self
            .routes
            .iter()
            .enumerate()
            .filter(|(i, (_, fwd))| candidates & (1 << i) != 0 && fwd.service().table().live_color().is_some())
            .flat_map(|(_, (rule, fwd))| {
                rule.models.iter().map(
                    |m| serde_json::json!({"id": m, "object": "model", "created": 0, "owned_by": fwd.service().name}),
                )
            })
            .collect();
        serde_json::json!({"object": "list", "data": data}).to_string()
    }

    fn needs_model(&self, method: &Method) -> ProxyError {
        ProxyError::new(
            StatusCode::NOT_FOUND,
            "no_service_matches",
            Source::Routing,
            format!(
                "listener {} routes by the `model` field of a request body, and a {method} request has none (GET /v1/models lists the models)",
                self.name
            ),
        )
    }

    fn no_match(&self, host: Option<&[u8]>, path: &[u8]) -> ProxyError {
        ProxyError::new(
            StatusCode::NOT_FOUND,
            "no_service_matches",
            Source::Routing,
            format!(
                "no service on listener {} matches host {:?} and path {:?}",
                self.name,
                String::from_utf8_lossy(host.unwrap_or_default()),
                String::from_utf8_lossy(path)
            ),
        )
    }
}

/// How specific a rule's head part is; the most specific rule that matches wins. A named
/// host first (as nginx picks the server by name before a location), then the longest
/// prefix; `/` still outranks no prefix.
fn specificity(rule: &Rule) -> usize {
    let host = if rule.host.is_some() { 1 << 16 } else { 0 };
    host + rule.path_prefix.as_ref().map_or(0, |p| p.len() + 1)
}

/// Methods whose requests carry the JSON body a model is read from.
fn body_method(m: &Method) -> bool {
    *m == Method::POST || *m == Method::PUT || *m == Method::PATCH
}

fn head_matches(rule: &Rule, host: Option<&[u8]>, path: &[u8]) -> bool {
    let host_ok = rule
        .host
        .as_ref()
        .is_none_or(|h| host.is_some_and(|x| x.eq_ignore_ascii_case(h.as_bytes())));
    let path_ok = rule.path_prefix.as_ref().is_none_or(|p| prefix_of(p.as_bytes(), path));
    host_ok && path_ok
}

/// `/embed` is a prefix of `/embed` and `/embed/v1`, not of `/embedding`.
fn prefix_of(prefix: &[u8], path: &[u8]) -> bool {
    let p = prefix.strip_suffix(b"/").unwrap_or(prefix);
    path.starts_with(p) && matches!(path.get(p.len()), None | Some(b'/') | Some(b'?'))
}

/// `Host` without its port (`[::1]:8000` keeps its brackets).
fn without_port(h: &[u8]) -> &[u8] {
    match h.iter().rposition(|&b| b == b':') {
        Some(i) if !h[i..].contains(&b']') && h[i + 1..].iter().all(u8::is_ascii_digit) => &h[..i],
        _ => h,
    }
}

/// The `Host` header's value in a raw HTTP/1.1 head (the first one; the head was already
/// checked, so a second one was refused).
pub(crate) fn host_of(head: &[u8]) -> Option<&[u8]> {
    head.split(|&b| b == b'\n').skip(1).find_map(|line| {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let colon = line.iter().position(|&b| b == b':')?;
        line[..colon]
            .eq_ignore_ascii_case(b"host")
            .then(|| line[colon + 1..].trim_ascii())
    })
}

/// The path of a request target (origin form, or absolute form's path), without the query.
pub(crate) fn path_of(target: &str) -> &[u8] {
    let t = match target.find("://") {
        Some(i) => target[i + 3..].find('/').map_or("/", |j| &target[i + 3 + j..]),
        None => target,
    };
    t.split('?').next().unwrap_or("/").as_bytes()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::exchange::Forwarder;
    use crate::route::RouteTable;
    use crate::settings::ServiceSettings;

    fn fwd(name: &str) -> Arc<Forwarder> {
        Arc::new(Forwarder::new(
            Service::new(name, ServiceSettings::default(), RouteTable::default()),
            false,
        ))
    }

    fn rule(models: &[&str], host: Option<&str>, prefix: Option<&str>) -> Rule {
        Rule {
            models: models.iter().map(|m| m.to_string()).collect(),
            host: host.map(str::to_string),
            path_prefix: prefix.map(str::to_string),
        }
    }

    fn name(c: Choice<'_, Arc<Forwarder>>) -> String {
        match c {
            Choice::Service(f) => f.service.name.clone(),
            Choice::ByModel(m) => format!("by model {m:b}"),
            Choice::Models(j) => j,
            Choice::Refuse(e) => format!("{} {}", e.status.as_u16(), e.code),
        }
    }

    #[test]
    fn the_head_picks_by_host_then_longest_prefix_and_defers_to_the_model() {
        let s = Shared::new(
            "api",
            vec![
                (rule(&["llama"], None, None), fwd("chat")),
                (rule(&["bge"], None, None), fwd("embed")),
                (rule(&[], Some("admin.example"), None), fwd("admin")),
                (rule(&[], None, Some("/rerank")), fwd("rerank")),
                (rule(&[], None, Some("/rerank/v2")), fwd("rerank2")),
            ],
        )
        .unwrap();
        let post = Method::POST;
        assert_eq!(name(s.by_head(&post, Some(b"Admin.Example:8000"), b"/x")), "admin");
        assert_eq!(name(s.by_head(&post, None, b"/rerank/v2/go")), "rerank2");
        assert_eq!(name(s.by_head(&post, None, b"/rerank")), "rerank");
        assert_eq!(
            name(s.by_head(&post, Some(b"admin.example"), b"/rerank/v2")),
            "admin",
            "a host outranks a prefix"
        );
        assert_eq!(name(s.by_head(&post, None, b"/reranking")), "by model 11");
        assert_eq!(
            name(s.by_head(&Method::GET, None, b"/health")),
            "404 no_service_matches"
        );
        // No live color yet: nothing listed.
        assert_eq!(
            name(s.by_head(&Method::GET, None, b"/v1/models")),
            r#"{"data":[],"object":"list"}"#
        );
        let pick = |m: Model| s.by_model(0b11, &m, None, b"/v1/x").map(|f| f.service.name.clone());
        assert_eq!(pick(Model::Found("bge".into())).unwrap(), "embed");
        let e = pick(Model::Found("gpt-9".into())).unwrap_err();
        let body = e.clone().into_response("api", None, false);
        assert_eq!(
            (e.status.as_u16(), e.code, e.param),
            (404, "model_not_found", Some("model"))
        );
        assert_eq!(body.status(), 404);
        assert_eq!(pick(Model::PastCap).unwrap_err().code, "model_not_in_first_bytes");
        assert_eq!(pick(Model::Missing).unwrap_err().code, "model_required");
    }

    #[test]
    fn a_model_is_read_from_the_first_bytes_or_refused_past_the_cap() {
        assert_eq!(
            Model::read(br#"{"model":"m","input":"#, false),
            Some(Model::Found("m".into()))
        );
        assert_eq!(Model::read(br#"{"input":"x"#, false), None);
        assert_eq!(Model::read(br#"{"input":"x"#, true), Some(Model::Missing));
        assert_eq!(Model::read(b"", true), Some(Model::Missing));
        let mut big = br#"{"input":""#.to_vec();
        big.resize(MODEL_PEEK, b'a');
        assert_eq!(Model::read(&big, false), Some(Model::PastCap));
    }

    #[test]
    fn hosts_and_paths_are_read_from_raw_heads() {
        let head = b"POST /v1/x?a=1 HTTP/1.1\r\nContent-Length: 2\r\nHOST:  a.example:80 \r\n\r\n";
        assert_eq!(host_of(head), Some(&b"a.example:80"[..]));
        assert_eq!(without_port(b"a.example:80"), b"a.example");
        assert_eq!(without_port(b"[::1]"), b"[::1]");
        assert_eq!(without_port(b"[::1]:9"), b"[::1]");
        assert_eq!(path_of("/v1/x?a=1"), b"/v1/x");
        assert_eq!(path_of("http://h:1/v1/y?q"), b"/v1/y");
        assert_eq!(path_of("http://h:1"), b"/");
        assert!(prefix_of(b"/embed/", b"/embed") && !prefix_of(b"/embed", b"/embedding"));
    }
}
