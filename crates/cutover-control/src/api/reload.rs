//! The reload the admin API asks for (`POST /v1/reload`): its outcome, its errors, and the
//! [`Reload`] trait that `serve` implements. The API sits below `serve` in the layers, so it
//! names this contract rather than `serve`'s listeners.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;

use cutover_config::ConfigError;
use serde::Serialize;

/// The future [`Reload::reload`] returns.
pub type ReloadFuture<'a> = Pin<Box<dyn Future<Output = Result<ReloadReport, ReloadError>> + Send + 'a>>;

/// Whatever serves the listeners: reads the configuration again and applies what changed.
pub trait Reload: Send + Sync {
    fn reload<'a>(&'a self, actor: &'a str) -> ReloadFuture<'a>;
}

/// Why a reload changed nothing.
#[derive(Debug)]
pub enum ReloadError {
    /// The file does not parse or validate.
    Invalid(ConfigError),
    /// A change reload cannot make in place (or a service is mid-release).
    Refused(String),
    /// A new listener could not be bound.
    Bind(String),
}

impl std::fmt::Display for ReloadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReloadError::Invalid(e) => write!(f, "the new configuration is invalid, nothing changed: {e}"),
            ReloadError::Refused(m) => write!(f, "reload refused, nothing changed: {m}"),
            ReloadError::Bind(m) => write!(f, "reload failed, nothing changed: {m}"),
        }
    }
}

/// What a reload changed.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ReloadReport {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    /// Per changed service, what changed in it (`health`, `blue.endpoints`, `listen`, ...).
    pub changed: BTreeMap<String, Vec<String>>,
    /// Per `tls` table (`services.chat.tls`): its files read again, `reloaded`, `unchanged` or
    /// why the new pair was refused. Not a change of the configuration: not in `summary`.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub certificates: BTreeMap<String, String>,
}

impl ReloadReport {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }

    pub fn summary(&self) -> String {
        if self.is_empty() {
            return "no changes".into();
        }
        let mut parts = Vec::new();
        if !self.added.is_empty() {
            parts.push(format!("added {}", self.added.join(", ")));
        }
        if !self.removed.is_empty() {
            parts.push(format!("removed {}", self.removed.join(", ")));
        }
        for (svc, what) in &self.changed {
            parts.push(format!("{svc}: {}", what.join(", ")));
        }
        parts.join("; ")
    }
}
