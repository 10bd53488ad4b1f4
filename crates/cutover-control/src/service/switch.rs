//! Switch and rollback: the store commits first (compare-and-swap on the generation), then the
//! new route table is published in one pointer swap.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use cutover_proxy::{health, Color, ColorRoute, RouteTable};
use cutover_store::{SwitchKind, SwitchRecord};
use serde::Serialize;

use super::status::endpoint_line;
use super::{ColorState, ServiceCtl};
use crate::base::error::SwitchError;
use crate::base::store_call::blocking;
use crate::service::fleet::Fleet;
use cutover_fleet::doc::{HistoryRecord, ServiceDoc, Versions};

/// What a switch did.
#[derive(Debug, Clone, Serialize)]
pub struct SwitchOutcome {
    pub live: Color,
    pub previous: Option<Color>,
    pub generation: u64,
    pub version: Option<String>,
}

/// A request to make a color live.
#[derive(Debug, Clone)]
pub struct SwitchRequest {
    /// `None`: the idle color.
    pub to: Option<Color>,
    pub if_generation: Option<u64>,
    /// Switch even if the target has no healthy endpoint.
    pub force: bool,
    pub kind: SwitchKind,
    pub actor: String,
    pub reason: String,
    pub release_id: Option<i64>,
}

/// A request to go back to the previous live color.
#[derive(Debug, Clone, Default)]
pub struct RollbackRequest {
    pub actor: String,
    /// Empty: "rollback from X to Y".
    pub reason: String,
    pub force: bool,
    pub release_id: Option<i64>,
}

/// What a commit changes: the live color after it, the other color's weight, and the
/// color the history line names as `to` (the live one for a switch, the candidate for a step).
#[derive(Debug, Clone, Copy)]
struct Change {
    live: Color,
    weight: u8,
    subject: Color,
    step: bool,
}

impl Change {
    fn switch(to: Color) -> Change {
        Change {
            live: to,
            weight: 0,
            subject: to,
            step: false,
        }
    }

    fn is_step(&self) -> bool {
        self.step
    }
}

/// A progressive release's step: the idle color (the candidate) gets `weight` percent of the
/// live listener's requests; the live color stays live.
#[derive(Debug, Clone)]
pub struct StepRequest {
    pub weight: u8,
    /// `Stepped`, or `RolledBack` for the return to 0% after a breach or on request.
    pub kind: SwitchKind,
    pub actor: String,
    pub reason: String,
    pub release_id: Option<i64>,
}

impl ServiceCtl {
    /// Gives the candidate color a share of the live traffic: committed (in a fleet: one
    /// etcd transaction, acked like a switch), then published in one pointer swap.
    pub async fn step(&self, req: StepRequest) -> Result<SwitchOutcome, SwitchError> {
        let _op = self.op.lock().await;
        let _permit = self.pause.enter().await;
        self.step_locked(req).await
    }

    pub(crate) async fn step_locked(&self, req: StepRequest) -> Result<SwitchOutcome, SwitchError> {
        let table = self.proxy.table();
        let Some(live) = table.live_color() else {
            return Err(SwitchError::NothingLive {
                service: self.name.clone(),
            });
        };
        let candidate = live.other();
        let change = Change {
            live,
            weight: req.weight,
            subject: candidate,
            step: true,
        };
        let sreq = SwitchRequest {
            to: Some(live),
            if_generation: None,
            force: true,
            kind: req.kind,
            actor: req.actor.clone(),
            reason: req.reason.clone(),
            release_id: req.release_id,
        };
        let generation = self.commit_switch(table.generation, change, &sreq).await?;
        self.watch(candidate);
        self.publish_weighted(Some(live), generation, req.weight);
        if req.kind == SwitchKind::RolledBack {
            self.rollbacks.fetch_add(1, Relaxed);
        }
        tracing::info!(service = %self.name, live = %live, candidate = %candidate, weight = req.weight, generation, actor = %req.actor, reason = %req.reason, "stepped");
        Ok(SwitchOutcome {
            live,
            // The live color did not change: there is no previous one to name.
            previous: None,
            generation,
            version: self.version_of(live),
        })
    }

    /// Makes a color live. Durable before it returns.
    pub async fn switch(&self, req: SwitchRequest) -> Result<SwitchOutcome, SwitchError> {
        let _op = self.op.lock().await;
        let _permit = self.pause.enter().await;
        self.switch_locked(req).await
    }

