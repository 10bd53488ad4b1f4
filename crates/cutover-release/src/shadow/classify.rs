//! The class of a mirrored request, which decides how its answers are compared.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// How a pair of answers to one request is compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Class {
    /// Chat or completion at temperature 0 (or with a `seed`, or `top_k` 1), one choice:
    /// the same version should give (nearly) the same text.
    DeterministicChat,
    /// Chat or completion with sampling: only the answers' shape is comparable.
    SampledChat,
    /// JSON output (`response_format` json_object / json_schema) or declared tools.
    Json,
    /// Embeddings.
    Embeddings,
}

impl Class {
    pub const ALL: [Class; 4] = [
        Class::DeterministicChat,
        Class::SampledChat,
        Class::Json,
        Class::Embeddings,
    ];

    /// The metric label value (`cutover_shadow_pairs_total{class}`).
    pub fn as_str(self) -> &'static str {
        match self {
            Class::DeterministicChat => "deterministic_chat",
            Class::SampledChat => "sampled_chat",
            Class::Json => "json",
            Class::Embeddings => "embeddings",
        }
    }

    /// The name in verdict reasons.
    pub fn label(self) -> &'static str {
        match self {
            Class::DeterministicChat => "deterministic chat",
            Class::SampledChat => "sampled chat",
            Class::Json => "JSON/tool output",
            Class::Embeddings => "embeddings",
        }
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

impl std::fmt::Display for Class {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.label())
    }
}

/// The JSON shape a request asks for through `response_format` (or the Responses API's
/// `text.format`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JsonFormat {
    /// `json_object`: any JSON object.
    Object,
    /// `json_schema`: an object checked against the schema's subset (see `compare`).
    Schema(Value),
}

/// A function tool the request declares, with its parameters' schema if it gave one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolSpec {
    pub name: String,
    pub parameters: Option<Value>,
}

/// What the comparison needs to know of a request: its class and expected output shape.
/// Built once per mirrored request and kept with the pair until both answers are in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Profile {
    pub class: Class,
    pub json: Option<JsonFormat>,
    pub tools: Vec<ToolSpec>,
}

impl Profile {
    /// A profile with no expected output shape.
    pub fn of(class: Class) -> Profile {
        Profile {
            class,
            json: None,
            tools: Vec::new(),
        }
    }
}

/// Classifies a request body (already known to be a JSON object) sent to `path`.
pub fn classify(path: &str, body: &Value) -> Profile {
    if path.ends_with("/embeddings") {
        return Profile::of(Class::Embeddings);
    }
    let json = json_format(body);
    let tools = tool_specs(body);
    let class = if json.is_some() || !tools.is_empty() {
        Class::Json
    } else if is_deterministic(body) {
        Class::DeterministicChat
    } else {
        Class::SampledChat
    };
    Profile { class, json, tools }
}

/// Temperature 0, a seed or greedy `top_k`, and one choice. An absent temperature means the
/// server's default (1 for OpenAI): sampled.
fn is_deterministic(body: &Value) -> bool {
    let greedy = body.get("temperature").and_then(Value::as_f64) == Some(0.0)
        || body.get("seed").is_some_and(|s| !s.is_null())
        || body.get("top_k").and_then(Value::as_i64) == Some(1);
    let one = match body.get("n") {
        None | Some(Value::Null) => true,
        Some(n) => n.as_u64() == Some(1),
    };
    greedy && one
}

fn json_format(body: &Value) -> Option<JsonFormat> {
    let rf = body
        .get("response_format")
        .or_else(|| body.get("text").and_then(|t| t.get("format")))?;
    match rf.get("type").and_then(Value::as_str)? {
        "json_object" => Some(JsonFormat::Object),
        "json_schema" => {
            // Chat: {"type":"json_schema","json_schema":{"name":..,"schema":{..}}};
            // Responses: {"type":"json_schema","name":..,"schema":{..}}.
            let schema = rf
                .get("json_schema")
                .and_then(|j| j.get("schema"))
                .or_else(|| rf.get("schema"))
                .cloned()
                .unwrap_or(Value::Null);
            Some(JsonFormat::Schema(schema))
        }
        _ => None,
    }
}

fn tool_specs(body: &Value) -> Vec<ToolSpec> {
    let Some(tools) = body.get("tools").and_then(Value::as_array) else {
        return Vec::new();
    };
    tools
        .iter()
        .filter_map(|t| {
            // Chat: {"type":"function","function":{"name","parameters"}}; Responses: flat.
            let f = t.get("function").unwrap_or(t);
            let name = f.get("name")?.as_str()?.to_string();
            Some(ToolSpec {
                name,
                parameters: f.get("parameters").cloned(),
            })
        })
        .collect()
}
