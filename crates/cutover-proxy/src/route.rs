//! Routing snapshots: which color is live, its endpoints, and the per-service handle that
//! swaps them atomically.

use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;

use arc_swap::ArcSwap;
use http::{HeaderMap, HeaderName, HeaderValue};
use serde::{Deserialize, Serialize};

pub use crate::settings::{Protocol, ServiceSettings};
use crate::split::{self, RequestView, Side};
use crate::stats::{ColorStats, EndpointStats};
use crate::upstream::Pool;

/// One of the two fixed positions of a service: the workspace's one color type.
pub use cutover_types::Color;

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
    /// The name `addr` was resolved from (`gpu-a.internal:8000`), when the config gave a name.
    pub name: Option<Arc<str>>,
    health: AtomicU8,
    /// Requests on this endpoint now, from the attempt that chose it to the response's last
    /// byte: what the picker balances on, and how a hung endpoint shows.
    in_flight: AtomicUsize,
    pub(crate) pool: Pool,
    /// When proxied requests last ended here (the health checks' passive evidence) and what
    /// the probes saw.
    pub stats: EndpointStats,
}

/// One request's share of an endpoint's in-flight count, given back on drop; a request the
/// endpoint answered 2xx/3xx also tells the health checks it served (passive evidence).
pub(crate) struct EndpointLoad(Arc<Endpoint>, bool);

impl EndpointLoad {
    pub(crate) fn endpoint(&self) -> &Arc<Endpoint> {
        &self.0
    }

    /// The endpoint's response head had this status.
    pub(crate) fn answered(&mut self, status: u16) {
        self.1 = (200..400).contains(&status);
    }
}

impl Drop for EndpointLoad {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Relaxed);
        if self.1 {
            self.0.stats.answered_ok();
        }
    }
}

/// `name (addr)` for an endpoint resolved from a name, else the address: what logs and
/// messages show.
impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.name {
            Some(n) => write!(f, "{n} ({})", self.addr),
            None => write!(f, "{}", self.addr),
        }
    }
}

impl Endpoint {
    pub fn new(addr: SocketAddr, settings: &Arc<ServiceSettings>) -> Arc<Endpoint> {
        Endpoint::named(addr, None, settings)
    }

    /// An endpoint at `addr`, which `name` (`HOST:PORT` as configured) resolved to.
    pub fn named(addr: SocketAddr, name: Option<Arc<str>>, settings: &Arc<ServiceSettings>) -> Arc<Endpoint> {
        let pool = Pool::new(addr, name.as_deref(), settings.clone());
        Arc::new(Endpoint {
            addr,
            name,
            health: AtomicU8::new(0),
            in_flight: AtomicUsize::new(0),
            pool,
            stats: EndpointStats::default(),
        })
    }

