//! The shadow comparison engine: which requests may be mirrored, how a mirrored answer is
//! reassembled, how a pair of answers is compared, and how pairs add up to a gate verdict.
//!
//! Pure logic like the rest of this crate: no I/O, no clock. The data plane decides with
//! [`eligibility`] and [`sampled`] whether to mirror a request, keeps a capped copy of both
//! answers, turns each into an [`Answer`] with [`Answer::assemble`], and hands the pair to an
//! [`Accumulator`], whose [`Accumulator::judge`] and [`Accumulator::reading`] give the gate's
//! verdict and the release document's figures. docs/shadow.md describes the rules.
//!
//! # Layout
//! - `eligibility`: mirror or not, and why not ([`SkipReason`]); deterministic sampling.
//! - `classify`: the [`Class`] of a request and what its answer should look like ([`Profile`]).
//! - `answer`: a raw answer (JSON or SSE, maybe truncated) assembled into an [`Answer`].
//! - `rouge`: ROUGE-L F1 as Google's `rouge-score` computes it (default tokenizer, no stemmer).
//! - `compare`: one pair of answers into per-metric differences ([`PairDiff`]).
//! - `thresholds`: the gate's [`Thresholds`], with their defaults.
//! - `judge`: the running figures ([`Accumulator`]) and the verdict.

mod answer;
mod classify;
mod compare;
mod eligibility;
mod judge;
mod rouge;
mod stat;
mod thresholds;

pub use answer::{Answer, RawAnswer, Timings, ToolCall, Usage};
pub use classify::{classify, Class, JsonFormat, Profile, ToolSpec};
pub use compare::{compare, Metric, PairDiff};
pub use eligibility::{
    eligibility, eligible_body, eligible_route, request_key, sampled, MirrorRequest, MirrorRules, SkipReason,
};
pub use judge::{Accumulator, ClassReading, MetricReading, Pair, ShadowReading, ShadowVerdict, WorstPair};
pub use rouge::{rouge_l, tokenize, RougeScore};
pub use stat::Stat;
pub use thresholds::Thresholds;

#[cfg(test)]
mod tests;
