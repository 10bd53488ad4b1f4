//! The controller: every service and the store that makes their state durable. It restores
//! committed routing at start-up, adopts managed processes, resumes pending scale-downs, and
//! is the one entry point the admin API, metrics and `serve` use; the work itself is done by
//! the service (`service`), release (`release`) and scale-down (`scale_down`) modules.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;

use cutover_config::{Config, Environments};
use cutover_proxy::Color;
use cutover_release::Outcome;
use cutover_store::{HistoryEntry, Store};

use crate::base::error::{ControlError, ReleaseError};
use crate::base::pause::{Pause, Quiesced};
use crate::base::store_call::blocking;
use crate::procs::supervisor::{self, Dirs, Role};
use crate::procs::HostsDriver;
use crate::release::run::RunEnv;
use crate::release::scale_down::ScaleDowns;
use crate::release::{self, ReleaseDoc, Releases};
use crate::service::fleet::Fleet;
use crate::service::series::Point;
use crate::service::stop::{StopOutcome, StopRequest};
use crate::service::switch::{RollbackRequest, SwitchOutcome, SwitchRequest};
use crate::service::{ColorState, ServiceCtl};

/// Configuration reloads done by this process, by result.
#[derive(Default)]
pub struct ReloadCounts {
    pub ok: std::sync::atomic::AtomicU64,
    pub error: std::sync::atomic::AtomicU64,
}

/// The control plane: every service, and the store that makes their state durable.
pub struct Controller {
    /// Replaced whole when a reload adds or removes a service.
    services: ArcSwap<BTreeMap<String, Arc<ServiceCtl>>>,
    pub store: Arc<Store>,
    /// The configuration this process started with (`[admin]` and `[store]` never change
    /// while it runs; each service's current settings are in its `ServiceCtl`).
    pub config: Config,
    dirs: Dirs,
    /// Makes the driver of `run.hosts` processes (fleet mode's); `None` where none is given.
    hosts: Option<HostsDriver>,
    /// Reloads done by this process, for `cutover_config_reloads_total{result}`.
    pub reloads: ReloadCounts,
    /// The release in progress per service (at most one).
    pub(crate) releases: Releases,
    /// Pending scale-downs of old colors, per service.
    scale_downs: ScaleDowns,
    /// Stops the control plane's writes while a successor takes over (`serve --upgrade`).
    pub(crate) pause: Pause,
    /// Fleet mode's link to etcd, attached by `serve` once the admin listener is bound.
    fleet: std::sync::OnceLock<Arc<dyn Fleet>>,
    /// Fleet mode: the releases this router left unfinished before its restart, per
    /// service, until the fleet's documents replace them (`attach_fleet`).
    unfinished: std::sync::Mutex<Vec<(String, Vec<i64>)>>,
}

impl Controller {
    /// Restores every service's committed routing from the store (the live color and
    /// generation come back exactly as they were last acknowledged), marks releases a
    /// previous process left unfinished as interrupted, and adopts managed processes.
    ///
    /// This writes to the store: call it only once every listener is bound, so that a
    /// second `serve` started by mistake fails before it touches a live instance's state.
    pub fn build(config: Config, store: Store) -> anyhow::Result<Controller> {
        Controller::build_with(config, store, None)
    }

    /// [`Controller::build`], with `hosts` making the driver of a service whose processes
    /// run on host agents (`run.hosts`); without it such a service is refused.
    pub fn build_with(config: Config, store: Store, hosts: Option<HostsDriver>) -> anyhow::Result<Controller> {
        let store = Arc::new(store);
        let dirs = Dirs {
            data_dir: config.store.data_dir.clone(),
            config_dir: config.path.parent().map(|p| p.to_path_buf()).unwrap_or_default(),
        };
        let pause = Pause::default();
        let mut services = BTreeMap::new();
        for (name, cfg) in &config.services {
            let svc = restore(cfg, &store, &dirs, &pause, hosts)?;
            services.insert(name.clone(), svc);
        }
        let ctl = Controller {
            services: ArcSwap::from_pointee(services),
            store,
            config,
            dirs,
            hosts,
            reloads: ReloadCounts::default(),
            releases: Releases::default(),
            scale_downs: ScaleDowns::default(),
            pause,
            fleet: Default::default(),
            unfinished: Default::default(),
        };
        let fleet = ctl.config.store.fleet.is_some();
        let mut unfinished = Vec::new();
        for svc in ctl.services().values() {
            let ids = release::interrupt_unfinished(&ctl.store, svc, fleet)
                .map_err(|e| anyhow::anyhow!("cannot mark the unfinished releases of {}: {e}", svc.name))?;
            if !ids.is_empty() {
                unfinished.push((svc.name.clone(), ids));
            }
            ctl.adopt(svc)?;
        }
        *ctl.unfinished.lock().unwrap_or_else(|p| p.into_inner()) = unfinished;
        Ok(ctl)
    }

