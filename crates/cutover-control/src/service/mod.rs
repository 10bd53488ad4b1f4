//! One service as the control plane holds it: the two colors' routes and health checks, their
//! displayed states, the managed processes, and the route table it publishes to the data
//! plane. Switch and rollback live in [`switch`]; stopping a color on purpose in [`stop`];
//! the API's view in [`status`]; the dashboard's traffic samples in [`series`].

pub(crate) mod endpoint_client;
pub mod fleet;
mod reconfigure;
mod resolve;
pub mod series;
pub(crate) mod shadow_counts;
pub(crate) mod standby;
pub mod status;
pub mod stop;
pub mod switch;

use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use cutover_config::{EndpointSpec, Environments, HealthConfig, ProbeConfig, ServiceConfig, UpstreamProtocol};
use cutover_proxy::health::{self, HealthSpec};
use cutover_proxy::probe::{Generation, Probe};
use cutover_proxy::{Color, ColorRoute, Endpoint, RouteTable, Service, ServiceSettings, TrustedProxies};
use cutover_store::Store;
use http::{HeaderName, HeaderValue, Method};
use serde::Serialize;
use tokio::time::Instant;

use crate::base::error::StoreFailure;
use crate::base::pause::Pause;
use crate::base::store_call::blocking;
use crate::procs::supervisor::{Dirs, Supervisor};
use crate::procs::Procs;

/// How often a draining color's in-flight count is read.
const DRAIN_POLL: Duration = Duration::from_millis(100);

/// A color's state as the API shows it (`colors.X.state`).
///
/// `Live`, `Idle` and `Empty` are derived from the route table; the others are set by the
/// release run and scale-down and override the derived idle/empty state until the color is
/// live again or a new release provisions it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ColorState {
    Live,
    /// Has a version, receives no production traffic.
    Idle,
    /// No version recorded.
    Empty,
    /// A release is starting its processes or recording its version.
    Provisioning,
    /// Up and healthy during a release, not yet live.
    Ready,
    /// The old live color after a switch, kept running for `scale_down_delay`.
    Warm,
    /// Managed processes stopped (scaled down or torn down): a rollback needs a redeploy.
    Stopped,
    /// Static endpoints past `scale_down_delay`: cutover no longer vouches for them.
    Stale,
    /// Its release failed or was rolled back.
    Failed,
    /// The old live color asleep (`standby = "sleep"`): woken before it takes traffic again.
    Sleeping,
}

/// One color's current route and the health checks that watch it (they stop when it drops).
pub(crate) struct Slot {
    pub(crate) route: Arc<ColorRoute>,
    /// `None` while nothing is expected to answer there (an empty color, a managed color whose
    /// processes were stopped): probing it would only log warnings nobody must act on.
    checks: Option<health::Checks>,
}

/// What draining a color did before it was stopped.
#[derive(Debug, Clone, Copy)]
pub struct Drained {
    pub elapsed: Duration,
    /// Requests still open at `drain_timeout`, cut and counted in `cutover_drain_closed_total`.
    pub closed: i64,
}

impl Drained {
    pub fn describe(&self) -> String {
        let mut s = format!("drained in {:.1} s", self.elapsed.as_secs_f64());
        if self.closed > 0 {
            s.push_str(&format!(", {} requests closed at the drain deadline", self.closed));
        }
        s
    }
}

/// The addresses `serve` bound for a service (port 0 in the config becomes a real port).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct BoundAddrs {
    pub listen: SocketAddr,
    pub preview_listen: Option<SocketAddr>,
}

