//! The control plane: the controller that owns each service's colors and commits switches,
//! the release pipeline, the admin API, and `serve`, which wires the data plane and the
//! control plane together.
//!
//! # Layout
//! Listed from the top of the dependency graph down; a module uses only the ones below it
//! (checked by `tests::module_graph_is_one_way`).
//! - [`server`]: `cutover serve`: config → bind every listener → open the store and resume
//!   → serve → drain.
//! - [`admin`]: the admin API routes, bearer-token auth with the role each route needs
//!   ([`admin::access`]), and the mapping of core errors to HTTP statuses ([`admin::error`]).
//! - [`reload`]: the data-plane accept loops of a `serve`, and configuration reload
//!   (validate whole, refuse what cannot change in place, bind, then apply).
//! - [`metrics`]: Prometheus exposition read from the data plane's counters at scrape time.
//! - [`fleet`]: fleet mode's sync: read, apply, acknowledge and watch the etcd state.
//! - [`controller`]: every service and the store; restore, adopt and resume at start-up; the
//!   one entry point for the API.
//! - [`release`]: release documents, start / approve / abort; [`release::run`] is one
//!   pipeline run (pre-switch, switch, verify).
//! - [`scale_down`]: the old color's delayed drain and stop after a completed release.
//! - `shadow`: the shadow comparison's tap on the live listener, its queue and worker (the
//!   copies sent to the candidate and the noise baseline), read by the shadowing phase.
//! - [`steps`]: provision, wait for health, warm-up, smoke checks, hooks.
//! - [`service`]: one service's colors, states, route tables, switch and rollback.
//! - [`fleet_link`]: the router's link to etcd: applied documents, the routers' acks, the
//!   switch transaction (below `service`, so a switch commits through it).
//! - [`procs`]: a managed service's processes, local ([`supervisor`]: start, stop, adopt) or
//!   on host agents ([`remote_procs`], through etcd); [`agent`] is `cutover agent`, the
//!   host's side; [`fleet_hosts`] what a router knows of the agents.
//! - [`store_call`], [`colors`], [`error`], [`token`], [`pause`], [`certs`]: leaves (store
//!   calls off the async workers, the store/data-plane color seam, the core's errors, the
//!   admin tokens and their roles, the control plane's pause during a hand-over, the TLS
//!   listeners' certificate stores).
//! - [`upgrade`]: the hand-over protocol of `serve --upgrade` (listening sockets passed over
//!   a Unix socket), both sides; `server` sequences it.

#![forbid(unsafe_code)]

pub mod admin;
pub mod agent;
pub mod certs;
pub mod controller;
pub mod error;
pub mod fleet;
pub mod fleet_hosts;
pub mod fleet_leader;
pub mod fleet_link;
pub mod metrics;
pub mod pause;
pub mod procs;
pub mod release;
pub mod reload;
pub mod remote_procs;
pub mod scale_down;
pub mod server;
pub mod service;
pub(crate) mod shadow;
pub mod steps;
pub(crate) mod store_call;
pub mod supervisor;
pub mod token;
pub mod upgrade;

pub use admin::ApiError;
pub use controller::Controller;

#[cfg(test)]
mod tests;
