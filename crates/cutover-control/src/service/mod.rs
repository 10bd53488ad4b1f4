//! One service as the control plane holds it: the two colors' routes and health checks, their
//! displayed states, the managed processes, and the route table it publishes to the data
//! plane. Switch and rollback live in [`switch`]; the API's view in [`status`]; the
//! dashboard's traffic samples in [`series`].

pub mod series;
pub mod status;
pub mod switch;

use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use cutover_config::{Environments, HealthConfig, ProbeKind, RequestSpec, ServiceConfig, StatusSet, UpstreamProtocol};
use cutover_proxy::health::{self, HealthSpec};
use cutover_proxy::probe::{Generation, Probe};
use cutover_proxy::Protocol;
use cutover_proxy::{Color, ColorRoute, RouteTable, Service, ServiceSettings, TrustedProxies};
use cutover_store::{ProcessRecord, Store};
use http::{HeaderName, HeaderValue, Method};
use serde::Serialize;

use crate::colors::stored;
use crate::store_call::{blocking, record};
use crate::supervisor;

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
}

/// One color's current route and the health checks that watch it (they stop when it drops).
pub(crate) struct Slot {
    pub(crate) route: Arc<ColorRoute>,
    _checks: health::Checks,
}

/// The addresses `serve` bound for a service (port 0 in the config becomes a real port).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct BoundAddrs {
    pub listen: SocketAddr,
    pub preview_listen: Option<SocketAddr>,
}

/// The control plane's view of one service.
pub struct ServiceCtl {
    pub cfg: ServiceConfig,
    /// The data plane's handle: the route table lives here.
    pub proxy: Arc<Service>,
    pub health: HealthSpec,
    /// Where switches, versions and managed processes are made durable.
    pub(crate) store: Arc<Store>,
    slots: Mutex<[Option<Slot>; 2]>,
    /// Overrides of a color's displayed state; `None` means it is derived (live, idle, empty).
    states: Mutex<[Option<ColorState>; 2]>,
    /// Set once by `serve` after binding; `None` in a controller that serves no traffic.
    bound: std::sync::OnceLock<BoundAddrs>,
    /// Managed processes this cutover started (adopted ones are not our children).
    pub(crate) children: Mutex<Vec<(Color, tokio::process::Child)>>,
    /// Requests/s and error rate per color over the last minutes, for the dashboard.
    pub(crate) series: Mutex<series::Series>,
    /// Switches (rollbacks included) and rollbacks made by this process, for metrics.
    pub(crate) switches: AtomicU64,
    pub(crate) rollbacks: AtomicU64,
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

/// The data plane's settings for a service, from its config.
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
        max_header_line_bytes: l.max_header_line_bytes,
        trusted_proxies: TrustedProxies::new(cfg.trusted_proxies.iter().copied()),
        retry_non_idempotent: cfg.retry_non_idempotent,
    }
}

