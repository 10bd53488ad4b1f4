//! A service's state as `GET /v1/services/{svc}` and `cutover status` show it.

use std::collections::BTreeMap;

use cutover_proxy::stats::now_ms;
use cutover_proxy::{Color, ColorRoute, Endpoint, Health, ProbeRecord};
use serde::Serialize;

use super::{BoundAddrs, ColorState, ServiceCtl};
use crate::procs::supervisor::ColorProcesses;

/// An endpoint's health as the API shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EndpointHealth {
    /// Checked, no verdict yet: it takes traffic meanwhile.
    Unknown,
    Healthy,
    Unhealthy,
    /// Its color's checks are off (empty, stopped, or stale): nothing is expected to answer.
    NotChecked,
}

#[derive(Debug, Serialize)]
pub struct EndpointStatus {
    pub address: String,
    /// The configured `NAME:PORT` this address was resolved from; absent for an IP endpoint.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub healthy: Option<bool>,
    pub health: EndpointHealth,
    /// Requests on this endpoint now (a hung endpoint shows as one whose count only grows).
    pub in_flight: usize,
    /// What the latest probe saw; `null` before the first one.
    pub last_probe: Option<ProbeStatus>,
    /// Failed probes of this endpoint since it was installed (all reasons).
    pub probe_failures: u64,
}

/// One probe's result as the API shows it.
#[derive(Debug, Serialize)]
pub struct ProbeStatus {
    pub ok: bool,
    /// When it ended (RFC 3339, UTC).
    pub at: String,
    /// Milliseconds since then, at the time of this answer.
    pub age_ms: u64,
    pub latency_ms: u64,
    /// The HTTP status of the answer, when one came.
    pub status: Option<u16>,
    /// `timeout`, `connect`, `status`, `grpc_not_serving`, `body` or `tls`; `null` when it passed.
    pub reason: Option<&'static str>,
    /// What passed (`"status 200"`, `"SERVING"`) or what went wrong, in words.
    pub message: String,
    /// False when the result did not move the endpoint's health (a timeout excused by the
    /// proxy's own successful traffic to it).
    pub counted: bool,
}

