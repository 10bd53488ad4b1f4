//! One pair of answers to the same request compared: a value per metric, where 0 means "no
//! difference" and larger means "the shadow is worse than the live answer".

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::answer::Answer;
use super::classify::{Class, JsonFormat, Profile};
use super::rouge::{rouge_l_tokens, tokenize};
use super::thresholds::Thresholds;

/// The per-pair metrics. Every value is a *difference*: 0 when the two answers agree, above 0
/// when the shadow is worse (below 0 when it is better, for the one-sided ones).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// 1 when the shadow failed (non-2xx, error object, stream cut) and live did not.
    NewErrors,
    /// 1 when the two statuses differ (a figure; new errors is what gates).
    StatusMismatch,
    /// ln(shadow / live) time to first byte.
    TtftRatio,
    /// ln(shadow / live) total time.
    TotalTimeRatio,
    /// 1 when the texts (and tool calls) are not byte-equal.
    ExactMismatch,
    /// 1 − ROUGE-L F1 of the shadow's text against the live text.
    RougeL,
    /// ln((shadow chars + 1) / (live chars + 1)).
    LengthRatio,
    /// shadow − live, each 1 when its `finish_reason` is `length`.
    FinishLength,
    /// shadow − live, each 1 for an answer with no text and no tool call.
    Empty,
    /// shadow − live, each 1 for an answer that starts with a refusal phrase.
    Refusal,
    /// 1 when the sets of called tool names differ.
    ToolNames,
    /// live − shadow, each 1 when its JSON output (content or tool arguments) parses.
    JsonParse,
    /// live − shadow, each 1 when its JSON output passes the schema subset.
    SchemaValid,
    /// 1 when the embedding dimensions (or the number of vectors) differ.
    EmbeddingDim,
    /// 1 when the shadow has a NaN or zero-norm vector and live has none.
    BadVectors,
    /// 1 − mean cosine similarity of the vectors.
    Cosine,
}

pub(crate) const METRICS: usize = 16;

impl Metric {
    pub const ALL: [Metric; METRICS] = [
        Metric::NewErrors,
        Metric::StatusMismatch,
        Metric::TtftRatio,
        Metric::TotalTimeRatio,
        Metric::ExactMismatch,
        Metric::RougeL,
        Metric::LengthRatio,
        Metric::FinishLength,
        Metric::Empty,
        Metric::Refusal,
        Metric::ToolNames,
        Metric::JsonParse,
        Metric::SchemaValid,
        Metric::EmbeddingDim,
        Metric::BadVectors,
        Metric::Cosine,
    ];

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

/// One pair's differences, per metric (`None`: the metric does not apply to this pair).
#[derive(Debug, Clone, PartialEq)]
pub struct PairDiff {
    pub class: Class,
    pub values: [Option<f64>; METRICS],
}

impl PairDiff {
    pub fn get(&self, m: Metric) -> Option<f64> {
        self.values[m.index()]
    }

    fn set(&mut self, m: Metric, v: f64) {
        self.values[m.index()] = Some(v);
    }

    /// True when any compared metric differs (the `verdict` label of
    /// `cutover_shadow_pairs_total{class,verdict}`: `differs` or `same`).
    pub fn differs(&self) -> bool {
        self.severity() > 0.0
    }

