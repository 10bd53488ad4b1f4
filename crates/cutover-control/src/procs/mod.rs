//! A managed service's processes, wherever they run: on this machine ([`Supervisor`]) or on
//! host agents through etcd (a [`RemoteDriver`], `run.hosts` in fleet mode, implemented by
//! `fleet::remote`). Provisioning, the release run, scale-downs and status use this one face
//! and do not care which; this layer knows nothing of the fleet.

pub mod exit;
pub mod logs;
pub mod os;
pub mod supervisor;

use std::any::Any;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use cutover_config::RunConfig;
use cutover_proxy::Color;
use cutover_store::{ProcessRecord, Store};

use crate::procs::supervisor::{ColorProcesses, Exit, Role, Supervisor};

/// A future a [`RemoteDriver`] returns (trait objects cannot have `async fn`s).
pub type DriverFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Makes the driver of a service's processes on host agents (`run.hosts`): fleet mode's,
/// handed to the controller by whoever builds it.
pub type HostsDriver = fn(&str, RunConfig, Arc<Store>) -> Arc<dyn RemoteDriver>;

/// Processes that something other than this machine's supervisor runs: host agents, which
/// fleet mode drives through etcd. The first methods are [`Procs`]'s common face; the last
/// four are what only hosts have (an agent can be away, and a leader cleans up after a
/// release that lost its leader).
pub trait RemoteDriver: Send + Sync {
    fn has_processes(&self, color: Color) -> bool;
    fn start<'a>(&'a self, color: Color, version: &'a str) -> DriverFuture<'a, Result<Vec<ProcessRecord>, String>>;
    fn stop(&self, color: Color) -> DriverFuture<'_, ()>;
    fn assign_role(self: Arc<Self>, color: Color, role: Role);
    fn role(&self, color: Color) -> Role;
    fn epoch(&self, color: Color) -> u64;
    fn exit_of(&self, color: Color, epoch: u64) -> Option<Exit>;
    fn wait_exit(&self, color: Color, epoch: u64) -> DriverFuture<'_, Exit>;
    fn status(&self, color: Color) -> ColorProcesses;
    fn restarts_total(&self) -> Vec<(Color, String, u64)>;
    fn set_run(&self, run: RunConfig);
    /// The color's stored desire is to stop.
    fn stopped(&self, color: Color) -> bool;
    /// The hosts of `color` whose agents are away.
    fn away(&self, color: Color) -> Vec<String>;
    /// Until every host of `color` has its agent back.
    fn wait_connected(&self, color: Color) -> DriverFuture<'_, ()>;
    /// Stops `color` if a release that will never switch to it started it, unless `busy`.
    fn stop_abandoned_unless<'a>(
        &'a self,
        color: Color,
        version: Option<&'a str>,
        busy: &'a (dyn Fn() -> bool + Send + Sync),
    ) -> DriverFuture<'a, bool>;
    /// For the layer that made it, which knows the implementation.
    fn as_any(self: Arc<Self>) -> Arc<dyn Any + Send + Sync>;
}

impl dyn RemoteDriver {
    pub fn set_role(self: &Arc<Self>, color: Color, role: Role) {
        self.clone().assign_role(color, role)
    }

    pub async fn stop_abandoned(
        &self,
        color: Color,
        version: Option<&str>,
        busy: impl Fn() -> bool + Send + Sync,
    ) -> bool {
        self.stop_abandoned_unless(color, version, &busy).await
    }
}

#[derive(Clone)]
pub enum Procs {
    Local(Arc<Supervisor>),
    Remote(Arc<dyn RemoteDriver>),
}

impl Procs {
    /// The local supervisor, when the processes run on this machine.
    pub fn local(&self) -> Option<&Arc<Supervisor>> {
        match self {
            Procs::Local(s) => Some(s),
            Procs::Remote(_) => None,
        }
    }

    pub fn has_processes(&self, color: Color) -> bool {
        match self {
            Procs::Local(s) => s.has_processes(color),
            Procs::Remote(r) => r.has_processes(color),
        }
    }

    pub async fn start(&self, color: Color, version: &str) -> Result<Vec<ProcessRecord>, String> {
        match self {
            Procs::Local(s) => s.start(color, version).await,
            Procs::Remote(r) => r.start(color, version).await,
        }
    }

    pub async fn stop(&self, color: Color) {
        match self {
            Procs::Local(s) => s.stop(color).await,
            Procs::Remote(r) => r.stop(color).await,
        }
    }

    pub fn set_role(&self, color: Color, role: Role) {
        match self {
            Procs::Local(s) => s.set_role(color, role),
            Procs::Remote(r) => r.set_role(color, role),
        }
    }

    pub fn role(&self, color: Color) -> Role {
        match self {
            Procs::Local(s) => s.role(color),
            Procs::Remote(r) => r.role(color),
        }
    }

    pub fn epoch(&self, color: Color) -> u64 {
        match self {
            Procs::Local(s) => s.epoch(color),
            Procs::Remote(r) => r.epoch(color),
        }
    }

    pub fn exit_of(&self, color: Color, epoch: u64) -> Option<Exit> {
        match self {
            Procs::Local(s) => s.exit_of(color, epoch),
            Procs::Remote(r) => r.exit_of(color, epoch),
        }
    }

    pub async fn wait_exit(&self, color: Color, epoch: u64) -> Exit {
        match self {
            Procs::Local(s) => s.wait_exit(color, epoch).await,
            Procs::Remote(r) => r.wait_exit(color, epoch).await,
        }
    }

    pub fn status(&self, color: Color) -> ColorProcesses {
        match self {
            Procs::Local(s) => s.status(color),
            Procs::Remote(r) => r.status(color),
        }
    }

    pub fn restarts_total(&self) -> Vec<(Color, String, u64)> {
        match self {
            Procs::Local(s) => s.restarts_total(),
            Procs::Remote(r) => r.restarts_total(),
        }
    }

    pub fn set_run(&self, run: RunConfig) {
        match self {
            Procs::Local(s) => s.set_run(run),
            Procs::Remote(r) => r.set_run(run),
        }
    }
}
