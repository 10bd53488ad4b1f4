//! The file as a whole: syntax, unknown keys, wrong types, listeners that collide, and
//! every error of every part reported at its line.

use super::*;

#[test]
fn good_config_parses_with_defaults_and_resolved_paths() {
    let c = check(GOOD).unwrap();
    let chat = &c.services["chat"];
    assert_eq!(chat.listen.port(), 8080);
    assert_eq!(chat.health.interval.get(), std::time::Duration::from_millis(500));
    assert_eq!(chat.release.promotion, Promotion::Manual);
    assert_eq!(chat.release.verify.as_ref().unwrap().bake.get().as_secs(), 120);
    assert_eq!(c.store.path, Path::new("/etc/cutover/cutover.db"));
    assert_eq!(c.admin.token_file, Path::new("/etc/cutover/admin.token"));
    assert_eq!(c.admin.tokens_file, Path::new("/etc/cutover/tokens.toml"));
    match &chat.environments {
        Environments::Static { blue, green } => {
            assert_eq!(blue.endpoints.len(), 2);
            assert_eq!(blue.version.as_deref(), Some("v1"));
            assert_eq!(green.version, None);
        }
        other => panic!("expected static, got {other:?}"),
    }
}

#[test]
fn syntax_error_names_line() {
    let e = check("[admin]\nlisten = \"127.0.0.1:9901\"\n\n[services.chat\n").unwrap_err();
    assert_eq!(e.line, 4, "{e}");
    assert!(e.to_string().starts_with("/etc/cutover/cutover.toml:4"), "{e}");
}

#[test]
fn unknown_key_names_line_and_key() {
    let text = GOOD.replace("max_error_rate = 0.01", "max_eror_rate = 0.01");
    let e = check(&text).unwrap_err();
    let line = text.lines().position(|l| l.contains("max_eror_rate")).unwrap() + 1;
    assert_eq!(e.line, line, "{e}");
    assert!(e.message.contains("max_eror_rate"), "{e}");
    assert!(e.key.contains("services.chat.release.verify"), "{e}");
}

#[test]
fn bad_duration_names_line_and_key() {
    let text = GOOD.replace("interval = \"500ms\"", "interval = \"fast\"");
    let e = check(&text).unwrap_err();
    let line = text.lines().position(|l| l.contains("\"fast\"")).unwrap() + 1;
    assert_eq!(e.line, line, "{e}");
    assert_eq!(e.key, "services.chat.health.interval", "{e}");
    assert!(e.message.contains("invalid duration \"fast\""), "{e}");
}

#[test]
fn duplicate_listen_port_is_rejected_at_its_line() {
    let text = GOOD.replace("127.0.0.1:8081", "127.0.0.1:8080");
    let e = check(&text).unwrap_err();
    let line = text.lines().position(|l| l.starts_with("preview_listen")).unwrap() + 1;
    assert_eq!(e.line, line, "{e}");
    assert_eq!(e.key, "services.chat.preview_listen");
    assert!(e.message.contains("already used by `services.chat.listen`"), "{e}");
}

#[test]
fn endpoint_that_is_our_own_listener_is_rejected() {
    let text = GOOD.replace("127.0.0.1:9002", "127.0.0.1:8080");
    let e = check(&text).unwrap_err();
    assert!(e.message.contains("proxy to itself"), "{e}");
}

#[test]
fn non_loopback_admin_needs_explicit_opt_in() {
    let text = GOOD.replace("listen = \"127.0.0.1:9901\"", "listen = \"0.0.0.0:9901\"");
    let e = check(&text).unwrap_err();
    assert_eq!(e.key, "admin.listen");
    assert_eq!(e.line, 3);
    let ok = text.replace("[admin]\n", "[admin]\nallow_remote = true\n");
    check(&ok).unwrap();
}

#[test]
fn non_loopback_preview_needs_explicit_opt_in() {
    let text = GOOD.replace("127.0.0.1:8081", "0.0.0.0:8081");
    let e = check(&text).unwrap_err();
    assert_eq!(e.key, "services.chat.preview_listen");
}

#[test]
fn run_and_static_are_exclusive_and_one_is_required() {
    let text = format!("{GOOD}\n[services.chat.run]\ncommand = [\"x\"]\nports = {{ blue = [1], green = [2] }}\n");
    let e = check(&text).unwrap_err();
    assert!(e.message.contains("not both"), "{e}");
    let e = check("[services.chat]\nlisten = \"127.0.0.1:8080\"\n").unwrap_err();
    assert_eq!(e.line, 1, "{e}");
    assert!(e.message.contains("needs either static endpoints"), "{e}");
}

