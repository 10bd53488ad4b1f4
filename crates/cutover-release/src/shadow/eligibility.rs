//! Whether a live request may be mirrored to the shadow color, and the reason when not.
//!
//! A mirror duplicates the request: anything that writes (stores a response, uploads a file,
//! starts a batch or a run) or makes the server act on the world (server-executed tools) would
//! happen twice, so it is refused whatever the configured paths say.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::classify::{classify, Profile};

/// Why a request was not mirrored; every skipped request is counted under one of these.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum SkipReason {
    /// Not a POST: model requests are POSTs; nothing else is worth comparing.
    MethodNotMirrored,
    /// The path is not in [`MirrorRules::paths`].
    PathNotMirrored,
    /// The request writes or has side effects: files, batches, fine-tuning, assistants and
    /// threads, `"store": true`, `previous_response_id`, a Responses API request that does not
    /// say `"store": false`.
    SideEffects,
    /// The body declares tools the *server* executes (web search, code interpreter, file
    /// search, MCP, ...): a mirror would run them twice.
    ServerTools,
    /// The body was longer than the proxy's copy cap: a mirror needs the whole body.
    BodyTooLarge,
    /// The body is not a JSON object.
    NotJson,
    /// Not chosen by [`sampled`] at the configured rate (a rate of 0 skips everything).
    SampledOut,
    /// The mirror's bounded queue or in-flight limit was full (the data plane's try-send).
    QueueFull,
    /// Mirroring paused itself: the live color's time to first token rose too much.
    Paused,
    /// The phase's time budget or duration is spent.
    BudgetSpent,
    /// The live exchange did not complete (the client went away, the answer was cut): there
    /// is no live answer to compare with.
    LiveIncomplete,
}

impl SkipReason {
    pub const ALL: [SkipReason; 11] = [
        SkipReason::MethodNotMirrored,
        SkipReason::PathNotMirrored,
        SkipReason::SideEffects,
        SkipReason::ServerTools,
        SkipReason::BodyTooLarge,
        SkipReason::NotJson,
        SkipReason::SampledOut,
        SkipReason::QueueFull,
        SkipReason::Paused,
        SkipReason::BudgetSpent,
        SkipReason::LiveIncomplete,
    ];

    /// The metric label value (`cutover_shadow_skipped_total{reason}`).
    pub fn as_str(self) -> &'static str {
        match self {
            SkipReason::MethodNotMirrored => "method_not_mirrored",
            SkipReason::PathNotMirrored => "path_not_mirrored",
            SkipReason::SideEffects => "side_effects",
            SkipReason::ServerTools => "server_tools",
            SkipReason::BodyTooLarge => "body_too_large",
            SkipReason::NotJson => "not_json",
            SkipReason::SampledOut => "sampled_out",
            SkipReason::QueueFull => "queue_full",
            SkipReason::Paused => "paused",
            SkipReason::BudgetSpent => "budget_spent",
            SkipReason::LiveIncomplete => "live_incomplete",
        }
    }
}

impl std::fmt::Display for SkipReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which paths are mirrored. The side-effect refusals are not configurable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MirrorRules {
    /// Exact request paths (no query string) that may be mirrored.
    /// Default: `/v1/chat/completions`, `/v1/completions`, `/v1/embeddings`.
    pub paths: Vec<String>,
}

impl Default for MirrorRules {
    fn default() -> Self {
        MirrorRules {
            paths: ["/v1/chat/completions", "/v1/completions", "/v1/embeddings"]
                .map(String::from)
                .to_vec(),
        }
    }
}

/// What the data plane knows of a request when it decides: the head, and the first bytes
/// of the body (at most its cap).
#[derive(Debug, Clone, Copy)]
pub struct MirrorRequest<'a> {
    pub method: &'a str,
    /// The request target's path; a query string, if left on, is ignored.
    pub path: &'a str,
    /// The body's first bytes, as many as the proxy kept.
    pub body: &'a [u8],
    /// True when `body` is the whole body (it ended within the cap).
    pub body_complete: bool,
}

/// Path prefixes whose requests write state: never mirrored, even if configured.
const SIDE_EFFECT_PREFIXES: [&str; 9] = [
    "/v1/files",
    "/v1/uploads",
    "/v1/batches",
    "/v1/fine_tuning",
    "/v1/fine-tunes",
    "/v1/assistants",
    "/v1/threads",
    "/v1/vector_stores",
    "/v1/conversations",
];

