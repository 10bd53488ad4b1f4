//! The admin token file (`admin.token`): read, or created there (mode 0600, random) on the
//! first start. It is the token named `admin`, with the role `admin`.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use subtle::ConstantTimeEq;

/// A loaded admin token.
#[derive(Clone)]
pub struct Token(String);

impl Token {
    pub fn new(s: impl Into<String>) -> Token {
        Token(s.into())
    }

    /// True when `presented` is this token; the time taken does not depend on where they differ.
    pub fn matches(&self, presented: &str) -> bool {
        self.0.as_bytes().ct_eq(presented.as_bytes()).into()
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Loads the token file, creating it if missing. A file that others can read is refused:
/// whoever reads it can switch production traffic.
pub fn load_or_create(path: &Path) -> anyhow::Result<Token> {
    match std::fs::metadata(path) {
        Ok(meta) => {
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                anyhow::bail!(
                    "token file {} has mode {:o}: it must not be readable by group or others (run `chmod 600 {}`)",
                    path.display(),
                    mode,
                    path.display()
                );
            }
            let token = std::fs::read_to_string(path)
                .map_err(|e| anyhow::anyhow!("cannot read token file {}: {e}", path.display()))?
                .trim()
                .to_string();
            if token.len() < 16 {
                anyhow::bail!(
                    "token file {} holds fewer than 16 characters; use a long random token",
                    path.display()
                );
            }
            Ok(Token(token))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let token =
                super::random_token().map_err(|e| anyhow::anyhow!("cannot read /dev/urandom for a new token: {e}"))?;
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map_err(|e| anyhow::anyhow!("cannot create token file {}: {e}", path.display()))?;
            writeln!(f, "{token}")?;
            f.sync_all()?;
            tracing::info!(path = %path.display(), "created a new admin token file (mode 0600)");
            Ok(Token(token))
        }
        Err(e) => anyhow::bail!("cannot read token file {}: {e}", path.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_private_then_reloaded_and_world_readable_refused() {
        let dir = std::env::temp_dir().join(format!("cutover-token-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("admin.token");
        let t = load_or_create(&path).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(t.as_str().len(), 64);
        assert!(load_or_create(&path).unwrap().matches(t.as_str()));
        assert!(!t.matches("nope"));
        assert!(!t.matches(&t.as_str()[..63]));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = load_or_create(&path).err().unwrap().to_string();
        assert!(e.contains("chmod 600"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
