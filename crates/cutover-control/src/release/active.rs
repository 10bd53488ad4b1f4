//! A release in progress as the rest of the controller reaches it: its live document and the
//! signals (approve, abort) the API sends to the run.

use std::sync::{Arc, Mutex};

use tokio::sync::{watch, Notify};

use super::doc::ReleaseDoc;

/// Signals from the API to a running release.
pub(crate) struct Signals {
    pub(crate) approve: Notify,
    /// Who approved (a person, or `auto_promote_after`); read once the run is woken.
    pub(crate) approved_by: Mutex<Option<String>>,
    /// `Some(reason)` once someone asked to abort; the run watches it during every phase.
    pub(crate) abort: watch::Sender<Option<String>>,
    /// Who asked to abort, for the history line of the release's end.
    pub(crate) aborted_by: Mutex<Option<String>>,
}

impl Signals {
    pub(crate) fn new() -> (Arc<Signals>, watch::Receiver<Option<String>>) {
        let (abort, abort_rx) = watch::channel(None);
        let s = Signals {
            approve: Notify::new(),
            approved_by: Mutex::new(None),
            abort,
            aborted_by: Mutex::new(None),
        };
        (Arc::new(s), abort_rx)
    }

    pub(crate) fn approver(&self) -> String {
        self.approved_by
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .unwrap_or_default()
    }

    pub(crate) fn set_approver(&self, who: String) {
        *self.approved_by.lock().unwrap_or_else(|p| p.into_inner()) = Some(who);
    }

    /// The abort reason, once someone asked to abort.
    pub(crate) fn abort_reason(&self) -> Option<String> {
        self.abort.borrow().clone()
    }

    /// Asks the run to abort; the first request wins (its reason and actor are kept).
    pub(crate) fn request_abort(&self, actor: &str, reason: String) {
        let mut by = self.aborted_by.lock().unwrap_or_else(|p| p.into_inner());
        if by.is_none() {
            *by = Some(actor.to_string());
            // `send_replace`: the run may have just ended and dropped its receiver; fine.
            self.abort.send_replace(Some(reason));
        }
    }

    pub(crate) fn aborter(&self) -> Option<String> {
        self.aborted_by.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// A release in progress, as the API sees it.
#[derive(Clone)]
pub(crate) struct Active {
    pub(crate) id: i64,
    /// The committed document: the run replaces it only after the store has it.
    pub(crate) doc: Arc<Mutex<ReleaseDoc>>,
    pub(crate) signals: Arc<Signals>,
}

impl Active {
    /// The document as the API serves it. The final transition is stored before it takes
    /// effect (a rollback's switch comes after it), so the outcome shows only once the
    /// release has really ended and left the active set.
    pub(crate) fn view(&self) -> ReleaseDoc {
        let mut d = self.doc().clone();
        d.outcome = None;
        d
    }

    pub(crate) fn doc(&self) -> std::sync::MutexGuard<'_, ReleaseDoc> {
        self.doc.lock().unwrap_or_else(|p| p.into_inner())
    }
}
