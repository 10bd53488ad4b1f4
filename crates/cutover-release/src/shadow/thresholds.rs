//! The shadow gate's thresholds: one plain, documented config struct the config crate can
//! embed (`[services.NAME.release.shadow]`).

use serde::{Deserialize, Serialize};

/// The shadow gate's thresholds. Each metric has one *tolerance*: without a noise baseline
/// the candidate's difference must stay within it (fixed thresholds); with one, the
/// candidate's difference may exceed the baseline's by at most the tolerance (the absolute
/// margin) or by `relative_margin` of the baseline's, whichever is larger, and the excess must
/// also be more than `z` standard errors (so sampling noise on few pairs does not fail a gate).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Thresholds {
    /// Fewer candidate pairs in a class than this leaves the class unjudged (inconclusive,
    /// never a pass); with no class judged the verdict is inconclusive. Default 50.
    pub min_pairs: u64,
    /// Fewer baseline pairs in a class than this means fixed thresholds for it. Default 20.
    pub min_baseline_pairs: u64,
    /// Relative margin over the baseline's difference. Default 0.2 (20%).
    pub relative_margin: f64,
    /// Standard errors the excess over the baseline must also exceed; 0 turns it off. Default 2.
    pub z: f64,
    /// New errors (the shadow failed where live did not), as a share of pairs. Default 0.01.
    pub new_error_rate: f64,
    /// Drop of the exact-match rate (deterministic chat). Default 0.10.
    pub exact_match_drop: f64,
    /// Drop of mean ROUGE-L F1 (deterministic chat). Default 0.05.
    pub rouge_l_drop: f64,
    /// Largest factor between the shadow's and live's answer length (geometric mean, either
    /// way; chat classes). Default 1.5.
    pub length_ratio: f64,
    /// Increase of the share of `finish_reason = length` (chat classes). Default 0.05.
    pub finish_length_increase: f64,
    /// Increase of the empty-answer rate (chat classes). Default 0.02.
    pub empty_increase: f64,
    /// Increase of the refusal rate (chat classes). Default 0.02.
    pub refusal_increase: f64,
    /// Share of pairs whose called tool names differ. Default 0.10.
    pub tool_name_disagreement: f64,
    /// Drop of the JSON parse rate. Default 0.02.
    pub json_parse_drop: f64,
    /// Drop of the schema-valid rate. Default 0.02.
    pub schema_valid_drop: f64,
    /// Drop of the mean cosine similarity of embeddings; `None` when the new version is meant
    /// to be a different embedding model (cosine is then meaningless). Default 0.01.
    pub cosine_drop: Option<f64>,
    /// Largest time-to-first-byte ratio shadow/live (geometric mean; over the baseline's ratio
    /// when there is one); `None` turns it off. Default 1.5.
    pub ttft_ratio: Option<f64>,
    /// Largest total-time ratio, as `ttft_ratio`. Default 1.5.
    pub total_time_ratio: Option<f64>,
    /// Phrases that mark a refusal when an answer's first 200 characters contain one
    /// (case-insensitive). Default: see [`Thresholds::default`].
    pub refusal_phrases: Vec<String>,
    /// ROUGE-L compares at most this many tokens of each answer (LCS is quadratic). Default 4096.
    pub rouge_max_tokens: usize,
    /// The most differing pairs kept for display. Default 10.
    pub worst_pairs: usize,
    /// Keep the request and answer texts of the worst pairs (they may hold user data).
    /// Default false: only the figures are kept.
    pub keep_samples: bool,
    /// Each kept text is cut to this many bytes. Default 2048.
    pub sample_bytes: usize,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            min_pairs: 50,
            min_baseline_pairs: 20,
            relative_margin: 0.2,
            z: 2.0,
            new_error_rate: 0.01,
            exact_match_drop: 0.10,
            rouge_l_drop: 0.05,
            length_ratio: 1.5,
            finish_length_increase: 0.05,
            empty_increase: 0.02,
            refusal_increase: 0.02,
            tool_name_disagreement: 0.10,
            json_parse_drop: 0.02,
            schema_valid_drop: 0.02,
            cosine_drop: Some(0.01),
            ttft_ratio: Some(1.5),
            total_time_ratio: Some(1.5),
            refusal_phrases: [
                "I can't help with that",
                "I cannot help with that",
                "I can't assist with",
                "I cannot assist",
                "I'm sorry, but",
                "I am sorry, but",
                "I'm unable to help",
                "I must decline",
            ]
            .map(String::from)
            .to_vec(),
            rouge_max_tokens: 4096,
            worst_pairs: 10,
            keep_samples: false,
            sample_bytes: 2048,
        }
    }
}

impl Thresholds {
    /// Checks the values a config file could get wrong; the error names the key.
    pub fn validate(&self) -> Result<(), String> {
        let share = |key: &str, v: f64| {
            if (0.0..=1.0).contains(&v) {
                Ok(())
            } else {
                Err(format!("{key} must be between 0 and 1, not {v}"))
            }
        };
        let ratio = |key: &str, v: Option<f64>| match v {
            Some(r) if r.is_nan() || r < 1.0 => Err(format!("{key} must be a ratio of at least 1, not {r}")),
            _ => Ok(()),
        };
        if self.min_pairs == 0 {
            return Err("min_pairs must be at least 1: no pairs is never a pass".into());
        }
        for (key, v) in [
            ("relative_margin", self.relative_margin),
            ("new_error_rate", self.new_error_rate),
            ("exact_match_drop", self.exact_match_drop),
            ("rouge_l_drop", self.rouge_l_drop),
            ("finish_length_increase", self.finish_length_increase),
            ("empty_increase", self.empty_increase),
            ("refusal_increase", self.refusal_increase),
            ("tool_name_disagreement", self.tool_name_disagreement),
            ("json_parse_drop", self.json_parse_drop),
            ("schema_valid_drop", self.schema_valid_drop),
            ("cosine_drop", self.cosine_drop.unwrap_or(0.0)),
        ] {
            share(key, v)?;
        }
        ratio("length_ratio", Some(self.length_ratio))?;
        ratio("ttft_ratio", self.ttft_ratio)?;
        ratio("total_time_ratio", self.total_time_ratio)?;
        if self.z.is_nan() || self.z < 0.0 {
            return Err(format!("z must be 0 or more, not {}", self.z));
        }
        if self.rouge_max_tokens == 0 {
            return Err("rouge_max_tokens must be at least 1".into());
        }
        Ok(())
    }
}
