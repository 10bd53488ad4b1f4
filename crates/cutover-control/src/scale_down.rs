//! Scale-down of the old live color after a completed release: it stays warm for
//! `scale_down_delay` (a rollback is one switch meanwhile), then drains to zero in-flight or
//! `drain_timeout`, then is stopped (managed) or marked stale (static).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cutover_proxy::Color;
use cutover_store::{EventRecord, HistoryKind};
use tokio::time::Instant;

use crate::colors::stored;
use crate::service::{ColorState, ServiceCtl};
use crate::store_call::record;

/// How often a draining color's in-flight count is read.
const DRAIN_POLL: Duration = Duration::from_millis(100);

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
        let name = svc.cfg.name.clone();
        let me = self.clone();
        let h = tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            scale_down(&svc, color, release_id).await;
            me.lock().remove(&svc.cfg.name);
        });
        if let Some(old) = self.lock().insert(name, h) {
            old.abort();
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, tokio::task::JoinHandle<()>>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

async fn scale_down(svc: &ServiceCtl, color: Color, release_id: i64) {
    if svc.live() == Some(color) {
        return;
    }
    let Some(route) = svc.route(color) else { return };
    let started = Instant::now();
    let deadline = started + svc.cfg.release.drain_timeout.get();
    while route.in_flight() > 0 && Instant::now() < deadline {
        tokio::time::sleep(DRAIN_POLL).await;
    }
    let left = route.in_flight();
    if left > 0 {
        tracing::warn!(service = %svc.cfg.name, color = %color, left, "drain deadline passed: closing requests still open");
        route.close_in_flight();
    }
    let _op = svc.op.lock().await;
    // A rollback may have made it live while it drained.
    if svc.live() == Some(color) {
        return;
    }
    let managed = svc.is_managed();
    if managed {
        svc.stop_managed(color).await;
    }
    svc.set_state(
        color,
        Some(if managed {
            ColorState::Stopped
        } else {
            ColorState::Stale
        }),
    );
    let reason = format!(
        "{color} scaled down after scale_down_delay; drained in {:.1} s{}",
        started.elapsed().as_secs_f64(),
        if left > 0 {
            format!(", {left} requests closed at the drain deadline")
        } else {
            String::new()
        }
    );
    tracing::info!(service = %svc.cfg.name, color = %color, "{reason}");
    let n = svc.cfg.name.clone();
    record(&svc.store, "the scale-down", &svc.cfg.name, move |s| {
        s.record_event(&EventRecord {
            service: &n,
            kind: HistoryKind::ScaledDown,
            color: Some(stored(color)),
            version: None,
            actor: "controller",
            reason: &reason,
            release_id: Some(release_id),
        })?;
        if let Some((_, mut v)) = s.release(release_id)? {
            v["scaled_down"] = true.into();
            s.update_release(release_id, &v, true)?;
        }
        Ok(())
    })
    .await;
}