    /// Switches back to the other color, recorded as a rollback.
    pub async fn rollback(&self, req: RollbackRequest) -> Result<SwitchOutcome, SwitchError> {
        let _op = self.op.lock().await;
        let _permit = self.pause.enter().await;
        self.rollback_locked(req).await
    }

    /// `switch` for callers that already hold the service's operation lock.
    pub(crate) async fn switch_locked(&self, req: SwitchRequest) -> Result<SwitchOutcome, SwitchError> {
        let table = self.proxy.table();
        let to = self.target(&table, &req)?;
        let route = self
            .route(to)
            .expect("both colors always have a route: installed at start, replaced whole");
        if self.state(to) == Some(ColorState::Sleeping) {
            // Asleep on purpose (standby): wake it and see it healthy first, whatever `force`
            // says; a failed wake leaves live traffic where it is.
            self.wake_locked(to)
                .await
                .map_err(|why| SwitchError::WakeFailed { color: to, why })?;
        }
        if !req.force {
            self.refuse_unhealthy(to, &route).await?;
        }
        let previous = table.live_color();
        let generation = self.commit_switch(table.generation, Change::switch(to), &req).await?;
        // A live color is always health-checked (a stale or never-checked one was not).
        self.watch(to);
        self.publish(Some(to), generation);
        self.switches.fetch_add(1, Relaxed);
        if req.kind == SwitchKind::RolledBack {
            self.rollbacks.fetch_add(1, Relaxed);
        }
        tracing::info!(
            service = %self.name,
            from = previous.map(Color::as_str).unwrap_or("none"),
            to = %to,
            version = route.version.as_deref().unwrap_or("-"),
            generation,
            actor = %req.actor,
            reason = %req.reason,
            kind = %cutover_store::HistoryKind::from(req.kind),
            "switched"
        );
        Ok(SwitchOutcome {
            live: to,
            previous,
            generation,
            version: route.version.clone(),
        })
    }

    /// Which color the request makes live, or why it cannot.
    fn target(&self, table: &RouteTable, req: &SwitchRequest) -> Result<Color, SwitchError> {
        let generation = table.generation;
        if let Some(expected) = req.if_generation {
            if expected != generation {
                return Err(SwitchError::StaleGeneration {
                    expected,
                    actual: generation,
                });
            }
        }
        let to = match (req.to, table.live_color()) {
            (Some(c), _) => c,
            (None, Some(live)) => live.other(),
            (None, None) => {
                return Err(SwitchError::NothingLive {
                    service: self.name.clone(),
                })
            }
        };
        if table.live_color() == Some(to) {
            return Err(SwitchError::AlreadyLive {
                service: self.name.clone(),
                color: to,
                generation,
            });
        }
        Ok(to)
    }

    /// Refuses a target with no healthy endpoint; one never checked yet is probed first.
    async fn refuse_unhealthy(&self, to: Color, route: &Arc<ColorRoute>) -> Result<(), SwitchError> {
        if route.health_unknown() {
            // No result yet (a fresh router): probe now rather than refuse or guess.
            health::check_now(&self.name, route, &self.health()).await;
        }
        if route.any_healthy() {
            return Ok(());
        }
        let detail: Vec<String> = route.endpoints().iter().map(|e| endpoint_line(e)).collect();
        let detail = if detail.is_empty() {
            let names: Vec<String> = super::endpoints_of(&self.cfg(), to)
                .iter()
                .map(|e| e.to_string())
                .collect();
            format!("it has no endpoint: {} did not resolve yet", names.join(", "))
        } else {
            detail.join("; ")
        };
        Err(SwitchError::TargetUnhealthy { color: to, detail })
    }

    /// Commits the switch or step (compare-and-swap on `generation`); returns the new
    /// generation.
    async fn commit_switch(&self, generation: u64, change: Change, req: &SwitchRequest) -> Result<u64, SwitchError> {
        if let Some(link) = self.fleet.get() {
            return self.commit_fleet_switch(&**link, generation, change, req).await;
        }
        let service = self.name.clone();
        let (kind, actor, reason, release_id) = (req.kind, req.actor.clone(), req.reason.clone(), req.release_id);
        let state = blocking(&self.store, move |s| {
            let rec = SwitchRecord {
                service: &service,
                expected_generation: generation,
                to: change.subject,
                kind,
                actor: &actor,
                reason: &reason,
                release_id,
            };
            if change.is_step() {
                s.step(&rec)
            } else {
                s.switch(&rec)
            }
        })
        .await?;
        Ok(state.generation)
    }

