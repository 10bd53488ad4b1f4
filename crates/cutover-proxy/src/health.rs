//! Active health checks: each endpoint is probed on an interval and its state flips only
//! after a run of consecutive results, logged once per flip.

use std::net::SocketAddr;
use std::sync::{Arc, Weak};
use std::time::Duration;

use http::{header, Request};
use http_body_util::Empty;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;

use crate::route::{ColorRoute, Endpoint, Health, Protocol};

/// How to check one service's endpoints.
#[derive(Debug, Clone)]
pub struct HealthSpec {
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    pub healthy_threshold: u32,
    pub unhealthy_threshold: u32,
    pub protocol: Protocol,
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

/// One probe: `GET path` on a fresh connection; 2xx and 3xx are healthy.
pub async fn probe(addr: SocketAddr, spec: &HealthSpec) -> Result<(), String> {
    let fut = async {
        let stream = TcpStream::connect(addr).await.map_err(|e| format!("connect: {e}"))?;
        let io = TokioIo::new(stream);
        let status = match spec.protocol {
            Protocol::Http1 => {
                let (mut send, conn) = http1::handshake::<_, Empty<bytes::Bytes>>(io)
                    .await
                    .map_err(|e| e.to_string())?;
                tokio::spawn(conn);
                let req = Request::get(spec.path.as_str())
                    .header(header::HOST, addr.to_string())
                    .header(header::USER_AGENT, "cutover-health")
                    .header(header::CONNECTION, "close")
                    .body(Empty::new())
                    .map_err(|e| e.to_string())?;
                send.send_request(req).await.map_err(|e| e.to_string())?.status()
            }
            Protocol::H2c => {
                let (mut send, conn) = http2::Builder::new(TokioExecutor::new())
                    .timer(TokioTimer::new())
                    .handshake::<_, Empty<bytes::Bytes>>(io)
                    .await
                    .map_err(|e| e.to_string())?;
                tokio::spawn(conn);
                let req = Request::get(format!("http://{addr}{}", spec.path))
                    .header(header::USER_AGENT, "cutover-health")
                    .body(Empty::new())
                    .map_err(|e| e.to_string())?;
                send.send_request(req).await.map_err(|e| e.to_string())?.status()
            }
        };
        if status.is_success() || status.is_redirection() {
            Ok(())
        } else {
            Err(format!("status {}", status.as_u16()))
        }
    };
    match tokio::time::timeout(spec.timeout, fut).await {
        Ok(r) => r,
        Err(_) => Err(format!("no answer within {:?}", spec.timeout)),
    }
}

fn apply(service: &str, route: &ColorRoute, ep: &Endpoint, tracker: &mut Tracker, result: &Result<(), String>) {
    let before = ep.health();
    if let Some(new) = tracker.record(before, result.is_ok()) {
        ep.set_health(new);
        let version = route.version.as_deref().unwrap_or("-");
        match (new, result) {
            (Health::Healthy, _) => {
                tracing::info!(service, color = %route.color, version, endpoint = %ep.addr, from = ?before, "endpoint healthy")
            }
            (_, Err(e)) => {
                tracing::warn!(service, color = %route.color, version, endpoint = %ep.addr, from = ?before, reason = %e, "endpoint unhealthy")
            }
            _ => {}
        }
    }
}

/// Probes every endpoint of `route` now, concurrently, and records the results. Used when a
/// switch targets a color with no health result yet.
pub async fn check_now(service: &str, route: &Arc<ColorRoute>, spec: &HealthSpec) {
    let probes = route.endpoints.iter().map(|ep| {
        let ep = ep.clone();
        let spec = spec.clone();
        async move {
            let r = probe(ep.addr, &spec).await;
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
            apply(service, route, &ep, &mut t, &r);
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

/// Starts one checking task per endpoint of `route`. The tasks hold the route weakly and end
/// when it is gone.
pub fn spawn(service: &str, route: &Arc<ColorRoute>, spec: &HealthSpec) -> Checks {
    let mut handles = Vec::new();
    for i in 0..route.endpoints.len() {
        let weak: Weak<ColorRoute> = Arc::downgrade(route);
        let spec = spec.clone();
        let service = service.to_string();
        handles.push(tokio::spawn(async move {
            let mut tracker = Tracker::new(spec.healthy_threshold, spec.unhealthy_threshold);
            let mut tick = tokio::time::interval(spec.interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(route) = weak.upgrade() else { return };
                let ep = route.endpoints[i].clone();
                drop(route);
                let r = probe(ep.addr, &spec).await;
                let Some(route) = weak.upgrade() else { return };
                apply(&service, &route, &ep, &mut tracker, &r);
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

    #[test]
    fn unknown_decides_on_first_failure() {
        let mut t = Tracker::new(2, 3);
        assert_eq!(t.record(Health::Unknown, false), Some(Health::Unhealthy));
    }
}
