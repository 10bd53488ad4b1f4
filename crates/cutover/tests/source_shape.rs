//! The shape of the source (issue #20): every non-test function in `crates/*/src` is at most
//! 80 lines, every file there at most 900. Fails listing each offender with its place.
//!
//! The measure is a brace matcher over the text with comments, strings and char literals
//! blanked out (so a `{` in a format string or a `'}'` does not count). A function runs from
//! the line of its `fn` to the line of its closing brace. Items under `#[cfg(test)]` are
//! skipped, and so are the files of `#[cfg(test)] mod NAME;` with their folders.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

const MAX_FN_LINES: usize = 80;
const MAX_FILE_LINES: usize = 900;

#[test]
fn no_function_over_80_lines_and_no_file_over_900_in_crates_src() {
    let crates = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut offenders = Vec::new();
    let mut measured = 0;
    for krate in sorted_entries(&crates) {
        let src = krate.join("src");
        if !src.is_dir() {
            continue;
        }
        let mut skipped = HashSet::new();
        for file in rust_files(&src) {
            if skipped.iter().any(|s: &PathBuf| file.starts_with(s)) {
                continue;
            }
            let text = std::fs::read_to_string(&file).unwrap();
            let shape = measure(&text);
            skipped.extend(shape.test_modules.iter().flat_map(|m| module_paths(&file, m)));
            let name = file.strip_prefix(&crates).unwrap_or(&file).display().to_string();
            measured += 1;
            if shape.lines > MAX_FILE_LINES {
                offenders.push(format!("crates/{name}: {} lines (file)", shape.lines));
            }
            for f in shape.functions.iter().filter(|f| f.lines > MAX_FN_LINES) {
                offenders.push(format!("crates/{name}:{} fn {}: {} lines", f.line, f.name, f.lines));
            }
        }
    }
    assert!(
        measured > 50,
        "only {measured} source files found under {}",
        crates.display()
    );
    assert!(
        offenders.is_empty(),
        "{} over the limits (functions {MAX_FN_LINES} lines, files {MAX_FILE_LINES}):\n{}",
        offenders.len(),
        offenders.join("\n")
    );
}

/// A crate's `.rs` files, a folder's own files before its subfolders, so a `#[cfg(test)] mod`
/// is seen before the files it names.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let (mut files, mut dirs) = (Vec::new(), Vec::new());
    for p in sorted_entries(dir) {
        if p.is_dir() {
            dirs.push(p);
        } else if p.extension().is_some_and(|e| e == "rs") {
            files.push(p);
        }
    }
    // lib.rs, main.rs and mod.rs declare the modules of their folder.
    files.sort_by_key(|p| {
        !matches!(
            p.file_name().and_then(|n| n.to_str()),
            Some("lib.rs" | "main.rs" | "mod.rs")
        )
    });
    for d in dirs {
        files.extend(rust_files(&d));
    }
    files
}

fn sorted_entries(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    v.sort();
    v
}

/// Where `mod name;` declared in `file` lives: `name.rs` and the folder `name/` beside it (for
/// `lib.rs`, `main.rs` and `mod.rs`), or under the folder named after `file`.
fn module_paths(file: &Path, name: &str) -> Vec<PathBuf> {
    let stem = file.file_stem().and_then(|s| s.to_str()).unwrap_or("");
    let parent = file.parent().unwrap();
    let dir = match stem {
        "lib" | "main" | "mod" => parent.to_path_buf(),
        _ => parent.join(stem),
    };
    vec![dir.join(format!("{name}.rs")), dir.join(name)]
}

#[derive(Debug, PartialEq)]
struct Function {
    name: String,
    /// 1-based line of its `fn`.
    line: usize,
    lines: usize,
}

#[derive(Debug, Default)]
struct Shape {
    lines: usize,
    functions: Vec<Function>,
    /// Names of `#[cfg(test)] mod NAME;` declarations.
    test_modules: Vec<String>,
}

/// The functions (outside `#[cfg(test)]` items) and the line count of one file's text.
fn measure(text: &str) -> Shape {
    let code = blank_literals_and_comments(text);
    let lines: Vec<&str> = code.lines().collect();
    let mut shape = Shape {
        lines: text.lines().count(),
        ..Shape::default()
    };
    let mut i = 0;
    while i < lines.len() {
        let l = lines[i].trim_start();
        if is_cfg_test(l) {
            let mut j = i + 1;
            while j < lines.len() && lines[j].trim_start().starts_with("#[") {
                j += 1;
            }
            if let Some(name) = lines.get(j).and_then(|l| mod_declaration(l)) {
                shape.test_modules.push(name);
                i = j + 1;
            } else {
                i = item_end(&lines, j) + 1;
            }
            continue;
        }
        if let Some(name) = fn_name(l) {
            let end = item_end(&lines, i);
            if has_body(&lines, i) {
                shape.functions.push(Function {
                    name,
                    line: i + 1,
                    lines: end - i + 1,
                });
            }
        }
        i += 1;
    }
    shape
}

