//! The control plane: the controller that owns each service's colors and commits switches,
//! the release pipeline, the admin API, and `serve`, which wires the data plane and the
//! control plane together.
//!
//! # Layout
//! Each folder is one layer, listed from the top of the dependency graph down; a folder uses
//! only the ones below it (checked by `tests::graph`, which prints them).
//! - [`serve`]: `cutover serve`: start-up, the data-plane listeners ([`serve::listeners`]),
//!   configuration reload, the addresses file, the hand-over of `serve --upgrade`.
//! - [`api`]: the admin API's routes and roles, its tokens, the Prometheus exposition, and the
//!   reload contract `serve` implements.
//! - [`agent`]: `cutover agent`, the host's side of fleet mode: processes through
//!   [`procs`], the fleet through etcd.
//! - [`fleet`]: fleet mode: sync with etcd, the router's link (a [`service::fleet::Fleet`]),
//!   the leader, processes on host agents (a [`procs::RemoteDriver`]).
//! - [`controller`]: every service and the store; restore, adopt and resume at start-up; the
//!   one entry point for the API.
//! - [`release`]: release documents, start / approve / abort; [`release::run`] is one
//!   pipeline run, with its steps, the shadow comparison and the scale-down.
//! - [`service`]: one service's colors, states, route tables, switch and rollback.
//! - [`procs`]: a managed service's processes: the local supervisor, exits, logs, the OS.
//! - [`base`]: leaves (the core's errors, the color seam, store calls, the pause during a
//!   hand-over, the TLS certificate stores).

#![forbid(unsafe_code)]

pub mod agent;
pub mod api;
pub mod base;
pub mod controller;
pub mod fleet;
pub mod procs;
pub mod release;
pub mod serve;
pub mod service;

pub use api::ApiError;
pub use controller::Controller;

#[cfg(test)]
mod tests;
