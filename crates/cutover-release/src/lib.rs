//! The release state machine and its gates: pure logic, no I/O, no clock.
//!
//! A release moves through [`Phase`]s in a fixed order. [`Release::apply`] takes an [`Event`]
//! and either moves to the next phase or refuses with the reason; the controller commits each
//! accepted transition to the store before acting on it. [`judge`] turns a window of the new
//! color's statistics into gate readings with a worst-wins verdict. [`shadow`] is the shadow
//! phase's comparison engine: which requests may be mirrored, how a pair of answers compares,
//! and the shadow gate's verdict against a noise baseline.

#![forbid(unsafe_code)]

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub mod external;
pub mod shadow;

/// Where a release is. Phases before [`Phase::Switching`] leave live traffic untouched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Provisioning,
    WaitingHealthy,
    WarmingUp,
    SmokeTesting,
    /// Live requests mirrored to the new color and its answers compared with the live
    /// color's (`release.shadow`); only when something is live to mirror.
    Shadowing,
    AwaitingApproval,
    PreSwitchHooks,
    /// A progressive release (canary, linear) gives the new color a share of the live
    /// traffic, one stored step at a time, each judged by the gates; entered by
    /// [`Event::Step`], left by `Done` for the full switch.
    Stepping,
    Switching,
    Verifying,
    Completed,
    Aborted,
    RolledBack,
}

impl Phase {
    pub fn is_terminal(self) -> bool {
        matches!(self, Phase::Completed | Phase::Aborted | Phase::RolledBack)
    }

    /// True while live traffic has not been touched: an abort is still a no-op for users.
    pub fn is_pre_switch(self) -> bool {
        self < Phase::Stepping
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Provisioning => "provisioning",
            Phase::WaitingHealthy => "waiting_healthy",
            Phase::WarmingUp => "warming_up",
            Phase::SmokeTesting => "smoke_testing",
            Phase::Shadowing => "shadowing",
            Phase::AwaitingApproval => "awaiting_approval",
            Phase::PreSwitchHooks => "pre_switch_hooks",
            Phase::Stepping => "stepping",
            Phase::Switching => "switching",
            Phase::Verifying => "verifying",
            Phase::Completed => "completed",
            Phase::Aborted => "aborted",
            Phase::RolledBack => "rolled_back",
        }
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a release ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Completed,
    Aborted,
    RolledBack,
    /// cutover restarted while the release ran; routing stayed as last committed.
    Interrupted,
}

/// Something that happened to a release.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The current phase finished its work.
    Done,
    /// The current phase failed (deadline, smoke check, hook, gate, ...).
    Failed(String),
    /// A person approved the switch.
    Approve,
    /// A person (or CI) asked to stop.
    Abort(String),
    /// cutover restarted; the release cannot continue.
    Interrupted,
    /// A progressive release's next step (a new weight) after the pre-switch hooks or the
    /// previous step.
    Step,
}

/// Fixed facts about a release that decide its path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// Wait in `awaiting_approval` for a person.
    pub manual: bool,
    /// Something was live when the release began: there is a color to roll back to. The first
    /// release of a service goes straight to live after its checks and is not verified.
    pub has_previous: bool,
    /// Mirror live traffic to the new color and compare before the switch (needs something
    /// live to mirror: ignored on a first release). Absent in documents written before the
    /// phase existed.
    #[serde(default)]
    pub shadow: bool,
}

/// The state of one release as the machine sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Release {
    pub plan: Plan,
    pub phase: Phase,
    pub outcome: Option<Outcome>,
}

/// A refused event: what was asked, and why it cannot happen now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub phase: Phase,
    pub reason: String,
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (release is {})", self.reason, self.phase)
    }
}

impl Release {
    pub fn new(plan: Plan) -> Release {
        Release {
            plan,
            phase: Phase::Provisioning,
            outcome: None,
        }
    }

    fn after(&self, p: Phase) -> Phase {
        match p {
            Phase::Provisioning => Phase::WaitingHealthy,
            Phase::WaitingHealthy => Phase::WarmingUp,
            Phase::WarmingUp => Phase::SmokeTesting,
            Phase::SmokeTesting if self.plan.shadow && self.plan.has_previous => Phase::Shadowing,
            Phase::SmokeTesting | Phase::Shadowing if self.plan.manual && self.plan.has_previous => {
                Phase::AwaitingApproval
            }
            Phase::SmokeTesting | Phase::Shadowing | Phase::AwaitingApproval => Phase::PreSwitchHooks,
            Phase::PreSwitchHooks | Phase::Stepping => Phase::Switching,
            Phase::Switching if self.plan.has_previous => Phase::Verifying,
            Phase::Switching | Phase::Verifying => Phase::Completed,
            terminal => terminal,
        }
    }

