//! Pairs add up to running figures per class (constant memory), and the figures to the
//! shadow gate's verdict: candidate differences judged against the noise baseline's.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::answer::Answer;
use super::classify::{Class, Profile};
use super::compare::{compare, Metric, PairDiff, METRICS};
use super::eligibility::SkipReason;
use super::stat::Stat;
use super::thresholds::Thresholds;
use crate::{Gate, GateResult};

/// How a metric's difference is shown and judged.
#[derive(Clone, Copy, PartialEq)]
enum Kind {
    /// A similarity s shown as s = 1 − d with `decimals`.
    Similarity(usize),
    /// A rate of agreement shown as (1 − d) in %.
    AgreementRate,
    /// A rate shown as d in %.
    Rate,
    /// A change of a rate, shown in percentage points.
    Points,
    /// ln of a ratio, shown as the ratio; one-sided (slower is worse).
    LogRatio,
    /// ln of a ratio, judged both ways (longer and shorter).
    TwoSidedLogRatio,
    /// Any pair with a difference fails, at any count, with or without baseline.
    Hard,
}

fn spec(m: Metric, t: &Thresholds) -> (&'static str, Kind, Option<f64>) {
    let ln = |r: Option<f64>| r.map(|r| r.max(1.0).ln());
    match m {
        Metric::NewErrors => ("new error rate", Kind::Rate, Some(t.new_error_rate)),
        Metric::StatusMismatch => ("status mismatch", Kind::Rate, None),
        Metric::TtftRatio => ("time-to-first-byte ratio", Kind::LogRatio, ln(t.ttft_ratio)),
        Metric::TotalTimeRatio => ("total-time ratio", Kind::LogRatio, ln(t.total_time_ratio)),
        Metric::ExactMismatch => ("exact match", Kind::AgreementRate, Some(t.exact_match_drop)),
        Metric::RougeL => ("ROUGE-L", Kind::Similarity(2), Some(t.rouge_l_drop)),
        Metric::LengthRatio => ("length ratio", Kind::TwoSidedLogRatio, ln(Some(t.length_ratio))),
        Metric::FinishLength => (
            "finish_reason=length share increase",
            Kind::Points,
            Some(t.finish_length_increase),
        ),
        Metric::Empty => ("empty-answer-rate increase", Kind::Points, Some(t.empty_increase)),
        Metric::Refusal => ("refusal-rate increase", Kind::Points, Some(t.refusal_increase)),
        Metric::ToolNames => ("tool-name disagreement", Kind::Rate, Some(t.tool_name_disagreement)),
        Metric::JsonParse => ("JSON parse-rate drop", Kind::Points, Some(t.json_parse_drop)),
        Metric::SchemaValid => ("schema-valid-rate drop", Kind::Points, Some(t.schema_valid_drop)),
        Metric::EmbeddingDim => ("dimension mismatch", Kind::Hard, Some(0.0)),
        Metric::BadVectors => ("new NaN/zero-norm vectors", Kind::Hard, Some(0.0)),
        Metric::Cosine => ("cosine similarity", Kind::Similarity(4), t.cosine_drop),
    }
}

/// The metrics every answer has, judged over all classes together.
const ALL_ANSWERS: [Metric; 4] = [
    Metric::NewErrors,
    Metric::StatusMismatch,
    Metric::TtftRatio,
    Metric::TotalTimeRatio,
];

/// Running figures of one class on one side (candidate or baseline).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
struct Tally {
    pairs: u64,
    stats: [Stat; METRICS],
}

impl Tally {
    fn add(&mut self, d: &PairDiff) {
        self.pairs += 1;
        for m in Metric::ALL {
            if let Some(v) = d.get(m) {
                self.stats[m.index()].add(v);
            }
        }
    }

    fn merge(&mut self, o: &Tally) {
        self.pairs += o.pairs;
        for (a, b) in self.stats.iter_mut().zip(&o.stats) {
            a.merge(b);
        }
    }
}

