//! Validation tests: what a config error says (file, line, key, expectation), and property
//! tests that any text yields a config or a located error.

use super::*;

fn check(text: &str) -> Result<Config, ConfigError> {
    parse(Path::new("/etc/cutover/cutover.toml"), text)
}

const GOOD: &str = r#"
[admin]
listen = "127.0.0.1:9901"

[services.chat]
listen = "127.0.0.1:8080"
preview_listen = "127.0.0.1:8081"
health = { path = "/health", interval = "500ms", timeout = "1s" }

[services.chat.blue]
endpoints = ["127.0.0.1:9001", "127.0.0.1:9003"]
version = "v1"

[services.chat.green]
endpoints = ["127.0.0.1:9002"]

[services.chat.release]
promotion = "manual"
[services.chat.release.verify]
bake = "2m"
max_error_rate = 0.01
"#;

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

mod properties {
    use super::*;
    use proptest::prelude::*;

    fn valid_config(name: &str, port: u16, interval_ms: u64, bake_s: u64, eps: usize) -> String {
        let endpoints = |base: u16| {
            (0..eps)
                .map(|i| format!("\"127.0.0.1:{}\"", base + i as u16))
                .collect::<Vec<_>>()
                .join(", ")
        };
        format!(
            "[services.{name}]\nlisten = \"127.0.0.1:{port}\"\nhealth = {{ interval = \"{interval_ms}ms\" }}\n\
             [services.{name}.blue]\nendpoints = [{}]\n[services.{name}.green]\nendpoints = [{}]\n\
             [services.{name}.release.verify]\nbake = \"{bake_s}s\"\n",
            endpoints(20000),
            endpoints(30000)
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

        /// Arbitrary text never panics the loader, and an error always points inside the file.
        #[test]
        fn any_text_gives_a_config_or_a_located_error(text in "\\PC{0,400}") {
            if let Err(e) = check(&text) {
                prop_assert!(!e.message.is_empty());
                prop_assert!(e.line <= text.lines().count() + 1, "line {} of {}", e.line, text.lines().count());
            }
        }

        /// TOML-shaped noise (keys, tables, values) is located too.
        #[test]
        fn toml_like_noise_is_located(lines in proptest::collection::vec("(\\[services\\.[a-z]{1,3}(\\.[a-z]{1,6})?\\]|[a-z_]{1,12} = (\"[a-z0-9:.]{0,16}\"|[0-9]{1,6}|true|\\[\\]))", 0..12)) {
            let text = lines.join("\n");
            if let Err(e) = check(&text) {
                prop_assert!(!e.message.is_empty());
                prop_assert!(e.line <= lines.len() + 1);
            }
        }

        /// Generated valid configs load, and their values come back as written.
        #[test]
        fn valid_configs_round_trip(name in "[a-z][a-z0-9_-]{0,10}", port in (1024u16..19000).prop_filter("not the default admin port", |p| *p != 9901), interval_ms in 1u64..100_000, bake_s in 1u64..10_000, eps in 1usize..5) {
            let c = check(&valid_config(&name, port, interval_ms, bake_s, eps)).unwrap();
            let s = &c.services[&name];
            prop_assert_eq!(s.listen.port(), port);
            prop_assert_eq!(s.health.interval.get(), std::time::Duration::from_millis(interval_ms));
            prop_assert_eq!(s.release.verify.as_ref().unwrap().bake.get().as_secs(), bake_s);
            match &s.environments {
                Environments::Static { blue, green } => {
                    prop_assert_eq!(blue.endpoints.len(), eps);
                    prop_assert_eq!(green.endpoints.len(), eps);
                }
                Environments::Managed(_) => prop_assert!(false, "static expected"),
            }
        }

        /// An unknown key inserted anywhere in a valid config is an error on exactly its line.
        #[test]
        fn an_unknown_key_is_reported_on_its_line(at in 1usize..9, key in "zz[a-z]{1,8}") {
            let base = valid_config("chat", 8080, 500, 60, 1);
            let mut lines: Vec<String> = base.lines().map(str::to_string).collect();
            let at = at.min(lines.len());
            // Keep the line inside a table: never before the first header.
            lines.insert(at, format!("{key} = 1"));
            let text = lines.join("\n");
            let e = check(&text).unwrap_err();
            prop_assert_eq!(e.line, at + 1, "{}", e);
            prop_assert!(e.message.contains(&key), "{}", e);
        }
    }
}

/// The line of the first line of `text` containing `needle`, 1-based.
fn line_with(text: &str, needle: &str) -> usize {
    text.lines().position(|l| l.contains(needle)).unwrap() + 1
}

/// Regression: errors found after deserializing `release.*` used to name the line of the
/// `[services.chat]` header, whatever key they were about.
#[test]
fn release_rule_errors_name_the_line_of_their_key() {
    let text = GOOD.replace("max_error_rate = 0.01", "max_error_rate = 5.0");
    let e = check(&text).unwrap_err();
    assert_eq!(e.line, line_with(&text, "max_error_rate = 5.0"), "{e}");

    let text = format!("{GOOD}[services.chat.release.hooks]\npre_switch = [[\"ok\"]]\npost_switch = [[]]\n");
    let e = check(&text).unwrap_err();
    assert_eq!(e.key, "services.chat.release.hooks");
    assert_eq!(e.line, line_with(&text, "post_switch = [[]]"), "{e}");
    assert!(e.message.contains("hook #2"), "{e}");

    let text = format!("{GOOD}[[services.chat.release.smoke]]\nname = \"a\"\nrequest = {{ path = \"/ok\" }}\n[[services.chat.release.smoke]]\nname = \"b\"\nrequest = {{ path = \"relative\" }}\n");
    let e = check(&text).unwrap_err();
    assert_eq!(e.key, "services.chat.release.smoke.request.path");
    assert_eq!(e.line, line_with(&text, "\"relative\""), "{e}");

    let text = GOOD.replace(
        "promotion = \"manual\"",
        "promotion = \"manual\"\nwarmup = { concurrency = 0, request = { path = \"/\" } }",
    );
    let e = check(&text).unwrap_err();
    assert_eq!(e.key, "services.chat.release.warmup.concurrency");
    assert_eq!(e.line, line_with(&text, "concurrency = 0"), "{e}");
}

#[test]
fn health_rule_errors_name_the_line_of_their_key() {
    let text = GOOD.replace("path = \"/health\"", "path = \"health\"");
    let e = check(&text).unwrap_err();
    assert_eq!(e.key, "services.chat.health.path");
    assert_eq!(e.line, line_with(&text, "path = \"health\""), "{e}");
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

#[test]
fn trusted_proxies_and_header_line_limit_are_checked_where_they_stand() {
    let c = check(&GOOD.replace(
        "preview_listen = \"127.0.0.1:8081\"",
        "preview_listen = \"127.0.0.1:8081\"\ntrusted_proxies = [\"10.0.0.0/8\", \"::1\"]\nretry_non_idempotent = false",
    ))
    .unwrap();
    let chat = &c.services["chat"];
    assert_eq!(
        chat.trusted_proxies,
        vec![("10.0.0.0".parse().unwrap(), 8), ("::1".parse().unwrap(), 128)]
    );
    assert!(!chat.retry_non_idempotent);
    let d = &check(GOOD).unwrap().services["chat"];
    assert!(d.trusted_proxies.is_empty() && d.retry_non_idempotent, "defaults");
    assert_eq!(d.limits.max_header_line_bytes, 16 * 1024);
    assert_eq!(d.limits.max_body_bytes, 256 << 20);
    assert_eq!(d.limits.first_byte_timeout.get().as_secs(), 600);

    for (bad, why) in [("10.0.0.0/33", "prefix"), ("proxy.internal", "not an IP")] {
        let text = GOOD.replace(
            "preview_listen = \"127.0.0.1:8081\"",
            &format!("preview_listen = \"127.0.0.1:8081\"\ntrusted_proxies = [\"127.0.0.1\", \"{bad}\"]"),
        );
        let e = check(&text).unwrap_err();
        assert_eq!(e.key, "services.chat.trusted_proxies[1]", "{e}");
        assert_eq!(e.line, line_with(&text, "trusted_proxies"), "{e}");
        assert!(e.message.contains(why), "{e}");
    }
    let text = GOOD.replace(
        "health = { path",
        "limits = { max_header_line_bytes = 10 }\nhealth = { path",
    );
    let e = check(&text).unwrap_err();
    assert_eq!(e.key, "services.chat.limits.max_header_line_bytes", "{e}");
}

#[test]
fn upgrade_protocols_and_retry_paths_have_defaults_and_refuse_bad_entries_where_they_stand() {
    let d = &check(GOOD).unwrap().services["chat"];
    assert_eq!(d.upgrade_protocols, vec!["websocket"]);
    for p in [
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/embeddings",
        "/generate",
        "/rerank",
        "/tokenize",
    ] {
        assert!(d.retry_paths.iter().any(|x| x == p), "{p} is a default retry path");
    }
    for p in ["/v1/files", "/v1/batches", "/v1/responses", "/v1/fine_tuning/jobs"] {
        assert!(!d.retry_paths.iter().any(|x| x == p), "{p} creates something");
    }
    let set = |extra: &str| {
        GOOD.replace(
            "preview_listen = \"127.0.0.1:8081\"",
            &format!("preview_listen = \"127.0.0.1:8081\"\n{extra}"),
        )
    };
    let c = check(&set(
        "upgrade_protocols = [\"WebSocket\", \"foo\"]\nretry_paths = [\"/x\"]",
    ))
    .unwrap();
    assert_eq!(c.services["chat"].upgrade_protocols, vec!["websocket", "foo"]);
    assert_eq!(c.services["chat"].retry_paths, vec!["/x"]);
    let c = check(&set("upgrade_protocols = []\nretry_paths = []")).unwrap();
    assert!(c.services["chat"].upgrade_protocols.is_empty() && c.services["chat"].retry_paths.is_empty());
    for (extra, key, why) in [
        (
            "upgrade_protocols = [\"websocket\", \"h2c\"]",
            "services.chat.upgrade_protocols[1]",
            "h2c is never tunnelled",
        ),
        (
            "upgrade_protocols = [\"H2C\"]",
            "services.chat.upgrade_protocols[0]",
            "h2c is never tunnelled",
        ),
        (
            "upgrade_protocols = [\"websocket/13\"]",
            "services.chat.upgrade_protocols[0]",
            "a token",
        ),
        (
            "retry_paths = [\"/ok\", \"v1/chat\"]",
            "services.chat.retry_paths[1]",
            "starting with '/'",
        ),
        (
            "retry_paths = [\"/v1/chat?x=1\"]",
            "services.chat.retry_paths[0]",
            "no query",
        ),
    ] {
        let text = set(extra);
        let e = check(&text).unwrap_err();
        assert_eq!(e.key, key, "{e}");
        assert_eq!(e.line, line_with(&text, extra.split(' ').next().unwrap()), "{e}");
        assert!(e.message.contains(why), "{e}");
    }
}

/// docs/configuration.md lists the defaults of `retry_paths` and `upgrade_protocols` as the
/// code has them.
#[test]
fn the_documented_retry_paths_and_upgrade_protocols_are_the_defaults() {
    let doc = include_str!("../../../docs/configuration.md");
    let row = |key: &str| {
        doc.lines()
            .find(|l| l.starts_with(&format!("| `{key}` |")))
            .unwrap_or_else(|| panic!("no row for {key}"))
            .split(" | ")
            .nth(1)
            .unwrap()
            .to_string()
    };
    let documented = |cell: String| -> Vec<String> { cell.split('`').skip(1).step_by(2).map(str::to_string).collect() };
    let paths = documented(row("retry_paths"));
    let mut want = defaults::retry_paths();
    want.sort();
    let mut got = paths;
    got.sort();
    assert_eq!(got, want, "docs/configuration.md's retry_paths row");
    assert_eq!(row("upgrade_protocols"), "`[\"websocket\"]`");
    assert_eq!(defaults::upgrade_protocols(), vec!["websocket"]);
}

/// docs/configuration.md's `limits` table lists every key with the code's default: the
/// table's default cells, read as TOML, give `LimitsConfig::default()`.
#[test]
fn the_documented_limits_are_the_defaults() {
    let doc = include_str!("../../../docs/configuration.md");
    let table: Vec<(&str, &str)> = doc
        .split("### `limits = { ... }`")
        .nth(1)
        .expect("a limits section")
        .lines()
        .skip_while(|l| !l.starts_with("| `"))
        .take_while(|l| l.starts_with("| `"))
        .map(|l| {
            let mut cells = l.split(" | ");
            let key = cells.next().unwrap().trim_start_matches("| ").trim_matches('`');
            let default = cells.next().unwrap().split('`').nth(1).unwrap();
            (key, default)
        })
        .collect();
    let text: String = table.iter().map(|(k, v)| format!("{k} = {v}\n")).collect();
    let documented: LimitsConfig =
        toml::from_str(&text).unwrap_or_else(|e| panic!("docs/configuration.md's limits table: {e}"));
    assert_eq!(
        format!("{documented:?}"),
        format!("{:?}", LimitsConfig::default()),
        "docs/configuration.md's limits defaults"
    );
    let code = format!("{:?}", LimitsConfig::default());
    let fields: Vec<&str> = code
        .split(['{', ','])
        .skip(1)
        .filter_map(|f| f.split(':').next())
        .map(str::trim)
        .filter(|f| !f.is_empty() && !f.starts_with('}'))
        .collect();
    assert_eq!(fields.len(), 10, "{code}");
    for field in fields {
        assert!(
            table.iter().any(|(k, _)| *k == field),
            "docs/configuration.md has no limits row for {field}"
        );
    }
}

#[test]
fn probe_kinds_parse_with_their_keys_and_defaults() {
    let c = check(GOOD).unwrap();
    let h = &c.services["chat"].health;
    assert_eq!(h.kind, ProbeKind::Http);
    assert_eq!(h.status, None, "2xx and 3xx, as before `status` existed");
    assert_eq!(h.passive_window.get(), std::time::Duration::from_secs(10));

    let text = GOOD.replace(
        "health = { path = \"/health\", interval = \"500ms\", timeout = \"1s\" }",
        "health = { path = \"/v2/health/ready\", status = [200, \"204-206\"], passive_window = \"0s\" }",
    );
    let h = check(&text).unwrap().services["chat"].health.clone();
    assert_eq!(h.status, Some(StatusSet(vec![(200, 200), (204, 206)])));
    assert!(h.passive_window.get().is_zero());

    let text = GOOD.replace(
        "health = { path = \"/health\", interval = \"500ms\", timeout = \"1s\" }",
        "upstream_protocol = \"h2c\"\nhealth = { kind = \"grpc\", service = \"chat\" }",
    );
    let h = check(&text).unwrap().services["chat"].health.clone();
    assert_eq!((h.kind, h.service.as_str()), (ProbeKind::Grpc, "chat"));

    let text = GOOD.replace(
        "health = { path = \"/health\", interval = \"500ms\", timeout = \"1s\" }",
        "[services.chat.health]\nkind = \"generation\"\ntimeout = \"5s\"\nrequest = { method = \"POST\", path = \"/v1/completions\", body = '{\"max_tokens\":1}' }\nexpect = { status = 200, json = { \"/object\" = \"text_completion\" } }\n",
    );
    let h = check(&text).unwrap().services["chat"].health.clone();
    assert_eq!(h.kind, ProbeKind::Generation);
    assert_eq!(h.request.unwrap().path, "/v1/completions");
    assert_eq!(h.expect.unwrap().status, Some(200));
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

#[test]
fn endpoint_specs_are_ip_or_dns_names_with_a_port() {
    use crate::EndpointSpec;
    let ok = |s: &str| EndpointSpec::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"));
    assert_eq!(ok("10.0.0.5:8000").literal(), Some("10.0.0.5:8000".parse().unwrap()));
    assert_eq!(ok("[::1]:8000").to_string(), "[::1]:8000");
    assert_eq!(ok("http://10.0.0.5:8000/").to_string(), "10.0.0.5:8000");
    let n = ok("GPU-A.Internal:8000");
    assert_eq!((n.host.as_str(), n.port, n.literal()), ("gpu-a.internal", 8000, None));
    assert_eq!(ok("gpu-a.internal.:80").host, "gpu-a.internal.");
    let t = ok("https://GPU-A:443");
    assert_eq!((t.host.as_str(), t.port, t.tls), ("gpu-a", 443, true));
    assert!(ok("https://10.0.0.5:8443").tls && !ok("http://10.0.0.5:80").tls);
    for bad in [
        "ftp://gpu-a:21",
        "gpu-a",
        "gpu-a:",
        "gpu-a:65536",
        "-gpu:80",
        "gpu-.a:80",
        "a..b:80",
        "1.2.3:80",
        "user@gpu:80",
        "https://gpu-a",
        "gpu a:80",
        "[gpu]:80",
        &format!("{}:80", "a".repeat(64)),
    ] {
        assert!(EndpointSpec::parse(bad).is_err(), "{bad} accepted");
    }
}

#[test]
fn fleet_mode_reads_the_members_name_and_ack_timeout() {
    let c = check(&format!(
        "[store]\npath = \"snap.db\"\nurl = \"etcd://127.0.0.1:2379, 127.0.0.1:22379\"\nfleet = \"prod\"\nack_timeout = \"500ms\"\n{GOOD}"
    ))
    .unwrap();
    let f = c.store.fleet.unwrap();
    assert_eq!(f.members, vec!["127.0.0.1:2379", "127.0.0.1:22379"]);
    assert_eq!(f.name, "prod");
    assert_eq!(f.router_id, None);
    assert_eq!(f.ack_timeout.get(), std::time::Duration::from_millis(500));
    assert_eq!(c.store.path, Path::new("/etc/cutover/snap.db"));
    assert!(check(GOOD).unwrap().store.fleet.is_none());
}

#[test]
fn fleet_mode_errors_name_the_line_and_key() {
    let e = check(&format!(
        "[store]\nurl = \"redis://127.0.0.1:2379\"\nfleet = \"prod\"\n{GOOD}"
    ))
    .unwrap_err();
    assert_eq!((e.line, e.key.as_str()), (2, "store.url"), "{e}");
    assert!(e.message.contains("etcd://") && e.message.contains("https://"), "{e}");
    let e = check(&format!("[store]\nurl = \"etcd://127.0.0.1:2379\"\n{GOOD}")).unwrap_err();
    assert_eq!((e.line, e.key.as_str()), (2, "store.fleet"), "{e}");
    let e = check(&format!(
        "[store]\nurl = \"etcd://127.0.0.1\"\nfleet = \"prod\"\n{GOOD}"
    ))
    .unwrap_err();
    assert!(e.message.contains("not HOST:PORT"), "{e}");
    let e = check(&format!("[store]\nurl = \"etcd://a:1\"\nfleet = \"a/b\"\n{GOOD}")).unwrap_err();
    assert_eq!((e.line, e.key.as_str()), (3, "store.fleet"), "{e}");
    let e = check(&format!("[store]\nfleet = \"prod\"\n{GOOD}")).unwrap_err();
    assert_eq!((e.line, e.key.as_str()), (2, "store.fleet"), "{e}");
    assert!(e.message.contains("store.url"), "{e}");
    let e = check(&format!(
        "[store]\nurl = \"etcd://a:1\"\nfleet = \"p\"\nack_timeout = \"0s\"\n{GOOD}"
    ))
    .unwrap_err();
    assert_eq!((e.line, e.key.as_str()), (4, "store.ack_timeout"), "{e}");
}

#[test]
fn tls_files_are_checked_at_load_and_errors_name_the_file_line_and_key() {
    let dir = std::env::temp_dir().join(format!("cutover-config-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let pem = |names: &[&str]| {
        let c = rcgen::generate_simple_self_signed(names.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        (c.cert.pem(), c.signing_key.serialize_pem())
    };
    let (cert, key) = pem(&["localhost"]);
    let (_, other_key) = pem(&["localhost"]);
    std::fs::write(dir.join("tls.crt"), cert).unwrap();
    std::fs::write(dir.join("tls.key"), key).unwrap();
    std::fs::write(dir.join("other.key"), other_key).unwrap();
    let with = |tls: &str| {
        GOOD.replace(
            "preview_listen = \"127.0.0.1:8081\"\n",
            &format!("preview_listen = \"127.0.0.1:8081\"\n{tls}\n"),
        )
    };
    let path = dir.join("cutover.toml");

    let good = with(r#"tls = { cert = "tls.crt", key = "tls.key" }"#);
    let c = parse(&path, &format!("{good}\n")).unwrap();
    let tls = c.services["chat"].tls.as_ref().unwrap();
    assert_eq!(tls.cert, dir.join("tls.crt"), "relative to the config's folder");
    assert!(c.admin.tls.is_none());

    let e = parse(&path, &with(r#"tls = { cert = "missing.crt", key = "tls.key" }"#)).unwrap_err();
    assert_eq!((e.line, e.key.as_str()), (8, "services.chat.tls.cert"), "{e}");
    assert!(
        e.message.contains("cannot read the certificate file") && e.message.contains("missing.crt"),
        "{e}"
    );

    let e = parse(&path, &with(r#"tls = { cert = "tls.crt", key = "other.key" }"#)).unwrap_err();
    assert_eq!((e.line, e.key.as_str()), (8, "services.chat.tls.key"), "{e}");
    assert!(e.message.contains("does not match the certificate"), "{e}");

    let e = parse(&path, &with(r#"tls = { cert = "tls.key", key = "tls.key" }"#)).unwrap_err();
    assert_eq!(e.key, "services.chat.tls.cert", "{e}");
    assert!(e.message.contains("holds no certificate"), "{e}");

    let admin = GOOD.replace(
        "listen = \"127.0.0.1:9901\"\n",
        "listen = \"127.0.0.1:9901\"\ntls = { cert = \"tls.crt\", key = \"nope.key\" }\n",
    );
    let e = parse(&path, &admin).unwrap_err();
    assert_eq!((e.line, e.key.as_str()), (4, "admin.tls.key"), "{e}");

    let e = parse(&path, &with(r#"tls = { cert = "tls.crt", key = "tls.key", ca = "x" }"#)).unwrap_err();
    assert!(e.message.contains("unknown field") && e.key.contains("tls"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn https_endpoints_turn_upstream_tls_on_for_the_whole_service() {
    let dir = std::env::temp_dir().join(format!("cutover-config-utls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ca = rcgen::generate_simple_self_signed(vec!["ca".to_string()]).unwrap();
    std::fs::write(dir.join("ca.pem"), ca.cert.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), ca.signing_key.serialize_pem()).unwrap();
    let path = dir.join("cutover.toml");
    let cfg = |extra: &str, blue: &str, green: &str| {
        format!(
            "[services.chat]\nlisten = \"127.0.0.1:8080\"\n{extra}\n[services.chat.blue]\nendpoints = [{blue}]\n[services.chat.green]\nendpoints = [{green}]\n"
        )
    };
    let c = parse(
        &path,
        &cfg(
            "upstream_protocol = \"h2\"",
            "\"https://gpu-a:8443\"",
            "\"https://10.0.0.2:8443\"",
        ),
    )
    .unwrap();
    let chat = &c.services["chat"];
    assert_eq!(
        chat.upstream_tls,
        Some(UpstreamTls { ca_file: None }),
        "system roots by default"
    );
    assert_eq!(
        chat.upstream_protocol,
        UpstreamProtocol::H2c,
        "h2 is h2c's name for TLS"
    );
    let c = parse(
        &path,
        &cfg(
            "upstream_tls = { ca_file = \"ca.pem\" }",
            "\"https://gpu-a:8443\"",
            "\"https://gpu-b:8443\"",
        ),
    )
    .unwrap();
    assert_eq!(
        c.services["chat"].upstream_tls.as_ref().unwrap().ca_file,
        Some(dir.join("ca.pem"))
    );
    assert_eq!(
        parse(&path, &cfg("", "\"gpu-a:80\"", "\"gpu-b:80\"")).unwrap().services["chat"].upstream_tls,
        None
    );

    let e = parse(&path, &cfg("", "\"https://gpu-a:8443\"", "\"gpu-b:80\"")).unwrap_err();
    assert_eq!((e.line, e.key.as_str()), (7, "services.chat.green.endpoints"), "{e}");
    assert!(e.message.contains("per service"), "{e}");
    let e = parse(
        &path,
        &cfg(
            "upstream_tls = { ca_file = \"ca.pem\" }",
            "\"gpu-a:80\"",
            "\"gpu-b:80\"",
        ),
    )
    .unwrap_err();
    assert_eq!((e.line, e.key.as_str()), (3, "services.chat.upstream_tls"), "{e}");
    let e = parse(
        &path,
        &cfg(
            "upstream_tls = { ca_file = \"key.pem\" }",
            "\"https://a:1\"",
            "\"https://b:1\"",
        ),
    )
    .unwrap_err();
    assert_eq!(
        (e.line, e.key.as_str()),
        (3, "services.chat.upstream_tls.ca_file"),
        "{e}"
    );
    assert!(e.message.contains("holds no certificate"), "{e}");
    let e = parse(
        &path,
        &cfg(
            "upstream_tls = { ca_file = \"nope.pem\" }",
            "\"https://a:1\"",
            "\"https://b:1\"",
        ),
    )
    .unwrap_err();
    assert!(e.message.contains("cannot read the CA file"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn host_agents_need_fleet_mode_and_valid_distinct_names() {
    let svc = |hosts: &str| {
        format!(
            "[services.chat]\nlisten = \"127.0.0.1:8080\"\n[services.chat.run]\ncommand = [\"serve\", \"--host\", \"{{host}}\", \"--port\", \"{{port}}\"]\nports = {{ blue = [9001], green = [9002] }}\nhosts = {hosts}\n"
        )
    };
    let fleet = "[store]\nurl = \"etcd://127.0.0.1:2379\"\nfleet = \"prod\"\n";
    let c = check(&format!("{fleet}{}", svc("[\"gpu-a\", \"gpu-b.internal\"]"))).unwrap();
    let Environments::Managed(run) = &c.services["chat"].environments else {
        panic!("managed")
    };
    assert_eq!(run.hosts, ["gpu-a", "gpu-b.internal"]);
    // Without a fleet there is nobody to run them: the error names the line of `hosts`.
    let e = check(&svc("[\"gpu-a\"]")).unwrap_err();
    assert_eq!((e.line, e.key.as_str()), (6, "services.chat.run.hosts"), "{e}");
    assert!(e.message.contains("fleet mode"), "{e}");
    let e = check(&format!("{fleet}{}", svc("[\"gpu-a\", \"gpu_b\"]"))).unwrap_err();
    assert_eq!(e.key, "services.chat.run.hosts[1]", "{e}");
    let e = check(&format!("{fleet}{}", svc("[\"gpu-a\", \"gpu-a\"]"))).unwrap_err();
    assert!(e.message.contains("twice"), "{e}");
    // `{host}` is a placeholder like `{port}`; `{hots}` is not.
    let e = check(&format!("{fleet}{}", svc("[\"gpu-a\"]").replace("{host}", "{hots}"))).unwrap_err();
    assert!(e.message.contains("{host}"), "{e}");
}

#[test]
fn shadow_section_parses_with_defaults_and_names_a_bad_key_at_its_line() {
    let text = format!("{GOOD}[services.chat.release.shadow]\nsample = 0.05\nthresholds = {{ rouge_l_drop = 0.1 }}\n");
    let c = check(&text).unwrap();
    let sh = c.services["chat"].release.shadow.clone().unwrap();
    assert_eq!(sh.sample, 0.05);
    assert_eq!(sh.min_pairs, 50);
    assert_eq!(sh.paths, ["/v1/chat/completions", "/v1/completions", "/v1/embeddings"]);
    assert_eq!(sh.thresholds().rouge_l_drop, 0.1);
    assert_eq!(sh.thresholds().min_pairs, 50, "the phase's min_pairs is the engine's");
    assert!(check(GOOD).unwrap().services["chat"].release.shadow.is_none());

    let bad = format!("{GOOD}[services.chat.release.shadow]\nsample = 1.5\n");
    let e = check(&bad).unwrap_err();
    assert_eq!(e.line, bad.lines().count(), "{e}");
    assert!(e.to_string().contains("services.chat.release.shadow.sample"), "{e}");
    assert!(e.to_string().contains("between 0 and 1"), "{e}");

    let bad = format!("{GOOD}[services.chat.release.shadow]\nthresholds = {{ min_pairs = 3 }}\n");
    let e = check(&bad).unwrap_err();
    assert!(e.to_string().contains("shadow.min_pairs instead"), "{e}");
    let bad = format!("{GOOD}[services.chat.release.shadow]\nthresholds = {{ rogue = 3 }}\n");
    let e = check(&bad).unwrap_err();
    assert!(e.to_string().contains("rogue"), "{e}");
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

/// Issue #25: errors in `run.ports` named the `[services.X.run]` header's line.
#[test]
fn run_ports_errors_name_the_line_of_ports() {
    let head = "[services.chat]\nlisten = \"127.0.0.1:8080\"\n[services.chat.run]\ncommand = [\"srv\", \"--port\", \"{port}\"]\n";
    let e = check(&format!(
        "{head}stop_timeout = \"5s\"\nports = {{ blue = [9001], green = [] }}\n"
    ))
    .unwrap_err();
    assert_eq!((e.line, e.key.as_str()), (6, "services.chat.run.ports"), "{e}");
    let e = check(&format!("{head}ports = {{ blue = [9001],\n  green = [0] }}\n")).unwrap_err();
    assert_eq!((e.line, e.key.as_str()), (6, "services.chat.run.ports.green"), "{e}");
    let e = check(&format!(
        "{head}ports = {{ blue = [9001], green = [9002] }}\nhost = \"nowhere\"\n"
    ))
    .unwrap_err();
    assert_eq!((e.line, e.key.as_str()), (6, "services.chat.run.host"), "{e}");
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

#[test]
fn etcd_members_are_all_plain_or_all_https_and_a_mix_is_refused() {
    let m = etcd_members("etcd://a:1, b:2").unwrap();
    assert_eq!((m.addrs, m.https), (vec!["a:1".to_string(), "b:2".to_string()], false));
    let m = etcd_members("https://10.0.0.1:2379,https://etcd-b.internal:2379/").unwrap();
    assert_eq!(m.addrs, vec!["10.0.0.1:2379", "etcd-b.internal:2379"]);
    assert!(m.https);
    assert!(!etcd_members("http://a:1,http://b:1").unwrap().https);
    for mixed in [
        "https://a:1,http://b:1",
        "etcd://a:1,https://b:1",
        "http://a:1,https://b:1",
    ] {
        let e = etcd_members(mixed).unwrap_err();
        assert!(e.contains("mixes http:// and https://"), "{mixed}: {e}");
    }
    assert!(
        etcd_members("https://a:1,b:1").is_err(),
        "a member without a scheme after https://"
    );
}

#[test]
fn etcd_tls_and_user_are_checked_at_load_and_errors_name_the_line_and_key() {
    let dir = std::env::temp_dir().join(format!("cutover-config-etcd-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ca = rcgen::generate_simple_self_signed(vec!["ca".to_string()]).unwrap();
    std::fs::write(dir.join("ca.pem"), ca.cert.pem()).unwrap();
    let client = rcgen::generate_simple_self_signed(vec!["router".to_string()]).unwrap();
    std::fs::write(dir.join("router.pem"), client.cert.pem()).unwrap();
    std::fs::write(dir.join("router.key"), client.signing_key.serialize_pem()).unwrap();
    std::fs::write(dir.join("etcd.password"), "s3cret\n").unwrap();
    std::fs::write(dir.join("empty.password"), "").unwrap();
    let path = dir.join("cutover.toml");
    let store = |lines: &str| format!("[store]\nfleet = \"prod\"\n{lines}\n{GOOD}");
    let https = "url = \"https://127.0.0.1:2379,https://127.0.0.1:22379\"";

    let c = parse(
        &path,
        &store(&format!(
            "{https}\ntls = {{ ca = \"ca.pem\", cert = \"router.pem\", key = \"router.key\" }}\nusername = \"router\"\npassword_file = \"etcd.password\""
        )),
    )
    .unwrap();
    let f = c.store.fleet.unwrap();
    assert_eq!(f.members, vec!["127.0.0.1:2379", "127.0.0.1:22379"]);
    let tls = f.tls.unwrap();
    assert_eq!(tls.ca, Some(dir.join("ca.pem")), "relative to the config's folder");
    assert_eq!(tls.client.unwrap().key, dir.join("router.key"));
    let user = f.user.unwrap();
    assert_eq!(
        (user.name.as_str(), user.password_file),
        ("router", dir.join("etcd.password"))
    );
    let plain = parse(&path, &store("url = \"etcd://a:1\""))
        .unwrap()
        .store
        .fleet
        .unwrap();
    assert!(plain.tls.is_none() && plain.user.is_none());
    assert_eq!(
        parse(&path, &store(https)).unwrap().store.fleet.unwrap().tls,
        Some(EtcdTls::default()),
        "https:// alone: the system's roots, no client certificate"
    );

    let refused = |lines: &str| parse(&path, &store(lines)).unwrap_err();
    let e = refused("url = \"https://a:1,http://b:1\"");
    assert_eq!((e.line, e.key.as_str()), (3, "store.url"), "{e}");
    assert!(e.message.contains("mixes http:// and https://"), "{e}");
    let e = refused("url = \"etcd://a:1\"\ntls = { ca = \"ca.pem\" }");
    assert_eq!((e.line, e.key.as_str()), (4, "store.tls"), "{e}");
    assert!(e.message.contains("need https://"), "{e}");
    let e = refused(&format!("{https}\ntls = {{ ca = \"router.key\" }}"));
    assert_eq!((e.line, e.key.as_str()), (4, "store.tls.ca"), "{e}");
    let e = refused(&format!("{https}\ntls = {{ cert = \"router.pem\" }}"));
    assert_eq!((e.line, e.key.as_str()), (4, "store.tls.key"), "{e}");
    let e = refused(&format!("{https}\nusername = \"router\"\npassword = \"s3cret\""));
    assert_eq!((e.line, e.key.as_str()), (5, "store.password"), "{e}");
    assert!(
        e.message.contains("password_file") && !e.message.contains("s3cret"),
        "{e}"
    );
    let e = refused(&format!("{https}\nusername = \"router\""));
    assert_eq!(e.key, "store.password_file", "{e}");
    let e = refused(&format!(
        "{https}\nusername = \"router\"\npassword_file = \"empty.password\""
    ));
    assert_eq!((e.line, e.key.as_str()), (5, "store.password_file"), "{e}");
    let e = refused("url = \"etcd://a:1\"\nusername = \"router\"\npassword_file = \"etcd.password\"");
    assert_eq!((e.line, e.key.as_str()), (4, "store.username"), "{e}");
    assert!(e.message.contains("in clear"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// External gates, webhooks, hooks and standby: what parses, and errors on the key's line.
#[test]
fn external_gates_webhooks_and_standby_parse_and_their_errors_name_the_key_and_line() {
    let text = format!(
        "{GOOD}[[services.chat.release.verify.prometheus]]\nname = \"q\"\nurl = \"http://127.0.0.1:9090\"\nquery = 'max(x{{color=\"{{color}}\"}})'\nmax = 5\n\
         [[services.chat.release.verify.scrape]]\nmetric = \"vllm:num_requests_waiting\"\nreduce = \"mean\"\nmin = 0\n\
         [[services.chat.release.webhooks]]\nurl = \"http://127.0.0.1:1/\"\nsecret_file = \"hook.secret\"\nevents = [\"rolled_back\"]\n\
         [services.chat.release.hooks]\nprovision = [[\"./deploy.sh\"]]\npost_scale_down = [[\"./migrate.sh\", \"contract\"]]\n"
    );
    let text = text.replace("promotion = \"manual\"", "promotion = \"manual\"\nstandby = \"sleep\"");
    let c = check(&text).unwrap();
    let rel = &c.services["chat"].release;
    let v = rel.verify.as_ref().unwrap();
    assert_eq!((v.prometheus[0].max, v.scrape[0].reduce), (Some(5.0), Reduce::Mean));
    assert_eq!(rel.standby, Standby::Sleep);
    assert_eq!(
        rel.webhooks[0].secret_file.as_deref(),
        Some(Path::new("/etc/cutover/hook.secret"))
    );
    assert!(rel.webhooks[0].wants("rolled_back") && !rel.webhooks[0].wants("phase"));
    assert_eq!(
        rel.hooks.post_scale_down,
        vec![vec!["./migrate.sh".to_string(), "contract".into()]]
    );

    // A gate without a threshold, an unknown event, an unknown standby: each on its line.
    for (bad, good, key, wanted) in [
        (
            "max = 5\n",
            "\n",
            "services.chat.release.verify.prometheus.max",
            "threshold",
        ),
        (
            "events = [\"rolled_back\"]",
            "events = [\"deployed\"]",
            "services.chat.release.webhooks.events",
            "unknown event",
        ),
        (
            "url = \"http://127.0.0.1:9090\"",
            "url = \"127.0.0.1:9090\"",
            "services.chat.release.verify.prometheus.url",
            "http://",
        ),
    ] {
        let t = text.replacen(bad, good, 1);
        let e = check(&t).unwrap_err();
        assert_eq!(e.key, key, "{e}");
        assert!(e.message.contains(wanted), "{e}");
        assert!(e.line > 0, "{e}");
    }
    let e = check(&text.replace("standby = \"sleep\"", "standby = \"hibernate\"")).unwrap_err();
    assert!(e.key.contains("standby") && e.message.contains("sleep"), "{e}");
}

const SHARED: &str = r#"
[listeners.api]
listen = "127.0.0.1:8000"

[services.chat]
listener = "api"
match = { model = ["llama-3-8b", "llama-3-70b"] }
[services.chat.blue]
endpoints = ["127.0.0.1:9001"]
[services.chat.green]
endpoints = ["127.0.0.1:9002"]

[services.embed]
listener = "api"
match = { model = ["bge-small"] }
[services.embed.blue]
endpoints = ["127.0.0.1:9011"]
[services.embed.green]
endpoints = ["127.0.0.1:9012"]
"#;

#[test]
fn services_on_a_shared_listener_take_its_address_and_their_match() {
    let c = check(SHARED).unwrap();
    assert_eq!(c.listeners["api"].listen.port(), 8000);
    let chat = c.services["chat"].shared.as_ref().unwrap();
    assert_eq!((chat.listener.as_str(), chat.model.len()), ("api", 2));
    assert_eq!(c.services["embed"].listen.port(), 8000);
    let hosts = SHARED
        .replace(r#"model = ["bge-small"]"#, r#"host = "Embed.Example""#)
        .replace(r#"model = ["llama-3-8b", "llama-3-70b"]"#, r#"path_prefix = "/chat""#);
    let c = check(&hosts).unwrap();
    assert_eq!(
        c.services["embed"].shared.as_ref().unwrap().host.as_deref(),
        Some("embed.example")
    );
    assert_eq!(
        c.services["chat"].shared.as_ref().unwrap().path_prefix.as_deref(),
        Some("/chat")
    );
}

#[test]
fn shared_listener_mistakes_name_their_line_and_key() {
    let line_of = |text: &str, needle: &str| text.lines().position(|l| l.contains(needle)).unwrap() + 1;
    // The same model on two services of one listener.
    let text = SHARED.replace("bge-small", "llama-3-70b");
    let e = check(&text).unwrap_err();
    assert_eq!(
        (e.key.as_str(), e.line),
        (
            "services.embed.match.model",
            line_of(&text, r#"match = { model = ["llama-3-70b"]"#)
        ),
        "{e}"
    );
    assert!(e.message.contains("already matched by service chat"), "{e}");
    // Both `listen` and `listener`.
    let text = SHARED.replacen(
        "listener = \"api\"",
        "listen = \"127.0.0.1:8100\"\nlistener = \"api\"",
        1,
    );
    let e = check(&text).unwrap_err();
    assert_eq!(
        (e.key.as_str(), e.line),
        ("services.chat.listen", line_of(&text, "8100")),
        "{e}"
    );
    assert!(e.message.contains("not both"), "{e}");
    // A listener nobody configured.
    let text = SHARED.replacen("listener = \"api\"", "listener = \"apj\"", 1);
    let e = check(&text).unwrap_err();
    assert_eq!(
        (e.key.as_str(), e.line),
        ("services.chat.listener", line_of(&text, "apj")),
        "{e}"
    );
    // A shared service without a match.
    let text = SHARED.replacen("match = { model = [\"bge-small\"] }\n", "", 1);
    let e = check(&text).unwrap_err();
    assert_eq!(e.key, "services.embed.match", "{e}");
    // A bad prefix.
    let text = SHARED.replace(r#"model = ["bge-small"]"#, r#"path_prefix = "embed""#);
    let e = check(&text).unwrap_err();
    assert_eq!(e.key, "services.embed.match.path_prefix", "{e}");
    // A listener's `tls` is checked as a service's is, at its key.
    let text = SHARED.replacen(
        "listen = \"127.0.0.1:8000\"\n",
        "listen = \"127.0.0.1:8000\"\ntls = { cert = \"/nonexistent.crt\", key = \"/nonexistent.key\" }\n",
        1,
    );
    let e = check(&text).unwrap_err();
    assert!(e.key.starts_with("listeners.api.tls"), "{e}");
    // Neither address.
    let text = SHARED.replacen("listener = \"api\"\n", "", 1);
    assert_eq!(check(&text).unwrap_err().key, "services.chat.listen");
}

#[test]
fn traffic_sticky_and_header_route_errors_name_file_line_and_key() {
    let with = |line: &str| GOOD.replace("promotion = \"manual\"", &format!("promotion = \"manual\"\n{line}"));
    let text = with("traffic = { canary = { percent = 0, bake = \"5m\" } }");
    let e = check(&text).unwrap_err();
    assert_eq!(e.key, "services.chat.release.traffic.canary.percent", "{e}");
    assert_eq!(e.line, line_with(&text, "percent = 0"), "{e}");
    assert!(e.to_string().starts_with("/etc/cutover/cutover.toml:"), "{e}");

    let text = with("traffic = { linear = { step = 20, interval = \"0s\" } }");
    let e = check(&text).unwrap_err();
    assert_eq!(e.key, "services.chat.release.traffic.linear.interval", "{e}");

    let text = with("traffic = { tidal = { percent = 5 } }");
    let e = check(&text).unwrap_err();
    assert_eq!(e.line, line_with(&text, "tidal"), "{e}");

    let text = with("sticky = { header = \"x-user-id\", token = true }");
    let e = check(&text).unwrap_err();
    assert_eq!(e.key, "services.chat.release.sticky", "{e}");
    assert!(e.message.contains("exactly one"), "{e}");

    let text = with("header_route = { header = \"x-cutover-color\", tokens_file = \"no-such.tokens\" }");
    let e = check(&text).unwrap_err();
    assert_eq!(e.key, "services.chat.release.header_route.tokens_file", "{e}");
    assert!(e.message.contains("/etc/cutover/no-such.tokens"), "{e}");

    let ok = check(&with(
        "traffic = { linear = { step = 25, interval = \"2m\" } }\nsticky = { body_field = \"user\" }",
    ))
    .unwrap();
    let steps = ok.services["chat"].release.traffic.steps();
    assert_eq!(steps.iter().map(|s| s.weight).collect::<Vec<_>>(), vec![25, 50, 75]);
    assert_eq!(
        check(GOOD).unwrap().services["chat"].release.traffic,
        Traffic::AllAtOnce
    );
}
