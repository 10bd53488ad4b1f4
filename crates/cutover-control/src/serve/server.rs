//! `cutover serve`, sequenced as linkerd does it: the config is already validated (stage one,
//! no side effects), then every listener is bound (data plane, preview and admin), and only
//! then is the store opened and the previous state resumed, then everything serves until a
//! signal, then drains. A second `serve` started by mistake on the same config therefore
//! fails at the bind, before it has written anything into the live instance's store.
//!
//! `serve --upgrade` takes the listeners of the running router instead of binding them (see
//! [`crate::serve::upgrade`]); a running router hands them on and drains once its successor serves.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use cutover_config::Config;
use cutover_proxy::listener;
use cutover_store::Store;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::api::admin::{self, AdminState};
use crate::api::token;
use crate::controller::Controller;
use crate::procs::supervisor::cannot_listen;
use crate::serve::addresses::{write_addresses, Addresses};
use crate::serve::reload::Serving;
use crate::serve::upgrade::{self, Entry, Predecessor, Received, UpgradeSocket};
use crate::service::series::SAMPLE_EVERY;
use crate::service::BoundAddrs;

pub struct ServeOptions {
    /// How long in-flight requests (streams included) may run on after SIGTERM.
    pub grace: Duration,
    /// Where to write the bound addresses (JSON) once everything serves; how tests and
    /// scripts find the ports of a config that says port 0.
    pub addresses_file: Option<PathBuf>,
    /// Take the listeners of the router running with this config (`serve --upgrade`) instead
    /// of binding them, and tell it to drain once this process serves.
    pub upgrade: bool,
}

/// Every listener of one `serve`, bound and not yet serving (stage two of start-up).
pub struct Listeners {
    admin: TcpListener,
    /// Per service: its live listener (none on a shared listener) and, if configured, its
    /// preview listener.
    services: BTreeMap<String, (Option<TcpListener>, Option<TcpListener>)>,
    /// The shared listeners by name.
    shared: BTreeMap<String, TcpListener>,
}

/// `bind` of `addr` for `key`, its failure said by [`cannot_listen`].
fn bind_key(key: &str, addr: SocketAddr) -> anyhow::Result<TcpListener> {
    listener::bind(addr).map_err(|e| anyhow::anyhow!(cannot_listen(key, addr, &e)))
}

/// Says where a person opens the dashboard: the admin address (loopback for a wildcard
/// one), and where a token is; never the token itself.
fn log_dashboard(admin: SocketAddr, tls: bool, token_file: &Path) {
    let mut a = admin;
    if a.ip().is_unspecified() {
        a.set_ip(if a.is_ipv4() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        });
    }
    let url = format!("{}://{a}/", if tls { "https" } else { "http" });
    tracing::info!(
        %url,
        token_file = %token_file.display(),
        "dashboard: open the url (it asks for a token; or append #token=TOKEN, e.g. the admin token in token_file)"
    );
}

impl Listeners {
    /// Binds the admin listener and every service's listeners; the first failure names the
    /// key whose address could not be bound, and who holds a port in use.
    pub async fn bind(config: &Config) -> anyhow::Result<Listeners> {
        let a = config.admin.listen;
        let admin = TcpListener::bind(a)
            .await
            .map_err(|e| anyhow::anyhow!(cannot_listen("admin.listen", a, &e)))?;
        let mut services = BTreeMap::new();
        for (name, svc) in &config.services {
            let live = match svc.shared {
                None => Some(bind_key(&format!("services.{name}.listen"), svc.listen)?),
                Some(_) => None,
            };
            let preview = match svc.preview_listen {
                Some(p) => Some(bind_key(&format!("services.{name}.preview_listen"), p)?),
                None => None,
            };
            services.insert(name.clone(), (live, preview));
        }
        let mut shared = BTreeMap::new();
        for (name, l) in &config.listeners {
            shared.insert(name.clone(), bind_key(&format!("listeners.{name}.listen"), l.listen)?);
        }
        Ok(Listeners {
            admin,
            services,
            shared,
        })
    }

