//! Endpoint names (`gpu-a.internal:8000`): resolved when `serve` starts and again every
//! `resolve_interval`; every address a name resolves to is an endpoint of its own, with its
//! own pool and health checks.
//!
//! A change moves the color's endpoint set in place (`ColorRoute::set_endpoints`), so the
//! color keeps its in-flight count, statistics and drain signal, and a request already on a
//! removed address finishes there. An address that stays keeps its endpoint (pool, health,
//! probe history). A new address joining a color that is checked is probed once before it
//! takes traffic. A name that stops resolving keeps its last addresses (a DNS outage must
//! not empty a live color); one that never resolved adds none and is retried every second.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Weak};
use std::time::Duration;

use cutover_config::EndpointSpec;
use cutover_proxy::{health, Color, Endpoint};

use super::ServiceCtl;

/// How long one lookup may take; a hung resolver must not stall the others.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);
/// How soon a name that has never resolved is tried again.
const RETRY_UNRESOLVED: Duration = Duration::from_secs(1);

/// What the names of one service last resolved to.
#[derive(Default)]
pub(crate) struct Resolved {
    /// Per name: its addresses (sorted), or `None` while it has never resolved.
    names: BTreeMap<EndpointSpec, Option<Vec<SocketAddr>>>,
    /// Names whose latest lookup failed, with the error, so a failure is logged once.
    failing: BTreeMap<EndpointSpec, String>,
}

/// The configured endpoints of a service that are names, not IP addresses.
pub(crate) fn names_of(specs: impl IntoIterator<Item = EndpointSpec>) -> Vec<EndpointSpec> {
    let mut v: Vec<_> = specs.into_iter().filter(|s| s.literal().is_none()).collect();
    v.sort();
    v.dedup();
    v
}

async fn lookup(spec: &EndpointSpec) -> Result<Vec<SocketAddr>, String> {
    let found = tokio::time::timeout(LOOKUP_TIMEOUT, tokio::net::lookup_host((spec.host.clone(), spec.port))).await;
    match found {
        Err(_) => Err(format!("no answer within {} s", LOOKUP_TIMEOUT.as_secs())),
        Ok(Err(e)) => Err(e.to_string()),
        Ok(Ok(addrs)) => {
            let mut v: Vec<SocketAddr> = addrs.collect();
            v.sort();
            v.dedup();
            if v.is_empty() {
                Err("no addresses".into())
            } else {
                Ok(v)
            }
        }
    }
}

impl ServiceCtl {
    /// The addresses `color` routes to now, each with the name it came from: IP endpoints
    /// as configured, names as last resolved; an address listed twice counts once.
    pub(crate) fn targets(&self, color: Color) -> Vec<(SocketAddr, Option<Arc<str>>)> {
        let resolved = self.resolved.lock().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<(SocketAddr, Option<Arc<str>>)> = Vec::new();
        for spec in super::endpoints_of(&self.cfg(), color) {
            let addrs: Vec<(SocketAddr, Option<Arc<str>>)> = match spec.literal() {
                Some(a) => vec![(a, None)],
                None => {
                    let name: Arc<str> = spec.to_string().into();
                    resolved
                        .names
                        .get(&spec)
                        .and_then(|a| a.as_ref())
                        .map(|v| v.iter().map(|a| (*a, Some(name.clone()))).collect())
                        .unwrap_or_default()
                }
            };
            for (a, n) in addrs {
                if !out.iter().any(|(b, _)| *b == a) {
                    out.push((a, n));
                }
            }
        }
        out
    }

    /// Names configured for this service, to resolve.
    fn names(&self) -> Vec<EndpointSpec> {
        names_of(Color::ALL.into_iter().flat_map(|c| super::endpoints_of(&self.cfg(), c)))
    }

    /// Resolves every name once and moves the colors' endpoint sets to the answers. Returns
    /// whether some name has still never resolved.
    pub(crate) async fn resolve_names(&self) -> bool {
        let names = self.names();
        if names.is_empty() {
            return false;
        }
        let answers = self.lookup_all(&names).await;
        let mut unresolved = false;
        let mut changed = false;
        {
            let mut r = self.resolved.lock().unwrap_or_else(|p| p.into_inner());
            for (spec, answer) in names.iter().zip(answers) {
                match answer {
                    Ok(addrs) => {
                        if r.failing.remove(spec).is_some() {
                            tracing::info!(service = %self.name, endpoint = %spec, addresses = ?addrs, "endpoint name resolves again");
                        }
                        let before = r.names.insert(spec.clone(), Some(addrs.clone()));
                        if before.as_ref().and_then(|b| b.as_ref()) != Some(&addrs) {
                            tracing::info!(service = %self.name, endpoint = %spec, addresses = ?addrs, "endpoint name resolved");
                            changed = true;
                        }
                    }
                    Err(e) => {
                        let known = r.names.get(spec).and_then(|a| a.clone());
                        unresolved |= known.is_none();
                        r.names.entry(spec.clone()).or_insert(None);
                        if r.failing.get(spec) != Some(&e) {
                            match &known {
                                Some(addrs) => {
                                    tracing::warn!(service = %self.name, endpoint = %spec, error = %e, kept = ?addrs, "cannot resolve endpoint name; keeping its last addresses")
                                }
                                None => {
                                    tracing::error!(service = %self.name, endpoint = %spec, error = %e, "cannot resolve endpoint name; it has no endpoints until it resolves (retrying every second)")
                                }
                            }
                            r.failing.insert(spec.clone(), e);
                        }
                    }
                }
            }
        }
        if changed {
            for c in Color::ALL {
                self.refresh_endpoints(c).await;
            }
        }
        unresolved
    }

