//! The release controller: drives one release through its phases, committing each transition
//! to the store before acting on it, with a deadline on every phase.
//!
//! The pipeline is a flat list of steps; the first failure ends it. Before the switch a
//! failure or an abort tears the idle color down and leaves live traffic untouched; after the
//! switch a failing gate rolls back within one evaluation tick (200 ms).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use cutover_config::{Environments, OnInconclusive, Promotion, RequestSpec, VerifyConfig};
use cutover_proxy::{Color, ColorRoute, Health};
use cutover_release::{judge, Event, Gate, GateResult, Limits, Outcome, Phase, Plan, Release, Window};
use cutover_store::{now_rfc3339, ProcessRecord};
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use serde::{Deserialize, Serialize};
use tokio::sync::{watch, Notify};

use crate::controller::{blocking, Controller, ServiceCtl, SwitchRequest};
use crate::error::ApiError;
use crate::supervisor;

/// One phase as it happened.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PhaseRecord {
    pub phase: Phase,
    pub started_at: String,
    pub ended_at: Option<String>,
    /// Milliseconds spent in the phase, once it ended.
    pub elapsed_ms: Option<u64>,
    pub detail: Option<String>,
}

/// A release as stored and served by the API.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReleaseDoc {
    pub id: i64,
    pub service: String,
    pub version: String,
    /// The color the new version goes to (the idle one when the release began).
    pub color: Color,
    pub previous_color: Option<Color>,
    pub previous_version: Option<String>,
    pub phase: Phase,
    pub outcome: Option<Outcome>,
    pub reason: Option<String>,
    pub plan: Plan,
    pub actor: String,
    pub created_at: String,
    pub updated_at: String,
    pub phases: Vec<PhaseRecord>,
    pub gates: Vec<Gate>,
    /// Time from the switch decision to the new route table being live, store commit included.
    pub switch_ms: Option<f64>,
    /// Time from the breach being seen to the old color being live again.
    pub rollback_ms: Option<f64>,
    pub generation: Option<u64>,
    /// When the old color is due to be scaled down (unix seconds), after completion.
    pub scale_down_at: Option<u64>,
    #[serde(default)]
    pub scaled_down: bool,
}

/// Signals from the API to a running release.
pub(crate) struct Signals {
    approve: Notify,
    approved_by: Mutex<Option<String>>,
    abort: watch::Sender<Option<String>>,
}

/// A release in progress, as the API sees it.
#[derive(Clone)]
pub(crate) struct Active {
    pub(crate) id: i64,
    pub(crate) doc: Arc<Mutex<ReleaseDoc>>,
    pub(crate) signals: Arc<Signals>,
}

