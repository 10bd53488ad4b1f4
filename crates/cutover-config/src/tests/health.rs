//! `health`: the probe kinds, their keys and defaults, and a key of another kind refused
//! where it stands.

use super::*;

#[test]
fn health_rule_errors_name_the_line_of_their_key() {
    let text = GOOD.replace("path = \"/health\"", "path = \"health\"");
    let e = check(&text).unwrap_err();
    assert_eq!(e.key, "services.chat.health.path");
    assert_eq!(e.line, line_with(&text, "path = \"health\""), "{e}");
}

#[test]
fn probe_kinds_parse_with_their_keys_and_defaults() {
    let c = check(GOOD).unwrap();
    let h = &c.services["chat"].health;
    assert_eq!(
        h.probe,
        ProbeConfig::Http {
            path: "/health".into(),
            status: StatusSet(vec![(200, 399)]),
        },
        "2xx and 3xx, as before `status` existed"
    );
    assert_eq!(h.passive_window.get(), std::time::Duration::from_secs(10));

    let text = GOOD.replace(
        "health = { path = \"/health\", interval = \"500ms\", timeout = \"1s\" }",
        "health = { path = \"/v2/health/ready\", status = [200, \"204-206\"], passive_window = \"0s\" }",
    );
    let h = check(&text).unwrap().services["chat"].health.clone();
    assert_eq!(
        h.probe,
        ProbeConfig::Http {
            path: "/v2/health/ready".into(),
            status: StatusSet(vec![(200, 200), (204, 206)]),
        }
    );
    assert!(h.passive_window.get().is_zero());

    let text = GOOD.replace(
        "health = { path = \"/health\", interval = \"500ms\", timeout = \"1s\" }",
        "upstream_protocol = \"h2c\"\nhealth = { kind = \"grpc\", service = \"chat\" }",
    );
    let h = check(&text).unwrap().services["chat"].health.clone();
    assert_eq!(h.probe, ProbeConfig::Grpc { service: "chat".into() });

    let text = GOOD.replace(
        "health = { path = \"/health\", interval = \"500ms\", timeout = \"1s\" }",
        "[services.chat.health]\nkind = \"generation\"\ntimeout = \"5s\"\nrequest = { method = \"POST\", path = \"/v1/completions\", body = '{\"max_tokens\":1}' }\nexpect = { status = 200, json = { \"/object\" = \"text_completion\" } }\n",
    );
    let h = check(&text).unwrap().services["chat"].health.clone();
    let ProbeConfig::Generation { request, expect } = h.probe else {
        panic!("{:?}", h.probe)
    };
    assert_eq!(request.path, "/v1/completions");
    assert_eq!(expect.status, Some(200));
}

#[test]
fn probe_errors_name_the_line_of_their_key() {
    let base = "health = { path = \"/health\", interval = \"500ms\", timeout = \"1s\" }";
    let cases: [(&str, &str, &str, &str); 8] = [
        (
            "health = { kind = \"grpc\" }",
            "health = { kind",
            "services.chat.health.kind",
            "upstream_protocol = \"h2c\"",
        ),
        (
            "health = { kind = \"generation\" }",
            "health = { kind",
            "services.chat.health.kind",
            "needs `request",
        ),
        (
            "upstream_protocol = \"h2c\"\nhealth = { kind = \"grpc\",\n  path = \"/x\" }",
            "path = \"/x\"",
            "services.chat.health.path",
            "for kind = \"http\" probes",
        ),
        (
            "health = { service = \"chat\" }",
            "health = { service",
            "services.chat.health.service",
            "for kind = \"grpc\" probes; this one is kind = \"http\"",
        ),
        (
            "health = { status = 700 }",
            "health = { status",
            "services.chat.health.status",
            "not 100 to 599",
        ),
        (
            "health = { status = \"300-200\" }",
            "health = { status",
            "services.chat.health.status",
            "range is empty",
        ),
        (
            "health = { kind = \"generation\",\n  request = { path = \"v1/completions\" } }",
            "request = {",
            "services.chat.health.request.path",
            "must start with '/'",
        ),
        (
            "health = { kind = \"generation\", request = { path = \"/x\" },\n  expect = { max_latency = \"1s\" } }",
            "expect = {",
            "services.chat.health.expect.max_latency",
            "health.timeout",
        ),
    ];
    for (health, line_of, key, says) in cases {
        let text = GOOD.replace(base, health);
        let e = check(&text).unwrap_err();
        assert_eq!(e.key, key, "{health}: {e}");
        assert_eq!(e.line, line_with(&text, line_of), "{health}: {e}");
        assert!(e.message.contains(says), "{health}: {e}");
    }
}
