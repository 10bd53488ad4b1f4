//! Property tests: any text gives a config or a located error.

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