impl Active {
    /// The document as the API serves it. The final transition is stored before it takes
    /// effect (a rollback's switch comes after it), so the outcome shows only once the
    /// release has really ended and left the active set.
    pub(crate) fn view(&self) -> ReleaseDoc {
        let mut d = self.doc.lock().unwrap_or_else(|p| p.into_inner()).clone();
        d.outcome = None;
        d
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Why the pipeline stopped early.
struct Stop {
    event: Event,
    detail: String,
}

impl Stop {
    fn failed(detail: impl Into<String>) -> Stop {
        let detail = detail.into();
        Stop {
            event: Event::Failed(detail.clone()),
            detail,
        }
    }
}

struct Run {
    ctl: Arc<Controller>,
    svc: Arc<ServiceCtl>,
    active: Active,
    machine: Release,
    abort_rx: watch::Receiver<Option<String>>,
    phase_started: Instant,
}

/// A version label: 1-200 characters, no whitespace or control characters (it becomes a
/// header value, a label and a command-line argument).
pub fn validate_version(version: &str) -> Result<(), ApiError> {
    if version.is_empty()
        || version.chars().count() > 200
        || version.chars().any(|c| c.is_control() || c.is_whitespace())
    {
        return Err(ApiError::bad_request(
            "invalid_version",
            "version must be 1-200 characters without spaces or control characters",
        ));
    }
    Ok(())
}

impl Controller {
    /// Starts a release of `version` into the idle color. One release at a time per service.
    pub async fn start_release(
        self: &Arc<Controller>,
        name: &str,
        version: &str,
        actor: &str,
    ) -> Result<ReleaseDoc, ApiError> {
        let svc = self.service(name)?.clone();
        validate_version(version)?;
        let table = svc.proxy.table();
        let previous_color = table.live_color();
        let color = previous_color.map(Color::other).unwrap_or(Color::Blue);
        let previous_version = previous_color
            .and_then(|c| svc.route(c))
            .and_then(|r| r.version.clone());
        let plan = Plan {
            manual: svc.cfg.release.promotion == Promotion::Manual,
            has_previous: previous_color.is_some(),
        };
        let now = now_rfc3339();
        let mut doc = ReleaseDoc {
            id: 0,
            service: name.to_string(),
            version: version.to_string(),
            color,
            previous_color,
            previous_version,
            phase: Phase::Provisioning,
            outcome: None,
            reason: None,
            plan,
            actor: actor.to_string(),
            created_at: now.clone(),
            updated_at: now.clone(),
            phases: vec![PhaseRecord {
                phase: Phase::Provisioning,
                started_at: now,
                ended_at: None,
                elapsed_ms: None,
                detail: None,
            }],
            gates: Vec::new(),
            switch_ms: None,
            rollback_ms: None,
            generation: None,
            scale_down_at: None,
            scaled_down: false,
        };
        let (abort_tx, abort_rx) = watch::channel(None);
        let signals = Arc::new(Signals {
            approve: Notify::new(),
            approved_by: Mutex::new(None),
            abort: abort_tx,
        });
        let shared = Arc::new(Mutex::new(doc.clone()));
        // Claim the service's one release slot before any await, so two requests cannot both
        // pass; the store writes then run off the async threads.
        {
            let mut active = self.active.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(a) = active.get(name) {
                let d = a.doc.lock().unwrap_or_else(|p| p.into_inner());
                return Err(ApiError::conflict(
                    "release_in_progress",
                    format!(
                        "release #{} of {} is in progress ({}); approve, abort or wait for it first",
                        d.id, d.version, d.phase
                    ),
                ));
            }
            active.insert(
                name.to_string(),
                Active {
                    id: 0,
                    doc: shared.clone(),
                    signals: signals.clone(),
                },
            );
        }
        let stored = {
            let (n, v, a, c) = (name.to_string(), version.to_string(), actor.to_string(), color);
            let mut d = doc.clone();
            blocking(&self.store, move |s| {
                let id = s.insert_release(&n, &serde_json::to_value(&d)?)?;
                d.id = id;
                s.update_release(id, &serde_json::to_value(&d)?, false)?;
                s.record_event(
                    &n,
                    "release_started",
                    Some(c.as_str()),
                    Some(&v),
                    &a,
                    &format!("release #{id} of {v} into {c}"),
                    Some(id),
                )?;
                Ok(id)
            })
            .await
        };
        let id = match stored {
            Ok(id) => id,
            Err(e) => {
                self.active.lock().unwrap_or_else(|p| p.into_inner()).remove(name);
                return Err(e);
            }
        };
        doc.id = id;
        shared.lock().unwrap_or_else(|p| p.into_inner()).id = id;
        let a = Active {
            id,
            doc: shared,
            signals,
        };
        self.active
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_string(), a.clone());
        tracing::info!(service = name, release = id, version, color = %color, actor, "release started");
        let run = Run {
            ctl: self.clone(),
            svc,
            active: a,
            machine: Release::new(plan),
            abort_rx,
            phase_started: Instant::now(),
        };
        tokio::spawn(run.run());
        Ok(doc)
    }

    /// `rollback --redeploy`: the previous color was scaled down, so release its version
    /// again through the whole pipeline.
    pub async fn redeploy_previous(self: &Arc<Controller>, name: &str, actor: &str) -> Result<ReleaseDoc, ApiError> {
        let svc = self.service(name)?;
        let version = svc
            .table_live()
            .and_then(|live| svc.route(live.other()))
            .and_then(|r| r.version.clone())
            .ok_or_else(|| ApiError::conflict("no_previous_version", "there is no previous version to redeploy"))?;
        self.start_release(name, &version, actor).await
    }

    /// The document of the release in progress, if any.
    pub fn active_release_doc(&self, name: &str) -> Option<ReleaseDoc> {
        self.active_release(name).map(|a| a.view())
    }

    pub(crate) fn active_release(&self, name: &str) -> Option<Active> {
        self.active.lock().unwrap_or_else(|p| p.into_inner()).get(name).cloned()
    }

    /// A release by id: the live copy while it runs, else the stored one.
    pub async fn release_doc(&self, name: &str, id: i64) -> Result<ReleaseDoc, ApiError> {
        self.service(name)?;
        if let Some(a) = self.active_release(name).filter(|a| a.id == id) {
            return Ok(a.view());
        }
        let stored = blocking(&self.store, move |s| s.release(id)).await?;
        match stored {
            Some((svc, v)) if svc == name => serde_json::from_value(v).map_err(|e| ApiError::internal(e.to_string())),
            _ => Err(ApiError::not_found(format!("no release #{id} in service {name}"))),
        }
    }

    pub async fn releases(&self, name: &str, limit: u32) -> Result<Vec<ReleaseDoc>, ApiError> {
        self.service(name)?;
        let n = name.to_string();
        let rows = blocking(&self.store, move |s| s.releases(&n, limit)).await?;
        let active = self.active_release(name);
        Ok(rows
            .into_iter()
            .filter_map(|(id, v)| match &active {
                Some(a) if a.id == id => Some(a.view()),
                _ => serde_json::from_value(v).ok(),
            })
            .collect())
    }

    pub fn approve(&self, name: &str, id: i64, actor: &str) -> Result<(), ApiError> {
        self.service(name)?;
        let a = self
            .active_release(name)
            .filter(|a| a.id == id)
            .ok_or_else(|| ApiError::conflict("not_running", format!("release #{id} is not running")))?;
        let phase = a.doc.lock().unwrap_or_else(|p| p.into_inner()).phase;
        if phase != Phase::AwaitingApproval {
            return Err(ApiError::conflict(
                "not_awaiting_approval",
                format!("release #{id} is {phase}, not awaiting approval"),
            ));
        }
        *a.signals.approved_by.lock().unwrap_or_else(|p| p.into_inner()) = Some(actor.to_string());
        a.signals.approve.notify_one();
        Ok(())
    }

    pub fn abort(&self, name: &str, id: i64, actor: &str) -> Result<(), ApiError> {
        self.service(name)?;
        let a = self
            .active_release(name)
            .filter(|a| a.id == id)
            .ok_or_else(|| ApiError::conflict("not_running", format!("release #{id} is not running")))?;
        let phase = a.doc.lock().unwrap_or_else(|p| p.into_inner()).phase;
        if !phase.is_pre_switch() {
            return Err(ApiError::conflict(
                "already_switched",
                format!("release #{id} is {phase}: traffic has already switched; use rollback instead"),
            ));
        }
        let _ = a.signals.abort.send(Some(format!("aborted by {actor}")));
        Ok(())
    }

    /// Marks releases a previous process left unfinished as interrupted (startup only).
    pub(crate) fn interrupt_unfinished(&self, svc: &ServiceCtl) -> anyhow::Result<()> {
        let table = svc.proxy.table();
        for (id, v) in self.store.unfinished_releases(&svc.cfg.name)? {
            let Ok(mut doc) = serde_json::from_value::<ReleaseDoc>(v) else {
                continue;
            };
            let reason = format!(
                "cutover restarted during {}; routing left as committed (live: {}, generation {})",
                doc.phase,
                table.live_color().map(Color::as_str).unwrap_or("none"),
                table.generation
            );
            let now = now_rfc3339();
            if let Some(p) = doc.phases.last_mut() {
                if p.ended_at.is_none() {
                    p.ended_at = Some(now.clone());
                    p.detail = Some("interrupted".into());
                }
            }
            doc.outcome = Some(Outcome::Interrupted);
            doc.reason = Some(reason.clone());
            doc.updated_at = now;
            self.store.update_release(id, &serde_json::to_value(&doc)?, true)?;
            self.store.record_event(
                &svc.cfg.name,
                "release_interrupted",
                Some(doc.color.as_str()),
                Some(&doc.version),
                "controller",
                &reason,
                Some(id),
            )?;
            tracing::warn!(service = %svc.cfg.name, release = id, version = %doc.version, phase = %doc.phase, "release interrupted by a restart; {reason}");
        }
        Ok(())
    }
}

impl Run {
    fn doc<R>(&self, f: impl FnOnce(&mut ReleaseDoc) -> R) -> R {
        f(&mut self.active.doc.lock().unwrap_or_else(|p| p.into_inner()))
    }