#[test]
fn managed_ports_must_be_distinct_and_balanced() {
    let base = "[services.chat]\nlisten = \"127.0.0.1:8080\"\n[services.chat.run]\ncommand = [\"mock-model\", \"--port\", \"{port}\"]\n";
    let ok = check(&format!(
        "{base}ports = {{ blue = [9001, 9002], green = [9003, 9004] }}\n"
    ))
    .unwrap();
    assert!(matches!(ok.services["chat"].environments, Environments::Managed(_)));
    let e = check(&format!("{base}ports = {{ blue = [9001], green = [9001] }}\n")).unwrap_err();
    assert!(e.message.contains("also used"), "{e}");
    // The line of `ports`, not of the [services.chat.run] header.
    assert_eq!(e.line, 5);
    let e = check(&format!("{base}ports = {{ blue = [9001, 9002], green = [9003] }}\n")).unwrap_err();
    assert!(e.message.contains("same number of ports"), "{e}");
}

#[test]
fn wrong_type_names_key() {
    let text = GOOD.replace("max_error_rate = 0.01", "max_error_rate = \"high\"");
    let e = check(&text).unwrap_err();
    assert_eq!(e.key, "services.chat.release.verify.max_error_rate", "{e}");
    assert!(e.line > 0);
}

#[test]
fn out_of_range_error_rate_is_rejected() {
    let e = check(&GOOD.replace("max_error_rate = 0.01", "max_error_rate = 5.0")).unwrap_err();
    assert_eq!(e.key, "services.chat.release.verify.max_error_rate");
}

#[test]
fn full_design_example_parses() {
    let text = r#"
[admin]
listen = "127.0.0.1:9901"
token_file = "admin.token"
[store]
path = "cutover.db"
[services.chat]
listen = "127.0.0.1:8080"
preview_listen = "127.0.0.1:8081"
health = { path = "/health", interval = "1s", timeout = "1s" }
[services.chat.run]
command = ["vllm", "serve", "{version}", "--port", "{port}"]
env = { MODEL_VERSION = "{version}" }
ports = { blue = [9001], green = [9002] }
stop_timeout = "30s"
[services.chat.release]
health_timeout = "10m"
warmup = { requests = 20, concurrency = 2, request = { method = "POST", path = "/v1/chat/completions", body = '{"model":"m","messages":[{"role":"user","content":"hi"}]}' } }
promotion = "auto"
scale_down_delay = "10m"
drain_timeout = "5m"
[[services.chat.release.smoke]]
name = "chat answers"
request = { method = "POST", path = "/v1/chat/completions", body = '{"model":"m","messages":[{"role":"user","content":"ping"}]}' }
expect = { status = 200, json = { "/object" = "chat.completion" }, max_latency = "10s" }
[services.chat.release.verify]
bake = "2m"
max_error_rate = 0.01
max_p99_latency = "3s"
min_requests = 20
auto_rollback = true
[services.chat.release.hooks]
pre_switch = [["./migrate.sh", "expand"]]
post_switch = []
"#;
    let c = check(text).unwrap();
    let r = &c.services["chat"].release;
    assert_eq!(r.smoke[0].expect.status, Some(200));
    assert_eq!(r.hooks.pre_switch[0][0], "./migrate.sh");
    assert_eq!(r.warmup.as_ref().unwrap().requests, 20);
}

/// Regression: this error used to have no line at all (line 0).
#[test]
fn self_proxy_error_names_the_endpoints_line() {
    let text = GOOD.replace("127.0.0.1:9002", "127.0.0.1:8080");
    let e = check(&text).unwrap_err();
    assert_eq!(e.key, "services.chat.green.endpoints");
    assert_eq!(e.line, line_with(&text, "endpoints = [\"127.0.0.1:8080\"]"), "{e}");
}

#[test]
fn admin_address_file_is_resolved_and_optional() {
    assert_eq!(check(GOOD).unwrap().admin.address_file, None);
    let text = GOOD.replace("[admin]\n", "[admin]\naddress_file = \"run/admin.addr\"\n");
    assert_eq!(
        check(&text).unwrap().admin.address_file.as_deref(),
        Some(Path::new("/etc/cutover/run/admin.addr"))
    );
}

