//! The data-plane listeners of a running `serve`, and configuration reload (SIGHUP,
//! `POST /v1/reload`, `cutover reload`).
//!
//! A reload reads the config file again and validates it whole; an invalid file changes
//! nothing (logged, counted, answered with file, line and key). Then every change that cannot
//! be applied in place is refused, again before anything changes: `[admin]` and `[store]`,
//! and the per-service cases [`ServiceCtl::refusal`] names; a service with a release in
//! progress is not touched either. Then the new listeners are bound (a new service, a changed
//! address); a bind that fails undoes the others. Only then are changes applied: services
//! added (restored from the store like at start-up), services changed in place, listeners
//! whose address changed replaced (the old one stops accepting and drains its connections
//! for the grace period), services removed (their listeners drain the same way; their
//! managed processes keep running, as when cutover stops). A listener whose address did not
//! change is never touched: no connection of an unchanged service notices a reload.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use cutover_config::{Config, ServiceConfig};
use cutover_proxy::forward::Forwarder;
use cutover_proxy::listener::{self, ListenerStats};
use cutover_proxy::shared::{Rule, Shared};
use cutover_proxy::{Protocol, ServiceSettings};
use cutover_store::{EventRecord, HistoryKind};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::api::reload::{Reload, ReloadFuture};
pub use crate::api::reload::{ReloadError, ReloadReport};
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
    ctl: Arc<Controller>,
    grace: Duration,
    config_path: PathBuf,
    loops: Mutex<BTreeMap<(String, bool), Loop>>,
    /// The shared listeners' accept loops, by listener name (fixed from start to stop).
    shared: Mutex<BTreeMap<String, Loop>>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// One reload at a time.
    reloading: tokio::sync::Mutex<()>,
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

    fn stop_loop(&self, service: &str, preview: bool) {
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

    /// Reads the config file again and applies what changed; see the module docs.
    pub async fn reload(&self, actor: &str) -> Result<ReloadReport, ReloadError> {
        let _one = self.reloading.lock().await;
        // Not while a successor takes the listeners over (it would miss what changes), nor
        // ever after it did: the store is the successor's then.
        let _permit = self.ctl.pause.enter().await;
        // Certificates first, whatever becomes of the configuration: a SIGHUP from a renewal
        // hook must not depend on the config file being valid.
        let certs = self.certs.clone();
        let certificates = tokio::task::spawn_blocking(move || certs.reload())
            .await
            .unwrap_or_default();
        let r = self.reload_inner(actor).await.map(|mut report| {
            report.certificates = certificates;
            report
        });
        let counts = &self.ctl.reloads;
        match &r {
            Ok(report) => {
                counts.ok.fetch_add(1, Relaxed);
                tracing::info!(actor, changes = %report.summary(), "configuration reloaded");
            }
            Err(e) => {
                counts.error.fetch_add(1, Relaxed);
                tracing::error!(actor, error = %e, "configuration reload failed; the running configuration is unchanged");
            }
        }
        r
    }

    async fn reload_inner(&self, actor: &str) -> Result<ReloadReport, ReloadError> {
        let path = self.config_path.clone();
        let new = tokio::task::spawn_blocking(move || cutover_config::load(&path))
            .await
            .map_err(|e| ReloadError::Refused(format!("the config reader failed: {e}")))?
            .map_err(ReloadError::Invalid)?;
        let old = &self.ctl.config;
        if format!("{:?}", old.admin) != format!("{:?}", new.admin)
            || format!("{:?}", old.store) != format!("{:?}", new.store)
        {
            return Err(ReloadError::Refused(
                "[admin] and [store] are read at start only; restart cutover (`serve --upgrade` keeps connections) to change them"
                    .into(),
            ));
        }
        if let Some(why) = shared_change(old, &new) {
            return Err(ReloadError::Refused(why));
        }
        let running = self.ctl.services();
        let mut report = ReloadReport::default();
        let mut changed: Vec<(&ServiceConfig, Vec<String>)> = Vec::new();
        for (name, cfg) in &new.services {
            match running.get(name) {
                None => report.added.push(name.clone()),
                Some(svc) => {
                    if let Some(why) = svc.refusal(cfg) {
                        return Err(ReloadError::Refused(why));
                    }
                    let what = svc.changes(cfg);
                    if !what.is_empty() {
                        if let Some(d) = self.ctl.active_release_doc(name) {
                            return Err(ReloadError::Refused(format!(
                                "release {} of {name} ({}) is in progress; wait for it or abort it, then reload",
                                d.id, d.version
                            )));
                        }
                        changed.push((cfg, what));
                    }
                }
            }
        }
        for name in running.keys() {
            if !new.services.contains_key(name) {
                if let Some(d) = self.ctl.active_release_doc(name) {
                    return Err(ReloadError::Refused(format!(
                        "release {} of {name} ({}) is in progress; a service cannot be removed mid-release",
                        d.id, d.version
                    )));
                }
                report.removed.push(name.clone());
            }
        }

        if self.ctl.fleet().is_some() && !(report.added.is_empty() && report.removed.is_empty()) {
            return Err(ReloadError::Refused(
                "in fleet mode a reload does not add or remove services yet (every router must agree on the set): \
                 change the config of every router and restart them one at a time (`serve --upgrade`)"
                    .into(),
            ));
        }
        // Bind everything new before changing anything; dropping `bound` undoes it.
        let mut bound: Vec<(String, bool, TcpListener, SocketAddr)> = Vec::new();
        for cfg in new.services.values() {
            // A shared listener's services have no live listener of their own.
            let own = cfg.shared.is_none().then_some(cfg.listen);
            for (preview, want) in [(false, own), (true, cfg.preview_listen)] {
                let have = self.loops().get(&(cfg.name.clone(), preview)).map(|l| l.configured);
                let Some(want) = want else { continue };
                if have == Some(want) {
                    continue;
                }
                let key = format!(
                    "services.{}.{}",
                    cfg.name,
                    if preview { "preview_listen" } else { "listen" }
                );
                let l = listener::bind(want)
                    .map_err(|e| ReloadError::Bind(crate::procs::supervisor::cannot_listen(&key, want, &e)))?;
                bound.push((cfg.name.clone(), preview, l, want));
            }
        }

        for name in &report.added {
            self.ctl
                .add_service(&new.services[name])
                .map_err(|e| ReloadError::Refused(format!("cannot add service {name}: {e}")))?
                .start_resolving()
                .await;
        }
        for (cfg, what) in &changed {
            let svc = self.ctl.service(&cfg.name).expect("a running service");
            svc.reconfigure((*cfg).clone()).await;
            report.changed.insert(cfg.name.clone(), what.clone());
        }
        for (name, preview, l, want) in bound {
            self.start(&name, preview, l, want)
                .map_err(|e| ReloadError::Bind(e.to_string()))?;
        }
        // A preview listener the new config dropped.
        for cfg in new.services.values() {
            if cfg.preview_listen.is_none() {
                self.stop_loop(&cfg.name, true);
            }
        }
        for name in &report.removed {
            self.stop_loop(name, false);
            self.stop_loop(name, true);
            self.certs.remove(&format!("services.{name}.tls"));
            let _ = self.ctl.remove_service(name);
        }
        self.record(actor, &report);
        self.write_addresses();
        Ok(report)
    }

    /// One history line per service the reload touched.
    fn record(&self, actor: &str, report: &ReloadReport) {
        let mut lines: Vec<(&str, String)> = Vec::new();
        for n in &report.added {
            lines.push((n, "reload: added to the configuration".into()));
        }
        for n in &report.removed {
            lines.push((
                n,
                "reload: removed from the configuration (managed processes keep running)".into(),
            ));
        }
        for (n, what) in &report.changed {
            lines.push((n, format!("reload: changed {}", what.join(", "))));
        }
        for (service, reason) in lines {
            let r = self.ctl.store.record_event(&EventRecord {
                service,
                kind: HistoryKind::Reconfigured,
                color: None,
                version: None,
                actor,
                reason: &reason,
                release_id: None,
            });
            if let Err(e) = r {
                tracing::error!(service, error = %e, "cannot record the reload in history");
            }
        }
    }

    fn write_addresses(&self) {
        let Some((path, admin)) = self.addresses.lock().unwrap_or_else(|p| p.into_inner()).clone() else {
            return;
        };
        let doc = serde_json::json!({ "admin": admin, "services": self.bound() });
        let tmp = path.with_extension("tmp");
        let text = serde_json::to_string_pretty(&doc).unwrap_or_default();
        if let Err(e) = std::fs::write(&tmp, text).and_then(|_| std::fs::rename(&tmp, &path)) {
            tracing::warn!(path = %path.display(), error = %e, "cannot rewrite the addresses file");
        }
    }
}

