//! The controller: owns each service's two colors, commits switches to the store and only
//! then publishes the new route table.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use cutover_config::{Config, Environments, ServiceConfig, UpstreamProtocol};
use cutover_proxy::health::{self, HealthSpec};
use cutover_proxy::route::Protocol;
use cutover_proxy::{Color, ColorRoute, Health, RouteTable, Service, ServiceSettings};
use cutover_store::{HistoryEntry, ServiceState, Store, StoreError, SwitchRecord};
use serde::Serialize;

use crate::error::ApiError;

/// One color's current route and the health checks that watch it.
pub(crate) struct Slot {
    pub(crate) route: Arc<ColorRoute>,
    _checks: health::Checks,
}

/// The control plane's view of one service.
pub struct ServiceCtl {
    pub cfg: ServiceConfig,
    /// The data plane's handle: the route table lives here.
    pub proxy: Arc<Service>,
    pub health: HealthSpec,
    slots: Mutex<[Option<Slot>; 2]>,
    /// Overrides of a color's displayed state (`provisioning`, `warm`, `stopped`, `stale`,
    /// `failed`); `None` means it is derived: live, idle or empty.
    states: Mutex<[Option<&'static str>; 2]>,
    /// Managed processes this cutover started (adopted ones are not our children).
    pub(crate) children: Mutex<Vec<(Color, tokio::process::Child)>>,
    /// Requests/s and error rate per color over the last minutes, for the dashboard.
    pub(crate) series: Mutex<Series>,
    /// Switches (rollbacks included) and rollbacks made by this process, for metrics.
    pub(crate) switches: std::sync::atomic::AtomicU64,
    pub(crate) rollbacks: std::sync::atomic::AtomicU64,
    /// Serializes control operations (switch, rollback, release steps) on this service so the
    /// stored generation and the published one never diverge.
    pub(crate) op: tokio::sync::Mutex<()>,
}

fn idx(c: Color) -> usize {
    match c {
        Color::Blue => 0,
        Color::Green => 1,
    }
}

pub fn settings_from(cfg: &ServiceConfig) -> ServiceSettings {
    let l = &cfg.limits;
    ServiceSettings {
        protocol: match cfg.upstream_protocol {
            UpstreamProtocol::Http1 => Protocol::Http1,
            UpstreamProtocol::H2c => Protocol::H2c,
        },
        max_header_bytes: l.max_header_bytes,
        header_read_timeout: l.header_read_timeout.get(),
        max_body_bytes: l.max_body_bytes,
        max_connections: l.max_connections,
        connect_timeout: l.connect_timeout.get(),
        first_byte_timeout: l.first_byte_timeout.get(),
        request_timeout: l.request_timeout.get(),
        pool_max_idle: l.pool_max_idle,
        pool_idle_timeout: l.pool_idle_timeout.get(),
        access_log: cfg.access_log,
        ..ServiceSettings::default()
    }
}

/// The endpoints a color has, from static config or the managed ports.
pub fn endpoints_of(cfg: &ServiceConfig, color: Color) -> Vec<SocketAddr> {
    match &cfg.environments {
        Environments::Static { blue, green } => match color {
            Color::Blue => blue.endpoints.clone(),
            Color::Green => green.endpoints.clone(),
        },
        Environments::Managed(run) => {
            let ports = match color {
                Color::Blue => &run.ports.blue,
                Color::Green => &run.ports.green,
            };
            let ip = run.host.parse().unwrap_or(std::net::Ipv4Addr::LOCALHOST.into());
            ports.iter().map(|p| SocketAddr::new(ip, *p)).collect()
        }
    }
}

/// One sample of a color's traffic.
#[derive(Debug, Clone, Serialize)]
pub struct ColorPoint {
    pub version: Option<String>,
    pub rps: f64,
    pub error_rate: f64,
    pub in_flight: i64,
}

/// One sample of a service.
#[derive(Debug, Clone, Serialize)]
pub struct Point {
    /// Unix time, seconds.
    pub t: u64,
    pub live: Option<Color>,
    pub colors: BTreeMap<Color, ColorPoint>,
}

/// A small in-memory time series (a few minutes), sampled by [`Controller::sample`].
#[derive(Default)]
pub struct Series {
    pub points: std::collections::VecDeque<Point>,
    last: Vec<(Arc<ColorRoute>, cutover_proxy::StatsSnapshot)>,
}

/// How many samples the dashboard series keeps (at [`SAMPLE_EVERY`], six minutes).
pub const SERIES_LEN: usize = 180;
pub const SAMPLE_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

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
    pub force: bool,
    pub kind: &'static str,
    pub actor: String,
    pub reason: String,
    pub release_id: Option<i64>,
}

