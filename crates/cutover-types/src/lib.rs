//! The words every crate of cutover shares, each one type in one place: a service's two
//! [`Color`]s, the upstream [`Protocol`], a managed process's [`RestartPolicy`] and the
//! [`HistoryKind`] of a history line.
//!
//! Their spellings are stored: in SQLite rows, etcd documents, release documents and API
//! answers. Each type writes and reads exactly the text those hold, through serde,
//! `Display`/`as_str` and `FromStr` alike, so the three can never disagree.
//!
//! This crate sits at the bottom of the workspace's graph and depends on serde only.

#![forbid(unsafe_code)]

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// One of the two fixed positions of a service (`"blue"` / `"green"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Color {
    Blue,
    Green,
}

impl Color {
    pub const ALL: [Color; 2] = [Color::Blue, Color::Green];

    pub const fn as_str(self) -> &'static str {
        match self {
            Color::Blue => "blue",
            Color::Green => "green",
        }
    }

    pub const fn other(self) -> Color {
        match self {
            Color::Blue => Color::Green,
            Color::Green => Color::Blue,
        }
    }

    /// The color's place in a per-color array (`[T; 2]`): blue 0, green 1.
    pub const fn index(self) -> usize {
        match self {
            Color::Blue => 0,
            Color::Green => 1,
        }
    }
}

impl fmt::Display for Color {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Color {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "blue" => Ok(Color::Blue),
            "green" => Ok(Color::Green),
            other => Err(format!("unknown color {other:?}: expected \"blue\" or \"green\"")),
        }
    }
}

/// The protocol a service's model servers speak (`upstream_protocol`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    #[default]
    Http1,
    /// HTTP/2: with prior knowledge over plain TCP (gRPC model servers), or negotiated by
    /// ALPN `h2` to `https://` endpoints. `"h2"` is the same setting, the name that reads
    /// right for TLS endpoints.
    #[serde(alias = "h2")]
    H2c,
}

/// Which engine serves a service's HTTP/1.1 clients when its upstreams are plain HTTP/1.1
/// (`http1_engine`; every other client or upstream takes hyper whatever this says).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Http1Engine {
    /// cutover's own engine: one task per connection, no hyper in between.
    #[default]
    Own,
    /// hyper's HTTP/1.1 server and client, as for TLS clients: for comparisons, or as an
    /// escape hatch should the own engine misbehave with some client.
    Hyper,
}

/// Whether a managed process that exits without being asked to is started again
/// (`[services.NAME.run] restart`, and the template fleet agents are sent).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    /// Restart after any exit cutover did not ask for (a model server is meant to run until
    /// stopped, so a clean exit is a failure too), with a doubling backoff.
    #[default]
    OnFailure,
    /// Record and report the exit; never start the process again.
    Never,
}

impl RestartPolicy {
    pub const fn as_str(self) -> &'static str {
        match self {
            RestartPolicy::OnFailure => "on-failure",
            RestartPolicy::Never => "never",
        }
    }
}

impl fmt::Display for RestartPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a history line records. The text of each is part of the API (`kind` in history),
/// of the store's rows and of fleet mode's `history/` documents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum HistoryKind {
    /// A switch asked for by a person or a release.
    Switched,
    /// A switch back to the previous live color.
    RolledBack,
    ReleaseStarted,
    /// A person (or `auto_promote_after`) approved a release awaiting approval.
    ReleaseApproved,
    ReleaseCompleted,
    ReleaseAborted,
    ReleaseRolledBack,
    /// A restart found the release unfinished.
    ReleaseInterrupted,
    /// The old color was stopped (managed) or marked stale (static) after `scale_down_delay`.
    ScaledDown,
    /// A managed process exited without being asked to; the reason has its status, what
    /// happens next (restart, or why not) and where its log is.
    ProcessExited,
    /// The supervisor started a managed process again after it exited.
    ProcessRestarted,
    /// A configuration reload added the service or changed it; the reason lists what changed.
    Reconfigured,
    /// Someone stopped a managed color's model servers on purpose (`cutover stop`).
    Stopped,
    /// A progressive release gave the new color (`to`) a share of the live traffic; the
    /// reason says which share and which step. The live color (`from`) is unchanged.
    Stepped,
}

