//! Fleet mode: several routers share one etcd. [`sync`] reads, applies, acknowledges and
//! watches the stored state; [`link`] is the router's connection to etcd (applied documents,
//! the routers' acks, the switch transaction); [`leader`] the one router that runs releases;
//! [`remote`] a service's processes on host agents.

pub mod leader;
pub mod link;
pub mod remote;
pub mod sync;

pub use link::FleetLink;
pub use sync::{join, start, FleetTasks};
