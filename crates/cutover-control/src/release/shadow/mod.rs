//! The shadowing phase's machinery: a [`Tap`](cutover_proxy::mirror::Tap) on the live
//! listener that copies a sample of eligible live exchanges, a bounded queue, and a worker
//! that sends each copy to the candidate color (and, for part of the deterministic ones, to
//! the live color again: the noise baseline), reassembles the answers and adds the pairs to
//! the comparison engine's [`Accumulator`]. Nothing here can slow a live request: the tap
//! only counts and try-sends; the worker has its own connections and deadlines.
//!
//! The same machinery runs after the switch in reverse (live = new, shadow = old) when
//! `shadow.reverse` is on.

mod send;
mod tap;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cutover_config::ShadowConfig;
use cutover_proxy::mirror::Captured;
use cutover_proxy::ColorRoute;
use cutover_release::shadow::{Accumulator, MirrorRules, ShadowReading, SkipReason};
use tokio::sync::mpsc;

use crate::service::ServiceCtl;

/// What the tap, the worker and the phase share.
pub(crate) struct Shared {
    pub(crate) cfg: ShadowConfig,
    rules: MirrorRules,
    acc: Mutex<Accumulator>,
    /// Per [`SkipReason::ALL`] index: counted on the request path, so atomics, not the lock.
    skipped: [AtomicU64; SkipReason::ALL.len()],
    paused: AtomicBool,
    /// The service: its counters for metrics (kept across releases), and its sample rate
    /// as configured now (a reload applies at once).
    svc: Arc<ServiceCtl>,
}

impl Shared {
    fn skip(&self, r: SkipReason) {
        if let Some(i) = SkipReason::ALL.iter().position(|x| *x == r) {
            self.skipped[i].fetch_add(1, Relaxed);
            self.svc.shadow_counts.skip(i);
        }
    }
}

/// A running shadow comparison; stops mirroring when dropped.
pub(crate) struct Shadow {
    shared: Arc<Shared>,
    svc: Arc<ServiceCtl>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Shadow {
    /// Starts mirroring `live`'s sampled traffic to `candidate`.
    pub(crate) fn start(
        svc: Arc<ServiceCtl>,
        live: Arc<ColorRoute>,
        candidate: Arc<ColorRoute>,
        cfg: &ShadowConfig,
        reverse: bool,
        reference: Option<Duration>,
    ) -> Shadow {
        let shared = Arc::new(Shared {
            cfg: cfg.clone(),
            rules: MirrorRules {
                paths: cfg.paths.clone(),
            },
            acc: Mutex::new(Accumulator::new(cfg.thresholds())),
            skipped: Default::default(),
            paused: AtomicBool::new(false),
            svc: svc.clone(),
        });
        svc.set_shadow_sample(f64::NAN);
        let (tx, rx) = mpsc::channel::<Captured>(cfg.queue);
        let tap = tap::ShadowTap::new(shared.clone(), tx);
        svc.proxy.set_tap(Some(Box::new(tap)));
        let sender = send::Sender::new(&svc, shared.clone(), live.clone(), candidate, reverse);
        let tasks = vec![
            tokio::spawn(sender.run(rx)),
            tokio::spawn(pause_on_slow_live(shared.clone(), live, reference)),
        ];
        tracing::info!(service = %svc.name, sample = cfg.sample, "shadow: mirroring live traffic");
        Shadow { shared, svc, tasks }
    }

    /// The figures so far, with every skip counted.
    pub(crate) fn reading(&self) -> ShadowReading {
        let mut r = self.shared.acc.lock().unwrap_or_else(|p| p.into_inner()).reading();
        for (i, reason) in SkipReason::ALL.iter().enumerate() {
            let n = self.shared.skipped[i].load(Relaxed);
            if n > 0 {
                r.skipped.insert(*reason, n);
            }
        }
        r
    }

    pub(crate) fn paused(&self) -> bool {
        self.shared.paused.load(Relaxed)
    }
}

impl Drop for Shadow {
    fn drop(&mut self) {
        self.svc.proxy.set_tap(None);
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// How often the live color's latency is compared with its value before the phase.
const PAUSE_CHECK: Duration = Duration::from_secs(2);

/// Mirroring pauses itself while the live color's median time to first token (streams) or
/// latency (plain answers) over the last check period is more than `pause_above` over
/// `reference` (its median just before the phase: see [`reference`]): shadow work shares the
/// machine (and, for the baseline, the live servers), and live users come first. Two slow
/// periods in a row pause, one that is not resumes, so one slow request does not.
async fn pause_on_slow_live(shared: Arc<Shared>, live: Arc<ColorRoute>, reference: Option<Duration>) {
    let Some(reference) = reference else { return };
    let mut last = live.stats.snapshot();
    let mut slow_periods = 0;
    let mut tick = tokio::time::interval(PAUSE_CHECK);
    tick.tick().await;
    loop {
        tick.tick().await;
        let now = live.stats.snapshot();
        let window = now.since(&last);
        last = now;
        let Some(current) = median(&window) else { continue };
        let slow = current.as_secs_f64() > reference.as_secs_f64() * (1.0 + shared.cfg.pause_above);
        slow_periods = if slow { slow_periods + 1 } else { 0 };
        let pause = slow_periods >= 2;
        if pause != shared.paused.swap(pause, Relaxed) {
            tracing::info!(
                paused = pause,
                before_ms = reference.as_secs_f64() * 1e3,
                now_ms = current.as_secs_f64() * 1e3,
                "shadow: live latency check"
            );
        }
    }
}

/// How long the live color is watched before mirroring starts, for the pause's reference.
pub(crate) const REFERENCE_WINDOW: Duration = Duration::from_secs(2);

/// The live color's median over the window since `before` (taken `REFERENCE_WINDOW` ago,
/// with no mirroring yet), or over its whole life when that window had too few answers;
/// `None` (never pause) for a color with almost no traffic.
pub(crate) fn reference(live: &ColorRoute, before: &cutover_proxy::StatsSnapshot) -> Option<Duration> {
    median(&live.stats.snapshot().since(before)).or_else(|| median(before))
}

/// The median time to first token, or of whole plain answers when there were no streams;
/// `None` with fewer than 10 samples (too few to act on).
fn median(s: &cutover_proxy::StatsSnapshot) -> Option<Duration> {
    let pick = if s.ttft.count() >= 10 { &s.ttft } else { &s.duration };
    (pick.count() >= 10).then(|| pick.quantile(0.5)).flatten()
}
