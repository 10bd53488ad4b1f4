//! Scale-down of the color a release left behind: the old live color after a completed
//! release, or the rolled-back version after an automatic rollback. It stays up for
//! `scale_down_delay` (the old color: a rollback is one switch meanwhile; the failed one: its
//! processes and logs can be looked at), then drains to zero in-flight or `drain_timeout`,
//! then is stopped (managed; its logs are kept) or marked stale (static). In fleet mode it
//! first waits until every live router acked the switch: one still STALE routes there.
//! The `post_scale_down` hooks run once it has stopped.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cutover_proxy::Color;
use cutover_store::{EventRecord, HistoryKind};

use crate::base::store_call::record;
use crate::service::{ColorState, ServiceCtl};

/// The pending scale-down per service (at most one: a new release cancels the old one).
#[derive(Clone, Default)]
pub struct ScaleDowns(Arc<Mutex<BTreeMap<String, tokio::task::JoinHandle<()>>>>);

impl ScaleDowns {
    pub(crate) fn cancel(&self, service: &str) {
        if let Some(h) = self.lock().remove(service) {
            h.abort();
        }
    }

    /// After `delay`, drains `color` and stops it, unless it is live again by then.
    pub(crate) fn schedule(&self, svc: Arc<ServiceCtl>, color: Color, delay: Duration, release_id: i64) {
        let name = svc.name.clone();
        let me = self.clone();
        let h = tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            scale_down(&svc, color, release_id).await;
            me.lock().remove(&svc.name);
        });
        if let Some(old) = self.lock().insert(name, h) {
            old.abort();
        }
    }

    /// `standby = "sleep"`: once `color` has drained, puts it to sleep, unless it is live
    /// again by then. Cancelled, like a scale-down, by the next release.
    pub(crate) fn schedule_sleep(&self, svc: Arc<ServiceCtl>, color: Color, release_id: i64) {
        let name = svc.name.clone();
        let me = self.clone();
        let h = tokio::spawn(async move {
            sleep_old_color(&svc, color, release_id).await;
            me.lock().remove(&svc.name);
        });
        if let Some(old) = self.lock().insert(name, h) {
            old.abort();
        }
    }

    /// A scale-down or standby sleep of `service` is scheduled and has not ended.
    #[cfg(test)]
    pub(crate) fn is_pending(&self, service: &str) -> bool {
        self.lock().get(service).is_some_and(|h| !h.is_finished())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, tokio::task::JoinHandle<()>>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

async fn sleep_old_color(svc: &ServiceCtl, color: Color, release_id: i64) {
    let drained = svc.drain(color).await;
    let _op = svc.op.lock().await;
    if svc.live() == Some(color) {
        return;
    }
    let (reason, asleep) = match svc.sleep_locked(color).await {
        Ok(detail) => (format!("{detail} (standby = \"sleep\"); {}", drained.describe()), true),
        Err(e) => {
            // Awake and warm is the safe side: a rollback is still one switch.
            tracing::error!(service = %svc.name, color = %color, error = %e, "the old color could not be put to sleep; it stays up");
            return;
        }
    };
    tracing::info!(service = %svc.name, color = %color, "{reason}");
    let _permit = svc.pause.enter().await;
    record(&svc.store, "the standby sleep", &svc.name, move |s| {
        if let Some((_, mut v)) = s.release(release_id)? {
            v["standby_sleeping"] = asleep.into();
            s.update_release(release_id, &v, true)?;
        }
        Ok(())
    })
    .await;
}

/// The `post_scale_down` hooks, once the old color has stopped; what they did (or why they
/// failed) for the release document. A failure is logged and recorded, nothing is undone:
/// the old version is gone either way.
async fn post_scale_down(svc: &ServiceCtl, color: Color, version: &str, release_id: i64) -> Option<String> {
    let hooks = &svc.cfg().release.hooks;
    if hooks.post_scale_down.is_empty() {
        return None;
    }
    let env = [
        ("CUTOVER_SERVICE", svc.name.clone()),
        ("CUTOVER_COLOR", color.as_str().to_string()),
        ("CUTOVER_STOPPED_VERSION", version.to_string()),
        ("CUTOVER_RELEASE_ID", release_id.to_string()),
    ]
    .map(|(k, v)| (k.to_string(), v));
    let r =
        crate::release::steps::run_hooks("post_scale_down", &hooks.post_scale_down, &env, hooks.timeout.get()).await;
    if let Err(e) = &r {
        tracing::error!(service = %svc.name, color = %color, error = %e, "a post_scale_down hook failed");
    }
    Some(r.unwrap_or_else(|e| format!("failed: {e}")))
}

async fn scale_down(svc: &ServiceCtl, color: Color, release_id: i64) {
    if svc.live() == Some(color) {
        return;
    }
    if let Some(link) = svc.fleet.get() {
        link.await_all_acked(&svc.name, svc.proxy.table().generation).await;
        if svc.live() == Some(color) {
            return;
        }
        // Only the leader's runs scale down; a router that lost its term leaves it to the
        // new leader's (a release there moves the colors on anyway).
        if !link.is_leader() {
            tracing::warn!(service = %svc.name, color = %color, "fleet: not the leader; the scale-down is left undone");
            return;
        }
    }
    let version = svc.version_of(color).unwrap_or_else(|| "-".into());
    let drained = svc.drain(color).await;
    let _op = svc.op.lock().await;
    // A rollback may have made it live while it drained.
    if svc.live() == Some(color) {
        return;
    }
    let state = match &svc.procs {
        Some(procs) => {
            svc.stop_processes(procs, color).await;
            ColorState::Stopped
        }
        None => {
            // Static endpoints are someone else's to stop; their checks would only report
            // the planned scale-down as a failure.
            svc.unwatch(color);
            ColorState::Stale
        }
    };
    svc.set_state(color, Some(state));
    let hooks = post_scale_down(svc, color, &version, release_id).await;
    let reason = format!(
        "{color} ({version}) scaled down after scale_down_delay; {}",
        drained.describe()
    );
    tracing::info!(service = %svc.name, color = %color, "{reason}");
    let n = svc.name.clone();
    let _permit = svc.pause.enter().await;
    record(&svc.store, "the scale-down", &svc.name, move |s| {
        s.record_event(&EventRecord {
            service: &n,
            kind: HistoryKind::ScaledDown,
            color: Some(color),
            version: None,
            actor: "controller",
            reason: &reason,
            release_id: Some(release_id),
        })?;
        if let Some((_, mut v)) = s.release(release_id)? {
            v["scaled_down"] = true.into();
            if let Some(h) = &hooks {
                v["post_scale_down"] = h.clone().into();
            }
            s.update_release(release_id, &v, true)?;
        }
        Ok(())
    })
    .await;
    if let Some(link) = svc.fleet.get() {
        // The fleet's copy says so too (a follower's `release show` reads it).
        if let Ok(Some((_, v))) = crate::base::store_call::blocking(&svc.store, move |s| s.release(release_id)).await {
            if let Err(e) = link.put_release(&svc.name, release_id, &v).await {
                tracing::warn!(service = %svc.name, release = release_id, error = %e, "the fleet's copy of the release does not say it was scaled down");
            }
        }
    }
}
