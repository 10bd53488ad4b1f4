//! Stage one's checks: the raw file becomes the typed model, section by section, and every
//! error is placed at its file, line and dotted key. Each part of the file (`[admin]` with
//! `[store]`, each listener, each service) is checked on its own, so one run names the
//! problems of all of them; the rules of one section live in the file named after it.

mod admin;
mod health;
mod release;
pub(crate) mod run;
mod service;
mod shape;
mod shared;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use toml::Spanned;

use crate::error::ConfigError;
use crate::model::Config;
use crate::raw::RawConfig;

/// Byte offsets into the config text.
pub(crate) type Span = std::ops::Range<usize>;

/// The value of a check that passed; a failed one's error joins `errors`.
pub(crate) fn keep<T>(errors: &mut Vec<ConfigError>, r: Result<T, ConfigError>) -> Option<T> {
    r.map_err(|e| errors.push(e)).ok()
}

/// The source being validated, for locating errors.
pub(crate) struct Source<'a> {
    pub(crate) path: &'a Path,
    text: &'a str,
    /// The document with the span of every key, for errors about a value the typed
    /// structures keep without its position (`None` only when the text does not parse,
    /// which fails earlier).
    doc: Option<Spanned<toml::de::DeTable<'a>>>,
}

/// Every address a listener of ours takes, and every managed port, with the key that took
/// it: two of them on one address would fail at bind time or proxy to themselves.
#[derive(Default)]
pub(crate) struct Claims {
    addrs: HashMap<SocketAddr, String>,
    managed_ports: HashMap<u16, String>,
    /// The shared listeners' addresses by name (read before the services that name them).
    listeners: HashMap<String, SocketAddr>,
    /// `[store] url` is set: managed services may run on host agents.
    fleet: bool,
}

/// Validates config text, reporting every error, in file order (never an empty list). Text
/// that is not TOML stops at its syntax error; each part of the file (`[admin]` and
/// `[store]`, each service) is read and checked on its own (see [`Source::part`]).
pub fn parse_all(path: &Path, text: &str) -> Result<Config, Vec<ConfigError>> {
    let ctx = Source::new(path, text);
    let de = toml::Deserializer::parse(text).map_err(|e| vec![ctx.toml_error(&e, String::new())])?;
    let errors = match serde_path_to_error::deserialize::<_, RawConfig>(de) {
        Ok(raw) => match ctx.validate(raw) {
            Ok(cfg) => return Ok(cfg),
            Err(errors) => errors,
        },
        Err(e) => ctx.shape_errors(&e),
    };
    // A part deserialized again on its own repeats the error the whole file stopped at.
    let mut once: Vec<ConfigError> = Vec::with_capacity(errors.len());
    for e in errors {
        if !once.contains(&e) {
            once.push(e);
        }
    }
    once.sort_by_key(|e| e.line);
    Err(once)
}

