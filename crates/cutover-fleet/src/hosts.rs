//! What a router knows of the fleet's host agents, from the same watch as everything else:
//! each host's registration (`hosts/<name>`, the address it advertised), which agents are
//! connected (`agents/<name>`, on their leases), what each managed color should run
//! (`desired/<service>/<color>`) and what every host reports it runs
//! (`reports/<service>/<color>/<host>`).
//!
//! Routers use the registrations to reach the model servers (endpoint names of
//! `run.hosts` resolve here, not in DNS); the controller (`remote_procs`) waits on
//! the reports when it starts or stops a color.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Mutex;

use crate::doc::{Color, DesiredProcs, HostDoc, HostReport};
use crate::etcd::Kv;
use crate::Keys;
use tokio::sync::watch;

#[derive(Default, Clone)]
struct Inner {
    hosts: BTreeMap<String, HostDoc>,
    agents: BTreeSet<String>,
    /// Per service and color: the document and its `mod_revision`.
    desired: BTreeMap<(String, Color), (DesiredProcs, i64)>,
    reports: BTreeMap<(String, Color, String), HostReport>,
}

/// The host agents as this router last read them.
pub struct HostsView {
    inner: Mutex<Inner>,
    /// Bumped at every change, so waiters (a start waiting for reports) wake.
    changed: watch::Sender<u64>,
    /// Set by the first full read.
    read_once: std::sync::atomic::AtomicBool,
}

impl Default for HostsView {
    fn default() -> Self {
        HostsView {
            inner: Mutex::default(),
            changed: watch::Sender::new(0),
            read_once: Default::default(),
        }
    }
}