/// The control plane's view of one service.
pub struct ServiceCtl {
    pub name: String,
    /// Replaced whole by a config reload ([`ServiceCtl::reconfigure`]); a release reads it
    /// once when it starts and keeps that copy to its end.
    cfg: ArcSwap<ServiceConfig>,
    /// The data plane's handle: the route table lives here.
    pub proxy: Arc<Service>,
    health: ArcSwap<HealthSpec>,
    /// Where switches, versions and managed processes are made durable.
    pub(crate) store: Arc<Store>,
    slots: Mutex<[Option<Slot>; 2]>,
    /// Overrides of a color's displayed state; `None` means it is derived (live, idle, empty).
    states: Mutex<[Option<ColorState>; 2]>,
    /// Set by `serve` after binding (again when a reload re-binds); `None` in a controller
    /// that serves no traffic.
    bound: Mutex<Option<BoundAddrs>>,
    /// The managed processes of both colors; `None` for static endpoints.
    pub(crate) procs: Option<Procs>,
    /// Requests/s and error rate per color over the last minutes, for the dashboard.
    pub(crate) series: Mutex<series::Series>,
    /// Switches (rollbacks included) and rollbacks made by this process, for metrics.
    pub(crate) switches: AtomicU64,
    pub(crate) rollbacks: AtomicU64,
    /// Shadow comparisons of this service's releases, for metrics.
    pub(crate) shadow_counts: shadow_counts::ShadowCounts,
    /// A sample rate set through the API for the running shadow phase (f64 bits; NaN: none).
    shadow_sample_set: AtomicU64,
    /// Releases this process saw end, by outcome (completed, aborted, rolled back,
    /// interrupted), for `cutover_releases_total`.
    pub(crate) releases_ended: [AtomicU64; 4],
    /// Serializes control operations (switch, rollback, release steps) on this service so the
    /// stored generation and the published one never diverge.
    pub(crate) op: tokio::sync::Mutex<()>,
    /// What the endpoint names last resolved to (see [`resolve`]).
    resolved: Mutex<resolve::Resolved>,
    /// Set when a reload removed the service.
    retired: std::sync::atomic::AtomicBool,
    /// Set once the resolver task runs (at most one per service).
    resolving: std::sync::atomic::AtomicBool,
    /// The controller's pause for a hand-over: taken after `op` by every operation that
    /// writes the store, never before it.
    pub(crate) pause: Pause,
    /// Fleet mode: switches commit through etcd (set once, before anything serves).
    pub(crate) fleet: std::sync::OnceLock<Arc<dyn fleet::Fleet>>,
}

/// The outcomes `cutover_releases_total` counts, in the order of `releases_ended`.
pub(crate) const OUTCOMES: [cutover_release::Outcome; 4] = [
    cutover_release::Outcome::Completed,
    cutover_release::Outcome::Aborted,
    cutover_release::Outcome::RolledBack,
    cutover_release::Outcome::Interrupted,
];

fn outcome_index(o: cutover_release::Outcome) -> usize {
    OUTCOMES.iter().position(|x| *x == o).unwrap_or(0)
}

/// The data plane's settings for a service, from its config.
pub fn settings_from(cfg: &ServiceConfig) -> ServiceSettings {
    let l = &cfg.limits;
    ServiceSettings {
        protocol: cfg.upstream_protocol,
        http1_engine: cfg.http1_engine,
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
        response_headers: cfg.response_headers,
        max_header_line_bytes: l.max_header_line_bytes,
        trusted_proxies: TrustedProxies::new(cfg.trusted_proxies.iter().copied()),
        retry_non_idempotent: cfg.retry_non_idempotent,
        retry_paths: cfg.retry_paths.clone(),
        upgrade_protocols: cfg.upgrade_protocols.clone(),
        upstream_tls: cfg.upstream_tls.as_ref().map(|t| {
            cutover_proxy::tls::UpstreamTls::new(t.ca_file.as_deref(), cfg.upstream_protocol == UpstreamProtocol::H2c)
        }),
        sticky: cfg.release.sticky.as_ref().and_then(sticky_of),
        header_route: cfg.release.header_route.as_ref().and_then(|h| {
            Some(cutover_proxy::split::HeaderRoute {
                header: HeaderName::from_bytes(h.header.as_bytes()).ok()?,
                tokens: h.tokens.clone(),
            })
        }),
    }
}

/// The data plane's sticky key (validated by cutover-config: exactly one source is set).
fn sticky_of(s: &cutover_config::StickyConfig) -> Option<cutover_proxy::split::Sticky> {
    use cutover_proxy::split::Sticky;
    match (&s.header, &s.body_field, s.token) {
        (Some(h), _, _) => HeaderName::from_bytes(h.as_bytes()).ok().map(Sticky::Header),
        (_, Some(f), _) => Some(Sticky::BodyField(f.clone())),
        (_, _, Some(true)) => Some(Sticky::Token),
        _ => None,
    }
}

