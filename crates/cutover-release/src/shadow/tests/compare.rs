//! One pair compared, class by class.

use std::time::Duration;

use serde_json::json;

use super::*;

fn cmp(profile: &Profile, live: &Answer, shadow: &Answer) -> PairDiff {
    compare(profile, live, shadow, &Thresholds::default())
}

#[test]
fn identical_answers_differ_nowhere() {
    for class in Class::ALL {
        let a = if class == Class::Embeddings {
            vectors(vec![vec![1.0, 2.0]])
        } else {
            chat("the same words")
        };
        let d = cmp(&Profile::of(class), &a, &a);
        assert_eq!(d.severity(), 0.0, "{class}: {d:?}");
        assert!(!d.differs());
    }
}

#[test]
fn deterministic_chat_gets_exact_match_and_rouge_l() {
    let p = Profile::of(Class::DeterministicChat);
    let d = cmp(&p, &chat("the cat sat on the mat"), &chat("the cat sat on a mat"));
    assert_eq!(d.get(Metric::ExactMismatch), Some(1.0));
    let f1 = 1.0 - d.get(Metric::RougeL).unwrap();
    assert!((f1 - 5.0 / 6.0).abs() < 1e-12, "{f1}");
    // Two empty answers agree (rouge-score alone would say 0).
    assert_eq!(cmp(&p, &chat(""), &chat("")).get(Metric::RougeL), Some(0.0));
    // A cut copy is never compared on text.
    let mut cut = chat("the cat");
    cut.truncated = true;
    assert_eq!(cmp(&p, &chat("the cat sat"), &cut).get(Metric::RougeL), None);
}

#[test]
fn sampled_chat_gets_shape_metrics() {
    let p = Profile::of(Class::SampledChat);
    let mut long = chat(&"word ".repeat(40));
    long.finish_reason = Some("length".into());
    let d = cmp(&p, &chat("short answer"), &long);
    assert!(d.get(Metric::LengthRatio).unwrap() > 2.0);
    assert_eq!(d.get(Metric::FinishLength), Some(1.0));
    assert_eq!(d.get(Metric::RougeL), None, "sampled answers have no text similarity");
    let d = cmp(
        &p,
        &chat("Sure, here it is."),
        &chat("I’m sorry, but I can’t help with that."),
    );
    assert_eq!(d.get(Metric::Refusal), Some(1.0));
    let d = cmp(&p, &chat("Sure."), &chat("  "));
    assert_eq!(d.get(Metric::Empty), Some(1.0));
}

#[test]
fn errors_count_as_new_only_when_live_succeeded() {
    let p = Profile::of(Class::SampledChat);
    let d = cmp(&p, &chat("ok"), &failed(500));
    assert_eq!(
        (d.get(Metric::NewErrors), d.get(Metric::StatusMismatch)),
        (Some(1.0), Some(1.0))
    );
    assert_eq!(d.get(Metric::Refusal), None, "an error has no content to compare");
    let d = cmp(&p, &failed(500), &failed(500));
    assert_eq!(
        (d.get(Metric::NewErrors), d.get(Metric::StatusMismatch)),
        (Some(0.0), Some(0.0))
    );
    assert_eq!(cmp(&p, &failed(503), &chat("ok")).get(Metric::NewErrors), Some(0.0));
}

#[test]
fn time_ratios_are_logs_of_shadow_over_live() {
    let mut live = chat("x");
    let mut shadow = chat("x");
    live.timings.first_byte = Some(Duration::from_millis(100));
    shadow.timings.first_byte = Some(Duration::from_millis(200));
    live.timings.total = Some(Duration::from_millis(1000));
    let d = cmp(&Profile::of(Class::SampledChat), &live, &shadow);
    assert!((d.get(Metric::TtftRatio).unwrap() - 2f64.ln()).abs() < 1e-12);
    assert_eq!(d.get(Metric::TotalTimeRatio), None, "no shadow total: no ratio");
}