    async fn persist(&self) -> Result<(), ApiError> {
        let (id, value, finished) = self.doc(|d| {
            d.updated_at = now_rfc3339();
            (d.id, serde_json::to_value(&*d), d.outcome.is_some())
        });
        let value = value.map_err(|e| ApiError::internal(e.to_string()))?;
        blocking(&self.ctl.store, move |s| s.update_release(id, &value, finished)).await
    }

    /// Stores `next`, and only then lets the API see it: nobody reads a phase or outcome
    /// that a crash could still take back (a test saw "verifying" while the store held
    /// "switching").
    async fn commit(&self, mut next: ReleaseDoc) -> Result<(), ApiError> {
        next.updated_at = now_rfc3339();
        let (id, finished) = (next.id, next.outcome.is_some());
        let value = serde_json::to_value(&next).map_err(|e| ApiError::internal(e.to_string()))?;
        blocking(&self.ctl.store, move |s| s.update_release(id, &value, finished)).await?;
        self.doc(|d| *d = next);
        Ok(())
    }

    /// Applies an event, records the finished phase's detail and commits before returning.
    async fn step(&mut self, event: Event, detail: String) -> Result<Phase, ApiError> {
        let from = self.machine.phase;
        let to = self
            .machine
            .apply(&event)
            .map_err(|r| ApiError::conflict("invalid_transition", r.to_string()))?;
        let now = now_rfc3339();
        let elapsed = self.phase_started.elapsed();
        self.phase_started = Instant::now();
        let outcome = self.machine.outcome;
        let mut next = self.doc(|d| d.clone());
        {
            let d = &mut next;
            if let Some(p) = d.phases.last_mut() {
                p.ended_at = Some(now.clone());
                p.elapsed_ms = Some(elapsed.as_millis() as u64);
                p.detail = Some(detail.clone());
            }
            d.phase = to;
            d.outcome = outcome;
            if outcome.is_some() {
                d.reason = Some(detail.clone());
            } else {
                d.phases.push(PhaseRecord {
                    phase: to,
                    started_at: now,
                    ended_at: None,
                    elapsed_ms: None,
                    detail: None,
                });
            }
        }
        self.commit(next).await?;
        let (svc, version, color) = self.doc(|d| (d.service.clone(), d.version.clone(), d.color));
        tracing::info!(service = %svc, release = self.active.id, version = %version, color = %color, from = %from, to = %to, reason = %detail, "release phase");
        Ok(to)
    }

    /// Runs `fut` unless the deadline passes or someone aborts.
    async fn guard<T>(
        &mut self,
        deadline: Duration,
        what: &str,
        fut: impl std::future::Future<Output = Result<T, String>>,
    ) -> Result<T, Stop> {
        let mut abort = self.abort_rx.clone();
        tokio::select! {
            r = tokio::time::timeout(deadline, fut) => match r {
                Ok(Ok(v)) => Ok(v),
                Ok(Err(e)) => Err(Stop::failed(e)),
                Err(_) => Err(Stop::failed(format!("{what} did not finish within its deadline of {}", humantime_fmt(deadline)))),
            },
            r = abort.wait_for(|v| v.is_some()) => {
                let why = r.ok().and_then(|v| v.clone()).unwrap_or_else(|| "aborted".into());
                Err(Stop { event: Event::Abort(why.clone()), detail: why })
            }
        }
    }

