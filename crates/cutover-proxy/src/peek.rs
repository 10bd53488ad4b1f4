//! Reading one top-level string field of a JSON request body (OpenAI's `model`, `user`)
//! from the bytes at hand, without parsing or buffering the rest: routing by model on a
//! shared listener and sticky keys read this, and a body of megabytes whose `model` comes
//! first is routed from its first bytes.
//!
//! A scanner, not a parser: it walks the top-level object's keys, skips values it does not
//! want (nested objects, arrays, strings with escapes) by tracking depth and string state,
//! and stops at the wanted key's value. It never allocates unless the value has escapes.

use std::borrow::Cow;

/// What the bytes at hand say about the field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Peek<'a> {
    /// The field's value (a JSON string, unescaped).
    Found(Cow<'a, str>),
    /// The object ended without the field, or the field is not a string.
    Absent,
    /// The bytes ended before the field or the object's end: more of the body is needed.
    NeedMore,
    /// The body is not a JSON object.
    NotJson,
}

/// Finds `name` among the top-level keys of the JSON object at the start of `bytes`.
pub fn json_string_field<'a>(bytes: &'a [u8], name: &str) -> Peek<'a> {
    let mut s = Scan { b: bytes, i: 0 };
    match s.ws() {
        None => return Peek::NeedMore,
        Some(b'{') => s.i += 1,
        Some(_) => return Peek::NotJson,
    }
    loop {
        match s.ws() {
            None => return Peek::NeedMore,
            Some(b'}') => return Peek::Absent,
            Some(b',') => {
                s.i += 1;
                continue;
            }
            Some(b'"') => {}
            Some(_) => return Peek::NotJson,
        }
        let key = match s.string() {
            Step::Done(k) => k,
            Step::More => return Peek::NeedMore,
            Step::Bad => return Peek::NotJson,
        };
        match s.ws() {
            None => return Peek::NeedMore,
            Some(b':') => s.i += 1,
            Some(_) => return Peek::NotJson,
        }
        if key == name {
            return match s.ws() {
                None => Peek::NeedMore,
                Some(b'"') => match s.string() {
                    Step::Done(v) => Peek::Found(v),
                    Step::More => Peek::NeedMore,
                    Step::Bad => Peek::NotJson,
                },
                Some(_) => Peek::Absent,
            };
        }
        match s.skip_value() {
            Step::Done(()) => {}
            Step::More => return Peek::NeedMore,
            Step::Bad => return Peek::NotJson,
        }
    }
}

enum Step<T> {
    Done(T),
    More,
    Bad,
}

