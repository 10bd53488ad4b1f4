//! The shadowing phase: mirror a sample of live traffic to the new color and compare its
//! answers with the live ones until the verdict is clear or `duration` is spent. A failing
//! verdict aborts before the switch (live traffic never saw the new version).

use std::sync::Arc;
use std::time::Duration;

use cutover_config::{ShadowConfig, ShadowInconclusive};
use cutover_proxy::ColorRoute;
use cutover_release::shadow::ShadowReading;
use cutover_release::GateResult;
use tokio::time::Instant;

use super::{ReleaseRun, Stop};
use crate::base::error::{FailureKind, StepError, StepFailure, StepResult};
use crate::release::shadow::{self, Shadow};

/// How often the verdict is read (and abort and exits checked).
const TICK: Duration = Duration::from_millis(250);
/// How often the reading is written to the store while the phase runs.
const PERSIST_EVERY: Duration = Duration::from_secs(2);

/// Whether the reading settles the phase now: `Some(Ok)` passes, `Some(Err)` fails.
pub(crate) fn decide(r: &ShadowReading, cfg: &ShadowConfig, time_up: bool) -> Option<StepResult> {
    let t = cfg.thresholds();
    // A deterministic class with too few baseline pairs yet would be judged on fixed
    // thresholds, which two noisy answers of the same version can fail: wait for the
    // baseline (never past `duration`) unless it is off.
    let waiting_for_baseline = cfg.baseline > 0.0
        && r.classes
            .iter()
            .any(|c| c.class == "deterministic_chat" && c.pairs > 0 && c.baseline_pairs < t.min_baseline_pairs);
    // A pass needs every class that was seen to be judged (a class with too few pairs could
    // still fail: it is no pass, even at the end); a failure of any judged class is final.
    let unjudged = r.classes.iter().find(|c| c.pairs > 0 && !c.judged);
    let enough = unjudged.is_none() && r.pairs >= t.min_pairs;
    match r.result {
        GateResult::Failing if !waiting_for_baseline || time_up => {
            Some(Err(gate_failed(format!("shadow comparison failed: {}", r.reason))))
        }
        GateResult::Passing if enough && (!waiting_for_baseline || time_up) => Some(Ok(format!(
            "shadow comparison passed over {} pairs ({} baseline): {}",
            r.pairs, r.baseline_pairs, r.reason
        ))),
        _ if !time_up => None,
        _ => {
            let why = match unjudged {
                Some(c) => format!(
                    "{} has only {} of min_pairs {} pairs; {}",
                    c.class, c.pairs, t.min_pairs, r.reason
                ),
                None => r.reason.clone(),
            };
            Some(inconclusive(cfg, why))
        }
    }
}

/// The end of `duration` without a verdict: what `on_inconclusive` says.
fn inconclusive(cfg: &ShadowConfig, why: String) -> StepResult {
    match cfg.on_inconclusive {
        ShadowInconclusive::Abort => Err(gate_failed(format!(
            "shadow comparison inconclusive after {} (aborted as configured, on_inconclusive = \"abort\"): {why}",
            cfg.duration
        ))),
        ShadowInconclusive::Continue => Ok(format!(
            "shadow comparison inconclusive after {}, continued as configured: {why}",
            cfg.duration
        )),
    }
}

fn gate_failed(reason: String) -> StepFailure {
    StepFailure::new(FailureKind::Gate, reason)
}

