//! The gate's verdicts: every case issue #21 lists, bounded memory, merging and the reading.

use std::time::Duration;

use super::*;

/// Three answers to request `i`: live, the candidate's, and a second live one (baseline).
type Make<'a> = dyn Fn(u64, &mut Rng) -> (Answer, Answer, Answer) + 'a;

fn run(t: Thresholds, profile: &Profile, pairs: u64, baseline: u64, make: &Make<'_>) -> ShadowReading {
    let mut acc = Accumulator::new(t);
    let mut rng = Rng(7);
    for i in 0..pairs.max(baseline) {
        let (live, shadow, live2) = make(i, &mut rng);
        let pair = |shadow| Pair {
            key: i,
            profile,
            request: None,
            live: &live,
            shadow,
        };
        if i < pairs {
            acc.add_pair(&pair(&shadow));
        }
        if i < baseline {
            acc.add_baseline(&pair(&live2));
        }
    }
    acc.reading()
}

/// A deterministic answer to prompt `i`, with one word changed at probability `noise`
/// (drawn per answer, like batch nondeterminism).
fn noisy(i: u64, noise: f64, r: &mut Rng) -> Answer {
    let text = sentence(i, 16);
    chat(&if r.chance(noise) {
        one_word_changed(&text, r)
    } else {
        text
    })
}

fn det() -> Profile {
    Profile::of(Class::DeterministicChat)
}

fn assert_fails(r: &ShadowReading, needles: &[&str]) {
    eprintln!("verdict: {}", r.reason);
    assert_eq!(r.result, GateResult::Failing, "{}", r.reason);
    for n in needles {
        assert!(r.reason.contains(n), "reason lacks {n:?}: {}", r.reason);
    }
}

#[test]
fn identical_versions_pass() {
    let same = |i: u64, r: &mut Rng| (noisy(i, 0.0, r), noisy(i, 0.0, r), noisy(i, 0.0, r));
    let r = run(thresholds(), &det(), 100, 0, &same);
    assert_eq!(r.result, GateResult::Passing, "{}", r.reason);
    assert!(
        r.reason
            .contains("deterministic chat: 100 pairs passing (no noise baseline: fixed thresholds)"),
        "{}",
        r.reason
    );
    let r = run(thresholds(), &det(), 100, 40, &same);
    assert_eq!(r.result, GateResult::Passing, "{}", r.reason);
    assert!(
        r.reason.contains("against a noise baseline of 40 pairs"),
        "{}",
        r.reason
    );
}

#[test]
fn equal_noise_passes_only_with_the_baseline() {
    let noise = |i: u64, r: &mut Rng| (noisy(i, 0.3, r), noisy(i, 0.3, r), noisy(i, 0.3, r));
    let without = run(thresholds(), &det(), 200, 0, &noise);
    assert_fails(
        &without,
        &[
            "deterministic chat: exact match",
            "over 200 pairs",
            "no noise baseline: fixed thresholds",
        ],
    );
    let with = run(thresholds(), &det(), 200, 200, &noise);
    assert_eq!(with.result, GateResult::Passing, "{}", with.reason);
    assert!(with.reason.contains("against a noise baseline of 200 pairs"));
}

#[test]
fn perturbed_text_fails_against_the_baseline() {
    let perturbed = |i: u64, r: &mut Rng| {
        let shadow = if i % 10 < 3 {
            chat(&sentence(i + 10_000, 16))
        } else {
            noisy(i, 0.1, r)
        };
        (noisy(i, 0.1, r), shadow, noisy(i, 0.1, r))
    };
    let r = run(thresholds(), &det(), 200, 100, &perturbed);
    assert_fails(
        &r,
        &[
            "deterministic chat: ROUGE-L 0.",
            "vs baseline 0.9",
            "(margin 0.05) over 200 pairs",
        ],
    );
    let rouge = r.classes.iter().find(|c| c.class == "deterministic_chat").unwrap();
    let m = rouge.metrics.iter().find(|m| m.metric == Metric::RougeL).unwrap();
    assert!(m.value < 0.85 && m.baseline.unwrap() > 0.95, "{m:?}");
}

#[test]
fn new_errors_fail() {
    let errors = |i: u64, r: &mut Rng| {
        let shadow = if i % 10 == 0 { failed(500) } else { noisy(i, 0.0, r) };
        (noisy(i, 0.0, r), shadow, noisy(i, 0.0, r))
    };
    let r = run(thresholds(), &det(), 100, 50, &errors);
    assert_fails(
        &r,
        &["all answers: new error rate 10.0% vs baseline 0.0% (margin 1.0%) over 100 pairs"],
    );
    let r = run(thresholds(), &det(), 100, 0, &errors);
    assert_fails(
        &r,
        &["all answers: new error rate 10.0% (limit 1.0%) over 100 pairs; no noise baseline"],
    );
}

