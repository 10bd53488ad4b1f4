//! The data-plane listeners of one running `serve`: every accept loop by service (live and
//! preview) and by shared listener, started, replaced and stopped; the bound addresses
//! services show and `--addresses-file` holds; the copies a successor takes over. A reload
//! (the `reload` module beside this one) changes the set through the same registry.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use cutover_config::ServiceConfig;
use cutover_proxy::forward::Forwarder;
use cutover_proxy::listener::{self, ListenerStats};
use cutover_proxy::shared::{Rule, Shared};
use cutover_proxy::{Protocol, ServiceSettings};
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::addresses::Addresses;
use crate::base::certs::Certs;
use crate::controller::Controller;
use crate::serve::upgrade::Entry;
use crate::service::BoundAddrs;

/// One running accept loop.
struct Loop {
    /// The address the config asked for (port 0 stays 0: a reload of the same file keeps it).
    configured: SocketAddr,
    bound: SocketAddr,
    stop: watch::Sender<bool>,
    /// A copy of the listening socket, for a successor (`serve --upgrade`); closed with the loop.
    fd: OwnedFd,
}

/// Every data-plane accept loop of one `serve`, by (service, preview).
pub struct Serving {
    pub(super) ctl: Arc<Controller>,
    grace: Duration,
    pub(super) config_path: PathBuf,
    loops: Mutex<BTreeMap<(String, bool), Loop>>,
    /// The shared listeners' accept loops, by listener name (fixed from start to stop).
    shared: Mutex<BTreeMap<String, Loop>>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// One reload at a time.
    pub(super) reloading: tokio::sync::Mutex<()>,
    /// Where `serve --addresses-file` writes, rewritten after a reload bound new listeners.
    addresses: Mutex<Option<(PathBuf, SocketAddr)>>,
    /// The certificates of TLS listeners, read again at every reload.
    pub certs: Arc<Certs>,
}

impl Serving {
    pub fn new(ctl: Arc<Controller>, grace: Duration) -> Arc<Serving> {
        Arc::new(Serving {
            config_path: ctl.config.path.clone(),
            ctl,
            grace,
            loops: Mutex::new(BTreeMap::new()),
            shared: Mutex::new(BTreeMap::new()),
            tasks: Mutex::new(Vec::new()),
            reloading: tokio::sync::Mutex::new(()),
            addresses: Mutex::new(None),
            certs: Arc::default(),
        })
    }

    fn loops(&self) -> std::sync::MutexGuard<'_, BTreeMap<(String, bool), Loop>> {
        self.loops.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Serves `l` for `service` (its live listener, or its preview one).
    pub fn start(&self, service: &str, preview: bool, l: TcpListener, configured: SocketAddr) -> anyhow::Result<()> {
        let svc = self.ctl.service(service)?;
        let bound = l.local_addr()?;
        let fd = l.as_fd().try_clone_to_owned()?;
        tracing::info!(service = %service, listen = %bound, kind = if preview { "preview" } else { "live" }, "data plane listening");
        let tls = match &svc.cfg().tls {
            Some(t) => Some(self.certs.acceptor(&format!("services.{service}.tls"), t)?),
            None => None,
        };
        let (stop, stop_rx) = watch::channel(false);
        let fwd = Arc::new(Forwarder::new(svc.proxy.clone(), preview));
        let task = tokio::spawn(listener::serve(
            l,
            fwd,
            Arc::new(ListenerStats::default()),
            stop_rx,
            self.grace,
            tls,
        ));
        self.tasks.lock().unwrap_or_else(|p| p.into_inner()).push(task);
        let old = self.loops().insert(
            (service.to_string(), preview),
            Loop {
                configured,
                bound,
                stop,
                fd,
            },
        );
        if let Some(old) = old {
            tracing::info!(service = %service, listen = %old.bound, "old listener stops accepting; its connections drain");
            old.stop.send_replace(true);
        }
        self.publish_bound(service);
        Ok(())
    }

