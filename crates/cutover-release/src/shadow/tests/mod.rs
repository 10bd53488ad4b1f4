//! Shadow engine tests: eligibility and sampling, answer assembly, per-pair comparison, the
//! gate's verdicts (every case issue #21 lists), and ROUGE-L against `rouge-score` itself.

mod answer;
mod compare;
mod eligibility;
mod judge;
mod properties;
mod rouge_reference;

use super::*;
use crate::GateResult;

/// A deterministic pseudo-random sequence (SplitMix64), so every test sees the same data.
pub(super) struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        ((self.next() >> 11) as f64 / (1u64 << 53) as f64) < p
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

pub(super) const WORDS: [&str; 24] = [
    "the", "model", "answers", "quickly", "blue", "green", "release", "switch", "traffic", "proxy", "token", "stream",
    "latency", "error", "cache", "batch", "weights", "prompt", "reply", "server", "queue", "gate", "noise", "pair",
];

/// A sentence of `n` words chosen by `seed`.
pub(super) fn sentence(seed: u64, n: usize) -> String {
    let mut r = Rng(seed);
    (0..n)
        .map(|_| WORDS[r.below(WORDS.len())])
        .collect::<Vec<_>>()
        .join(" ")
}

/// `text` with one word replaced (the batch-noise model of mock-model's `--output-noise`).
pub(super) fn one_word_changed(text: &str, r: &mut Rng) -> String {
    let mut words: Vec<&str> = text.split(' ').collect();
    let i = r.below(words.len());
    words[i] = "changed";
    words.join(" ")
}

pub(super) fn chat(content: &str) -> Answer {
    Answer {
        status: 200,
        content: content.to_string(),
        finish_reason: Some("stop".into()),
        ..Answer::default()
    }
}

pub(super) fn failed(status: u16) -> Answer {
    Answer {
        status,
        error: Some(format!("HTTP {status}")),
        ..Answer::default()
    }
}

pub(super) fn vectors(vs: Vec<Vec<f64>>) -> Answer {
    Answer {
        status: 200,
        embeddings: vs,
        ..Answer::default()
    }
}

pub(super) fn thresholds() -> Thresholds {
    Thresholds {
        min_pairs: 50,
        min_baseline_pairs: 20,
        ..Thresholds::default()
    }
}
