//! The admin API: its routes, bearer tokens and their roles, and the Prometheus exposition.

pub mod admin;
pub mod metrics;
pub mod reload;
pub mod token;

pub use admin::ApiError;
