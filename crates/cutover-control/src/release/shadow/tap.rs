//! The tap the data plane calls on the live listener: the head-only checks, sampling, and a
//! place reserved in the queue for each copy (handed back with the finished copy). It never
//! waits and never allocates for a request it does not copy.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use cutover_proxy::mirror::{Captured, Tap, Ticket};
use cutover_release::shadow::{eligible_route, sampled, SkipReason};
use http::Method;
use tokio::sync::mpsc::{self, OwnedPermit};

use super::Shared;

pub(super) struct ShadowTap {
    shared: Arc<Shared>,
    tx: mpsc::Sender<Captured>,
}

impl ShadowTap {
    pub(super) fn new(shared: Arc<Shared>, tx: mpsc::Sender<Captured>) -> ShadowTap {
        ShadowTap { shared, tx }
    }
}

impl Tap for ShadowTap {
    fn wants(&self, key: u64, method: &Method, path: &str) -> Option<Ticket> {
        let s = &self.shared;
        let decision = eligible_route(&s.rules, method.as_str(), path).and_then(|()| {
            if !sampled(key, s.svc.shadow_sample()) {
                Err(SkipReason::SampledOut)
            } else if s.paused.load(Relaxed) {
                Err(SkipReason::Paused)
            } else {
                Ok(())
            }
        });
        if let Err(r) = decision {
            s.skip(r);
            return None;
        }
        // A place in the queue is taken before anything is copied: the copies alive at any
        // moment (live exchanges being copied + queued) are at most `queue`.
        match self.tx.clone().try_reserve_owned() {
            Ok(permit) => Some(Box::new(permit)),
            Err(_) => {
                s.skip(SkipReason::QueueFull);
                None
            }
        }
    }

    fn cap(&self) -> usize {
        self.shared.cfg.max_body_bytes
    }

    fn deliver(&self, mut c: Captured) {
        let permit = c.ticket.take().and_then(|t| t.downcast::<OwnedPermit<Captured>>().ok());
        let Some(permit) = permit else { return };
        if !c.complete || c.status == 0 {
            // No live answer to compare with; dropping the permit frees its place.
            self.shared.skip(SkipReason::LiveIncomplete);
            return;
        }
        permit.send(c);
    }
}