    async fn run(mut self) {
        let outcome = self.pipeline().await;
        if let Err(stop) = outcome {
            self.finish_early(stop).await;
        }
        let (name, id) = self.doc(|d| (d.service.clone(), d.id));
        self.ctl.active.lock().unwrap_or_else(|p| p.into_inner()).remove(&name);
        let d = self.doc(|d| d.clone());
        let kind = match d.outcome {
            Some(Outcome::Completed) => "release_completed",
            Some(Outcome::RolledBack) => "release_rolled_back",
            _ => "release_aborted",
        };
        let store = self.ctl.store.clone();
        let reason = d.reason.clone().unwrap_or_default();
        let _ = blocking(&store, move |s| {
            s.record_event(
                &name,
                kind,
                Some(d.color.as_str()),
                Some(&d.version),
                "controller",
                &reason,
                Some(id),
            )
        })
        .await;
    }

    async fn pipeline(&mut self) -> Result<(), Stop> {
        let rel = self.svc.cfg.release.clone();
        let phase_timeout = rel.phase_timeout.get();
        let store_err = |e: ApiError| Stop::failed(format!("the store refused the transition: {e}"));

        let detail = self
            .guard(
                phase_timeout,
                "provisioning",
                provision(self.ctl.clone(), self.svc.clone(), self.active.clone()),
            )
            .await?;
        self.step(Event::Done, detail).await.map_err(store_err)?;

        let route = self.target_route();
        let detail = self
            .guard(
                rel.health_timeout.get(),
                "waiting for health",
                wait_healthy(self.svc.clone(), route.clone()),
            )
            .await?;
        self.step(Event::Done, detail).await.map_err(store_err)?;
        // Up and healthy: no longer "provisioning", not yet live.
        self.svc.set_state(route.color, Some("ready"));

        let detail = match rel.warmup.clone() {
            Some(w) => {
                self.guard(phase_timeout, "warm-up", warm_up(self.svc.clone(), route.clone(), w))
                    .await?
            }
            None => "no warm-up configured".to_string(),
        };
        self.step(Event::Done, detail).await.map_err(store_err)?;

        let detail = self
            .guard(phase_timeout, "smoke checks", smoke(self.svc.clone(), route.clone()))
            .await?;
        let next = self.step(Event::Done, detail).await.map_err(store_err)?;

        if next == Phase::AwaitingApproval {
            let signals = self.active.signals.clone();
            let wait = async {
                match rel.auto_promote_after {
                    Some(after) => {
                        tokio::select! {
                            _ = signals.approve.notified() => {}
                            _ = tokio::time::sleep(after.get()) => {
                                *signals.approved_by.lock().unwrap_or_else(|p| p.into_inner()) = Some(format!("auto_promote_after ({after})"));
                            }
                        }
                    }
                    None => signals.approve.notified().await,
                }
                Ok::<_, String>(())
            };
            // No deadline of its own: a person may take the night; abort still works.
            self.guard(Duration::from_secs(u64::MAX / 4), "approval", wait).await?;
            let by = self
                .active
                .signals
                .approved_by
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone()
                .unwrap_or_default();
            self.step(Event::Approve, format!("approved by {by}"))
                .await
                .map_err(store_err)?;
        }

        let env = self.hook_env();
        let detail = self
            .guard(
                rel.hooks.timeout.get() * (rel.hooks.pre_switch.len().max(1) as u32),
                "pre-switch hooks",
                run_hooks(
                    "pre_switch",
                    rel.hooks.pre_switch.clone(),
                    env.clone(),
                    rel.hooks.timeout.get(),
                ),
            )
            .await?;
        self.step(Event::Done, detail).await.map_err(store_err)?;

        // Switching: past this point an abort is a rollback.
        let (id, version, color) = self.doc(|d| (d.id, d.version.clone(), d.color));
        let started = Instant::now();
        let out = {
            let _op = self.svc.op.lock().await;
            self.ctl
                .switch_locked(
                    &self.svc,
                    SwitchRequest {
                        to: Some(color),
                        if_generation: None,
                        force: false,
                        kind: "switched",
                        actor: "controller".into(),
                        reason: format!("release #{id}: {version} passed its checks"),
                        release_id: Some(id),
                    },
                )
                .await
        };
        let out = out.map_err(|e| Stop::failed(format!("switch refused: {e}")))?;
        let switch_ms = started.elapsed().as_secs_f64() * 1000.0;
        self.ctl.cancel_scale_down(&self.svc.cfg.name);
        self.svc.set_state(color, None);
        if let Some(prev) = out.previous {
            self.svc.set_state(prev, Some("warm"));
        }
        self.doc(|d| {
            d.switch_ms = Some(switch_ms);
            d.generation = Some(out.generation);
        });
        let baseline = route.stats.snapshot();
        let hooks = run_hooks(
            "post_switch",
            rel.hooks.post_switch.clone(),
            env.clone(),
            rel.hooks.timeout.get(),
        )
        .await;
        if let Err(e) = hooks {
            return self.roll_back(format!("post-switch hook failed: {e}")).await;
        }
        let next = self
            .step(
                Event::Done,
                format!(
                    "{color} live at generation {} in {switch_ms:.1} ms (store commit included)",
                    out.generation
                ),
            )
            .await
            .map_err(store_err)?;

        if next == Phase::Verifying {
            let verify = rel.verify.clone().unwrap_or_else(default_verify);
            match self.verify(&route, baseline, &verify).await {
                Ok(detail) => {
                    self.step(Event::Done, detail).await.map_err(store_err)?;
                }
                Err(reason) => return self.roll_back(reason).await,
            }
        }
        self.after_completion().await;
        Ok(())
    }

    fn target_route(&self) -> Arc<ColorRoute> {
        let color = self.doc(|d| d.color);
        self.svc.route(color).expect("both colors always have a route")
    }

