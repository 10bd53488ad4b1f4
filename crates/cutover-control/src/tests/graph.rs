//! The module graph goes one way: a check no single module owns.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// The crate's modules from the bottom of the dependency graph up: a module may use only
/// modules listed before it. `admin`, `metrics` and `server` sit on top of `controller`.
const LAYERS: &[&str] = &[
    "error",
    "store_call",
    "token",
    "pause",
    "upgrade",
    "certs",
    "supervisor",
    "fleet_hosts",
    "fleet_link",
    "remote_procs",
    "procs",
    "agent",
    "service",
    "steps",
    "shadow",
    "scale_down",
    "release",
    "controller",
    "fleet_leader",
    "fleet",
    "reload",
    "metrics",
    "admin",
    "server",
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The `crate::NAME` paths a file names, code only (comments are skipped).
fn crate_refs(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in text.lines() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(i) = rest.find("crate::") {
            rest = &rest[i + "crate::".len()..];
            let name: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
            out.insert(name);
        }
    }
    out
}

#[test]
fn module_graph_is_one_way() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let rank = |m: &str| LAYERS.iter().position(|l| *l == m);
    let mut violations = Vec::new();
    let mut seen = BTreeSet::new();
    for f in &files {
        let rel = f.strip_prefix(&src).unwrap();
        let top = rel.components().next().unwrap().as_os_str().to_string_lossy();
        let top = top.trim_end_matches(".rs").to_string();
        if top == "lib" || top == "tests" {
            continue;
        }
        seen.insert(top.clone());
        let me = rank(&top).unwrap_or_else(|| panic!("module {top} is not in LAYERS: place it"));
        let text = std::fs::read_to_string(f).unwrap();
        for used in crate_refs(&text) {
            match rank(&used) {
                Some(r) if r < me || used == top => {}
                _ => violations.push(format!("{} uses crate::{used}", rel.display())),
            }
        }
        // Inside `release`, the run is below the registry: it may use only the document and
        // the active-release handle, never `release/mod.rs`'s items.
        if rel.starts_with("release/run") && (text.contains("super::super") || text.contains("crate::release")) {
            violations.push(format!("{} reaches up into release/mod.rs", rel.display()));
        }
    }
    assert!(
        violations.is_empty(),
        "dependencies that go up the layers: {violations:#?}"
    );
    assert!(seen.len() >= 12, "the scan found the modules: {seen:?}");
}

#[test]
fn the_scan_sees_a_reference_and_skips_comments() {
    let refs = crate_refs(
        "use crate::service::ServiceCtl;\n// crate::admin in a comment\nlet x = crate::steps::plural(1, \"s\");",
    );
    assert_eq!(
        refs,
        ["service", "steps"]
            .into_iter()
            .map(String::from)
            .collect::<BTreeSet<_>>()
    );
}
