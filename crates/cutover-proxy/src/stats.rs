//! Lock-free per-color counters and histograms, recorded on the request path, and what each
//! endpoint's probes last saw.
//!
//! Recording is a handful of relaxed atomic adds; reading takes a snapshot that gates diff
//! over a window (bake) and that the metrics endpoint renders.

use crate::resend::{Refusal, ResendReason};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

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
}

/// Bins of a [`Sketch`]: 16 exact ones below 16 µs, then 16 per power of two up to 2^32 µs
/// (71 minutes, where values are clamped).
const SKETCH_BINS: usize = 16 + 28 * 16;

fn sketch_bin(us: u64) -> usize {
    let us = us.min((1 << 32) - 1);
    if us < 16 {
        return us as usize;
    }
    let e = 63 - us.leading_zeros() as usize;
    16 + (e - 4) * 16 + ((us >> (e - 4)) & 15) as usize
}

/// The bounds `[lo, hi)` of bin `i`, in µs.
fn sketch_bounds(i: usize) -> (u64, u64) {
    if i < 16 {
        return (i as u64, i as u64 + 1);
    }
    let (e, m) = ((i - 16) / 16 + 4, ((i - 16) % 16) as u64);
    ((16 + m) << (e - 4), (17 + m) << (e - 4))
}

/// A log-linear histogram (HdrHistogram's layout with four significant bits): every value
/// lands in a bin at most 1/16 of its size wide, so quantiles are measured to within about
/// 6 % at any scale, from microseconds to an hour, for the price of a few integer operations
/// per sample. What the gates read; fixed buckets stay for Prometheus.
pub struct Sketch {
    bins: Box<[AtomicU64; SKETCH_BINS]>,
    sum_us: AtomicU64,
}

impl Default for Sketch {
    fn default() -> Self {
        Sketch {
            bins: Box::new(std::array::from_fn(|_| AtomicU64::new(0))),
            sum_us: AtomicU64::new(0),
        }
    }
}

impl Sketch {
    pub fn observe(&self, d: Duration) {
        let us = d.as_micros().min(u64::MAX as u128) as u64;
        self.bins[sketch_bin(us)].fetch_add(1, Relaxed);
        self.sum_us.fetch_add(us, Relaxed);
    }

    /// The sum of all samples, in µs (for Prometheus).
    pub fn sum_us(&self) -> u64 {
        self.sum_us.load(Relaxed)
    }

    pub fn snapshot(&self) -> SketchSnapshot {
        SketchSnapshot(self.bins.iter().map(|b| b.load(Relaxed)).collect())
    }
}

/// Counts per bin of a [`Sketch`] at one moment.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SketchSnapshot(Vec<u64>);

impl SketchSnapshot {
    pub fn count(&self) -> u64 {
        self.0.iter().sum()
    }

    /// What happened between `earlier` and this snapshot.
    pub fn since(&self, earlier: &SketchSnapshot) -> SketchSnapshot {
        SketchSnapshot(
            self.0
                .iter()
                .enumerate()
                .map(|(i, n)| n.saturating_sub(earlier.0.get(i).copied().unwrap_or(0)))
                .collect(),
        )
    }