/// What a key of the fleet's prefix was, if it is about host agents.
pub enum HostKey<'k> {
    Host(&'k str),
    Agent(&'k str),
    Desired(&'k str, Color),
    Report(&'k str, Color, &'k str),
}

impl<'k> HostKey<'k> {
    pub fn of(keys: &Keys, key: &'k str) -> Option<HostKey<'k>> {
        if let Some(h) = keys.host_name(key) {
            Some(HostKey::Host(h))
        } else if let Some(h) = keys.agent_name(key) {
            Some(HostKey::Agent(h))
        } else if let Some((s, c)) = keys.desired_key(key) {
            Some(HostKey::Desired(s, c))
        } else {
            keys.report_key(key).map(|(s, c, h)| HostKey::Report(s, c, h))
        }
    }
}

impl HostsView {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn bump(&self) {
        self.changed.send_modify(|n| *n += 1);
    }

    /// Wakes at every change.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Replaces everything with a full read (`kvs` from the four prefixes).
    pub fn read(&self, keys: &Keys, kvs: &[Kv]) {
        let mut next = Inner::default();
        for kv in kvs {
            next.put(keys, kv);
        }
        *self.lock() = next;
        self.read_once.store(true, std::sync::atomic::Ordering::Relaxed);
        self.bump();
    }

    /// True once everything was read from etcd at least once.
    pub fn was_read(&self) -> bool {
        self.read_once.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Host agents connected and away (registered, no presence key), for metrics.
    pub fn counts(&self) -> (u64, u64) {
        let inner = self.lock();
        let connected = inner.agents.len() as u64;
        let away = inner.hosts.keys().filter(|h| !inner.agents.contains(*h)).count() as u64;
        (connected, away)
    }

    /// One watch event: `Some(kv)` a put, `None` a delete of `key`. Returns the host whose
    /// registration changed, so the services it serves resolve their names again.
    pub fn event(&self, keys: &Keys, key: &str, kv: Option<&Kv>) -> Option<String> {
        let changed_host = {
            let mut inner = self.lock();
            match kv {
                Some(kv) => inner.put(keys, kv),
                None => inner.delete(keys, key),
            }
        };
        self.bump();
        changed_host
    }

    /// The address the agent of `host` advertised; kept while the agent is away (its
    /// processes go on running, so routers go on reaching them).
    pub fn address(&self, host: &str) -> Option<IpAddr> {
        self.lock().hosts.get(host).and_then(|h| h.advertise.parse().ok())
    }

    /// True while the agent of `host` holds its lease.
    pub fn connected(&self, host: &str) -> bool {
        self.lock().agents.contains(host)
    }

    pub fn desired(&self, service: &str, color: Color) -> Option<(DesiredProcs, i64)> {
        self.lock().desired.get(&(service.to_string(), color)).cloned()
    }

    pub fn report(&self, service: &str, color: Color, host: &str) -> Option<HostReport> {
        self.lock()
            .reports
            .get(&(service.to_string(), color, host.to_string()))
            .cloned()
    }

    /// Every host's report of one color, by host.
    pub fn reports(&self, service: &str, color: Color) -> BTreeMap<String, HostReport> {
        self.lock()
            .reports
            .iter()
            .filter(|((s, c, _), _)| s == service && *c == color)
            .map(|((_, _, h), r)| (h.clone(), r.clone()))
            .collect()
    }

    /// The agents as `GET /v1/fleet` shows them.
    pub fn view(&self) -> serde_json::Value {
        let inner = self.lock();
        let names: BTreeSet<&String> = inner.hosts.keys().chain(inner.agents.iter()).collect();
        names
            .into_iter()
            .map(|h| {
                serde_json::json!({
                    "host": h,
                    "advertise": inner.hosts.get(h).map(|d| d.advertise.clone()),
                    "since": inner.hosts.get(h).map(|d| d.since.clone()),
                    "connected": inner.agents.contains(h),
                })
            })
            .collect()
    }
}

impl Inner {
    fn put(&mut self, keys: &Keys, kv: &Kv) -> Option<String> {
        match HostKey::of(keys, &kv.key)? {
            HostKey::Host(h) => match HostDoc::parse(&kv.value) {
                Ok(d) => {
                    let moved = self.hosts.get(h).map(|o| o.advertise != d.advertise).unwrap_or(true);
                    self.hosts.insert(h.to_string(), d);
                    return moved.then(|| h.to_string());
                }
                Err(e) => tracing::warn!(host = %h, error = %e, "fleet: unreadable host registration"),
            },
            HostKey::Agent(h) => {
                self.agents.insert(h.to_string());
            }
            HostKey::Desired(s, c) => match DesiredProcs::parse(&kv.value) {
                Ok(d) => {
                    // The watch replays from before a re-read's later ranges: an older
                    // revision than the one held is that replay, not news.
                    let key = (s.to_string(), c);
                    if self.desired.get(&key).is_none_or(|(_, held)| kv.mod_revision >= *held) {
                        self.desired.insert(key, (d, kv.mod_revision));
                    }
                }
                Err(e) => {
                    tracing::warn!(service = %s, color = c.as_str(), error = %e, "fleet: unreadable desired processes")
                }
            },
            HostKey::Report(s, c, h) => match HostReport::parse(&kv.value) {
                Ok(r) => {
                    self.reports.insert((s.to_string(), c, h.to_string()), r);
                }
                Err(e) => tracing::warn!(service = %s, host = %h, error = %e, "fleet: unreadable host report"),
            },
        }
        None
    }

    fn delete(&mut self, keys: &Keys, key: &str) -> Option<String> {
        match HostKey::of(keys, key)? {
            // A registration removed by a person: the host's endpoints keep their last
            // addresses (the resolver keeps a name's last answer), as with DNS.
            HostKey::Host(h) => {
                self.hosts.remove(h);
            }
            HostKey::Agent(h) => {
                self.agents.remove(h);
            }
            HostKey::Desired(s, c) => {
                self.desired.remove(&(s.to_string(), c));
            }
            HostKey::Report(s, c, h) => {
                self.reports.remove(&(s.to_string(), c, h.to_string()));
            }
        }
        None
    }
}
