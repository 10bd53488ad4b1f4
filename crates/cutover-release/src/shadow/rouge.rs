//! ROUGE-L (longest common subsequence of tokens) as Google's `rouge-score` 0.1.2 computes
//! it with its default tokenizer and no stemmer; a test checks it against that package.

use serde::{Deserialize, Serialize};

/// Precision, recall and F1 of the prediction's tokens against the target's.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct RougeScore {
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
}

/// `rouge_score.tokenize.tokenize(text, None)`: lowercase (Unicode, as Python's
/// `str.lower`), every run of characters other than ASCII `a-z0-9` becomes a separator.
pub fn tokenize(text: &str) -> Vec<String> {
    text.to_lowercase()
        .split(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit()))
        .filter(|t| !t.is_empty())
        .map(str::to_string)
        .collect()
}

/// `RougeScorer(['rougeL']).score(target, prediction)['rougeL']`. Either side without tokens
/// scores 0, as in `rouge-score` (the comparison treats two empty answers as equal itself).
pub fn rouge_l(target: &str, prediction: &str) -> RougeScore {
    rouge_l_tokens(&tokenize(target), &tokenize(prediction))
}

/// ROUGE-L over already tokenized texts.
pub fn rouge_l_tokens(target: &[String], prediction: &[String]) -> RougeScore {
    if target.is_empty() || prediction.is_empty() {
        return RougeScore::default();
    }
    let lcs = lcs_len(target, prediction) as f64;
    let precision = lcs / prediction.len() as f64;
    let recall = lcs / target.len() as f64;
    let f1 = if precision + recall > 0.0 {
        2.0 * precision * recall / (precision + recall)
    } else {
        0.0
    };
    RougeScore { precision, recall, f1 }
}

/// Length of the longest common subsequence, in O(|a|·|b|) time and O(|b|) memory.
fn lcs_len(a: &[String], b: &[String]) -> usize {
    let mut prev = vec![0usize; b.len() + 1];
    let mut cur = vec![0usize; b.len() + 1];
    for x in a {
        for (j, y) in b.iter().enumerate() {
            cur[j + 1] = if x == y { prev[j] + 1 } else { prev[j + 1].max(cur[j]) };
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}
