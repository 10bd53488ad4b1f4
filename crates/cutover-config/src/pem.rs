//! The certificate files a config names, checked at load with the data plane's own PEM
//! loading (`cutover_proxy::tls`): one copy of the rules, so a file `check` accepts is one
//! `serve` can use.
//!
//! The copy lives in the proxy, not here: the data plane reads these files again whenever
//! they change and must depend on no control crate, and fleet mode's etcd client takes
//! them from there too. This crate depending on the proxy keeps the graph one-way (config
//! and fleet above the proxy, the proxy above nothing of ours).

use std::path::Path;

pub use cutover_proxy::tls::PairFile;

/// That a CA file is readable and holds PEM certificates usable as roots.
pub(crate) fn ca_certificates(p: &Path) -> Result<(), String> {
    cutover_proxy::tls::roots(Some(p)).map(|_| ())
}

/// Whether a certificate file and a key file make a pair rustls can serve; on failure,
/// which of the two is wrong and why.
pub(crate) fn tls_pair(cert: &Path, key: &Path) -> Result<(), (PairFile, String)> {
    cutover_proxy::tls::check_pair(cert, key).map(|_| ())
}
