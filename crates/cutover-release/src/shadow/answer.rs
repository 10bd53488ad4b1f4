//! A model server's raw answer (a JSON document or an SSE stream, possibly cut at the copy
//! cap) assembled into what the comparison reads.
//!
//! Metadata that differs between any two answers (`model`, `id`, `created`,
//! `system_fingerprint`) is never read, so it can never count as a difference.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Times the data plane measured for one answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Timings {
    /// Time to the first body byte (for a stream: the first token's event).
    pub first_byte: Option<Duration>,
    /// Time to the last byte.
    pub total: Option<Duration>,
}

/// One answer as the data plane saw it.
#[derive(Debug, Clone, Copy)]
pub struct RawAnswer<'a> {
    pub status: u16,
    /// The `content-type` header, if any.
    pub content_type: Option<&'a str>,
    /// The body's bytes, at most the copy cap.
    pub body: &'a [u8],
    /// True when the body went on past the cap (the copy holds only its start).
    pub truncated: bool,
    pub timings: Timings,
}

/// A tool call: the function's name and its arguments as the model wrote them.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ToolCall {
    pub name: String,
    pub arguments: String,
}

/// Token counts the server reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Usage {
    pub prompt_tokens: Option<u64>,
    pub completion_tokens: Option<u64>,
}

/// An answer reassembled: the first choice's text, tool calls and finish reason, or the
/// embedding vectors, or the error.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Answer {
    pub status: u16,
    pub content: String,
    pub tool_calls: Vec<ToolCall>,
    pub finish_reason: Option<String>,
    pub usage: Option<Usage>,
    /// Set for a non-2xx status, an `error` object in the body or in a stream, a stream that
    /// ended before `[DONE]` and a finish reason, or a body that is not what its type says.
    pub error: Option<String>,
    pub embeddings: Vec<Vec<f64>>,
    /// The copy was cut at the cap: text is a prefix, so text metrics skip this answer.
    pub truncated: bool,
    pub stream: bool,
    pub timings: Timings,
}

impl Answer {
    /// Assembles a raw answer. Never fails: what cannot be read becomes `error`.
    pub fn assemble(raw: &RawAnswer<'_>) -> Answer {
        let mut a = Answer {
            status: raw.status,
            truncated: raw.truncated,
            timings: raw.timings,
            ..Answer::default()
        };
        let ct = raw.content_type.unwrap_or("").to_ascii_lowercase();
        let trimmed = raw.body.trim_ascii_start();
        a.stream = ct.contains("text/event-stream") || trimmed.starts_with(b"data:");
        if a.stream {
            a.read_sse(raw.body);
        } else {
            a.read_json(trimmed);
        }
        if !(200..300).contains(&raw.status) && a.error.is_none() {
            a.error = Some(format!("HTTP {}", raw.status));
        }
        a
    }

    /// True when this answer is an error of any kind.
    pub fn is_error(&self) -> bool {
        self.error.is_some()
    }

    fn read_json(&mut self, body: &[u8]) {
        let v: Value = match serde_json::from_slice(body) {
            Ok(v) => v,
            Err(_) if self.truncated || !(200..300).contains(&self.status) => return,
            Err(e) => {
                self.error.get_or_insert_with(|| format!("body is not JSON: {e}"));
                return;
            }
        };
        if let Some(e) = error_of(&v) {
            self.error = Some(e);
        }
        if let Some(data) = v.get("data").and_then(Value::as_array) {
            self.embeddings = data.iter().filter_map(|d| vector(d.get("embedding")?)).collect();
        }
        if let Some(c) = v.get("choices").and_then(|c| c.get(0)) {
            let m = c.get("message").unwrap_or(c);
            self.content.push_str(&text_of(m.get("content")));
            self.content
                .push_str(c.get("text").and_then(Value::as_str).unwrap_or(""));
            for (i, t) in m
                .get("tool_calls")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .enumerate()
            {
                self.merge_tool_delta(i, t);
            }
            if let Some(f) = m.get("function_call") {
                self.merge_tool_delta(0, &serde_json::json!({ "function": f }));
            }
            self.finish(c.get("finish_reason"));
        }
        self.read_responses_output(&v);
        self.read_usage(v.get("usage"));
    }

    /// The Responses API's non-streamed `output` items.
    fn read_responses_output(&mut self, v: &Value) {
        for item in v.get("output").and_then(Value::as_array).into_iter().flatten() {
            match item.get("type").and_then(Value::as_str) {
                Some("message") => {
                    for part in item.get("content").and_then(Value::as_array).into_iter().flatten() {
                        self.content
                            .push_str(part.get("text").and_then(Value::as_str).unwrap_or(""));
                    }
                }
                Some("function_call") => self.tool_calls.push(ToolCall {
                    name: str_of(item.get("name")),
                    arguments: str_of(item.get("arguments")),
                }),
                _ => {}
            }
        }
        if v.get("status").and_then(Value::as_str) == Some("completed") && v.get("output").is_some() {
            self.finish_reason.get_or_insert_with(|| "stop".into());
        }
    }

