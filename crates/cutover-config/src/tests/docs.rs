//! docs/configuration.md against the code: the documented defaults are the defaults.

use super::*;

/// docs/configuration.md lists the defaults of `retry_paths` and `upgrade_protocols` as the
/// code has them.
#[test]
fn the_documented_retry_paths_and_upgrade_protocols_are_the_defaults() {
    let doc = include_str!("../../../../docs/configuration.md");
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
    let mut want: Vec<String> = ServiceConfig::RETRY_PATHS.iter().map(|p| p.to_string()).collect();
    want.sort();
    let mut got = paths;
    got.sort();
    assert_eq!(got, want, "docs/configuration.md's retry_paths row");
    assert_eq!(row("upgrade_protocols"), "`[\"websocket\"]`");
    assert_eq!(ServiceConfig::UPGRADE_PROTOCOLS, ["websocket"]);
}

/// docs/configuration.md's `limits` table lists every key with the code's default: the
/// table's default cells, read as TOML, give `LimitsConfig::default()`.
#[test]
fn the_documented_limits_are_the_defaults() {
    let doc = include_str!("../../../../docs/configuration.md");
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
