//! What the layers below `fleet/` ask of fleet mode, as a trait fleet mode installs in each
//! service's slot (and the controller's) when the router joins: a switch commits through it,
//! a release's documents are written and read through it, and a step waits on it for the
//! routers' acks. Outside fleet mode the slot stays empty and everything is local. The
//! implementation is `fleet::link::FleetLink`; this layer never names it.

use std::any::Any;
use std::collections::BTreeMap;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;

use cutover_fleet::doc::{HistoryRecord, ServiceDoc};
use tokio::time::Instant;

use crate::base::error::{ReleaseError, SwitchError};
use crate::service::ServiceCtl;

/// A future a [`Fleet`] returns (trait objects cannot have `async fn`s).
pub type FleetFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

pub trait Fleet: Send + Sync + Any {
    /// This router's id in the fleet.
    fn router_id(&self) -> &str;
    /// The hash of what a document's versions run with (`config_hash` in the document).
    fn config_hash(&self, cfg: &cutover_config::ServiceConfig) -> String;
    /// The switch, fleet-wide: the new document and its history record, compared on the
    /// document this router applied at `expected`; `fenced` for a release's (the leader's)
    /// switch. Returns the new document's revision.
    fn commit_switch<'a>(
        &'a self,
        service: &'a str,
        expected: u64,
        doc: &'a ServiceDoc,
        history: &'a HistoryRecord,
        fenced: bool,
    ) -> FleetFuture<'a, Result<i64, SwitchError>>;
    /// The address a host agent advertised, for a `run.hosts` endpoint.
    fn host_address(&self, host: &str) -> Option<IpAddr>;
    fn is_leader(&self) -> bool;
    /// The leader's router id, as last read.
    fn leader_id(&self) -> Option<String>;
    /// The lowest id a release started here may take.
    fn next_release_id(&self) -> i64;
    fn used_release_id(&self, id: i64);
    /// Writes the fleet's copy of a release document (fenced: the leader's write).
    fn put_release<'a>(
        &'a self,
        service: &'a str,
        id: i64,
        doc: &'a serde_json::Value,
    ) -> FleetFuture<'a, Result<(), ReleaseError>>;
    /// The fleet's copies of a service's release documents, by id.
    fn releases<'a>(&'a self, service: &'a str) -> FleetFuture<'a, Result<BTreeMap<i64, serde_json::Value>, String>>;
    /// The release in progress as its document in etcd says (the leader's run).
    fn release_in_progress(&self, service: &str) -> Option<serde_json::Value>;
    /// Waits (at most the ack timeout from `since`) for every router to apply `generation`;
    /// the routers' report.
    fn await_acks<'a>(
        &'a self,
        service: &'a str,
        generation: u64,
        since: Instant,
    ) -> FleetFuture<'a, serde_json::Value>;
    /// Waits until every live router applied `generation`.
    fn await_all_acked<'a>(&'a self, service: &'a str, generation: u64) -> FleetFuture<'a, ()>;
    /// Reads etcd again soon (a service was added).
    fn resync(&self);
    /// Joins `svc`'s processes on host agents to the fleet, if it has any.
    fn attach_hosts(self: Arc<Self>, svc: &ServiceCtl);
    /// For the layers above, which know the implementation.
    fn as_any(&self) -> &dyn Any;
}