#[test]
fn json_object_answers_get_parse_rate() {
    let p = Profile {
        class: Class::Json,
        json: Some(JsonFormat::Object),
        tools: vec![],
    };
    let d = cmp(&p, &chat(r#"{"answer": "4"}"#), &chat(r#"{"answer": "4""#));
    assert_eq!(d.get(Metric::JsonParse), Some(1.0));
    assert_eq!(d.get(Metric::SchemaValid), None);
    assert_eq!(
        cmp(&p, &chat(r#"{"a":1}"#), &chat(r#" {"b":2} "#)).get(Metric::JsonParse),
        Some(0.0)
    );
}

#[test]
fn json_schema_subset_checks_required_keys_types_enums_and_extra_keys() {
    let schema = json!({"type":"object","required":["name","age"],"additionalProperties":false,
        "properties":{"name":{"type":"string"},"age":{"type":"integer"},"tag":{"type":["string","null"],"enum":["a","b",null]}}});
    let p = Profile {
        class: Class::Json,
        json: Some(JsonFormat::Schema(schema)),
        tools: vec![],
    };
    let valid = chat(r#"{"name":"Ada","age":36,"tag":null}"#);
    for (bad, why) in [
        (r#"{"name":"Ada"}"#, "missing required"),
        (r#"{"name":"Ada","age":"36"}"#, "wrong type"),
        (r#"{"name":"Ada","age":36.5}"#, "not an integer"),
        (r#"{"name":"Ada","age":36,"tag":"c"}"#, "not in enum"),
        (r#"{"name":"Ada","age":36,"extra":1}"#, "additional property"),
    ] {
        let d = cmp(&p, &valid, &chat(bad));
        assert_eq!(d.get(Metric::JsonParse), Some(0.0), "{why}");
        assert_eq!(d.get(Metric::SchemaValid), Some(1.0), "{why}");
    }
    assert_eq!(
        cmp(&p, &valid, &chat(r#"{"name":"B","age":2.0}"#)).get(Metric::SchemaValid),
        Some(0.0)
    );
}

#[test]
fn tool_calls_get_name_agreement_and_argument_checks() {
    let p = Profile {
        class: Class::Json,
        json: None,
        tools: vec![ToolSpec {
            name: "get_weather".into(),
            parameters: Some(json!({"type":"object","required":["city"]})),
        }],
    };
    let call = |name: &str, args: &str| Answer {
        tool_calls: vec![ToolCall {
            name: name.into(),
            arguments: args.into(),
        }],
        ..chat("")
    };
    let live = call("get_weather", r#"{"city":"Paris"}"#);
    let d = cmp(&p, &live, &call("get_weather", r#"{"city":"Rome"}"#));
    assert_eq!(
        (d.get(Metric::ToolNames), d.get(Metric::JsonParse)),
        (Some(0.0), Some(0.0))
    );
    let d = cmp(&p, &live, &call("get_weather", r#"{"town":"Rome"}"#));
    assert_eq!(d.get(Metric::SchemaValid), Some(1.0));
    let d = cmp(&p, &live, &call("get_weather", r#"{"city":"#));
    assert_eq!(d.get(Metric::JsonParse), Some(1.0));
    let d = cmp(&p, &live, &call("get_time", "{}"));
    assert_eq!(d.get(Metric::ToolNames), Some(1.0));
    assert_eq!(
        d.get(Metric::SchemaValid),
        Some(1.0),
        "an undeclared tool is not schema-valid"
    );
    let d = cmp(&p, &live, &chat("It is sunny."));
    assert_eq!(d.get(Metric::ToolNames), Some(1.0));
}

#[test]
fn embeddings_get_dimension_bad_vectors_and_cosine() {
    let p = Profile::of(Class::Embeddings);
    let live = vectors(vec![vec![1.0, 0.0], vec![0.0, 1.0]]);
    let d = cmp(&p, &live, &vectors(vec![vec![1.0, 0.0, 0.0], vec![0.0, 1.0, 0.0]]));
    assert_eq!(d.get(Metric::EmbeddingDim), Some(1.0));
    assert_eq!(d.get(Metric::Cosine), None);
    let d = cmp(&p, &live, &vectors(vec![vec![1.0, 0.0], vec![0.0, 0.0]]));
    assert_eq!(d.get(Metric::BadVectors), Some(1.0));
    let d = cmp(&p, &live, &vectors(vec![vec![f64::NAN, 0.0], vec![0.0, 1.0]]));
    assert_eq!(d.get(Metric::BadVectors), Some(1.0));
    let d = cmp(&p, &live, &vectors(vec![vec![1.0, 1.0], vec![0.0, 2.0]]));
    let cos = 1.0 - d.get(Metric::Cosine).unwrap();
    assert!((cos - (0.5f64.sqrt() + 1.0) / 2.0).abs() < 1e-12, "{cos}");
    assert_eq!(d.get(Metric::EmbeddingDim), Some(0.0));
}
