//! The crate's folders are its layers and the graph between them goes one way: a check no
//! single module owns. Run `cargo test -p cutover-control --lib graph -- --nocapture` to print
//! the layers and what each one uses.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The crate's folders from the bottom of the dependency graph up: a folder may use only the
/// folders listed before it (and itself).
pub(crate) const LAYERS: &[&str] = &[
    "base",
    "procs",
    "service",
    "release",
    "controller",
    "fleet",
    "agent",
    "api",
    "serve",
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

/// The `crate::NAME` paths a file names, code only (comments are skipped); grouped imports
/// (`crate::{a, b::c}`) included.
fn crate_refs(text: &str) -> BTreeSet<String> {
    let ident = |s: &str| -> String { s.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect() };
    let mut out = BTreeSet::new();
    for line in text.lines() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(i) = rest.find("crate::") {
            let before = rest[..i].chars().last();
            rest = &rest[i + "crate::".len()..];
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '$') {
                continue;
            }
            if let Some(group) = rest.strip_prefix('{') {
                let end = group.find('}').unwrap_or(group.len());
                out.extend(
                    group[..end]
                        .split(',')
                        .map(|s| ident(s.trim()))
                        .filter(|n| !n.is_empty()),
                );
            } else {
                out.insert(ident(rest));
            }
        }
    }
    out
}

/// Per layer, the layers its files name (itself left out), and the upward imports found.
/// Each layer and the layers it names.
type Uses = BTreeMap<String, BTreeSet<String>>;

fn scan(src: &Path) -> (Uses, Vec<(String, String)>) {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let rank = |m: &str| LAYERS.iter().position(|l| *l == m);
    let mut uses = Uses::new();
    let mut upward = Vec::new();
    for f in &files {
        let rel = f.strip_prefix(src).unwrap();
        let mut parts = rel.components();
        let top = parts.next().unwrap().as_os_str().to_string_lossy().to_string();
        if top == "lib.rs" || top == "tests" {
            continue;
        }
        assert!(
            parts.next().is_some(),
            "{top} is a file at the crate's root: every layer is a folder"
        );
        let me = rank(&top).unwrap_or_else(|| panic!("folder {top} is not in LAYERS: place it"));
        let entry = uses.entry(top.clone()).or_default();
        for used in crate_refs(&std::fs::read_to_string(f).unwrap()) {
            let r = rank(&used).unwrap_or_else(|| panic!("{} names crate::{used}, not a layer", rel.display()));
            if used != top {
                entry.insert(used.clone());
            }
            if r > me {
                upward.push((rel.display().to_string(), used));
            }
        }
    }
    (uses, upward)
}

#[test]
fn each_folder_is_a_layer_and_imports_go_down() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let (uses, upward) = scan(&src);
    println!("layers, top first (each uses only those below it):");
    for l in LAYERS.iter().rev() {
        let below: Vec<_> = uses.get(*l).into_iter().flatten().cloned().collect();
        println!("  {l:<10} -> {}", below.join(", "));
    }
    assert!(upward.is_empty(), "imports that go up the layers: {upward:#?}");
    assert_eq!(
        uses.keys().collect::<BTreeSet<_>>(),
        LAYERS
            .iter()
            .map(|l| l.to_string())
            .collect::<BTreeSet<_>>()
            .iter()
            .collect(),
        "every layer has code and every folder is a layer"
    );
}

#[test]
fn inside_release_the_run_is_below_the_registry() {
    // The run may use the document, the active-release handle and the pipeline's steps, never
    // `release/mod.rs`'s own items.
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/release/run");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut bad = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        let code: String = text.lines().map(|l| l.split("//").next().unwrap_or("")).collect();
        let reaches_up = code.contains("super::super::")
            || code.match_indices("crate::release::").any(|(i, _)| {
                !["steps", "shadow", "scale_down", "doc", "active", "run"]
                    .iter()
                    .any(|m| code[i + 16..].starts_with(m))
            });
        if reaches_up {
            bad.push(f.display().to_string());
        }
    }
    assert!(bad.is_empty(), "release/run reaches up into release/mod.rs: {bad:?}");
    assert!(files.len() >= 5, "the scan found the run's files: {files:?}");
}

#[test]
fn the_scan_sees_a_reference_and_skips_comments() {
    let refs = crate_refs(
        "use crate::service::ServiceCtl;\n// crate::api in a comment\nlet x = crate::release::steps::plural(1);\nuse crate::{base::error, procs};",
    );
    assert_eq!(
        refs,
        ["base", "procs", "release", "service"]
            .into_iter()
            .map(String::from)
            .collect::<BTreeSet<_>>()
    );
}
