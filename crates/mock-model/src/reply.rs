//! What mock-model answers: text that depends only on the prompt (so two servers of one
//! model agree), with knobs that make a version differ in controlled ways.
//!
//! - the prompt (`messages`, `prompt` or `input`) is hashed; at temperature 0 that hash alone
//!   picks the words; a `seed` is mixed in; otherwise (sampling, OpenAI's default temperature
//!   1) a per-request nonce is mixed in as well, so answers vary;
//! - `--refusal-rate`, `--perturb` and `--invalid-json-rate` choose their share of prompts by
//!   the prompt hash (each with its own salt, so they pick independent prompts): the same
//!   prompt is refused, perturbed or broken every time;
//! - `--output-noise` is drawn per request: one word changes, even at temperature 0, like the
//!   batch-induced nondeterminism of real servers.

use serde_json::{json, Map, Value};

/// The refusal `--refusal-rate` answers with.
pub const REFUSAL: &str = "I'm sorry, but I can't help with that.";

const REFUSAL_SALT: u64 = 0x5245_4655_5341_4c21;
const PERTURB_SALT: u64 = 0x5045_5254_5552_4221;
const INVALID_JSON_SALT: u64 = 0x4a53_4f4e_4241_4421;
const NOISE_SALT: u64 = 0x4e4f_4953_4521_2121;

const VOCAB: [&str; 48] = [
    "the", "model", "answers", "every", "question", "with", "care", "and", "a", "clear", "plan", "for", "blue",
    "green", "release", "traffic", "moves", "at", "once", "when", "checks", "pass", "tokens", "stream", "from",
    "server", "to", "client", "while", "latency", "stays", "low", "under", "load", "batch", "cache", "keeps",
    "weights", "warm", "new", "version", "shadow", "compares", "old", "noise", "baseline", "gate", "decides",
];

/// The knobs of one running version (after `--…-for VERSION=…` overrides).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Knobs {
    pub output_noise: f64,
    pub perturb: f64,
    pub refusal_rate: f64,
    pub invalid_json_rate: f64,
    pub embedding_dim: usize,
    pub embedding_jitter: f64,
}

/// A chat or completion answer: its text in the pieces it is streamed in.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    pub pieces: Vec<String>,
    pub finish_reason: &'static str,
}

impl Reply {
    /// The whole text (what a plain answer carries; the stream's pieces concatenated).
    pub fn content(&self) -> String {
        self.pieces.concat()
    }

    fn words(words: &[&str]) -> Reply {
        let n = words.len();
        let pieces = words
            .iter()
            .enumerate()
            .map(|(i, w)| if i + 1 < n { format!("{w} ") } else { w.to_string() })
            .collect();
        Reply {
            pieces,
            finish_reason: "stop",
        }
    }
}

/// SplitMix64's finalizer.
pub fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A uniform number in [0, 1) from a hash.
fn unit(h: u64) -> f64 {
    (h >> 11) as f64 / (1u64 << 53) as f64
}

