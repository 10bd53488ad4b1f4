//! The tokens file (`[admin] tokens_file`, default `tokens.toml`): named tokens with roles,
//! stored as SHA-256 digests, never in plain text. Parsed with errors that name the file, the
//! line and the key; `cutover token create` appends to it.
//!
//! ```toml
//! [[token]]
//! name = "ci"
//! role = "operator"
//! sha256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
//! created = "2026-12-01T11:06:13Z"
//! ```

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::Path;

use cutover_config::ConfigError;
use serde::Deserialize;
use toml::Spanned;

use super::{digest, hex, random_token, Digest, Role, ADMIN_TOKEN_NAME};

/// A tokens file larger than this is refused: it would hold thousands of tokens.
pub const MAX_LEN: u64 = 1024 * 1024;

/// Longest token name: it is recorded as the actor of every change the token makes.
pub const MAX_NAME: usize = 64;

/// One named token, as the file holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub name: String,
    pub role: Role,
    pub sha256: Digest,
    /// RFC 3339, as written by `cutover token create`; absent in hand-written entries.
    pub created: Option<String>,
    /// Where the entry starts in the file (1-based).
    pub line: usize,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    token: Vec<Spanned<RawEntry>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEntry {
    name: Spanned<String>,
    role: Spanned<String>,
    sha256: Spanned<String>,
    created: Option<Spanned<String>>,
}

fn error(path: &Path, line: usize, key: String, message: String) -> ConfigError {
    ConfigError {
        file: path.to_path_buf(),
        line,
        key,
        message,
    }
}

/// A name is recorded in the history and printed in tables: keep it short and plain.
pub fn check_name(name: &str) -> Result<(), String> {
    let plain = name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if name.is_empty() || name.len() > MAX_NAME || !plain || !name.as_bytes()[0].is_ascii_alphanumeric() {
        return Err(format!(
            "invalid token name {name:?}: use 1 to {MAX_NAME} letters, digits, `.`, `_` or `-`, starting with a letter or digit"
        ));
    }
    if name == ADMIN_TOKEN_NAME {
        return Err(format!(
            "the name {ADMIN_TOKEN_NAME:?} is the admin token file's (admin.token); choose another name"
        ));
    }
    Ok(())
}

/// Parses and checks a tokens file's text; `path` names it in errors.
pub fn parse(path: &Path, text: &str) -> Result<Vec<Entry>, ConfigError> {
    let line_of = |offset: usize| text[..offset.min(text.len())].matches('\n').count() + 1;
    let raw = deserialize(path, text, &line_of)?;
    let mut out: Vec<Entry> = Vec::with_capacity(raw.token.len());
    for (i, t) in raw.token.into_iter().enumerate() {
        let line = line_of(t.span().start);
        let at = |s: &std::ops::Range<usize>, key: &str, message: String| {
            error(path, line_of(s.start), format!("token[{i}].{key}"), message)
        };
        let entry = check_entry(t.into_inner(), line, &out, at)?;
        out.push(entry);
    }
    Ok(out)
}

/// The file's TOML as its raw entries; an error names the line and the key.
fn deserialize(path: &Path, text: &str, line_of: &dyn Fn(usize) -> usize) -> Result<RawFile, ConfigError> {
    let de = toml::Deserializer::parse(text).map_err(|e| {
        error(
            path,
            e.span().map(|s| line_of(s.start)).unwrap_or(0),
            String::new(),
            e.message().trim().to_string(),
        )
    })?;
    serde_path_to_error::deserialize(de).map_err(|e| {
        // Spanned<T> shows up in the path as a private field; it is not a key of the file.
        let key = e.path().to_string().replace(".$__serde_spanned_private_value", "");
        let key = if key == "." { String::new() } else { key };
        let inner = e.into_inner();
        error(
            path,
            inner.span().map(|s| line_of(s.start)).unwrap_or(0),
            key,
            inner.message().trim().to_string(),
        )
    })
}