impl ReleaseRun {
    /// Runs the phase; `Ok` is the phase's detail.
    pub(super) async fn shadowing(&mut self, candidate: &Arc<ColorRoute>) -> Result<String, Stop> {
        let phase = self.machine.phase;
        let fail = |kind: FailureKind, reason: String| Stop::Failed(StepError::new(phase, kind, reason));
        let cfg = self
            .svc
            .cfg()
            .release
            .shadow
            .clone()
            .ok_or_else(|| fail(FailureKind::Refused, "the shadowing phase needs release.shadow".into()))?;
        let live = self
            .svc
            .live()
            .and_then(|c| self.svc.route(c))
            .ok_or_else(|| fail(FailureKind::Refused, "nothing is live to mirror".into()))?;
        // The pause compares live latency with what it was just before mirroring began.
        let before = live.stats.snapshot();
        tokio::time::sleep(shadow::REFERENCE_WINDOW).await;
        let reference = shadow::reference(&live, &before);
        let shadow = Shadow::start(self.svc.clone(), live, candidate.clone(), &cfg, false, reference);
        let until = Instant::now() + cfg.duration.get();
        let mut last_persist = Instant::now();
        let mut tick = tokio::time::interval(TICK);
        loop {
            tick.tick().await;
            if let Some(why) = self.abort_rx.borrow().clone() {
                return Err(Stop::Aborted(why));
            }
            if let Some(e) = self.exited() {
                return Err(fail(FailureKind::Exited, self.exit_reason(&e)));
            }
            let reading = shadow.reading();
            let end = decide(&reading, &cfg, Instant::now() >= until);
            let paused = shadow.paused();
            self.doc(|d| {
                d.shadow = Some(reading);
                d.shadow_paused = paused;
            });
            if last_persist.elapsed() > PERSIST_EVERY || end.is_some() {
                self.persist().await;
                last_persist = Instant::now();
            }
            match end {
                Some(Ok(detail)) => return Ok(detail),
                Some(Err(failure)) => return Err(Stop::Failed(StepError::during(phase, failure))),
                None => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cutover_release::shadow::ClassReading;

    fn cfg(baseline: f64, on_inconclusive: &str) -> ShadowConfig {
        toml::from_str(&format!(
            "min_pairs = 10\nbaseline = {baseline}\non_inconclusive = \"{on_inconclusive}\""
        ))
        .unwrap()
    }

    fn class(name: &str, pairs: u64, baseline_pairs: u64, judged: bool) -> ClassReading {
        ClassReading {
            class: name.into(),
            pairs,
            baseline_pairs,
            baseline_used: baseline_pairs > 0,
            judged,
            result: GateResult::Passing,
            metrics: vec![],
        }
    }

    fn reading(result: GateResult, classes: Vec<ClassReading>) -> ShadowReading {
        ShadowReading {
            result,
            reason: "r".into(),
            pairs: classes.iter().map(|c| c.pairs).max().unwrap_or(0),
            baseline_pairs: 0,
            skipped: Default::default(),
            classes,
            worst: vec![],
        }
    }

    #[test]
    fn a_pass_waits_for_every_class_seen_to_be_judged() {
        let c = cfg(0.0, "abort");
        let partly = reading(
            GateResult::Passing,
            vec![class("deterministic_chat", 40, 0, true), class("json", 3, 0, false)],
        );
        assert!(
            decide(&partly, &c, false).is_none(),
            "a class with 3 pairs could still fail"
        );
        let e = decide(&partly, &c, true).unwrap().unwrap_err();
        assert!(
            e.reason.contains("json has only 3 of min_pairs 10"),
            "no pass at the end either: {e}"
        );
        let cont = cfg(0.0, "continue");
        assert!(
            matches!(decide(&partly, &cont, true), Some(Ok(_))),
            "continue: as configured"
        );
        let all = reading(GateResult::Passing, vec![class("json", 12, 0, true)]);
        assert!(matches!(decide(&all, &c, false), Some(Ok(_))));
    }

    #[test]
    fn a_failure_waits_for_the_noise_baseline_when_one_is_configured() {
        let waiting = reading(GateResult::Failing, vec![class("deterministic_chat", 50, 5, true)]);
        assert!(
            decide(&waiting, &cfg(0.25, "abort"), false).is_none(),
            "5 baseline pairs of 20"
        );
        assert!(matches!(decide(&waiting, &cfg(0.25, "abort"), true), Some(Err(_))));
        assert!(
            matches!(decide(&waiting, &cfg(0.0, "abort"), false), Some(Err(_))),
            "no baseline: fixed thresholds"
        );
        let ready = reading(GateResult::Failing, vec![class("deterministic_chat", 50, 25, true)]);
        let e = decide(&ready, &cfg(0.25, "abort"), false).unwrap().unwrap_err();
        assert!(e.reason.starts_with("shadow comparison failed: "), "{e}");
    }

    #[test]
    fn inconclusive_at_the_end_follows_on_inconclusive_and_never_ends_early() {
        let r = reading(GateResult::Inconclusive, vec![class("sampled_chat", 4, 0, false)]);
        assert!(decide(&r, &cfg(0.0, "abort"), false).is_none());
        let e = decide(&r, &cfg(0.0, "abort"), true).unwrap().unwrap_err();
        assert!(e.reason.contains("inconclusive"), "{e}");
        assert!(matches!(decide(&r, &cfg(0.0, "continue"), true), Some(Ok(_))));
    }
}
