//! The tap the data plane calls on the live listener: the head-only checks, sampling, and a
//! try-send of each finished copy. It never waits and never allocates for a request it
//! does not copy.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use cutover_proxy::mirror::{Captured, Tap};
use cutover_release::shadow::{eligible_route, sampled, SkipReason};
use http::Method;
use tokio::sync::mpsc;

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
    fn wants(&self, key: u64, method: &Method, path: &str) -> bool {
        let s = &self.shared;
        let decision = eligible_route(&s.rules, method.as_str(), path).and_then(|()| {
            if !sampled(key, s.svc.shadow_sample()) {
                Err(SkipReason::SampledOut)
            } else if s.paused.load(Relaxed) {
                Err(SkipReason::Paused)
            } else if self.tx.capacity() == 0 {
                // No room even before the copy is made: do not copy at all.
                Err(SkipReason::QueueFull)
            } else {
                Ok(())
            }
        });
        match decision {
            Ok(()) => true,
            Err(r) => {
                s.skip(r);
                false
            }
        }
    }

    fn cap(&self) -> usize {
        self.shared.cfg.max_body_bytes
    }

    fn deliver(&self, c: Captured) {
        if self.tx.try_send(c).is_err() {
            self.shared.skip(SkipReason::QueueFull);
        }
    }
}