    fn hook_env(&self) -> Vec<(String, String)> {
        self.doc(|d| {
            vec![
                ("CUTOVER_SERVICE".into(), d.service.clone()),
                ("CUTOVER_VERSION".into(), d.version.clone()),
                (
                    "CUTOVER_PREVIOUS_VERSION".into(),
                    d.previous_version.clone().unwrap_or_default(),
                ),
                ("CUTOVER_COLOR".into(), d.color.as_str().into()),
                ("CUTOVER_RELEASE_ID".into(), d.id.to_string()),
            ]
        })
    }

    /// Watches the new color for the bake window. `Err` carries the reason to roll back.
    async fn verify(
        &mut self,
        route: &Arc<ColorRoute>,
        baseline: cutover_proxy::StatsSnapshot,
        v: &VerifyConfig,
    ) -> Result<String, String> {
        let limits = Limits {
            max_error_rate: v.max_error_rate,
            max_p99: v.max_p99_latency.map(|d| d.get()),
            min_requests: v.min_requests,
        };
        let until = Instant::now() + v.bake.get();
        let mut last_persist = Instant::now();
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        loop {
            tick.tick().await;
            let w = route.stats.snapshot().since(&baseline);
            let window = Window {
                requests: w.requests,
                errors: w.errors + w.aborted_bodies,
                p99: w.duration.quantile(0.99),
                all_unhealthy: route.endpoints.iter().all(|e| e.health() == Health::Unhealthy),
            };
            let verdict = judge(&window, &limits);
            self.doc(|d| d.gates = verdict.gates.clone());
            if last_persist.elapsed() > Duration::from_secs(2) {
                let _ = self.persist().await;
                last_persist = Instant::now();
            }
            let done = Instant::now() >= until;
            match verdict.result {
                GateResult::Failing if v.auto_rollback => return Err(verdict.reason),
                GateResult::Failing if done => {
                    return Ok(format!("gates failing but auto_rollback is off: {}", verdict.reason))
                }
                GateResult::Inconclusive if done => {
                    return match v.on_inconclusive {
                        OnInconclusive::Complete => Ok(format!(
                            "inconclusive, completed as configured (on_inconclusive = \"complete\"): {}",
                            verdict.reason
                        )),
                        OnInconclusive::Rollback => Err(format!(
                            "inconclusive, rolled back as configured (on_inconclusive = \"rollback\"): {}",
                            verdict.reason
                        )),
                    }
                }
                GateResult::Passing if done => return Ok(format!("bake of {} passed: {}", v.bake, verdict.reason)),
                _ => {}
            }
        }
    }

    /// Commits the rollback transition, then switches back.
    async fn roll_back(&mut self, reason: String) -> Result<(), Stop> {
        let seen = Instant::now();
        let rel = self.svc.cfg.release.clone();
        if let Err(e) = self.step(Event::Failed(reason.clone()), reason.clone()).await {
            tracing::error!(error = %e, "could not record the rollback transition; rolling back anyway");
        }
        let id = self.active.id;
        let r = {
            let _op = self.svc.op.lock().await;
            // The previous color served seconds ago: it is the known-good version, so go back
            // even if a health probe is momentarily unsure.
            self.ctl
                .rollback_locked(&self.svc, "controller".into(), reason.clone(), true, Some(id))
                .await
        };
        match r {
            Ok(out) => {
                let ms = seen.elapsed().as_secs_f64() * 1000.0;
                self.doc(|d| {
                    d.rollback_ms = Some(ms);
                    d.generation = Some(out.generation);
                });
                let color = self.doc(|d| d.color);
                self.svc.set_state(color, Some("failed"));
                tracing::warn!(service = %self.svc.cfg.name, release = id, rollback_ms = ms, reason = %reason, "rolled back");
            }
            Err(e) => {
                tracing::error!(service = %self.svc.cfg.name, release = id, error = %e, "ROLLBACK FAILED: the new version is still live");
                self.doc(|d| d.reason = Some(format!("{reason}; rollback failed: {e}")));
            }
        }
        let _ = run_hooks(
            "on_rollback",
            rel.hooks.on_rollback.clone(),
            self.hook_env(),
            rel.hooks.timeout.get(),
        )
        .await;
        let _ = self.persist().await;
        Ok(())
    }

    /// Before the switch: record the end, then tear the idle color down (managed).
    async fn finish_early(&mut self, stop: Stop) {
        if self.machine.outcome.is_some() {
            return;
        }
        if let Err(e) = self.step(stop.event.clone(), stop.detail.clone()).await {
            tracing::error!(error = %e, "could not record the end of the release");
            self.doc(|d| {
                d.outcome = Some(Outcome::Aborted);
                d.reason = Some(stop.detail.clone());
            });
        }
        let color = self.doc(|d| d.color);
        if self.svc.table_live() == Some(color) {
            return;
        }
        if matches!(self.svc.cfg.environments, Environments::Managed(_)) {
            self.ctl.stop_color(&self.svc, color).await;
        }
        self.svc.set_state(
            color,
            Some(if matches!(self.svc.cfg.environments, Environments::Managed(_)) {
                "stopped"
            } else {
                "failed"
            }),
        );
    }