#[test]
fn refusals_fail() {
    let refusals = |i: u64, _: &mut Rng| {
        let live = chat(&format!("Here is answer {i}."));
        let shadow = if i % 5 == 0 {
            chat("I'm sorry, but I can't help with that.")
        } else {
            chat(&format!("Answer {i} is here."))
        };
        (live.clone(), shadow, live)
    };
    let r = run(thresholds(), &Profile::of(Class::SampledChat), 100, 0, &refusals);
    assert_fails(
        &r,
        &["sampled chat: refusal-rate increase 20.0 points (limit 2.0 points) over 100 pairs"],
    );
    let r = run(thresholds(), &Profile::of(Class::SampledChat), 100, 100, &refusals);
    assert_fails(
        &r,
        &["sampled chat: refusal-rate increase 20.0 points vs baseline 0.0 points"],
    );
}

#[test]
fn invalid_json_fails() {
    let p = Profile {
        class: Class::Json,
        json: Some(JsonFormat::Object),
        tools: vec![],
    };
    let broken = |i: u64, _: &mut Rng| {
        let good = chat(&format!(r#"{{"answer": "{i}"}}"#));
        let shadow = if i % 5 == 0 {
            chat(&format!(r#"{{"answer": "{i}""#))
        } else {
            good.clone()
        };
        (good.clone(), shadow, good)
    };
    let r = run(thresholds(), &p, 100, 0, &broken);
    assert_fails(
        &r,
        &["JSON/tool output: JSON parse-rate drop 20.0 points (limit 2.0 points) over 100 pairs"],
    );
}

#[test]
fn a_changed_embedding_dimension_fails_at_any_count() {
    let dims = |i: u64, _: &mut Rng| {
        let v = |d: usize| vectors(vec![(0..d).map(|k| (k as f64 + i as f64).sin()).collect()]);
        (v(8), v(16), v(8))
    };
    let r = run(thresholds(), &Profile::of(Class::Embeddings), 3, 0, &dims);
    assert_fails(&r, &["embeddings: dimension mismatch 100.0% over 3 pairs"]);
}

#[test]
fn embedding_jitter_fails_on_cosine_without_baseline() {
    let jitter = |i: u64, r: &mut Rng| {
        let base: Vec<f64> = (0..8).map(|k| ((k + i) as f64).cos()).collect();
        let noisy: Vec<f64> = base.iter().map(|x| x + (r.below(1000) as f64 / 1000.0 - 0.5)).collect();
        (vectors(vec![base.clone()]), vectors(vec![noisy]), vectors(vec![base]))
    };
    let r = run(thresholds(), &Profile::of(Class::Embeddings), 60, 0, &jitter);
    assert_fails(
        &r,
        &["embeddings: cosine similarity 0.", "(limit 0.9900) over 60 pairs"],
    );
}

#[test]
fn a_slower_first_token_fails() {
    let slow = |i: u64, r: &mut Rng| {
        let mut live = noisy(i, 0.0, r);
        live.timings.first_byte = Some(Duration::from_millis(100));
        let mut shadow = live.clone();
        shadow.timings.first_byte = Some(Duration::from_millis(300));
        (live.clone(), shadow, live)
    };
    let r = run(thresholds(), &det(), 60, 0, &slow);
    assert_fails(
        &r,
        &["all answers: time-to-first-byte ratio 3.00 (limit ×1.50) over 60 pairs"],
    );
}

#[test]
fn fewer_pairs_than_min_pairs_is_inconclusive_never_a_pass() {
    let same = |i: u64, r: &mut Rng| (noisy(i, 0.0, r), noisy(i, 0.0, r), noisy(i, 0.0, r));
    let r = run(thresholds(), &det(), 49, 49, &same);
    assert_eq!(r.result, GateResult::Inconclusive, "{}", r.reason);
    assert!(
        r.reason
            .contains("only 49 pairs (deterministic chat 49 pairs): fewer than min_pairs 50"),
        "{}",
        r.reason
    );
    let none = Accumulator::new(thresholds()).judge();
    assert_eq!(none.result, GateResult::Inconclusive);
    assert!(none.reason.contains("only 0 pairs"), "{}", none.reason);
}

#[test]
fn a_class_with_too_few_pairs_is_named_but_does_not_block_a_judged_one() {
    let mut acc = Accumulator::new(thresholds());
    let p = det();
    let e = Profile::of(Class::Embeddings);
    let a = chat("same");
    let v = vectors(vec![vec![1.0, 0.0]]);
    for key in 0..60 {
        acc.add_pair(&Pair {
            key,
            profile: &p,
            request: None,
            live: &a,
            shadow: &a,
        });
    }
    for key in 0..5 {
        acc.add_pair(&Pair {
            key,
            profile: &e,
            request: None,
            live: &v,
            shadow: &v,
        });
    }
    let v = acc.judge();
    assert_eq!(v.result, GateResult::Passing, "{}", v.reason);
    assert!(
        v.reason.contains("too few pairs to judge: embeddings 5 pairs"),
        "{}",
        v.reason
    );
}

#[test]
fn worst_pairs_are_bounded_and_samples_kept_only_when_asked() {
    let p = det();
    let live = chat("a long and secret answer about the user");
    let request = br#"{"messages":[{"role":"user","content":"my secret"}]}"#;
    for keep_samples in [false, true] {
        let mut acc = Accumulator::new(Thresholds {
            keep_samples,
            worst_pairs: 3,
            sample_bytes: 16,
            ..thresholds()
        });
        for key in 0..1000u64 {
            let shadow = chat(&format!("a long answer {key}"));
            acc.add_pair(&Pair {
                key,
                profile: &p,
                request: Some(request),
                live: &live,
                shadow: &shadow,
            });
        }
        let r = acc.reading();
        assert_eq!(r.worst.len(), 3);
        assert!(r.worst.windows(2).all(|w| w[0].severity >= w[1].severity));
        assert!(r.worst[0].differences.contains("ROUGE-L"), "{:?}", r.worst[0]);
        let w = &r.worst[0];
        if keep_samples {
            let req = w.request.as_deref().unwrap();
            assert!(req.len() <= 16 + '…'.len_utf8(), "{req}");
            assert!(w.live.is_some() && w.shadow.is_some());
        } else {
            assert_eq!((&w.request, &w.live, &w.shadow), (&None, &None, &None));
        }
    }
}

#[test]
fn merged_accumulators_judge_like_one() {
    let p = det();
    let mut one = Accumulator::new(thresholds());
    let mut parts = [Accumulator::new(thresholds()), Accumulator::new(thresholds())];
    let mut rng = Rng(3);
    for key in 0..120u64 {
        let (live, shadow) = (noisy(key, 0.2, &mut rng), noisy(key, 0.2, &mut rng));
        let pair = Pair {
            key,
            profile: &p,
            request: None,
            live: &live,
            shadow: &shadow,
        };
        one.add_pair(&pair);
        parts[(key % 2) as usize].add_pair(&pair);
        one.skip(SkipReason::SampledOut);
        parts[0].skip(SkipReason::SampledOut);
    }
    let [mut a, b] = parts;
    // Through JSON, as a fleet router would publish its share.
    let b: Accumulator = serde_json::from_str(&serde_json::to_string(&b).unwrap()).unwrap();
    a.merge(&b);
    let (ra, ro) = (a.reading(), one.reading());
    assert_eq!((ra.result, ra.pairs, &ra.skipped), (ro.result, ro.pairs, &ro.skipped));
    for (x, y) in ra.classes.iter().zip(&ro.classes) {
        for (m, n) in x.metrics.iter().zip(&y.metrics) {
            assert!((m.value - n.value).abs() < 1e-9, "{m:?} vs {n:?}");
        }
    }
}

#[test]
fn the_reading_serializes_for_the_release_document() {
    let mut acc = Accumulator::new(thresholds());
    acc.skip(SkipReason::SideEffects);
    acc.skip(SkipReason::SideEffects);
    acc.skip(SkipReason::BodyTooLarge);
    let p = det();
    let (l, s) = (chat("a b c"), chat("a b d"));
    acc.add_pair(&Pair {
        key: 1,
        profile: &p,
        request: None,
        live: &l,
        shadow: &s,
    });
    let r = acc.reading();
    let v = serde_json::to_value(&r).unwrap();
    assert_eq!(v["result"], "inconclusive");
    assert_eq!(v["skipped"]["side_effects"], 2);
    assert_eq!(v["skipped"]["body_too_large"], 1);
    assert_eq!(v["classes"][1]["class"], "deterministic_chat");
    assert_eq!(v["worst"][0]["class"], "deterministic_chat");
    let back: ShadowReading = serde_json::from_value(v).unwrap();
    assert_eq!(back, r);
    let g = r.gate(50);
    assert_eq!(
        (g.name.as_str(), g.value, g.result),
        ("shadow", Some(1.0), GateResult::Inconclusive)
    );
}

#[test]
fn thresholds_default_from_an_empty_table_and_reject_unknown_keys() {
    let t: Thresholds = serde_json::from_str("{}").unwrap();
    assert_eq!(t, Thresholds::default());
    let t: Thresholds = serde_json::from_str(r#"{"min_pairs": 7, "cosine_drop": null}"#).unwrap();
    assert_eq!((t.min_pairs, t.cosine_drop), (7, None));
    let err = serde_json::from_str::<Thresholds>(r#"{"min_pair": 7}"#).unwrap_err();
    assert!(err.to_string().contains("unknown field `min_pair`"), "{err}");
}

#[test]
fn thresholds_validate_names_the_wrong_key() {
    assert_eq!(Thresholds::default().validate(), Ok(()));
    let bad = |t: Thresholds| t.validate().unwrap_err();
    assert!(bad(Thresholds {
        min_pairs: 0,
        ..Thresholds::default()
    })
    .contains("min_pairs"));
    assert!(bad(Thresholds {
        rouge_l_drop: 1.5,
        ..Thresholds::default()
    })
    .contains("rouge_l_drop"));
    assert!(bad(Thresholds {
        ttft_ratio: Some(0.5),
        ..Thresholds::default()
    })
    .contains("ttft_ratio"));
    assert!(bad(Thresholds {
        z: f64::NAN,
        ..Thresholds::default()
    })
    .contains("z must"));
}