/// A pair handed to the accumulator: the request's profile and both answers.
#[derive(Debug, Clone, Copy)]
pub struct Pair<'a> {
    /// The request's key (as given to `sampled`), to find the pair again in logs.
    pub key: u64,
    pub profile: &'a Profile,
    /// The request body, kept only when `keep_samples` is on and the pair is among the worst.
    pub request: Option<&'a [u8]>,
    pub live: &'a Answer,
    /// The candidate's answer (or, for a baseline pair, the second live answer).
    pub shadow: &'a Answer,
}

/// One of the most differing pairs, for display.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorstPair {
    pub key: u64,
    pub class: Class,
    /// 0 to 1: the largest single difference.
    pub severity: f64,
    /// The pair's differing figures, e.g. "ROUGE-L 0.12; refusal-rate increase 100.0 points".
    pub differences: String,
    /// Only with `keep_samples`, each cut to `sample_bytes`.
    pub request: Option<String>,
    pub live: Option<String>,
    pub shadow: Option<String>,
}

/// The gate's verdict and its reason.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShadowVerdict {
    pub result: GateResult,
    pub reason: String,
}

/// One metric's reading. Values are in display units: similarities as similarities (ROUGE-L
/// 0.97), rates and changes as fractions, ratios as ratios.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricReading {
    pub metric: Metric,
    pub value: f64,
    pub baseline: Option<f64>,
    /// The tolerance in the metric's own terms (absent for figures that never gate).
    pub tolerance: Option<f64>,
    /// Pairs with a value for this metric.
    pub pairs: u64,
    pub result: GateResult,
    /// The reading in words, as a failing verdict would name it.
    pub text: String,
}

/// One class's (or, with `class` "all", every answer's) figures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassReading {
    /// A class name, or "all" for the metrics every answer has.
    pub class: String,
    pub pairs: u64,
    pub baseline_pairs: u64,
    /// False when there were too few baseline pairs: fixed thresholds applied.
    pub baseline_used: bool,
    /// False when there were fewer than `min_pairs` pairs (hard checks still apply).
    pub judged: bool,
    pub result: GateResult,
    pub metrics: Vec<MetricReading>,
}

/// Everything the release document, the API and the dashboard show of a shadow phase.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShadowReading {
    pub result: GateResult,
    pub reason: String,
    pub pairs: u64,
    pub baseline_pairs: u64,
    pub skipped: BTreeMap<SkipReason, u64>,
    pub classes: Vec<ClassReading>,
    pub worst: Vec<WorstPair>,
}

impl ShadowReading {
    /// The reading as one gate of the release document's `gates` list.
    pub fn gate(&self, min_pairs: u64) -> Gate {
        Gate {
            name: "shadow".into(),
            value: Some(self.pairs as f64),
            limit: min_pairs as f64,
            result: self.result,
            query: None,
        }
    }
}

/// The running figures of a shadow phase: candidate pairs and baseline pairs per class,
/// skipped requests per reason, and the worst pairs. Memory is constant in the number of
/// pairs. Serializable and mergeable, so each router of a fleet can publish its own and the
/// leader can judge their sum.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Accumulator {
    thresholds: Thresholds,
    candidate: [Tally; 4],
    baseline: [Tally; 4],
    skipped: BTreeMap<SkipReason, u64>,
    worst: Vec<WorstPair>,
}

impl Accumulator {
    pub fn new(thresholds: Thresholds) -> Accumulator {
        Accumulator {
            thresholds,
            candidate: Default::default(),
            baseline: Default::default(),
            skipped: BTreeMap::new(),
            worst: Vec::new(),
        }
    }

    pub fn thresholds(&self) -> &Thresholds {
        &self.thresholds
    }

    /// Adds a candidate pair (live answer vs the shadow color's answer); returns its
    /// differences (for per-pair metrics and logs).
    pub fn add_pair(&mut self, pair: &Pair<'_>) -> PairDiff {
        let d = compare(pair.profile, pair.live, pair.shadow, &self.thresholds);
        self.candidate[d.class.index()].add(&d);
        self.keep_if_worst(pair, &d);
        d
    }

