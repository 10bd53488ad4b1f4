//! Any bytes as HTTP/1.1 heads and chunked bodies: no panic, clean rewrites, and chunked
//! decoding that does not depend on how the bytes were split.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    cutover_proxy::fuzzing::h1_wire(data);
});
