//! Waiting for a new color to be healthy: every endpoint, by the health checks' own verdict;
//! a wait that reaches `health_timeout` says which endpoints were not healthy and what their
//! probes last saw. (A managed process that exits ends the wait at once: the run watches the
//! color's exits through every phase, see `release::run`.)

use std::sync::Arc;
use std::time::Duration;

use cutover_proxy::{ColorRoute, Health};
use tokio::time::Instant;

use super::{deadline_text, plural};
use crate::base::error::{FailureKind, StepFailure, StepResult};
use crate::service::status::endpoint_line;
use crate::service::ServiceCtl;

/// How often the health verdicts are read (the checks themselves run on their own interval).
const POLL: Duration = Duration::from_millis(100);

pub async fn wait_healthy(svc: Arc<ServiceCtl>, route: Arc<ColorRoute>) -> StepResult {
    let started = Instant::now();
    let limit = svc.cfg().release.health_timeout.get();
    // The run's own deadline on this phase is the same `health_timeout`; ending one poll
    // before it lets this step, which knows the endpoints, give the reason.
    let give_up = started + limit.saturating_sub(POLL);
    loop {
        if route.endpoints().iter().all(|e| e.health() == Health::Healthy) {
            return Ok(format!(
                "{} endpoint{} healthy after {:.1} s",
                route.endpoints().len(),
                plural(route.endpoints().len(), "s"),
                started.elapsed().as_secs_f64()
            ));
        }
        if Instant::now() >= give_up {
            return Err(StepFailure::new(FailureKind::Unhealthy, not_healthy(&route, limit)));
        }
        tokio::time::sleep(POLL.min(give_up.saturating_duration_since(Instant::now()))).await;
    }
}

/// The deadline reason: the endpoints that were not healthy, each with its last probe.
fn not_healthy(route: &ColorRoute, limit: Duration) -> String {
    let lines: Vec<String> = route
        .endpoints()
        .iter()
        .filter(|e| e.health() != Health::Healthy)
        .map(|e| endpoint_line(e))
        .collect();
    format!(
        "waiting for health did not finish within its deadline of {}: {} of {} endpoint{} not healthy: {}",
        deadline_text(limit),
        lines.len(),
        route.endpoints().len(),
        plural(route.endpoints().len(), "s"),
        lines.join("; ")
    )
}