/// The data plane's probe for a service's `health` table (validated by cutover-config: the
/// kind's keys are well-formed).
pub fn probe_of(h: &HealthConfig) -> Probe {
    match &h.probe {
        ProbeConfig::Http { path, status } => Probe::Http {
            path: path.clone(),
            status: status.0.clone(),
        },
        ProbeConfig::Grpc { service } => Probe::Grpc {
            service: service.clone(),
        },
        ProbeConfig::Generation { request, expect } => {
            let mut headers: Vec<(HeaderName, HeaderValue)> = request
                .headers
                .iter()
                .filter_map(|(k, v)| {
                    Some((
                        HeaderName::try_from(k.as_str()).ok()?,
                        HeaderValue::try_from(v.as_str()).ok()?,
                    ))
                })
                .collect();
            if request.body.is_some() && !headers.iter().any(|(k, _)| k == http::header::CONTENT_TYPE) {
                headers.push((http::header::CONTENT_TYPE, HeaderValue::from_static("application/json")));
            }
            Probe::Generation(Generation {
                method: Method::from_bytes(request.method.as_bytes()).unwrap_or(Method::POST),
                path: request.path.clone(),
                headers,
                body: Bytes::from(request.body.clone().unwrap_or_default()),
                status: match expect.status {
                    Some(s) => vec![(s, s)],
                    None => vec![(200, 299)],
                },
                json: expect
                    .json
                    .iter()
                    .filter_map(|(p, v)| Some((p.clone(), serde_json::to_value(v).ok()?)))
                    .collect(),
                body_contains: expect.body_contains.clone(),
            })
        }
    }
}

/// The endpoints a color has, from static config or the managed ports: names unresolved.
pub fn endpoints_of(cfg: &ServiceConfig, color: Color) -> Vec<EndpointSpec> {
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
            if !run.hosts.is_empty() {
                // Names the fleet's host registry resolves (`resolve`), not DNS.
                return run
                    .hosts
                    .iter()
                    .flat_map(|h| {
                        ports.iter().map(move |p| EndpointSpec {
                            host: h.clone(),
                            port: *p,
                            tls: false,
                        })
                    })
                    .collect();
            }
            ports
                .iter()
                .map(|p| EndpointSpec::from_addr(SocketAddr::new(run.host, *p)))
                .collect()
        }
    }
}

/// How the health checks of a service probe, from its config.
pub fn health_spec(cfg: &ServiceConfig) -> HealthSpec {
    HealthSpec {
        probe: probe_of(&cfg.health),
        interval: cfg.health.interval.get(),
        timeout: cfg.health.timeout.get(),
        healthy_threshold: cfg.health.healthy_threshold,
        unhealthy_threshold: cfg.health.unhealthy_threshold,
        protocol: cfg.upstream_protocol,
        passive_window: cfg.health.passive_window.get(),
    }
}

impl ServiceCtl {
    /// The service's configuration now.
    pub fn cfg(&self) -> Arc<ServiceConfig> {
        self.cfg.load_full()
    }

    /// The shadow sample rate now, read per request by a running shadow's tap: what the
    /// API set during this phase (`POST .../shadow`: 0 stops mirroring at once), else
    /// `release.shadow.sample` as configured.
    pub(crate) fn shadow_sample(&self) -> f64 {
        let set = f64::from_bits(self.shadow_sample_set.load(std::sync::atomic::Ordering::Relaxed));
        if !set.is_nan() {
            return set;
        }
        self.cfg.load().release.shadow.as_ref().map_or(0.0, |s| s.sample)
    }

    /// Sets the running shadow's sample rate (`NaN`: back to the configured one, which every
    /// new phase starts from).
    pub(crate) fn set_shadow_sample(&self, rate: f64) {
        self.shadow_sample_set
            .store(rate.to_bits(), std::sync::atomic::Ordering::Relaxed);
    }

    /// The health checks' settings now.
    pub fn health(&self) -> Arc<HealthSpec> {
        self.health.load_full()
    }

