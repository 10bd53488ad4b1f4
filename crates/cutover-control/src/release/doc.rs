//! The release document: what `GET .../releases/{id}` returns and what the store keeps, one
//! JSON value rewritten at every transition.

use cutover_proxy::Color;
use cutover_release::{Gate, Outcome, Phase, Plan};
use serde::{Deserialize, Serialize};

/// One phase as it happened.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PhaseRecord {
    pub phase: Phase,
    pub started_at: String,
    pub ended_at: Option<String>,
    /// Milliseconds spent in the phase, once it ended.
    pub elapsed_ms: Option<u64>,
    pub detail: Option<String>,
}

impl PhaseRecord {
    pub(crate) fn begin(phase: Phase, at: String) -> PhaseRecord {
        PhaseRecord {
            phase,
            started_at: at,
            ended_at: None,
            elapsed_ms: None,
            detail: None,
        }
    }
}

/// A release as stored and served by the API.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReleaseDoc {
    /// 0 until the store assigned one (only between insert and the first update).
    pub id: i64,
    pub service: String,
    pub version: String,
    /// The color the new version goes to (the idle one when the release began).
    pub color: Color,
    pub previous_color: Option<Color>,
    pub previous_version: Option<String>,
    pub phase: Phase,
    pub outcome: Option<Outcome>,
    pub reason: Option<String>,
    pub plan: Plan,
    pub actor: String,
    pub created_at: String,
    pub updated_at: String,
    pub phases: Vec<PhaseRecord>,
    pub gates: Vec<Gate>,
    /// Time from the switch decision to the new route table being live, store commit included.
    pub switch_ms: Option<f64>,
    /// Time from the breach being seen to the old color being live again.
    pub rollback_ms: Option<f64>,
    pub generation: Option<u64>,
    /// When the old color is due to be scaled down (unix seconds), after completion.
    pub scale_down_at: Option<u64>,
    #[serde(default)]
    pub scaled_down: bool,
    /// What the `post_scale_down` hooks did (or why they failed), once they ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub post_scale_down: Option<String>,
    /// The old color is asleep (`standby = "sleep"`) since the switch.
    #[serde(default)]
    pub standby_sleeping: bool,
    /// The shadow comparison's figures and verdict, once the shadowing phase ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow: Option<cutover_release::shadow::ShadowReading>,
    /// Mirroring is paused while the live color is slower than before the phase.
    #[serde(default)]
    pub shadow_paused: bool,
    /// `shadow.reverse`: the comparison during the bake, new version live, old as shadow.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow_reverse: Option<cutover_release::shadow::ShadowReading>,
    /// The traffic mode: `all_at_once`, `canary` or `linear`.
    #[serde(default = "all_at_once")]
    pub traffic: String,
    /// The new color's share of the live traffic now (0 before the first step and after a
    /// return to the old color; 100 once it is live).
    #[serde(default)]
    pub weight: u8,
    /// A progressive release's steps as they happened, each with its gates at its end.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<StepRecord>,
}

fn all_at_once() -> String {
    "all_at_once".into()
}

/// One step of a progressive release.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepRecord {
    /// 1-based.
    pub step: u32,
    /// Of how many steps before the full switch.
    pub of: u32,
    /// The new color's share (percent) during the step.
    pub weight: u8,
    /// The generation the step was committed as (acked by every router in a fleet).
    pub generation: u64,
    pub started_at: String,
    pub ended_at: Option<String>,
    /// Requests the new color served during the step: its share, which the gates judged.
    pub requests: u64,
    /// `passed`, `failed`, `aborted`, or `running`.
    pub result: String,
    pub detail: Option<String>,
    /// Fleet mode: the routers' acks of the step's generation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sync: Option<serde_json::Value>,
}

/// What a new release starts from.
pub(crate) struct NewRelease<'a> {
    pub(crate) service: &'a str,
    pub(crate) version: &'a str,
    pub(crate) actor: &'a str,
    pub(crate) color: Color,
    pub(crate) previous_color: Option<Color>,
    pub(crate) previous_version: Option<String>,
    pub(crate) plan: Plan,
}

impl ReleaseDoc {
    pub(crate) fn new(r: NewRelease<'_>, now: String) -> ReleaseDoc {
        ReleaseDoc {
            id: 0,
            service: r.service.to_string(),
            version: r.version.to_string(),
            color: r.color,
            previous_color: r.previous_color,
            previous_version: r.previous_version,
            phase: Phase::Provisioning,
            outcome: None,
            reason: None,
            plan: r.plan,
            actor: r.actor.to_string(),
            created_at: now.clone(),
            updated_at: now.clone(),
            phases: vec![PhaseRecord::begin(Phase::Provisioning, now)],
            gates: Vec::new(),
            switch_ms: None,
            rollback_ms: None,
            generation: None,
            scale_down_at: None,
            scaled_down: false,
            post_scale_down: None,
            standby_sleeping: false,
            shadow: None,
            shadow_paused: false,
            shadow_reverse: None,
            traffic: all_at_once(),
            weight: 0,
            steps: Vec::new(),
        }
    }

    /// Ends the current phase with `detail` and moves to `to`; with an outcome the release
    /// ends there and `detail` becomes its reason.
    pub(crate) fn advance(&mut self, to: Phase, outcome: Option<Outcome>, detail: &str, elapsed_ms: u64, now: String) {
        if let Some(p) = self.phases.last_mut() {
            p.ended_at = Some(now.clone());
            p.elapsed_ms = Some(elapsed_ms);
            p.detail = Some(detail.to_string());
        }
        self.phase = to;
        self.outcome = outcome;
        if outcome.is_some() {
            self.reason = Some(detail.to_string());
        } else {
            self.phases.push(PhaseRecord::begin(to, now));
        }
    }

    /// The environment hooks see.
    pub(crate) fn hook_env(&self) -> Vec<(String, String)> {
        vec![
            ("CUTOVER_SERVICE".into(), self.service.clone()),
            ("CUTOVER_VERSION".into(), self.version.clone()),
            (
                "CUTOVER_PREVIOUS_VERSION".into(),
                self.previous_version.clone().unwrap_or_default(),
            ),
            ("CUTOVER_COLOR".into(), self.color.as_str().into()),
            ("CUTOVER_RELEASE_ID".into(), self.id.to_string()),
        ]
    }
}
