//! `[services.NAME.run]`: the template of a managed environment's processes, shared by both
//! colors. The keys with a default have it in the function named after them, below the
//! struct.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;

use serde::{Deserialize, Deserializer};

use crate::value::Duration;

/// The placeholders the supervisor substitutes in `run.command` and `run.env`.
/// `{host}` is the address the processes listen on: `run.host`, or on a host agent the
/// address it advertises.
pub const PLACEHOLDERS: [&str; 5] = ["version", "port", "color", "replica", "host"];

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    /// argv template; `{version}`, `{port}`, `{color}`, `{replica}`, `{host}` are substituted.
    pub command: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    pub ports: ColorPorts,
    #[serde(default = "stop_timeout")]
    pub stop_timeout: Duration,
    /// Working directory of the processes (relative to the config file's folder).
    #[serde(default)]
    pub workdir: Option<PathBuf>,
    /// The address the processes listen on, used to build endpoint addresses.
    #[serde(default = "host", deserialize_with = "ip_address")]
    pub host: IpAddr,
    /// Fleet mode: the host agents (`cutover agent --host NAME`) that run this service's
    /// processes, each on every port of `ports`; empty runs them on this machine. Routers
    /// reach them at the address each agent advertises.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Whether a managed process of the live color (or the old color while it stays warm)
    /// that exits without being asked to is started again.
    #[serde(default)]
    pub restart: RestartPolicy,
    /// At most this many restarts of one color within `restart_window`; then cutover stops
    /// trying and says so (a crash loop needs a person, not a faster loop).
    #[serde(default = "restart_limit")]
    pub restart_limit: u32,
    #[serde(default = "restart_window")]
    pub restart_window: Duration,
}

fn stop_timeout() -> Duration {
    Duration::from_secs(30)
}
fn host() -> IpAddr {
    IpAddr::V4(Ipv4Addr::LOCALHOST)
}
fn restart_limit() -> u32 {
    5
}
fn restart_window() -> Duration {
    Duration::from_secs(600)
}

/// `host` as an IP address, the error saying what was written.
fn ip_address<'de, D: Deserializer<'de>>(d: D) -> Result<IpAddr, D::Error> {
    let s = String::deserialize(d)?;
    s.trim().parse().map_err(|_| {
        serde::de::Error::custom(format!(
            "invalid IP address {s:?}; expected an address such as \"127.0.0.1\" or \"::1\""
        ))
    })
}

/// `[services.NAME.run] restart`.
pub use cutover_types::RestartPolicy;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ColorPorts {
    pub blue: Vec<u16>,
    pub green: Vec<u16>,
}
