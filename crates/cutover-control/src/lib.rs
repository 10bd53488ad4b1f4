//! The control plane: the controller that owns each service's colors and commits switches,
//! the admin API, and `serve`, which wires the data plane and the control plane together.
//!
//! # Layout
//! - [`controller`]: services, colors, switch and rollback (store first, then publish).
//! - [`release`]: the release pipeline driver (phases, warm-up, smoke, hooks, verification,
//!   rollback, scale-down).
//! - [`supervisor`]: managed model-server processes (start, stop, adopt).
//! - [`metrics`]: Prometheus exposition read from the data plane's counters at scrape time.
//! - [`admin`]: the admin API routes, bearer-token auth and JSON errors.
//! - [`server`]: start-up sequencing and graceful shutdown for `cutover serve`.
//! - [`token`]: the admin token file.
//! - [`error`]: the admin API's error type.

#![forbid(unsafe_code)]

pub mod admin;
pub mod controller;
pub mod error;
pub mod metrics;
pub mod release;
pub mod server;
pub mod supervisor;
pub mod token;

pub use controller::Controller;
pub use error::ApiError;