    /// The listeners for `config` from those a predecessor handed over: a key whose configured
    /// address is unchanged takes its socket (backlog and port, a port 0 included); a new or
    /// changed key is bound afresh. Keys the config no longer has are left to the predecessor,
    /// which closes them. Returns the listeners and the keys taken over.
    pub fn from_received(config: &Config, received: Vec<Received>) -> anyhow::Result<(Listeners, Vec<String>)> {
        let mut by_key: BTreeMap<String, Received> = received.into_iter().map(|r| (r.entry.key.clone(), r)).collect();
        let mut taken = Vec::new();
        let mut take =
            |key: &str, addr: SocketAddr, fresh: &dyn Fn(SocketAddr) -> std::io::Result<TcpListener>| match by_key
                .remove(key)
                .filter(|r| r.entry.configured == addr)
            {
                Some(r) => {
                    r.listener.set_nonblocking(true)?;
                    taken.push(key.to_string());
                    TcpListener::from_std(r.listener)
                        .with_context(|| format!("cannot serve the {key} socket handed over"))
                }
                None => fresh(addr).map_err(|e| anyhow::anyhow!(cannot_listen(key, addr, &e))),
            };
        let admin = take("admin", config.admin.listen, &|a| {
            let l = std::net::TcpListener::bind(a)?;
            l.set_nonblocking(true)?;
            TcpListener::from_std(l)
        })?;
        let mut services = BTreeMap::new();
        for (name, svc) in &config.services {
            let live = match svc.shared {
                None => Some(take(&format!("services.{name}.listen"), svc.listen, &listener::bind)?),
                Some(_) => None,
            };
            let preview = match svc.preview_listen {
                Some(p) => Some(take(&format!("services.{name}.preview_listen"), p, &listener::bind)?),
                None => None,
            };
            services.insert(name.clone(), (live, preview));
        }
        let mut shared = BTreeMap::new();
        for (name, l) in &config.listeners {
            shared.insert(
                name.clone(),
                take(&format!("listeners.{name}.listen"), l.listen, &listener::bind)?,
            );
        }
        Ok((
            Listeners {
                admin,
                services,
                shared,
            },
            taken,
        ))
    }

    /// The admin listener's manifest entry and a copy of its socket, to hand to a successor
    /// (the data-plane listeners, which a reload changes, are `Serving`'s).
    fn admin_entry(&self, config: &Config) -> std::io::Result<(Entry, OwnedFd)> {
        let entry = Entry {
            key: "admin".into(),
            configured: config.admin.listen,
            bound: self.admin.local_addr()?,
        };
        Ok((entry, self.admin.as_fd().try_clone_to_owned()?))
    }

    /// The addresses actually bound (a configured port 0 is a real port here).
    pub fn addresses(&self, config: &Config) -> std::io::Result<Addresses> {
        let mut listeners = BTreeMap::new();
        for (name, l) in &self.shared {
            listeners.insert(name.clone(), l.local_addr()?);
        }
        let mut services = BTreeMap::new();
        for (name, (live, preview)) in &self.services {
            let listen = match (live, config.services.get(name).and_then(|s| s.shared.as_ref())) {
                (Some(l), _) => l.local_addr()?,
                (None, Some(m)) => *listeners
                    .get(&m.listener)
                    .ok_or_else(|| std::io::Error::other("a shared listener is bound"))?,
                (None, None) => return Err(std::io::Error::other("a service has a listener")),
            };
            let addrs = BoundAddrs {
                listen,
                preview_listen: preview.as_ref().map(TcpListener::local_addr).transpose()?,
            };
            services.insert(name.clone(), addrs);
        }
        Ok(Addresses {
            admin: self.admin.local_addr()?,
            services,
            listeners,
        })
    }
}

/// Runs until SIGINT or SIGTERM (or a successor took over), then stops accepting and drains
/// for up to `grace`.
pub async fn serve(config: Config, opts: ServeOptions) -> anyhow::Result<()> {
    if opts.upgrade {
        return take_over(config, opts).await;
    }
    serve_until(config, opts, wait_for_signal()).await
}

/// `serve --upgrade`: takes the running router's listeners, then starts as `run` does and says
/// ready. Any failure before that is reported to the running router, which resumes.
async fn take_over(config: Config, opts: ServeOptions) -> anyhow::Result<()> {
    let path = upgrade::socket_path(&config.store.data_dir);
    let mut pred = Predecessor::connect(&path).await?;
    let deadline = tokio::time::Instant::now() + upgrade::HANDOVER_TIMEOUT;
    let received = match tokio::time::timeout_at(deadline, pred.take()).await {
        Ok(r) => r?,
        Err(_) => anyhow::bail!(
            "the running cutover sent no listeners within {} s",
            upgrade::HANDOVER_TIMEOUT.as_secs()
        ),
    };
    let from = pred.pid;
    let (listeners, taken) = match Listeners::from_received(&config, received) {
        Ok(l) => l,
        Err(e) => {
            pred.fail(&format!("{e:#}")).await;
            return Err(e);
        }
    };
    tracing::info!(from_pid = from, taken = taken.len(), keys = %taken.join(", "), "upgrade: took over listeners from the running cutover");
    run_with(config, listeners, opts, wait_for_signal(), Some((pred, deadline))).await
}