    /// Quantile `q` (0..=1), interpolated within its bin; `None` without samples.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let rank = (q.clamp(0.0, 1.0) * total as f64).max(1.0);
        let mut seen = 0u64;
        for (i, &n) in self.0.iter().enumerate() {
            if n > 0 && (seen + n) as f64 >= rank {
                let (lo, hi) = sketch_bounds(i);
                let within = ((rank - seen as f64) / n as f64).clamp(0.0, 1.0);
                return Some(Duration::from_micros(lo + ((hi - lo) as f64 * within) as u64));
            }
            seen += n;
        }
        None
    }

    /// Samples at or below `us` (bins wholly below it), for Prometheus-style buckets: a
    /// sample within a bin's width (6 %) of the bound may count in the next bucket.
    pub fn count_below(&self, us: u64) -> u64 {
        self.0
            .iter()
            .enumerate()
            .take_while(|(i, _)| sketch_bounds(*i).1 <= us + 1)
            .map(|(_, n)| n)
            .sum()
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
    /// `duration` of complete responses that are not event streams (nor tunnels): the
    /// latency gate's input, since a healthy 150-token stream takes seconds.
    pub plain_duration: Sketch,
    /// From request arrival to the response head.
    pub ttfb: Histogram,
    /// From request arrival to an event stream's first event: time to first token.
    pub ttft: Sketch,
    /// Between reads that carried events, within a stream: the stalls a client sees.
    pub token_gap: Sketch,
    /// Per complete stream, the mean time between its events (1 / tokens per second).
    pub token_time: Sketch,
    /// 2xx answers that carried no generation: an event stream that ended cleanly with fewer
    /// than two events (a bare `[DONE]`), or a POST answered 200 with an empty body. They
    /// look like success and count as errors for verification.
    pub empty_generations: AtomicU64,
    /// Requests sent once more after a reused connection died under them, by
    /// [`ResendReason`] (in `ResendReason::ALL` order).
    resends: [AtomicU64; 3],
    /// Such requests answered 502 instead, by [`Refusal`] (in `Refusal::ALL` order).
    not_resent: [AtomicU64; 4],
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
            plain_duration: Sketch::default(),
            ttfb: Histogram::default(),
            ttft: Sketch::default(),
            token_gap: Sketch::default(),
            token_time: Sketch::default(),
            empty_generations: AtomicU64::new(0),
            resends: Default::default(),
            not_resent: Default::default(),
        }
    }
}

impl ColorStats {
    /// 2xx and 3xx responses so far: answers the color's servers made that were not errors.
    pub fn successes(&self) -> u64 {
        self.codes[100..300].iter().map(|n| n.load(Relaxed)).sum()
    }

    pub fn record_status(&self, code: u16) {
        if (100..600).contains(&code) {
            self.codes[(code - 100) as usize].fetch_add(1, Relaxed);
        }
    }

    pub(crate) fn record_resend(&self, why: ResendReason) {
        if let Some(i) = ResendReason::ALL.iter().position(|r| *r == why) {
            self.resends[i].fetch_add(1, Relaxed);
        }
    }

    pub(crate) fn record_not_resent(&self, why: Refusal) {
        if let Some(i) = Refusal::ALL.iter().position(|r| *r == why) {
            self.not_resent[i].fetch_add(1, Relaxed);
        }
    }

    /// Re-sends so far, per reason (every reason, zeros included).
    pub fn resends(&self) -> impl Iterator<Item = (ResendReason, u64)> + '_ {
        ResendReason::ALL
            .into_iter()
            .zip(self.resends.iter().map(|n| n.load(Relaxed)))
    }

    /// Requests not re-sent so far, per reason (every reason, zeros included).
    pub fn not_resent(&self) -> impl Iterator<Item = (Refusal, u64)> + '_ {
        Refusal::ALL
            .into_iter()
            .zip(self.not_resent.iter().map(|n| n.load(Relaxed)))
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
            empty_generations: self.empty_generations.load(Relaxed),
            in_flight: self.in_flight.load(Relaxed),
            duration: self.plain_duration.snapshot(),
            ttft: self.ttft.snapshot(),
            token_gap: self.token_gap.snapshot(),
            token_time: self.token_time.snapshot(),
        }
    }
}

/// The figures gates judge, at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// Responses started (any status).
    pub requests: u64,
    /// 5xx responses, whether from the upstream or made by the proxy for it.
    pub errors: u64,
    /// Bodies cut short after a 2xx head; they count as errors too.
    pub aborted_bodies: u64,
    /// 2xx answers without a generation ([`ColorStats::empty_generations`]); errors too.
    pub empty_generations: u64,
    pub in_flight: i64,
    /// Whole-request latency of complete responses that are not streams.
    pub duration: SketchSnapshot,
    pub ttft: SketchSnapshot,
    pub token_gap: SketchSnapshot,
    pub token_time: SketchSnapshot,
}

