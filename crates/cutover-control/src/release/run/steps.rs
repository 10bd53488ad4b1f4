//! The progressive stage (`traffic = canary | linear`): between the pre-switch hooks and the
//! full switch, the new color gets a growing share of the live traffic, one committed step
//! at a time (in a fleet: acked by every router like a switch), each judged by the verify
//! gates on the new color's own share. A breach, an abort or a manual rollback at any step
//! returns 100% to the old color at once.

use std::sync::Arc;

use cutover_config::Step;
use cutover_proxy::ColorRoute;
use cutover_release::Event;
use cutover_store::{now_rfc3339, SwitchKind};

use super::verify::Halt;
use super::StepRecord;
use super::{ReleaseRun, Stop};
use crate::base::error::{FailureKind, StepError};
use crate::service::switch::StepRequest;
use crate::service::ColorState;

/// How the steps ended.
pub(super) enum Stepped {
    /// Every step passed: the full switch comes next.
    Passed,
    /// The old color has all of the traffic again and the release has ended.
    Ended,
}

impl ReleaseRun {
    /// Runs the steps of `steps` in order; `hooks_detail` closes the pre-switch hooks' phase.
    pub(super) async fn progress(
        &mut self,
        route: &Arc<ColorRoute>,
        steps: &[Step],
        hooks_detail: String,
    ) -> Result<Stepped, Stop> {
        let mut detail = hooks_detail;
        let of = steps.len() as u32;
        for (i, step) in steps.iter().enumerate() {
            let n = i as u32 + 1;
            self.step(Event::Step, detail).await?;
            let generation = self.give_share(n, of, step.weight).await?;
            let baseline = route.stats.snapshot();
            let outcome = self.judge(route, baseline, step.bake, None, Some(generation)).await;
            match outcome {
                Ok(passed) => {
                    detail = format!("step {n}/{of} at {}%: {passed}", step.weight);
                    self.end_step("passed", &detail);
                }
                Err(halt) => {
                    self.halt_steps(n, of, step.weight, halt).await;
                    return Ok(Stepped::Ended);
                }
            }
        }
        self.step(Event::Done, detail).await?;
        Ok(Stepped::Passed)
    }

    /// Commits and publishes step `n`: the new color's share becomes `weight`. Returns the
    /// step's generation (in a fleet, once every router acked it or the ack timeout passed).
    async fn give_share(&mut self, n: u32, of: u32, weight: u8) -> Result<u64, Stop> {
        let (id, version, color) = self.doc(|d| (d.id, d.version.clone(), d.color));
        let phase = self.machine.phase;
        let out = self
            .svc
            .step(StepRequest {
                weight,
                kind: SwitchKind::Stepped,
                actor: "controller".into(),
                reason: format!("release #{id}: step {n}/{of}: {color} ({version}) gets {weight}% of the traffic"),
                release_id: Some(id),
            })
            .await
            .map_err(|e| {
                let reason = format!("step {n}/{of} refused: {e}");
                Stop::Failed(StepError::new(phase, FailureKind::Refused, reason))
            })?;
        let sync = match self.svc.fleet.get() {
            Some(link) => Some(
                link.await_acks(&self.svc.name, out.generation, tokio::time::Instant::now())
                    .await,
            ),
            None => None,
        };
        self.doc(|d| {
            d.weight = weight;
            d.generation = Some(out.generation);
            d.steps.push(StepRecord {
                step: n,
                of,
                weight,
                generation: out.generation,
                started_at: now_rfc3339(),
                ended_at: None,
                requests: 0,
                result: "running".into(),
                detail: None,
                sync,
            });
        });
        self.persist().await;
        Ok(out.generation)
    }

    fn end_step(&self, result: &str, detail: &str) {
        self.doc(|d| {
            if let Some(s) = d.steps.last_mut() {
                s.ended_at = Some(now_rfc3339());
                s.result = result.into();
                s.detail = Some(detail.into());
            }
        });
    }

    /// A step ended early: 100% back to the old color at once (unless a manual rollback did
    /// it already), and the release ends as rolled back (breach, manual rollback) or aborted.
    async fn halt_steps(&mut self, n: u32, of: u32, weight: u8, halt: Halt) {
        let at = format!("at step {n}/{of} ({weight}%)");
        match halt {
            Halt::Breach(reason) => {
                self.end_step("failed", &reason);
                // `roll_back` returns the share to the old color: a rollback while the old
                // color is live is a step to 0%.
                self.roll_back(format!("{reason} ({at})")).await;
            }
            Halt::Overridden(reason) => {
                self.end_step("failed", &reason);
                if let Err(e) = self
                    .transition(Event::Failed(reason.clone()), format!("{reason} ({at})"))
                    .await
                {
                    tracing::error!(error = %e, "could not record the end of the progressive release");
                }
                // As after an automatic rollback: the new version stays up to be looked at
                // for `scale_down_delay`, then is stopped.
                self.svc.set_state(self.doc(|d| d.color), Some(ColorState::Failed));
                self.schedule_failed_scale_down();
            }
            Halt::Aborted(why) => {
                self.end_step("aborted", &why);
                self.finish_early(Stop::Aborted(format!("{why} ({at})"))).await;
            }
        }
        self.doc(|d| d.weight = 0);
        self.persist().await;
    }

    /// Before an early end: a step's share goes back to the old color first (an abort, a
    /// refused step, a failed full switch), so nothing is left split.
    pub(super) async fn unsplit(&mut self, why: &str) {
        if self.svc.proxy.table().weight == 0 {
            return;
        }
        let id = self.active.id;
        let r = self
            .svc
            .step(StepRequest {
                weight: 0,
                kind: SwitchKind::RolledBack,
                actor: "controller".into(),
                reason: format!("release #{id}: all traffic back to the old color: {why}"),
                release_id: Some(id),
            })
            .await;
        match r {
            Ok(_) => self.doc(|d| d.weight = 0),
            Err(e) => {
                tracing::error!(service = %self.svc.name, release = id, error = %e, "could not return the step's share to the old color")
            }
        }
    }
}