    /// A service with both colors' routes installed (their health checks running) and
    /// nothing published yet.
    pub fn new(
        cfg: ServiceConfig,
        store: Arc<Store>,
        versions: [Option<String>; 2],
        dirs: Dirs,
        pause: Pause,
        hosts: Option<Arc<dyn crate::procs::RemoteDriver>>,
    ) -> Arc<ServiceCtl> {
        let proxy = Service::new(cfg.name.clone(), settings_from(&cfg), RouteTable::default());
        let health = health_spec(&cfg);
        let procs = match &cfg.environments {
            _ if hosts.is_some() => hosts.map(Procs::Remote),
            Environments::Managed(run) => Some(Procs::Local(Supervisor::new(
                &cfg.name,
                run.clone(),
                dirs,
                store.clone(),
                pause.clone(),
            ))),
            Environments::Static { .. } => None,
        };
        let svc = Arc::new(ServiceCtl {
            name: cfg.name.clone(),
            cfg: ArcSwap::from_pointee(cfg),
            proxy,
            health: ArcSwap::from_pointee(health),
            store,
            slots: Mutex::new([None, None]),
            states: Mutex::new([None, None]),
            bound: Mutex::new(None),
            procs,
            series: Default::default(),
            switches: AtomicU64::new(0),
            rollbacks: AtomicU64::new(0),
            shadow_counts: Default::default(),
            shadow_sample_set: AtomicU64::new(f64::NAN.to_bits()),
            releases_ended: Default::default(),
            op: tokio::sync::Mutex::new(()),
            resolved: Mutex::default(),
            retired: Default::default(),
            resolving: Default::default(),
            pause,
            fleet: Default::default(),
        });
        let [blue, green] = versions;
        svc.install(Color::Blue, blue);
        svc.install(Color::Green, green);
        svc
    }