impl StatsSnapshot {
    pub fn since(&self, earlier: &StatsSnapshot) -> StatsSnapshot {
        StatsSnapshot {
            requests: self.requests.saturating_sub(earlier.requests),
            errors: self.errors.saturating_sub(earlier.errors),
            aborted_bodies: self.aborted_bodies.saturating_sub(earlier.aborted_bodies),
            empty_generations: self.empty_generations.saturating_sub(earlier.empty_generations),
            in_flight: self.in_flight,
            duration: self.duration.since(&earlier.duration),
            ttft: self.ttft.since(&earlier.ttft),
            token_gap: self.token_gap.since(&earlier.token_gap),
            token_time: self.token_time.since(&earlier.token_time),
        }
    }

    /// Requests that failed: 5xx, bodies cut short, and answers without a generation.
    pub fn failed(&self) -> u64 {
        self.errors + self.aborted_bodies + self.empty_generations
    }

    /// Failed fraction of requests in this window; `None` without requests.
    pub fn error_rate(&self) -> Option<f64> {
        (self.requests > 0).then(|| (self.failed() as f64 / self.requests as f64).min(1.0))
    }

    /// The median complete stream's events per second; `None` without one.
    pub fn tokens_per_second(&self) -> Option<f64> {
        let t = self.token_time.quantile(0.5)?;
        (t > Duration::ZERO && t != Duration::MAX).then(|| 1.0 / t.as_secs_f64())
    }
}

/// Milliseconds on a process-wide monotonic clock: what fits in one atomic. Starts at 1 so
/// 0 can mean "never".
pub fn now_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

/// Why a probe failed, in few enough words to be a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProbeReason {
    /// No whole answer within `health.timeout` (the TCP connect included).
    Timeout,
    /// The connection was refused, reset or closed before an answer.
    Connect,
    /// An answer with a status the probe does not accept.
    Status,
    /// A gRPC answer other than `SERVING` (or a gRPC error status).
    GrpcNotServing,
    /// A generation probe's answer did not match `expect` (JSON, text), or was malformed.
    Body,
    /// The TLS handshake with an `https://` endpoint failed (its certificate, most often).
    Tls,
}

impl ProbeReason {
    pub const ALL: [ProbeReason; 6] = [
        ProbeReason::Timeout,
        ProbeReason::Connect,
        ProbeReason::Status,
        ProbeReason::GrpcNotServing,
        ProbeReason::Body,
        ProbeReason::Tls,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ProbeReason::Timeout => "timeout",
            ProbeReason::Connect => "connect",
            ProbeReason::Status => "status",
            ProbeReason::GrpcNotServing => "grpc_not_serving",
            ProbeReason::Body => "body",
            ProbeReason::Tls => "tls",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// What one probe saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeRecord {
    /// Wall-clock time the probe ended, for people.
    pub at: SystemTime,
    /// `at` on [`now_ms`]'s clock, for ages.
    pub at_ms: u64,
    pub latency: Duration,
    /// The HTTP status of the answer, when one came.
    pub status: Option<u16>,
    /// `None` when the probe passed.
    pub failure: Option<ProbeReason>,
    /// What passed ("SERVING") or what went wrong ("status 503: {...}").
    pub message: String,
    /// False when the result did not move the endpoint's health: a timeout while the proxy's
    /// own traffic to the endpoint succeeds (see `health`).
    pub counted: bool,
}

impl ProbeRecord {
    pub fn ok(&self) -> bool {
        self.failure.is_none()
    }
}

/// One endpoint's passive evidence (proxied requests) and what its probes saw.
#[derive(Default)]
pub struct EndpointStats {
    /// Proxied requests this endpoint answered 2xx/3xx. One relaxed add per such request (no
    /// clock on the request path: the health checks note when the count moves).
    answered_ok: AtomicU64,
    /// Failed probes by reason, for `cutover_probe_failures_total`.
    probe_failures: [AtomicU64; ProbeReason::ALL.len()],
    /// The latest probe's result; written once per probe, read by the API.
    last_probe: Mutex<Option<ProbeRecord>>,
}

impl EndpointStats {
    pub(crate) fn answered_ok(&self) {
        self.answered_ok.fetch_add(1, Relaxed);
    }