fn is_cfg_test(line: &str) -> bool {
    line.starts_with("#[cfg(test)]") || line.starts_with("#[cfg(all(test,")
}

/// `NAME` of a line `[pub] mod NAME;`.
fn mod_declaration(line: &str) -> Option<String> {
    let l = line.trim();
    let l = l.strip_prefix("pub ").unwrap_or(l);
    let name = l.strip_prefix("mod ")?.strip_suffix(';')?.trim();
    name.chars()
        .all(|c| c.is_alphanumeric() || c == '_')
        .then(|| name.to_string())
}

/// The name of a function whose `fn` starts this (trimmed) line, after its qualifiers.
fn fn_name(line: &str) -> Option<String> {
    let mut rest = line;
    if let Some(r) = rest.strip_prefix("pub") {
        rest = match r.strip_prefix('(') {
            Some(r) => r.split_once(')')?.1,
            None => r,
        };
        rest = rest.trim_start();
    }
    for q in ["default ", "const ", "async ", "unsafe ", "extern "] {
        if let Some(r) = rest.strip_prefix(q) {
            rest = r.trim_start();
            // `extern "C"`: the ABI's string is blanked to quotes and spaces.
            if q == "extern " && rest.starts_with('"') {
                rest = rest[1..].split_once('"')?.1.trim_start();
            }
        }
    }
    let rest = rest.strip_prefix("fn ")?.trim_start();
    let name: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
    (!name.is_empty()).then_some(name)
}

/// The line of the `}` that closes the item starting at `start`, or of the `;` that ends it
/// when it has no body (a declaration in a trait, `mod x;`, a `use`).
fn item_end(lines: &[&str], start: usize) -> usize {
    let mut depth = 0i32;
    // Parentheses and brackets: a `;` inside `[u8; 4]` does not end a signature.
    let mut nesting = 0i32;
    for (n, l) in lines.iter().enumerate().skip(start) {
        for c in l.chars() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        return n;
                    }
                }
                '(' | '[' => nesting += 1,
                ')' | ']' => nesting -= 1,
                ';' if depth == 0 && nesting == 0 => return n,
                _ => {}
            }
        }
    }
    lines.len().saturating_sub(1)
}

/// Whether the item at `start` opens a body before any `;` at its top level.
fn has_body(lines: &[&str], start: usize) -> bool {
    let mut nesting = 0i32;
    for l in &lines[start..] {
        for c in l.chars() {
            match c {
                '{' => return true,
                '(' | '[' => nesting += 1,
                ')' | ']' => nesting -= 1,
                ';' if nesting == 0 => return false,
                _ => {}
            }
        }
    }
    false
}

/// `text` with every comment and the inside of every string and char literal replaced by
/// spaces (newlines kept, so line numbers stay). Quotes stay, so `"{"` becomes `" "`.
fn blank_literals_and_comments(text: &str) -> String {
    let c: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let blank = |out: &mut String, ch: char| out.push(if ch == '\n' { '\n' } else { ' ' });
    let mut i = 0;
    while i < c.len() {
        let prev_ident = i > 0 && (c[i - 1].is_alphanumeric() || c[i - 1] == '_');
        if c[i] == '/' && c.get(i + 1) == Some(&'/') {
            while i < c.len() && c[i] != '\n' {
                blank(&mut out, c[i]);
                i += 1;
            }
        } else if c[i] == '/' && c.get(i + 1) == Some(&'*') {
            // Block comments nest in Rust.
            let mut depth = 0;
            while i < c.len() {
                if c[i] == '/' && c.get(i + 1) == Some(&'*') {
                    depth += 1;
                    out.push_str("  ");
                    i += 2;
                } else if c[i] == '*' && c.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    out.push_str("  ");
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    blank(&mut out, c[i]);
                    i += 1;
                }
            }
        } else if let Some(hashes) = raw_string_start(&c, i, prev_ident) {
            // r"..", r#".."#, br"..", cr"..": no escapes, ends at a quote and as many #.
            while c[i] != '"' {
                out.push(c[i]);
                i += 1;
            }
            out.push('"');
            i += 1;
            while i < c.len() && !(c[i] == '"' && (1..=hashes).all(|k| c.get(i + k) == Some(&'#'))) {
                blank(&mut out, c[i]);
                i += 1;
            }
            for _ in 0..=hashes {
                if i < c.len() {
                    out.push(c[i]);
                    i += 1;
                }
            }
        } else if c[i] == '"' {
            out.push('"');
            i += 1;
            while i < c.len() && c[i] != '"' {
                let step = if c[i] == '\\' { 2 } else { 1 };
                for _ in 0..step.min(c.len() - i) {
                    blank(&mut out, c[i]);
                    i += 1;
                }
            }
            if i < c.len() {
                out.push('"');
                i += 1;
            }
        } else if c[i] == '\'' && (!prev_ident || byte_prefix(&c, i)) {
            match char_literal_len(&c, i) {
                Some(n) => {
                    out.push('\'');
                    for k in 1..n - 1 {
                        blank(&mut out, c[i + k]);
                    }
                    out.push('\'');
                    i += n;
                }
                // A lifetime or a label: left as it is.
                None => {
                    out.push('\'');
                    i += 1;
                }
            }
        } else {
            out.push(c[i]);
            i += 1;
        }
    }
    out
}

