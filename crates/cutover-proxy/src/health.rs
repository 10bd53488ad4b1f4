//! Active health checks: each endpoint is probed on an interval and its state flips only
//! after a run of consecutive results, logged once per flip.
//!
//! Passive evidence (the proxy's own traffic) tempers one kind of result: a probe that timed
//! out does not count toward taking an endpoint out while that endpoint answered proxied
//! requests 2xx/3xx within `passive_window` (and its color too). A model
//! server that queues its health route behind running generations (llama-cpp-python's
//! `/v1/models` took 1.5-9.5 s under load) is busy, not dead; a server that refuses
//! connections, answers an unhealthy status, or stops finishing requests gets no such cover.

use std::sync::{Arc, Weak};
use std::time::Duration;

use crate::probe::{self, Probe};
use crate::route::{ColorRoute, Endpoint, Health, Protocol};
use crate::stats::{now_ms, ProbeReason, ProbeRecord};

/// How to check one service's endpoints.
#[derive(Debug, Clone)]
pub struct HealthSpec {
    pub probe: Probe,
    pub interval: Duration,
    pub timeout: Duration,
    pub healthy_threshold: u32,
    pub unhealthy_threshold: u32,
    pub protocol: Protocol,
    /// How recent proxied successes must be to excuse a probe timeout; zero turns it off.
    pub passive_window: Duration,
}

impl HealthSpec {
    /// An HTTP `GET path` check with the defaults of `cutover.toml` (2xx and 3xx healthy).
    pub fn http(path: &str) -> HealthSpec {
        HealthSpec {
            probe: Probe::Http {
                path: path.to_string(),
                status: vec![(200, 399)],
            },
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            healthy_threshold: 1,
            unhealthy_threshold: 2,
            protocol: Protocol::Http1,
            passive_window: Duration::from_secs(10),
        }
    }
}

/// Turns a series of probe results into health flips.
#[derive(Debug, Clone)]
pub struct Tracker {
    ok_streak: u32,
    fail_streak: u32,
    healthy_threshold: u32,
    unhealthy_threshold: u32,
}

impl Tracker {
    pub fn new(healthy_threshold: u32, unhealthy_threshold: u32) -> Tracker {
        Tracker {
            ok_streak: 0,
            fail_streak: 0,
            healthy_threshold,
            unhealthy_threshold,
        }
    }

    /// Records one result against the endpoint's `current` state; `Some` when it flips.
    /// The first result of an unknown endpoint decides at once, so a fresh router learns fast.
    pub fn record(&mut self, current: Health, ok: bool) -> Option<Health> {
        if ok {
            self.ok_streak += 1;
            self.fail_streak = 0;
        } else {
            self.fail_streak += 1;
            self.ok_streak = 0;
        }
        match (current, ok) {
            (Health::Unknown, true) => Some(Health::Healthy),
            (Health::Unknown, false) => Some(Health::Unhealthy),
            (Health::Unhealthy, true) if self.ok_streak >= self.healthy_threshold => Some(Health::Healthy),
            (Health::Healthy, false) if self.fail_streak >= self.unhealthy_threshold => Some(Health::Unhealthy),
            _ => None,
        }
    }
}

/// One probe of `ep` by `spec` (over TLS when its service's endpoints are `https://`).
pub async fn probe(ep: &Endpoint, spec: &HealthSpec) -> ProbeRecord {
    probe::run(ep.addr, spec.protocol, &spec.probe, spec.timeout, ep.pool.tls()).await
}

/// What one endpoint's check remembers of its color's traffic between probes.
struct Passive {
    /// The color's 2xx/3xx count at the last look.
    successes: u64,
    /// [`now_ms`] when that count last grew (0: not since the check started).
    grew_ms: u64,
    /// The same for the endpoint's own 2xx/3xx answers to proxied requests.
    ep_successes: u64,
    ep_grew_ms: u64,
}

impl Passive {
    fn new(route: &ColorRoute, ep: &Endpoint) -> Passive {
        Passive {
            successes: route.stats.successes(),
            grew_ms: 0,
            ep_successes: ep.stats.answered_ok_count(),
            ep_grew_ms: 0,
        }
    }

    fn look(&mut self, route: &ColorRoute, ep: &Endpoint) {
        let n = route.stats.successes();
        if n != self.successes {
            self.successes = n;
            self.grew_ms = now_ms();
        }
        let n = ep.stats.answered_ok_count();
        if n != self.ep_successes {
            self.ep_successes = n;
            self.ep_grew_ms = now_ms();
        }
    }