    async fn after_completion(&mut self) {
        let prev = self.doc(|d| d.previous_color);
        let Some(prev) = prev else { return };
        let delay = self.svc.cfg.release.scale_down_delay.get();
        self.doc(|d| d.scale_down_at = Some(unix_now() + delay.as_secs()));
        let _ = self.persist().await;
        self.ctl
            .schedule_scale_down(self.svc.clone(), prev, delay, self.active.id);
    }
}

fn default_verify() -> VerifyConfig {
    // The same defaults a `[verify]` table with no keys gets.
    toml::from_str("").expect("empty table deserializes with defaults")
}

fn humantime_fmt(d: Duration) -> String {
    if d.as_secs() >= u64::MAX / 8 {
        "none".into()
    } else {
        format!("{:?}", d)
    }
}

async fn provision(ctl: Arc<Controller>, svc: Arc<ServiceCtl>, active: Active) -> Result<String, String> {
    let (version, color) = {
        let d = active.doc.lock().unwrap_or_else(|p| p.into_inner());
        (d.version.clone(), d.color)
    };
    ctl.cancel_scale_down(&svc.cfg.name);
    svc.set_state(color, Some("provisioning"));
    let name = svc.cfg.name.clone();
    let detail = match &svc.cfg.environments {
        Environments::Managed(run) => {
            ctl.stop_color(&svc, color).await;
            let config_dir = ctl.config.path.parent().map(|p| p.to_path_buf()).unwrap_or_default();
            let started = supervisor::start(run, &ctl.config.store.data_dir, &config_dir, &name, color, &version)
                .map_err(|e| e.to_string())?;
            let mut pids = Vec::new();
            let mut records: Vec<ProcessRecord> = Vec::new();
            for (rec, child) in started {
                pids.push(rec.pid.to_string());
                records.push(rec);
                svc.children
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push((color, child));
            }
            let recs = records.clone();
            blocking(&ctl.store, move |s| {
                for r in &recs {
                    s.put_process(r)?;
                }
                Ok(())
            })
            .await
            .map_err(|e| e.to_string())?;
            format!(
                "started {} process{} (pid {})",
                records.len(),
                if records.len() == 1 { "" } else { "es" },
                pids.join(", ")
            )
        }
        Environments::Static { .. } => "static endpoints: recorded the version label".to_string(),
    };
    let v = version.clone();
    let n = name.clone();
    blocking(&ctl.store, move |s| s.set_version(&n, color.as_str(), Some(&v)))
        .await
        .map_err(|e| e.to_string())?;
    {
        let _op = svc.op.lock().await;
        svc.install(color, Some(version));
        let t = svc.proxy.table();
        svc.publish(t.live_color(), t.generation);
    }
    Ok(detail)
}

async fn wait_healthy(svc: Arc<ServiceCtl>, route: Arc<ColorRoute>) -> Result<String, String> {
    let started = Instant::now();
    loop {
        if route.endpoints.iter().all(|e| e.health() == Health::Healthy) {
            return Ok(format!(
                "{} endpoint{} healthy after {:.1} s",
                route.endpoints.len(),
                if route.endpoints.len() == 1 { "" } else { "s" },
                started.elapsed().as_secs_f64()
            ));
        }
        if let Some(msg) = svc.exited_early(route.color) {
            return Err(msg);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn client(svc: &ServiceCtl) -> Client<HttpConnector, Full<Bytes>> {
    let mut b = Client::builder(TokioExecutor::new());
    if svc.proxy.settings.protocol == cutover_proxy::route::Protocol::H2c {
        b.http2_only(true);
    }
    b.build(HttpConnector::new())
}

fn build_request(spec: &RequestSpec, addr: std::net::SocketAddr) -> Result<Request<Full<Bytes>>, String> {
    let method = Method::from_bytes(spec.method.as_bytes()).map_err(|_| format!("invalid method {:?}", spec.method))?;
    let mut b = Request::builder()
        .method(method)
        .uri(format!("http://{addr}{}", spec.path));
    let has_ct = spec.headers.keys().any(|k| k.eq_ignore_ascii_case("content-type"));
    for (k, v) in &spec.headers {
        b = b.header(k, v);
    }
    if spec.body.is_some() && !has_ct {
        b = b.header("content-type", "application/json");
    }
    b.body(Full::new(Bytes::from(spec.body.clone().unwrap_or_default())))
        .map_err(|e| e.to_string())
}

struct Answer {
    status: u16,
    body: Bytes,
    latency: Duration,
}

async fn call(
    c: &Client<HttpConnector, Full<Bytes>>,
    spec: &RequestSpec,
    addr: std::net::SocketAddr,
) -> Result<Answer, String> {
    let started = Instant::now();
    let resp = c
        .request(build_request(spec, addr)?)
        .await
        .map_err(|e| format!("{addr}: {e}"))?;
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("{addr}: body: {e}"))?
        .to_bytes();
    Ok(Answer {
        status,
        body,
        latency: started.elapsed(),
    })
}

async fn warm_up(
    svc: Arc<ServiceCtl>,
    route: Arc<ColorRoute>,
    w: cutover_config::WarmupConfig,
) -> Result<String, String> {
    let c = client(&svc);
    let mut details = Vec::new();
    let mut failed_total = 0;
    for ep in &route.endpoints {
        let addr = ep.addr;
        let next = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let results = Arc::new(Mutex::new(Vec::<(u32, Result<Duration, String>)>::new()));
        let mut workers = Vec::new();
        for _ in 0..w.concurrency.min(w.requests.max(1)) {
            let (c, next, results, spec) = (c.clone(), next.clone(), results.clone(), w.request.clone());
            let total = w.requests;
            workers.push(tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= total {
                        return;
                    }
                    let r = match call(&c, &spec, addr).await {
                        Ok(a) if a.status < 500 => Ok(a.latency),
                        Ok(a) => Err(format!("status {}", a.status)),
                        Err(e) => Err(e),
                    };
                    results.lock().unwrap_or_else(|p| p.into_inner()).push((i, r));
                }
            }));
        }
        for wk in workers {
            let _ = wk.await;
        }
        let mut res = std::mem::take(&mut *results.lock().unwrap_or_else(|p| p.into_inner()));
        res.sort_by_key(|(i, _)| *i);
        let ok: Vec<Duration> = res.iter().filter_map(|(_, r)| r.as_ref().ok().copied()).collect();
        let failed = res.len() - ok.len();
        failed_total += failed;
        if failed * 2 > res.len() {
            let first_err = res
                .iter()
                .find_map(|(_, r)| r.as_ref().err().cloned())
                .unwrap_or_default();
            return Err(format!(
                "warm-up of {addr}: {failed} of {} requests failed (first: {first_err})",
                res.len()
            ));
        }
        details.push(format!(
            "{addr}: {} requests, first {:.1} ms, last {:.1} ms",
            res.len(),
            ok.first().map(|d| d.as_secs_f64() * 1000.0).unwrap_or(0.0),
            ok.last().map(|d| d.as_secs_f64() * 1000.0).unwrap_or(0.0)
        ));
    }
    let mut s = details.join("; ");
    if failed_total > 0 {
        s.push_str(&format!("; {failed_total} failed"));
    }
    Ok(s)
}