    /// Fleet mode: etcd commits first (one transaction: the document and its history
    /// record, compared on the document's revision); then the local snapshot and history.
    async fn commit_fleet_switch(
        &self,
        link: &dyn Fleet,
        generation: u64,
        change: Change,
        req: &SwitchRequest,
    ) -> Result<u64, SwitchError> {
        let (to, live_after) = (change.subject, change.live);
        let next = generation + 1;
        let doc = ServiceDoc {
            generation: next,
            live: Some(live_after),
            weight: change.weight,
            versions: Versions {
                blue: self.version_of(Color::Blue),
                green: self.version_of(Color::Green),
            },
            config_hash: link.config_hash(&self.cfg()),
            // Milliseconds: a retried write recognizes its own document by its bytes.
            updated_at: cutover_store::now_rfc3339_millis(),
            actor: req.actor.clone(),
            router: link.router_id().to_string(),
        };
        let history = HistoryRecord {
            at: doc.updated_at.clone(),
            kind: cutover_store::HistoryKind::from(req.kind),
            from: self.live(),
            to,
            generation: next,
            version: self.version_of(to),
            actor: req.actor.clone(),
            reason: req.reason.clone(),
            router: link.router_id().to_string(),
        };
        link.commit_switch(&self.name, generation, &doc, &history, req.release_id.is_some())
            .await?;
        let service = self.name.clone();
        let (kind, actor, reason, release_id) = (req.kind, req.actor.clone(), req.reason.clone(), req.release_id);
        let state = cutover_store::ServiceState {
            name: service.clone(),
            live: Some(live_after),
            generation: next,
            blue_version: doc.versions.blue.clone(),
            green_version: doc.versions.green.clone(),
        };
        let local = blocking(&self.store, move |s| {
            let rec = SwitchRecord {
                service: &service,
                expected_generation: generation,
                to,
                kind,
                actor: &actor,
                reason: &reason,
                release_id,
            };
            // The snapshot may be behind etcd (a write that failed earlier): then whole.
            let r = if change.is_step() { s.step(&rec) } else { s.switch(&rec) };
            match r {
                Err(cutover_store::StoreError::Conflict { .. }) => s.apply_snapshot(&state).map(|_| ()),
                r => r.map(|_| ()),
            }
        })
        .await;
        if let Err(e) = local {
            tracing::error!(service = %self.name, error = %e, "switched fleet-wide, but the local snapshot was not written");
        }
        Ok(next)
    }

    pub(crate) async fn rollback_locked(&self, req: RollbackRequest) -> Result<SwitchOutcome, SwitchError> {
        let service = self.name.clone();
        let Some(live) = self.live() else {
            return Err(SwitchError::NothingToRollBack { service });
        };
        let weight = self.proxy.table().weight;
        if weight > 0 {
            // A progressive release's step is under way: the old color is still live, so
            // going back is all of the traffic to it, not a switch to the candidate.
            let reason = if req.reason.is_empty() {
                format!("rollback: {} back from {weight}% to 0%", live.other())
            } else {
                req.reason
            };
            return self
                .step_locked(StepRequest {
                    weight: 0,
                    actor: req.actor,
                    reason,
                    release_id: req.release_id,
                    kind: SwitchKind::RolledBack,
                })
                .await;
        }
        let target = live.other();
        if self.state(target) == Some(ColorState::Stopped) && !req.force {
            // What `--redeploy` would bring back: the version last live there.
            let version = match self.last_live_version(target).await {
                Ok(v) => v,
                Err(e) => {
                    tracing::warn!(service = %self.name, error = %e, "cannot read the history for the version last live; naming the color's label");
                    self.version_of(target)
                }
            };
            return Err(SwitchError::ScaledDown {
                service,
                color: target,
                version: version.unwrap_or_default(),
            });
        }
        if self.version_of(target).is_none() {
            return Err(SwitchError::NoPreviousVersion { service, color: target });
        }
        let reason = if req.reason.is_empty() {
            format!("rollback from {live} to {target}")
        } else {
            req.reason
        };
        self.switch_locked(SwitchRequest {
            to: Some(target),
            if_generation: None,
            force: req.force,
            kind: SwitchKind::RolledBack,
            actor: req.actor,
            reason,
            release_id: req.release_id,
        })
        .await
    }
}