    /// Why a timeout of `ep` is weak evidence now, if it is: its own requests ended lately and
    /// the color is answering.
    fn excuse(&self, window: Duration) -> Option<String> {
        let window = window.as_millis() as u64;
        let now = now_ms();
        let finished = Some(self.ep_grew_ms).filter(|ms| *ms > 0)?;
        let recent = |ms: u64| ms > 0 && now.saturating_sub(ms) <= window;
        (window > 0 && recent(finished) && recent(self.grew_ms)).then(|| {
            format!(
                "not counted: it answered proxied requests 2xx/3xx {:.1} s ago and its color {:.1} s ago",
                now.saturating_sub(finished) as f64 / 1000.0,
                now.saturating_sub(self.grew_ms) as f64 / 1000.0
            )
        })
    }
}

/// Records `rec` on the endpoint and lets it move the endpoint's health, unless `excuse`
/// says why a timeout does not count.
fn apply(
    service: &str,
    route: &ColorRoute,
    ep: &Endpoint,
    tracker: &mut Tracker,
    mut rec: ProbeRecord,
    excuse: Option<String>,
) {
    if let (Some(ProbeReason::Timeout), Some(why)) = (rec.failure, excuse) {
        tracing::debug!(service, color = %route.color, endpoint = %ep, reason = %rec.message, "probe timeout not counted: {why}");
        rec.message = format!("{}; {why}", rec.message);
        rec.counted = false;
        ep.stats.record_probe(rec);
        return;
    }
    let before = ep.health();
    let flip = tracker.record(before, rec.ok());
    let reason = rec.message.clone();
    ep.stats.record_probe(rec);
    if let Some(new) = flip {
        ep.set_health(new);
        let version = route.version.as_deref().unwrap_or("-");
        if new == Health::Healthy {
            tracing::info!(service, color = %route.color, version, endpoint = %ep, from = ?before, "endpoint healthy")
        } else {
            tracing::warn!(service, color = %route.color, version, endpoint = %ep, from = ?before, %reason, "endpoint unhealthy")
        }
    }
}

/// Probes every endpoint of `route` now, concurrently, and records the results. Used when a
/// switch targets a color with no health result yet.
pub async fn check_now(service: &str, route: &Arc<ColorRoute>, spec: &HealthSpec) {
    check_endpoints(service, route, &route.endpoints(), spec).await
}

/// Probes `endpoints` (of `route`, or about to join it) now, concurrently, and records the
/// results as decisive first ones.
pub async fn check_endpoints(service: &str, route: &Arc<ColorRoute>, endpoints: &[Arc<Endpoint>], spec: &HealthSpec) {
    let probes = endpoints.iter().cloned().map(|ep| {
        let spec = spec.clone();
        async move {
            let r = probe(&ep, &spec).await;
            (ep, r)
        }
    });
    let mut handles = Vec::new();
    for p in probes {
        handles.push(tokio::spawn(p));
    }
    for h in handles {
        if let Ok((ep, r)) = h.await {
            let mut t = Tracker::new(spec.healthy_threshold, spec.unhealthy_threshold);
            // A forced check is decisive: treat it as the first result.
            let current = ep.health();
            ep.set_health(Health::Unknown);
            apply(service, route, &ep, &mut t, r, None);
            if ep.health() == Health::Unknown {
                ep.set_health(current);
            }
        }
    }
}

/// The running checks of one color; dropping it stops them.
pub struct Checks(Vec<tokio::task::JoinHandle<()>>);

impl Drop for Checks {
    fn drop(&mut self) {
        for h in &self.0 {
            h.abort();
        }
    }
}