    /// Adds a baseline pair (live answer vs a second live answer to the same request).
    pub fn add_baseline(&mut self, pair: &Pair<'_>) -> PairDiff {
        let d = compare(pair.profile, pair.live, pair.shadow, &self.thresholds);
        self.baseline[d.class.index()].add(&d);
        d
    }

    /// Counts a request that was not mirrored.
    pub fn skip(&mut self, reason: SkipReason) {
        *self.skipped.entry(reason).or_default() += 1;
    }

    pub fn pairs(&self) -> u64 {
        self.candidate.iter().map(|t| t.pairs).sum()
    }

    pub fn baseline_pairs(&self) -> u64 {
        self.baseline.iter().map(|t| t.pairs).sum()
    }

    /// Adds another accumulator's figures (another router's share); this one's thresholds stay.
    pub fn merge(&mut self, other: &Accumulator) {
        for (a, b) in self.candidate.iter_mut().zip(&other.candidate) {
            a.merge(b);
        }
        for (a, b) in self.baseline.iter_mut().zip(&other.baseline) {
            a.merge(b);
        }
        for (r, n) in &other.skipped {
            *self.skipped.entry(*r).or_default() += n;
        }
        for w in &other.worst {
            self.insert_worst(w.clone());
        }
    }

    fn keep_if_worst(&mut self, pair: &Pair<'_>, d: &PairDiff) {
        let severity = d.severity();
        let full = self.worst.len() >= self.thresholds.worst_pairs;
        if severity <= 0.0 || (full && self.worst.last().is_some_and(|w| w.severity >= severity)) {
            return;
        }
        let t = &self.thresholds;
        let cut = |s: String| Some(cut_to(s, t.sample_bytes));
        let keep = t.keep_samples;
        let w = WorstPair {
            key: pair.key,
            class: d.class,
            severity,
            differences: differences(d, t),
            request: pair
                .request
                .filter(|_| keep)
                .and_then(|r| cut(String::from_utf8_lossy(r).into_owned())),
            live: keep.then(|| sample(pair.live)).and_then(cut),
            shadow: keep.then(|| sample(pair.shadow)).and_then(cut),
        };
        self.insert_worst(w);
    }

    fn insert_worst(&mut self, w: WorstPair) {
        let at = self.worst.partition_point(|x| x.severity >= w.severity);
        self.worst.insert(at, w);
        self.worst.truncate(self.thresholds.worst_pairs);
    }

    /// The gate's verdict over the figures so far.
    pub fn judge(&self) -> ShadowVerdict {
        let r = self.reading();
        ShadowVerdict {
            result: r.result,
            reason: r.reason,
        }
    }

    /// All figures and the verdict.
    pub fn reading(&self) -> ShadowReading {
        let t = &self.thresholds;
        let mut classes = Vec::new();
        let mut all_c = Tally::default();
        let mut all_b = Tally::default();
        for c in Class::ALL {
            all_c.merge(&self.candidate[c.index()]);
            all_b.merge(&self.baseline[c.index()]);
        }
        classes.push(read_scope("all answers", "all", &all_c, &all_b, &ALL_ANSWERS, t));
        let own: Vec<Metric> = Metric::ALL.into_iter().filter(|m| !ALL_ANSWERS.contains(m)).collect();
        for c in Class::ALL {
            let (cand, base) = (&self.candidate[c.index()], &self.baseline[c.index()]);
            if cand.pairs > 0 || base.pairs > 0 {
                classes.push(read_scope(c.label(), c.as_str(), cand, base, &own, t));
            }
        }
        let (result, reason) = verdict(&classes, self.pairs(), t);
        ShadowReading {
            result,
            reason,
            pairs: self.pairs(),
            baseline_pairs: self.baseline_pairs(),
            skipped: self.skipped.clone(),
            classes,
            worst: self.worst.clone(),
        }
    }
}

/// A text cut to at most `max` bytes on a character boundary.
fn cut_to(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut at = max;
        while !s.is_char_boundary(at) {
            at -= 1;
        }
        s.truncate(at);
        s.push('…');
    }
    s
}

