//! Fleet mode: several routers share one etcd. [`sync`] reads, applies, acknowledges and
//! watches the stored state; [`link`] is the router's connection to etcd (applied documents,
//! the routers' acks, the switch transaction); [`leader`] the one router that runs releases;
//! [`remote`] a service's processes on host agents.

pub mod leader;
pub mod link;
pub mod remote;
mod seams;
pub mod sync;

use crate::controller::Controller;
pub use link::FleetLink;
use std::sync::Arc;

use crate::procs::RemoteDriver;
pub use sync::{join, start, FleetTasks};

/// The controller's link to the fleet, in fleet mode, as the link itself: the layers above
/// the controller read its acks, leader and connection state, which the controller's
/// [`crate::service::fleet::Fleet`] slot does not show.
pub fn link_of(ctl: &Controller) -> Option<&FleetLink> {
    ctl.fleet()?.as_any().downcast_ref()
}

/// The driver of a service's processes on host agents (`run.hosts`), for the controller to
/// build services with ([`crate::procs::HostsDriver`]).
pub fn hosts_driver(
    service: &str,
    run: cutover_config::RunConfig,
    store: Arc<cutover_store::Store>,
) -> Arc<dyn RemoteDriver> {
    remote::RemoteProcs::new(service, run, store)
}
