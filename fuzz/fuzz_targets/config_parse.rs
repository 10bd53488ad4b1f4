//! Any bytes given to the config loader: it never panics, and an error points inside the file.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Err(e) = cutover_config::parse(std::path::Path::new("/fuzz/cutover.toml"), text) {
            assert!(!e.message.is_empty());
            assert!(e.line <= text.lines().count() + 1, "line {} past the end: {e}", e.line);
        }
    }
});
