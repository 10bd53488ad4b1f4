//! Lock-free per-color counters and histograms, recorded on the request path.
//!
//! Recording is a handful of relaxed atomic adds; reading takes a snapshot that gates diff
//! over a window (bake) and that the metrics endpoint renders.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Upper bounds of the histogram buckets, in microseconds (the last bucket is +Inf).
pub const BUCKETS_US: [u64; 17] = [
    1_000,
    2_500,
    5_000,
    10_000,
    25_000,
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    30_000_000,
    60_000_000,
    120_000_000,
    300_000_000,
];
const NB: usize = BUCKETS_US.len() + 1;

/// A fixed-bucket latency histogram.
#[derive(Default)]
pub struct Histogram {
    buckets: [AtomicU64; NB],
    sum_us: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let us = d.as_micros().min(u64::MAX as u128) as u64;
        let i = BUCKETS_US.iter().position(|b| us <= *b).unwrap_or(BUCKETS_US.len());
        self.buckets[i].fetch_add(1, Relaxed);
        self.sum_us.fetch_add(us, Relaxed);
    }

    pub fn snapshot(&self) -> HistogramSnapshot {
        HistogramSnapshot {
            buckets: std::array::from_fn(|i| self.buckets[i].load(Relaxed)),
            sum_us: self.sum_us.load(Relaxed),
        }
    }
}

/// Counts per bucket (not cumulative) at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HistogramSnapshot {
    pub buckets: [u64; NB],
    pub sum_us: u64,
}

impl HistogramSnapshot {
    pub fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }

    /// What happened between `earlier` and this snapshot.
    pub fn since(&self, earlier: &HistogramSnapshot) -> HistogramSnapshot {
        HistogramSnapshot {
            buckets: std::array::from_fn(|i| self.buckets[i].saturating_sub(earlier.buckets[i])),
            sum_us: self.sum_us.saturating_sub(earlier.sum_us),
        }
    }

    /// The upper bound of the bucket holding quantile `q` (0..=1); `None` with no samples.
    /// Values above the last bound report `Duration::MAX`: "more than 300 s".
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Some(BUCKETS_US.get(i).map_or(Duration::MAX, |us| Duration::from_micros(*us)));
            }
        }
        Some(Duration::MAX)
    }
}

/// Statistics of one color running one version.
pub struct ColorStats {
    /// Requests whose response has not finished (its body included).
    pub in_flight: AtomicI64,
    /// Responses by status code 100..=599 (proxy-generated errors included).
    codes: Box<[AtomicU64; 500]>,
    /// Requests that failed in the proxy: no endpoint, connect failure, upstream error, timeout.
    pub upstream_failures: AtomicU64,
    /// Response bodies cut short after the head was sent (upstream reset, timeout).
    pub aborted_bodies: AtomicU64,
    /// Requests still running when their drain deadline passed and were closed.
    pub drain_closed: AtomicU64,
    /// Server-sent events relayed (one per blank-line-terminated event), to derive tokens/s.
    pub stream_events: AtomicU64,
    /// From request arrival to the last response byte.
    pub duration: Histogram,
    /// From request arrival to the response head: time to first token for streams.
    pub ttfb: Histogram,
}

impl Default for ColorStats {
    fn default() -> Self {
        ColorStats {
            in_flight: AtomicI64::new(0),
            codes: Box::new(std::array::from_fn(|_| AtomicU64::new(0))),
            upstream_failures: AtomicU64::new(0),
            aborted_bodies: AtomicU64::new(0),
            drain_closed: AtomicU64::new(0),
            stream_events: AtomicU64::new(0),
            duration: Histogram::default(),
            ttfb: Histogram::default(),
        }
    }
}

impl ColorStats {
    pub fn record_status(&self, code: u16) {
        if (100..600).contains(&code) {
            self.codes[(code - 100) as usize].fetch_add(1, Relaxed);
        }
    }

    /// Responses per status code, only the codes seen.
    pub fn codes(&self) -> Vec<(u16, u64)> {
        self.codes
            .iter()
            .enumerate()
            .filter_map(|(i, n)| {
                let n = n.load(Relaxed);
                (n > 0).then_some((i as u16 + 100, n))
            })
            .collect()
    }

    pub fn snapshot(&self) -> StatsSnapshot {
        let mut requests = 0;
        let mut errors_5xx = 0;
        for (code, n) in self.codes() {
            requests += n;
            if code >= 500 {
                errors_5xx += n;
            }
        }
        StatsSnapshot {
            requests,
            errors: errors_5xx,
            aborted_bodies: self.aborted_bodies.load(Relaxed),
            in_flight: self.in_flight.load(Relaxed),
            duration: self.duration.snapshot(),
        }
    }
}

/// The figures gates judge, at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// Responses started (any status).
    pub requests: u64,
    /// 5xx responses, whether from the upstream or made by the proxy for it.
    pub errors: u64,
    /// Bodies cut short after a 2xx head; they count as errors too.
    pub aborted_bodies: u64,
    pub in_flight: i64,
    pub duration: HistogramSnapshot,
}

impl StatsSnapshot {
    pub fn since(&self, earlier: &StatsSnapshot) -> StatsSnapshot {
        StatsSnapshot {
            requests: self.requests.saturating_sub(earlier.requests),
            errors: self.errors.saturating_sub(earlier.errors),
            aborted_bodies: self.aborted_bodies.saturating_sub(earlier.aborted_bodies),
            in_flight: self.in_flight,
            duration: self.duration.since(&earlier.duration),
        }
    }

    /// Failed fraction of requests in this window; `None` without requests.
    pub fn error_rate(&self) -> Option<f64> {
        (self.requests > 0).then(|| ((self.errors + self.aborted_bodies) as f64 / self.requests as f64).min(1.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantile_reports_bucket_upper_bound() {
        let h = Histogram::default();
        for _ in 0..98 {
            h.observe(Duration::from_millis(3));
        }
        h.observe(Duration::from_millis(700));
        h.observe(Duration::from_secs(4));
        let s = h.snapshot();
        assert_eq!(s.count(), 100);
        assert_eq!(s.quantile(0.5), Some(Duration::from_millis(5)));
        assert_eq!(s.quantile(0.99), Some(Duration::from_secs(1)));
        assert_eq!(s.quantile(1.0), Some(Duration::from_secs(5)));
        assert_eq!(HistogramSnapshot::default().quantile(0.99), None);
    }

    #[test]
    fn window_diff_and_error_rate() {
        let st = ColorStats::default();
        st.record_status(200);
        let before = st.snapshot();
        for _ in 0..3 {
            st.record_status(200);
        }
        st.record_status(503);
        let w = st.snapshot().since(&before);
        assert_eq!(w.requests, 4);
        assert_eq!(w.errors, 1);
        assert_eq!(w.error_rate(), Some(0.25));
        assert_eq!(StatsSnapshot::default().error_rate(), None);
        assert_eq!(st.codes(), vec![(200, 4), (503, 1)]);
    }
}