/// The settings of a shared listener's connections: the first service's (by name), since a
/// connection's limits are read before its requests pick a service. The own HTTP/1.1 engine
/// dials plain HTTP/1.1 upstreams only: when any service has h2c or TLS upstreams, the
/// listener's connections take the hyper engine, which serves every kind.
fn shared_front(on: &[Arc<ServiceConfig>]) -> Option<ServiceSettings> {
    let mut front = crate::service::settings_from(on.first()?);
    if on
        .iter()
        .map(|c| crate::service::settings_from(c))
        .any(|s| s.protocol != Protocol::Http1 || s.upstream_tls.is_some())
    {
        front.protocol = Protocol::H2c;
    }
    Some(front)
}

/// Why a reload cannot apply the new config's shared listeners, if it changed them: the
/// listener's rules are fixed while it serves (its requests pick among them without a lock).
fn shared_change(old: &Config, new: &Config) -> Option<String> {
    let matches = |c: &Config| -> BTreeMap<String, Option<cutover_config::SharedMatch>> {
        c.services
            .iter()
            .map(|(n, s)| (n.clone(), s.shared.clone()))
            .filter(|(_, m)| m.is_some())
            .collect()
    };
    if old.listeners == new.listeners && matches(old) == matches(new) {
        return None;
    }
    Some(
        "shared listeners ([listeners.NAME], and the `listener` and `match` of their services) are read at start only: \
         restart cutover (`serve --upgrade` keeps connections) to change them"
            .into(),
    )
}