#[derive(Debug, Serialize)]
pub struct EndpointStatus {
    pub address: String,
    pub healthy: Option<bool>,
    pub health: Health,
}

#[derive(Debug, Serialize)]
pub struct ColorStatus {
    pub version: Option<String>,
    /// `live`, `idle`, or `empty` (no version recorded).
    pub state: String,
    pub endpoints: Vec<EndpointStatus>,
    pub in_flight: i64,
}

#[derive(Debug, Serialize)]
pub struct ServiceStatus {
    pub name: String,
    pub live: Option<Color>,
    pub generation: u64,
    pub listen: String,
    pub preview_listen: Option<String>,
    pub colors: BTreeMap<Color, ColorStatus>,
    pub release: Option<serde_json::Value>,
}

impl ServiceCtl {
    pub(crate) fn set_state(&self, c: Color, state: Option<&'static str>) {
        self.states.lock().unwrap_or_else(|p| p.into_inner())[idx(c)] = state;
    }

    pub(crate) fn state(&self, c: Color) -> Option<&'static str> {
        self.states.lock().unwrap_or_else(|p| p.into_inner())[idx(c)]
    }

    pub(crate) fn route(&self, c: Color) -> Option<Arc<ColorRoute>> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())[idx(c)]
            .as_ref()
            .map(|s| s.route.clone())
    }

    /// Installs a new route for `color` (a new version there) and starts its health checks.
    pub(crate) fn install(&self, color: Color, version: Option<String>) -> Arc<ColorRoute> {
        let addrs = endpoints_of(&self.cfg, color);
        let route = ColorRoute::new(color, version, &addrs, &self.proxy.settings);
        let checks = health::spawn(&self.cfg.name, &route, &self.health);
        self.slots.lock().unwrap_or_else(|p| p.into_inner())[idx(color)] = Some(Slot {
            route: route.clone(),
            _checks: checks,
        });
        route
    }

    /// Publishes a table with `live` as the live color; the other color becomes the idle one.
    pub(crate) fn publish(&self, live: Option<Color>, generation: u64) {
        let idle_color = live.map(Color::other);
        let table = RouteTable {
            generation,
            live: live.and_then(|c| self.route(c)),
            idle: match idle_color {
                Some(c) => self.route(c),
                // Nothing live yet: preview shows blue if it has a version, else green.
                None => self
                    .route(Color::Blue)
                    .filter(|r| r.version.is_some())
                    .or_else(|| self.route(Color::Green)),
            },
        };
        self.proxy.publish(table);
    }

    pub fn status(&self, release: Option<serde_json::Value>) -> ServiceStatus {
        let table = self.proxy.table();
        let mut colors = BTreeMap::new();
        for c in Color::ALL {
            let Some(r) = self.route(c) else { continue };
            let state = if table.live_color() == Some(c) {
                "live"
            } else if let Some(s) = self.state(c) {
                s
            } else if r.version.is_some() {
                "idle"
            } else {
                "empty"
            };
            colors.insert(
                c,
                ColorStatus {
                    version: r.version.clone(),
                    state: state.into(),
                    endpoints: r
                        .endpoints
                        .iter()
                        .map(|e| {
                            let h = e.health();
                            EndpointStatus {
                                address: e.addr.to_string(),
                                healthy: match h {
                                    Health::Unknown => None,
                                    Health::Healthy => Some(true),
                                    Health::Unhealthy => Some(false),
                                },
                                health: h,
                            }
                        })
                        .collect(),
                    in_flight: r.in_flight(),
                },
            );
        }
        ServiceStatus {
            name: self.cfg.name.clone(),
            live: table.live_color(),
            generation: table.generation,
            listen: self.cfg.listen.to_string(),
            preview_listen: self.cfg.preview_listen.map(|a| a.to_string()),
            colors,
            release,
        }
    }
}

/// The control plane: every service, and the store that makes their state durable.
pub struct Controller {
    pub services: BTreeMap<String, Arc<ServiceCtl>>,
    pub store: Arc<Store>,
    pub config: Config,
    /// The release in progress per service (at most one).
    pub(crate) active: Mutex<std::collections::HashMap<String, crate::release::Active>>,
    /// Pending scale-downs of old colors, per service.
    pub(crate) scale_downs: crate::release::ScaleDowns,
}

