//! The run's release events for its webhooks: every phase change, awaiting approval, and the
//! end (completed, aborted, rolled back). Queued, never awaited.

use cutover_release::{Outcome, Phase};
use cutover_store::now_rfc3339;
use serde_json::json;

use super::webhooks::text;
use super::ReleaseRun;

impl ReleaseRun {
    /// Queues the events of the transition `from` → `to` just committed.
    pub(super) fn notify(&self, from: Phase, to: Phase, reason: &str) {
        let (service, id, version, color, outcome) = self.doc(|d| {
            (
                d.service.clone(),
                d.id,
                d.version.clone(),
                d.color.to_string(),
                d.outcome,
            )
        });
        let outcome = match outcome {
            Some(Outcome::Completed) => Some("completed"),
            Some(Outcome::Aborted) => Some("aborted"),
            Some(Outcome::RolledBack) => Some("rolled_back"),
            Some(Outcome::Interrupted) | None => None,
        };
        let mut events = vec!["phase"];
        if to == Phase::AwaitingApproval {
            events.push("awaiting_approval");
        }
        events.extend(outcome);
        for event in events {
            let payload = json!({
                "service": service,
                "release": id,
                "version": version,
                "color": color,
                "from": from.as_str(),
                "phase": to.as_str(),
                "outcome": outcome,
                "reason": reason,
                "at": now_rfc3339(),
                "text": text(&service, id, &version, event, to.as_str(), reason),
            });
            self.webhooks.send(event, payload);
        }
    }
}
