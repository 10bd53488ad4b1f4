//! The leaves every layer may use: the core's errors, the store/data-plane color seam, store
//! calls off the async workers, the control plane's pause during a hand-over, and the TLS
//! certificate stores (the listeners' and etcd's).

pub mod certs;
pub mod error;
pub mod pause;
pub(crate) mod store_call;
