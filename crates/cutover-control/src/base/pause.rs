//! The control plane's pause for a hand-over: while a successor takes the listeners (see
//! `serve::upgrade`), nothing of the control plane may change the store or the managed
//! processes, because the successor reads both once and adopts them.
//!
//! Every control operation that writes the store or starts, restarts or stops a process holds
//! an [`Pause::enter`] permit from before its first effect to after its last store write;
//! [`Pause::quiesce`] waits for the permits out (a barrier) and keeps new ones waiting until
//! its guard drops. A permit is never held while entering again: the quiesce, once queued,
//! would wait for the outer permit and the inner one for the quiesce.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedRwLockReadGuard, OwnedRwLockWriteGuard, RwLock};

/// One controller's pause; clones share it.
#[derive(Clone, Default)]
pub struct Pause {
    gate: Arc<RwLock<()>>,
    /// Set from the moment a quiesce is asked for until it is released: the admin API
    /// answers mutations 503 instead of queueing them.
    quiesced: Arc<AtomicBool>,
}

/// Lets one control operation run; a quiesce waits until it is dropped.
pub struct Permit {
    _gate: OwnedRwLockReadGuard<()>,
}

/// The control plane stays paused while this lives; dropping it resumes everything that
/// waited, in the order it came.
pub struct Quiesced {
    _gate: OwnedRwLockWriteGuard<()>,
    quiesced: Arc<AtomicBool>,
}

impl Drop for Quiesced {
    fn drop(&mut self) {
        self.quiesced.store(false, Ordering::SeqCst);
    }
}

impl Pause {
    /// Waits while the control plane is paused; the permit keeps a quiesce waiting.
    pub async fn enter(&self) -> Permit {
        Permit {
            _gate: self.gate.clone().read_owned().await,
        }
    }

    /// True from the start of a quiesce until it is released.
    pub fn is_quiesced(&self) -> bool {
        self.quiesced.load(Ordering::SeqCst)
    }

    /// Pauses the control plane once every operation under way has finished, or gives up
    /// after `within` (an operation that holds its permit longer, such as a stop waiting out a
    /// model server's `stop_timeout`), leaving everything as it was.
    pub async fn quiesce(&self, within: Duration) -> Result<Quiesced, Duration> {
        self.quiesced.store(true, Ordering::SeqCst);
        match tokio::time::timeout(within, self.gate.clone().write_owned()).await {
            Ok(gate) => Ok(Quiesced {
                _gate: gate,
                quiesced: self.quiesced.clone(),
            }),
            Err(_) => {
                self.quiesced.store(false, Ordering::SeqCst);
                Err(within)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn quiesce_waits_for_running_operations_and_holds_new_ones_until_released() {
        let pause = Pause::default();
        let running = pause.enter().await;
        let p = pause.clone();
        let quiesce = tokio::spawn(async move { p.quiesce(Duration::from_secs(30)).await });
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(pause.is_quiesced());
        assert!(!quiesce.is_finished(), "the barrier waits for the running operation");
        drop(running);
        let guard = quiesce.await.unwrap().expect("quiesced once the operation ended");
        let p = pause.clone();
        let next = tokio::spawn(async move {
            let _permit = p.enter().await;
        });
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(!next.is_finished(), "a new operation waits while paused");
        drop(guard);
        next.await.unwrap();
        assert!(!pause.is_quiesced());
    }

    #[tokio::test(start_paused = true)]
    async fn a_quiesce_that_cannot_finish_in_time_leaves_everything_running() {
        let pause = Pause::default();
        let _stuck = pause.enter().await;
        assert_eq!(
            pause.quiesce(Duration::from_secs(10)).await.err(),
            Some(Duration::from_secs(10))
        );
        assert!(!pause.is_quiesced());
        let _again = pause.enter().await;
    }
}