impl ProbeStatus {
    pub fn of(r: &ProbeRecord) -> ProbeStatus {
        ProbeStatus {
            ok: r.ok(),
            at: humantime::format_rfc3339_millis(r.at).to_string(),
            age_ms: now_ms().saturating_sub(r.at_ms),
            latency_ms: r.latency.as_millis() as u64,
            status: r.status,
            reason: r.failure.map(|f| f.as_str()),
            message: r.message.clone(),
            counted: r.counted,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct ColorStatus {
    pub version: Option<String>,
    pub state: ColorState,
    pub endpoints: Vec<EndpointStatus>,
    pub in_flight: i64,
    /// The color's share (percent) of the live listener's traffic: 100 for the live color,
    /// 0 for the idle one, split during a progressive release's step.
    pub weight: u8,
    /// Managed services only: the color's processes, restarts and last exit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub processes: Option<ColorProcesses>,
}

#[derive(Debug, Serialize)]
pub struct ServiceStatus {
    pub name: String,
    pub live: Option<Color>,
    pub generation: u64,
    /// As configured (may name port 0).
    pub listen: String,
    pub preview_listen: Option<String>,
    /// What `serve` actually bound; `null` when this controller serves no traffic.
    pub bound: Option<BoundAddrs>,
    pub colors: BTreeMap<Color, ColorStatus>,
    /// The configured traffic mode: `all_at_once`, `canary` or `linear`.
    pub traffic: &'static str,
    pub release: Option<serde_json::Value>,
}

/// `127.0.0.1:9002 unhealthy, last probe 0.4 s ago: status 503: {...}`: one endpoint's health
/// and what its probes last saw, for refusals and deadline reasons.
pub fn endpoint_line(e: &Endpoint) -> String {
    let health = format!("{:?}", e.health()).to_lowercase();
    match e.stats.last_probe() {
        Some(r) => {
            let p = ProbeStatus::of(&r);
            format!(
                "{} {health}, last probe {:.1} s ago: {}",
                e,
                p.age_ms as f64 / 1000.0,
                p.message
            )
        }
        None => format!("{e} {health}, not probed yet"),
    }
}

/// `checked`: the color's health checks run; when they do not, every endpoint is "not
/// checked", never the `unknown` of a fresh endpoint that takes traffic.
fn endpoints(r: &ColorRoute, checked: bool) -> Vec<EndpointStatus> {
    r.endpoints()
        .iter()
        .map(|e| {
            let (healthy, health) = match e.health() {
                _ if !checked => (None, EndpointHealth::NotChecked),
                Health::Unknown => (None, EndpointHealth::Unknown),
                Health::Healthy => (Some(true), EndpointHealth::Healthy),
                Health::Unhealthy => (Some(false), EndpointHealth::Unhealthy),
            };
            EndpointStatus {
                address: e.addr.to_string(),
                name: e.name.as_deref().map(str::to_string),
                healthy,
                health,
                in_flight: e.in_flight(),
                last_probe: e.stats.last_probe().as_ref().map(ProbeStatus::of),
                probe_failures: e.stats.probe_failures_total(),
            }
        })
        .collect()
}

/// The version a color's processes run, when they all run one: what the color holds, even
/// where the route's label is older (a router that did not run the release learns the label
/// only at a switch, and a release cut off before its switch never records it there).
fn running_version(p: Option<&ColorProcesses>) -> Option<String> {
    let mut versions = p?.running.iter().map(|p| p.version.as_str());
    let first = versions.next()?;
    versions.all(|v| v == first).then(|| first.to_string())
}

impl ServiceCtl {
    /// Host agents: the color's document says stop and no host lists a process. Every
    /// router reads that from etcd, so one that did not run the stop does not call the
    /// color `idle` (ready for a rollback) when nothing runs there.
    fn stopped_on_hosts(&self, c: Color, processes: Option<&ColorProcesses>) -> bool {
        let Some(crate::procs::Procs::Remote(r)) = &self.procs else {
            return false;
        };
        r.stopped(c) && processes.is_some_and(|p| p.running.is_empty())
    }

    /// The state a color shows: live wins, then a state set by a release, then derived.
    pub fn color_state(&self, c: Color) -> ColorState {
        if self.live() == Some(c) {
            ColorState::Live
        } else if let Some(s) = self.state(c) {
            s
        } else if self.version_of(c).is_some() {
            ColorState::Idle
        } else {
            ColorState::Empty
        }
    }

    pub fn status(&self, release: Option<serde_json::Value>) -> ServiceStatus {
        let table = self.proxy.table();
        let mut colors = BTreeMap::new();
        for c in Color::ALL {
            let Some(r) = self.route(c) else { continue };
            let processes = self.procs.as_ref().map(|p| p.status(c));
            let state = match self.color_state(c) {
                _ if table.live_color() == Some(c) => ColorState::Live,
                ColorState::Idle if self.stopped_on_hosts(c, processes.as_ref()) => ColorState::Stopped,
                s => s,
            };
            colors.insert(
                c,
                ColorStatus {
                    version: running_version(processes.as_ref()).or_else(|| r.version.clone()),
                    state,
                    endpoints: endpoints(&r, self.watched(c)),
                    in_flight: r.in_flight(),
                    weight: match table.live_color() {
                        Some(l) if l == c => 100 - table.weight.min(100),
                        Some(_) => table.weight.min(100),
                        None => 0,
                    },
                    processes,
                },
            );
        }
        ServiceStatus {
            name: self.name.clone(),
            live: table.live_color(),
            generation: table.generation,
            traffic: self.cfg().release.traffic.name(),
            listen: self.cfg().listen.to_string(),
            preview_listen: self.cfg().preview_listen.map(|a| a.to_string()),
            bound: self.bound(),
            colors,
            release,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::procs::supervisor::{ProcessStatus, Role};

    fn on(host: &str, version: &str) -> ProcessStatus {
        ProcessStatus {
            replica: 0,
            pid: 1,
            port: 8000,
            version: version.into(),
            started_at: None,
            log: None,
            host: Some(host.into()),
            unknown: false,
        }
    }

    fn running(procs: Vec<ProcessStatus>) -> ColorProcesses {
        ColorProcesses {
            role: Role::Idle,
            running: procs,
            restarts: 0,
            last_exit: None,
        }
    }

    #[test]
    fn a_color_shows_the_version_its_processes_run_only_when_they_agree() {
        let same = running(vec![on("gpu-a", "v4"), on("gpu-b", "v4")]);
        assert_eq!(running_version(Some(&same)).as_deref(), Some("v4"));
        let mixed = running(vec![on("gpu-a", "v4"), on("gpu-b", "v3")]);
        assert_eq!(running_version(Some(&mixed)), None, "the route's label is kept");
        assert_eq!(running_version(Some(&running(vec![]))), None, "nothing runs");
        assert_eq!(running_version(None), None, "static endpoints");
    }
}