impl<'a> Source<'a> {
    pub(crate) fn new(path: &'a Path, text: &'a str) -> Source<'a> {
        Source {
            path,
            text,
            doc: toml::de::DeTable::parse(text).ok(),
        }
    }

    pub(crate) fn line_of(&self, offset: usize) -> usize {
        self.text[..offset.min(self.text.len())].matches('\n').count() + 1
    }

    pub(crate) fn toml_error(&self, e: &toml::de::Error, key: String) -> ConfigError {
        ConfigError {
            file: self.path.to_path_buf(),
            line: e.span().map(|s| self.line_of(s.start)).unwrap_or(0),
            key,
            message: e.message().trim().to_string(),
        }
    }

    pub(crate) fn err<T>(&self, span: Span, key: String, message: String) -> Result<T, ConfigError> {
        Err(ConfigError {
            file: self.path.to_path_buf(),
            line: self.line_of(span.start),
            key,
            message,
        })
    }

    /// The span of the value at a dotted key (array elements by index), if the file has it.
    pub(crate) fn span_of(&self, key: &str) -> Option<Span> {
        let doc = self.doc.as_ref()?;
        let mut parts = key.split('.');
        let mut span = None;
        let mut table = Some(doc.get_ref());
        let mut array: Option<&[Spanned<toml::de::DeValue<'_>>]> = None;
        for part in &mut parts {
            let v = match (table, array) {
                (Some(t), _) => t.get(part)?,
                (None, Some(a)) => a.get(part.parse::<usize>().ok()?)?,
                (None, None) => return None,
            };
            span = Some(v.span());
            (table, array) = match v.get_ref() {
                toml::de::DeValue::Table(t) => (Some(t), None),
                toml::de::DeValue::Array(a) => (None, Some(&a[..])),
                _ => (None, None),
            };
        }
        span
    }

    /// An error about `key`, on its own line when the file names it, else at `fallback`
    /// (the nearest enclosing table: a default value has no line of its own).
    pub(crate) fn err_at<T>(&self, key: String, fallback: Span, message: String) -> Result<T, ConfigError> {
        let span = self.span_of(&key).unwrap_or(fallback);
        self.err(span, key, message)
    }

    /// The config file's folder, absolute: managed processes and hooks run from it.
    /// The span of `key`, or of the nearest enclosing key the file has.
    pub(crate) fn near(&self, keys: &[&str], fallback: &Span) -> Span {
        keys.iter()
            .find_map(|k| self.span_of(k))
            .unwrap_or_else(|| fallback.clone())
    }

    pub(crate) fn dir(&self) -> PathBuf {
        let abs = std::path::absolute(self.path).unwrap_or_else(|_| self.path.to_path_buf());
        abs.parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("/"))
    }

    pub(crate) fn resolve(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.dir().join(p)
        }
    }

    pub(crate) fn addr(&self, s: &Spanned<String>, key: String) -> Result<SocketAddr, ConfigError> {
        s.get_ref().parse::<SocketAddr>().or_else(|_| {
            self.err(
                s.span(),
                key,
                format!(
                    "invalid address {:?}; expected IP:PORT such as \"127.0.0.1:8080\"",
                    s.get_ref()
                ),
            )
        })
    }

    /// Records that `key` listens on `addr`; port 0 never collides (the kernel picks).
    pub(crate) fn claim(
        &self,
        claims: &mut Claims,
        addr: SocketAddr,
        key: String,
        span: Span,
    ) -> Result<(), ConfigError> {
        if addr.port() == 0 {
            return Ok(());
        }
        if let Some(other) = claims.addrs.get(&addr) {
            return self.err(span, key, format!("address {addr} is already used by `{other}`"));
        }
        claims.addrs.insert(addr, key);
        Ok(())
    }
}

impl Source<'_> {
    /// Every error of a file whose shape deserialized: `[admin]`, `[store]` and each service
    /// are checked on their own, so one run names the problems of all of them.
    fn validate(&self, raw: RawConfig) -> Result<Config, Vec<ConfigError>> {
        let mut errors = Vec::new();
        let mut claims = Claims::default();
        let admin = keep(&mut errors, self.admin(&raw.admin, &mut claims));
        let store = keep(&mut errors, self.store(&raw.store));
        claims.fleet = store.as_ref().is_some_and(|s| s.fleet.is_some());
        if raw.services.is_empty() && !self.has_services() {
            errors.push(self.no_services());
        }
        let listeners = self.listeners(&raw.listeners, &mut claims, &mut errors);
        let mut services = BTreeMap::new();
        for (name, svc) in raw.services {
            match self.service(&name, svc, &mut claims) {
                Ok(svc) => {
                    services.insert(name, svc);
                }
                Err(e) => errors.extend(e),
            }
        }
        keep(&mut errors, self.no_self_proxy(&services, &claims));
        errors.extend(self.shared_routes(&raw.listeners, &services));
        match (admin, store) {
            (Some(admin), Some(store)) if errors.is_empty() => Ok(Config {
                path: std::path::absolute(self.path).unwrap_or_else(|_| self.path.to_path_buf()),
                admin,
                store,
                services,
                listeners,
            }),
            _ => Err(errors),
        }
    }

    /// A file with no service would run a router that serves nothing: a truncated or wrong
    /// file more likely than a wish.
    fn no_services(&self) -> ConfigError {
        ConfigError {
            file: self.path.to_path_buf(),
            line: self.span_of("services").map(|s| self.line_of(s.start)).unwrap_or(0),
            key: "services".into(),
            message: "no service is configured: add a [services.NAME] table with `listen` and its environments \
                      (static [services.NAME.blue]/[services.NAME.green] endpoints or a managed [services.NAME.run]); \
                      see examples/static.toml"
                .into(),
        }
    }

    /// True when the file has at least one `[services.NAME]` table.
    fn has_services(&self) -> bool {
        let Some(doc) = &self.doc else { return false };
        matches!(doc.get_ref().get("services").map(|s| s.get_ref()), Some(toml::de::DeValue::Table(t)) if !t.is_empty())
    }
}
