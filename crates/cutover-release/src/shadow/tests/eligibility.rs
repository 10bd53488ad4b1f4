//! Which requests may be mirrored, the skip reasons, and deterministic sampling.

use super::*;

fn check(method: &str, path: &str, body: &str) -> Result<Class, SkipReason> {
    let rules = MirrorRules::default();
    let req = MirrorRequest {
        method,
        path,
        body: body.as_bytes(),
        body_complete: true,
    };
    eligibility(&rules, &req).map(|p| p.class)
}

const CHAT: &str = "/v1/chat/completions";

#[test]
fn default_paths_are_mirrored_with_their_class() {
    let body = r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"temperature":0}"#;
    assert_eq!(check("POST", CHAT, body), Ok(Class::DeterministicChat));
    assert_eq!(
        check("POST", "/v1/completions", r#"{"prompt":"hi","seed":7}"#),
        Ok(Class::DeterministicChat)
    );
    assert_eq!(
        check("POST", "/v1/completions?x=1", r#"{"prompt":"hi"}"#),
        Ok(Class::SampledChat)
    );
    assert_eq!(
        check("POST", "/v1/embeddings", r#"{"input":"hi"}"#),
        Ok(Class::Embeddings)
    );
}

#[test]
fn other_methods_and_paths_are_skipped_with_their_reason() {
    assert_eq!(check("GET", CHAT, "{}"), Err(SkipReason::MethodNotMirrored));
    assert_eq!(check("POST", "/v1/models", "{}"), Err(SkipReason::PathNotMirrored));
    assert_eq!(
        check("POST", "/v1/audio/speech", "{}"),
        Err(SkipReason::PathNotMirrored)
    );
}

#[test]
fn side_effect_paths_are_never_mirrored_even_when_configured() {
    let rules = MirrorRules {
        paths: [
            "/v1/files",
            "/v1/batches",
            "/v1/fine_tuning/jobs",
            "/v1/threads/t1/runs",
            "/v1/responses/r1",
        ]
        .map(String::from)
        .to_vec(),
    };
    for path in &rules.paths {
        assert_eq!(
            eligible_route(&rules, "POST", path),
            Err(SkipReason::SideEffects),
            "{path}"
        );
    }
    // A prefix match is a whole segment: /v1/filesystem would not be a files path.
    assert_eq!(
        eligible_route(&MirrorRules::default(), "POST", "/v1/filesystem"),
        Err(SkipReason::PathNotMirrored)
    );
}

#[test]
fn bodies_that_store_or_continue_state_are_side_effects() {
    for body in [
        r#"{"messages":[],"store":true}"#,
        r#"{"messages":[],"previous_response_id":"resp_1"}"#,
        r#"{"messages":[],"conversation":"conv_1"}"#,
    ] {
        assert_eq!(check("POST", CHAT, body), Err(SkipReason::SideEffects), "{body}");
    }
    assert_eq!(
        check("POST", CHAT, r#"{"messages":[],"store":false}"#),
        Ok(Class::SampledChat)
    );
}

#[test]
fn responses_api_is_mirrored_only_with_store_false() {
    let rules = MirrorRules {
        paths: vec!["/v1/responses".into()],
    };
    let at = |body: &str| {
        eligibility(
            &rules,
            &MirrorRequest {
                method: "POST",
                path: "/v1/responses",
                body: body.as_bytes(),
                body_complete: true,
            },
        )
        .map(|p| p.class)
    };
    // `store` defaults to true in the Responses API.
    assert_eq!(at(r#"{"input":"hi"}"#), Err(SkipReason::SideEffects));
    assert_eq!(
        at(r#"{"input":"hi","store":false,"background":true}"#),
        Err(SkipReason::SideEffects)
    );
    assert_eq!(
        at(r#"{"input":"hi","store":false,"temperature":0}"#),
        Ok(Class::DeterministicChat)
    );
}

#[test]
fn client_executed_tools_are_safe_and_server_executed_tools_are_not() {
    let client = r#"{"messages":[],"tools":[{"type":"function","function":{"name":"get_weather","parameters":{"type":"object"}}}]}"#;
    assert_eq!(check("POST", CHAT, client), Ok(Class::Json));
    for ty in [
        "web_search",
        "web_search_preview",
        "code_interpreter",
        "file_search",
        "mcp",
        "some_future_tool",
    ] {
        let body =
            format!(r#"{{"messages":[],"tools":[{{"type":"function","function":{{"name":"f"}}}},{{"type":"{ty}"}}]}}"#);
        assert_eq!(check("POST", CHAT, &body), Err(SkipReason::ServerTools), "{ty}");
    }
    let search = r#"{"messages":[],"web_search_options":{}}"#;
    assert_eq!(check("POST", CHAT, search), Err(SkipReason::ServerTools));
}

#[test]
fn truncated_and_non_json_bodies_are_skipped() {
    let rules = MirrorRules::default();
    let body = br#"{"messages":[{"role":"user","content":"a very long"#;
    let req = MirrorRequest {
        method: "POST",
        path: CHAT,
        body,
        body_complete: false,
    };
    assert_eq!(
        eligibility(&rules, &req).map(|p| p.class),
        Err(SkipReason::BodyTooLarge)
    );
    assert_eq!(check("POST", CHAT, "not json"), Err(SkipReason::NotJson));
    assert_eq!(check("POST", CHAT, "[1,2]"), Err(SkipReason::NotJson));
}

#[test]
fn classes_follow_temperature_seed_n_and_output_format() {
    let class = |body: &str| check("POST", CHAT, body).unwrap();
    assert_eq!(class(r#"{"temperature":0.0}"#), Class::DeterministicChat);
    assert_eq!(class(r#"{"temperature":0.7,"seed":42}"#), Class::DeterministicChat);
    assert_eq!(class(r#"{"temperature":0,"n":1}"#), Class::DeterministicChat);
    assert_eq!(class(r#"{"temperature":0,"n":3}"#), Class::SampledChat);
    assert_eq!(class(r#"{"temperature":0.7}"#), Class::SampledChat);
    assert_eq!(class(r#"{}"#), Class::SampledChat);
    assert_eq!(
        class(r#"{"temperature":0,"response_format":{"type":"json_object"}}"#),
        Class::Json
    );
    assert_eq!(class(r#"{"response_format":{"type":"text"}}"#), Class::SampledChat);
    let p = eligible_body(
        CHAT,
        br#"{"response_format":{"type":"json_schema","json_schema":{"name":"x","schema":{"type":"object","required":["a"]}}}}"#,
        true,
    )
    .unwrap();
    assert_eq!(
        p.json,
        Some(JsonFormat::Schema(
            serde_json::json!({"type":"object","required":["a"]})
        ))
    );
}

/// Issue #21: the mirrored count over 10k requests at 5% lies within binomial bounds.
#[test]
fn sampling_share_over_10k_requests_lies_within_3_sigma_binomial_bounds() {
    let (n, p) = (10_000u64, 0.05);
    let sigma = (n as f64 * p * (1.0 - p)).sqrt();
    let bounds = |count: u64| (count as f64 - n as f64 * p).abs() <= 3.0 * sigma;
    // Sequential keys (a request counter), spread keys, and keys from request ids.
    let sequential = (0..n).filter(|k| sampled(*k, p)).count() as u64;
    let strided = (0..n).filter(|k| sampled(k * 4096 + 17, p)).count() as u64;
    let ids = (0..n)
        .filter(|k| sampled(request_key(format!("req-{k}").as_bytes()), p))
        .count() as u64;
    for (what, count) in [("sequential", sequential), ("strided", strided), ("request ids", ids)] {
        assert!(
            bounds(count),
            "{what}: {count} of {n} at {p}: outside 500 ± {:.0}",
            3.0 * sigma
        );
    }
}

#[test]
fn sampling_is_deterministic_and_rate_0_stops_everything() {
    for k in 0..1000u64 {
        assert_eq!(sampled(k, 0.3), sampled(k, 0.3));
        assert!(!sampled(k, 0.0));
        assert!(!sampled(k, f64::NAN));
        assert!(sampled(k, 1.0));
        // A key chosen at a lower rate is chosen at every higher rate (raising the rate
        // only adds requests).
        if sampled(k, 0.1) {
            assert!(sampled(k, 0.2));
        }
    }
}

#[test]
fn skip_reasons_have_stable_metric_labels() {
    let labels: Vec<&str> = SkipReason::ALL.iter().map(|r| r.as_str()).collect();
    assert!(labels.contains(&"path_not_mirrored") && labels.contains(&"sampled_out"));
    for r in SkipReason::ALL {
        assert_eq!(serde_json::to_value(r).unwrap(), serde_json::json!(r.as_str()));
    }
}

#[test]
fn mirror_rules_reject_unknown_keys() {
    let err = serde_json::from_str::<MirrorRules>(r#"{"pathz":[]}"#).unwrap_err();
    assert!(err.to_string().contains("unknown field"), "{err}");
}