    /// Counts a release that ended, for `cutover_releases_total{outcome}`.
    pub(crate) fn count_release_end(&self, outcome: Option<cutover_release::Outcome>) {
        if let Some(o) = outcome {
            self.releases_ended[outcome_index(o)].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// True when `host` is one of the host agents this service's processes run on.
    pub fn runs_on(&self, host: &str) -> bool {
        matches!(&self.cfg().environments, Environments::Managed(run) if run.hosts.iter().any(|h| h == host))
    }

    pub fn is_managed(&self) -> bool {
        matches!(self.cfg().environments, Environments::Managed(_))
    }

    /// Records what `serve` bound.
    pub fn set_bound(&self, addrs: BoundAddrs) {
        *self.bound.lock().unwrap_or_else(|p| p.into_inner()) = Some(addrs);
    }

    pub fn bound(&self) -> Option<BoundAddrs> {
        *self.bound.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn set_state(&self, c: Color, state: Option<ColorState>) {
        self.states.lock().unwrap_or_else(|p| p.into_inner())[c.index()] = state;
    }

    pub(crate) fn state(&self, c: Color) -> Option<ColorState> {
        self.states.lock().unwrap_or_else(|p| p.into_inner())[c.index()]
    }

    pub(crate) fn route(&self, c: Color) -> Option<Arc<ColorRoute>> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())[c.index()]
            .as_ref()
            .map(|s| s.route.clone())
    }

    pub(crate) fn live(&self) -> Option<Color> {
        self.proxy.table().live_color()
    }

    pub(crate) fn version_of(&self, c: Color) -> Option<String> {
        self.route(c).and_then(|r| r.version.clone())
    }

    /// The version last made live on `color`, from the history; the color's label when the
    /// history names none (a fleet router that did not commit the switch itself, a store
    /// from before switches recorded versions).
    pub(crate) async fn last_live_version(&self, c: Color) -> Result<Option<String>, StoreFailure> {
        let name = self.name.clone();
        let v = blocking(&self.store, move |s| s.last_live_version(&name, c)).await?;
        Ok(v.or_else(|| self.version_of(c)))
    }

    /// Puts back the label `color` had before a release that ended before its switch and
    /// whose processes were stopped: status and `rollback` then name what ran there, not a
    /// build that never went live (which stays in `releases` and the history).
    pub(crate) async fn restore_label(&self, color: Color, version: Option<String>) -> Result<(), StoreFailure> {
        if self.version_of(color) == version {
            return Ok(());
        }
        let _op = self.op.lock().await;
        let _permit = self.pause.enter().await;
        let (name, v) = (self.name.clone(), version.clone());
        blocking(&self.store, move |s| s.set_version(&name, color, v.as_deref())).await?;
        self.install(color, version);
        // Nothing runs there: its checks would only report a planned stop.
        self.unwatch(color);
        self.republish();
        Ok(())
    }

    /// Installs a new route for `color` (a new version there) and starts its health checks,
    /// unless the color is empty: with no version nothing is expected to answer there.
    pub(crate) fn install(&self, color: Color, version: Option<String>) -> Arc<ColorRoute> {
        let checked = version.is_some();
        // Under the slots lock, so a re-resolution finishing now either sees this route or
        // its answers are in the targets read here.
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        let endpoints = self
            .targets(color)
            .into_iter()
            .map(|(a, name)| Endpoint::named(a, name, &self.proxy.settings()))
            .collect();
        let route = ColorRoute::with_endpoints(color, version, endpoints);
        let checks = checked.then(|| health::spawn(&self.name, &route, &self.health()));
        slots[color.index()] = Some(Slot {
            route: route.clone(),
            checks,
        });
        route
    }

    /// Resolves the endpoint names once (start-up: before traffic is served) and keeps them
    /// resolved from then on.
    pub async fn start_resolving(self: &Arc<Self>) {
        let unresolved = self.resolve_names().await;
        self.spawn_resolver(unresolved);
    }

    /// A reload removed the service: its health checks stop now, its resolver at its next turn.
    pub(crate) fn retire(&self) {
        self.retired.store(true, std::sync::atomic::Ordering::Relaxed);
        for slot in self
            .slots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter_mut()
            .flatten()
        {
            slot.checks = None;
        }
    }

    pub(crate) fn is_retired(&self) -> bool {
        self.retired.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Starts `color`'s health checks if they are not running (it is about to serve).
    pub(crate) fn watch(&self, color: Color) {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(slot) = slots[color.index()].as_mut().filter(|s| s.checks.is_none()) {
            slot.checks = Some(health::spawn(&self.name, &slot.route, &self.health()));
        }
    }

    /// Stops `color`'s health checks (its processes are being stopped on purpose) and forgets
    /// their verdicts, so status shows "not checked" rather than a stale or alarming result.
    pub(crate) fn unwatch(&self, color: Color) {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(slot) = slots[color.index()].as_mut() {
            slot.checks = None;
            for e in slot.route.endpoints().iter() {
                e.set_health(cutover_proxy::Health::Unknown);
            }
        }
    }

    /// True while `color`'s health checks run.
    pub fn watched(&self, color: Color) -> bool {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())[color.index()]
            .as_ref()
            .is_some_and(|s| s.checks.is_some())
    }

    /// Publishes a table with `live` as the live color; the other color becomes the idle one.
    pub(crate) fn publish(&self, live: Option<Color>, generation: u64) {
        self.publish_weighted(live, generation, 0);
    }

    /// As [`publish`](Self::publish), with `weight` percent of the live listener's requests
    /// going to the other color (a progressive release's step).
    pub(crate) fn publish_weighted(&self, live: Option<Color>, generation: u64, weight: u8) {
        let idle = match live {
            Some(c) => self.route(c.other()),
            // Nothing live yet: preview shows blue if it has a version, else green.
            None => self
                .route(Color::Blue)
                .filter(|r| r.version.is_some())
                .or_else(|| self.route(Color::Green)),
        };
        self.proxy.publish(RouteTable {
            generation,
            live: live.and_then(|c| self.route(c)),
            idle,
            weight: if live.is_some() { weight } else { 0 },
        });
    }

    /// Republishes the current live color and generation (after a new route was installed).
    pub(crate) fn republish(&self) {
        let t = self.proxy.table();
        // A step in progress keeps its weight: a new route is not a decision about traffic.
        self.publish_weighted(t.live_color(), t.generation, t.weight);
    }

    /// Waits for `color`'s requests to finish (in-flight 0), at most `drain_timeout`; what is
    /// still open then is cut and counted. Every stop of a color comes after this: a model
    /// server told to stop may abort what it is generating (vLLM's default shutdown does).
    pub(crate) async fn drain(&self, color: Color) -> Drained {
        let started = Instant::now();
        let Some(route) = self.route(color) else {
            return Drained {
                elapsed: Duration::ZERO,
                closed: 0,
            };
        };
        let deadline = started + self.cfg().release.drain_timeout.get();
        if route.in_flight() > 0 {
            tracing::info!(service = %self.name, color = %color, in_flight = route.in_flight(), "waiting for requests to finish before stopping the color");
        }
        while route.in_flight() > 0 && Instant::now() < deadline {
            tokio::time::sleep(DRAIN_POLL).await;
        }
        let closed = route.in_flight();
        if closed > 0 {
            tracing::warn!(service = %self.name, color = %color, left = closed, "drain deadline passed: closing requests still open");
            route.close_in_flight();
        }
        Drained {
            elapsed: started.elapsed(),
            closed,
        }
    }

    /// Drains `color`, then stops its managed processes and forgets them (static services:
    /// nothing to stop; `None`).
    pub(crate) async fn stop_managed(&self, color: Color) -> Option<Drained> {
        let procs = self.procs.as_ref()?;
        let drained = self.drain(color).await;
        self.stop_processes(procs, color).await;
        Some(drained)
    }

    /// Stops `color`'s processes now (the caller drained it): health checks first, so a
    /// planned stop logs no "endpoint unhealthy".
    pub(crate) async fn stop_processes(&self, procs: &Procs, color: Color) {
        self.unwatch(color);
        procs.stop(color).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(body: &str) -> ServiceConfig {
        let text = format!("[services.chat]\nlisten = \"127.0.0.1:8080\"\n{body}");
        let cfg = cutover_config::parse(std::path::Path::new("/etc/cutover/cutover.toml"), &text).unwrap();
        cfg.services["chat"].clone()
    }

    const STATIC: &str = "[services.chat.blue]\nendpoints = [\"127.0.0.1:9001\", \"127.0.0.1:9002\"]\n\
                          [services.chat.green]\nendpoints = [\"127.0.0.1:9003\"]\n";

    #[test]
    fn a_color_has_its_static_endpoints_or_its_managed_ports() {
        let s = service(STATIC);
        let ports = |c| endpoints_of(&s, c).iter().map(|e| e.port).collect::<Vec<_>>();
        assert_eq!(ports(Color::Blue), [9001, 9002]);
        assert_eq!(ports(Color::Green), [9003]);
        let managed = service(
            "[services.chat.run]\ncommand = [\"mock-model\", \"--port\", \"{port}\"]\n\
             ports = { blue = [9101, 9104], green = [9102, 9103] }\n",
        );
        let green = endpoints_of(&managed, Color::Green);
        assert_eq!(
            green.iter().map(|e| (e.host.as_str(), e.port)).collect::<Vec<_>>(),
            [("127.0.0.1", 9102), ("127.0.0.1", 9103)],
            "managed processes listen on run.host, loopback unless set"
        );
    }

    #[test]
    fn a_generation_probe_sends_json_and_expects_a_2xx_by_default() {
        let s = service(&format!(
            "health = {{ kind = \"generation\", request = {{ method = \"POST\", path = \"/v1/completions\", body = '{{\"prompt\":\"hi\"}}' }} }}\n{STATIC}"
        ));
        let Probe::Generation(g) = probe_of(&s.health) else {
            panic!("a generation probe: {:?}", s.health.probe.kind())
        };
        assert_eq!((g.method, g.path.as_str()), (Method::POST, "/v1/completions"));
        assert_eq!(g.status, [(200, 299)]);
        assert!(
            g.headers
                .iter()
                .any(|(k, v)| k == http::header::CONTENT_TYPE && v == "application/json"),
            "a body without a content type is sent as JSON: {:?}",
            g.headers
        );
        assert_eq!(&g.body[..], br#"{"prompt":"hi"}"#);
        let Probe::Http { path, .. } = probe_of(&service(STATIC).health) else {
            panic!("the default probe is HTTP")
        };
        let cutover_config::ProbeConfig::Http { path: configured, .. } = service(STATIC).health.probe else {
            panic!("the default probe is HTTP")
        };
        assert_eq!(path, configured);
    }

    #[test]
    fn a_drain_says_how_long_and_what_it_cut() {
        let clean = Drained {
            elapsed: Duration::from_millis(1500),
            closed: 0,
        };
        assert_eq!(clean.describe(), "drained in 1.5 s");
        let cut = Drained {
            elapsed: Duration::from_secs(30),
            closed: 3,
        };
        assert_eq!(
            cut.describe(),
            "drained in 30.0 s, 3 requests closed at the drain deadline"
        );
    }

    #[test]
    fn the_release_outcomes_count_in_their_own_slots() {
        let slots: Vec<usize> = OUTCOMES.iter().map(|o| outcome_index(*o)).collect();
        assert_eq!(slots, [0, 1, 2, 3]);
    }
}