    /// Serves the shared listener `name` for the services that name it in `listener`.
    /// Its connections take the first of them's limits and timeouts (see `shared_front`).
    pub fn start_shared(&self, name: &str, l: TcpListener, configured: SocketAddr) -> anyhow::Result<()> {
        let bound = l.local_addr()?;
        let fd = l.as_fd().try_clone_to_owned()?;
        let mut routes = Vec::new();
        let mut on = Vec::new();
        for svc in self.ctl.services().values() {
            let cfg = svc.cfg();
            let Some(m) = cfg.shared.as_ref().filter(|m| m.listener == name) else {
                continue;
            };
            let rule = Rule {
                models: m.model.clone(),
                host: m.host.clone(),
                path_prefix: m.path_prefix.clone(),
            };
            routes.push((rule, Arc::new(Forwarder::new(svc.proxy.clone(), false))));
            on.push(cfg);
        }
        let front = shared_front(&on).context("a shared listener has services")?;
        let shared = Shared::new(name, routes).map_err(anyhow::Error::msg)?;
        let tls = match self.ctl.config.listeners.get(name).and_then(|l| l.tls.as_ref()) {
            Some(t) => Some(self.certs.acceptor(&format!("listeners.{name}.tls"), t)?),
            None => None,
        };
        tracing::info!(listener = %name, listen = %bound, tls = tls.is_some(), services = %on.iter().map(|c| c.name.as_str()).collect::<Vec<_>>().join(", "), "shared listener listening");
        let (stop, stop_rx) = watch::channel(false);
        let fwd = Arc::new(Forwarder::for_shared(shared, front));
        let task = tokio::spawn(listener::serve(
            l,
            fwd,
            Arc::new(ListenerStats::default()),
            stop_rx,
            self.grace,
            tls,
        ));
        self.tasks.lock().unwrap_or_else(|p| p.into_inner()).push(task);
        let loop_ = Loop {
            configured,
            bound,
            stop,
            fd,
        };
        self.shared
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_string(), loop_);
        for cfg in on {
            self.publish_bound(&cfg.name);
        }
        Ok(())
    }

    /// The bound address of a service's live requests: its own listener's, or its shared one's.
    fn live_bound(&self, service: &str) -> Option<SocketAddr> {
        if let Some(l) = self.loops().get(&(service.to_string(), false)) {
            return Some(l.bound);
        }
        let cfg = self.ctl.service(service).ok()?.cfg();
        let m = cfg.shared.as_ref()?;
        self.shared
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&m.listener)
            .map(|l| l.bound)
    }

    /// Tells the service which addresses serve it now (status shows them).
    fn publish_bound(&self, service: &str) {
        let Ok(svc) = self.ctl.service(service) else { return };
        let Some(listen) = self.live_bound(service) else {
            return;
        };
        svc.set_bound(BoundAddrs {
            listen,
            preview_listen: self.loops().get(&(service.to_string(), true)).map(|l| l.bound),
        });
    }

    /// The bound addresses of every service.
    pub fn bound(&self) -> BTreeMap<String, BoundAddrs> {
        let mut out = BTreeMap::new();
        for name in self.ctl.services().keys() {
            if let Some(listen) = self.live_bound(name) {
                let preview_listen = self.loops().get(&(name.clone(), true)).map(|p| p.bound);
                out.insert(name.clone(), BoundAddrs { listen, preview_listen });
            }
        }
        out
    }

    /// Every data-plane listener as a successor gets it: its config key, addresses and a copy
    /// of its socket.
    pub fn handover(&self) -> std::io::Result<Vec<(Entry, OwnedFd)>> {
        let mut out = Vec::new();
        for ((name, preview), l) in self.loops().iter() {
            let key = if *preview { "preview_listen" } else { "listen" };
            let entry = Entry {
                key: format!("services.{name}.{key}"),
                configured: l.configured,
                bound: l.bound,
            };
            out.push((entry, l.fd.try_clone()?));
        }
        for (name, l) in self.shared.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            let entry = Entry {
                key: format!("listeners.{name}.listen"),
                configured: l.configured,
                bound: l.bound,
            };
            out.push((entry, l.fd.try_clone()?));
        }
        Ok(out)
    }

    /// Keep `--addresses-file` up to date from now on.
    pub fn set_addresses_file(&self, path: PathBuf, admin: SocketAddr) {
        *self.addresses.lock().unwrap_or_else(|p| p.into_inner()) = Some((path, admin));
    }

    pub(super) fn stop_loop(&self, service: &str, preview: bool) {
        if let Some(l) = self.loops().remove(&(service.to_string(), preview)) {
            tracing::info!(service = %service, listen = %l.bound, "listener stops accepting; its connections drain");
            l.stop.send_replace(true);
        }
    }

    /// Stops every accept loop and waits for their connections, at most the grace period.
    pub async fn shutdown(&self) {
        for l in std::mem::take(&mut *self.loops()).into_values() {
            l.stop.send_replace(true);
        }
        for l in std::mem::take(&mut *self.shared.lock().unwrap_or_else(|p| p.into_inner())).into_values() {
            l.stop.send_replace(true);
        }
        let tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|p| p.into_inner()));
        for t in tasks {
            let _ = t.await;
        }
    }

    /// The addresses file's contents now: admin, every service and every shared listener.
    pub fn addresses(&self, admin: SocketAddr) -> Addresses {
        let listeners = self
            .shared
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(n, l)| (n.clone(), l.bound))
            .collect();
        Addresses {
            admin,
            services: self.bound(),
            listeners,
        }
    }

    /// The address the loop of `service` (its preview's, with `preview`) was started for.
    pub(super) fn configured(&self, service: &str, preview: bool) -> Option<SocketAddr> {
        self.loops().get(&(service.to_string(), preview)).map(|l| l.configured)
    }

    /// Rewrites `--addresses-file`, if `serve` was given one (after a reload bound listeners).
    pub(super) fn write_addresses(&self) {
        let Some((path, admin)) = self.addresses.lock().unwrap_or_else(|p| p.into_inner()).clone() else {
            return;
        };
        if let Err(e) = self.addresses(admin).write(&path) {
            tracing::warn!(path = %path.display(), error = %e, "cannot rewrite the addresses file");
        }
    }
}

/// The settings of a shared listener's connections: the first service's (by name), since a
/// connection's limits are read before its requests pick a service. The own HTTP/1.1 engine
/// dials plain HTTP/1.1 upstreams only: when any service has h2c or TLS upstreams, the
/// listener's connections take the hyper engine, which serves every kind; so they do when
/// any service asks for it (`http1_engine = "hyper"`, an escape hatch that must hold).
pub(super) fn shared_front(on: &[Arc<ServiceConfig>]) -> Option<ServiceSettings> {
    let mut front = crate::service::settings_from(on.first()?);
    let all: Vec<ServiceSettings> = on.iter().map(|c| crate::service::settings_from(c)).collect();
    if all
        .iter()
        .any(|s| s.protocol != Protocol::Http1 || s.upstream_tls.is_some())
    {
        front.protocol = Protocol::H2c;
    }
    if all.iter().any(|s| s.http1_engine == cutover_proxy::Http1Engine::Hyper) {
        front.http1_engine = cutover_proxy::Http1Engine::Hyper;
    }
    Some(front)
}
