//! A managed service's processes, wherever they run: on this machine ([`Supervisor`]) or on
//! host agents through etcd ([`RemoteProcs`], `run.hosts` in fleet mode). Provisioning, the
//! release run, scale-downs and status use this one face and do not care which.

pub mod supervisor;

use std::sync::Arc;

use cutover_config::RunConfig;
use cutover_proxy::Color;
use cutover_store::ProcessRecord;

use crate::fleet::remote::RemoteProcs;
use crate::procs::supervisor::{ColorProcesses, Exit, Role, Supervisor};

#[derive(Clone)]
pub enum Procs {
    Local(Arc<Supervisor>),
    Remote(Arc<RemoteProcs>),
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