    /// How different the pair is, 0 to 1: the worst pairs are kept for display by this.
    pub fn severity(&self) -> f64 {
        Metric::ALL
            .iter()
            .filter(|m| !matches!(m, Metric::TtftRatio | Metric::TotalTimeRatio | Metric::StatusMismatch))
            .filter_map(|m| self.get(*m))
            .map(|v| v.abs().min(1.0))
            .fold(0.0, f64::max)
    }
}

fn flag(b: bool) -> f64 {
    if b {
        1.0
    } else {
        0.0
    }
}

/// Compares the shadow's answer with the live answer to the same request.
pub fn compare(profile: &Profile, live: &Answer, shadow: &Answer, t: &Thresholds) -> PairDiff {
    let mut d = PairDiff {
        class: profile.class,
        values: [None; METRICS],
    };
    d.set(Metric::NewErrors, flag(shadow.is_error() && !live.is_error()));
    d.set(Metric::StatusMismatch, flag(shadow.status != live.status));
    let ratio = |s: Option<std::time::Duration>, l: Option<std::time::Duration>| {
        let (s, l) = (s?.as_secs_f64(), l?.as_secs_f64());
        (s > 0.0 && l > 0.0).then(|| (s / l).ln())
    };
    if let Some(r) = ratio(shadow.timings.first_byte, live.timings.first_byte) {
        d.set(Metric::TtftRatio, r);
    }
    if let Some(r) = ratio(shadow.timings.total, live.timings.total) {
        d.set(Metric::TotalTimeRatio, r);
    }
    // An error on either side leaves nothing to compare the content of.
    if live.is_error() || shadow.is_error() {
        return d;
    }
    match profile.class {
        Class::DeterministicChat => {
            compare_shape(&mut d, live, shadow, t);
            if !live.truncated && !shadow.truncated {
                compare_text(&mut d, live, shadow, t);
            }
        }
        Class::SampledChat => {
            compare_shape(&mut d, live, shadow, t);
            compare_tools(&mut d, live, shadow);
        }
        Class::Json => {
            compare_tools(&mut d, live, shadow);
            compare_json(&mut d, profile, live, shadow);
        }
        Class::Embeddings => compare_embeddings(&mut d, live, shadow),
    }
    d
}

fn compare_text(d: &mut PairDiff, live: &Answer, shadow: &Answer, t: &Thresholds) {
    d.set(
        Metric::ExactMismatch,
        flag(live.content != shadow.content || live.tool_calls != shadow.tool_calls),
    );
    let cap = |mut v: Vec<String>| {
        v.truncate(t.rouge_max_tokens);
        v
    };
    let (lt, st) = (cap(tokenize(&live.content)), cap(tokenize(&shadow.content)));
    // Two answers without words agree; rouge-score itself would say 0 for them.
    let f1 = if lt.is_empty() && st.is_empty() {
        1.0
    } else {
        rouge_l_tokens(&lt, &st).f1
    };
    d.set(Metric::RougeL, 1.0 - f1);
}

/// Length, finish reason, empty answers and refusals: what sampled answers can be compared on.
fn compare_shape(d: &mut PairDiff, live: &Answer, shadow: &Answer, t: &Thresholds) {
    if !live.truncated && !shadow.truncated {
        let chars = |a: &Answer| a.content.chars().count() as f64 + 1.0;
        d.set(Metric::LengthRatio, (chars(shadow) / chars(live)).ln());
        let length = |a: &Answer| flag(a.finish_reason.as_deref() == Some("length"));
        d.set(Metric::FinishLength, length(shadow) - length(live));
    }
    let empty = |a: &Answer| flag(a.content.trim().is_empty() && a.tool_calls.is_empty() && !a.truncated);
    d.set(Metric::Empty, empty(shadow) - empty(live));
    let refusal = |a: &Answer| flag(is_refusal(&a.content, &t.refusal_phrases));
    d.set(Metric::Refusal, refusal(shadow) - refusal(live));
}

/// True when the answer opens with one of the phrases (case-insensitive, typographic
/// apostrophes read as `'`), within its first 200 characters.
pub(crate) fn is_refusal(content: &str, phrases: &[String]) -> bool {
    let head: String = content
        .chars()
        .take(200)
        .map(|c| if c == '\u{2019}' { '\'' } else { c })
        .collect::<String>()
        .to_lowercase();
    phrases.iter().any(|p| head.contains(&p.to_lowercase()))
}

fn compare_tools(d: &mut PairDiff, live: &Answer, shadow: &Answer) {
    if live.tool_calls.is_empty() && shadow.tool_calls.is_empty() {
        return;
    }
    fn names(a: &Answer) -> Vec<&str> {
        let mut v: Vec<&str> = a.tool_calls.iter().map(|c| c.name.as_str()).collect();
        v.sort_unstable();
        v
    }
    d.set(Metric::ToolNames, flag(names(live) != names(shadow)));
}

fn compare_json(d: &mut PairDiff, profile: &Profile, live: &Answer, shadow: &Answer) {
    let (lp, ls) = json_facts(profile, live);
    let (sp, ss) = json_facts(profile, shadow);
    if let (Some(l), Some(s)) = (lp, sp) {
        d.set(Metric::JsonParse, flag(l) - flag(s));
    }
    if let (Some(l), Some(s)) = (ls, ss) {
        d.set(Metric::SchemaValid, flag(l) - flag(s));
    }
}

/// (parses, passes the schema) of an answer's JSON output: its tool calls' arguments if it
/// called tools, else its text when JSON was asked for; `None` when there is nothing to check.
fn json_facts(profile: &Profile, a: &Answer) -> (Option<bool>, Option<bool>) {
    if a.truncated {
        return (None, None);
    }
    if !a.tool_calls.is_empty() {
        let mut parses = true;
        let mut valid = true;
        for call in &a.tool_calls {
            match serde_json::from_str::<Value>(&call.arguments) {
                Ok(v) if v.is_object() => {
                    let spec = profile.tools.iter().find(|s| s.name == call.name);
                    let schema = spec.and_then(|s| s.parameters.as_ref());
                    valid &= spec.is_some() && schema.is_none_or(|s| schema_valid(s, &v));
                }
                _ => (parses, valid) = (false, false),
            }
        }
        return (Some(parses), Some(valid));
    }
    let Some(format) = &profile.json else {
        return (None, None);
    };
    let parsed = serde_json::from_str::<Value>(a.content.trim())
        .ok()
        .filter(Value::is_object);
    match format {
        JsonFormat::Object => (Some(parsed.is_some()), None),
        JsonFormat::Schema(s) => {
            let valid = parsed.as_ref().is_some_and(|v| schema_valid(s, v));
            (Some(parsed.is_some()), Some(valid))
        }
    }
}

/// The JSON Schema subset checked: the root `type`; for objects `required` keys,
/// `additionalProperties: false`, and each top-level property's `type` and `enum`. Nested
/// schemas, formats, patterns and bounds are not checked.
pub(crate) fn schema_valid(schema: &Value, v: &Value) -> bool {
    if !type_ok(schema.get("type"), v) {
        return false;
    }
    let Some(obj) = v.as_object() else { return true };
    let props = schema.get("properties").and_then(Value::as_object);
    let required = schema.get("required").and_then(Value::as_array);
    if required.is_some_and(|r| r.iter().filter_map(Value::as_str).any(|k| !obj.contains_key(k))) {
        return false;
    }
    if schema.get("additionalProperties") == Some(&Value::Bool(false))
        && obj.keys().any(|k| !props.is_some_and(|p| p.contains_key(k)))
    {
        return false;
    }
    props.into_iter().flatten().all(|(k, sub)| match obj.get(k) {
        None => true,
        Some(x) => {
            type_ok(sub.get("type"), x) && sub.get("enum").and_then(Value::as_array).is_none_or(|e| e.contains(x))
        }
    })
}

fn type_ok(t: Option<&Value>, v: &Value) -> bool {
    let one = |name: &str| match name {
        "object" => v.is_object(),
        "array" => v.is_array(),
        "string" => v.is_string(),
        "boolean" => v.is_boolean(),
        "null" => v.is_null(),
        "number" => v.is_number(),
        "integer" => v.is_i64() || v.is_u64() || v.as_f64().is_some_and(|f| f.fract() == 0.0),
        _ => true,
    };
    match t {
        Some(Value::String(s)) => one(s),
        Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).any(one),
        _ => true,
    }
}