impl HistoryKind {
    pub const ALL: [HistoryKind; 14] = [
        HistoryKind::Switched,
        HistoryKind::RolledBack,
        HistoryKind::ReleaseStarted,
        HistoryKind::ReleaseApproved,
        HistoryKind::ReleaseCompleted,
        HistoryKind::ReleaseAborted,
        HistoryKind::ReleaseRolledBack,
        HistoryKind::ReleaseInterrupted,
        HistoryKind::ScaledDown,
        HistoryKind::ProcessExited,
        HistoryKind::ProcessRestarted,
        HistoryKind::Reconfigured,
        HistoryKind::Stopped,
        HistoryKind::Stepped,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            HistoryKind::Switched => "switched",
            HistoryKind::RolledBack => "rolled_back",
            HistoryKind::ReleaseStarted => "release_started",
            HistoryKind::ReleaseApproved => "release_approved",
            HistoryKind::ReleaseCompleted => "release_completed",
            HistoryKind::ReleaseAborted => "release_aborted",
            HistoryKind::ReleaseRolledBack => "release_rolled_back",
            HistoryKind::ReleaseInterrupted => "release_interrupted",
            HistoryKind::ScaledDown => "scaled_down",
            HistoryKind::ProcessExited => "process_exited",
            HistoryKind::ProcessRestarted => "process_restarted",
            HistoryKind::Reconfigured => "reconfigured",
            HistoryKind::Stopped => "stopped",
            HistoryKind::Stepped => "stepped",
        }
    }
}

impl fmt::Display for HistoryKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for HistoryKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        HistoryKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| format!("not a history kind: {s:?}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parses `text` as a JSON string into `T`.
    fn from_json<T: serde::de::DeserializeOwned>(text: &str) -> T {
        serde_json::from_value(serde_json::Value::String(text.into())).unwrap()
    }

    /// The spellings stored in SQLite rows, etcd documents and API answers before this crate
    /// existed, written out by hand: each must read back as the same value and be written
    /// exactly so by serde, `Display` and `as_str`, and `FromStr` must agree.
    #[test]
    fn colors_keep_their_stored_spelling() {
        for (c, text) in [(Color::Blue, "blue"), (Color::Green, "green")] {
            assert_eq!(c.as_str(), text);
            assert_eq!(c.to_string(), text);
            assert_eq!(serde_json::to_value(c).unwrap(), text);
            assert_eq!(from_json::<Color>(text), c);
            assert_eq!(text.parse::<Color>(), Ok(c));
        }
        assert_eq!(Color::ALL.map(Color::index), [0, 1]);
        assert_eq!(Color::ALL.map(Color::other), [Color::Green, Color::Blue]);
        let e = "Blue".parse::<Color>().unwrap_err();
        assert!(e.contains("\"Blue\""), "{e}");
        assert!(serde_json::from_str::<Color>("\"purple\"").is_err());
    }

    #[test]
    fn history_kinds_keep_their_stored_spelling() {
        let stored = [
            "switched",
            "rolled_back",
            "release_started",
            "release_approved",
            "release_completed",
            "release_aborted",
            "release_rolled_back",
            "release_interrupted",
            "scaled_down",
            "process_exited",
            "process_restarted",
            "reconfigured",
            "stopped",
            "stepped",
        ];
        assert_eq!(HistoryKind::ALL.len(), stored.len());
        for (k, text) in HistoryKind::ALL.into_iter().zip(stored) {
            assert_eq!(k.as_str(), text);
            assert_eq!(k.to_string(), text);
            assert_eq!(serde_json::to_value(k).unwrap(), text);
            assert_eq!(from_json::<HistoryKind>(text), k);
            assert_eq!(text.parse::<HistoryKind>(), Ok(k));
        }
        assert!("forced".parse::<HistoryKind>().is_err());
    }

    #[test]
    fn restart_policies_keep_their_config_and_document_spelling() {
        for (p, text) in [
            (RestartPolicy::OnFailure, "on-failure"),
            (RestartPolicy::Never, "never"),
        ] {
            assert_eq!(p.as_str(), text);
            assert_eq!(p.to_string(), text);
            assert_eq!(serde_json::to_value(p).unwrap(), text);
            assert_eq!(from_json::<RestartPolicy>(text), p);
        }
        assert_eq!(RestartPolicy::default(), RestartPolicy::OnFailure);
    }

    #[test]
    fn http1_engines_read_the_config_spellings() {
        assert_eq!(from_json::<Http1Engine>("own"), Http1Engine::Own);
        assert_eq!(from_json::<Http1Engine>("hyper"), Http1Engine::Hyper);
        assert_eq!(Http1Engine::default(), Http1Engine::Own);
        assert!(serde_json::from_str::<Http1Engine>("\"h2\"").is_err());
    }

    #[test]
    fn protocols_read_the_config_spellings() {
        assert_eq!(from_json::<Protocol>("http1"), Protocol::Http1);
        assert_eq!(from_json::<Protocol>("h2c"), Protocol::H2c);
        assert_eq!(from_json::<Protocol>("h2"), Protocol::H2c);
        assert_eq!(Protocol::default(), Protocol::Http1);
        assert!(serde_json::from_str::<Protocol>("\"http2\"").is_err());
    }
}
