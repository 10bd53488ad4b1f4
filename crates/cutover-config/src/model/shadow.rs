//! `[services.NAME.release.shadow]`: the shadowing phase, which mirrors a sample of live
//! requests to the new color and compares its answers with the live ones before the switch.
//! The comparison's thresholds are the comparison engine's own type, embedded as
//! `thresholds`, so their defaults live in one place (beside their fields).

use serde::Deserialize;

pub use cutover_release::shadow::Thresholds as ShadowThresholds;

use crate::value::Duration;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShadowConfig {
    /// Share of eligible live requests mirrored, chosen deterministically per request.
    #[serde(default = "sample")]
    pub sample: f64,
    /// The longest the phase lasts; it ends earlier once every class seen has `min_pairs`
    /// pairs and the verdict is not inconclusive.
    #[serde(default = "duration")]
    pub duration: Duration,
    /// Fewer pairs than this is inconclusive, never a pass.
    #[serde(default = "min_pairs")]
    pub min_pairs: u64,
    /// Exact request paths that may be mirrored (side effects are never mirrored).
    #[serde(default = "paths")]
    pub paths: Vec<String>,
    /// A request or live answer longer than this is not mirrored (counted as
    /// `body_too_large`): the copy is taken as bytes pass, never beyond this.
    #[serde(default = "max_body_bytes")]
    pub max_body_bytes: usize,
    /// Mirrored requests in flight at once; more wait in the queue.
    #[serde(default = "max_in_flight")]
    pub max_in_flight: usize,
    /// Captured exchanges waiting for a mirror slot; a full queue drops (counted `queue_full`).
    #[serde(default = "queue")]
    pub queue: usize,
    /// Deadline of one mirrored request, its whole answer included.
    #[serde(default = "timeout")]
    pub timeout: Duration,
    /// Share of deterministic mirrored requests also sent to the live color a second time:
    /// the noise baseline (how much two answers of the same version differ). 0 turns it off
    /// (fixed thresholds, and the verdict says so).
    #[serde(default = "baseline")]
    pub baseline: f64,
    /// Mirroring pauses while the live color's time to first byte is this much above its
    /// value before the phase (0.10: 10%).
    #[serde(default = "pause_above")]
    pub pause_above: f64,
    /// What an inconclusive verdict at the end of `duration` does: `abort` (default: no
    /// evidence is no pass) or `continue`.
    #[serde(default)]
    pub on_inconclusive: ShadowInconclusive,
    /// After the switch, during the bake, compare the other way round (live = new, shadow
    /// = old) with the same gate; a failure rolls back.
    #[serde(default)]
    pub reverse: bool,
    #[serde(default)]
    pub thresholds: ShadowThresholds,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ShadowInconclusive {
    #[default]
    Abort,
    Continue,
}

fn sample() -> f64 {
    0.1
}
fn duration() -> Duration {
    Duration::from_secs(300)
}
fn min_pairs() -> u64 {
    50
}
fn paths() -> Vec<String> {
    cutover_release::shadow::MirrorRules::default().paths
}
fn max_body_bytes() -> usize {
    256 * 1024
}
fn max_in_flight() -> usize {
    8
}
fn queue() -> usize {
    64
}
fn timeout() -> Duration {
    Duration::from_secs(120)
}
fn baseline() -> f64 {
    0.25
}
fn pause_above() -> f64 {
    0.10
}

impl ShadowConfig {
    /// The first key whose value is out of range, with what is expected.
    pub(crate) fn invalid(&self) -> Option<(&'static str, String)> {
        let share = |v: f64| (0.0..=1.0).contains(&v);
        if !share(self.sample) {
            return Some(("sample", format!("must be between 0 and 1, got {}", self.sample)));
        }
        if !share(self.baseline) {
            return Some(("baseline", format!("must be between 0 and 1, got {}", self.baseline)));
        }
        if !(self.pause_above.is_finite() && self.pause_above > 0.0) {
            return Some((
                "pause_above",
                format!("must be a positive share, got {}", self.pause_above),
            ));
        }
        if self.min_pairs == 0 {
            return Some(("min_pairs", "must be at least 1".into()));
        }
        for (key, v) in [("max_in_flight", self.max_in_flight), ("queue", self.queue)] {
            if v == 0 {
                return Some((key, "must be at least 1".into()));
            }
        }
        if self.max_body_bytes < 1024 {
            return Some(("max_body_bytes", "must be at least 1024 bytes".into()));
        }
        if let Some(p) = self.paths.iter().find(|p| !p.starts_with('/')) {
            return Some(("paths", format!("{p:?} must start with '/'")));
        }
        self.thresholds.validate().err().map(|m| ("thresholds", m))
    }

    /// The engine's thresholds with the phase's own `min_pairs`.
    pub fn thresholds(&self) -> ShadowThresholds {
        ShadowThresholds {
            min_pairs: self.min_pairs,
            ..self.thresholds.clone()
        }
    }
}