/// One entry checked against itself and the entries before it (`out`); `at` makes the
/// error for a key at a span.
fn check_entry(
    t: RawEntry,
    line: usize,
    out: &[Entry],
    at: impl Fn(&std::ops::Range<usize>, &str, String) -> ConfigError,
) -> Result<Entry, ConfigError> {
    check_name(t.name.get_ref()).map_err(|m| at(&t.name.span(), "name", m))?;
    let name = t.name.get_ref().clone();
    if let Some(first) = out.iter().find(|e| e.name == name) {
        return Err(at(
            &t.name.span(),
            "name",
            format!("a token named {name:?} is already on line {}", first.line),
        ));
    }
    let role = Role::parse(t.role.get_ref()).ok_or_else(|| {
        at(
            &t.role.span(),
            "role",
            format!(
                "unknown role {:?}: expected viewer, operator or admin",
                t.role.get_ref()
            ),
        )
    })?;
    let sha256 = parse_digest(t.sha256.get_ref()).ok_or_else(|| {
        at(
            &t.sha256.span(),
            "sha256",
            "expected the token's SHA-256 as 64 hex characters (`cutover token create` writes it); never the token itself".into(),
        )
    })?;
    if let Some(first) = out.iter().find(|e| e.sha256 == sha256) {
        return Err(at(
            &t.sha256.span(),
            "sha256",
            format!("the same token as {:?} on line {}", first.name, first.line),
        ));
    }
    if sha256 == digest("") {
        return Err(at(&t.sha256.span(), "sha256", "the SHA-256 of an empty token".into()));
    }
    let created = match t.created {
        Some(c) => {
            humantime::parse_rfc3339_weak(c.get_ref()).map_err(|e| {
                at(
                    &c.span(),
                    "created",
                    format!(
                        "{:?} is not an RFC 3339 time such as \"2026-12-01T11:06:13Z\": {e}",
                        c.get_ref()
                    ),
                )
            })?;
            Some(c.into_inner())
        }
        None => None,
    };
    Ok(Entry {
        name,
        role,
        sha256,
        created,
        line,
    })
}

fn parse_digest(s: &str) -> Option<Digest> {
    let s = s.as_bytes();
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in s.chunks(2).enumerate() {
        let hi = (pair[0] as char).to_digit(16)?;
        let lo = (pair[1] as char).to_digit(16)?;
        out[i] = (hi * 16 + lo) as u8;
    }
    Some(out)
}

/// Refuses a tokens file that group or others may read or write: whoever can write it can
/// give themselves the admin role, and its digests are nobody else's business.
fn check_private(path: &Path, meta: &std::fs::Metadata) -> Result<(), ConfigError> {
    let mode = meta.mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(error(
            path,
            0,
            String::new(),
            format!(
                "the tokens file has mode {mode:o}: it must not be readable or writable by group or others (run `chmod 600 {}`)",
                path.display()
            ),
        ));
    }
    if !meta.is_file() {
        return Err(error(
            path,
            0,
            String::new(),
            "the tokens file is not a regular file".into(),
        ));
    }
    if meta.len() > MAX_LEN {
        return Err(error(
            path,
            0,
            String::new(),
            format!("the tokens file is larger than {} KiB", MAX_LEN / 1024),
        ));
    }
    Ok(())
}

/// Reads the tokens file: `None` when there is none.
pub fn read(path: &Path) -> Result<Option<Vec<Entry>>, ConfigError> {
    read_text(path)?.map(|text| parse(path, &text)).transpose()
}

fn read_text(path: &Path) -> Result<Option<String>, ConfigError> {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(error(
                path,
                0,
                String::new(),
                format!("cannot read the tokens file: {e}"),
            ))
        }
    };
    check_private(path, &meta)?;
    std::fs::read_to_string(path)
        .map(Some)
        .map_err(|e| error(path, 0, String::new(), format!("cannot read the tokens file: {e}")))
}

/// Why `create` made no token.
#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    /// The name, or the file as it is: nothing was written.
    #[error("{0}")]
    Invalid(ConfigError),
    /// Writing failed.
    #[error("{0}")]
    Io(String),
}

/// What `create` made: the token (shown once, never stored) and its entry.
#[derive(Debug)]
pub struct Created {
    pub token: String,
    pub entry: Entry,
}

const HEADER: &str = "\
# Named admin tokens for cutover (see docs/configuration.md, \"Access control\").
# Only each token's SHA-256 is kept here. `cutover token create NAME --role ROLE` appends
# an entry; delete an entry's lines to revoke it (a running router notices within a second).
";

