//! Loads `cutover.toml` and validates it with no side effects (stage one of start-up).
//!
//! Every error names the file, the line and the dotted key, and says what was expected.
//! Unknown keys are errors: a typo must never silently turn a safety setting off.
//!
//! # Layout
//! - `raw`: the file's shape as serde reads it (strings with their place in the file).
//! - `model`: the validated, typed configuration ([`Config`] and friends), each section's
//!   defaults beside its fields.
//! - `validate`: raw into model, one file per section, every error located ([`parse_all`]).
//! - `value`: durations, status sets, endpoint and CIDR addresses, names.
//! - `etcd` (fleet mode's etcd access, [`etcd_access`]) and `pem` (certificate files,
//!   checked with the data plane's own loading).
//! - `checks`: `cutover check`'s warnings about this machine ([`check`]).

#![forbid(unsafe_code)]

use std::path::Path;

mod checks;
mod error;
mod etcd;
mod model;
mod pem;
mod raw;
mod validate;
mod value;

pub use checks::check;
pub use error::ConfigError;
pub use etcd::{etcd_access, etcd_members, EtcdAccess, EtcdAccessInput, EtcdMembers, EtcdSetting};
pub use model::*;
pub use validate::parse_all;
pub use value::{is_host_name, is_key_word, Duration, EndpointSpec, StatusSet};

/// Reads and validates a config file; the first error (see [`load_all`] for every one).
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    load_all(path).map_err(first)
}

/// Reads and validates a config file, reporting every error it finds, in file order.
pub fn load_all(path: &Path) -> Result<Config, Vec<ConfigError>> {
    let text = std::fs::read_to_string(path).map_err(|e| vec![ConfigError::unreadable(path, &e)])?;
    parse_all(path, &text)
}

fn first(mut errors: Vec<ConfigError>) -> ConfigError {
    errors.swap_remove(0)
}

/// Validates config text; `path` names it in errors and anchors relative paths. The first
/// error (see [`parse_all`] for every one).
pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
    parse_all(path, text).map_err(first)
}

#[cfg(test)]
mod tests;