/// What an answer said, in one text: its error, its content, its tool calls, its vectors' shape.
fn sample(a: &Answer) -> String {
    let mut s = format!("HTTP {}", a.status);
    if let Some(e) = &a.error {
        s += &format!(" error: {e}");
    }
    if !a.content.is_empty() {
        s += &format!(" {:?}", a.content);
    }
    for c in &a.tool_calls {
        s += &format!(" {}({})", c.name, c.arguments);
    }
    if let Some(v) = a.embeddings.first() {
        s += &format!(" {} vectors of dimension {}", a.embeddings.len(), v.len());
    }
    s
}

/// One pair's differing figures in words.
fn differences(d: &PairDiff, t: &Thresholds) -> String {
    let parts: Vec<String> = Metric::ALL
        .into_iter()
        .filter(|m| !matches!(m, Metric::TtftRatio | Metric::TotalTimeRatio | Metric::StatusMismatch))
        .filter_map(|m| d.get(m).filter(|v| *v != 0.0).map(|v| (m, v)))
        .map(|(m, v)| {
            let (label, kind, _) = spec(m, t);
            format!("{label} {}", show(kind, v))
        })
        .collect();
    parts.join("; ")
}

/// A difference in the metric's display units.
fn display(kind: Kind, d: f64) -> f64 {
    match kind {
        Kind::Similarity(_) | Kind::AgreementRate => 1.0 - d,
        Kind::LogRatio | Kind::TwoSidedLogRatio => d.exp(),
        Kind::Rate | Kind::Points | Kind::Hard => d,
    }
}

fn show(kind: Kind, d: f64) -> String {
    let v = display(kind, d);
    match kind {
        Kind::Similarity(decimals) => format!("{v:.decimals$}"),
        Kind::AgreementRate | Kind::Rate | Kind::Hard => format!("{:.1}%", v * 100.0),
        Kind::Points => format!("{:.1} points", v * 100.0),
        Kind::LogRatio | Kind::TwoSidedLogRatio => format!("{v:.2}"),
    }
}

/// A tolerance in the metric's display units (a margin, not a value: no `1 −`).
fn show_tolerance(kind: Kind, tol: f64) -> String {
    match kind {
        Kind::Similarity(decimals) => format!("{tol:.decimals$}"),
        Kind::AgreementRate | Kind::Rate | Kind::Hard => format!("{:.1}%", tol * 100.0),
        Kind::Points => format!("{:.1} points", tol * 100.0),
        Kind::LogRatio | Kind::TwoSidedLogRatio => format!("×{:.2}", tol.exp()),
    }
}

/// A scope's name in words: "deterministic chat" for `deterministic_chat`.
fn label_of(name: &str) -> &'static str {
    Class::ALL
        .into_iter()
        .find(|c| c.as_str() == name)
        .map_or("all answers", Class::label)
}

/// The verdict over all scopes: any failing scope fails; no judged scope is inconclusive.
fn verdict(classes: &[ClassReading], pairs: u64, t: &Thresholds) -> (GateResult, String) {
    let failing: Vec<&str> = classes
        .iter()
        .flat_map(|c| c.metrics.iter())
        .filter(|m| m.result == GateResult::Failing)
        .map(|m| m.text.as_str())
        .collect();
    if !failing.is_empty() {
        return (GateResult::Failing, failing.join("; "));
    }
    let unjudged: Vec<String> = classes
        .iter()
        .skip(1)
        .filter(|c| !c.judged && c.pairs > 0)
        .map(|c| format!("{} {} pairs", label_of(&c.class), c.pairs))
        .collect();
    let judged: Vec<&ClassReading> = classes.iter().skip(1).filter(|c| c.judged).collect();
    if judged.is_empty() {
        return (
            GateResult::Inconclusive,
            format!(
                "only {pairs} pairs{}: fewer than min_pairs {} in every class",
                if unjudged.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", unjudged.join(", "))
                },
                t.min_pairs
            ),
        );
    }
    let mut parts: Vec<String> = judged
        .iter()
        .map(|c| {
            let mode = if c.baseline_used {
                format!("against a noise baseline of {} pairs", c.baseline_pairs)
            } else {
                "no noise baseline: fixed thresholds".to_string()
            };
            format!("{}: {} pairs passing ({mode})", label_of(&c.class), c.pairs)
        })
        .collect();
    if !unjudged.is_empty() {
        parts.push(format!("too few pairs to judge: {}", unjudged.join(", ")));
    }
    (GateResult::Passing, parts.join("; "))
}

