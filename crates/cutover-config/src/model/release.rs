//! `[services.NAME.release]`: how a release runs (warm-up, smoke checks, verification,
//! hooks, what the old color does after the switch). A table whose keys all have defaults
//! reads a missing key from its `Default`, right below it; the others name a function
//! beside the struct.

use serde::Deserialize;

use super::external::{PrometheusGate, ScrapeGate};
use super::health::{Expect, RequestSpec};
use super::shadow::ShadowConfig;
use super::traffic::{HeaderRouteConfig, StickyConfig, Traffic};
use super::webhooks::{ApprovalWebhookConfig, WebhookConfig};
use crate::value::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Promotion {
    #[default]
    Auto,
    Manual,
}

/// What the old color does once a release has switched away from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Standby {
    /// Stopped (managed) or marked stale (static) after `scale_down_delay`.
    #[default]
    Stop,
    /// Left up and warm: a rollback is one switch for as long as it runs.
    Keep,
    /// Put to sleep right after the switch (`POST /sleep?level=1`, vLLM's sleep mode frees
    /// accelerator memory); a rollback wakes it (`POST /wake_up`) before it switches.
    Sleep,
}

/// What verification does when the bake window ends with fewer than `min_requests`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum OnInconclusive {
    /// Keep the new version live and complete the release, recording it as inconclusive.
    #[default]
    Complete,
    /// Treat "not enough evidence" as a failure and roll back.
    Rollback,
}

/// A key left out takes its value from [`ReleaseConfig::default`].
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReleaseConfig {
    pub health_timeout: Duration,
    pub warmup: Option<WarmupConfig>,
    pub promotion: Promotion,
    /// With manual promotion: approve by itself after this long (unset: wait forever).
    pub auto_promote_after: Option<Duration>,
    pub scale_down_delay: Duration,
    pub drain_timeout: Duration,
    pub smoke: Vec<SmokeConfig>,
    pub verify: Option<VerifyConfig>,
    /// The shadowing phase (absent: no mirroring, the phase is skipped).
    pub shadow: Option<ShadowConfig>,
    pub hooks: HooksConfig,
    /// How traffic moves to the new color: `all_at_once` (default), a canary step, linear steps.
    pub traffic: Traffic,
    /// What keeps a client on one color while traffic is split (absent: a draw per request).
    pub sticky: Option<StickyConfig>,
    /// A header plus token that reaches the idle color on the main listener (absent: off).
    pub header_route: Option<HeaderRouteConfig>,
    /// Signed JSON POSTs on release events; never waited for.
    pub webhooks: Vec<WebhookConfig>,
    /// With manual promotion: a 2xx from this endpoint approves the release.
    pub approval_webhook: Option<ApprovalWebhookConfig>,
    /// What the old color does after a switch: `stop` (after `scale_down_delay`), `keep`
    /// (stays up), or `sleep` (vLLM sleep mode; woken for a rollback).
    pub standby: Standby,
    /// How long waking a sleeping color may take (every endpoint awake and healthy) before
    /// the switch or rollback that needed it fails, leaving live traffic where it was.
    pub wake_timeout: Duration,
    /// Deadline of each phase that has none of its own (warm-up, smoke, hooks).
    pub phase_timeout: Duration,
}

impl Default for ReleaseConfig {
    fn default() -> Self {
        ReleaseConfig {
            health_timeout: Duration::from_secs(600),
            warmup: None,
            promotion: Promotion::Auto,
            auto_promote_after: None,
            scale_down_delay: Duration::from_secs(600),
            drain_timeout: Duration::from_secs(300),
            smoke: Vec::new(),
            verify: None,
            shadow: None,
            hooks: HooksConfig::default(),
            traffic: Traffic::AllAtOnce,
            sticky: None,
            header_route: None,
            webhooks: Vec::new(),
            approval_webhook: None,
            standby: Standby::default(),
            wake_timeout: Duration::from_secs(60),
            phase_timeout: Duration::from_secs(300),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WarmupConfig {
    #[serde(default = "warmup_requests")]
    pub requests: u32,
    #[serde(default = "warmup_concurrency")]
    pub concurrency: u32,
    pub request: RequestSpec,
    /// Failed warm-up requests tolerated per endpoint (a 5xx or no answer); more abort the
    /// release before the switch.
    #[serde(default)]
    pub max_failures: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmokeConfig {
    pub name: String,
    pub request: RequestSpec,
    #[serde(default)]
    pub expect: Expect,
    /// Times the check is sent to each endpoint; every answer must pass. A build that fails
    /// a fraction of its requests is caught by repeating, not by one lucky answer.
    #[serde(default = "smoke_repeat")]
    pub repeat: u32,
}

fn warmup_requests() -> u32 {
    20
}
fn warmup_concurrency() -> u32 {
    2
}
fn smoke_repeat() -> u32 {
    1
}

/// A key left out takes its value from [`VerifyConfig::default`].
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VerifyConfig {
    pub bake: Duration,
    pub max_error_rate: f64,
    /// Whole-request p99 of plain answers (event streams are judged by the gates below).
    pub max_p99_latency: Option<Duration>,
    /// Time to first token of event streams.
    pub max_ttft_p50: Option<Duration>,
    pub max_ttft_p99: Option<Duration>,
    /// Stalls between a stream's events.
    pub max_token_gap_p99: Option<Duration>,
    /// The median stream's events per second.
    pub min_tokens_per_second: Option<f64>,
    pub min_requests: u64,
    pub auto_rollback: bool,
    pub on_inconclusive: OnInconclusive,
    /// PromQL gates read through the bake (see `external`).
    pub prometheus: Vec<PrometheusGate>,
    /// Gates on one metric of the new color's own `/metrics` endpoints.
    pub scrape: Vec<ScrapeGate>,
}

impl Default for VerifyConfig {
    fn default() -> Self {
        VerifyConfig {
            bake: Duration::from_secs(120),
            max_error_rate: 0.01,
            max_p99_latency: None,
            max_ttft_p50: None,
            max_ttft_p99: None,
            max_token_gap_p99: None,
            min_tokens_per_second: None,
            min_requests: 20,
            auto_rollback: true,
            on_inconclusive: OnInconclusive::default(),
            prometheus: Vec::new(),
            scrape: Vec::new(),
        }
    }
}

/// A key left out takes its value from [`HooksConfig::default`].
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HooksConfig {
    /// Run while provisioning, before cutover waits for health: for static environments,
    /// the user's own deploy of the idle color (`CUTOVER_ENDPOINTS` names its addresses).
    pub provision: Vec<Vec<String>>,
    pub pre_switch: Vec<Vec<String>>,
    pub post_switch: Vec<Vec<String>>,
    pub on_rollback: Vec<Vec<String>>,
    /// Run once the old color has stopped after `scale_down_delay`: the contract step of an
    /// expand/contract migration, safe only once the old version is gone.
    pub post_scale_down: Vec<Vec<String>>,
    pub timeout: Duration,
}

impl Default for HooksConfig {
    fn default() -> Self {
        HooksConfig {
            provision: Vec::new(),
            pre_switch: Vec::new(),
            post_switch: Vec::new(),
            on_rollback: Vec::new(),
            post_scale_down: Vec::new(),
            timeout: Duration::from_secs(60),
        }
    }
}