/// The admin API's `POST /v1/reload` comes here.
impl Reload for Serving {
    fn reload<'a>(&'a self, actor: &'a str) -> ReloadFuture<'a> {
        Box::pin(Serving::reload(self, actor))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHARED: &str = r#"
[listeners.api]
listen = "127.0.0.1:0"
[services.chat]
listener = "api"
match = { model = ["a"] }
[services.chat.blue]
endpoints = ["127.0.0.1:9001"]
[services.chat.green]
endpoints = ["127.0.0.1:9002"]
"#;

    fn parse(text: &str) -> Config {
        cutover_config::parse(std::path::Path::new("/etc/cutover/cutover.toml"), text).unwrap()
    }

    #[test]
    fn a_reload_refuses_any_change_to_a_shared_listener_and_allows_the_rest() {
        let old = parse(SHARED);
        assert_eq!(shared_change(&old, &parse(SHARED)), None);
        let limits = format!("{SHARED}[services.chat.limits]\nmax_body_bytes = 1000\n");
        assert_eq!(
            shared_change(&old, &parse(&limits)),
            None,
            "a service's own settings reload"
        );
        for changed in [
            SHARED.replace(r#"["a"]"#, r#"["a", "b"]"#),
            SHARED.replace("127.0.0.1:0", "127.0.0.1:8000"),
            format!(
                "{SHARED}[services.embed]\nlistener = \"api\"\nmatch = {{ model = [\"e\"] }}\n\
                 [services.embed.blue]\nendpoints = [\"127.0.0.1:9011\"]\n[services.embed.green]\nendpoints = [\"127.0.0.1:9012\"]\n"
            ),
        ] {
            let why = shared_change(&old, &parse(&changed)).expect("refused");
            assert!(why.contains("read at start only") && why.contains("serve --upgrade"), "{why}");
        }
    }

    #[test]
    fn a_shared_listener_takes_hyper_when_any_service_needs_it() {
        let cfg = parse(SHARED);
        let chat = Arc::new(cfg.services["chat"].clone());
        assert_eq!(
            shared_front(std::slice::from_ref(&chat)).unwrap().protocol,
            Protocol::Http1
        );
        let h2 = parse(&SHARED.replace(
            "[services.chat.blue]",
            "upstream_protocol = \"h2c\"\n[services.chat.blue]",
        ));
        let h2 = Arc::new(h2.services["chat"].clone());
        assert_eq!(shared_front(&[chat, h2]).unwrap().protocol, Protocol::H2c);
        assert!(shared_front(&[]).is_none());
    }
}
