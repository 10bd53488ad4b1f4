//! Verification after the switch: the new color's own proxy metrics, since the switch, judged
//! against the gates every tick for the bake window. A failing gate rolls back within one tick.

use std::sync::Arc;
use std::time::Duration;

use cutover_config::{OnInconclusive, VerifyConfig};
use cutover_proxy::{ColorRoute, Health, StatsSnapshot};
use cutover_release::{judge, GateResult, Limits, Verdict, Window};
use tokio::time::Instant;

use super::external::{ExternalGates, Subst};
use super::shadowing::decide as decide_shadow;
use super::ReleaseRun;
use crate::release::shadow::Shadow;
use cutover_config::ShadowConfig;
use cutover_release::external::merge as merge_external;

/// How often the gates are evaluated: the bound on the time from a breach to the rollback.
const TICK: Duration = Duration::from_millis(200);
/// How often the gate readings are written to the store while they change.
const PERSIST_EVERY: Duration = Duration::from_secs(2);

pub(crate) fn default_verify() -> VerifyConfig {
    // The same defaults a `[verify]` table with no keys gets.
    toml::from_str("").expect("empty table deserializes with defaults")
}

/// What one evaluation decides: go on, or end with the detail (`Ok`) or a rollback reason.
fn decide(verdict: &Verdict, v: &VerifyConfig, bake: Duration, done: bool) -> Option<Result<String, String>> {
    match verdict.result {
        GateResult::Failing if v.auto_rollback => Some(Err(verdict.reason.clone())),
        GateResult::Failing if done => Some(Ok(format!(
            "gates failing but auto_rollback is off: {}",
            verdict.reason
        ))),
        GateResult::Inconclusive if done => Some(match v.on_inconclusive {
            OnInconclusive::Complete => Ok(format!(
                "inconclusive, completed as configured (on_inconclusive = \"complete\"): {}",
                verdict.reason
            )),
            OnInconclusive::Rollback => Err(format!(
                "inconclusive, rolled back as configured (on_inconclusive = \"rollback\"): {}",
                verdict.reason
            )),
        }),
        GateResult::Passing if done => Some(Ok(format!(
            "bake of {} passed: {}",
            cutover_config::Duration(bake),
            verdict.reason
        ))),
        _ => None,
    }
}

/// What the new color did since `baseline`, as the gates read it.
fn window(route: &ColorRoute, baseline: &StatsSnapshot) -> Window {
    let w = route.stats.snapshot().since(baseline);
    Window {
        requests: w.requests,
        errors: w.failed(),
        p99: w.duration.quantile(0.99),
        ttft_p50: w.ttft.quantile(0.5),
        ttft_p99: w.ttft.quantile(0.99),
        token_gap_p99: w.token_gap.quantile(0.99),
        tokens_per_second: w.tokens_per_second(),
        all_unhealthy: route.endpoints().iter().all(|e| e.health() == Health::Unhealthy),
        healthy_endpoints: route
            .endpoints()
            .iter()
            .filter(|e| e.health() != Health::Unhealthy)
            .count() as u32,
    }
}

/// Why judging a step stopped before its bake ended, besides its gates.
#[derive(Debug)]
pub(super) enum Halt {
    /// A gate failed (or an exit of the new color's processes): roll back.
    Breach(String),
    /// Someone aborted the release.
    Aborted(String),
    /// The route table changed under the step: someone rolled back (or switched) by hand.
    Overridden(String),
}

fn limits_of(v: &VerifyConfig) -> Limits {
    Limits {
        max_error_rate: v.max_error_rate,
        max_p99: v.max_p99_latency.map(|d| d.get()),
        min_requests: v.min_requests,
        max_ttft_p50: v.max_ttft_p50.map(|d| d.get()),
        max_ttft_p99: v.max_ttft_p99.map(|d| d.get()),
        max_token_gap_p99: v.max_token_gap_p99.map(|d| d.get()),
        min_tokens_per_second: v.min_tokens_per_second,
    }
}

impl ReleaseRun {
    /// Watches the new color for the bake window. `Err` carries the reason to roll back.
    pub(super) async fn verify(&mut self, route: &Arc<ColorRoute>, baseline: StatsSnapshot) -> Result<String, String> {
        let bake = self
            .svc
            .cfg()
            .release
            .verify
            .clone()
            .unwrap_or_else(default_verify)
            .bake
            .get();
        let reverse = self.reverse_shadow(route);
        self.judge(route, baseline, bake, reverse, None)
            .await
            .map_err(|h| match h {
                Halt::Breach(r) | Halt::Aborted(r) | Halt::Overridden(r) => r,
            })
    }

