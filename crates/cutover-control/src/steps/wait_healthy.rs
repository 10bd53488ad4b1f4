//! Waiting for a new color to be healthy: every endpoint, by the health checks' own verdict.
//! (A managed process that exits ends the wait at once: the run watches the color's exits
//! through every phase, see `release::run`.)

use std::sync::Arc;
use std::time::Duration;

use cutover_proxy::{ColorRoute, Health};
use tokio::time::Instant;

use super::plural;

/// How often the health verdicts are read (the checks themselves run on their own interval).
const POLL: Duration = Duration::from_millis(100);

pub async fn wait_healthy(route: Arc<ColorRoute>) -> Result<String, String> {
    let started = Instant::now();
    loop {
        if route.endpoints.iter().all(|e| e.health() == Health::Healthy) {
            return Ok(format!(
                "{} endpoint{} healthy after {:.1} s",
                route.endpoints.len(),
                plural(route.endpoints.len(), "s"),
                started.elapsed().as_secs_f64()
            ));
        }
        tokio::time::sleep(POLL).await;
    }
}
