//! One release run: the pipeline from provisioning to completed (or aborted / rolled back),
//! committing each transition to the store before anything sees it, with a deadline on every
//! phase and abort watched throughout.
//!
//! The run is three stages, one file each: [`pre_switch`] (steps that leave live traffic
//! untouched; a failure tears the idle color down), [`switch`] (the switch, post-switch
//! hooks, rollback), and [`verify`] (gates on the new color's own metrics for the bake).
//! The bake also reads the [`external`] gates (PromQL, the new color's `/metrics`), and every
//! committed transition is queued for the release's [`webhooks`] ([`notify`]), never awaited.

mod exposition;
mod external;
mod notify;
mod pre_switch;
mod shadowing;
mod steps;
mod switch;
mod verify;
pub(crate) mod webhooks;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use cutover_release::{Event, Phase, Refused, Release};
use cutover_store::now_rfc3339;
use tokio::sync::watch;
use tokio::time::Instant;

use super::active::Active;
use super::doc::{ReleaseDoc, StepRecord};
use crate::base::error::{FailureKind, ReleaseError, StepError, StepFailure, StoreFailure};
use crate::base::store_call::blocking;
use crate::procs::supervisor::Exit;
use crate::release::scale_down::ScaleDowns;
use crate::release::steps::deadline_text;
use crate::service::ServiceCtl;
use webhooks::Webhooks;

/// What a run needs from outside its service.
#[derive(Clone)]
pub struct RunEnv {
    pub scale_downs: ScaleDowns,
}

/// Why the pipeline stopped before the end.
#[derive(Debug)]
pub(crate) enum Stop {
    Failed(StepError),
    /// Someone asked to abort; the reason names who.
    Aborted(String),
}

impl Stop {
    fn event(&self) -> Event {
        match self {
            Stop::Failed(e) => Event::Failed(e.reason.clone()),
            Stop::Aborted(why) => Event::Abort(why.clone()),
        }
    }

    fn detail(&self) -> &str {
        match self {
            Stop::Failed(e) => &e.reason,
            Stop::Aborted(why) => why,
        }
    }
}

/// A transition that did not happen.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TransitionError {
    #[error("the release state machine refused the transition: {0}")]
    Refused(Refused),
    #[error("the store could not record the transition: {0}")]
    Store(#[from] StoreFailure),
}

/// The run's state: the service it changes, the document it commits, the state machine that
/// decides the next phase.
pub(crate) struct ReleaseRun {
    svc: Arc<ServiceCtl>,
    env: RunEnv,
    active: Active,
    machine: Release,
    abort_rx: watch::Receiver<Option<String>>,
    /// When the current phase began, for its `elapsed_ms`.
    phase_started: Instant,
    /// The start of the managed processes this release made (`Supervisor::epoch`), once
    /// provisioning made them: from then on, an exit of one of them fails the release.
    epoch: Option<u64>,
    /// The color's version label before this release: put back if it ends before its
    /// switch with its processes stopped.
    label_before: Option<String>,
    /// A progressive release's pre-switch hooks' detail, set when they finished: the first
    /// step's transition closes their phase with it (the full switch's `Done` does else).
    hooks_detail: Option<String>,
    /// The release's webhooks, for its events (their tasks outlive the run to send the last).
    webhooks: Webhooks,
}

impl ReleaseRun {
    pub(crate) fn new(
        svc: Arc<ServiceCtl>,
        env: RunEnv,
        active: Active,
        abort_rx: watch::Receiver<Option<String>>,
    ) -> ReleaseRun {
        let (plan, color) = {
            let d = active.doc();
            (d.plan, d.color)
        };
        let label_before = svc.version_of(color);
        let webhooks = Webhooks::start(&svc.name, &svc.cfg().release.webhooks);
        ReleaseRun {
            webhooks,
            svc,
            env,
            active,
            machine: Release::new(plan),
            abort_rx,
            phase_started: Instant::now(),
            epoch: None,
            label_before,
            hooks_detail: None,
        }
    }

    /// Runs the pipeline to its end; returns the final document.
    pub(crate) async fn run(mut self) -> ReleaseDoc {
        if let Err(stop) = self.pipeline().await {
            self.finish_early(stop).await;
        }
        let end = self.active.doc().clone();
        self.svc.count_release_end(end.outcome);
        end
    }

    async fn pipeline(&mut self) -> Result<(), Stop> {
        let route = self.pre_switch().await?;
        if let Some(hooks_detail) = self.hooks_detail.take() {
            let steps = self.svc.cfg().release.traffic.steps();
            if let steps::Stepped::Ended = self.progress(&route, &steps, hooks_detail).await? {
                return Ok(());
            }
        }
        let baseline = match self.switch(&route).await? {
            Some(baseline) => baseline,
            // A post-switch hook failed and the run rolled back.
            None => return Ok(()),
        };
        if self.machine.phase == Phase::Verifying {
            match self.verify(&route, baseline).await {
                Ok(detail) => {
                    self.step(Event::Done, detail).await?;
                }
                Err(reason) => {
                    self.roll_back(reason).await;
                    return Ok(());
                }
            }
        }
        self.after_completion().await;
        Ok(())
    }

    fn doc<R>(&self, f: impl FnOnce(&mut ReleaseDoc) -> R) -> R {
        f(&mut self.active.doc())
    }

    /// Writes the document as it is now (gate readings, timings) without a transition.
    async fn persist(&self) {
        let (id, value, finished) = self.doc(|d| {
            d.updated_at = now_rfc3339();
            (d.id, serde_json::to_value(&*d), d.outcome.is_some())
        });
        let _permit = self.svc.pause.enter().await;
        let r = match value {
            Ok(v) => {
                let copy = v.clone();
                let r = blocking(&self.svc.store, move |s| s.update_release(id, &v, finished)).await;
                self.fleet_copy(id, &copy).await;
                r
            }
            Err(e) => Err(e.into()),
        };
        if let Err(e) = r {
            tracing::error!(service = %self.svc.name, release = id, error = %e, "the store could not record the release document");
        }
    }

