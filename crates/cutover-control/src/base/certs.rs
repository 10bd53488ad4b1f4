//! The certificate stores of one `serve`, one per `tls` table of the config (`admin.tls`,
//! `services.NAME.tls`, a service's live and preview listeners sharing theirs; `store.tls`,
//! the client certificate etcd sees): polled for file
//! changes, and read again by every configuration reload (SIGHUP, `cutover reload`).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cutover_config::TlsConfig;
use cutover_proxy::tls::{self, CaStore, CertStore, TlsAcceptor};

#[derive(Default)]
pub struct Certs {
    /// By config key; the files each store was opened with.
    stores: Mutex<BTreeMap<String, (TlsConfig, Arc<CertStore>)>>,
    /// CA files by config key (`store.tls.ca`): what etcd's certificates are checked with.
    cas: Mutex<BTreeMap<String, Arc<CaStore>>>,
}

/// What one reload or poll of a store did, as `cutover reload` reports it.
fn outcome(r: Result<bool, String>) -> String {
    match r {
        Ok(true) => "reloaded".to_string(),
        Ok(false) => "unchanged".to_string(),
        Err(e) => format!("refused, the certificate in use stays: {e}"),
    }
}

impl Certs {
    fn cas(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Arc<CaStore>>> {
        self.cas.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The CA store of `key`, opened now: read again with the certificates.
    pub fn ca(&self, key: &str, path: &std::path::Path) -> anyhow::Result<Arc<CaStore>> {
        let store = CaStore::open(key, path).map_err(|e| anyhow::anyhow!("{key}: {e}"))?;
        self.cas().insert(key.to_string(), store.clone());
        Ok(store)
    }

    fn stores(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, (TlsConfig, Arc<CertStore>)>> {
        self.stores.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A TLS acceptor for a listener of `key` (`services.chat.tls`): on the store already open
    /// for those files, else on a new one (the files are read now; the error names the key).
    pub fn acceptor(&self, key: &str, t: &TlsConfig) -> anyhow::Result<TlsAcceptor> {
        Ok(tls::acceptor(self.store(key, t)?))
    }

    /// The store of `key` for those files, opened now if it is not yet: a listener's, or the
    /// client certificate fleet mode presents to etcd (`store.tls`), polled and reloaded
    /// with the listeners'.
    pub fn store(&self, key: &str, t: &TlsConfig) -> anyhow::Result<Arc<CertStore>> {
        let mut stores = self.stores();
        if let Some((have, store)) = stores.get(key) {
            if have == t {
                return Ok(store.clone());
            }
        }
        let store = CertStore::open(key, &t.cert, &t.key).map_err(|e| anyhow::anyhow!("{key}: {e}"))?;
        stores.insert(key.to_string(), (t.clone(), store.clone()));
        Ok(store)
    }

    /// Forgets the store of `key` (its service was removed); connections open on it keep it.
    pub fn remove(&self, key: &str) {
        self.stores().remove(key);
    }

    /// Reads every store's files again (see [`CertStore::reload`]): per key, `reloaded`,
    /// `unchanged`, or why the new files were refused (the old pair stays in use).
    pub fn reload(&self) -> BTreeMap<String, String> {
        let stores: Vec<(String, Arc<CertStore>)> =
            self.stores().iter().map(|(k, (_, s))| (k.clone(), s.clone())).collect();
        let cas: Vec<(String, Arc<CaStore>)> = self.cas().iter().map(|(k, s)| (k.clone(), s.clone())).collect();
        let mut outcomes: BTreeMap<String, String> =
            stores.into_iter().map(|(k, s)| (k, outcome(s.reload()))).collect();
        outcomes.extend(cas.into_iter().map(|(k, s)| (k, outcome(s.reload()))));
        outcomes
    }

    /// Looks at every store's files every `every`, off the async workers, until `stop` turns
    /// true.
    pub async fn watch(self: Arc<Self>, every: Duration, mut stop: tokio::sync::watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            let stores: Vec<Arc<CertStore>> = self.stores().values().map(|(_, s)| s.clone()).collect();
            let cas: Vec<Arc<CaStore>> = self.cas().values().cloned().collect();
            if stores.is_empty() && cas.is_empty() {
                continue;
            }
            let _ = tokio::task::spawn_blocking(move || {
                // Outcomes are logged and counted by the stores.
                for s in stores {
                    let _ = s.poll();
                }
                for c in cas {
                    let _ = c.poll();
                }
            })
            .await;
        }
    }
}