pub(crate) fn store_error(e: StoreError) -> ApiError {
    match e {
        StoreError::Conflict { .. } => ApiError::conflict("stale_generation", e.to_string()),
        StoreError::NotFound(_) => ApiError::not_found(e.to_string()),
        other => ApiError::new(
            503,
            "store_unavailable",
            format!("the change was not made because the store could not record it: {other}"),
        ),
    }
}

/// Runs a blocking store call off the async workers.
pub(crate) async fn blocking<T: Send + 'static>(
    store: &Arc<Store>,
    f: impl FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, ApiError> {
    let store = store.clone();
    match tokio::task::spawn_blocking(move || f(&store)).await {
        Ok(r) => r.map_err(store_error),
        Err(e) => Err(ApiError::internal(format!("store task failed: {e}"))),
    }
}

impl Controller {
    /// Opens the store and restores every service's committed routing: the live color and
    /// generation come back exactly as they were last acknowledged.
    pub fn build(config: Config, store: Store) -> anyhow::Result<Controller> {
        let store = Arc::new(store);
        let mut services = BTreeMap::new();
        for (name, cfg) in &config.services {
            let (bv, gv) = match &cfg.environments {
                Environments::Static { blue, green } => (blue.version.as_deref(), green.version.as_deref()),
                Environments::Managed(_) => (None, None),
            };
            let state: ServiceState = store
                .ensure_service(name, bv, gv)
                .map_err(|e| anyhow::anyhow!("cannot load service {name} from the store: {e}"))?;
            let settings = settings_from(cfg);
            let svc = Service::new(name.clone(), settings, RouteTable::default());
            let health = HealthSpec {
                path: cfg.health.path.clone(),
                interval: cfg.health.interval.get(),
                timeout: cfg.health.timeout.get(),
                healthy_threshold: cfg.health.healthy_threshold,
                unhealthy_threshold: cfg.health.unhealthy_threshold,
                protocol: svc.settings.protocol,
            };
            let ctl = Arc::new(ServiceCtl {
                cfg: cfg.clone(),
                proxy: svc,
                health,
                slots: Mutex::new([None, None]),
                states: Mutex::new([None, None]),
                children: Mutex::new(Vec::new()),
                switches: Default::default(),
                rollbacks: Default::default(),
                series: Default::default(),
                op: tokio::sync::Mutex::new(()),
            });
            ctl.install(Color::Blue, state.blue_version.clone());
            ctl.install(Color::Green, state.green_version.clone());
            let live = state.live.as_deref().and_then(|c| c.parse().ok());
            ctl.publish(live, state.generation);
            tracing::info!(
                service = %name,
                live = live.map(Color::as_str).unwrap_or("none"),
                generation = state.generation,
                "restored routing from the store"
            );
            services.insert(name.clone(), ctl);
        }
        let ctl = Controller {
            services,
            store,
            config,
            active: Mutex::new(Default::default()),
            scale_downs: Mutex::new(Default::default()),
        };
        for svc in ctl.services.values() {
            ctl.interrupt_unfinished(svc)?;
            ctl.adopt(svc)?;
        }
        Ok(ctl)
    }

    /// Keeps the managed processes a previous cutover started that are still the same
    /// processes (pid and start time); forgets the rest.
    fn adopt(&self, svc: &ServiceCtl) -> anyhow::Result<()> {
        if !matches!(svc.cfg.environments, Environments::Managed(_)) {
            return Ok(());
        }
        let name = &svc.cfg.name;
        let records = self.store.processes(name)?;
        let live = svc.proxy.table().live_color();
        for c in Color::ALL {
            let mine: Vec<_> = records.iter().filter(|p| p.color == c.as_str()).cloned().collect();
            let (alive, dead): (Vec<_>, Vec<_>) = mine.into_iter().partition(crate::supervisor::alive);
            for p in &alive {
                tracing::info!(service = %name, color = %c, pid = p.pid, version = %p.version, port = p.port, "adopted running model server");
            }
            if !dead.is_empty() {
                tracing::warn!(service = %name, color = %c, gone = dead.len(), "managed processes from before the restart are gone");
                self.store.remove_processes(name, c.as_str())?;
                for p in &alive {
                    self.store.put_process(p)?;
                }
            }
            if alive.is_empty() && live != Some(c) && svc.route(c).is_some_and(|r| r.version.is_some()) {
                svc.set_state(c, Some("stopped"));
            }
        }
        Ok(())
    }