/// Binds every listener, then runs until `stop` resolves, then drains for up to `grace`.
pub async fn serve_until(
    config: Config,
    opts: ServeOptions,
    stop: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let listeners = Listeners::bind(&config).await?;
    run(config, listeners, opts, stop).await
}

/// Stage three and on: opens the store and resumes, then serves on `listeners`.
pub async fn run(
    config: Config,
    listeners: Listeners,
    opts: ServeOptions,
    stop: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    run_with(config, listeners, opts, stop, None).await
}

/// `run`, for a successor too: an error before it serves is told to the predecessor, and
/// once it serves it says ready.
async fn run_with(
    config: Config,
    listeners: Listeners,
    opts: ServeOptions,
    stop: impl std::future::Future<Output = ()>,
    mut pred: Option<(Predecessor, tokio::time::Instant)>,
) -> anyhow::Result<()> {
    let upgrade_path = upgrade::socket_path(&config.store.data_dir);
    let admin_address_file = config.admin.address_file.clone();
    let from = pred.as_ref().map(|(p, _)| p.pid);
    let started = start(config, listeners, &opts, from).await;
    let started = match (started, pred.as_mut()) {
        (Ok(s), _) => s,
        (Err(e), Some((p, _))) => {
            p.fail(&format!("{e:#}")).await;
            return Err(e);
        }
        (Err(e), None) => return Err(e),
    };
    let Started {
        ctl,
        serving,
        tasks,
        stop_tx,
        admin,
        addresses,
        _sampling,
        _fleet: fleet,
    } = started;
    if let Err(e) = write_addresses(
        admin_address_file.as_deref(),
        opts.addresses_file.as_deref(),
        &addresses,
    ) {
        if let Some((p, _)) = pred.as_mut() {
            p.fail(&format!("{e:#}")).await;
        }
        // Connections accepted meanwhile get the grace period rather than a reset.
        drain(tasks, stop_tx, &serving, opts.grace).await;
        return Err(e);
    }
    if let Some(path) = &opts.addresses_file {
        serving.set_addresses_file(path.clone(), addresses.admin);
    }
    if let Some((p, deadline)) = pred {
        tell_ready(p, deadline).await;
    }
    upgrade::notify("READY=1");
    let _reload_on_hup = AbortOnDrop(tokio::spawn(reload_on_sighup(serving.clone())));
    let socket = UpgradeSocket::bind(&upgrade_path)
        .map_err(
            |e| tracing::warn!(error = %format!("{e:#}"), "this process cannot be upgraded in place (serve --upgrade)"),
        )
        .ok();

    // A successor that took over ends the serve like a signal, but keeps the control plane
    // paused for good: this process must not write the store the successor now owns.
    let mut paused = None;
    tokio::select! {
        () = stop => {}
        (pid, guard) = hand_over(&ctl, socket, admin, &serving) => {
            paused = Some(guard);
            tracing::info!(successor_pid = pid, grace = ?opts.grace, "upgrade: the new process serves; this one stops accepting and drains");
        }
    }
    drain(tasks, stop_tx, &serving, opts.grace).await;
    // The fleet's tasks stop first, or the campaign would win the key given up next.
    drop(fleet);
    if let Some(link) = crate::fleet::link_of(&ctl) {
        link.resign().await;
    }
    if let Some(guard) = paused {
        // Never resumed: a supervisor restart or a release step released now, as the runtime
        // winds down, would start a process or write a store the successor owns.
        std::mem::forget(guard);
    }
    Ok(())
}