    /// Fleet mode: the document's copy in etcd, so every router shows it and a new leader
    /// finds it. Fenced: a run whose router lost its term writes nothing more; it waits
    /// here for the step-down to stop it (it must not go on to tear anything down).
    /// etcd away: logged; the next write carries the whole document again.
    async fn fleet_copy(&self, id: i64, value: &serde_json::Value) {
        let Some(link) = self.svc.fleet.get() else { return };
        match link.put_release(&self.svc.name, id, value).await {
            Ok(()) => {}
            Err(ReleaseError::NotLeader { .. }) => {
                tracing::error!(service = %self.svc.name, release = id, "a fenced write of the release failed: not the leader any more; the run stops");
                std::future::pending::<()>().await;
            }
            // The link's own words ("etcd: ..."), as before it was a trait object.
            Err(ReleaseError::Fleet { detail: e }) => {
                tracing::warn!(service = %self.svc.name, release = id, error = %e, "the fleet's copy of the release document was not written")
            }
            Err(e) => {
                tracing::warn!(service = %self.svc.name, release = id, error = %e, "the fleet's copy of the release document was not written")
            }
        }
    }

    /// Stores `next`, and only then lets the API see it: nobody reads a phase or outcome
    /// that a crash could still take back (a test saw "verifying" while the store held
    /// "switching").
    async fn commit(&self, mut next: ReleaseDoc) -> Result<(), StoreFailure> {
        next.updated_at = now_rfc3339();
        let (id, finished) = (next.id, next.outcome.is_some());
        let value = serde_json::to_value(&next)?;
        let _permit = self.svc.pause.enter().await;
        let copy = value.clone();
        blocking(&self.svc.store, move |s| s.update_release(id, &value, finished)).await?;
        self.fleet_copy(id, &copy).await;
        self.doc(|d| *d = next);
        Ok(())
    }

    /// Applies an event, records the finished phase's detail and commits before returning.
    async fn transition(&mut self, event: Event, detail: String) -> Result<Phase, TransitionError> {
        let from = self.machine.phase;
        let to = self.machine.apply(&event).map_err(TransitionError::Refused)?;
        let elapsed = self.phase_started.elapsed();
        self.phase_started = Instant::now();
        let mut next = self.doc(|d| d.clone());
        next.advance(
            to,
            self.machine.outcome,
            &detail,
            elapsed.as_millis() as u64,
            now_rfc3339(),
        );
        self.commit(next).await?;
        let (svc, version, color) = self.doc(|d| (d.service.clone(), d.version.clone(), d.color));
        tracing::info!(service = %svc, release = self.active.id, version = %version, color = %color, from = %from, to = %to, reason = %detail, "release phase");
        self.notify(from, to, &detail);
        Ok(to)
    }

    /// `transition` inside the pipeline: a transition that cannot be made stops the run.
    async fn step(&mut self, event: Event, detail: String) -> Result<Phase, Stop> {
        let phase = self.machine.phase;
        self.transition(event, detail).await.map_err(|e| {
            let kind = match e {
                TransitionError::Refused(_) => FailureKind::Refused,
                TransitionError::Store(_) => FailureKind::Store,
            };
            Stop::Failed(StepError::new(phase, kind, e.to_string()))
        })
    }

    /// An exit of one of this release's processes, if one happened.
    fn exited(&self) -> Option<Exit> {
        let (procs, epoch) = (self.svc.procs.as_ref()?, self.epoch?);
        procs.exit_of(self.doc(|d| d.color), epoch)
    }

    /// What an exit of this release's processes says in the release's reason.
    fn exit_reason(&self, exit: &Exit) -> String {
        let color = self.doc(|d| d.color);
        format!(
            "a model server of the new color exited during {}: {}",
            self.machine.phase,
            exit.describe(color)
        )
    }

    /// Waits for an exit of this release's processes (forever when it has none).
    async fn wait_exit(procs: Option<crate::procs::Procs>, color: cutover_proxy::Color, epoch: Option<u64>) -> Exit {
        match (procs, epoch) {
            (Some(p), Some(e)) => p.wait_exit(color, e).await,
            _ => std::future::pending().await,
        }
    }

    /// Runs `fut` unless its deadline (`None`: none) passes, someone aborts, or one of the
    /// release's processes exits.
    async fn guard<T>(
        &mut self,
        deadline: Option<Duration>,
        what: &str,
        fut: impl Future<Output = Result<T, StepFailure>>,
    ) -> Result<T, Stop> {
        let phase = self.machine.phase;
        let mut abort = self.abort_rx.clone();
        let exit = Self::wait_exit(self.svc.procs.clone(), self.doc(|d| d.color), self.epoch);
        let work = async {
            match deadline {
                Some(d) => tokio::time::timeout(d, fut).await.unwrap_or_else(|_| {
                    let reason = format!("{what} did not finish within its deadline of {}", deadline_text(d));
                    Err(StepFailure::new(FailureKind::Deadline, reason))
                }),
                None => fut.await,
            }
        };
        tokio::select! {
            r = work => r.map_err(|failure| Stop::Failed(StepError::during(phase, failure))),
            r = abort.wait_for(|v| v.is_some()) => {
                let why = r.ok().and_then(|v| v.clone()).unwrap_or_else(|| "aborted".into());
                Err(Stop::Aborted(why))
            }
            e = exit => Err(Stop::Failed(StepError::new(phase, FailureKind::Exited, self.exit_reason(&e)))),
        }
    }
}