    /// Work a previous process left scheduled: the scale-down of an old color.
    pub fn resume(self: &Arc<Controller>) {
        for svc in self.services.values() {
            let Ok(rows) = self.store.releases(&svc.cfg.name, 1) else {
                continue;
            };
            let Some((id, v)) = rows.into_iter().next() else {
                continue;
            };
            let Ok(doc) = serde_json::from_value::<crate::release::ReleaseDoc>(v) else {
                continue;
            };
            if let (Some(at), Some(prev), false) = (doc.scale_down_at, doc.previous_color, doc.scaled_down) {
                if doc.outcome == Some(cutover_release::Outcome::Completed)
                    && svc.proxy.table().live_color() != Some(prev)
                {
                    let now = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map(|d| d.as_secs())
                        .unwrap_or(0);
                    svc.set_state(prev, Some("warm"));
                    self.schedule_scale_down(
                        svc.clone(),
                        prev,
                        std::time::Duration::from_secs(at.saturating_sub(now)),
                        id,
                    );
                }
            }
        }
    }

    pub fn service(&self, name: &str) -> Result<&Arc<ServiceCtl>, ApiError> {
        self.services.get(name).ok_or_else(|| {
            ApiError::not_found(format!(
                "no service named {name:?}; known: {}",
                self.services.keys().cloned().collect::<Vec<_>>().join(", ")
            ))
        })
    }

    /// Makes a color live. Durable before it returns: the store commits first, then the new
    /// route table is published in one pointer swap.
    pub async fn switch(&self, name: &str, req: SwitchRequest) -> Result<SwitchOutcome, ApiError> {
        let svc = self.service(name)?.clone();
        let _op = svc.op.lock().await;
        self.switch_locked(&svc, req).await
    }