#[test]
fn port_0_listeners_never_collide() {
    let text = GOOD
        .replace("127.0.0.1:9901", "127.0.0.1:0")
        .replace("127.0.0.1:8080", "127.0.0.1:0")
        .replace("127.0.0.1:8081", "127.0.0.1:0");
    let c = check(&text).unwrap();
    assert_eq!(
        (
            c.admin.listen.port(),
            c.services["chat"].listen.port(),
            c.services["chat"].preview_listen.unwrap().port()
        ),
        (0, 0, 0)
    );
}

/// Issue #25: `check` stopped at the first error; it names every one, each at its line.
#[test]
fn every_error_of_every_part_is_reported_at_its_line() {
    let text = "[admin]\nlisten = \"127.0.0.1:99999\"\n\n\
        [services.chat]\nlisten = \"127.0.0.1:8080\"\nhealth = { path = \"/health\", interval = \"soon\" }\n\
        [services.chat.blue]\nendpoints = [\"127.0.0.1:9001\"]\n[services.chat.green]\nendpoints = [\"127.0.0.1:9002\"]\n\n\
        [services.embed]\nlisten = \"127.0.0.1:8090\"\npreview_listen = \"bad\"\n\
        [services.embed.run]\ncommand = [\"srv\", \"--port\", \"{port}\"]\nports = { blue = [9101], green = [9102, 9103] }\n\
        [services.embed.release]\nwarmup = { concurrency = 0, request = { path = \"/x\" } }\n\
        [services.embed.release.verify]\nmax_error_rate = 2.0\n\n\
        [services.third]\nlisen = \"x\"\n";
    let errors = parse_all(Path::new("/etc/cutover/cutover.toml"), text).unwrap_err();
    let got: Vec<(usize, &str)> = errors.iter().map(|e| (e.line, e.key.as_str())).collect();
    assert_eq!(
        got,
        [
            (2, "admin.listen"),
            (6, "services.chat.health.interval"),
            (14, "services.embed.preview_listen"),
            (17, "services.embed.run.ports"),
            (19, "services.embed.release.warmup.concurrency"),
            (21, "services.embed.release.verify.max_error_rate"),
            // `lisen` taken out, `listen` (or `listener`) is missing, and so are its
            // environments: all are so.
            (23, "services.third.listen"),
            (23, "services.third"),
            (24, "services.third.lisen"),
        ],
        "{errors:#?}"
    );
    // `parse` (what `serve` and clients use) gives the first of them.
    assert_eq!(check(text).unwrap_err(), errors[0]);
}

#[test]
fn a_config_without_services_is_refused() {
    let e = check("[admin]\nlisten = \"127.0.0.1:9901\"\n").unwrap_err();
    assert_eq!(e.key, "services", "{e}");
    assert!(e.message.contains("no service is configured"), "{e}");
    assert!(check("").is_err());
}

/// Within one part, each unknown key and wrong value is named, not only the first.
#[test]
fn every_wrong_key_of_one_service_is_reported() {
    let text = "[services.chat]\nlisten = \"127.0.0.1:8080\"\nacess_log = true\n\
        health = { interval = \"soon\", timeout = 5 }\n\
        [services.chat.blue]\nendpoints = [\"127.0.0.1:9001\"]\n[services.chat.green]\nendpoints = [\"127.0.0.1:9002\"]\n\
        [services.chat.release]\nscale_down_delay = \"later\"\n[services.chat.release.verify]\nmax_error_rate = 2.0\n";
    let errors = parse_all(Path::new("/etc/cutover/cutover.toml"), text).unwrap_err();
    let got: Vec<(usize, &str)> = errors.iter().map(|e| (e.line, e.key.as_str())).collect();
    assert_eq!(
        got,
        [
            (3, "services.chat.acess_log"),
            (4, "services.chat.health.interval"),
            (4, "services.chat.health.timeout"),
            (10, "services.chat.release.scale_down_delay"),
            (12, "services.chat.release.verify.max_error_rate"),
        ],
        "{errors:#?}"
    );
}

/// A required key that is wrong ends its part: taking it out would only add "missing".
#[test]
fn a_wrong_required_key_is_one_error_not_two() {
    let text = "[services.chat]\nlisten = 8080\n[services.chat.blue]\nendpoints = [\"127.0.0.1:9001\"]\n\
        [services.chat.green]\nendpoints = [\"127.0.0.1:9002\", 7]\n";
    let errors = parse_all(Path::new("/etc/cutover/cutover.toml"), text).unwrap_err();
    let got: Vec<(usize, &str)> = errors.iter().map(|e| (e.line, e.key.as_str())).collect();
    assert_eq!(got, [(6, "services.chat.green.endpoints[1]")], "{errors:#?}");
}