    /// Moves `color`'s route to the addresses it has now ([`targets`](Self::targets)),
    /// keeping the endpoints whose address stays. New endpoints of a checked color are probed
    /// before they join.
    pub(crate) async fn refresh_endpoints(&self, color: Color) {
        let Some(route) = self.route(color) else { return };
        let targets = self.targets(color);
        let current = route.endpoints();
        let same = current.len() == targets.len()
            && targets
                .iter()
                .all(|(a, n)| current.iter().any(|e| e.addr == *a && e.name == *n));
        if same {
            return;
        }
        let mut next = Vec::with_capacity(targets.len());
        let mut fresh = Vec::new();
        for (a, n) in &targets {
            match current.iter().find(|e| e.addr == *a && e.name == *n) {
                Some(e) => next.push(e.clone()),
                None => {
                    let e = Endpoint::named(*a, n.clone(), &self.proxy.settings());
                    fresh.push(e.clone());
                    next.push(e);
                }
            }
        }
        if self.watched(color) && !fresh.is_empty() {
            health::check_endpoints(&self.name, &route, &fresh, &self.health()).await;
        }
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        let Some(slot) = slots[color.index()].as_mut().filter(|s| Arc::ptr_eq(&s.route, &route)) else {
            // A new route was installed meanwhile; it was built from the same answers.
            return;
        };
        let gone: Vec<String> = current
            .iter()
            .filter(|e| !next.iter().any(|n| Arc::ptr_eq(n, e)))
            .map(|e| e.to_string())
            .collect();
        let added: Vec<String> = fresh.iter().map(|e| e.to_string()).collect();
        tracing::info!(service = %self.name, color = %color, added = ?added, removed = ?gone, "endpoints changed");
        route.set_endpoints(next);
        if slot.checks.is_some() {
            slot.checks = Some(health::spawn(&self.name, &route, &self.health()));
        }
    }

    /// Resolves the names again every `resolve_interval` (every second while one has never
    /// resolved), for as long as the service exists.
    pub(crate) fn spawn_resolver(self: &Arc<Self>, unresolved: bool) {
        use std::sync::atomic::Ordering::Relaxed;
        if self.names().is_empty() || self.resolving.swap(true, Relaxed) {
            return;
        }
        let weak: Weak<ServiceCtl> = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut unresolved = unresolved;
            loop {
                // Read each turn: a reload may change it.
                let every = match weak.upgrade() {
                    Some(svc) if !svc.is_retired() => svc.cfg().resolve_interval.get(),
                    _ => return,
                };
                tokio::time::sleep(if unresolved { RETRY_UNRESOLVED.min(every) } else { every }).await;
                let Some(svc) = weak.upgrade().filter(|s| !s.is_retired()) else {
                    return;
                };
                unresolved = svc.resolve_names().await;
            }
        });
    }
}

impl ServiceCtl {
    /// Starts the resolver if names appeared (a reload) and none runs yet.
    pub(crate) fn ensure_resolver(self: &Arc<Self>) {
        self.spawn_resolver(false);
    }
}

impl ServiceCtl {
    /// Looks every name up at once; the answers come back in order. A host agent's name
    /// (`run.hosts`) is answered by the fleet's host registry: the address its agent
    /// advertised, kept while the agent is cut from etcd.
    async fn lookup_all(&self, names: &[EndpointSpec]) -> Vec<Result<Vec<SocketAddr>, String>> {
        let agent_hosts = match &self.cfg().environments {
            cutover_config::Environments::Managed(run) => run.hosts.clone(),
            _ => Vec::new(),
        };
        let fleet = self.fleet.get().cloned();
        let tasks: Vec<_> = names
            .iter()
            .cloned()
            .map(|s| {
                let from_registry = agent_hosts.contains(&s.host);
                let fleet = fleet.clone();
                tokio::spawn(async move {
                    if !from_registry {
                        return lookup(&s).await;
                    }
                    let Some(fleet) = fleet else {
                        return Err("not in a fleet yet: host agents' addresses come from etcd".to_string());
                    };
                    fleet
                        .host_address(&s.host)
                        .map(|ip| vec![SocketAddr::new(ip, s.port)])
                        .ok_or_else(|| {
                            format!(
                                "host agent {:?} has not registered in the fleet (no hosts/{} in etcd): start `cutover agent --host {}` there",
                                s.host, s.host, s.host
                            )
                        })
                })
            })
            .collect();
        let mut out = Vec::with_capacity(tasks.len());
        for t in tasks {
            out.push(t.await.unwrap_or_else(|e| Err(format!("lookup task failed: {e}"))));
        }
        out
    }
}
