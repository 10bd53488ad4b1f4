//! Answer assembly: JSON documents, SSE streams (text, tool-call deltas, completions), cut
//! copies, errors and embeddings.

use std::time::Duration;

use super::*;

fn raw<'a>(status: u16, content_type: &'a str, body: &'a str, truncated: bool) -> RawAnswer<'a> {
    RawAnswer {
        status,
        content_type: Some(content_type),
        body: body.as_bytes(),
        truncated,
        timings: Timings {
            first_byte: Some(Duration::from_millis(40)),
            total: Some(Duration::from_millis(900)),
        },
    }
}

const SSE: &str = "text/event-stream";

fn chunk(delta: &str, finish: &str) -> String {
    format!(
        "data: {{\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"v2\",\"system_fingerprint\":\"fp\",\"choices\":[{{\"index\":0,\"delta\":{delta},\"finish_reason\":{finish}}}]}}\n\n"
    )
}

#[test]
fn json_chat_answer_is_assembled_and_metadata_ignored() {
    let body = r#"{"id":"chatcmpl-9","object":"chat.completion","created":123,"model":"v1","system_fingerprint":"fp_1",
        "choices":[{"index":0,"message":{"role":"assistant","content":"Hello there"},"finish_reason":"stop"}],
        "usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}"#;
    let a = Answer::assemble(&raw(200, "application/json", body, false));
    let other = body
        .replace("chatcmpl-9", "chatcmpl-77")
        .replace("\"v1\"", "\"v2\"")
        .replace("123", "999");
    assert_eq!(a, Answer::assemble(&raw(200, "application/json", &other, false)));
    assert_eq!(a.content, "Hello there");
    assert_eq!(a.finish_reason.as_deref(), Some("stop"));
    assert_eq!(a.usage.unwrap().completion_tokens, Some(2));
    assert_eq!(a.timings.first_byte, Some(Duration::from_millis(40)));
    assert!(!a.is_error() && !a.stream);
}

