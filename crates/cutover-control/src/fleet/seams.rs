//! Fleet mode installed under the layers below it: the link to etcd as the services', the
//! releases' and the controller's [`Fleet`], and the host agents' processes as the process
//! layer's [`RemoteDriver`]. Each method is the implementation's own.

use std::collections::BTreeMap;
use std::sync::Arc;

use cutover_config::RunConfig;
use cutover_fleet::doc::{HistoryRecord, ServiceDoc};
use cutover_proxy::Color;
use cutover_store::ProcessRecord;
use tokio::time::Instant;

use super::link::{config_hash, FleetLink};
use super::remote::RemoteProcs;
use crate::base::error::{ReleaseError, SwitchError};
use crate::procs::supervisor::{ColorProcesses, Exit, Role};
use crate::procs::{DriverFuture, RemoteDriver};
use crate::service::fleet::{Fleet, FleetFuture};
use crate::service::ServiceCtl;

/// Fleet mode as the services, the releases and the controller see it: each method is the
/// link's own (above), or reads one of its fields.
impl Fleet for FleetLink {
    fn router_id(&self) -> &str {
        &self.router_id
    }
    fn config_hash(&self, cfg: &cutover_config::ServiceConfig) -> String {
        config_hash(cfg)
    }
    fn commit_switch<'a>(
        &'a self,
        service: &'a str,
        expected: u64,
        doc: &'a ServiceDoc,
        history: &'a HistoryRecord,
        fenced: bool,
    ) -> FleetFuture<'a, Result<i64, SwitchError>> {
        Box::pin(FleetLink::commit_switch(self, service, expected, doc, history, fenced))
    }
    fn host_address(&self, host: &str) -> Option<std::net::IpAddr> {
        self.hosts.address(host)
    }
    fn is_leader(&self) -> bool {
        FleetLink::is_leader(self)
    }
    fn leader_id(&self) -> Option<String> {
        self.leader().map(|l| l.router_id)
    }
    fn next_release_id(&self) -> i64 {
        FleetLink::next_release_id(self)
    }
    fn used_release_id(&self, id: i64) {
        FleetLink::used_release_id(self, id)
    }
    fn put_release<'a>(
        &'a self,
        service: &'a str,
        id: i64,
        doc: &'a serde_json::Value,
    ) -> FleetFuture<'a, Result<(), ReleaseError>> {
        Box::pin(async move {
            FleetLink::put_release(self, service, id, doc)
                .await
                .map_err(ReleaseError::from)
        })
    }
    fn releases<'a>(&'a self, service: &'a str) -> FleetFuture<'a, Result<BTreeMap<i64, serde_json::Value>, String>> {
        Box::pin(async move { FleetLink::releases(self, service).await.map_err(|e| e.to_string()) })
    }
    fn release_in_progress(&self, service: &str) -> Option<serde_json::Value> {
        FleetLink::release_in_progress(self, service)
    }
    fn await_acks<'a>(
        &'a self,
        service: &'a str,
        generation: u64,
        since: Instant,
    ) -> FleetFuture<'a, serde_json::Value> {
        Box::pin(async move {
            let report = FleetLink::await_acks(self, service, generation, since).await;
            serde_json::to_value(report).unwrap_or_default()
        })
    }
    fn await_all_acked<'a>(&'a self, service: &'a str, generation: u64) -> FleetFuture<'a, ()> {
        Box::pin(FleetLink::await_all_acked(self, service, generation))
    }
    fn resync(&self) {
        self.resync.notify_one()
    }
    fn attach_hosts(self: std::sync::Arc<Self>, svc: &ServiceCtl) {
        let Some(crate::procs::Procs::Remote(r)) = &svc.procs else {
            return;
        };
        if let Ok(hosts) = r.clone().as_any().downcast::<crate::fleet::remote::RemoteProcs>() {
            hosts.attach(self);
        }
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// The host agents as the process layer's driver: each method is the inherent one above.
impl RemoteDriver for RemoteProcs {
    fn has_processes(&self, color: Color) -> bool {
        RemoteProcs::has_processes(self, color)
    }
    fn start<'a>(&'a self, color: Color, version: &'a str) -> DriverFuture<'a, Result<Vec<ProcessRecord>, String>> {
        Box::pin(RemoteProcs::start(self, color, version))
    }
    fn stop(&self, color: Color) -> DriverFuture<'_, ()> {
        Box::pin(RemoteProcs::stop(self, color))
    }
    fn assign_role(self: Arc<Self>, color: Color, role: Role) {
        RemoteProcs::set_role(&self, color, role)
    }
    fn role(&self, color: Color) -> Role {
        RemoteProcs::role(self, color)
    }
    fn epoch(&self, color: Color) -> u64 {
        RemoteProcs::epoch(self, color)
    }
    fn exit_of(&self, color: Color, epoch: u64) -> Option<Exit> {
        RemoteProcs::exit_of(self, color, epoch)
    }
    fn wait_exit(&self, color: Color, epoch: u64) -> DriverFuture<'_, Exit> {
        Box::pin(RemoteProcs::wait_exit(self, color, epoch))
    }
    fn status(&self, color: Color) -> ColorProcesses {
        RemoteProcs::status(self, color)
    }
    fn restarts_total(&self) -> Vec<(Color, String, u64)> {
        RemoteProcs::restarts_total(self)
    }
    fn set_run(&self, run: RunConfig) {
        RemoteProcs::set_run(self, run)
    }
    fn stopped(&self, color: Color) -> bool {
        RemoteProcs::stopped(self, color)
    }
    fn away(&self, color: Color) -> Vec<String> {
        RemoteProcs::away(self, color)
    }
    fn wait_connected(&self, color: Color) -> DriverFuture<'_, ()> {
        Box::pin(RemoteProcs::wait_connected(self, color))
    }
    fn stop_abandoned_unless<'a>(
        &'a self,
        color: Color,
        version: Option<&'a str>,
        busy: &'a (dyn Fn() -> bool + Send + Sync),
    ) -> DriverFuture<'a, bool> {
        Box::pin(RemoteProcs::stop_abandoned(self, color, version, busy))
    }
    fn as_any(self: Arc<Self>) -> Arc<dyn std::any::Any + Send + Sync> {
        self
    }
}