/// The data plane's probe for a service's `health` table (validated by cutover-config: the
/// kind's keys are present and well-formed).
pub fn probe_of(h: &HealthConfig) -> Probe {
    match h.kind {
        ProbeKind::Http => Probe::Http {
            path: h.path.clone(),
            status: h.status.clone().unwrap_or_else(StatusSet::success_or_redirect).0,
        },
        ProbeKind::Grpc => Probe::Grpc {
            service: h.service.clone(),
        },
        ProbeKind::Generation => {
            let req = h.request.clone().unwrap_or_else(|| RequestSpec {
                method: "GET".into(),
                path: h.path.clone(),
                body: None,
                headers: Default::default(),
            });
            let expect = h.expect.clone().unwrap_or_default();
            let mut headers: Vec<(HeaderName, HeaderValue)> = req
                .headers
                .iter()
                .filter_map(|(k, v)| {
                    Some((
                        HeaderName::try_from(k.as_str()).ok()?,
                        HeaderValue::try_from(v.as_str()).ok()?,
                    ))
                })
                .collect();
            if req.body.is_some() && !headers.iter().any(|(k, _)| k == http::header::CONTENT_TYPE) {
                headers.push((http::header::CONTENT_TYPE, HeaderValue::from_static("application/json")));
            }
            Probe::Generation(Generation {
                method: Method::from_bytes(req.method.as_bytes()).unwrap_or(Method::POST),
                path: req.path,
                headers,
                body: Bytes::from(req.body.unwrap_or_default()),
                status: match expect.status {
                    Some(s) => vec![(s, s)],
                    None => vec![(200, 299)],
                },
                json: expect
                    .json
                    .iter()
                    .filter_map(|(p, v)| Some((p.clone(), serde_json::to_value(v).ok()?)))
                    .collect(),
                body_contains: expect.body_contains,
            })
        }
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

impl ServiceCtl {
    /// A service with both colors' routes installed (their health checks running) and
    /// nothing published yet.
    pub fn new(cfg: ServiceConfig, store: Arc<Store>, versions: [Option<String>; 2]) -> Arc<ServiceCtl> {
        let proxy = Service::new(cfg.name.clone(), settings_from(&cfg), RouteTable::default());
        let health = HealthSpec {
            probe: probe_of(&cfg.health),
            interval: cfg.health.interval.get(),
            timeout: cfg.health.timeout.get(),
            healthy_threshold: cfg.health.healthy_threshold,
            unhealthy_threshold: cfg.health.unhealthy_threshold,
            protocol: proxy.settings.protocol,
            passive_window: cfg.health.passive_window.get(),
        };
        let svc = Arc::new(ServiceCtl {
            cfg,
            proxy,
            health,
            store,
            slots: Mutex::new([None, None]),
            states: Mutex::new([None, None]),
            bound: std::sync::OnceLock::new(),
            children: Mutex::new(Vec::new()),
            series: Default::default(),
            switches: AtomicU64::new(0),
            rollbacks: AtomicU64::new(0),
            op: tokio::sync::Mutex::new(()),
        });
        let [blue, green] = versions;
        svc.install(Color::Blue, blue);
        svc.install(Color::Green, green);
        svc
    }

    pub fn is_managed(&self) -> bool {
        matches!(self.cfg.environments, Environments::Managed(_))
    }

    /// Records what `serve` bound; the first call wins (a service is bound once).
    pub fn set_bound(&self, addrs: BoundAddrs) {
        let _already_set = self.bound.set(addrs);
    }

    pub fn bound(&self) -> Option<BoundAddrs> {
        self.bound.get().copied()
    }

    pub(crate) fn set_state(&self, c: Color, state: Option<ColorState>) {
        self.states.lock().unwrap_or_else(|p| p.into_inner())[idx(c)] = state;
    }

    pub(crate) fn state(&self, c: Color) -> Option<ColorState> {
        self.states.lock().unwrap_or_else(|p| p.into_inner())[idx(c)]
    }

    pub(crate) fn route(&self, c: Color) -> Option<Arc<ColorRoute>> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())[idx(c)]
            .as_ref()
            .map(|s| s.route.clone())
    }

    pub(crate) fn live(&self) -> Option<Color> {
        self.proxy.table().live_color()
    }

    pub(crate) fn version_of(&self, c: Color) -> Option<String> {
        self.route(c).and_then(|r| r.version.clone())
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
        });
    }

    /// Republishes the current live color and generation (after a new route was installed).
    pub(crate) fn republish(&self) {
        let t = self.proxy.table();
        self.publish(t.live_color(), t.generation);
    }

    /// A message when a managed process of `color` has exited.
    pub(crate) fn exited_early(&self, color: Color) -> Option<String> {
        let mut children = self.children.lock().unwrap_or_else(|p| p.into_inner());
        children
            .iter_mut()
            .filter(|(c, _)| *c == color)
            .find_map(|(_, child)| child.try_wait().ok().flatten())
            .map(|status| format!("a model server of {color} exited ({status}) before it was healthy"))
    }

    /// Stops the managed processes of `color` and forgets them (static services: nothing).
    pub(crate) async fn stop_managed(&self, color: Color) {
        let Environments::Managed(run) = &self.cfg.environments else {
            return;
        };
        let name = self.cfg.name.clone();
        let n = name.clone();
        let recs: Vec<ProcessRecord> = match blocking(&self.store, move |s| s.processes(&n)).await {
            Ok(r) => r.into_iter().filter(|p| p.color == stored(color)).collect(),
            Err(e) => {
                tracing::error!(service = %name, error = %e, "cannot read managed processes from the store");
                return;
            }
        };
        supervisor::stop(&recs, run.stop_timeout.get()).await;
        self.children
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain_mut(|(c, child)| {
                if *c != color {
                    return true;
                }
                // Reap it if it has exited; a child still running outlives us on purpose.
                let _reaped = child.try_wait();
                false
            });
        let n = name.clone();
        record(&self.store, "the stopped processes", &name, move |s| {
            s.remove_processes(&n, stored(color))
        })
        .await;
    }
}