/// Whether the quote at `i` follows a lone `b` (a byte literal, `b'{'`).
fn byte_prefix(c: &[char], i: usize) -> bool {
    i >= 1 && c[i - 1] == 'b' && (i < 2 || !(c[i - 2].is_alphanumeric() || c[i - 2] == '_'))
}

/// The number of `#` of a raw string starting at `i` (`r`, `br` or `cr`), if one does.
fn raw_string_start(c: &[char], i: usize, prev_ident: bool) -> Option<usize> {
    if prev_ident {
        return None;
    }
    let mut j = i;
    if matches!(c.get(j), Some('b' | 'c')) {
        j += 1;
    }
    if c.get(j) != Some(&'r') {
        return None;
    }
    j += 1;
    let hashes = c[j..].iter().take_while(|&&ch| ch == '#').count();
    (c.get(j + hashes) == Some(&'"')).then_some(hashes)
}

/// The length of a char literal starting at the quote at `i` (`'x'`, `'\n'`, `'\u{7b}'`),
/// or `None` for a lifetime or a label (`'a`, `'static`, `'outer:`).
fn char_literal_len(c: &[char], i: usize) -> Option<usize> {
    if c.get(i + 1) == Some(&'\\') {
        // The escaped character itself may be a quote: look from the one after it.
        let close = c.get(i + 3..)?.iter().take(10).position(|&ch| ch == '\'')?;
        return Some(close + 4);
    }
    (c.get(i + 2) == Some(&'\'')).then_some(3)
}

#[test]
fn braces_in_strings_chars_and_comments_do_not_count() {
    let text = r##"
fn a() {
    let s = "}}}";
    let r = r#"{ "}" "#;
    let c = '}';
    let e = '\'';
    let u = '\u{7d}';
    // }
    /* } /* nested } */ } */
    let b = b"{";
    let y = b'{';
}
fn b<'x>(v: &'x str) -> &'x str {
    'outer: loop {
        break 'outer;
    }
    v
}
"##;
    let s = measure(text);
    let got: Vec<(&str, usize, usize)> = s.functions.iter().map(|f| (f.name.as_str(), f.line, f.lines)).collect();
    assert_eq!(got, vec![("a", 2, 11), ("b", 13, 6)]);
}

#[test]
fn cfg_test_items_and_declarations_without_body_are_not_measured() {
    let text = "
trait T {
    fn declared(&self, x: [u8; 4]);
    fn with_default(&self) {
    }
}
#[cfg(test)]
#[allow(dead_code)]
fn helper() {
    fn inner() {}
}
#[cfg(test)]
mod tests;
pub(crate) async fn after() {}
";
    let s = measure(text);
    let names: Vec<&str> = s.functions.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names, vec!["with_default", "after"]);
    assert_eq!(s.test_modules, vec!["tests".to_string()]);
    let lib = Path::new("/c/src/lib.rs");
    assert_eq!(module_paths(lib, "tests")[1], Path::new("/c/src/tests"));
    let sub = Path::new("/c/src/release.rs");
    assert_eq!(module_paths(sub, "tests")[0], Path::new("/c/src/release/tests.rs"));
}

#[test]
fn a_long_function_is_measured_from_its_fn_line_to_its_closing_brace() {
    let body = "    x += 1;\n".repeat(85);
    let text =
        format!("/// doc\n#[inline]\npub fn long(mut x: u32) -> u32\nwhere\n    u32: Copy,\n{{\n{body}    x\n}}\n");
    let s = measure(&text);
    assert_eq!(
        s.functions,
        vec![Function {
            name: "long".into(),
            line: 3,
            lines: 85 + 6
        }]
    );
}