fn excerpt(b: &[u8]) -> String {
    let s = String::from_utf8_lossy(b);
    let s: String = s.chars().take(200).collect();
    if b.len() > 200 {
        format!("{s}…")
    } else {
        s
    }
}

/// Checks one smoke answer against its expectations; `Err` says what differed.
fn check_expect(e: &cutover_config::Expect, a: &Answer) -> Result<(), String> {
    if let Some(st) = e.status {
        if a.status != st {
            return Err(format!("expected status {st}, got {}", a.status));
        }
    }
    if let Some(max) = e.max_latency {
        if a.latency > max.get() {
            return Err(format!(
                "expected an answer within {max}, took {} ms",
                a.latency.as_millis()
            ));
        }
    }
    if let Some(needle) = &e.body_contains {
        if !String::from_utf8_lossy(&a.body).contains(needle.as_str()) {
            return Err(format!("expected the body to contain {needle:?}"));
        }
    }
    if !e.json.is_empty() {
        let v: serde_json::Value =
            serde_json::from_slice(&a.body).map_err(|err| format!("expected a JSON body ({err})"))?;
        for (pointer, want) in &e.json {
            let want = serde_json::to_value(want).map_err(|err| err.to_string())?;
            match v.pointer(pointer) {
                Some(got) if *got == want => {}
                Some(got) => return Err(format!("expected {pointer} = {want}, got {got}")),
                None => return Err(format!("expected {pointer} = {want}, but the body has no {pointer}")),
            }
        }
    }
    Ok(())
}

async fn smoke(svc: Arc<ServiceCtl>, route: Arc<ColorRoute>) -> Result<String, String> {
    let checks = svc.cfg.release.smoke.clone();
    if checks.is_empty() {
        return Ok("no smoke checks configured".into());
    }
    let c = client(&svc);
    let mut n = 0;
    for check in &checks {
        for ep in &route.endpoints {
            let a = call(&c, &check.request, ep.addr).await.map_err(|e| {
                format!(
                    "smoke check {:?} failed on {}: request failed: {e}",
                    check.name, ep.addr
                )
            })?;
            if let Err(why) = check_expect(&check.expect, &a) {
                return Err(format!(
                    "smoke check {:?} failed on {}: {why}; body: {}",
                    check.name,
                    ep.addr,
                    excerpt(&a.body)
                ));
            }
            n += 1;
        }
    }
    Ok(format!(
        "{} check{} passed on {} endpoint{} ({n} requests)",
        checks.len(),
        if checks.len() == 1 { "" } else { "s" },
        route.endpoints.len(),
        if route.endpoints.len() == 1 { "" } else { "s" }
    ))
}

/// Runs hooks in order; the first non-zero exit (or timeout) fails with its stderr excerpt.
async fn run_hooks(
    stage: &str,
    hooks: Vec<Vec<String>>,
    env: Vec<(String, String)>,
    timeout: Duration,
) -> Result<String, String> {
    if hooks.is_empty() {
        return Ok(format!("no {stage} hooks"));
    }
    for argv in &hooks {
        let mut cmd = tokio::process::Command::new(&argv[0]);
        cmd.args(&argv[1..])
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        let out = tokio::time::timeout(timeout, cmd.output())
            .await
            .map_err(|_| format!("{stage} hook {argv:?} did not finish within {}", humantime_fmt(timeout)))?
            .map_err(|e| format!("{stage} hook {argv:?} could not start: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "{stage} hook {argv:?} exited with {}: {}",
                out.status,
                excerpt(&out.stderr).trim()
            ));
        }
    }
    Ok(format!(
        "{} {stage} hook{} succeeded",
        hooks.len(),
        if hooks.len() == 1 { "" } else { "s" }
    ))
}

