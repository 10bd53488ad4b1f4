//! External gates: readings the proxy cannot make itself (a PromQL query, the new color's own
//! `/metrics`), judged against a ceiling and/or a floor. No data is inconclusive, never a
//! pass and never a fail: an empty result says nothing about the version.

use crate::{Gate, GateResult, Verdict};

/// How the values of several series or endpoints become one reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Reduce {
    #[default]
    Max,
    Min,
    Sum,
    Mean,
}

impl Reduce {
    /// `None` for no values: there is nothing to reduce.
    pub fn apply(self, values: &[f64]) -> Option<f64> {
        let mut it = values.iter().copied();
        let first = it.next()?;
        Some(match self {
            Reduce::Max => it.fold(first, f64::max),
            Reduce::Min => it.fold(first, f64::min),
            Reduce::Sum => it.fold(first, |a, b| a + b),
            Reduce::Mean => values.iter().sum::<f64>() / values.len() as f64,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Reduce::Max => "max",
            Reduce::Min => "min",
            Reduce::Sum => "sum",
            Reduce::Mean => "mean",
        }
    }
}

/// One external gate's latest reading.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    pub name: String,
    /// What was read: the query as sent, or `max(vllm:num_requests_waiting)`.
    pub query: String,
    /// `Ok(None)`: the source answered with no data. `Err`: it could not be read (why).
    pub value: Result<Option<f64>, String>,
    pub max: Option<f64>,
    pub min: Option<f64>,
}

impl Reading {
    /// The gate, and the reason it is not passing (if it is not).
    pub fn judge(&self) -> (Gate, Option<String>) {
        let limit = self.max.or(self.min).unwrap_or(f64::NAN);
        let (value, result, reason) = match &self.value {
            Err(why) => (
                None,
                GateResult::Inconclusive,
                Some(format!(
                    "gate {:?} had no data: {} could not be read: {why}",
                    self.name, self.query
                )),
            ),
            Ok(None) => (
                None,
                GateResult::Inconclusive,
                Some(format!(
                    "gate {:?} had no data: {} returned an empty result",
                    self.name, self.query
                )),
            ),
            Ok(Some(v)) => {
                let v = *v;
                let breach = match (self.max, self.min) {
                    (Some(max), _) if v > max => Some(format!("{v} > max {max}")),
                    (_, Some(min)) if v < min => Some(format!("{v} < min {min}")),
                    _ if v.is_nan() => Some("NaN".into()),
                    _ => None,
                };
                match breach {
                    Some(b) => (
                        Some(v),
                        GateResult::Failing,
                        Some(format!("gate {:?}: {} = {b}", self.name, self.query)),
                    ),
                    None => (Some(v), GateResult::Passing, None),
                }
            }
        };
        let gate = Gate {
            name: self.name.clone(),
            value,
            limit,
            result,
            query: Some(self.query.clone()),
        };
        (gate, reason)
    }
}

/// Adds external readings to a verdict of the built-in gates: the worst gate wins, and the
/// reason lists every gate that is not passing.
pub fn merge(mut verdict: Verdict, readings: &[Reading]) -> Verdict {
    let mut reasons = Vec::new();
    for r in readings {
        let (gate, reason) = r.judge();
        if gate.result > verdict.result {
            verdict.result = gate.result;
        }
        reasons.extend(reason);
        verdict.gates.push(gate);
    }
    if verdict.result == GateResult::Passing {
        return verdict;
    }
    // A passing built-in verdict's reason is its summary, not a complaint: replace it.
    let builtin_passing = verdict
        .gates
        .iter()
        .filter(|g| g.query.is_none())
        .all(|g| g.result == GateResult::Passing);
    if !builtin_passing && !verdict.reason.is_empty() {
        reasons.insert(0, verdict.reason.clone());
    }
    verdict.reason = reasons.join("; ");
    verdict
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(value: Result<Option<f64>, String>, max: Option<f64>, min: Option<f64>) -> Reading {
        Reading {
            name: "queue".into(),
            query: "max(q{color=\"green\"})".into(),
            value,
            max,
            min,
        }
    }

    fn passing() -> Verdict {
        Verdict {
            gates: vec![],
            result: GateResult::Passing,
            reason: "all gates passing over 30 requests".into(),
        }
    }

    #[test]
    fn empty_result_is_inconclusive_and_names_the_query() {
        let (g, why) = reading(Ok(None), Some(5.0), None).judge();
        assert_eq!(g.result, GateResult::Inconclusive);
        let why = why.unwrap();
        assert!(
            why.contains("no data") && why.contains("max(q{color=\"green\"})"),
            "{why}"
        );
    }

    #[test]
    fn unreachable_source_is_inconclusive_never_a_pass() {
        let (g, why) = reading(Err("connection refused".into()), Some(5.0), None).judge();
        assert_eq!(g.result, GateResult::Inconclusive);
        assert!(why.unwrap().contains("connection refused"));
    }

    #[test]
    fn bounds_fail_outside_and_pass_inside() {
        let judge = |v, max, min| reading(Ok(Some(v)), max, min).judge().0.result;
        assert_eq!(judge(7.0, Some(5.0), None), GateResult::Failing);
        assert_eq!(judge(5.0, Some(5.0), None), GateResult::Passing);
        assert_eq!(judge(0.5, None, Some(1.0)), GateResult::Failing);
        assert_eq!(judge(2.0, Some(3.0), Some(1.0)), GateResult::Passing);
        assert_eq!(judge(f64::NAN, Some(3.0), None), GateResult::Failing);
    }

    #[test]
    fn merge_takes_the_worst_and_keeps_a_passing_summary_out_of_the_reason() {
        let v = merge(
            passing(),
            &[
                reading(Ok(Some(7.0)), Some(5.0), None),
                reading(Ok(None), Some(5.0), None),
            ],
        );
        assert_eq!(v.result, GateResult::Failing);
        assert!(!v.reason.contains("all gates passing"), "{}", v.reason);
        assert!(v.reason.contains("7 > max 5"), "{}", v.reason);
        assert_eq!(v.gates.len(), 2);
        assert_eq!(v.gates[0].query.as_deref(), Some("max(q{color=\"green\"})"));
        let ok = merge(passing(), &[reading(Ok(Some(1.0)), Some(5.0), None)]);
        assert_eq!(
            (ok.result, ok.reason.as_str()),
            (GateResult::Passing, "all gates passing over 30 requests")
        );
    }

    #[test]
    fn reductions() {
        let v = [1.0, 4.0, 2.0, 1.0];
        let r = |x: Reduce| x.apply(&v).unwrap();
        assert_eq!(
            (r(Reduce::Max), r(Reduce::Min), r(Reduce::Sum), r(Reduce::Mean)),
            (4.0, 1.0, 8.0, 2.0)
        );
        assert_eq!(Reduce::Max.apply(&[]), None);
    }
}
