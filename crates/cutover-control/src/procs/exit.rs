//! An exit nobody asked for, and the watch per color that publishes it: what a release run
//! waits on, fed by the local supervisor or by the host agents' reports.

use cutover_proxy::Color;
use serde::Serialize;
use tokio::sync::watch;

/// An exit nobody asked for.
#[derive(Debug, Clone, Serialize)]
pub struct Exit {
    /// Which start of the color's processes it belongs to (`Supervisor::epoch`).
    #[serde(skip)]
    pub epoch: u64,
    pub replica: u32,
    pub pid: u32,
    pub version: String,
    /// `exit status: 1`, `signal: 9 (SIGKILL)`, or why it is unknown.
    pub status: String,
    pub at: String,
    pub log: Option<String>,
    /// The last lines of its log, each prefixed with `| `.
    #[serde(skip)]
    pub tail: String,
    /// The host agent it ran on (`run.hosts`); `None` on this machine.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
}

impl Exit {
    /// One message for reasons and history: what exited, how, its log and last lines.
    pub fn describe(&self, color: Color) -> String {
        let on = self.host.as_ref().map(|h| format!(" on {h}")).unwrap_or_default();
        let mut s = format!(
            "{color} replica {}{on} ({}, pid {}) exited: {}",
            self.replica, self.version, self.pid, self.status
        );
        if let Some(log) = &self.log {
            s.push_str(&format!("; log: {log}"));
            if self.tail.is_empty() {
                s.push_str(" (empty)");
            } else {
                s.push_str(&format!("; last lines:\n{}", self.tail));
            }
        }
        s
    }
}

/// The latest exit nobody asked for, per color: what a release run waits on, fed by the
/// local supervisor or by the host agents' reports.
pub struct ExitWatch([watch::Sender<Option<Exit>>; 2]);

impl Default for ExitWatch {
    fn default() -> Self {
        ExitWatch([watch::Sender::new(None), watch::Sender::new(None)])
    }
}

impl ExitWatch {
    pub fn publish(&self, color: Color, exit: Exit) {
        self.0[idx(color)].send_replace(Some(exit));
    }

    /// The unasked-for exit of the processes of `epoch`, if one happened.
    pub fn exit_of(&self, color: Color, epoch: u64) -> Option<Exit> {
        self.0[idx(color)].borrow().clone().filter(|e| e.epoch == epoch)
    }

    /// Waits for an unasked-for exit of the processes of `epoch` (forever if none comes).
    pub async fn wait_exit(&self, color: Color, epoch: u64) -> Exit {
        let mut rx = self.0[idx(color)].subscribe();
        let seen = rx
            .wait_for(|e| e.as_ref().is_some_and(|e| e.epoch == epoch))
            .await
            .map(|e| e.clone());
        match seen {
            Ok(Some(e)) => e,
            // The sender lives as long as its owner, which outlives this borrow.
            _ => std::future::pending().await,
        }
    }
}

fn idx(c: Color) -> usize {
    match c {
        Color::Blue => 0,
        Color::Green => 1,
    }
}