/// Judges the given metrics of one scope (a class, or all answers).
fn read_scope(label: &str, name: &str, cand: &Tally, base: &Tally, metrics: &[Metric], t: &Thresholds) -> ClassReading {
    let judged = cand.pairs >= t.min_pairs;
    let baseline_used = base.pairs >= t.min_baseline_pairs;
    let readings: Vec<MetricReading> = metrics
        .iter()
        .filter_map(|m| {
            let b = baseline_used.then(|| &base.stats[m.index()]).filter(|s| s.n > 0);
            read_metric(label, *m, &cand.stats[m.index()], b, judged, t)
        })
        .collect();
    let result = readings.iter().map(|m| m.result).max().unwrap_or(GateResult::Passing);
    let result = if !judged && result < GateResult::Failing {
        GateResult::Inconclusive
    } else {
        result
    };
    ClassReading {
        class: name.to_string(),
        pairs: cand.pairs,
        baseline_pairs: base.pairs,
        baseline_used,
        judged,
        result,
        metrics: readings,
    }
}

/// Judges one metric. `None` when no pair had a value for it.
fn read_metric(
    scope: &str,
    m: Metric,
    cand: &Stat,
    base: Option<&Stat>,
    judged: bool,
    t: &Thresholds,
) -> Option<MetricReading> {
    let (label, kind, tol) = spec(m, t);
    let dc = cand.mean()?;
    let db = base.and_then(Stat::mean);
    let failing = match (tol, kind) {
        (None, _) => false,
        (Some(_), Kind::Hard) => dc > 0.0,
        (Some(_), _) if !judged => false,
        (Some(tol), Kind::TwoSidedLogRatio) => dc.abs() - db.map_or(0.0, f64::abs) > tol,
        (Some(tol), Kind::LogRatio) => dc - db.unwrap_or(0.0) > tol,
        (Some(tol), _) => match (db, base) {
            (Some(db), Some(b)) => {
                let se = (cand.std_error().powi(2) + b.std_error().powi(2)).sqrt();
                dc - db > tol && dc > db.max(0.0) * (1.0 + t.relative_margin) && dc - db > t.z * se
            }
            // Fixed thresholds: past the tolerance by more than `z` standard errors too,
            // so that the noise of a few dozen pairs (a 10% refusal rate on both sides, one
            // transient error) does not fail a version that is not worse.
            _ => dc > tol && dc - tol > t.z * cand.std_error(),
        },
    };
    let mut text = format!("{scope}: {label} {}", show(kind, dc));
    match (db, tol) {
        (Some(db), Some(tol)) => {
            text += &format!(" vs baseline {} (margin {})", show(kind, db), show_tolerance(kind, tol))
        }
        (None, Some(tol)) if kind != Kind::Hard => {
            let limit = match kind {
                Kind::Similarity(_) | Kind::AgreementRate => show(kind, tol),
                _ => show_tolerance(kind, tol),
            };
            text += &format!(" (limit {limit})");
        }
        _ => {}
    }
    text += &format!(" over {} pairs", cand.n);
    if db.is_none() && tol.is_some() && kind != Kind::Hard {
        text += "; no noise baseline: fixed thresholds";
    }
    Some(MetricReading {
        metric: m,
        value: display(kind, dc),
        baseline: db.map(|d| display(kind, d)),
        tolerance: tol.map(|x| match kind {
            Kind::LogRatio | Kind::TwoSidedLogRatio => x.exp(),
            _ => x,
        }),
        pairs: cand.n,
        result: if failing {
            GateResult::Failing
        } else if judged {
            GateResult::Passing
        } else {
            GateResult::Inconclusive
        },
        text,
    })
}