#[test]
fn sse_stream_is_assembled_from_deltas() {
    let body = chunk(r#"{"role":"assistant","content":""}"#, "null")
        + &chunk(r#"{"content":"Hel"}"#, "null")
        + &chunk(r#"{"content":"lo"}"#, "null")
        + &chunk("{}", r#""stop""#)
        + "data: {\"id\":\"c\",\"choices\":[],\"usage\":{\"prompt_tokens\":4,\"completion_tokens\":2}}\n\n"
        + "data: [DONE]\n\n";
    let a = Answer::assemble(&raw(200, SSE, &body, false));
    assert!(a.stream && !a.is_error(), "{a:?}");
    assert_eq!(a.content, "Hello");
    assert_eq!(a.finish_reason.as_deref(), Some("stop"));
    assert_eq!(a.usage.unwrap().prompt_tokens, Some(4));
}

#[test]
fn sse_tool_call_deltas_are_assembled_by_index() {
    let body = chunk(
        r#"{"tool_calls":[{"index":0,"id":"call_a","type":"function","function":{"name":"get_weather","arguments":""}}]}"#,
        "null",
    ) + &chunk(
        r#"{"tool_calls":[{"index":1,"id":"call_b","type":"function","function":{"name":"get_time","arguments":"{\"tz\":"}}]}"#,
        "null",
    ) + &chunk(
        r#"{"tool_calls":[{"index":0,"function":{"arguments":"{\"city\":"}}]}"#,
        "null",
    ) + &chunk(
        r#"{"tool_calls":[{"index":0,"function":{"arguments":"\"Paris\"}"}}]}"#,
        "null",
    ) + &chunk(
        r#"{"tool_calls":[{"index":1,"function":{"arguments":"\"UTC\"}"}}]}"#,
        "null",
    ) + &chunk("{}", r#""tool_calls""#)
        + "data: [DONE]\n\n";
    let a = Answer::assemble(&raw(200, SSE, &body, false));
    assert_eq!(
        a.tool_calls,
        vec![
            ToolCall {
                name: "get_weather".into(),
                arguments: r#"{"city":"Paris"}"#.into()
            },
            ToolCall {
                name: "get_time".into(),
                arguments: r#"{"tz":"UTC"}"#.into()
            },
        ]
    );
    assert_eq!(a.finish_reason.as_deref(), Some("tool_calls"));
}

#[test]
fn completions_text_chunks_and_crlf_events_are_assembled() {
    let body = "data: {\"object\":\"text_completion\",\"choices\":[{\"index\":0,\"text\":\"one \",\"finish_reason\":null}]}\r\n\r\n\
                data: {\"object\":\"text_completion\",\"choices\":[{\"index\":0,\"text\":\"two\",\"finish_reason\":\"length\"}]}\r\n\r\n\
                data: [DONE]\r\n\r\n";
    let a = Answer::assemble(&raw(200, SSE, body, false));
    assert_eq!(a.content, "one two");
    assert_eq!(a.finish_reason.as_deref(), Some("length"));
    let plain = r#"{"object":"text_completion","choices":[{"index":0,"text":"one two","finish_reason":"stop"}]}"#;
    assert_eq!(
        Answer::assemble(&raw(200, "application/json", plain, false)).content,
        "one two"
    );
}

#[test]
fn a_stream_cut_at_the_copy_cap_is_truncated_not_an_error() {
    let full = chunk(r#"{"content":"Hello"}"#, "null") + &chunk(r#"{"content":" world"}"#, "null");
    // The cap falls in the middle of the second event.
    let cut = &full[..full.len() - 20];
    let a = Answer::assemble(&raw(200, SSE, cut, true));
    assert!(a.truncated && !a.is_error(), "{a:?}");
    assert_eq!(a.content, "Hello");
    assert_eq!(a.finish_reason, None);
}

#[test]
fn a_stream_that_ends_before_done_is_an_error() {
    let body = chunk(r#"{"content":"Hello"}"#, "null");
    let a = Answer::assemble(&raw(200, SSE, &body, false));
    assert_eq!(a.error.as_deref(), Some("stream ended before [DONE]"));
}

#[test]
fn errors_come_from_status_error_objects_and_bad_bodies() {
    let a = Answer::assemble(&raw(
        500,
        "application/json",
        r#"{"error":{"message":"boom","type":"server_error"}}"#,
        false,
    ));
    assert_eq!(a.error.as_deref(), Some("boom"));
    let a = Answer::assemble(&raw(503, "text/plain", "", false));
    assert_eq!(a.error.as_deref(), Some("HTTP 503"));
    let a = Answer::assemble(&raw(200, "application/json", "{not json", false));
    assert!(a.error.unwrap().starts_with("body is not JSON"));
    // A cut JSON copy cannot be read, which is not the server's fault.
    let a = Answer::assemble(&raw(
        200,
        "application/json",
        r#"{"choices":[{"message":{"content":"He"#,
        true,
    ));
    assert!(!a.is_error() && a.truncated);
    let mid_stream = chunk(r#"{"content":"Hi"}"#, "null") + "data: {\"error\":{\"message\":\"overloaded\"}}\n\n";
    assert_eq!(
        Answer::assemble(&raw(200, SSE, &mid_stream, false)).error.as_deref(),
        Some("overloaded")
    );
}

#[test]
fn embeddings_as_floats_and_as_base64() {
    let body =
        r#"{"object":"list","data":[{"object":"embedding","index":0,"embedding":[0.5,-0.25,1.0]}],"model":"v1"}"#;
    let a = Answer::assemble(&raw(200, "application/json", body, false));
    assert_eq!(a.embeddings, vec![vec![0.5, -0.25, 1.0]]);
    // [1.0f32, -2.0f32] little-endian = 00 00 80 3f 00 00 00 c0 = "AACAPwAAAMA="
    let body = r#"{"object":"list","data":[{"object":"embedding","index":0,"embedding":"AACAPwAAAMA="}]}"#;
    let a = Answer::assemble(&raw(200, "application/json", body, false));
    assert_eq!(a.embeddings, vec![vec![1.0, -2.0]]);
}

#[test]
fn json_tool_calls_and_content_parts_are_read() {
    let body = r#"{"choices":[{"index":0,"message":{"role":"assistant","content":null,
        "tool_calls":[{"id":"c1","type":"function","function":{"name":"lookup","arguments":"{\"q\":1}"}}]},
        "finish_reason":"tool_calls"}]}"#;
    let a = Answer::assemble(&raw(200, "application/json", body, false));
    assert_eq!(a.tool_calls[0].name, "lookup");
    assert_eq!(a.content, "");
    let parts = r#"{"choices":[{"message":{"content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]},"finish_reason":"stop"}]}"#;
    assert_eq!(
        Answer::assemble(&raw(200, "application/json", parts, false)).content,
        "ab"
    );
}