    /// Keeps the managed processes a previous cutover started that are still the same
    /// processes (pid and start time) and watches them from now on: the live color's are
    /// restarted by the policy (a warm color's too, once `resume` finds its scale-down
    /// pending); forgets the rest.
    fn adopt(&self, svc: &ServiceCtl) -> anyhow::Result<()> {
        // Host agents adopt their own processes.
        let Some(procs) = svc.procs.as_ref().and_then(|p| p.local()) else {
            return Ok(());
        };
        let name = &svc.name;
        let records = self.store.processes(name)?;
        let live = svc.live();
        for c in Color::ALL {
            let mine: Vec<_> = records.iter().filter(|p| p.color == c).cloned().collect();
            let (alive, dead): (Vec<_>, Vec<_>) = mine.into_iter().partition(supervisor::alive);
            for p in &alive {
                tracing::info!(service = %name, color = %c, pid = p.pid, version = %p.version, port = p.port, "adopted running model server");
            }
            if !dead.is_empty() {
                tracing::warn!(service = %name, color = %c, gone = dead.len(), "managed processes from before the restart are gone");
                self.store.remove_processes(name, c)?;
                for p in &alive {
                    self.store.put_process(p)?;
                }
            }
            if alive.is_empty() && live != Some(c) && svc.version_of(c).is_some() {
                svc.set_state(c, Some(ColorState::Stopped));
                // Nothing runs there: checking it would only warn about a planned stop.
                svc.unwatch(c);
            }
            let role = if live == Some(c) { Role::Serving } else { Role::Idle };
            procs.adopt(c, alive, role);
        }
        Ok(())
    }

    /// Work a previous process left scheduled: the scale-down of the color the latest release
    /// left behind (the old color after a completion, the failed one after a rollback).
    pub fn resume(&self) {
        for svc in self.services().values() {
            let latest = match self.store.releases(&svc.name, 1) {
                Ok(rows) => rows.into_iter().next(),
                Err(e) => {
                    tracing::error!(service = %svc.name, error = %e, "cannot read the latest release; a pending scale-down is not resumed");
                    continue;
                }
            };
            let Some((id, v)) = latest else { continue };
            let Ok(doc) = serde_json::from_value::<ReleaseDoc>(v) else {
                continue;
            };
            if doc.standby_sleeping && doc.outcome == Some(Outcome::Completed) {
                // Put to sleep before the restart: the servers kept running asleep, so a
                // rollback must still wake them first.
                if let Some(prev) = doc.previous_color.filter(|c| svc.live() != Some(*c)) {
                    svc.set_state(prev, Some(ColorState::Sleeping));
                    svc.unwatch(prev);
                }
                continue;
            }
            let (Some(at), false) = (doc.scale_down_at, doc.scaled_down) else {
                continue;
            };
            let (color, state, role) = match doc.outcome {
                Some(Outcome::Completed) => match doc.previous_color {
                    Some(prev) => (prev, ColorState::Warm, Role::Serving),
                    None => continue,
                },
                Some(Outcome::RolledBack) => (doc.color, ColorState::Failed, Role::Idle),
                _ => continue,
            };
            if svc.live() == Some(color) {
                continue;
            }
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            svc.set_state(color, Some(state));
            if let Some(procs) = &svc.procs {
                procs.set_role(color, role);
            }
            let delay = Duration::from_secs(at.saturating_sub(now));
            self.scale_downs.schedule(svc.clone(), color, delay, id);
        }
    }

