//! Releases of every service: the documents, and starting, approving and aborting them. One
//! release at a time per service; the pipeline itself is the [`run`].

pub(crate) mod active;
pub mod doc;
pub mod run;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use cutover_proxy::Color;
use cutover_release::{Outcome, Phase, Plan};
use cutover_store::{now_rfc3339, EventRecord, HistoryKind, Store};

use crate::colors::stored;
use crate::error::{ReleaseError, StoreFailure};
use crate::service::ServiceCtl;
use crate::store_call::{blocking, record};
use active::{Active, Signals};
use doc::NewRelease;
pub use doc::{PhaseRecord, ReleaseDoc};
use run::{ReleaseRun, RunEnv};

/// A version label: 1-200 characters, no whitespace or control characters (it becomes a
/// header value, a label and a command-line argument).
pub fn validate_version(version: &str) -> Result<(), ReleaseError> {
    if version.is_empty()
        || version.chars().count() > 200
        || version.chars().any(|c| c.is_control() || c.is_whitespace())
    {
        return Err(ReleaseError::InvalidVersion);
    }
    Ok(())
}

/// The releases in progress, per service (at most one each).
#[derive(Clone, Default)]
pub struct Releases {
    active: Arc<Mutex<HashMap<String, Active>>>,
}

impl Releases {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Active>> {
        self.active.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn active(&self, service: &str) -> Option<Active> {
        self.lock().get(service).cloned()
    }

    /// The document of the release in progress, if any.
    pub fn active_doc(&self, service: &str) -> Option<ReleaseDoc> {
        self.active(service).map(|a| a.view())
    }

    /// Starts a release of `version` into the idle color and spawns its run.
    pub async fn start(
        &self,
        svc: Arc<ServiceCtl>,
        env: RunEnv,
        version: &str,
        actor: &str,
    ) -> Result<ReleaseDoc, ReleaseError> {
        validate_version(version)?;
        let name = svc.name.clone();
        let previous_color = svc.live();
        let mut doc = ReleaseDoc::new(
            NewRelease {
                service: &name,
                version,
                actor,
                color: previous_color.map(Color::other).unwrap_or(Color::Blue),
                previous_color,
                previous_version: previous_color.and_then(|c| svc.version_of(c)),
                plan: Plan {
                    manual: svc.cfg().release.promotion == cutover_config::Promotion::Manual,
                    has_previous: previous_color.is_some(),
                },
            },
            now_rfc3339(),
        );
        let (signals, abort_rx) = Signals::new();
        let shared = Arc::new(Mutex::new(doc.clone()));
        self.claim(&name, &shared, &signals)?;
        let permit = svc.pause.enter().await;
        let id = match insert(&svc.store, doc.clone()).await {
            Ok(id) => id,
            Err(e) => {
                self.lock().remove(&name);
                return Err(e.into());
            }
        };
        doc.id = id;
        shared.lock().unwrap_or_else(|p| p.into_inner()).id = id;
        let active = Active {
            id,
            doc: shared,
            signals,
        };
        self.lock().insert(name.clone(), active.clone());
        tracing::info!(service = %name, release = id, version, color = %doc.color, actor, "release started");
        let signals = active.signals.clone();
        let run = ReleaseRun::new(svc.clone(), env, active, abort_rx);
        let me = self.clone();
        drop(permit);
        tokio::spawn(async move {
            let end = run.run().await;
            // History first: whoever sees the release leave the active set finds its end
            // recorded. An abort someone asked for is theirs; any other end the controller's.
            let actor = match end.outcome {
                Some(Outcome::Aborted) => signals.aborter(),
                _ => None,
            };
            let permit = svc.pause.enter().await;
            record_end(&svc.store, &end, actor.as_deref().unwrap_or("controller")).await;
            drop(permit);
            me.lock().remove(&name);
        });
        Ok(doc)
    }

    /// Claims the service's one release slot before any await, so two requests cannot both
    /// pass; the store writes then run off the async threads.
    fn claim(&self, name: &str, doc: &Arc<Mutex<ReleaseDoc>>, signals: &Arc<Signals>) -> Result<(), ReleaseError> {
        let mut active = self.lock();
        if let Some(a) = active.get(name) {
            let d = a.doc();
            return Err(ReleaseError::InProgress {
                id: d.id,
                version: d.version.clone(),
                phase: d.phase,
            });
        }
        active.insert(
            name.to_string(),
            Active {
                id: 0,
                doc: doc.clone(),
                signals: signals.clone(),
            },
        );
        Ok(())
    }

    /// A release by id: the live copy while it runs, else the stored one.
    pub async fn doc(&self, store: &Arc<Store>, service: &str, id: i64) -> Result<ReleaseDoc, ReleaseError> {
        if let Some(a) = self.active(service).filter(|a| a.id == id) {
            return Ok(a.view());
        }
        let stored = blocking(store, move |s| s.release(id)).await?;
        match stored {
            Some((svc, v)) if svc == service => Ok(serde_json::from_value(v).map_err(StoreFailure::from)?),
            _ => Err(ReleaseError::NotFound {
                service: service.to_string(),
                id,
            }),
        }
    }