fn fnv(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h = (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The prompt's hash: equal prompts hash equally on every server.
pub fn prompt_hash(body: &Value) -> u64 {
    let prompt = ["messages", "prompt", "input"]
        .iter()
        .find_map(|k| body.get(*k))
        .unwrap_or(&Value::Null);
    fnv(prompt.to_string().as_bytes())
}

/// True for the share `p` of prompts that `salt`'s knob picks.
fn chosen(prompt: u64, salt: u64, p: f64) -> bool {
    unit(mix(prompt ^ salt)) < p
}

/// The answer to a chat or completion request. `nonce` is this request's own random number.
pub fn reply(k: &Knobs, body: &Value, tokens: u64, nonce: u64) -> Reply {
    let prompt = prompt_hash(body);
    if chosen(prompt, REFUSAL_SALT, k.refusal_rate) {
        return Reply::words(&REFUSAL.split(' ').collect::<Vec<_>>());
    }
    let mut seed = prompt;
    if let Some(s) = body.get("seed").and_then(Value::as_i64) {
        seed = mix(seed ^ s as u64);
    } else if body.get("temperature").and_then(Value::as_f64) != Some(0.0) {
        seed = mix(seed ^ nonce);
    }
    if chosen(prompt, PERTURB_SALT, k.perturb) {
        seed = mix(seed ^ PERTURB_SALT);
    }
    let mut words: Vec<&str> = (0..tokens)
        .map(|i| VOCAB[(mix(seed.wrapping_add(i)) % VOCAB.len() as u64) as usize])
        .collect();
    if unit(mix(nonce ^ NOISE_SALT)) < k.output_noise && !words.is_empty() {
        let at = (mix(nonce) % words.len() as u64) as usize;
        // Any other word: the next one in the vocabulary.
        let i = VOCAB.iter().position(|w| *w == words[at]).unwrap_or(0);
        words[at] = VOCAB[(i + 1) % VOCAB.len()];
    }
    match json_format(body) {
        None => Reply::words(&words),
        Some(schema) => {
            let broken = chosen(prompt, INVALID_JSON_SALT, k.invalid_json_rate);
            json_reply(&words, schema, prompt, broken)
        }
    }
}

/// `Some(schema or Null)` when `response_format` asks for JSON.
fn json_format(body: &Value) -> Option<&Value> {
    let rf = body.get("response_format")?;
    match rf.get("type")?.as_str()? {
        "json_object" => Some(&Value::Null),
        "json_schema" => Some(
            rf.get("json_schema")
                .and_then(|j| j.get("schema"))
                .unwrap_or(&Value::Null),
        ),
        _ => None,
    }
}

/// A JSON object answer: one value per property of the schema (of the property's type), or
/// `{"answer": "..."}`; `broken` drops the closing brace.
fn json_reply(words: &[&str], schema: &Value, prompt: u64, broken: bool) -> Reply {
    let text = words.join(" ");
    let mut obj = Map::new();
    match schema.get("properties").and_then(Value::as_object) {
        Some(props) => {
            for (k, p) in props {
                let v = match p.get("type").and_then(Value::as_str) {
                    Some("integer") => json!(prompt % 100),
                    Some("number") => json!((prompt % 1000) as f64 / 10.0),
                    Some("boolean") => json!(prompt % 2 == 0),
                    Some("array") => json!(words.iter().take(3).collect::<Vec<_>>()),
                    Some("object") => json!({}),
                    Some("null") => Value::Null,
                    _ => json!(text),
                };
                obj.insert(k.clone(), v);
            }
        }
        None => {
            obj.insert("answer".into(), json!(text));
        }
    }
    let mut s = Value::Object(obj).to_string();
    if broken {
        s.pop();
    }
    Reply {
        pieces: s.split_inclusive(' ').map(str::to_string).collect(),
        finish_reason: "stop",
    }
}

/// A deterministic unit vector of `dim` dimensions for `text`, plus per-request jitter
/// (an approximately gaussian component with standard deviation `jitter`, then normalized).
pub fn embed(text: &str, dim: usize, jitter: f64, nonce: u64) -> Vec<f64> {
    let base = fnv(text.as_bytes());
    let mut v: Vec<f64> = (0..dim as u64)
        .map(|i| unit(mix(base ^ i.wrapping_mul(0x9E37))) * 2.0 - 1.0)
        .collect();
    if jitter > 0.0 {
        for (i, x) in v.iter_mut().enumerate() {
            // Sum of three uniforms on [-1, 1]: mean 0, variance 1, bell-shaped.
            let g: f64 = (0..3u64)
                .map(|j| unit(mix(nonce ^ ((i as u64) << 2 | j))) * 2.0 - 1.0)
                .sum();
            *x += jitter * g;
        }
    }
    let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt().max(1e-9);
    v.into_iter().map(|x| x / norm).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ask(temperature: f64) -> Value {
        json!({"messages": [{"role": "user", "content": "hello"}], "temperature": temperature})
    }

    #[test]
    fn equal_prompts_get_equal_answers_at_temperature_0() {
        let k = Knobs::default();
        let a = reply(&k, &ask(0.0), 16, 1);
        assert_eq!(a, reply(&k, &ask(0.0), 16, 2));
        assert_eq!(a.pieces.len(), 16);
        let other = json!({"messages": [{"role": "user", "content": "bye"}], "temperature": 0.0});
        assert_ne!(a, reply(&k, &other, 16, 1));
        // Sampling varies per request; a seed makes it repeatable again.
        assert_ne!(reply(&k, &ask(0.7), 16, 1), reply(&k, &ask(0.7), 16, 2));
        let seeded = json!({"messages": [], "temperature": 0.7, "seed": 3});
        assert_eq!(reply(&k, &seeded, 16, 1), reply(&k, &seeded, 16, 2));
    }

    #[test]
    fn output_noise_changes_one_word_per_request() {
        let k = Knobs {
            output_noise: 1.0,
            ..Knobs::default()
        };
        let clean = reply(&Knobs::default(), &ask(0.0), 16, 1).pieces;
        let noisy = reply(&k, &ask(0.0), 16, 1).pieces;
        assert_eq!(clean.iter().zip(&noisy).filter(|(a, b)| a != b).count(), 1);
    }

    #[test]
    fn shares_of_prompts_are_chosen_by_hash() {
        let k = Knobs {
            perturb: 0.3,
            ..Knobs::default()
        };
        let prompts: Vec<Value> = (0..1000).map(|i| json!({"messages": [i], "temperature": 0})).collect();
        let changed = prompts
            .iter()
            .filter(|p| reply(&k, p, 8, 1) != reply(&Knobs::default(), p, 8, 1))
            .count();
        assert!((250..350).contains(&changed), "{changed}");
    }

    #[test]
    fn embeddings_have_the_asked_dimension_and_jitter() {
        let a = embed("x", 32, 0.0, 1);
        assert_eq!(a.len(), 32);
        assert_eq!(a, embed("x", 32, 0.0, 2));
        let b = embed("x", 32, 0.1, 2);
        let cos: f64 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
        assert!(cos < 0.9999 && cos > 0.5, "{cos}");
    }
}
