//! Store calls from async code: each runs on a blocking thread (SQLite fsyncs), so neither the
//! data plane nor the other control tasks wait behind it.

use std::sync::Arc;

use cutover_store::{Store, StoreError};

use crate::base::error::StoreFailure;

/// Runs a blocking store call off the async workers.
pub(crate) async fn blocking<T: Send + 'static>(
    store: &Arc<Store>,
    f: impl FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreFailure> {
    let store = store.clone();
    match tokio::task::spawn_blocking(move || f(&store)).await {
        Ok(r) => r.map_err(StoreFailure::from),
        Err(e) => Err(StoreFailure::Task(e.to_string())),
    }
}

/// Runs a store write whose failure must not stop the caller (the history line after an
/// event that already happened): a failure is logged with `what`, never dropped silently.
pub(crate) async fn record(
    store: &Arc<Store>,
    what: &'static str,
    service: &str,
    f: impl FnOnce(&Store) -> Result<(), StoreError> + Send + 'static,
) {
    if let Err(e) = blocking(store, f).await {
        tracing::error!(service, error = %e, "the store could not record {what}");
    }
}
