//! Validation tests: what a config error says (file, line, key, expectation), one file per
//! part of the file, and property tests that any text yields a config or a located error.

mod basics;
mod defaults;
mod docs;
mod fleet;
mod health;
mod properties;
mod release;
mod run;
mod services;

pub(crate) use crate::*;
pub(crate) use std::path::Path;

pub(crate) fn check(text: &str) -> Result<Config, ConfigError> {
    parse(Path::new("/etc/cutover/cutover.toml"), text)
}

pub(crate) const GOOD: &str = r#"
[admin]
listen = "127.0.0.1:9901"

[services.chat]
listen = "127.0.0.1:8080"
preview_listen = "127.0.0.1:8081"
health = { path = "/health", interval = "500ms", timeout = "1s" }

[services.chat.blue]
endpoints = ["127.0.0.1:9001", "127.0.0.1:9003"]
version = "v1"

[services.chat.green]
endpoints = ["127.0.0.1:9002"]

[services.chat.release]
promotion = "manual"
[services.chat.release.verify]
bake = "2m"
max_error_rate = 0.01
"#;

/// The line of the first line of `text` containing `needle`, 1-based.
pub(crate) fn line_with(text: &str, needle: &str) -> usize {
    text.lines().position(|l| l.contains(needle)).unwrap() + 1
}
