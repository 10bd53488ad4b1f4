//! Test harness of the fleet crate, shared with cutover's e2e tests.
pub mod cluster;
