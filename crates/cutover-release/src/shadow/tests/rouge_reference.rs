//! ROUGE-L F1 against the reference implementation, Google's `rouge-score` 0.1.2 (PyPI),
//! run through `python3`. Not skipped when python or the package is missing: it fails and
//! says how to install it (`.ci/run` does).

use std::io::Write;
use std::process::{Command, Stdio};

use super::*;

/// Words with case, punctuation, digits and non-ASCII letters, which the default tokenizer
/// lowercases, splits on or drops.
const VOCAB: [&str; 40] = [
    "The",
    "the",
    "THE",
    "model",
    "Model's",
    "answer,",
    "answer.",
    "blue-green",
    "v2.1",
    "42",
    "4,096",
    "tokens!",
    "(latency)",
    "[DONE]",
    "don't",
    "can't",
    "I'm",
    "sorry",
    "but",
    "help",
    "with",
    "that.",
    "café",
    "Straße",
    "naïve",
    "İstanbul",
    "ÀÉÎ",
    "日本語",
    "emoji🙂",
    "x_y",
    "a/b",
    "&amp;",
    "--",
    "...",
    "a",
    "b",
    "c",
    "a",
    "gate",
    "noise",
];

fn phrase(r: &mut Rng, len: usize) -> String {
    let seps = [" ", " ", " ", "  ", "\n", "\t", ", ", "-"];
    let mut s = String::new();
    for i in 0..len {
        if i > 0 {
            s.push_str(seps[r.below(seps.len())]);
        }
        s.push_str(VOCAB[r.below(VOCAB.len())]);
    }
    s
}

/// 200 pairs: random, near-identical (a few edits), reordered, empty and punctuation-only.
fn pairs() -> Vec<(String, String)> {
    let mut r = Rng(2024);
    let mut out = vec![
        (String::new(), String::new()),
        ("hello world".into(), String::new()),
        ("...".into(), "hello".into()),
        ("Same text.".into(), "same TEXT".into()),
    ];
    while out.len() < 200 {
        let n = 1 + r.below(30);
        let target = phrase(&mut r, n);
        let prediction = match r.below(4) {
            0 => {
                let n = 1 + r.below(30);
                phrase(&mut r, n)
            }
            1 => {
                let mut words: Vec<String> = target.split(' ').map(str::to_string).collect();
                for _ in 0..=r.below(3) {
                    let i = r.below(words.len());
                    words[i] = VOCAB[r.below(VOCAB.len())].to_string();
                }
                words.join(" ")
            }
            2 => target.split(' ').rev().collect::<Vec<_>>().join(" "),
            _ => {
                let n = 1 + r.below(5);
                format!("{target} {}", phrase(&mut r, n))
            }
        };
        out.push((target, prediction));
    }
    out
}

const SCRIPT: &str = r#"
import json, sys
try:
    from rouge_score import rouge_scorer
except ImportError as e:
    sys.exit("rouge-score is not installed (python3 -m pip install rouge-score==0.1.2): %s" % e)
pairs = json.load(sys.stdin)
s = rouge_scorer.RougeScorer(["rougeL"])
print(json.dumps([s.score(t, p)["rougeL"].fmeasure for t, p in pairs]))
"#;

#[test]
fn rouge_l_matches_rouge_score_on_200_pairs() {
    let pairs = pairs();
    let mut child = Command::new("python3")
        .args(["-c", SCRIPT])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 is needed for the ROUGE-L reference test (and rouge-score==0.1.2)");
    let input = serde_json::to_vec(&pairs).unwrap();
    child.stdin.take().unwrap().write_all(&input).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the rouge-score reference failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reference: Vec<f64> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(reference.len(), pairs.len());
    let mut nonzero = 0;
    for ((target, prediction), want) in pairs.iter().zip(&reference) {
        let got = rouge_l(target, prediction).f1;
        assert!(
            (got - want).abs() < 1e-9,
            "ROUGE-L of {target:?} / {prediction:?}: ours {got}, rouge-score {want}"
        );
        nonzero += usize::from(*want > 0.0 && *want < 1.0);
    }
    // The pairs exercise more than the trivial 0 and 1.
    assert!(nonzero > 100, "{nonzero}");
}

#[test]
fn tokenizer_matches_rouge_score_defaults() {
    assert_eq!(
        tokenize("The Model's answer, v2.1!"),
        ["the", "model", "s", "answer", "v2", "1"]
    );
    assert_eq!(tokenize("café İstanbul 日本語"), ["caf", "i", "stanbul"]);
    assert!(tokenize("... -- !!").is_empty());
}
