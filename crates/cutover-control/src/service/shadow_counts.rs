//! Shadow comparisons counted for `/metrics` over the process's life (across releases):
//! pairs by class and verdict, and requests not mirrored by reason.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

use cutover_release::shadow::SkipReason;

#[derive(Default)]
pub(crate) struct ShadowCounts {
    /// `(class, verdict)` → pairs compared.
    pairs: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
    /// Per [`SkipReason::ALL`] index (counted on the request path: atomics).
    skipped: [AtomicU64; SkipReason::ALL.len()],
}

impl ShadowCounts {
    pub(crate) fn pair(&self, class: &'static str, verdict: &'static str) {
        *self
            .pairs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry((class, verdict))
            .or_default() += 1;
    }

    pub(crate) fn skip(&self, i: usize) {
        if let Some(c) = self.skipped.get(i) {
            c.fetch_add(1, Relaxed);
        }
    }

    pub(crate) fn pairs(&self) -> Vec<((&'static str, &'static str), u64)> {
        let m = self.pairs.lock().unwrap_or_else(|p| p.into_inner());
        m.iter().map(|(k, v)| (*k, *v)).collect()
    }

    /// Every reason with its count (zeros included, so the series exist from the start).
    pub(crate) fn skipped(&self) -> Vec<(&'static str, u64)> {
        SkipReason::ALL
            .iter()
            .zip(&self.skipped)
            .map(|(r, n)| (r.as_str(), n.load(Relaxed)))
            .collect()
    }
}
