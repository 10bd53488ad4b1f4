//! In-process tests of the control core with paused tokio time: a real controller over a
//! temporary SQLite store, static endpoints served by tiny HTTP servers in the same runtime.
//! Deadlines, bakes and scale-down delays of minutes pass in milliseconds, and the outcome is
//! read back from the store, not from the code under test.

mod controller;
mod graph;
mod quiesce;
mod release_run;
mod scale_down;
mod support;