    /// Judges the new color's own window since `baseline` every tick for `bake`: the gates
    /// of `[verify]` at every step and after the full switch. `step`: the generation a
    /// progressive release's step committed; then an abort or a change of the route table
    /// also ends the judging.
    pub(super) async fn judge(
        &mut self,
        route: &Arc<ColorRoute>,
        baseline: StatsSnapshot,
        bake: Duration,
        reverse: Option<(Shadow, ShadowConfig)>,
        step: Option<u64>,
    ) -> Result<String, Halt> {
        let v = self.svc.cfg().release.verify.clone().unwrap_or_else(default_verify);
        let limits = limits_of(&v);
        let until = Instant::now() + bake;
        let mut last_persist = Instant::now();
        let mut tick = tokio::time::interval(TICK);
        let external = self.external_gates(route, &v);
        loop {
            tick.tick().await;
            if let Some(e) = self.exited() {
                return Err(Halt::Breach(self.exit_reason(&e)));
            }
            if let Some(g) = step {
                self.step_interrupted(g)?;
            }
            if let Some((shadow, cfg)) = &reverse {
                let reading = shadow.reading();
                let failed = matches!(decide_shadow(&reading, cfg, false), Some(Err(_)));
                let reason = format!(
                    "reverse shadow comparison (old version as the shadow) failed: {}",
                    reading.reason
                );
                self.doc(|d| d.shadow_reverse = Some(reading));
                if failed {
                    return Err(Halt::Breach(reason));
                }
            }
            let window = window(route, &baseline);
            let verdict = merge_external(judge(&window, &limits), &external.readings());
            self.doc(|d| {
                d.gates = verdict.gates.clone();
                // The step's own count; after the full switch the steps are history.
                if let (Some(s), Some(_)) = (d.steps.last_mut(), step) {
                    s.requests = window.requests;
                }
            });
            if last_persist.elapsed() > PERSIST_EVERY {
                self.persist().await;
                last_persist = Instant::now();
            }
            if let Some(end) = decide(&verdict, &v, bake, Instant::now() >= until) {
                return end.map_err(Halt::Breach);
            }
        }
    }

    /// During a step: an abort, or a route table that is no longer the step's own.
    fn step_interrupted(&self, generation: u64) -> Result<(), Halt> {
        if let Some(why) = self.abort_rx.borrow().clone() {
            return Err(Halt::Aborted(why));
        }
        let now = self.svc.proxy.table().generation;
        if now != generation {
            return Err(Halt::Overridden(format!(
                "the route table changed under the step (generation {generation} became {now}): a manual rollback or switch ended the progressive release"
            )));
        }
        Ok(())
    }
}

impl ReleaseRun {
    /// The PromQL and scrape gates of the bake, polling from now on for the new color.
    fn external_gates(&self, route: &Arc<ColorRoute>, v: &VerifyConfig) -> ExternalGates {
        let (service, color, version) = self.doc(|d| (d.service.clone(), d.color.to_string(), d.version.clone()));
        let s = Subst {
            service: &service,
            color: &color,
            version: &version,
        };
        ExternalGates::start(&self.svc, route, &s, v)
    }

    /// With `shadow.reverse`, the bake also mirrors the new live color's traffic to the old
    /// one (still warm) and compares, old answers standing in for the shadow: a regression
    /// the phase before the switch missed rolls back like any failing gate.
    fn reverse_shadow(&self, new_live: &Arc<ColorRoute>) -> Option<(Shadow, ShadowConfig)> {
        let cfg = self.svc.cfg().release.shadow.clone().filter(|c| c.reverse)?;
        let old = self.doc(|d| d.previous_color).and_then(|c| self.svc.route(c))?;
        // The new color has little history of its own yet: its whole life is the reference.
        let reference = crate::release::shadow::reference(new_live, &new_live.stats.snapshot());
        Some((
            Shadow::start(self.svc.clone(), new_live.clone(), old, &cfg, true, reference),
            cfg,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_verification_matches_the_documented_defaults() {
        let v = default_verify();
        assert_eq!(
            (
                v.bake.get().as_secs(),
                v.max_error_rate,
                v.min_requests,
                v.auto_rollback
            ),
            (120, 0.01, 20, true)
        );
    }
}