/// Starts one checking task per endpoint `route` has now. The tasks hold the route and the
/// endpoint weakly and end when either is gone; when the endpoint set changes (a hostname
/// resolved anew), the owner starts a new `Checks` for the new set.
pub fn spawn(service: &str, route: &Arc<ColorRoute>, spec: &HealthSpec) -> Checks {
    let mut handles = Vec::new();
    for ep in route.endpoints().iter() {
        let weak: Weak<ColorRoute> = Arc::downgrade(route);
        let weak_ep: Weak<Endpoint> = Arc::downgrade(ep);
        let spec = spec.clone();
        let service = service.to_string();
        let mut passive = Passive::new(route, ep);
        handles.push(tokio::spawn(async move {
            let mut tracker = Tracker::new(spec.healthy_threshold, spec.unhealthy_threshold);
            let mut tick = tokio::time::interval(spec.interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let (Some(route), Some(ep)) = (weak.upgrade(), weak_ep.upgrade()) else {
                    return;
                };
                passive.look(&route, &ep);
                drop(route);
                let r = probe(&ep, &spec).await;
                let Some(route) = weak.upgrade() else { return };
                // Traffic that succeeded while the probe waited counts as recent too.
                passive.look(&route, &ep);
                let excuse = passive.excuse(spec.passive_window);
                apply(&service, &route, &ep, &mut tracker, r, excuse);
            }
        }));
    }
    Checks(handles)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flips_only_after_consecutive_results() {
        let mut t = Tracker::new(2, 3);
        assert_eq!(t.record(Health::Unknown, true), Some(Health::Healthy));
        let mut state = Health::Healthy;
        // Two failures, a success, two failures: never three in a row.
        for ok in [false, false, true, false, false] {
            assert_eq!(t.record(state, ok), None);
        }
        assert_eq!(t.record(state, false), Some(Health::Unhealthy));
        state = Health::Unhealthy;
        assert_eq!(t.record(state, true), None);
        assert_eq!(t.record(state, false), None);
        assert_eq!(t.record(state, true), None);
        assert_eq!(t.record(state, true), Some(Health::Healthy));
    }

    fn route() -> Arc<ColorRoute> {
        let addrs = [std::net::SocketAddr::from(([127, 0, 0, 1], 9))];
        ColorRoute::new(
            crate::Color::Blue,
            None,
            &addrs,
            &Arc::new(crate::ServiceSettings::default()),
        )
    }

    fn timeout_record() -> ProbeRecord {
        ProbeRecord {
            at: std::time::SystemTime::now(),
            at_ms: now_ms(),
            latency: Duration::from_secs(1),
            status: None,
            failure: Some(ProbeReason::Timeout),
            message: "no answer within 1s".into(),
            counted: true,
        }
    }

    #[test]
    fn a_timeout_is_excused_only_by_recent_requests_on_the_endpoint_and_color_successes() {
        let window = Duration::from_secs(10);
        let r = route();
        let ep = r.endpoints()[0].clone();
        let mut p = Passive::new(&r, &ep);
        assert_eq!(p.excuse(window), None, "no traffic at all");
        let mut failed = ep.claim();
        failed.answered(502);
        drop(failed);
        r.stats.record_status(502);
        p.look(&r, &ep);
        assert_eq!(p.excuse(window), None, "a request ended, but with a 5xx: no evidence");
        r.stats.record_status(200);
        p.look(&r, &ep);
        assert_eq!(p.excuse(window), None, "the color answers, this endpoint did not");
        let mut ok = ep.claim();
        ok.answered(200);
        drop(ok);
        p.look(&r, &ep);
        let why = p.excuse(window).expect("recent success excuses");
        assert!(
            why.starts_with("not counted: it answered proxied requests 2xx/3xx"),
            "{why}"
        );
        assert_eq!(p.excuse(Duration::ZERO), None, "passive_window = 0s turns it off");

        // An excused timeout leaves health alone and says why; an unexcused one counts.
        let mut t = Tracker::new(1, 1);
        ep.set_health(Health::Healthy);
        apply("chat", &r, &ep, &mut t, timeout_record(), Some(why));
        assert_eq!(ep.health(), Health::Healthy);
        let last = ep.stats.last_probe().unwrap();
        assert!(!last.counted && last.message.contains("not counted"), "{last:?}");
        assert_eq!(
            ep.stats.probe_failures(ProbeReason::Timeout),
            1,
            "still counted in the metric"
        );
        apply("chat", &r, &ep, &mut t, timeout_record(), None);
        assert_eq!(ep.health(), Health::Unhealthy);
        // Other failures are never excused.
        ep.set_health(Health::Healthy);
        let mut refused = timeout_record();
        refused.failure = Some(ProbeReason::Connect);
        apply("chat", &r, &ep, &mut t, refused, Some("x".into()));
        assert_eq!(ep.health(), Health::Unhealthy);
    }

    #[test]
    fn unknown_decides_on_first_failure() {
        let mut t = Tracker::new(2, 3);
        assert_eq!(t.record(Health::Unknown, false), Some(Health::Unhealthy));
    }
}
