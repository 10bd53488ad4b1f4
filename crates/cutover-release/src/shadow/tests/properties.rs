//! Properties over arbitrary input: the engine reads whatever a server or client sends
//! without panicking, and ROUGE-L behaves like a similarity.

use proptest::prelude::*;

use super::*;

proptest! {
    #[test]
    fn assembly_never_panics(body in proptest::collection::vec(any::<u8>(), 0..512), status in 100u16..600,
                             truncated: bool, sse: bool) {
        let ct = if sse { "text/event-stream" } else { "application/json" };
        let a = Answer::assemble(&RawAnswer { status, content_type: Some(ct), body: &body, truncated, timings: Timings::default() });
        prop_assert_eq!(a.truncated, truncated);
        prop_assert!(a.tool_calls.len() <= 128);
    }

    #[test]
    fn sse_of_arbitrary_text_deltas_reassembles_them(pieces in proptest::collection::vec("[ -~]{0,12}", 1..20)) {
        let mut body = String::new();
        for p in &pieces {
            let chunk = serde_json::json!({"choices": [{"index": 0, "delta": {"content": p}, "finish_reason": null}]});
            body += &format!("data: {chunk}\n\n");
        }
        body += "data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\ndata: [DONE]\n\n";
        let a = Answer::assemble(&RawAnswer { status: 200, content_type: Some("text/event-stream"), body: body.as_bytes(), truncated: false, timings: Timings::default() });
        prop_assert_eq!(a.content, pieces.concat());
        prop_assert!(a.error.is_none());
    }

    #[test]
    fn body_eligibility_never_panics(body in proptest::collection::vec(any::<u8>(), 0..256), complete: bool) {
        let _ = eligible_body("/v1/chat/completions", &body, complete);
    }

    #[test]
    fn rouge_l_is_a_symmetric_similarity(a in "[a-c ,.]{0,40}", b in "[a-c ,.]{0,40}") {
        let (ab, ba) = (rouge_l(&a, &b).f1, rouge_l(&b, &a).f1);
        prop_assert!((0.0..=1.0).contains(&ab));
        prop_assert!((ab - ba).abs() < 1e-12);
        if !tokenize(&a).is_empty() {
            prop_assert!((rouge_l(&a, &a).f1 - 1.0).abs() < 1e-12);
        }
    }
}