/// Makes a new random token named `name` with `role` and appends its entry to the tokens
/// file at `path` (created with mode 0600 when missing). A duplicate name, a malformed or
/// non-private file, write nothing.
pub fn create(path: &Path, name: &str, role: Role) -> Result<Created, CreateError> {
    check_name(name).map_err(|m| CreateError::Invalid(error(path, 0, "name".into(), m)))?;
    let existing = read_text(path).map_err(CreateError::Invalid)?;
    let entries = match &existing {
        Some(text) => parse(path, text).map_err(CreateError::Invalid)?,
        None => Vec::new(),
    };
    if let Some((i, e)) = entries.iter().enumerate().find(|(_, e)| e.name == name) {
        return Err(CreateError::Invalid(error(
            path,
            e.line,
            format!("token[{i}].name"),
            format!(
                "a token named {name:?} exists already (role {}); choose another name, or delete its entry first to replace it",
                e.role
            ),
        )));
    }
    let io = |what: &str, e: std::io::Error| CreateError::Io(format!("cannot {what} {}: {e}", path.display()));
    let token =
        random_token().map_err(|e| CreateError::Io(format!("cannot read /dev/urandom for a new token: {e}")))?;
    let created = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    let sha256 = digest(&token);
    let mut text = String::new();
    match &existing {
        None => text.push_str(HEADER),
        Some(t) if !t.is_empty() && !t.ends_with('\n') => text.push('\n'),
        Some(_) => {}
    }
    text.push_str(&format!(
        "\n[[token]]\nname = \"{name}\"\nrole = \"{role}\"\nsha256 = \"{}\"\ncreated = \"{created}\"\n",
        hex(&sha256)
    ));
    let mut f = if existing.is_some() {
        std::fs::OpenOptions::new()
            .append(true)
            .open(path)
            .map_err(|e| io("open", e))?
    } else {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| io("create the folder of", e))?;
        }
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| io("create", e))?
    };
    // One write of the whole entry: a router reading meanwhile sees it all or none of it.
    f.write_all(text.as_bytes()).map_err(|e| io("write", e))?;
    f.sync_all().map_err(|e| io("write", e))?;
    let before = existing.as_deref().unwrap_or("").to_string() + &text[..text.find("[[token]]").unwrap_or(0)];
    let line = before.matches('\n').count() + 1;
    Ok(Created {
        token,
        entry: Entry {
            name: name.to_string(),
            role,
            sha256,
            created: Some(created),
            line,
        },
    })
}

/// Removes the entry named `name` from the tokens file at `path`: the lines from its
/// `[[token]]` header to the next header, everything else (comments, other entries) kept as
/// written. The new file replaces the old in one rename (mode 0600), so a router reading it
/// meanwhile sees one or the other. Returns the entry removed.
pub fn delete(path: &Path, name: &str) -> Result<Entry, CreateError> {
    let invalid = |line: usize, key: &str, m: String| CreateError::Invalid(error(path, line, key.into(), m));
    let Some(text) = read_text(path).map_err(CreateError::Invalid)? else {
        return Err(invalid(
            0,
            "",
            format!("there is no tokens file, so no token named {name:?}"),
        ));
    };
    let entries = parse(path, &text).map_err(CreateError::Invalid)?;
    let Some(i) = entries.iter().position(|e| e.name == name) else {
        let names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
        let hint = if name == ADMIN_TOKEN_NAME {
            " (the admin token is the admin.token file: replace that file to change it)".to_string()
        } else if names.is_empty() {
            " (it holds none)".to_string()
        } else {
            format!(" (it has {})", names.join(", "))
        };
        return Err(invalid(
            0,
            "name",
            format!("no token named {name:?} in the tokens file{hint}"),
        ));
    };
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    let headers: Vec<usize> = (0..lines.len())
        .filter(|&l| lines[l].trim_start().starts_with('['))
        .collect();
    let tokens = headers.iter().filter(|&&l| lines[l].trim() == "[[token]]").count();
    if tokens != entries.len() || headers.len() != tokens {
        return Err(invalid(
            entries[i].line,
            &format!("token[{i}]"),
            "this file is not written as one [[token]] table per entry, so it is not edited automatically: remove the entry's lines by hand".into(),
        ));
    }
    let start = headers[i];
    let end = headers.get(i + 1).copied().unwrap_or(lines.len());
    // The blank lines before the entry go with it, so the file keeps its spacing.
    let mut from = start;
    while from > 0 && lines[from - 1].trim().is_empty() {
        from -= 1;
    }
    let kept: String = lines[..from].iter().chain(&lines[end..]).copied().collect();
    let io = |what: &str, e: std::io::Error| CreateError::Io(format!("cannot {what} {}: {e}", path.display()));
    let tmp = path.with_extension("toml.tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| io("write next to", e))?;
    f.write_all(kept.as_bytes())
        .and_then(|_| f.sync_all())
        .map_err(|e| io("write next to", e))?;
    std::fs::rename(&tmp, path).map_err(|e| io("replace", e))?;
    Ok(entries[i].clone())
}
