//! Shadow engine tests.
