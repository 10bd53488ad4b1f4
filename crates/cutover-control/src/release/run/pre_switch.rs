//! The stages before the switch: provision, wait for health, warm up, smoke-test, wait for
//! approval, pre-switch hooks. Live traffic is untouched throughout; a failure or abort here
//! ends the release as aborted and tears the idle color down.

use std::sync::Arc;

use cutover_proxy::ColorRoute;
use cutover_release::{Event, Outcome, Phase};

use cutover_store::{EventRecord, HistoryKind};

use super::{ReleaseRun, Stop};
use crate::base::error::{FailureKind, StepFailure};
use crate::base::store_call::record;
use crate::release::steps;
use crate::service::ColorState;

impl ReleaseRun {
    /// Runs every stage before the switch; returns the new color's route, ready to go live.
    pub(super) async fn pre_switch(&mut self) -> Result<Arc<ColorRoute>, Stop> {
        let rel = self.svc.cfg().release.clone();
        let phase_timeout = Some(rel.phase_timeout.get());
        let (color, version) = self.doc(|d| (d.color, d.version.clone()));

        self.env.scale_downs.cancel(&self.svc.name);
        // Provisioning may first drain what still runs at the color and stop it.
        let provision_deadline = match &self.svc.cfg().environments {
            cutover_config::Environments::Managed(run) => {
                rel.phase_timeout.get() + rel.drain_timeout.get() + run.stop_timeout.get()
            }
            cutover_config::Environments::Static { .. } => rel.phase_timeout.get(),
        };
        let provision = steps::provision(self.svc.clone(), color, version);
        let detail = self.guard(Some(provision_deadline), "provisioning", provision).await?;
        self.epoch = self.svc.procs.as_ref().map(|p| p.epoch(color));
        self.step(Event::Done, detail).await?;

        let route = self
            .svc
            .route(color)
            .expect("both colors always have a route: installed at start, replaced whole");
        let healthy = steps::wait_healthy(self.svc.clone(), route.clone());
        let detail = self
            .guard(Some(rel.health_timeout.get()), "waiting for health", healthy)
            .await?;
        self.step(Event::Done, detail).await?;
        self.svc.set_state(color, Some(ColorState::Ready));

        let detail = match rel.warmup.clone() {
            Some(w) => {
                let warm = steps::warm_up(self.svc.clone(), route.clone(), w);
                self.guard(phase_timeout, "warm-up", warm).await?
            }
            None => "no warm-up configured".to_string(),
        };
        self.step(Event::Done, detail).await?;

        let smoke = steps::smoke(self.svc.clone(), route.clone());
        let detail = self.guard(phase_timeout, "smoke checks", smoke).await?;
        let mut next = self.step(Event::Done, detail).await?;
        if next == Phase::Shadowing {
            let detail = self.shadowing(&route).await?;
            next = self.step(Event::Done, detail).await?;
        }
        if next == Phase::AwaitingApproval {
            self.approval().await?;
        }

        // Before the hooks too: a migration run for a switch that cannot happen is wasted.
        self.hold_for_hosts(color).await?;
        let env = self.doc(|d| d.hook_env());
        let per_hook = rel.hooks.timeout.get();
        let hooks = steps::run_hooks("pre_switch", &rel.hooks.pre_switch, &env, per_hook);
        let all_hooks = per_hook * (rel.hooks.pre_switch.len().max(1) as u32);
        let detail = self.guard(Some(all_hooks), "pre-switch hooks", hooks).await?;
        if self.machine.plan.has_previous && !rel.traffic.steps().is_empty() {
            // Progressive: the first step's transition closes this phase.
            self.hooks_detail = Some(detail);
        } else {
            self.step(Event::Done, detail).await?;
        }
        self.hold_for_hosts(color).await?;
        // The last look before traffic moves: an exit seen only now still stops the switch.
        if let Some(e) = self.exited() {
            return Err(Stop::Failed(crate::base::error::StepError::new(
                self.machine.phase,
                FailureKind::Exited,
                self.exit_reason(&e),
            )));
        }
        Ok(route)
    }