    fn read_sse(&mut self, body: &[u8]) {
        let text = String::from_utf8_lossy(body);
        let mut done = false;
        let mut data = String::new();
        // An event ends at a blank line; a last event without one is complete only when the
        // body was not cut (the server closed after it).
        let mut lines = text.split('\n').peekable();
        while let Some(line) = lines.next() {
            let line = line.strip_suffix('\r').unwrap_or(line);
            let at_end = lines.peek().is_none();
            if let Some(d) = line.strip_prefix("data:") {
                if !data.is_empty() {
                    data.push('\n');
                }
                data.push_str(d.strip_prefix(' ').unwrap_or(d));
            }
            let dispatch = line.is_empty() || (at_end && !self.truncated);
            if dispatch && !data.is_empty() {
                if data.trim() == "[DONE]" {
                    done = true;
                } else {
                    self.read_chunk(&data);
                }
                data.clear();
            }
        }
        if !done && !self.truncated && self.finish_reason.is_none() && self.error.is_none() {
            self.error = Some("stream ended before [DONE]".into());
        }
    }

    fn read_chunk(&mut self, data: &str) {
        let Ok(v) = serde_json::from_str::<Value>(data) else {
            self.error.get_or_insert_with(|| "stream event is not JSON".into());
            return;
        };
        if let Some(e) = error_of(&v) {
            self.error = Some(e);
        }
        if let Some(c) = v.get("choices").and_then(|c| c.get(0)) {
            if let Some(d) = c.get("delta") {
                self.content.push_str(&text_of(d.get("content")));
                for (i, t) in d
                    .get("tool_calls")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .enumerate()
                {
                    let index = t.get("index").and_then(Value::as_u64).map_or(i, |x| x as usize);
                    self.merge_tool_delta(index, t);
                }
            }
            self.content
                .push_str(c.get("text").and_then(Value::as_str).unwrap_or(""));
            self.finish(c.get("finish_reason"));
        }
        // Responses API stream events.
        match v.get("type").and_then(Value::as_str) {
            Some("response.output_text.delta") => self.content.push_str(&str_of(v.get("delta"))),
            Some("response.completed") => {
                self.finish_reason.get_or_insert_with(|| "stop".into());
                self.read_usage(v.get("response").and_then(|r| r.get("usage")));
            }
            _ => {}
        }
        self.read_usage(v.get("usage"));
    }

    /// Merges one tool-call delta (or a whole call) into the call at `index`: the name comes
    /// once, the arguments in pieces.
    fn merge_tool_delta(&mut self, index: usize, t: &Value) {
        // A bound on what a hostile or broken stream can make us allocate.
        if index >= 128 {
            return;
        }
        if self.tool_calls.len() <= index {
            self.tool_calls.resize(index + 1, ToolCall::default());
        }
        let call = &mut self.tool_calls[index];
        let f = t.get("function").unwrap_or(t);
        if let Some(n) = f.get("name").and_then(Value::as_str) {
            call.name.push_str(n);
        }
        if let Some(a) = f.get("arguments").and_then(Value::as_str) {
            call.arguments.push_str(a);
        }
    }

    fn finish(&mut self, reason: Option<&Value>) {
        if let Some(r) = reason.and_then(Value::as_str) {
            self.finish_reason = Some(r.to_string());
        }
    }

    fn read_usage(&mut self, u: Option<&Value>) {
        let Some(u) = u.filter(|u| u.is_object()) else { return };
        let n = |k: &str, alt: &str| u.get(k).or_else(|| u.get(alt)).and_then(Value::as_u64);
        self.usage = Some(Usage {
            prompt_tokens: n("prompt_tokens", "input_tokens"),
            completion_tokens: n("completion_tokens", "output_tokens"),
        });
    }
}

fn str_of(v: Option<&Value>) -> String {
    v.and_then(Value::as_str).unwrap_or("").to_string()
}

/// A message's content: a string, or an array of parts whose `text` are joined.
fn text_of(v: Option<&Value>) -> String {
    match v {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => parts.iter().filter_map(|p| p.get("text")?.as_str()).collect(),
        _ => String::new(),
    }
}

fn error_of(v: &Value) -> Option<String> {
    match v.get("error")? {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        e => Some(
            e.get("message")
                .and_then(Value::as_str)
                .map_or_else(|| e.to_string(), str::to_string),
        ),
    }
}

/// An embedding: an array of numbers, or base64 of little-endian f32s
/// (`encoding_format: "base64"`, the OpenAI Python client's default).
fn vector(v: &Value) -> Option<Vec<f64>> {
    match v {
        // A non-number component (null, as some servers write NaN) reads as NaN.
        Value::Array(xs) => Some(xs.iter().map(|x| x.as_f64().unwrap_or(f64::NAN)).collect()),
        Value::String(s) => {
            let bytes = base64_decode(s)?;
            let floats = bytes
                .chunks_exact(4)
                .map(|c| f64::from(f32::from_le_bytes([c[0], c[1], c[2], c[3]])));
            Some(floats.collect())
        }
        _ => None,
    }
}

/// Standard base64 with optional padding; `None` on any other character.
fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in s.bytes().filter(|c| *c != b'=') {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}
