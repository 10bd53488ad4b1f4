//! The dashboard's short traffic history: requests/s, error rate and in-flight per color,
//! sampled from the data plane's counters every [`SAMPLE_EVERY`].

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use cutover_proxy::{Color, ColorRoute, StatsSnapshot};
use serde::Serialize;

use super::ServiceCtl;

/// How many samples the dashboard series keeps (at [`SAMPLE_EVERY`], six minutes).
pub const SERIES_LEN: usize = 180;
pub const SAMPLE_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

/// One sample of a color's traffic.
#[derive(Debug, Clone, Serialize)]
pub struct ColorPoint {
    pub version: Option<String>,
    pub rps: f64,
    pub error_rate: f64,
    pub in_flight: i64,
}

/// One sample of a service.
#[derive(Debug, Clone, Serialize)]
pub struct Point {
    /// Unix time, seconds.
    pub t: u64,
    pub live: Option<Color>,
    pub colors: BTreeMap<Color, ColorPoint>,
}

/// A small in-memory time series (a few minutes).
#[derive(Default)]
pub struct Series {
    pub points: VecDeque<Point>,
    /// The counters at the previous sample, per route, to turn totals into rates.
    last: Vec<(Arc<ColorRoute>, StatsSnapshot)>,
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl ServiceCtl {
    /// Takes one sample of this service's traffic per color.
    pub(crate) fn sample(&self) {
        let mut series = self.series.lock().unwrap_or_else(|p| p.into_inner());
        let mut colors = BTreeMap::new();
        let mut last = Vec::new();
        for c in Color::ALL {
            let Some(r) = self.route(c) else { continue };
            let now = r.stats.snapshot();
            // A new route (new version) starts from zero, not from the old route's counts.
            let prev = series
                .last
                .iter()
                .find(|(pr, _)| Arc::ptr_eq(pr, &r))
                .map(|(_, s)| s.clone())
                .unwrap_or_default();
            let w = now.since(&prev);
            let secs = SAMPLE_EVERY.as_secs_f64();
            colors.insert(
                c,
                ColorPoint {
                    version: r.version.clone(),
                    rps: w.requests as f64 / secs,
                    error_rate: w.error_rate().unwrap_or(0.0),
                    in_flight: r.in_flight(),
                },
            );
            last.push((r, now));
        }
        series.last = last;
        series.points.push_back(Point {
            t: unix_now(),
            live: self.live(),
            colors,
        });
        while series.points.len() > SERIES_LEN {
            series.points.pop_front();
        }
    }

    pub(crate) fn series_points(&self) -> Vec<Point> {
        let s = self.series.lock().unwrap_or_else(|p| p.into_inner());
        s.points.iter().cloned().collect()
    }
}