    /// Host agents: a color with a host whose agent is away has nothing supervising it there
    /// (an exit would go unseen, a stop undelivered), so the switch holds until every host
    /// is back, for at most `phase_timeout`; then the release fails naming the hosts. A
    /// quick agent restart (an upgrade, a crash) costs a pause, not the release.
    async fn hold_for_hosts(&mut self, color: cutover_proxy::Color) -> Result<(), Stop> {
        let Some(crate::procs::Procs::Remote(p)) = self.svc.procs.clone() else {
            return Ok(());
        };
        let away = p.away(color);
        if away.is_empty() {
            return Ok(());
        }
        let limit = self.svc.cfg().release.phase_timeout.get();
        tracing::warn!(service = %self.svc.name, release = self.active.id, hosts = %away.join(", "), "the switch holds until the host agents are back (at most {})", steps::deadline_text(limit));
        let wait = async move {
            match tokio::time::timeout(limit, p.wait_connected(color)).await {
                Ok(()) => Ok(()),
                Err(_) => Err(StepFailure::new(FailureKind::Deadline, format!(
                    "host agent {} away (not connected to the fleet) through the switch's hold of {}: a color whose hosts have no supervisor is not switched to",
                    p.away(color).join(", "),
                    steps::deadline_text(limit)
                ))),
            }
        };
        self.guard(None, "the hold for host agents", wait).await?;
        tracing::info!(service = %self.svc.name, release = self.active.id, "the host agents are back; the switch goes on");
        Ok(())
    }

    /// Waits for `approve` (or `auto_promote_after`), then records who approved.
    async fn approval(&mut self) -> Result<(), Stop> {
        let signals = self.active.signals.clone();
        let auto_after = self.svc.cfg().release.auto_promote_after;
        let wait = async {
            match auto_after {
                Some(after) => {
                    tokio::select! {
                        _ = signals.approve.notified() => {}
                        _ = tokio::time::sleep(after.get()) => {
                            signals.set_approver(format!("auto_promote_after ({after})"));
                        }
                    }
                }
                None => signals.approve.notified().await,
            }
            Ok::<_, StepFailure>(())
        };
        // The approval webhook, if any, approves through the same signal a person's does.
        let _poller = self.approval_webhook();
        // No deadline of its own: a person may take the night; abort still works.
        self.guard(None, "approval", wait).await?;
        let by = self.active.signals.approver();
        self.step(Event::Approve, format!("approved by {by}")).await?;
        self.record_approval(&by).await;
        Ok(())
    }

    /// Starts offering the release to the approval webhook, when one is configured.
    fn approval_webhook(&self) -> Option<super::webhooks::ApprovalGuard> {
        let cfg = self.svc.cfg().release.approval_webhook.clone()?;
        let payload = self.doc(|d| serde_json::to_value(&*d)).ok()?;
        let signals = self.active.signals.clone();
        Some(super::webhooks::approval_poller(&cfg, payload, move |by| {
            signals.set_approver(by);
            signals.approve.notify_one();
        }))
    }

    /// The approval's history line, with who approved.
    async fn record_approval(&self, by: &str) {
        let (service, id, version, color) = self.doc(|d| (d.service.clone(), d.id, d.version.clone(), d.color));
        let by = by.to_string();
        let svc = service.clone();
        let _permit = self.svc.pause.enter().await;
        record(&self.svc.store, "the approval", &service, move |s| {
            s.record_event(&EventRecord {
                service: &svc,
                kind: HistoryKind::ReleaseApproved,
                color: Some(color),
                version: Some(&version),
                actor: &by,
                reason: &format!("release #{id} of {version} approved"),
                release_id: Some(id),
            })
        })
        .await;
    }

    /// Before the switch: record the end, then tear the idle color down (managed).
    pub(super) async fn finish_early(&mut self, stop: Stop) {
        if self.machine.outcome.is_some() {
            return;
        }
        match &stop {
            Stop::Failed(e) => {
                tracing::warn!(service = %self.svc.name, release = self.active.id, phase = %e.phase, kind = %e.kind, reason = %e.reason, "release step failed")
            }
            Stop::Aborted(why) => {
                tracing::info!(service = %self.svc.name, release = self.active.id, phase = %self.machine.phase, reason = %why, "release aborted")
            }
        }
        // A step's share goes back to the old color before anything else: "at once".
        self.unsplit(stop.detail()).await;
        if let Err(e) = self.transition(stop.event(), stop.detail().to_string()).await {
            tracing::error!(service = %self.svc.name, release = self.active.id, error = %e, "could not record the end of the release");
            self.doc(|d| {
                d.outcome = Some(Outcome::Aborted);
                d.reason = Some(stop.detail().to_string());
            });
        }
        let color = self.doc(|d| d.color);
        if self.svc.live() == Some(color) {
            return;
        }
        // Drained first: testers may be streaming from it through the preview listener.
        let state = match self.svc.stop_managed(color).await {
            Some(_) => {
                // The build that failed no longer runs there: the label goes back to what
                // did. A static color keeps the new label: its endpoints run what the
                // user's pipeline deployed there, which is that build.
                if let Err(e) = self.svc.restore_label(color, self.label_before.clone()).await {
                    tracing::error!(service = %self.svc.name, release = self.active.id, error = %e, "could not put back the color's version label");
                }
                ColorState::Stopped
            }
            None => ColorState::Failed,
        };
        self.svc.set_state(color, Some(state));
    }
}