    /// The newest releases of a service, newest first.
    pub async fn list(&self, store: &Arc<Store>, service: &str, limit: u32) -> Result<Vec<ReleaseDoc>, ReleaseError> {
        let n = service.to_string();
        let rows = blocking(store, move |s| s.releases(&n, limit)).await?;
        let active = self.active(service);
        Ok(rows
            .into_iter()
            .filter_map(|(id, v)| match &active {
                Some(a) if a.id == id => Some(a.view()),
                _ => serde_json::from_value(v).ok(),
            })
            .collect())
    }

    fn running(&self, service: &str, id: i64) -> Result<(Active, Phase), ReleaseError> {
        let a = self
            .active(service)
            .filter(|a| a.id == id)
            .ok_or(ReleaseError::NotRunning { id })?;
        let phase = a.doc().phase;
        Ok((a, phase))
    }

    pub fn approve(&self, service: &str, id: i64, actor: &str) -> Result<(), ReleaseError> {
        let (a, phase) = self.running(service, id)?;
        // An abort already asked for wins: the phase still reads awaiting_approval until the
        // run has recorded it, and an approval then would be answered but never happen.
        if let Some(why) = a.signals.abort_reason() {
            return Err(ReleaseError::Aborting { id, why });
        }
        if phase != Phase::AwaitingApproval {
            return Err(ReleaseError::NotAwaitingApproval { id, phase });
        }
        a.signals.set_approver(actor.to_string());
        a.signals.approve.notify_one();
        Ok(())
    }

    pub fn abort(&self, service: &str, id: i64, actor: &str) -> Result<(), ReleaseError> {
        self.end(service, id, actor, format!("aborted by {actor}"))
    }

    /// Aborts with `reason` (an abort, or a forced manual switch that ends the release).
    pub fn end(&self, service: &str, id: i64, actor: &str, reason: String) -> Result<(), ReleaseError> {
        let (a, phase) = self.running(service, id)?;
        // A run that is ending stays in the active set while it tears the idle color down:
        // say so, rather than judge its terminal phase as "after the switch".
        if let Some(why) = a.signals.abort_reason() {
            return Err(ReleaseError::Aborting { id, why });
        }
        if phase.is_terminal() {
            return Err(ReleaseError::Ended { id, phase });
        }
        if !phase.is_pre_switch() {
            return Err(ReleaseError::AlreadySwitched { id, phase });
        }
        a.signals.request_abort(actor, reason);
        Ok(())
    }
}

/// Stores a new release document; returns its id (written into the stored copy too).
async fn insert(store: &Arc<Store>, mut d: ReleaseDoc) -> Result<i64, StoreFailure> {
    blocking(store, move |s| {
        let id = s.insert_release(&d.service, &serde_json::to_value(&d)?)?;
        d.id = id;
        s.update_release(id, &serde_json::to_value(&d)?, false)?;
        s.record_event(&EventRecord {
            service: &d.service,
            kind: HistoryKind::ReleaseStarted,
            color: Some(stored(d.color)),
            version: Some(&d.version),
            actor: &d.actor,
            reason: &format!("release #{id} of {} into {}", d.version, d.color),
            release_id: Some(id),
        })?;
        Ok(id)
    })
    .await
}

/// The history line of a release's end.
async fn record_end(store: &Arc<Store>, d: &ReleaseDoc, actor: &str) {
    let kind = match d.outcome {
        Some(Outcome::Completed) => HistoryKind::ReleaseCompleted,
        Some(Outcome::RolledBack) => HistoryKind::ReleaseRolledBack,
        _ => HistoryKind::ReleaseAborted,
    };
    let d = d.clone();
    let service = d.service.clone();
    let actor = actor.to_string();
    record(store, "the end of the release", &service, move |s| {
        s.record_event(&EventRecord {
            service: &d.service,
            kind,
            color: Some(stored(d.color)),
            version: Some(&d.version),
            actor: &actor,
            reason: d.reason.as_deref().unwrap_or_default(),
            release_id: Some(d.id),
        })
    })
    .await;
}

/// Marks releases a previous process left unfinished as interrupted (start-up only, after
/// every listener is bound: a second `serve` must not touch a live instance's store).
pub(crate) fn interrupt_unfinished(store: &Store, svc: &ServiceCtl) -> Result<(), StoreFailure> {
    let table = svc.proxy.table();
    for (id, v) in store.unfinished_releases(&svc.name)? {
        let Ok(mut doc) = serde_json::from_value::<ReleaseDoc>(v) else {
            tracing::warn!(service = %svc.name, release = id, "an unfinished release document cannot be read; left as it is");
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
        store.update_release(id, &serde_json::to_value(&doc)?, true)?;
        store.record_event(&EventRecord {
            service: &svc.name,
            kind: HistoryKind::ReleaseInterrupted,
            color: Some(stored(doc.color)),
            version: Some(&doc.version),
            actor: "controller",
            reason: &reason,
            release_id: Some(id),
        })?;
        tracing::warn!(service = %svc.name, release = id, version = %doc.version, phase = %doc.phase, "release interrupted by a restart; {reason}");
    }
    Ok(())
}