    /// Applies `event`; on success returns the new phase (already stored in `self`).
    pub fn apply(&mut self, event: &Event) -> Result<Phase, Refused> {
        let refuse = |reason: &str| {
            Err(Refused {
                phase: self.phase,
                reason: reason.to_string(),
            })
        };
        if self.outcome.is_some() {
            return refuse("the release has already ended");
        }
        let (next, outcome) = match event {
            Event::Interrupted => (self.phase, Some(Outcome::Interrupted)),
            Event::Done if self.phase == Phase::AwaitingApproval => {
                return refuse("waiting for approval, not for work")
            }
            Event::Done => {
                let n = self.after(self.phase);
                (n, (n == Phase::Completed).then_some(Outcome::Completed))
            }
            Event::Approve if self.phase == Phase::AwaitingApproval => (Phase::PreSwitchHooks, None),
            Event::Approve => return refuse("only a release awaiting approval can be approved"),
            Event::Step if matches!(self.phase, Phase::PreSwitchHooks | Phase::Stepping) => (Phase::Stepping, None),
            Event::Step => return refuse("steps come after the pre-switch hooks, before the full switch"),
            // A step gave the new color a share: aborting returns it to the old color.
            Event::Abort(_) if self.phase == Phase::Stepping => (Phase::Aborted, Some(Outcome::Aborted)),
            Event::Abort(_) if self.phase.is_pre_switch() => (Phase::Aborted, Some(Outcome::Aborted)),
            Event::Abort(_) => return refuse("traffic has already switched: roll back instead"),
            // A failed switch changed nothing (the store refused or the target was unhealthy).
            // A failing step had live traffic: that is a rollback.
            Event::Failed(_) if self.phase == Phase::Stepping => (Phase::RolledBack, Some(Outcome::RolledBack)),
            Event::Failed(_) if self.phase <= Phase::Switching => (Phase::Aborted, Some(Outcome::Aborted)),
            Event::Failed(_) => (Phase::RolledBack, Some(Outcome::RolledBack)),
        };
        self.phase = next;
        self.outcome = outcome;
        Ok(next)
    }
}

/// A gate's reading, ordered worst-last: a verdict takes the worst of its gates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GateResult {
    Passing,
    /// Not enough evidence to judge (too few requests).
    Inconclusive,
    Failing,
}

/// One gate's reading.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Gate {
    pub name: String,
    pub value: Option<f64>,
    pub limit: f64,
    pub result: GateResult,
    /// External gates only: the PromQL query (as sent) or the scraped metric and its
    /// reduction, so the document says what was read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
}

/// What the new color did during the window being judged.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Window {
    pub requests: u64,
    /// Failed requests: 5xx, bodies cut short, answers without a generation.
    pub errors: u64,
    /// Whole-request latency of plain (not streaming) answers.
    pub p99: Option<Duration>,
    /// Time to first token of event streams.
    pub ttft_p50: Option<Duration>,
    pub ttft_p99: Option<Duration>,
    /// Stalls between a stream's events.
    pub token_gap_p99: Option<Duration>,
    /// The median complete stream's events (tokens) per second.
    pub tokens_per_second: Option<f64>,
    /// No endpoint of the new color is healthy.
    pub all_unhealthy: bool,
    /// Endpoints of the new color that take traffic (healthy, or not checked yet): the
    /// `healthy_endpoints` gate's reading.
    pub healthy_endpoints: u32,
}

/// Limits the window is judged against; `None` turns a gate off.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Limits {
    pub max_error_rate: f64,
    pub max_p99: Option<Duration>,
    pub min_requests: u64,
    pub max_ttft_p50: Option<Duration>,
    pub max_ttft_p99: Option<Duration>,
    pub max_token_gap_p99: Option<Duration>,
    pub min_tokens_per_second: Option<f64>,
}

/// A duration as a gate value: seconds, infinite for "past the last bound".
fn secs(d: Duration) -> f64 {
    if d == Duration::MAX {
        f64::INFINITY
    } else {
        d.as_secs_f64()
    }
}

/// A ceiling gate on a duration: failing above `max` (with enough requests), inconclusive
/// without a reading or without enough requests.
fn ceiling(
    name: &str,
    what: &str,
    value: Option<Duration>,
    max: Duration,
    enough: bool,
    reasons: &mut Vec<String>,
) -> Gate {
    let result = match value {
        Some(v) if v > max && enough => {
            reasons.push(format!("{what} {v:.2?} > {max:?}"));
            GateResult::Failing
        }
        Some(_) if enough => GateResult::Passing,
        _ => GateResult::Inconclusive,
    };
    Gate {
        name: name.into(),
        value: value.map(secs),
        limit: max.as_secs_f64(),
        result,
        query: None,
    }
}

/// Gate readings and the verdict with its reason.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    pub gates: Vec<Gate>,
    pub result: GateResult,
    pub reason: String,
}

