//! The switch stage: make the new color live (committed, then published), run the
//! post-switch hooks, and — from here on — roll back instead of abort when something fails.

use std::sync::Arc;

use cutover_config::Standby;
use cutover_proxy::{ColorRoute, StatsSnapshot};
use cutover_release::Event;
use cutover_store::SwitchKind;
use tokio::time::Instant;

use super::{ReleaseRun, Stop};
use crate::base::error::{FailureKind, StepError};
use crate::procs::supervisor::Role;
use crate::release::steps;
use crate::service::switch::{RollbackRequest, SwitchRequest};
use crate::service::ColorState;

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl ReleaseRun {
    /// Switches to the new color and runs the post-switch hooks. Returns the new color's
    /// counters at the switch (the verification baseline), or `None` when a post-switch
    /// hook failed and the run rolled back.
    pub(super) async fn switch(&mut self, route: &Arc<ColorRoute>) -> Result<Option<StatsSnapshot>, Stop> {
        let phase = self.machine.phase;
        let (id, version, color) = self.doc(|d| (d.id, d.version.clone(), d.color));
        let started = Instant::now();
        let out = self
            .svc
            .switch(SwitchRequest {
                to: Some(color),
                if_generation: None,
                force: false,
                kind: SwitchKind::Switched,
                actor: "controller".into(),
                reason: format!("release #{id}: {version} passed its checks"),
                release_id: Some(id),
            })
            .await
            .map_err(|e| {
                Stop::Failed(StepError::new(
                    phase,
                    FailureKind::Refused,
                    format!("switch refused: {e}"),
                ))
            })?;
        let switch_ms = started.elapsed().as_secs_f64() * 1000.0;
        self.env.scale_downs.cancel(&self.svc.name);
        self.svc.set_state(color, None);
        if let Some(prev) = out.previous {
            self.svc.set_state(prev, Some(ColorState::Warm));
        }
        self.doc(|d| {
            d.switch_ms = Some(switch_ms);
            d.generation = Some(out.generation);
            d.weight = 100;
        });
        let baseline = route.stats.snapshot();
        let hooks = &self.svc.cfg().release.hooks;
        let env = self.doc(|d| d.hook_env());
        if let Err(e) = steps::run_hooks("post_switch", &hooks.post_switch, &env, hooks.timeout.get()).await {
            self.roll_back(format!("post-switch hook failed: {e}")).await;
            return Ok(None);
        }
        if let (Some(e), true) = (self.exited(), out.previous.is_some()) {
            let reason = self.exit_reason(&e);
            self.roll_back(reason).await;
            return Ok(None);
        }
        let detail = format!(
            "{color} live at generation {} in {switch_ms:.1} ms (store commit included)",
            out.generation
        );
        self.step(Event::Done, detail).await?;
        Ok(Some(baseline))
    }

    /// Commits the rollback transition, then switches back.
    pub(super) async fn roll_back(&mut self, reason: String) {
        let seen = Instant::now();
        if let Err(e) = self.transition(Event::Failed(reason.clone()), reason.clone()).await {
            tracing::error!(error = %e, "could not record the rollback transition; rolling back anyway");
        }
        let id = self.active.id;
        // The previous color served seconds ago: it is the known-good version, so go back
        // even if a health probe is momentarily unsure.
        let r = self
            .svc
            .rollback(RollbackRequest {
                actor: "controller".into(),
                reason: reason.clone(),
                force: true,
                release_id: Some(id),
            })
            .await;
        match r {
            Ok(out) => {
                let ms = seen.elapsed().as_secs_f64() * 1000.0;
                self.doc(|d| {
                    d.rollback_ms = Some(ms);
                    d.generation = Some(out.generation);
                    d.weight = 0;
                });
                let color = self.doc(|d| d.color);
                self.svc.set_state(color, Some(ColorState::Failed));
                if let Some(procs) = &self.svc.procs {
                    // The version that failed is not restarted; the one serving again is.
                    procs.set_role(color, Role::Idle);
                    procs.set_role(out.live, Role::Serving);
                }
                tracing::warn!(service = %self.svc.name, release = id, rollback_ms = ms, reason = %reason, "rolled back");
            }
            Err(e) => {
                tracing::error!(service = %self.svc.name, release = id, error = %e, "ROLLBACK FAILED: the new version is still live");
                self.doc(|d| d.reason = Some(format!("{reason}; rollback failed: {e}")));
            }
        }
        let hooks = &self.svc.cfg().release.hooks;
        let env = self.doc(|d| d.hook_env());
        if let Err(e) = steps::run_hooks("on_rollback", &hooks.on_rollback, &env, hooks.timeout.get()).await {
            // The rollback has happened; a failing notification hook cannot undo it.
            tracing::warn!(service = %self.svc.name, release = id, error = %e, "on_rollback hook failed");
        }
        self.schedule_failed_scale_down();
        self.persist().await;
    }

    /// After an automatic rollback of a managed release, the failed version keeps running
    /// for `scale_down_delay` (its processes and state can be looked at, through the preview
    /// listener too), then drains and is stopped like any old color; its logs are kept.
    pub(super) fn schedule_failed_scale_down(&mut self) {
        let color = self.doc(|d| d.color);
        if self.svc.procs.is_none() || self.svc.live() == Some(color) {
            return;
        }
        let delay = self.svc.cfg().release.scale_down_delay.get();
        self.doc(|d| d.scale_down_at = Some(unix_now() + delay.as_secs()));
        self.env
            .scale_downs
            .schedule(self.svc.clone(), color, delay, self.active.id);
    }

    /// After completion: schedule the old color's scale-down and record when it is due.
    pub(super) async fn after_completion(&mut self) {
        if let Some(procs) = &self.svc.procs {
            // Live now: from here on an exit is restarted by the policy, not a failed release.
            procs.set_role(self.doc(|d| d.color), Role::Serving);
        }
        let Some(prev) = self.doc(|d| d.previous_color) else {
            return;
        };
        match self.svc.cfg().release.standby {
            Standby::Stop => {
                let delay = self.svc.cfg().release.scale_down_delay.get();
                self.doc(|d| d.scale_down_at = Some(unix_now() + delay.as_secs()));
                self.persist().await;
                self.env
                    .scale_downs
                    .schedule(self.svc.clone(), prev, delay, self.active.id);
            }
            // Kept up and warm: a rollback stays one switch for as long as it runs.
            Standby::Keep => {}
            Standby::Sleep => self
                .env
                .scale_downs
                .schedule_sleep(self.svc.clone(), prev, self.active.id),
        }
    }
}
