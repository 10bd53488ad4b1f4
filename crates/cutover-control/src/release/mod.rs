//! Releases of every service: the documents, and starting, approving and aborting them. One
//! release at a time per service; the pipeline itself is the [`run`].

pub(crate) mod active;
pub mod doc;
pub mod run;
pub mod scale_down;
pub(crate) mod shadow;
pub mod steps;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use cutover_proxy::Color;
use cutover_release::{Outcome, Phase, Plan};
use cutover_store::{now_rfc3339, EventRecord, HistoryKind, Store};

use crate::base::error::{ReleaseError, StoreFailure};
use crate::base::store_call::{blocking, record};
use crate::service::fleet::Fleet;
use crate::service::ServiceCtl;
use active::{Active, Signals};
use doc::NewRelease;
pub use doc::{PhaseRecord, ReleaseDoc, StepRecord};
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
    /// The task of each run, so a fleet leader that lost its term can stop them at once.
    tasks: Arc<Mutex<HashMap<String, tokio::task::AbortHandle>>>,
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
        let mut doc = new_doc(&svc, version, actor);
        let fleet = svc.fleet.get().cloned();
        if let Some(link) = fleet.as_ref().filter(|l| !l.is_leader()) {
            return Err(ReleaseError::NotLeader {
                leader: link.leader_id(),
            });
        }
        let (signals, abort_rx) = Signals::new();
        let shared = Arc::new(Mutex::new(doc.clone()));
        self.claim(&name, &shared, &signals)?;
        let permit = svc.pause.enter().await;
        let min_id = fleet.as_ref().map(|l| l.next_release_id()).unwrap_or(0);
        let id = match insert(&svc.store, doc.clone(), min_id).await {
            Ok(id) => id,
            Err(e) => {
                self.lock().remove(&name);
                return Err(e.into());
            }
        };
        doc.id = id;
        if let Some(link) = &fleet {
            if let Err(e) = fleet_copy_first(&svc, &**link, &mut doc).await {
                self.lock().remove(&name);
                return Err(e);
            }
        }
        shared.lock().unwrap_or_else(|p| p.into_inner()).id = id;
        let active = Active {
            id,
            doc: shared,
            signals,
        };
        self.lock().insert(name.clone(), active.clone());
        tracing::info!(service = %name, release = id, version, color = %doc.color, actor, "release started");
        let run = ReleaseRun::new(svc.clone(), env, active.clone(), abort_rx);
        drop(permit);
        self.spawn_run(svc, run, active.signals);
        Ok(doc)
    }

    /// Runs `run` to its end, records the end (history first: whoever sees the release
    /// leave the active set finds its end recorded), then takes it out of the active set.
    fn spawn_run(&self, svc: Arc<ServiceCtl>, run: ReleaseRun, signals: Arc<Signals>) {
        let me = self.clone();
        let name = svc.name.clone();
        let task = tokio::spawn(async move {
            let end = run.run().await;
            // An abort someone asked for is theirs; any other end the controller's.
            let actor = match end.outcome {
                Some(Outcome::Aborted) => signals.aborter(),
                _ => None,
            };
            let permit = svc.pause.enter().await;
            record_end(&svc.store, &end, actor.as_deref().unwrap_or("controller")).await;
            drop(permit);
            me.lock().remove(&svc.name);
            me.tasks.lock().unwrap_or_else(|p| p.into_inner()).remove(&svc.name);
        });
        self.tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name, task.abort_handle());
    }

    /// A fleet leader that lost its term stops every run where it is: no teardown, no
    /// rollback, no process touched (the new leader owns the release now). The local copy
    /// is marked interrupted, as after a restart.
    pub(crate) async fn halt_all(&self, services: &[Arc<ServiceCtl>], why: &str) {
        let tasks: Vec<(String, tokio::task::AbortHandle)> =
            self.tasks.lock().unwrap_or_else(|p| p.into_inner()).drain().collect();
        for (name, task) in tasks {
            task.abort();
            let Some(active) = self.lock().remove(&name) else {
                continue;
            };
            let Some(svc) = services.iter().find(|s| s.name == name) else {
                continue;
            };
            let doc = active.doc().clone();
            let reason = format!("{why}, during {}; routing left as committed", doc.phase);
            let doc = interrupted(doc, &reason);
            svc.count_release_end(doc.outcome);
            tracing::warn!(service = %name, release = doc.id, version = %doc.version, "release halted: {reason}");
            record(&svc.store, "the halted release", &name, move |s| {
                s.update_release(doc.id, &serde_json::to_value(&doc)?, true)?;
                interrupted_event(s, &doc, &reason)
            })
            .await;
        }
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
    pub async fn doc(
        &self,
        store: &Arc<Store>,
        fleet: Option<&dyn Fleet>,
        service: &str,
        id: i64,
    ) -> Result<ReleaseDoc, ReleaseError> {
        if let Some(a) = self.active(service).filter(|a| a.id == id) {
            return Ok(a.view());
        }
        let stored = blocking(store, move |s| s.release(id)).await?;
        match stored {
            Some((svc, v)) if svc == service => Ok(serde_json::from_value(v).map_err(StoreFailure::from)?),
            _ => {
                // Fleet mode: a release another router ran is in etcd.
                if let Some(link) = fleet {
                    let all = link.releases(service).await.map_err(|e| ReleaseError::Fleet {
                        detail: format!("cannot read the release documents: {e}"),
                    })?;
                    if let Some(v) = all.get(&id) {
                        return Ok(serde_json::from_value(v.clone()).map_err(StoreFailure::from)?);
                    }
                }
                Err(ReleaseError::NotFound {
                    service: service.to_string(),
                    id,
                })
            }
        }
    }

    /// The newest releases of a service, newest first. In fleet mode the documents in etcd
    /// (every leader's) are merged in; the live copy of a run here wins, then etcd's.
    pub async fn list(
        &self,
        store: &Arc<Store>,
        fleet: Option<&dyn Fleet>,
        service: &str,
        limit: u32,
    ) -> Result<Vec<ReleaseDoc>, ReleaseError> {
        let n = service.to_string();
        let rows = blocking(store, move |s| s.releases(&n, limit)).await?;
        let mut all: std::collections::BTreeMap<i64, serde_json::Value> = rows.into_iter().collect();
        if let Some(link) = fleet {
            match link.releases(service).await {
                Ok(docs) => all.extend(docs),
                Err(e) => {
                    tracing::warn!(service, error = %e, "cannot read the fleet's release documents; listing this router's only")
                }
            }
        }
        let active = self.active(service);
        Ok(all
            .into_iter()
            .rev()
            .take(limit as usize)
            .filter_map(|(id, v)| match &active {
                Some(a) if a.id == id => Some(a.view()),
                _ => serde_json::from_value(v).ok(),
            })
            .collect())
    }

    /// Fleet mode: aborting a release a lost leader left interrupted closes it as aborted
    /// (routing stays as committed; nothing runs any more to tear down). Leader only.
    pub(crate) async fn abort_interrupted(
        &self,
        svc: &Arc<ServiceCtl>,
        link: &dyn Fleet,
        id: i64,
        actor: &str,
    ) -> Result<(), ReleaseError> {
        let docs = link.releases(&svc.name).await.map_err(|e| ReleaseError::Fleet {
            detail: format!("cannot read the release documents: {e}"),
        })?;
        let Some(v) = docs.get(&id) else {
            return Err(ReleaseError::NotFound {
                service: svc.name.clone(),
                id,
            });
        };
        let mut doc: ReleaseDoc = serde_json::from_value(v.clone()).map_err(StoreFailure::from)?;
        if doc.outcome != Some(Outcome::Interrupted) {
            return match doc.outcome {
                Some(_) => Err(ReleaseError::Ended { id, phase: doc.phase }),
                None => Err(ReleaseError::NotRunning { id }),
            };
        }
        let reason = format!(
            "aborted by {actor} after it was interrupted ({})",
            doc.reason.clone().unwrap_or_default()
        );
        doc.outcome = Some(Outcome::Aborted);
        doc.reason = Some(reason.clone());
        doc.updated_at = now_rfc3339();
        let value = serde_json::to_value(&doc).map_err(StoreFailure::from)?;
        link.put_release(&svc.name, id, &value).await?;
        let (service, version, color, actor) = (svc.name.clone(), doc.version.clone(), doc.color, actor.to_string());
        self.stop_interrupted(svc, color, &version);
        record(&svc.store, "the abort of an interrupted release", &svc.name, move |s| {
            s.put_release(id, &service, &value, true)?;
            s.record_event(&EventRecord {
                service: &service,
                kind: HistoryKind::ReleaseAborted,
                color: Some(color),
                version: Some(&version),
                actor: &actor,
                reason: &reason,
                release_id: Some(id),
            })
        })
        .await;
        Ok(())
    }

    /// An aborted interrupted release stops what it started on the host agents, if its
    /// color is not live and still runs its version (the new leader stops it when it takes
    /// office; this covers a document left `run` by a leader that did not). In the
    /// background: the abort's answer does not wait for the hosts.
    fn stop_interrupted(&self, svc: &Arc<ServiceCtl>, color: Color, version: &str) {
        let Some(crate::procs::Procs::Remote(p)) = &svc.procs else {
            return;
        };
        if svc.live() == Some(color) {
            return;
        }
        let (p, svc, me, version) = (p.clone(), svc.clone(), self.clone(), version.to_string());
        tokio::spawn(async move {
            let busy = || me.active(&svc.name).is_some();
            if p.stop_abandoned(color, Some(&version), busy).await {
                svc.unwatch(color);
                svc.set_state(color, Some(crate::service::ColorState::Stopped));
            }
        });
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
        // During a progressive release's steps the old color is still live: an abort
        // returns the step's share to it and ends the release.
        if !phase.is_pre_switch() && phase != Phase::Stepping {
            return Err(ReleaseError::AlreadySwitched { id, phase });
        }
        a.signals.request_abort(actor, reason);
        Ok(())
    }
}