/// Judges a window. Too few requests make the rate and latency gates inconclusive, never
/// failing: "no data" is not evidence of a bad version. All endpoints unhealthy fails at once.
pub fn judge(w: &Window, l: &Limits) -> Verdict {
    let enough = w.requests >= l.min_requests;
    let mut reasons = Vec::new();
    let mut gates = vec![
        requests_gate(w, l.min_requests, enough, &mut reasons),
        error_rate_gate(w, l.max_error_rate, enough, &mut reasons),
    ];
    if let Some(max) = l.max_p99 {
        gates.push(p99_gate(w, max, enough, &mut reasons));
    }
    for (name, what, value, max) in [
        ("ttft_p50", "time to first token p50", w.ttft_p50, l.max_ttft_p50),
        ("ttft_p99", "time to first token p99", w.ttft_p99, l.max_ttft_p99),
        (
            "token_gap_p99",
            "inter-token gap p99",
            w.token_gap_p99,
            l.max_token_gap_p99,
        ),
    ] {
        if let Some(max) = max {
            gates.push(ceiling(name, what, value, max, enough, &mut reasons));
        }
    }
    if let Some(min) = l.min_tokens_per_second {
        gates.push(tokens_per_second_gate(w, min, enough, &mut reasons));
    }
    gates.push(healthy_endpoints_gate(w));
    if w.all_unhealthy {
        // First: it is the cause, whatever else the window shows.
        reasons.insert(0, "every endpoint of the new color is unhealthy".into());
    }

    let result = gates.iter().map(|g| g.result).max().unwrap_or(GateResult::Passing);
    let reason = match result {
        GateResult::Passing => format!("all gates passing over {} requests", w.requests),
        _ => reasons.join("; "),
    };
    Verdict { gates, result, reason }
}

/// The request count against `min_requests`: too few is inconclusive, never failing.
fn requests_gate(w: &Window, min_requests: u64, enough: bool, reasons: &mut Vec<String>) -> Gate {
    if !enough {
        reasons.push(format!(
            "only {} requests, fewer than min_requests {min_requests}",
            w.requests
        ));
    }
    Gate {
        name: "requests".into(),
        value: Some(w.requests as f64),
        limit: min_requests as f64,
        result: if enough {
            GateResult::Passing
        } else {
            GateResult::Inconclusive
        },
        query: None,
    }
}

/// Errors over requests against `max_error_rate`; a window without requests has no reading.
fn error_rate_gate(w: &Window, max_error_rate: f64, enough: bool, reasons: &mut Vec<String>) -> Gate {
    let rate = (w.requests > 0).then(|| w.errors as f64 / w.requests as f64);
    let result = match rate {
        Some(r) if r > max_error_rate && enough => {
            reasons.push(format!(
                "error rate {:.1}% > {:.1}% over {} requests",
                r * 100.0,
                max_error_rate * 100.0,
                w.requests
            ));
            GateResult::Failing
        }
        _ if !enough => GateResult::Inconclusive,
        _ => GateResult::Passing,
    };
    Gate {
        name: "error_rate".into(),
        value: rate,
        limit: max_error_rate,
        query: None,
        result,
    }
}

/// The p99 latency of plain answers against `max_p99`. A window of streams alone has no
/// reading, which is no failure.
fn p99_gate(w: &Window, max: Duration, enough: bool, reasons: &mut Vec<String>) -> Gate {
    let result = match w.p99 {
        Some(p) if p > max && enough => {
            reasons.push(format!("p99 latency {p:.2?} > {max:?} over {} requests", w.requests));
            GateResult::Failing
        }
        _ if !enough => GateResult::Inconclusive,
        _ => GateResult::Passing,
    };
    Gate {
        name: "p99_latency".into(),
        value: w.p99.map(secs),
        limit: max.as_secs_f64(),
        query: None,
        result,
    }
}

/// The median stream's tokens per second against its floor: inconclusive without a reading.
fn tokens_per_second_gate(w: &Window, min: f64, enough: bool, reasons: &mut Vec<String>) -> Gate {
    let result = match w.tokens_per_second {
        Some(t) if t < min && enough => {
            reasons.push(format!("{t:.1} tokens/s per stream (median) < {min}"));
            GateResult::Failing
        }
        Some(_) if enough => GateResult::Passing,
        _ => GateResult::Inconclusive,
    };
    Gate {
        name: "tokens_per_second".into(),
        value: w.tokens_per_second,
        limit: min,
        query: None,
        result,
    }
}

/// Endpoints that take traffic; all unhealthy fails whatever the request count (its reason
/// is added by `judge`, first).
fn healthy_endpoints_gate(w: &Window) -> Gate {
    Gate {
        name: "healthy_endpoints".into(),
        value: Some(if w.all_unhealthy {
            0.0
        } else {
            f64::from(w.healthy_endpoints)
        }),
        limit: 1.0,
        result: if w.all_unhealthy {
            GateResult::Failing
        } else {
            GateResult::Passing
        },
        query: None,
    }
}

#[cfg(test)]
mod tests;
