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

/// The `| key | default | what |` table that follows `heading` in docs/configuration.md:
/// (key, default cell) per row.
fn table(heading: &str) -> Vec<(&'static str, &'static str)> {
    rows(heading).into_iter().map(|(k, d, _)| (k, d)).collect()
}

/// [`table`] with the third cell, what the key does.
fn rows(heading: &str) -> Vec<(&'static str, &'static str, &'static str)> {
    let doc = include_str!("../../../../docs/configuration.md");
    doc.split(heading)
        .nth(1)
        .unwrap_or_else(|| panic!("docs/configuration.md has no {heading:?}"))
        .lines()
        .skip_while(|l| !l.starts_with("| `"))
        .take_while(|l| l.starts_with("| `"))
        .map(|l| {
            let mut cells = l.split(" | ");
            let key = cells.next().unwrap().trim_start_matches("| ").trim_matches('`');
            (key, cells.next().unwrap(), cells.next().unwrap_or(""))
        })
        .collect()
}

/// A default cell that is one TOML value in backticks (`"5m"`, `0.25`), as TOML text;
/// `None` for a cell in words ("none", a list of names).
fn literal(cell: &str) -> Option<&str> {
    let v = cell.strip_prefix('`')?.strip_suffix('`')?;
    (!v.contains('`')).then_some(v)
}

/// The top-level field names of a struct's pretty `Debug`.
fn fields(pretty: &str) -> Vec<String> {
    pretty
        .lines()
        .filter(|l| l.starts_with("    ") && !l.starts_with("     "))
        .filter_map(|l| l.trim().split_once(':').map(|(f, _)| f.to_string()))
        .collect()
}

/// The table under `heading` documents `T` as the code has it: every field has a row, and
/// the rows with a literal default, added to the `required` keys, read as `T` give what
/// `required` alone gives (the code's defaults). A documented key that does not exist
/// fails too (the tables refuse unknown keys).
fn documented_defaults_are_the_code_s<T>(heading: &str, required: &str) -> T
where
    T: serde::de::DeserializeOwned + std::fmt::Debug,
{
    let rows = table(heading);
    let literals: String = rows
        .iter()
        .filter_map(|(k, d)| literal(d).map(|v| format!("{k} = {v}\n")))
        .collect();
    assert!(!literals.is_empty(), "{heading}: no default in backticks");
    let documented: T = toml::from_str(&format!("{required}{literals}"))
        .unwrap_or_else(|e| panic!("docs/configuration.md {heading}: {e}"));
    let code: T = toml::from_str(required).unwrap();
    assert_eq!(
        format!("{documented:#?}"),
        format!("{code:#?}"),
        "docs/configuration.md {heading}: the documented defaults"
    );
    for field in fields(&format!("{code:#?}")) {
        let required = required.lines().any(|l| l.starts_with(&format!("{field} =")));
        assert!(
            required || rows.iter().any(|(k, _)| *k == field),
            "docs/configuration.md {heading} has no row for {field}"
        );
    }
    code
}

/// The release table, its verify, gates, webhooks and shadow tables: each default as
/// documented (traffic and standby are rows of the release table).
#[test]
fn the_documented_release_defaults_are_the_defaults() {
    let rel: ReleaseConfig = documented_defaults_are_the_code_s("### `[services.NAME.release]`", "");
    assert_eq!((rel.traffic, rel.standby), (Traffic::AllAtOnce, Standby::Stop));
    assert!(
        rel.traffic.steps().is_empty(),
        "all_at_once has no step before the switch"
    );
    documented_defaults_are_the_code_s::<VerifyConfig>("#### `[services.NAME.release.verify]`", "");
    let g = "name = \"q\"\nurl = \"http://127.0.0.1:9090\"\nquery = \"up\"\n";
    documented_defaults_are_the_code_s::<PrometheusGate>("`[[...verify.prometheus]]` (`name`", g);
    documented_defaults_are_the_code_s::<ScrapeGate>("`[[...verify.scrape]]` (`metric`", "metric = \"up\"\n");
    let w: WebhookConfig =
        documented_defaults_are_the_code_s("`[[...webhooks]]` (`url`", "url = \"http://127.0.0.1:1/hook\"\n");
    let events = table("`[[...webhooks]]` (`url`")
        .into_iter()
        .find(|(k, _)| *k == "events")
        .map(|(_, cell)| {
            cell.split('`')
                .skip(1)
                .step_by(2)
                .map(str::to_string)
                .collect::<Vec<_>>()
        });
    assert_eq!(events, Some(w.events), "docs/configuration.md's webhook events row");
    documented_defaults_are_the_code_s::<ApprovalWebhookConfig>(
        "`[...approval_webhook]` (`url`",
        "url = \"http://127.0.0.1:1/approve\"\n",
    );
    let shadow: ShadowConfig = documented_defaults_are_the_code_s("#### `[services.NAME.release.shadow]`", "");
    // The paths row names them in words: each code path ends with a named one.
    let paths = table("#### `[services.NAME.release.shadow]`")
        .into_iter()
        .find(|(k, _)| *k == "paths")
        .map(|(_, cell)| cell.split(", ").map(str::to_string).collect::<Vec<_>>())
        .unwrap();
    assert_eq!(paths.len(), shadow.paths.len(), "{paths:?} against {:?}", shadow.paths);
    for (named, code) in paths.iter().zip(&shadow.paths) {
        assert!(code.ends_with(named.as_str()), "{named:?} against {code:?}");
    }
}

/// Canary and linear modes have no defaults: the documented examples read as the steps
/// releases.md describes.
#[test]
fn the_documented_traffic_modes_give_their_steps() {
    let row = rows("### `[services.NAME.release]`")
        .into_iter()
        .find(|(k, _, _)| *k == "traffic")
        .unwrap()
        .2;
    let weights = |mode: &str| {
        let t: ReleaseConfig = toml::from_str(&format!("traffic = {mode}")).unwrap();
        t.traffic.steps().iter().map(|s| s.weight).collect::<Vec<_>>()
    };
    assert!(row.contains("{ canary = { percent = 1..99, bake = \"5m\" } }"), "{row}");
    assert_eq!(weights("{ canary = { percent = 10, bake = \"5m\" } }"), [10]);
    assert!(
        row.contains("{ linear = { step = 1..99, interval = \"2m\" } }"),
        "{row}"
    );
    assert_eq!(weights("{ linear = { step = 30, interval = \"2m\" } }"), [30, 60, 90]);
}