    /// The name this endpoint's certificate must carry, when its service's endpoints are
    /// `https://`.
    pub fn tls_name(&self) -> Option<&rustls::pki_types::ServerName<'static>> {
        self.pool.tls().map(|(_, n)| n)
    }

    /// Requests on this endpoint right now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Relaxed)
    }

    /// Count one more request on this endpoint until the returned guard drops.
    pub(crate) fn claim(self: &Arc<Self>) -> EndpointLoad {
        self.in_flight.fetch_add(1, Relaxed);
        EndpointLoad(self.clone(), false)
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

/// What one color runs: a version on a set of endpoints. Immutable but for health,
/// statistics and the endpoint set; a new version at a color means a new `ColorRoute` (and
/// fresh pools). The endpoint set changes in place when a configured hostname resolves to
/// other addresses (or a reload changes the list), so the color's in-flight count, drain
/// signal and statistics stay one object across the change: a drain that began before still
/// sees every request of the color.
pub struct ColorRoute {
    pub color: Color,
    /// Version label; `None` when nothing recorded one yet.
    pub version: Option<String>,
    pub(crate) color_header: HeaderValue,
    pub(crate) version_header: Option<HeaderValue>,
    endpoints: ArcSwap<Vec<Arc<Endpoint>>>,
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
        let endpoints = addrs.iter().map(|a| Endpoint::new(*a, settings)).collect();
        ColorRoute::with_endpoints(color, version, endpoints)
    }

    /// A route over endpoints made by the caller (named ones, or ones kept from another route).
    pub fn with_endpoints(color: Color, version: Option<String>, endpoints: Vec<Arc<Endpoint>>) -> Arc<ColorRoute> {
        Arc::new(ColorRoute {
            color,
            color_header: HeaderValue::from_static(color.as_str()),
            version_header: version.as_deref().and_then(|v| HeaderValue::from_str(v).ok()),
            version,
            endpoints: ArcSwap::from_pointee(endpoints),
            stats: Arc::new(ColorStats::default()),
            next: AtomicUsize::new(0),
            closing: AtomicBool::new(false),
            close_signal: tokio::sync::watch::Sender::new(false),
        })
    }

    /// `x-cutover-color` and `x-cutover-version` of this route: the one place that names and
    /// fills them, for both engines' answers and the proxy's own errors.
    pub(crate) fn tags(&self) -> impl Iterator<Item = (&'static HeaderName, &HeaderValue)> {
        static COLOR: HeaderName = HeaderName::from_static("x-cutover-color");
        static VERSION: HeaderName = HeaderName::from_static("x-cutover-version");
        std::iter::once((&COLOR, &self.color_header)).chain(self.version_header.as_ref().map(|v| (&VERSION, v)))
    }

    /// [`ColorRoute::tags`] into a header map.
    pub(crate) fn tag(&self, h: &mut HeaderMap) {
        for (name, value) in self.tags() {
            h.insert(name.clone(), value.clone());
        }
    }

    /// The less loaded of two endpoints (power of two choices) among the routable ones,
    /// skipping `exclude` (the one that just failed). The pair rotates with every request,
    /// so endpoints with equal loads take turns, and a dead or hung endpoint's share goes to
    /// the least loaded others instead of all to its neighbour (round-robin gave 60/30/30
    /// over three live endpoints with a fourth down).
    ///
    /// When health checks call every endpoint down, all of them are tried anyway (Envoy's
    /// "panic" routing): a probe that times out on a loaded machine must not turn a working
    /// model server into 503s, and a server that is really down fails fast with a connect
    /// error all the same.
    pub(crate) fn pick(&self, exclude: Option<&Arc<Endpoint>>) -> Option<Arc<Endpoint>> {
        let endpoints = self.endpoints.load();
        let allowed = |e: &Arc<Endpoint>| exclude.is_none_or(|x| !Arc::ptr_eq(x, e));
        if let [only] = endpoints.as_slice() {
            return allowed(only).then(|| only.clone());
        }
        let panic = !endpoints.iter().any(|e| allowed(e) && e.routable());
        let usable = |e: &&Arc<Endpoint>| allowed(e) && (panic || e.routable());
        let count = endpoints.iter().filter(usable).count();
        if count == 0 {
            return None;
        }
        // Two distinct positions among the candidates: this turn's, and one further on.
        let turn = self.next.fetch_add(1, Relaxed);
        let i = turn % count;
        let j = if count > 1 {
            (i + 1 + (turn / count) % (count - 1)) % count
        } else {
            i
        };
        let nth = |k| endpoints.iter().filter(usable).nth(k);
        let (own, other) = (nth(i)?, nth(j)?);
        // Ties go to this turn's position, so equal loads take turns.
        Some(if other.in_flight() < own.in_flight() {
            other.clone()
        } else {
            own.clone()
        })
    }

    /// The endpoints now (a snapshot: a re-resolution may replace the set at any time).
    pub fn endpoints(&self) -> Arc<Vec<Arc<Endpoint>>> {
        self.endpoints.load_full()
    }

    /// Replaces the endpoint set. Requests already on a removed endpoint finish there (they
    /// hold it); new requests only pick from `endpoints`.
    pub fn set_endpoints(&self, endpoints: Vec<Arc<Endpoint>>) {
        self.endpoints.store(Arc::new(endpoints));
    }

    /// True when at least one endpoint is known healthy.
    pub fn any_healthy(&self) -> bool {
        self.endpoints.load().iter().any(|e| e.health() == Health::Healthy)
    }

    /// True when no endpoint has a health result yet.
    pub fn health_unknown(&self) -> bool {
        self.endpoints.load().iter().all(|e| e.health() == Health::Unknown)
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
    /// The other color: reachable through the preview listener, the header route, and
    /// `weight` percent of the live listener's requests.
    pub idle: Option<Arc<ColorRoute>>,
    /// A progressive release's current step: the share (0-100) of the live listener's
    /// requests that go to `idle`, the candidate. 0 outside a progressive release.
    pub weight: u8,
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
    /// Replaced whole by a config reload; a connection reads it once when it opens and keeps
    /// what it read (as nginx workers keep the configuration they started with).
    settings: ArcSwap<ServiceSettings>,
    table: ArcSwap<RouteTable>,
    /// Set while the service shadows: sampled live exchanges are copied to it.
    tap: crate::mirror::TapSlot,
}

impl Service {
    pub fn new(name: impl Into<String>, settings: ServiceSettings, table: RouteTable) -> Arc<Service> {
        Arc::new(Service {
            name: name.into(),
            settings: ArcSwap::from_pointee(settings),
            table: ArcSwap::from_pointee(table),
            tap: Default::default(),
        })
    }

    /// Installs (or with `None` removes) the shadow comparison's tap. An exchange being
    /// copied is delivered to whatever tap is installed when it ends: none after a removal.
    pub fn set_tap(&self, tap: Option<Box<dyn crate::mirror::Tap>>) {
        self.tap.tap.store(tap.map(Arc::new));
    }

    /// A capture for a live request, if a tap is installed and wants it.
    pub(crate) fn mirror<'p>(
        &self,
        method: &http::Method,
        path: impl FnOnce() -> &'p str,
        headers: impl FnOnce() -> http::HeaderMap,
    ) -> Option<Arc<crate::mirror::Capture>> {
        self.tap.begin(method, path, headers)
    }

    /// The settings new connections take.
    pub fn settings(&self) -> Arc<ServiceSettings> {
        self.settings.load_full()
    }

    /// New settings for connections opened from now on (a reload).
    pub fn set_settings(&self, settings: ServiceSettings) {
        self.settings.store(Arc::new(settings));
    }

    /// The current snapshot.
    pub fn table(&self) -> Arc<RouteTable> {
        self.table.load_full()
    }

    /// Replace the routing snapshot in one pointer swap: the switch itself.
    pub fn publish(&self, table: RouteTable) {
        self.table.store(Arc::new(table));
    }

    /// The route a request on the live (or preview) listener goes to, taken with one load:
    /// the idle color on the preview listener or through the header route; else the live
    /// color, or the candidate for the request's share of a progressive release's weight.
    /// Err: the header route was asked for without a valid token.
    #[inline]
    pub(crate) fn target(
        &self,
        preview: bool,
        settings: &ServiceSettings,
        req: &impl RequestView,
    ) -> Result<Option<Arc<ColorRoute>>, Side> {
        let t = self.table.load();
        if preview {
            return Ok(t.idle.clone());
        }
        let side = match split::header_route(settings.header_route.as_ref(), req) {
            Some(side) => side,
            None if t.idle.is_none() => Side::Live,
            None => split::weighted(t.weight, settings.sticky.as_ref(), req),
        };
        match side {
            Side::Live => Ok(t.live.clone()),
            Side::Idle => Ok(t.idle.clone()),
            Side::Refused => Err(Side::Refused),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(n: u16) -> Arc<ColorRoute> {
        let addrs: Vec<SocketAddr> = (0..n).map(|i| SocketAddr::from(([127, 0, 0, 1], 9000 + i))).collect();
        ColorRoute::new(Color::Blue, None, &addrs, &Arc::new(ServiceSettings::default()))
    }

    fn shares(r: &ColorRoute, picks: usize) -> Vec<usize> {
        let eps = r.endpoints();
        let mut n = vec![0; eps.len()];
        for _ in 0..picks {
            let e = r.pick(None).unwrap();
            n[eps.iter().position(|x| Arc::ptr_eq(x, &e)).unwrap()] += 1;
        }
        n
    }

    #[test]
    fn equal_loads_take_turns_and_a_down_endpoint_gives_its_share_to_all() {
        assert_eq!(shares(&route(2), 1000), vec![500, 500]);
        let r = route(4);
        r.endpoints()[1].set_health(Health::Unhealthy);
        // Round-robin gave the dead endpoint's turns to its neighbour (60/30/30 was seen).
        assert_eq!(shares(&r, 3000), vec![1000, 0, 1000, 1000]);
    }

    #[test]
    fn the_less_loaded_of_two_wins() {
        let r = route(2);
        let _held: Vec<_> = (0..5).map(|_| r.endpoints()[0].claim()).collect();
        assert_eq!(r.endpoints()[0].in_flight(), 5);
        assert_eq!(
            shares(&r, 100),
            vec![0, 100],
            "a hung endpoint's requests pile up: it gets no more"
        );
        drop(_held);
        assert_eq!(r.endpoints()[0].in_flight(), 0, "claims are given back on drop");
        let r = route(3);
        let _held = r.endpoints()[2].claim();
        let s = shares(&r, 300);
        assert!(s[2] < 60 && s[0] + s[1] + s[2] == 300, "{s:?}");
    }

    #[test]
    fn exclusion_and_panic_routing() {
        let r = route(3);
        let first = r.endpoints()[0].clone();
        for _ in 0..50 {
            assert!(!Arc::ptr_eq(&r.pick(Some(&first)).unwrap(), &first));
        }
        for e in r.endpoints().iter() {
            e.set_health(Health::Unhealthy);
        }
        assert_eq!(shares(&r, 300), vec![100, 100, 100], "all down: all tried anyway");
        let one = route(1);
        assert!(one.pick(Some(&one.endpoints()[0].clone())).is_none());
        assert!(one.pick(None).is_some());
    }
}
