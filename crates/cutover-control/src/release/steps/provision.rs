//! Provisioning: a managed color's processes are (re)started from the template, after what
//! still ran there drained and stopped and every port was found free; a static color only gets
//! its version label. Either way the version is stored, then a new route is installed for the
//! color and published as the idle one. The `provision` hooks run last, before health is
//! waited for: for static environments they are the user's own deploy of the idle color.

use std::sync::Arc;

use cutover_proxy::Color;

use super::plural;
use crate::base::error::{FailureKind, StepFailure, StepResult};
use crate::base::store_call::blocking;
pub use crate::procs::supervisor::Dirs;
use crate::procs::Procs;
use crate::service::{ColorState, ServiceCtl};

pub async fn provision(svc: Arc<ServiceCtl>, color: Color, version: String) -> StepResult {
    if svc.procs.is_none() && svc.state(color) == Some(ColorState::Sleeping) {
        // A static color asleep since the last release: nobody restarts it, so wake it.
        let _op = svc.op.lock().await;
        svc.wake_locked(color).await.map_err(|e| {
            StepFailure::new(
                FailureKind::Processes,
                format!("{color} is asleep and did not wake: {e}"),
            )
        })?;
    }
    svc.set_state(color, Some(ColorState::Provisioning));
    let name = svc.name.clone();
    let mut detail = match &svc.procs {
        Some(procs) => start_managed(&svc, procs, color, &version).await?,
        None => "static endpoints: recorded the version label".to_string(),
    };
    let hooks = &svc.cfg().release.hooks;
    if !hooks.provision.is_empty() {
        let env = provision_env(&svc, color, &version);
        let ran = super::run_hooks("provision", &hooks.provision, &env, hooks.timeout.get()).await?;
        detail = format!("{detail}; {ran}");
    }
    let v = version.clone();
    let permit = svc.pause.enter().await;
    blocking(&svc.store, move |s| s.set_version(&name, color, Some(&v)))
        .await
        .map_err(|e| StepFailure::new(FailureKind::Store, e.to_string()))?;
    drop(permit);
    if matches!(svc.procs, Some(Procs::Remote(_))) {
        // The hosts' addresses come from their agents' registrations: the new route is built
        // from them, so read them now rather than at the next resolve interval.
        svc.resolve_names().await;
    }
    let _op = svc.op.lock().await;
    svc.install(color, Some(version));
    svc.republish();
    Ok(detail)
}

/// What a provision hook is told: the release's service, version and color, and the color's
/// endpoints (`CUTOVER_ENDPOINTS`, comma-separated) it is to bring up.
fn provision_env(svc: &ServiceCtl, color: Color, version: &str) -> Vec<(String, String)> {
    let endpoints: Vec<String> = crate::service::endpoints_of(&svc.cfg(), color)
        .iter()
        .map(|e| e.to_string())
        .collect();
    vec![
        ("CUTOVER_SERVICE".into(), svc.name.clone()),
        ("CUTOVER_VERSION".into(), version.into()),
        ("CUTOVER_COLOR".into(), color.as_str().into()),
        ("CUTOVER_ENDPOINTS".into(), endpoints.join(",")),
    ]
}

/// Drains and stops whatever runs at `color`, starts its processes and records them.
async fn start_managed(svc: &ServiceCtl, procs: &Procs, color: Color, version: &str) -> StepResult {
    let mut detail = String::new();
    if procs.has_processes(color) {
        let drained = svc.drain(color).await;
        svc.stop_processes(procs, color).await;
        detail = format!("stopped the previous processes ({}); ", drained.describe());
    } else {
        // Nothing watched, but the store may list processes a previous cutover left.
        svc.stop_processes(procs, color).await;
    }
    let records = procs
        .start(color, version)
        .await
        .map_err(StepFailure::of(FailureKind::Processes))?;
    let pids: Vec<String> = records.iter().map(|r| r.pid.to_string()).collect();
    let logs: Vec<String> = records.iter().filter_map(|r| r.log.clone()).collect();
    let n = records.len();
    Ok(format!(
        "{detail}started {n} process{} (pid {}; log {})",
        plural(n, "es"),
        pids.join(", "),
        logs.join(", ")
    ))
}
