//! `cutover serve`: start-up, the data-plane listeners and configuration reload, and the
//! hand-over of `serve --upgrade`.

pub mod addresses;
pub mod listeners;
pub mod reload;
pub mod server;
pub mod upgrade;

pub use server::{run, serve, Listeners, ServeOptions};