struct Scan<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Scan<'a> {
    /// The next byte that is not JSON whitespace (not consumed).
    fn ws(&mut self) -> Option<u8> {
        while let Some(&c) = self.b.get(self.i) {
            if !matches!(c, b' ' | b'\t' | b'\n' | b'\r') {
                return Some(c);
            }
            self.i += 1;
        }
        None
    }

    /// A string starting at the opening quote; borrowed unless it has escapes.
    fn string(&mut self) -> Step<Cow<'a, str>> {
        let start = self.i + 1;
        let mut j = start;
        let mut escaped = false;
        loop {
            match self.b.get(j) {
                None => return Step::More,
                Some(b'"') => break,
                Some(b'\\') => {
                    escaped = true;
                    j += 2;
                }
                Some(c) if *c < 0x20 => return Step::Bad,
                Some(_) => j += 1,
            }
        }
        let raw = &self.b[start..j];
        self.i = j + 1;
        if !escaped {
            return std::str::from_utf8(raw).map_or(Step::Bad, |s| Step::Done(Cow::Borrowed(s)));
        }
        // Escapes are rare in keys and model names: let serde_json decode them.
        match serde_json::from_slice::<String>(&self.b[start - 1..=j]) {
            Ok(s) => Step::Done(Cow::Owned(s)),
            Err(_) => Step::Bad,
        }
    }

    /// Skips one value of any kind; strings inside nested values are skipped whole.
    fn skip_value(&mut self) -> Step<()> {
        let mut depth = 0usize;
        loop {
            let Some(c) = self.ws() else { return Step::More };
            match c {
                b'"' => match self.string() {
                    Step::Done(_) => {}
                    Step::More => return Step::More,
                    Step::Bad => return Step::Bad,
                },
                b'{' | b'[' => {
                    depth += 1;
                    self.i += 1;
                }
                b'}' | b']' if depth > 0 => {
                    depth -= 1;
                    self.i += 1;
                }
                // The end of the enclosing object: the value before it is complete.
                b'}' if depth == 0 => return Step::Done(()),
                b',' if depth == 0 => return Step::Done(()),
                b',' | b':' => self.i += 1,
                _ => {
                    // A number or a literal: up to the next delimiter.
                    while let Some(&d) = self.b.get(self.i) {
                        if matches!(d, b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r') {
                            break;
                        }
                        self.i += 1;
                    }
                    if self.i >= self.b.len() {
                        return Step::More;
                    }
                }
            }
            if depth == 0 && matches!(self.ws(), Some(b',' | b'}')) {
                return Step::Done(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(s: &str) -> Peek<'_> {
        Peek::Found(Cow::Borrowed(s))
    }

    #[test]
    fn the_field_is_found_among_other_keys_of_any_kind() {
        let body = br#" { "messages": [{"role": "user", "content": "a \"model\": \"x\" }"}], "n": 1,
            "stream": true, "opts": {"model": "nested"}, "model" : "llama-3-8b", "user": "u\u00e9" } "#;
        assert_eq!(json_string_field(body, "model"), found("llama-3-8b"));
        assert_eq!(json_string_field(body, "user"), Peek::Found(Cow::Owned("ué".into())));
        assert_eq!(json_string_field(body, "seed"), Peek::Absent);
        assert_eq!(json_string_field(br#"{"model": 3}"#, "model"), Peek::Absent);
    }

    #[test]
    fn a_field_that_comes_first_is_found_without_the_rest_of_a_large_body() {
        let mut body = br#"{"model":"embed-small","input":""#.to_vec();
        body.extend(std::iter::repeat_n(b'x', 10 << 20));
        assert_eq!(json_string_field(&body[..40], "model"), found("embed-small"));
        assert_eq!(json_string_field(&body[..40], "user"), Peek::NeedMore);
    }

    #[test]
    fn every_cut_of_a_body_says_need_more_or_the_right_answer() {
        let body = br#"{"a": {"b": [1, 2.5e3, "}"]}, "s": "q\\\"", "t": null, "model": "m1"}"#;
        for cut in 0..body.len() {
            match json_string_field(&body[..cut], "model") {
                Peek::NeedMore => {}
                other => assert_eq!(other, found("m1"), "cut at {cut}"),
            }
        }
        assert_eq!(json_string_field(body, "model"), found("m1"));
    }

    #[test]
    fn what_is_not_a_json_object_says_so() {
        for body in [&b"[1, 2]"[..], b"model=x", b"\"x\"", b"{model: 1}"] {
            assert_eq!(json_string_field(body, "model"), Peek::NotJson, "{body:?}");
        }
        assert_eq!(json_string_field(b"   ", "model"), Peek::NeedMore);
    }

    #[test]
    fn agrees_with_serde_json_on_generated_bodies() {
        for n in 0..300u32 {
            let v = serde_json::json!({
                "pad": "x".repeat((n % 7) as usize),
                "list": (0..n % 5).collect::<Vec<_>>(),
                "obj": {"model": n, "deep": [{"k": "v\\\"w"}]},
                "model": format!("m-{n}"),
                "temperature": f64::from(n) / 100.0,
            });
            let text = v.to_string();
            assert_eq!(
                json_string_field(text.as_bytes(), "model"),
                Peek::Found(Cow::Owned(format!("m-{n}"))),
                "{text}"
            );
        }
    }
}
