//! Stopping a managed color's model servers on purpose (`cutover stop`): drained first, then
//! stopped and recorded, and never restarted by the policy afterwards.

use cutover_proxy::Color;
use cutover_store::{EventRecord, HistoryKind};
use serde::Serialize;

use super::{ColorState, ServiceCtl};
use crate::base::error::StopError;
use crate::base::store_call::record;
use crate::procs::supervisor::Role;

/// A request to stop a color.
#[derive(Debug, Clone)]
pub struct StopRequest {
    /// `None`: the idle color.
    pub color: Option<Color>,
    /// Stop even the live color.
    pub force: bool,
    pub actor: String,
    pub reason: Option<String>,
}

/// What a stop did.
#[derive(Debug, Clone, Serialize)]
pub struct StopOutcome {
    pub color: Color,
    pub version: Option<String>,
    /// The color was live: clients get errors until something is live again.
    pub was_live: bool,
    /// False when nothing ran there (stopping again is not an error).
    pub had_processes: bool,
    /// How the drain went (`drained in 0.0 s`).
    pub drained: String,
}

impl ServiceCtl {
    /// Which color a stop means, or why it cannot be stopped.
    fn stop_target(&self, req: &StopRequest) -> Result<Color, StopError> {
        let service = self.name.clone();
        if self.procs.is_none() {
            return Err(StopError::NotManaged { service });
        }
        let color = match (req.color, self.live()) {
            (Some(c), _) => c,
            (None, Some(live)) => live.other(),
            (None, None) => return Err(StopError::NothingLive { service }),
        };
        if self.live() == Some(color) && !req.force {
            return Err(StopError::Live { service, color });
        }
        Ok(color)
    }

    /// Drains `color` and stops its managed processes; records it in the history. The
    /// caller has made sure no release runs.
    pub(crate) async fn stop_color(&self, req: StopRequest) -> Result<StopOutcome, StopError> {
        let color = self.stop_target(&req)?;
        let procs = self.procs.as_ref().ok_or_else(|| StopError::NotManaged {
            service: self.name.clone(),
        })?;
        let was_live = self.live() == Some(color);
        let had_processes = procs.has_processes(color);
        // From now on an exit there is what was asked for, not a crash to restart.
        procs.set_role(color, Role::Idle);
        let drained = self.drain(color).await;
        let _op = self.op.lock().await;
        self.stop_processes(procs, color).await;
        self.set_state(color, Some(ColorState::Stopped));
        let version = self.version_of(color);
        let mut reason = format!(
            "{color} ({}) stopped on request{}; {}",
            version.as_deref().unwrap_or("no version"),
            if was_live { " while live (--force)" } else { "" },
            drained.describe()
        );
        if let Some(why) = req.reason.as_deref().filter(|w| !w.trim().is_empty()) {
            reason = format!("{why}: {reason}");
        }
        tracing::info!(service = %self.name, color = %color, actor = %req.actor, "{reason}");
        let (n, v, actor) = (self.name.clone(), version.clone(), req.actor.clone());
        let _permit = self.pause.enter().await;
        record(&self.store, "the stop", &self.name, move |s| {
            s.record_event(&EventRecord {
                service: &n,
                kind: HistoryKind::Stopped,
                color: Some(color),
                version: v.as_deref(),
                actor: &actor,
                reason: &reason,
                release_id: None,
            })
        })
        .await;
        Ok(StopOutcome {
            color,
            version,
            was_live,
            had_processes,
            drained: drained.describe(),
        })
    }
}
