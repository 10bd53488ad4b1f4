//! Fleet mode's `[store]` keys, etcd access, TLS files and host agents.

use super::*;

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
