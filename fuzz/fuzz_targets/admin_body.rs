//! Any bytes as an admin request body: every parser answers Ok or a 400, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    cutover_control::api::admin::fuzz_admin_bodies(data);
});
