//! Routing snapshots: which color is live, its endpoints, and the per-service handle that
//! swaps them atomically.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;

use arc_swap::ArcSwap;
use http::HeaderValue;
use serde::{Deserialize, Serialize};

pub use crate::settings::{Protocol, ServiceSettings};
use crate::stats::ColorStats;
use crate::upstream::Pool;

/// One of the two fixed positions of a service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Color {
    Blue,
    Green,
}

impl Color {
    pub const ALL: [Color; 2] = [Color::Blue, Color::Green];

    pub fn as_str(self) -> &'static str {
        match self {
            Color::Blue => "blue",
            Color::Green => "green",
        }
    }

    pub fn other(self) -> Color {
        match self {
            Color::Blue => Color::Green,
            Color::Green => Color::Blue,
        }
    }
}

impl fmt::Display for Color {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Color {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "blue" => Ok(Color::Blue),
            "green" => Ok(Color::Green),
            other => Err(format!("unknown color {other:?}: expected \"blue\" or \"green\"")),
        }
    }
}

/// What active health checks last concluded about an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    /// Not checked yet; routable, so a fresh router does not refuse traffic while it learns.
    Unknown,
    Healthy,
    Unhealthy,
}

/// One upstream address of a color, with its connection pool and health.
pub struct Endpoint {
    pub addr: SocketAddr,
    health: AtomicU8,
    pub(crate) pool: Pool,
}

impl Endpoint {
    pub fn new(addr: SocketAddr, settings: &Arc<ServiceSettings>) -> Arc<Endpoint> {
        Arc::new(Endpoint {
            addr,
            health: AtomicU8::new(0),
            pool: Pool::new(addr, settings.clone()),
        })
    }

    pub fn health(&self) -> Health {
        match self.health.load(Relaxed) {
            1 => Health::Healthy,
            2 => Health::Unhealthy,
            _ => Health::Unknown,
        }
    }

    pub fn set_health(&self, h: Health) {
        let v = match h {
            Health::Unknown => 0,
            Health::Healthy => 1,
            Health::Unhealthy => 2,
        };
        self.health.store(v, Relaxed);
    }

    pub(crate) fn routable(&self) -> bool {
        self.health() != Health::Unhealthy
    }

    /// Idle pooled connections to this endpoint.
    pub fn idle_connections(&self) -> usize {
        self.pool.idle_len()
    }
}

/// What one color runs: a version on a set of endpoints. Immutable but for health and
/// statistics; a new version at a color means a new `ColorRoute` (and fresh pools).
pub struct ColorRoute {
    pub color: Color,
    /// Version label; `None` when nothing recorded one yet.
    pub version: Option<String>,
    pub(crate) color_header: HeaderValue,
    pub(crate) version_header: Option<HeaderValue>,
    pub endpoints: Vec<Arc<Endpoint>>,
    pub stats: Arc<ColorStats>,
    next: AtomicUsize,
    /// Set when the drain deadline passed: streams still open are cut at their next chunk.
    pub(crate) closing: AtomicBool,
    /// Wakes the streams that are waiting for their upstream when `closing` is set, so a
    /// stalled stream is cut at the deadline too, not at its next chunk.
    pub(crate) close_signal: tokio::sync::watch::Sender<bool>,
}

impl ColorRoute {
    pub fn new(
        color: Color,
        version: Option<String>,
        addrs: &[SocketAddr],
        settings: &Arc<ServiceSettings>,
    ) -> Arc<ColorRoute> {
        Arc::new(ColorRoute {
            color,
            color_header: HeaderValue::from_static(color.as_str()),
            version_header: version.as_deref().and_then(|v| HeaderValue::from_str(v).ok()),
            version,
            endpoints: addrs.iter().map(|a| Endpoint::new(*a, settings)).collect(),
            stats: Arc::new(ColorStats::default()),
            next: AtomicUsize::new(0),
            closing: AtomicBool::new(false),
            close_signal: tokio::sync::watch::Sender::new(false),
        })
    }

    /// Round-robin over routable endpoints, skipping `exclude` (the one that just failed).
    ///
    /// When health checks call every endpoint down, all of them are tried anyway (Envoy's
    /// "panic" routing): a probe that times out on a loaded machine must not turn a working
    /// model server into 503s, and a server that is really down fails fast with a connect
    /// error all the same.
    pub(crate) fn pick(&self, exclude: Option<&Arc<Endpoint>>) -> Option<&Arc<Endpoint>> {
        let n = self.endpoints.len();
        if n == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Relaxed);
        let candidates = || {
            (0..n)
                .map(move |i| &self.endpoints[(start + i) % n])
                .filter(|e| exclude.is_none_or(|x| !Arc::ptr_eq(x, e)))
        };
        candidates().find(|e| e.routable()).or_else(|| candidates().next())
    }

    /// True when at least one endpoint is known healthy.
    pub fn any_healthy(&self) -> bool {
        self.endpoints.iter().any(|e| e.health() == Health::Healthy)
    }

    /// True when no endpoint has a health result yet.
    pub fn health_unknown(&self) -> bool {
        self.endpoints.iter().all(|e| e.health() == Health::Unknown)
    }

    pub fn in_flight(&self) -> i64 {
        self.stats.in_flight.load(Relaxed)
    }

    /// Cut the streams still running on this color (the drain deadline has passed), each
    /// counted in `drain_closed`: at once, whether it is sending or waiting for its upstream.
    pub fn close_in_flight(&self) {
        self.closing.store(true, Relaxed);
        self.close_signal.send_replace(true);
    }
}

/// A complete, immutable routing snapshot of one service.
#[derive(Clone, Default)]
pub struct RouteTable {
    /// +1 on every switch; carried so a reader knows which decision it saw.
    pub generation: u64,
    /// Receives all production traffic; `None` before the first switch.
    pub live: Option<Arc<ColorRoute>>,
    /// The other color, reachable through the preview listener only.
    pub idle: Option<Arc<ColorRoute>>,
}

impl RouteTable {
    pub fn live_color(&self) -> Option<Color> {
        self.live.as_ref().map(|r| r.color)
    }

    pub fn route(&self, color: Color) -> Option<&Arc<ColorRoute>> {
        [&self.live, &self.idle]
            .into_iter()
            .flatten()
            .find(|r| r.color == color)
    }
}

/// The data plane's handle on one service: a name, settings and the route table.
pub struct Service {
    pub name: String,
    pub settings: Arc<ServiceSettings>,
    table: ArcSwap<RouteTable>,
}

impl Service {
    pub fn new(name: impl Into<String>, settings: ServiceSettings, table: RouteTable) -> Arc<Service> {
        Arc::new(Service {
            name: name.into(),
            settings: Arc::new(settings),
            table: ArcSwap::from_pointee(table),
        })
    }

    /// The current snapshot.
    pub fn table(&self) -> Arc<RouteTable> {
        self.table.load_full()
    }

    /// Replace the routing snapshot in one pointer swap: the switch itself.
    pub fn publish(&self, table: RouteTable) {
        self.table.store(Arc::new(table));
    }

    /// The route a request on the live (or preview) listener goes to, taken with one load.
    #[inline]
    pub(crate) fn target(&self, preview: bool) -> Option<Arc<ColorRoute>> {
        let t = self.table.load();
        if preview {
            t.idle.clone()
        } else {
            t.live.clone()
        }
    }
}
