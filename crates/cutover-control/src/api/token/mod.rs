//! Who may call the admin API: the admin token file, the named tokens of the tokens file with
//! their roles, and the lookup of a presented bearer token (by its SHA-256, compared in
//! constant time).
//!
//! - [`legacy`]: `admin.token`, created on the first start; it is the token named `admin`
//!   with the role `admin`.
//! - [`file`]: the tokens file, parsed with errors that name line and key, and appended to by
//!   `cutover token create`.
//! - [`Tokens`]: the set a running router accepts, re-read when the tokens file changes.

pub mod file;
pub mod legacy;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq;

pub use legacy::{load_or_create, Token};

/// What a token may do; each role may do everything the ones before it may.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// Every read: the admin API's GETs (status, history, releases, logs, series).
    Viewer,
    /// Also changes live traffic: switch, rollback, release start, approve, abort.
    Operator,
    /// Also changes the router itself: config reload.
    Admin,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Viewer, Role::Operator, Role::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The name the legacy `admin.token` goes by; no entry of the tokens file may take it.
pub const ADMIN_TOKEN_NAME: &str = "admin";

/// The SHA-256 of a token: what the tokens file stores and what lookups compare.
pub type Digest = [u8; 32];

pub fn digest(token: &str) -> Digest {
    Sha256::digest(token.as_bytes()).into()
}

/// Lowercase hex, as the tokens file writes digests.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A new token: 32 bytes from the kernel's random source, as 64 hex characters. With 256
/// bits of entropy a plain SHA-256 at rest is enough: no password hash or salt is needed,
/// since nobody can guess a preimage.
pub fn random_token() -> std::io::Result<String> {
    let mut raw = [0u8; 32];
    std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut raw))?;
    Ok(hex(&raw))
}

/// Who a request authenticated as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub name: String,
    pub role: Role,
}

/// Every token accepted at one moment, by digest.
#[derive(Default)]
pub struct Keyring {
    entries: Vec<(Digest, Identity)>,
}

/// Tokens shorter than this are never accepted, whatever a file says.
const MIN_TOKEN_LEN: usize = 16;

impl Keyring {
    /// The admin token (named `admin`, role `admin`) and the tokens file's entries.
    pub fn new(admin: &Token, named: &[file::Entry]) -> Keyring {
        let mut entries = vec![(
            digest(admin.as_str()),
            Identity {
                name: ADMIN_TOKEN_NAME.into(),
                role: Role::Admin,
            },
        )];
        entries.extend(named.iter().map(|e| {
            (
                e.sha256,
                Identity {
                    name: e.name.clone(),
                    role: e.role,
                },
            )
        }));
        Keyring { entries }
    }

    /// The identity `presented` belongs to. Every entry is compared, in constant time, so
    /// the time taken says nothing about which entry (if any) is near.
    pub fn find(&self, presented: &str) -> Option<&Identity> {
        let d = digest(presented);
        let mut found = None;
        for (hash, who) in &self.entries {
            if bool::from(hash.ct_eq(&d)) && found.is_none() {
                found = Some(who);
            }
        }
        found.filter(|_| presented.len() >= MIN_TOKEN_LEN)
    }

    /// How many tokens are accepted (the admin token included).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// A hit re-checks the tokens file at most this often, so an entry deleted from it stops
/// working within about this time.
pub const RECHECK_EVERY: Duration = Duration::from_secs(1);

/// The tokens a running router accepts: the admin token and the tokens file, re-read when
/// the file changes (so `cutover token create` needs no restart). A file that became invalid
/// keeps the previous set, and the reason is logged once per change.
#[derive(Clone)]
pub struct Tokens {
    inner: Arc<Live>,
}

struct Live {
    admin: Token,
    path: PathBuf,
    current: ArcSwap<Keyring>,
    watch: Mutex<Watch>,
}

/// What the last look at the tokens file saw.
struct Watch {
    checked: Instant,
    seen: Option<Stamp>,
}

/// Enough of a file's metadata to tell that it changed: an append changes the size, an
/// edit the modification time, `chmod` the mode, a replacement the inode.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    mode: u32,
    ino: u64,
}

fn stamp(path: &Path) -> Option<Stamp> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some(Stamp {
        modified: m.modified().ok(),
        len: m.len(),
        mode: m.mode(),
        ino: m.ino(),
    })
}

impl Tokens {
    /// Loads (or creates) the admin token file and reads the tokens file (a missing one
    /// holds no tokens). Either one invalid is an error: `serve` does not start.
    pub fn load(admin: &cutover_config::AdminConfig) -> anyhow::Result<Tokens> {
        let token = load_or_create(&admin.token_file)?;
        let path = admin.tokens_file.clone();
        let seen = stamp(&path);
        let named = file::read(&path)?.unwrap_or_default();
        let keyring = Keyring::new(&token, &named);
        tracing::info!(
            tokens_file = %path.display(),
            named = named.len(),
            "admin tokens loaded: admin.token and {} named token{}",
            named.len(),
            if named.len() == 1 { "" } else { "s" }
        );
        Ok(Tokens::with(token, path, keyring, seen))
    }

    fn with(admin: Token, path: PathBuf, keyring: Keyring, seen: Option<Stamp>) -> Tokens {
        Tokens {
            inner: Arc::new(Live {
                admin,
                path,
                current: ArcSwap::from_pointee(keyring),
                watch: Mutex::new(Watch {
                    checked: Instant::now(),
                    seen,
                }),
            }),
        }
    }

    /// The identity of `presented`, if it is an accepted token. A miss always looks at the
    /// tokens file first (one `stat`; a read only when it changed), so a token created a
    /// moment ago works at once; a hit looks at most every [`RECHECK_EVERY`].
    pub fn authenticate(&self, presented: &str) -> Option<Identity> {
        let hit = self.inner.current.load().find(presented).cloned();
        if self.refresh(hit.is_none()) {
            return self.inner.current.load().find(presented).cloned();
        }
        hit
    }

    /// Re-reads the tokens file if it changed; true when the set was replaced.
    fn refresh(&self, now: bool) -> bool {
        let live = &self.inner;
        // A hit never waits for another request's look; a miss does, to see its result.
        let mut w = if now {
            live.watch.lock().unwrap_or_else(|p| p.into_inner())
        } else {
            match live.watch.try_lock() {
                Ok(w) => w,
                Err(_) => return false,
            }
        };
        if !now && w.checked.elapsed() < RECHECK_EVERY {
            return false;
        }
        w.checked = Instant::now();
        let seen = stamp(&live.path);
        if seen == w.seen {
            return false;
        }
        w.seen = seen;
        match file::read(&live.path) {
            Ok(named) => {
                let named = named.unwrap_or_default();
                tracing::info!(
                    tokens_file = %live.path.display(),
                    named = named.len(),
                    "tokens file changed: now admin.token and {} named token{}",
                    named.len(),
                    if named.len() == 1 { "" } else { "s" }
                );
                live.current.store(Arc::new(Keyring::new(&live.admin, &named)));
                true
            }
            Err(e) => {
                tracing::warn!(
                    tokens_file = %live.path.display(),
                    error = %e,
                    "tokens file changed but is invalid: keeping the previous {} tokens until it is fixed",
                    live.current.load().len()
                );
                false
            }
        }
    }
}

#[cfg(test)]
mod tests;