/// Tells the predecessor this process serves, and waits (until `deadline`) for its word
/// that it stops accepting.
async fn tell_ready(p: Predecessor, deadline: tokio::time::Instant) {
    let from = p.pid;
    // The predecessor names this process the unit's main process (`MAINPID`) before its
    // bye, so systemd takes this process's `READY=1` after this.
    match tokio::time::timeout_at(deadline, p.ready()).await {
        Ok(Ok(())) => tracing::info!(
            from_pid = from,
            "upgrade: serving; the old process stops accepting and drains"
        ),
        Ok(Err(e)) => {
            tracing::warn!(from_pid = from, error = %format!("{e:#}"), "upgrade: serving, but the old process did not confirm")
        }
        Err(_) => tracing::warn!(
            from_pid = from,
            "upgrade: serving, but the old process did not confirm in time"
        ),
    }
}

/// What `start` leaves running.
struct Started {
    ctl: Arc<Controller>,
    /// The data-plane accept loops (a reload changes them).
    serving: Arc<Serving>,
    /// The admin API's task.
    tasks: Vec<tokio::task::JoinHandle<()>>,
    stop_tx: watch::Sender<bool>,
    /// A copy of the admin listener with its manifest entry, for a successor.
    admin: (Entry, OwnedFd),
    addresses: Addresses,
    _sampling: AbortOnDrop,
    /// Fleet mode's sync with etcd, for as long as this process serves.
    _fleet: Option<crate::fleet::FleetTasks>,
}

/// Opens the store, resumes, and serves on every listener. `upgraded_from` is the
/// predecessor's pid after `serve --upgrade` (shown by `/healthz`).
async fn start(
    config: Config,
    listeners: Listeners,
    opts: &ServeOptions,
    upgraded_from: Option<u32>,
) -> anyhow::Result<Started> {
    let addresses = listeners.addresses(&config)?;
    let admin_entry = listeners
        .admin_entry(&config)
        .context("cannot copy the admin listener for a later upgrade")?;
    let token = token::Tokens::load(&config.admin)?;
    let fleet_config = config.store.fleet.clone();
    let ctl = Arc::new(open_and_resume(config)?);
    // Before the fleet joins: etcd's client certificate is one of its stores.
    let serving = Serving::new(ctl.clone(), opts.grace);
    let _fleet = match fleet_config {
        Some(f) => Some(crate::fleet::sync::join(ctl.clone(), &f, addresses.admin, &serving.certs).await?),
        None => None,
    };
    // Endpoint names resolve before the first request is taken (connections wait in the
    // backlog meanwhile, at most the lookup timeout).
    for svc in ctl.services().values() {
        svc.start_resolving().await;
    }
    let sampler = ctl.clone();
    let _sampling = AbortOnDrop(tokio::spawn(async move {
        let mut tick = tokio::time::interval(SAMPLE_EVERY);
        loop {
            tick.tick().await;
            sampler.sample();
        }
    }));

    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = Vec::new();
    let admin = listeners.admin;
    serve_data_plane(&ctl, &serving, listeners.services, listeners.shared)?;
    let admin_tls = match &ctl.config.admin.tls {
        Some(t) => Some(serving.certs.acceptor("admin.tls", t)?),
        None => None,
    };
    let app = admin::router(
        AdminState::new(ctl.clone(), token)
            .with_reload(serving.clone())
            .upgraded_from(upgraded_from),
    );
    tracing::info!(listen = %addresses.admin, tls = admin_tls.is_some(), "admin API listening");
    log_dashboard(addresses.admin, admin_tls.is_some(), &ctl.config.admin.token_file);
    tasks.push(tokio::spawn(serve_admin(admin, app, stop_rx.clone(), admin_tls)));
    tasks.push(tokio::spawn(
        serving
            .certs
            .clone()
            .watch(cutover_proxy::tls::POLL_EVERY, stop_rx.clone()),
    ));
    Ok(Started {
        ctl,
        serving,
        tasks,
        stop_tx,
        admin: admin_entry,
        addresses,
        _sampling,
        _fleet,
    })
}

/// Starts serving every data-plane listener: each service's own (live, preview) and each
/// shared one.
fn serve_data_plane(
    ctl: &Controller,
    serving: &Serving,
    services: BTreeMap<String, (Option<TcpListener>, Option<TcpListener>)>,
    shared: BTreeMap<String, TcpListener>,
) -> anyhow::Result<()> {
    for (name, (live, preview)) in services {
        let cfg = ctl
            .service(&name)
            .context("a bound service is in the controller")?
            .cfg();
        if let Some(live) = live {
            serving.start(&name, false, live, cfg.listen)?;
        }
        if let (Some(p), Some(configured)) = (preview, cfg.preview_listen) {
            serving.start(&name, true, p, configured)?;
        }
    }
    for (name, l) in shared {
        let configured = ctl.config.listeners[&name].listen;
        serving.start_shared(&name, l, configured)?;
    }
    Ok(())
}