impl Controller {
    /// Stops the managed processes of `color` and forgets them.
    pub(crate) async fn stop_color(&self, svc: &ServiceCtl, color: Color) {
        let Environments::Managed(run) = &svc.cfg.environments else {
            return;
        };
        let name = svc.cfg.name.clone();
        let n = name.clone();
        let recs: Vec<ProcessRecord> = match blocking(&self.store, move |s| s.processes(&n)).await {
            Ok(r) => r.into_iter().filter(|p| p.color == color.as_str()).collect(),
            Err(e) => {
                tracing::error!(service = %name, error = %e, "cannot read managed processes from the store");
                return;
            }
        };
        supervisor::stop(&recs, run.stop_timeout.get()).await;
        svc.children
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain_mut(|(c, child)| {
                if *c == color {
                    let _ = child.try_wait();
                    false
                } else {
                    true
                }
            });
        let c = color.as_str();
        let _ = blocking(&self.store, move |s| s.remove_processes(&name, c)).await;
    }

    pub(crate) fn cancel_scale_down(&self, name: &str) {
        if let Some(h) = self.scale_downs.lock().unwrap_or_else(|p| p.into_inner()).remove(name) {
            h.abort();
        }
    }

    /// After `delay`, drains `color` (in-flight to zero or `drain_timeout`) and stops it.
    pub(crate) fn schedule_scale_down(
        self: &Arc<Controller>,
        svc: Arc<ServiceCtl>,
        color: Color,
        delay: Duration,
        release_id: i64,
    ) {
        let ctl = self.clone();
        let name = svc.cfg.name.clone();
        let h = tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            if svc.table_live() == Some(color) {
                return;
            }
            let Some(route) = svc.route(color) else { return };
            let drain = svc.cfg.release.drain_timeout.get();
            let started = Instant::now();
            while route.in_flight() > 0 && started.elapsed() < drain {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let left = route.in_flight();
            if left > 0 {
                tracing::warn!(service = %svc.cfg.name, color = %color, left, "drain deadline passed: closing requests still open");
                route.close_in_flight();
            }
            let _op = svc.op.lock().await;
            if svc.table_live() == Some(color) {
                return;
            }
            let managed = matches!(svc.cfg.environments, Environments::Managed(_));
            if managed {
                ctl.stop_color(&svc, color).await;
            }
            svc.set_state(color, Some(if managed { "stopped" } else { "stale" }));
            let reason = format!(
                "{color} scaled down after scale_down_delay; drained in {:.1} s{}",
                started.elapsed().as_secs_f64(),
                if left > 0 {
                    format!(", {left} requests closed at the drain deadline")
                } else {
                    String::new()
                }
            );
            tracing::info!(service = %svc.cfg.name, color = %color, "{reason}");
            let n = svc.cfg.name.clone();
            let r = reason.clone();
            let _ = blocking(&ctl.store, move |s| {
                s.record_event(
                    &n,
                    "scaled_down",
                    Some(color.as_str()),
                    None,
                    "controller",
                    &r,
                    Some(release_id),
                )?;
                if let Some((_, mut v)) = s.release(release_id)? {
                    v["scaled_down"] = true.into();
                    s.update_release(release_id, &v, true)?;
                }
                Ok(())
            })
            .await;
            ctl.scale_downs
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&svc.cfg.name);
        });
        self.scale_downs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name, h);
    }
}

/// Helpers on the service used by the release pipeline.
impl ServiceCtl {
    pub(crate) fn table_live(&self) -> Option<Color> {
        self.proxy.table().live_color()
    }

    /// A message when a managed process of `color` has exited.
    pub(crate) fn exited_early(&self, color: Color) -> Option<String> {
        let mut children = self.children.lock().unwrap_or_else(|p| p.into_inner());
        for (c, child) in children.iter_mut() {
            if *c != color {
                continue;
            }
            if let Ok(Some(status)) = child.try_wait() {
                return Some(format!(
                    "a model server of {color} exited ({status}) before it was healthy"
                ));
            }
        }
        None
    }
}

pub(crate) type ScaleDowns = Mutex<BTreeMap<String, tokio::task::JoinHandle<()>>>;

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: u16, body: &str, ms: u64) -> Answer {
        Answer {
            status,
            body: Bytes::from(body.to_string()),
            latency: Duration::from_millis(ms),
        }
    }

    fn expect(text: &str) -> cutover_config::Expect {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn smoke_expectations_say_what_differed() {
        let e = expect("status = 200\njson = { \"/object\" = \"chat.completion\", \"/choices/0/index\" = 0 }\nmax_latency = \"1s\"");
        assert_eq!(
            check_expect(
                &e,
                &answer(200, r#"{"object":"chat.completion","choices":[{"index":0}]}"#, 10)
            ),
            Ok(())
        );
        assert_eq!(
            check_expect(&e, &answer(500, "{}", 10)).unwrap_err(),
            "expected status 200, got 500"
        );
        assert_eq!(
            check_expect(&e, &answer(200, r#"{"object":"list","choices":[{"index":0}]}"#, 10)).unwrap_err(),
            "expected /object = \"chat.completion\", got \"list\""
        );
        assert!(check_expect(
            &e,
            &answer(200, r#"{"object":"chat.completion","choices":[{"index":0}]}"#, 1500)
        )
        .unwrap_err()
        .contains("within 1s"));
        assert!(check_expect(&e, &answer(200, "not json", 10))
            .unwrap_err()
            .starts_with("expected a JSON body"));
        let e = expect("body_contains = \"pong\"");
        assert!(check_expect(&e, &answer(200, "ping", 1)).is_err());
    }

    #[test]
    fn default_verification_matches_the_documented_defaults() {
        let v = default_verify();
        assert_eq!(
            (
                v.bake.get().as_secs(),
                v.max_error_rate,
                v.min_requests,
                v.auto_rollback
            ),
            (120, 0.01, 20, true)
        );
    }
}
