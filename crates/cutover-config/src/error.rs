//! The one error type of the crate: a message placed at a file, a line and a dotted key.

use std::fmt;
use std::path::PathBuf;

/// A configuration error, already located in the source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    /// 1-based line; 0 when the error is about the whole file (for example, it cannot be read).
    pub line: usize,
    /// Dotted key path, e.g. `services.chat.health.interval`; empty when not known.
    pub key: String,
    pub message: String,
}

impl ConfigError {
    /// An error about the whole file (it cannot be read).
    pub(crate) fn unreadable(path: &std::path::Path, e: &std::io::Error) -> ConfigError {
        ConfigError {
            file: path.to_path_buf(),
            line: 0,
            key: String::new(),
            message: format!("cannot read the file: {e}"),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if self.line > 0 {
            write!(f, ":{}", self.line)?;
        }
        if !self.key.is_empty() {
            write!(f, ": key `{}`", self.key)?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ConfigError {}