    /// `switch` for callers that already hold the service's operation lock.
    pub(crate) async fn switch_locked(
        &self,
        svc: &Arc<ServiceCtl>,
        req: SwitchRequest,
    ) -> Result<SwitchOutcome, ApiError> {
        let table = svc.proxy.table();
        let generation = table.generation;
        if let Some(g) = req.if_generation {
            if g != generation {
                return Err(ApiError::conflict(
                    "stale_generation",
                    format!("if_generation is {g} but the generation is {generation}: someone else switched first; read the status again"),
                ));
            }
        }
        let previous = table.live_color();
        let to = match (req.to, previous) {
            (Some(c), _) => c,
            (None, Some(live)) => live.other(),
            (None, None) => {
                return Err(ApiError::conflict(
                    "nothing_live",
                    format!(
                        "nothing is live in service {} yet: say which color to switch to",
                        svc.cfg.name
                    ),
                ))
            }
        };
        if previous == Some(to) {
            return Err(ApiError::conflict(
                "already_live",
                format!(
                    "{to} is already live in service {} (generation {generation})",
                    svc.cfg.name
                ),
            ));
        }
        let route = svc
            .route(to)
            .ok_or_else(|| ApiError::internal(format!("color {to} has no route")))?;
        if !req.force {
            if route.health_unknown() {
                // No result yet (a fresh router): probe now rather than refuse or guess.
                health::check_now(&svc.cfg.name, &route, &svc.health).await;
            }
            if !route.any_healthy() {
                let detail: Vec<String> = route
                    .endpoints
                    .iter()
                    .map(|e| format!("{} {:?}", e.addr, e.health()).to_lowercase())
                    .collect();
                return Err(ApiError::conflict(
                    "target_unhealthy",
                    format!(
                        "{to} has no healthy endpoint ({}); fix it or pass force",
                        detail.join(", ")
                    ),
                ));
            }
        }
        let to_s = to.as_str();
        let service = svc.cfg.name.clone();
        let (kind, actor, reason, release_id) = (req.kind, req.actor.clone(), req.reason.clone(), req.release_id);
        let state = blocking(&self.store, move |s| {
            s.switch(&SwitchRecord {
                service: &service,
                expected_generation: generation,
                to: to_s,
                kind,
                actor: &actor,
                reason: &reason,
                release_id,
            })
        })
        .await?;
        svc.publish(Some(to), state.generation);
        svc.switches.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if req.kind == "rolled_back" {
            svc.rollbacks.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        tracing::info!(
            service = %svc.cfg.name,
            from = previous.map(Color::as_str).unwrap_or("none"),
            to = %to,
            version = route.version.as_deref().unwrap_or("-"),
            generation = state.generation,
            actor = %req.actor,
            reason = %req.reason,
            kind = req.kind,
            "switched"
        );
        Ok(SwitchOutcome {
            live: to,
            previous,
            generation: state.generation,
            version: route.version.clone(),
        })
    }

    /// Takes one sample of every service's traffic per color (called every [`SAMPLE_EVERY`]).
    pub fn sample(&self) {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        for svc in self.services.values() {
            let mut series = svc.series.lock().unwrap_or_else(|p| p.into_inner());
            let mut colors = BTreeMap::new();
            let mut last = Vec::new();
            for c in Color::ALL {
                let Some(r) = svc.route(c) else { continue };
                let now = r.stats.snapshot();
                // A new route (new version) starts from zero, not from the old route's counts.
                let prev = series
                    .last
                    .iter()
                    .find(|(pr, _)| Arc::ptr_eq(pr, &r))
                    .map(|(_, s)| *s)
                    .unwrap_or_default();
                let w = now.since(&prev);
                let secs = SAMPLE_EVERY.as_secs_f64();
                colors.insert(
                    c,
                    ColorPoint {
                        version: r.version.clone(),
                        rps: w.requests as f64 / secs,
                        error_rate: w.error_rate().unwrap_or(0.0),
                        in_flight: r.in_flight(),
                    },
                );
                last.push((r, now));
            }
            series.last = last;
            series.points.push_back(Point {
                t,
                live: svc.proxy.table().live_color(),
                colors,
            });
            while series.points.len() > SERIES_LEN {
                series.points.pop_front();
            }
        }
    }

    pub fn series(&self, name: &str) -> Result<Vec<Point>, ApiError> {
        let svc = self.service(name)?;
        let s = svc.series.lock().unwrap_or_else(|p| p.into_inner());
        Ok(s.points.iter().cloned().collect())
    }

    pub async fn history(&self, name: &str, limit: u32) -> Result<Vec<HistoryEntry>, ApiError> {
        self.service(name)?;
        let name = name.to_string();
        blocking(&self.store, move |s| s.history(&name, limit)).await
    }
}

impl Controller {
    /// Switches back to the other color, recorded as a rollback.
    pub async fn rollback(
        &self,
        name: &str,
        actor: String,
        reason: String,
        force: bool,
    ) -> Result<SwitchOutcome, ApiError> {
        let svc = self.service(name)?.clone();
        let _op = svc.op.lock().await;
        self.rollback_locked(&svc, actor, reason, force, None).await
    }

    pub(crate) async fn rollback_locked(
        &self,
        svc: &Arc<ServiceCtl>,
        actor: String,
        reason: String,
        force: bool,
        release_id: Option<i64>,
    ) -> Result<SwitchOutcome, ApiError> {
        let Some(live) = svc.proxy.table().live_color() else {
            return Err(ApiError::conflict(
                "nothing_live",
                format!(
                    "nothing is live in service {}: there is nothing to roll back",
                    svc.cfg.name
                ),
            ));
        };
        let target = live.other();
        if svc.state(target) == Some("stopped") && !force {
            let v = svc.route(target).and_then(|r| r.version.clone()).unwrap_or_default();
            return Err(ApiError::conflict(
                "scaled_down",
                format!("{target} ({v}) was scaled down, so a rollback is no longer one switch; run `cutover rollback {} --redeploy` to release {v} again through the pipeline", svc.cfg.name),
            ));
        }
        if svc.route(target).is_none_or(|r| r.version.is_none()) {
            return Err(ApiError::conflict(
                "no_previous_version",
                format!(
                    "{target} has no version recorded in service {}: there is nothing to roll back to",
                    svc.cfg.name
                ),
            ));
        }
        let reason = if reason.is_empty() {
            format!("rollback from {live} to {target}")
        } else {
            reason
        };
        self.switch_locked(
            svc,
            SwitchRequest {
                to: Some(target),
                if_generation: None,
                force,
                kind: "rolled_back",
                actor,
                reason,
                release_id,
            },
        )
        .await
    }
}