/// Stops accepting (the listening sockets close here; a successor's copies live on) and
/// drains for up to `grace`.
async fn drain(
    tasks: Vec<tokio::task::JoinHandle<()>>,
    stop_tx: watch::Sender<bool>,
    serving: &Serving,
    grace: Duration,
) {
    tracing::info!(
        ?grace,
        "shutting down: no new connections; in-flight requests may finish"
    );
    // Every receiver lives in a task we wait for below; none can have gone yet.
    stop_tx.send_replace(true);
    let all = async {
        tokio::join!(serving.shutdown(), futures_join(tasks));
    };
    if tokio::time::timeout(grace + Duration::from_secs(1), all).await.is_err() {
        tracing::warn!("grace period over with requests still running; exiting");
    }
    tracing::info!("stopped");
}

/// Serves successors on the upgrade socket until one is ready; returns its pid and the pause
/// that must outlive this process. A hand-over that fails resumes everything as it was, and
/// the next successor may try. Never returns without a socket.
async fn hand_over(
    ctl: &Controller,
    socket: Option<UpgradeSocket>,
    admin: (Entry, OwnedFd),
    serving: &Serving,
) -> (u32, crate::base::pause::Quiesced) {
    let Some(socket) = socket else {
        return std::future::pending().await;
    };
    // SIGUSR2: start the successor ourselves (the way under systemd: it is then inside the unit).
    let mut usr2 = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined2()).ok();
    loop {
        let mut next = tokio::select! {
            s = socket.accept() => s,
            Some(()) = async {
                match usr2.as_mut() {
                    Some(s) => s.recv().await,
                    None => std::future::pending().await,
                }
            } => {
                match upgrade::spawn_successor() {
                    Ok(pid) => tracing::info!(successor_pid = pid, "upgrade: SIGUSR2: started the new process (serve --upgrade)"),
                    Err(e) => tracing::error!(error = %e, "upgrade: SIGUSR2: cannot start the new process"),
                }
                continue;
            }
        };
        let deadline = tokio::time::Instant::now() + upgrade::HANDOVER_TIMEOUT;
        let Some(version) = hello(&mut next).await else {
            continue;
        };
        let pid = next.pid;
        tracing::info!(successor_pid = pid, successor_version = %version, "upgrade: a new process asks for the listeners; pausing the control plane");
        let guard = match ctl.quiesce(upgrade::HANDOVER_TIMEOUT / 2).await {
            Ok(g) => g,
            Err(why) => {
                tracing::warn!(successor_pid = pid, reason = %why, "upgrade: refused; serving as before");
                next.refuse(&why).await;
                continue;
            }
        };
        let offered = async {
            // The listeners as they are now, after the pause: no reload runs meanwhile.
            let (mut entries, mut fds) = (vec![admin.0.clone()], vec![admin.1.try_clone()?]);
            for (e, fd) in serving.handover()? {
                entries.push(e);
                fds.push(fd);
            }
            next.offer(entries, &upgrade::borrowed(&fds)).await?;
            tracing::info!(
                successor_pid = pid,
                "upgrade: handed {} listeners to pid {pid}",
                fds.len()
            );
            next.wait_ready().await
        };
        match tokio::time::timeout_at(deadline, offered).await {
            Ok(Ok(())) => {
                // The path is free for the successor's own socket before it hears bye.
                drop(socket);
                upgrade::notify(&format!("MAINPID={pid}"));
                next.bye().await;
                return (pid, guard);
            }
            Ok(Err(e)) => {
                tracing::warn!(successor_pid = pid, reason = %format!("{e:#}"), "upgrade failed; the control plane resumes and this process serves as before");
            }
            Err(_) => {
                tracing::warn!(successor_pid = pid, timeout_s = upgrade::HANDOVER_TIMEOUT.as_secs(), "upgrade failed: the new process was not ready in time; the control plane resumes and this process serves as before");
            }
        }
        drop(guard);
    }
}