    /// Pauses the control plane for a hand-over to a successor: waits (up to `within`) for
    /// the operations under way, then keeps release runs, scale-downs and supervision from
    /// writing the store or touching a process, and the admin API answers mutations 503,
    /// until the guard drops. The managed processes and the data plane go on as they are.
    pub async fn quiesce(&self, within: Duration) -> Result<Quiesced, String> {
        self.pause.quiesce(within).await.map_err(|d| {
            format!(
                "a control operation (a switch, a release step, a process start or stop) was still running after {} s",
                d.as_secs()
            )
        })
    }

    /// True while a hand-over holds the control plane still.
    pub fn is_quiesced(&self) -> bool {
        self.pause.is_quiesced()
    }

    /// Fleet mode: from now on every switch of every service commits through `link`.
    pub fn attach_fleet(&self, link: Arc<dyn Fleet>) {
        for svc in self.services().values() {
            let _ = svc.fleet.set(link.clone());
            link.clone().attach_hosts(svc);
        }
        let unfinished = std::mem::take(&mut *self.unfinished.lock().unwrap_or_else(|p| p.into_inner()));
        for (service, ids) in unfinished {
            tokio::spawn(release::adopt_fleet_copies(
                self.store.clone(),
                link.clone(),
                service,
                ids,
            ));
        }
        let _ = self.fleet.set(link);
    }

    /// The fleet link, in fleet mode.
    pub fn fleet(&self) -> Option<&Arc<dyn Fleet>> {
        self.fleet.get()
    }

    /// Every service now.
    pub fn services(&self) -> Arc<BTreeMap<String, Arc<ServiceCtl>>> {
        self.services.load_full()
    }

    pub fn service(&self, name: &str) -> Result<Arc<ServiceCtl>, ControlError> {
        let all = self.services.load();
        all.get(name).cloned().ok_or_else(|| ControlError::UnknownService {
            name: name.to_string(),
            known: all.keys().cloned().collect::<Vec<_>>().join(", "),
        })
    }

    /// A service a reload added: restored from the store as at start-up (a service removed
    /// and added back finds its routing, history and still-running processes again).
    pub fn add_service(&self, cfg: &cutover_config::ServiceConfig) -> anyhow::Result<Arc<ServiceCtl>> {
        let svc = restore(cfg, &self.store, &self.dirs, &self.pause, self.hosts)?;
        let ids = release::interrupt_unfinished(&self.store, &svc, self.config.store.fleet.is_some())
            .map_err(|e| anyhow::anyhow!("cannot mark the unfinished releases of {}: {e}", svc.name))?;
        self.adopt(&svc)?;
        if let (Some(link), false) = (self.fleet.get(), ids.is_empty()) {
            tokio::spawn(release::adopt_fleet_copies(
                self.store.clone(),
                link.clone(),
                svc.name.clone(),
                ids,
            ));
        }
        let mut all = (*self.services()).clone();
        all.insert(cfg.name.clone(), svc.clone());
        self.services.store(Arc::new(all));
        if let Some(link) = self.fleet.get() {
            let _ = svc.fleet.set(link.clone());
            // Its document is read (or created) before its first switch can commit.
            link.resync();
        }
        Ok(svc)
    }

    /// Forgets a service a reload removed: its health checks and resolver stop with it.
    /// Managed processes keep running (as when cutover stops) and are adopted again if the
    /// service comes back. Refused while a release of it runs.
    pub fn remove_service(&self, name: &str) -> Result<Arc<ServiceCtl>, ControlError> {
        let svc = self.service(name)?;
        if let Some(doc) = self.releases.active_doc(name) {
            return Err(ReleaseError::InProgress {
                id: doc.id,
                version: doc.version,
                phase: doc.phase,
            }
            .into());
        }
        let mut all = (*self.services()).clone();
        all.remove(name);
        self.services.store(Arc::new(all));
        svc.retire();
        Ok(svc)
    }