    /// Proxied requests this endpoint answered 2xx/3xx so far.
    pub fn answered_ok_count(&self) -> u64 {
        self.answered_ok.load(Relaxed)
    }

    pub fn record_probe(&self, r: ProbeRecord) {
        if let Some(why) = r.failure {
            self.probe_failures[why.index()].fetch_add(1, Relaxed);
        }
        *self.last_probe.lock().unwrap_or_else(|p| p.into_inner()) = Some(r);
    }

    pub fn last_probe(&self) -> Option<ProbeRecord> {
        self.last_probe.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn probe_failures(&self, why: ProbeReason) -> u64 {
        self.probe_failures[why.index()].load(Relaxed)
    }

    pub fn probe_failures_total(&self) -> u64 {
        ProbeReason::ALL.iter().map(|r| self.probe_failures(*r)).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_failures_count_by_reason_and_the_last_result_is_kept() {
        let e = EndpointStats::default();
        assert_eq!(e.last_probe(), None);
        assert_eq!(e.answered_ok_count(), 0);
        let rec = |failure| ProbeRecord {
            at: SystemTime::now(),
            at_ms: now_ms(),
            latency: Duration::from_millis(3),
            status: Some(503),
            failure,
            message: "status 503".into(),
            counted: true,
        };
        e.record_probe(rec(Some(ProbeReason::Status)));
        e.record_probe(rec(Some(ProbeReason::Timeout)));
        e.record_probe(rec(None));
        assert_eq!(e.probe_failures(ProbeReason::Status), 1);
        assert_eq!(e.probe_failures(ProbeReason::Timeout), 1);
        assert_eq!(e.probe_failures_total(), 2);
        assert!(e.last_probe().unwrap().ok());
        e.answered_ok();
        assert_eq!(e.answered_ok_count(), 1);
        let names: Vec<_> = ProbeReason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(
            names,
            ["timeout", "connect", "status", "grpc_not_serving", "body", "tls"]
        );
    }

    #[test]
    fn sketch_quantiles_are_within_a_bin_of_the_truth() {
        for (i, &us) in [0u64, 15, 16, 17, 1000, 2999, 65_536, 3_000_000, (1 << 32) - 1]
            .iter()
            .enumerate()
        {
            let (lo, hi) = sketch_bounds(sketch_bin(us));
            assert!(lo <= us && us < hi, "case {i}: {us} in [{lo}, {hi})");
            assert!(hi - lo <= 1.max(lo / 16), "case {i}: bin too wide");
        }
        let s = Sketch::default();
        // A healthy stream: 150 tokens x 20 ms, give or take.
        for i in 0..100 {
            s.observe(Duration::from_millis(2900 + i));
        }
        let w = s.snapshot();
        let p99 = w.quantile(0.99).unwrap();
        assert!(
            p99 >= Duration::from_millis(2900) && p99 <= Duration::from_millis(3200),
            "{p99:?}"
        );
        let p50 = w.quantile(0.5).unwrap();
        assert!(
            p50 >= Duration::from_millis(2850) && p50 <= Duration::from_millis(3100),
            "{p50:?}"
        );
        assert_eq!(w.count(), 100);
        assert_eq!(w.count_below(2_000_000), 0);
        assert_eq!(w.count_below(4_000_000), 100);
        let later = {
            s.observe(Duration::from_secs(10));
            s.snapshot()
        };
        let d = later.since(&w);
        assert_eq!(d.count(), 1);
        let q = d.quantile(0.5).unwrap();
        assert!(
            q >= Duration::from_millis(9400) && q <= Duration::from_millis(10_700),
            "{q:?}"
        );
        assert_eq!(SketchSnapshot::default().quantile(0.5), None);
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
