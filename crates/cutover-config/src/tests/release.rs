//! `[services.NAME.release]`: rules, shadow, external gates, webhooks, traffic.

use super::*;

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