/// Stores a new release document; returns its id (written into the stored copy too).
async fn insert(store: &Arc<Store>, mut d: ReleaseDoc, min_id: i64) -> Result<i64, StoreFailure> {
    blocking(store, move |s| {
        let id = s.insert_release_from(&d.service, &serde_json::to_value(&d)?, min_id)?;
        d.id = id;
        s.update_release(id, &serde_json::to_value(&d)?, false)?;
        s.record_event(&EventRecord {
            service: &d.service,
            kind: HistoryKind::ReleaseStarted,
            color: Some(d.color),
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
        Some(Outcome::Interrupted) => HistoryKind::ReleaseInterrupted,
        _ => HistoryKind::ReleaseAborted,
    };
    let d = d.clone();
    let service = d.service.clone();
    let actor = actor.to_string();
    record(store, "the end of the release", &service, move |s| {
        s.record_event(&EventRecord {
            service: &d.service,
            kind,
            color: Some(d.color),
            version: Some(&d.version),
            actor: &actor,
            reason: d.reason.as_deref().unwrap_or_default(),
            release_id: Some(d.id),
        })
    })
    .await;
}

/// `doc` ended as interrupted (its phase closed) with `reason`.
pub(crate) fn interrupted(mut doc: ReleaseDoc, reason: &str) -> ReleaseDoc {
    let now = now_rfc3339();
    if let Some(p) = doc.phases.last_mut() {
        if p.ended_at.is_none() {
            p.ended_at = Some(now.clone());
            p.detail = Some("interrupted".into());
        }
    }
    doc.outcome = Some(Outcome::Interrupted);
    doc.reason = Some(reason.to_string());
    doc.updated_at = now;
    doc
}

/// The history line of `doc`, ended as interrupted with `reason` (a restart, a halt, a lost
/// leader: the callers differ in how the document itself is saved).
pub(crate) fn interrupted_event(
    store: &Store,
    doc: &ReleaseDoc,
    reason: &str,
) -> Result<(), cutover_store::StoreError> {
    store.record_event(&EventRecord {
        service: &doc.service,
        kind: HistoryKind::ReleaseInterrupted,
        color: Some(doc.color),
        version: Some(&doc.version),
        actor: "controller",
        reason,
        release_id: Some(doc.id),
    })
}

/// Marks releases a previous process left unfinished as interrupted (start-up only, after
/// every listener is bound: a second `serve` must not touch a live instance's store).
/// In fleet mode the release is the fleet's: its leader marks it interrupted (and records
/// that) or it has already ended, aborted say, while this router was down. So the local row
/// is closed without a history line, and its id returned: [`adopt_fleet_copies`] replaces
/// the row with the fleet's document once etcd answers.
pub(crate) fn interrupt_unfinished(store: &Store, svc: &ServiceCtl, fleet: bool) -> Result<Vec<i64>, StoreFailure> {
    let table = svc.proxy.table();
    let mut ids = Vec::new();
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
        doc = interrupted(doc, &reason);
        store.update_release(id, &serde_json::to_value(&doc)?, true)?;
        ids.push(id);
        if fleet {
            tracing::warn!(service = %svc.name, release = id, version = %doc.version, phase = %doc.phase, "a release this router ran was unfinished at its restart; the fleet's copy in etcd says how it ended");
            continue;
        }
        interrupted_event(store, &doc, &reason)?;
        svc.count_release_end(doc.outcome);
        tracing::warn!(service = %svc.name, release = id, version = %doc.version, phase = %doc.phase, "release interrupted by a restart; {reason}");
    }
    Ok(ids)
}

/// A new release's document: `version` into the idle color (blue when nothing is live),
/// with the plan the service's configuration makes.
fn new_doc(svc: &ServiceCtl, version: &str, actor: &str) -> ReleaseDoc {
    let previous_color = svc.live();
    let cfg = svc.cfg();
    let mut doc = ReleaseDoc::new(
        NewRelease {
            service: &svc.name,
            version,
            actor,
            color: previous_color.map(Color::other).unwrap_or(Color::Blue),
            previous_color,
            previous_version: previous_color.and_then(|c| svc.version_of(c)),
            plan: Plan {
                manual: cfg.release.promotion == cutover_config::Promotion::Manual,
                has_previous: previous_color.is_some(),
                shadow: cfg.release.shadow.is_some(),
            },
        },
        now_rfc3339(),
    );
    doc.traffic = cfg.release.traffic.name().into();
    doc
}

/// Fleet mode: the fleet's copy of a new release first, since a release only the leader's
/// disk knows would vanish with it. Refused (no longer leader, etcd away): the local row is
/// closed too, as aborted.
async fn fleet_copy_first(svc: &ServiceCtl, link: &dyn Fleet, doc: &mut ReleaseDoc) -> Result<(), ReleaseError> {
    let id = doc.id;
    link.used_release_id(id);
    let put = match serde_json::to_value(&*doc) {
        Ok(v) => link.put_release(&svc.name, id, &v).await,
        Err(e) => Err(StoreFailure::from(e).into()),
    };
    if let Err(e) = put {
        doc.outcome = Some(Outcome::Aborted);
        doc.reason = Some(format!("not started: {e}"));
        if let Ok(v) = serde_json::to_value(&*doc) {
            let _ = blocking(&svc.store, move |s| s.update_release(id, &v, true)).await;
        }
        return Err(e);
    }
    Ok(())
}

/// Fleet mode, after a restart: the releases `ids` of `service` that this router left
/// unfinished take the fleet's documents (the leader's interrupted, or an abort since) once
/// etcd has them ended. Retried while etcd is away or a new leader has not marked them yet.
pub(crate) async fn adopt_fleet_copies(store: Arc<Store>, link: Arc<dyn Fleet>, service: String, mut ids: Vec<i64>) {
    for _ in 0..120 {
        if let Ok(docs) = link.releases(&service).await {
            let mut ended = Vec::new();
            ids.retain(|id| match docs.get(id) {
                Some(v) if !v["outcome"].is_null() => {
                    ended.push((*id, v.clone()));
                    false
                }
                Some(_) => true,
                // Never reached etcd (its start was refused): the local row is all there is.
                None => false,
            });
            for (id, v) in ended {
                let name = service.clone();
                record(&store, "the fleet's copy of a release", &service, move |s| {
                    s.put_release(id, &name, &v, true)
                })
                .await;
            }
        }
        if ids.is_empty() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
    tracing::warn!(service = %service, releases = ?ids, "the fleet's copies of releases unfinished at this router's restart were not ended in etcd; the local rows stay interrupted");
}