    fn run_env(&self) -> RunEnv {
        RunEnv {
            scale_downs: self.scale_downs.clone(),
        }
    }

    /// Makes a color live. Durable before it returns: the store commits first, then the new
    /// route table is published in one pointer swap.
    pub async fn switch(&self, name: &str, req: SwitchRequest) -> Result<SwitchOutcome, ControlError> {
        let svc = self.service(name)?;
        let out = svc.switch(req).await?;
        serve(&svc, &out);
        Ok(out)
    }

    /// Switches back to the other color, recorded as a rollback.
    pub async fn rollback(&self, name: &str, req: RollbackRequest) -> Result<SwitchOutcome, ControlError> {
        let svc = self.service(name)?;
        let out = svc.rollback(req).await?;
        serve(&svc, &out);
        Ok(out)
    }

    /// Stops a managed color's model servers on purpose (`cutover stop`). Refused while a
    /// release runs: it owns the idle color until it ends.
    pub async fn stop(&self, name: &str, req: StopRequest) -> Result<StopOutcome, ControlError> {
        let svc = self.service(name)?;
        if let Some(doc) = self.releases.active_doc(name) {
            return Err(ReleaseError::InProgress {
                id: doc.id,
                version: doc.version,
                phase: doc.phase,
            }
            .into());
        }
        let out = svc.stop_color(req).await?;
        if !out.was_live {
            // The pending scale-down was this color's: it is done now.
            self.scale_downs.cancel(name);
        }
        Ok(out)
    }

    /// Starts a release of `version` into the idle color. One release at a time per service.
    pub async fn start_release(&self, name: &str, version: &str, actor: &str) -> Result<ReleaseDoc, ControlError> {
        let svc = self.service(name)?.clone();
        Ok(self.releases.start(svc, self.run_env(), version, actor).await?)
    }

    /// `rollback --redeploy`: the previous color was scaled down, so release again, through
    /// the whole pipeline, the version that was last live there (from the history: never a
    /// build whose release into that color was aborted).
    pub async fn redeploy_previous(&self, name: &str, actor: &str) -> Result<ReleaseDoc, ControlError> {
        let svc = self.service(name)?;
        let idle = svc.live().ok_or(ReleaseError::NoPreviousVersion)?.other();
        let version = svc
            .last_live_version(idle)
            .await?
            .ok_or(ReleaseError::NoPreviousVersion)?;
        self.start_release(name, &version, actor).await
    }

    /// The document of the release in progress, if any.
    pub fn active_release_doc(&self, name: &str) -> Option<ReleaseDoc> {
        self.releases.active_doc(name)
    }

    /// The release in progress: this router's run, or in fleet mode the leader's (as its
    /// document in etcd says), so every router's status shows it.
    pub fn release_in_progress(&self, name: &str) -> Option<ReleaseDoc> {
        self.releases.active_doc(name).or_else(|| {
            let link = self.fleet().filter(|l| !l.is_leader())?;
            serde_json::from_value(link.release_in_progress(name)?).ok()
        })
    }

    /// A release by id: the live copy while it runs, else the stored one.
    pub async fn release_doc(&self, name: &str, id: i64) -> Result<ReleaseDoc, ControlError> {
        if let Err(e) = self.service(name) {
            // A removed service's releases stay readable, as its history does.
            return match self.releases.doc(&self.store, None, name, id).await {
                Ok(d) => Ok(d),
                Err(_) => Err(e),
            };
        }
        Ok(self
            .releases
            .doc(&self.store, self.fleet().map(|l| &**l), name, id)
            .await?)
    }

    /// A service's releases, newest first; also of a service a reload removed.
    pub async fn releases(&self, name: &str, limit: u32) -> Result<Vec<ReleaseDoc>, ControlError> {
        if let Err(e) = self.service(name) {
            let list = self.releases.list(&self.store, None, name, limit).await?;
            return if list.is_empty() { Err(e) } else { Ok(list) };
        }
        Ok(self
            .releases
            .list(&self.store, self.fleet().map(|l| &**l), name, limit)
            .await?)
    }