/// Tool types a client executes itself: declaring them only describes a function the model
/// may ask the client to call, so a mirror runs nothing. Every other type (`web_search`,
/// `web_search_preview`, `file_search`, `code_interpreter`, `mcp`, `image_generation`,
/// `computer_use_preview`, unknown future types) is assumed to run on the server.
const CLIENT_TOOL_TYPES: [&str; 2] = ["function", "custom"];

/// The head-only checks, cheap enough for every request before any body is copied.
pub fn eligible_route(rules: &MirrorRules, method: &str, path: &str) -> Result<(), SkipReason> {
    let path = path.split('?').next().unwrap_or(path);
    if !method.eq_ignore_ascii_case("POST") {
        return Err(SkipReason::MethodNotMirrored);
    }
    if has_side_effect_path(path) {
        return Err(SkipReason::SideEffects);
    }
    if !rules.paths.iter().any(|p| p == path) {
        return Err(SkipReason::PathNotMirrored);
    }
    Ok(())
}

fn has_side_effect_path(path: &str) -> bool {
    SIDE_EFFECT_PREFIXES
        .iter()
        .any(|p| path.strip_prefix(p).is_some_and(|rest| rest.is_empty() || rest.starts_with('/')))
        // runs of assistants/threads under any prefix, and Responses API sub-resources
        // (retrieve, cancel, delete, input_items) which act on stored responses.
        || path.split('/').any(|segment| segment == "runs")
        || path.starts_with("/v1/responses/")
}

/// The body checks, once the body (or its capped prefix) is known. On success returns the
/// request's [`Profile`] (its class and expected output shape) for the comparison.
pub fn eligible_body(path: &str, body: &[u8], body_complete: bool) -> Result<Profile, SkipReason> {
    let path = path.split('?').next().unwrap_or(path);
    if !body_complete {
        return Err(SkipReason::BodyTooLarge);
    }
    let v: Value = serde_json::from_slice(body).map_err(|_| SkipReason::NotJson)?;
    if !v.is_object() {
        return Err(SkipReason::NotJson);
    }
    let set = |k: &str| v.get(k).is_some_and(|x| !x.is_null());
    if v.get("store") == Some(&Value::Bool(true)) || set("previous_response_id") || set("conversation") {
        return Err(SkipReason::SideEffects);
    }
    // The Responses API stores every response unless told otherwise (`store` defaults to
    // true there), and `background` runs are stored too.
    if path == "/v1/responses" && (v.get("store") != Some(&Value::Bool(false)) || set("background")) {
        return Err(SkipReason::SideEffects);
    }
    if has_server_tools(&v) {
        return Err(SkipReason::ServerTools);
    }
    Ok(classify(path, &v))
}

fn has_server_tools(v: &Value) -> bool {
    let server_tool = |t: &Value| {
        let ty = t.get("type").and_then(Value::as_str).unwrap_or("function");
        !CLIENT_TOOL_TYPES.contains(&ty)
    };
    let tools = v.get("tools").and_then(Value::as_array);
    tools.is_some_and(|ts| ts.iter().any(server_tool))
        // Chat completions' built-in search runs on the server.
        || v.get("web_search_options").is_some_and(|x| !x.is_null())
}

/// Both checks in order: route, then body. Sampling is separate ([`sampled`]) so the data
/// plane can sample before copying a body.
pub fn eligibility(rules: &MirrorRules, req: &MirrorRequest<'_>) -> Result<Profile, SkipReason> {
    eligible_route(rules, req.method, req.path)?;
    eligible_body(req.path, req.body, req.body_complete)
}

/// SplitMix64's finalizer: every input bit moves every output bit, so sequential keys (a
/// request counter) are as good as random ones.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Deterministic sampling: the same key at the same rate always gives the same answer, and
/// the chosen share over many keys is `rate` within binomial bounds. A rate ≤ 0 (or NaN)
/// chooses nothing, a rate ≥ 1 everything.
pub fn sampled(request_key: u64, rate: f64) -> bool {
    if rate.is_nan() || rate <= 0.0 {
        return false;
    }
    if rate >= 1.0 {
        return true;
    }
    // The top 53 bits as a uniform number in [0, 1).
    let u = (mix(request_key) >> 11) as f64 / (1u64 << 53) as f64;
    u < rate
}

/// A request key from bytes (e.g. an `x-request-id` header), FNV-1a then mixed; a proxy
/// without one can pass its own request counter to [`sampled`] directly.
pub fn request_key(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h = (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    mix(h)
}
