//! The module graph of every crate in the workspace is one-way: no module reaches back to
//! one that depends on it, at the top level of a crate (edges are `crate::x` paths) or
//! among the files of a folder module (edges are `super::x` paths). Test modules are left
//! out: a test may use anything. Run alone with `cargo test -p cutover --test module_graph
//! -- --nocapture` to print each crate's graph.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

type Graph = BTreeMap<String, BTreeSet<String>>;

/// The text of a file without its trailing `#[cfg(test)] mod tests { ... }`.
fn code_of(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    let mut out = String::new();
    let mut lines = text.lines().peekable();
    while let Some(l) = lines.next() {
        if l.trim() == "#[cfg(test)]" && lines.peek().is_some_and(|n| n.trim_start().starts_with("mod tests")) {
            break;
        }
        out.push_str(l);
        out.push('\n');
    }
    out
}

/// The first-level names after each `prefix` (`crate::`, `super::`), grouped imports
/// (`crate::{a, b::c}`) included.
fn names_after(code: &str, prefix: &str) -> BTreeSet<String> {
    let ident = |s: &str| -> String { s.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect() };
    let mut out = BTreeSet::new();
    let mut rest = code;
    while let Some(i) = rest.find(prefix) {
        // `crate::` inside `$crate::` or a longer path segment is not ours.
        let before = rest[..i].chars().last();
        rest = &rest[i + prefix.len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '$') {
            continue;
        }
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for item in group[..end].split(',') {
                let n = ident(item.trim());
                if !n.is_empty() && n != "self" {
                    out.insert(n);
                }
            }
        } else {
            let n = ident(rest);
            if !n.is_empty() {
                out.insert(n);
            }
        }
    }
    out
}

fn rs_files(dir: &Path) -> Vec<PathBuf> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            v.extend(rs_files(&p));
        } else if p.extension().is_some_and(|x| x == "rs") {
            v.push(p);
        }
    }
    v
}

/// Modules of a folder (files and sub-folders, not `root`) and the siblings each names
/// with `prefix`.
fn graph(dir: &Path, root: &[&str], prefix: &str) -> Graph {
    let mut modules: BTreeMap<String, Vec<PathBuf>> = BTreeMap::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_stem().unwrap().to_string_lossy().to_string();
        if p.is_dir() {
            modules.entry(name).or_default().extend(rs_files(&p));
        } else if p.extension().is_some_and(|x| x == "rs") && !root.contains(&name.as_str()) {
            modules.entry(name).or_default().push(p);
        }
    }
    let known: BTreeSet<String> = modules.keys().cloned().collect();
    modules
        .iter()
        .map(|(name, files)| {
            let mut deps = BTreeSet::new();
            for f in files {
                // A folder module's own files name their siblings with `super::`; only the
                // folder's `mod.rs` names the folder's peers that way.
                let is_inner = f.parent() != Some(dir) && f.file_name().is_some_and(|n| n != "mod.rs");
                if prefix == "super::" && is_inner {
                    continue;
                }
                deps.extend(names_after(&code_of(f), prefix));
            }
            deps.retain(|d| d != name && known.contains(d));
            (name.clone(), deps)
        })
        .collect()
}

/// A cycle in `g`, if there is one, as the path around it.
fn cycle(g: &Graph) -> Option<Vec<String>> {
    fn visit(n: &str, g: &Graph, state: &mut BTreeMap<String, u8>, path: &mut Vec<String>) -> Option<Vec<String>> {
        match state.get(n) {
            Some(2) => return None,
            Some(1) => {
                let at = path.iter().position(|p| p == n).unwrap();
                let mut c = path[at..].to_vec();
                c.push(n.to_string());
                return Some(c);
            }
            _ => {}
        }
        state.insert(n.to_string(), 1);
        path.push(n.to_string());
        for d in g.get(n).into_iter().flatten() {
            if let Some(c) = visit(d, g, state, path) {
                return Some(c);
            }
        }
        path.pop();
        state.insert(n.to_string(), 2);
        None
    }
    let mut state = BTreeMap::new();
    g.keys().find_map(|n| visit(n, g, &mut state, &mut Vec::new()))
}

#[test]
fn every_crate_and_folder_module_is_one_way() {
    let crates = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut checked = 0;
    let mut cycles = Vec::new();
    for e in std::fs::read_dir(&crates).unwrap() {
        let src = e.unwrap().path().join("src");
        if !src.is_dir() {
            continue;
        }
        let mut dirs = vec![(src.clone(), "crate::")];
        dirs.extend(
            std::fs::read_dir(&src)
                .unwrap()
                .map(|e| e.unwrap().path())
                .filter(|p| p.is_dir() && p.file_name().is_some_and(|n| n != "bin"))
                .map(|p| (p, "super::")),
        );
        for (dir, prefix) in dirs {
            let g = graph(&dir, &["lib", "main", "mod"], prefix);
            println!("{}:", dir.strip_prefix(&crates).unwrap().display());
            for (m, deps) in &g {
                println!("  {m} -> {}", deps.iter().cloned().collect::<Vec<_>>().join(", "));
            }
            if let Some(c) = cycle(&g) {
                cycles.push(format!("{}: {}", dir.display(), c.join(" -> ")));
            }
            checked += 1;
        }
    }
    assert!(
        checked >= 6,
        "only {checked} module folders found under {}",
        crates.display()
    );
    assert!(cycles.is_empty(), "module cycles:\n{}", cycles.join("\n"));
}

#[test]
fn the_scanner_sees_grouped_and_plain_paths() {
    let code = "use crate::a::X;\nuse crate::{b, c::Y, self};\nfn f() { crate::d::g(); $crate::e; super::f::h(); }";
    let names = names_after(code, "crate::");
    assert_eq!(names, ["a", "b", "c", "d"].iter().map(|s| s.to_string()).collect());
    assert_eq!(names_after(code, "super::"), ["f".to_string()].into_iter().collect());
    let mut g = Graph::new();
    g.insert("a".into(), ["b".to_string()].into());
    g.insert("b".into(), ["c".to_string()].into());
    g.insert("c".into(), BTreeSet::new());
    assert_eq!(cycle(&g), None);
    g.get_mut("c").unwrap().insert("a".into());
    assert_eq!(cycle(&g), Some(vec!["a".into(), "b".into(), "c".into(), "a".into()]));
}