    pub fn approve(&self, name: &str, id: i64, actor: &str) -> Result<(), ControlError> {
        self.service(name)?;
        Ok(self.releases.approve(name, id, actor)?)
    }

    pub async fn abort(&self, name: &str, id: i64, actor: &str) -> Result<(), ControlError> {
        let svc = self.service(name)?;
        match (self.releases.abort(name, id, actor), self.fleet()) {
            // Fleet mode: a release a lost leader left interrupted can be closed here.
            (Err(ReleaseError::NotRunning { .. }), Some(link)) if link.is_leader() => {
                Ok(self.releases.abort_interrupted(&svc, &**link, id, actor).await?)
            }
            (r, _) => Ok(r?),
        }
    }

    /// Fleet mode, after this router lost its term: stops every release run where it is
    /// and drops pending scale-downs, touching no process (the new leader decides).
    pub(crate) async fn halt_for_step_down(&self, why: &str) {
        let services: Vec<Arc<ServiceCtl>> = self.services().values().cloned().collect();
        for svc in &services {
            self.scale_downs.cancel(&svc.name);
        }
        self.releases.halt_all(&services, why).await;
    }

    /// Ends a release before its switch with `reason` (a forced manual switch overrode it).
    pub fn end_release(&self, name: &str, id: i64, actor: &str, reason: String) -> Result<(), ControlError> {
        self.service(name)?;
        Ok(self.releases.end(name, id, actor, reason)?)
    }

    /// Takes one sample of every service's traffic per color (called every `SAMPLE_EVERY`).
    pub fn sample(&self) {
        for svc in self.services().values() {
            svc.sample();
        }
    }

    pub fn series(&self, name: &str) -> Result<Vec<Point>, ControlError> {
        Ok(self.service(name)?.series_points())
    }

    /// A service's history, newest first; also of a service a reload removed (its history
    /// stays in the store, and comes back with it if it is added again).
    pub async fn history(&self, name: &str, limit: u32) -> Result<Vec<HistoryEntry>, ControlError> {
        let unknown = self.service(name).err();
        let n = name.to_string();
        let rows = blocking(&self.store, move |s| s.history(&n, limit)).await?;
        match unknown {
            Some(e) if rows.is_empty() => Err(e),
            _ => Ok(rows),
        }
    }
}

/// After a manual switch or rollback, the color made live is restarted by the policy, and the
/// one it left stays so too: it is the instant way back.
fn serve(svc: &ServiceCtl, out: &SwitchOutcome) {
    if let Some(procs) = &svc.procs {
        procs.set_role(out.live, Role::Serving);
    }
}

/// One service with its committed routing published.
fn restore(
    cfg: &cutover_config::ServiceConfig,
    store: &Arc<Store>,
    dirs: &Dirs,
    pause: &Pause,
    hosts: Option<HostsDriver>,
) -> anyhow::Result<Arc<ServiceCtl>> {
    let name = &cfg.name;
    let remote = match &cfg.environments {
        Environments::Managed(run) if !run.hosts.is_empty() => match hosts {
            Some(make) => Some(make(name, run.clone(), store.clone())),
            None => anyhow::bail!(
                "service {name}: run.hosts needs fleet mode's host agents, which this controller was not given"
            ),
        },
        _ => None,
    };
    let (bv, gv) = match &cfg.environments {
        Environments::Static { blue, green } => (blue.version.as_deref(), green.version.as_deref()),
        Environments::Managed(_) => (None, None),
    };
    let state = store
        .ensure_service(name, bv, gv)
        .map_err(|e| anyhow::anyhow!("cannot load service {name} from the store: {e}"))?;
    let svc = ServiceCtl::new(
        cfg.clone(),
        store.clone(),
        [state.blue_version.clone(), state.green_version.clone()],
        dirs.clone(),
        pause.clone(),
        remote,
    );
    let live = state.live;
    svc.publish(live, state.generation);
    tracing::info!(
        service = %name,
        live = live.map(Color::as_str).unwrap_or("none"),
        generation = state.generation,
        "restored routing from the store"
    );
    Ok(svc)
}
