//! A service's state as `GET /v1/services/{svc}` and `cutover status` show it.

use std::collections::BTreeMap;

use cutover_proxy::{Color, ColorRoute, Health};
use serde::Serialize;

use super::{BoundAddrs, ColorState, ServiceCtl};
use crate::supervisor::ColorProcesses;

#[derive(Debug, Serialize)]
pub struct EndpointStatus {
    pub address: String,
    pub healthy: Option<bool>,
    pub health: Health,
    /// Requests on this endpoint now (a hung endpoint shows as one whose count only grows).
    pub in_flight: usize,
}

#[derive(Debug, Serialize)]
pub struct ColorStatus {
    pub version: Option<String>,
    pub state: ColorState,
    pub endpoints: Vec<EndpointStatus>,
    pub in_flight: i64,
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
    pub release: Option<serde_json::Value>,
}

fn endpoints(r: &ColorRoute) -> Vec<EndpointStatus> {
    r.endpoints
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
                in_flight: e.in_flight(),
            }
        })
        .collect()
}

impl ServiceCtl {
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
            let state = if table.live_color() == Some(c) {
                ColorState::Live
            } else {
                self.color_state(c)
            };
            colors.insert(
                c,
                ColorStatus {
                    version: r.version.clone(),
                    state,
                    endpoints: endpoints(&r),
                    in_flight: r.in_flight(),
                    processes: self.procs.as_ref().map(|p| p.status(c)),
                },
            );
        }
        ServiceStatus {
            name: self.cfg.name.clone(),
            live: table.live_color(),
            generation: table.generation,
            listen: self.cfg.listen.to_string(),
            preview_listen: self.cfg.preview_listen.map(|a| a.to_string()),
            bound: self.bound(),
            colors,
            release,
        }
    }
}