/// The version a connection to the upgrade socket says it runs, within 5 s; `None` (logged)
/// when it says nothing or not that.
async fn hello(next: &mut upgrade::Successor) -> Option<String> {
    match tokio::time::timeout(Duration::from_secs(5), next.hello()).await {
        Ok(Ok(v)) => Some(v),
        Ok(Err(e)) => {
            tracing::warn!(error = %format!("{e:#}"), "upgrade: no hand-over");
            None
        }
        Err(_) => {
            tracing::warn!("upgrade: a connection to the upgrade socket said nothing for 5 s");
            None
        }
    }
}

/// Opens the store, restores routing, marks interrupted releases, adopts processes and
/// reschedules pending scale-downs: the first writes of this process.
fn open_and_resume(config: Config) -> anyhow::Result<Controller> {
    if let Some(dir) = config.store.path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create the store folder {}", dir.display()))?;
    }
    let store = Store::open(&config.store.path)
        .with_context(|| format!("cannot open the store {}", config.store.path.display()))?;
    let ctl = Controller::build_with(config, store, Some(crate::fleet::hosts_driver))?;
    ctl.resume();
    Ok(ctl)
}

async fn futures_join(tasks: Vec<tokio::task::JoinHandle<()>>) {
    for t in tasks {
        let _ = t.await;
    }
}

async fn wait_for_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM; only Ctrl-C will stop cutover");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!(
        "stopping: no new connections; running requests and streams get the grace period; managed \
         model servers keep running (by design) and the next start adopts them"
    );
}

/// SIGHUP reloads the configuration (its default action would kill the process at once,
/// cutting every stream, and a closed SSH session sends it).
async fn reload_on_sighup(serving: Arc<Serving>) {
    let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGHUP; reload with `cutover reload` instead");
            return;
        }
    };
    while hup.recv().await.is_some() {
        tracing::info!("SIGHUP: reloading the configuration");
        // The outcome is logged and counted by the reload itself.
        let _ = serving.reload("signal:SIGHUP").await;
    }
}

/// Stops a background task when the server returns.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Serves the admin API with the limits the data plane has, through the data plane's own
/// accept loop: a header-read timeout (slow clients are cut; it bounds a TLS handshake too),
/// a connection cap, and a graceful stop.
async fn serve_admin(
    listener: TcpListener,
    app: axum::Router,
    stop: watch::Receiver<bool>,
    tls: Option<cutover_proxy::tls::TlsAcceptor>,
) {
    use cutover_proxy::accept::{self, Accept};
    let mut builder = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
    builder
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(ADMIN_HEADER_TIMEOUT)
        .max_buf_size(64 * 1024);
    let a = Accept {
        name: "admin".into(),
        stats: Arc::new(listener::ListenerStats::default()),
        shutdown: stop.clone(),
        grace: Duration::from_secs(5),
    };
    let mut conns = AdminConns {
        builder,
        app,
        tls,
        stop,
    };
    accept::serve(listener, &mut conns, a).await;
}

/// The admin listener's connections: hyper serving the API's router.
struct AdminConns {
    builder: hyper_util::server::conn::auto::Builder<hyper_util::rt::TokioExecutor>,
    app: axum::Router,
    tls: Option<cutover_proxy::tls::TlsAcceptor>,
    stop: watch::Receiver<bool>,
}

impl cutover_proxy::accept::Connections for AdminConns {
    fn refresh(&mut self) -> usize {
        ADMIN_MAX_CONNECTIONS
    }

    fn spawn(&mut self, stream: tokio::net::TcpStream, _: std::net::SocketAddr, held: cutover_proxy::accept::Held) {
        use cutover_proxy::accept::until_drained;
        use hyper_util::rt::TokioIo;
        let (builder, tls, stop) = (self.builder.clone(), self.tls.clone(), self.stop.clone());
        let svc = hyper_util::service::TowerToHyperService::new(self.app.clone());
        tokio::spawn(async move {
            let _held = held;
            // Told to finish at once on a stop: admin clients do not keep connections idle.
            let window = Duration::ZERO;
            match tls {
                Some(acceptor) => {
                    let Some(tls) = listener::handshake(&acceptor, stream, ADMIN_HEADER_TIMEOUT).await else {
                        return;
                    };
                    until_drained(builder.serve_connection(TokioIo::new(tls), svc), stop, window).await;
                }
                None => until_drained(builder.serve_connection(TokioIo::new(stream), svc), stop, window).await,
            }
        });
    }
}

/// A client must send a whole admin request head within this time.
const ADMIN_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Admin connections open at once; more wait in the listen backlog.
const ADMIN_MAX_CONNECTIONS: usize = 256;