fn compare_embeddings(d: &mut PairDiff, live: &Answer, shadow: &Answer) {
    // A copy cut at the cap holds no vectors: nothing to compare, and no evidence either way.
    if live.truncated || shadow.truncated {
        return;
    }
    let dims = |a: &Answer| a.embeddings.iter().map(Vec::len).collect::<Vec<_>>();
    let same_dims = dims(live) == dims(shadow);
    d.set(Metric::EmbeddingDim, flag(!same_dims));
    let bad = |a: &Answer| a.embeddings.iter().any(|v| norm(v).is_none());
    d.set(Metric::BadVectors, flag(bad(shadow) && !bad(live)));
    if !same_dims || bad(shadow) || bad(live) || live.embeddings.is_empty() {
        return;
    }
    let cos: f64 = live
        .embeddings
        .iter()
        .zip(&shadow.embeddings)
        .map(|(a, b)| cosine(a, b))
        .sum::<f64>()
        / live.embeddings.len() as f64;
    // Rounding leaves identical vectors a hair below 1.
    let diff = 1.0 - cos;
    d.set(Metric::Cosine, if diff.abs() < 1e-12 { 0.0 } else { diff });
}

/// The vector's norm; `None` for a NaN/infinite component or a zero norm.
fn norm(v: &[f64]) -> Option<f64> {
    let n = v.iter().map(|x| x * x).sum::<f64>().sqrt();
    (n.is_finite() && n > 0.0).then_some(n)
}

fn cosine(a: &[f64], b: &[f64]) -> f64 {
    match (norm(a), norm(b)) {
        (Some(na), Some(nb)) => a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>() / (na * nb),
        _ => 0.0,
    }
}
