//! `[[services.NAME.release.webhooks]]`: signed JSON POSTs on release events, and
//! `[services.NAME.release.approval_webhook]`: an endpoint whose 2xx approves a release that
//! waits for manual promotion.

use std::path::PathBuf;

use serde::Deserialize;

use crate::value::Duration;

/// The release events a webhook can ask for.
pub const WEBHOOK_EVENTS: [&str; 5] = ["phase", "awaiting_approval", "completed", "aborted", "rolled_back"];

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// `http://` URL the events are POSTed to.
    pub url: String,
    /// A file holding the HMAC-SHA256 key (surrounding whitespace ignored); relative to the
    /// config's folder. Without it, the POSTs are not signed.
    #[serde(default)]
    pub secret_file: Option<PathBuf>,
    /// The events wanted (default: all of [`WEBHOOK_EVENTS`]).
    #[serde(default = "all_events")]
    pub events: Vec<String>,
    /// Deadline of one attempt.
    #[serde(default = "timeout")]
    pub timeout: Duration,
    /// Attempts per event before it is dropped (logged), with doubling backoff between them.
    #[serde(default = "attempts")]
    pub attempts: u32,
    /// Events waiting to be sent; a full queue drops new ones (logged) rather than wait.
    #[serde(default = "queue")]
    pub queue: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApprovalWebhookConfig {
    pub url: String,
    #[serde(default)]
    pub secret_file: Option<PathBuf>,
    /// How often the release is offered while it awaits approval.
    #[serde(default = "approval_interval")]
    pub interval: Duration,
    #[serde(default = "timeout")]
    pub timeout: Duration,
}

fn all_events() -> Vec<String> {
    WEBHOOK_EVENTS.iter().map(|s| s.to_string()).collect()
}
fn timeout() -> Duration {
    Duration(std::time::Duration::from_secs(5))
}
fn approval_interval() -> Duration {
    Duration(std::time::Duration::from_secs(5))
}
fn attempts() -> u32 {
    5
}
fn queue() -> usize {
    256
}

/// The first key whose value cannot work, and why.
pub(crate) fn invalid_url(url: &str) -> Option<(&'static str, String)> {
    (!url.starts_with("http://")).then(|| ("url", format!("must be an http:// URL, got {url:?}")))
}

impl WebhookConfig {
    pub(crate) fn invalid(&self) -> Option<(&'static str, String)> {
        if let Some(e) = invalid_url(&self.url) {
            return Some(e);
        }
        if let Some(e) = self.events.iter().find(|e| !WEBHOOK_EVENTS.contains(&e.as_str())) {
            return Some((
                "events",
                format!("unknown event {e:?}; known: {}", WEBHOOK_EVENTS.join(", ")),
            ));
        }
        if self.attempts == 0 {
            return Some(("attempts", "must be at least 1".into()));
        }
        (self.queue == 0).then(|| ("queue", "must be at least 1".into()))
    }

    pub fn wants(&self, event: &str) -> bool {
        self.events.iter().any(|e| e == event)
    }
}
