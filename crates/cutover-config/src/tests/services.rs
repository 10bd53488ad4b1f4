//! A service's own keys: forwarding, endpoints, upstream TLS, managed ports, shared
//! listeners.

use super::*;

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
fn the_http1_engine_is_a_setting_with_the_own_engine_by_default() {
    assert_eq!(check(GOOD).unwrap().services["chat"].http1_engine, Http1Engine::Own);
    let at = "preview_listen = \"127.0.0.1:8081\"";
    let c = check(&GOOD.replace(at, &format!("{at}\nhttp1_engine = \"hyper\""))).unwrap();
    assert_eq!(c.services["chat"].http1_engine, Http1Engine::Hyper);
    let text = GOOD.replace(at, &format!("{at}\nhttp1_engine = \"nginx\""));
    let e = check(&text).unwrap_err();
    assert_eq!(e.key, "services.chat.http1_engine", "{e}");
    assert_eq!(e.line, line_with(&text, "http1_engine"), "{e}");
    assert!(e.message.contains("own") && e.message.contains("hyper"), "{e}");
}
