//! Provisioning: a managed color's processes are (re)started from the template; a static
//! color only gets its version label. Either way the version is stored, then a new route is
//! installed for the color and published as the idle one.

use std::path::PathBuf;
use std::sync::Arc;

use cutover_config::{Environments, RunConfig};
use cutover_proxy::Color;
use cutover_store::ProcessRecord;

use super::plural;
use crate::colors::stored;
use crate::service::{ColorState, ServiceCtl};
use crate::store_call::blocking;
use crate::supervisor;

/// Where managed processes run and write their logs.
#[derive(Debug, Clone)]
pub struct Dirs {
    /// Logs and other runtime files (`[store] data_dir`).
    pub data_dir: PathBuf,
    /// The config file's folder: processes run from it unless `run.workdir` says otherwise.
    pub config_dir: PathBuf,
}

pub async fn provision(svc: Arc<ServiceCtl>, dirs: Dirs, color: Color, version: String) -> Result<String, String> {
    svc.set_state(color, Some(ColorState::Provisioning));
    let name = svc.cfg.name.clone();
    let detail = match &svc.cfg.environments {
        Environments::Managed(run) => start_managed(&svc, run, &dirs, color, &version).await?,
        Environments::Static { .. } => "static endpoints: recorded the version label".to_string(),
    };
    let v = version.clone();
    blocking(&svc.store, move |s| s.set_version(&name, stored(color), Some(&v)))
        .await
        .map_err(|e| e.to_string())?;
    let _op = svc.op.lock().await;
    svc.install(color, Some(version));
    svc.republish();
    Ok(detail)
}

/// Stops whatever runs at `color`, starts its processes and records them.
async fn start_managed(
    svc: &ServiceCtl,
    run: &RunConfig,
    dirs: &Dirs,
    color: Color,
    version: &str,
) -> Result<String, String> {
    svc.stop_managed(color).await;
    let started = supervisor::start(run, &dirs.data_dir, &dirs.config_dir, &svc.cfg.name, color, version)
        .map_err(|e| e.to_string())?;
    let mut records: Vec<ProcessRecord> = Vec::new();
    for (rec, child) in started {
        records.push(rec);
        svc.children
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((color, child));
    }
    let pids: Vec<String> = records.iter().map(|r| r.pid.to_string()).collect();
    let n = records.len();
    blocking(&svc.store, move |s| records.iter().try_for_each(|r| s.put_process(r)))
        .await
        .map_err(|e| e.to_string())?;
    Ok(format!(
        "started {n} process{} (pid {})",
        plural(n, "es"),
        pids.join(", ")
    ))
}
