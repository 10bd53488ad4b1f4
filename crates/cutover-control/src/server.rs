//! `cutover serve`, sequenced as linkerd does it: the config is already validated (stage one,
//! no side effects), then every listener is bound (data plane, preview and admin), and only
//! then is the store opened and the previous state resumed, then everything serves until a
//! signal, then drains. A second `serve` started by mistake on the same config therefore
//! fails at the bind, before it has written anything into the live instance's store.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use cutover_config::Config;
use cutover_proxy::listener;
use cutover_store::Store;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::admin::{self, AdminState};
use crate::controller::Controller;
use crate::reload::Serving;
use crate::service::series::SAMPLE_EVERY;
use crate::service::BoundAddrs;
use crate::token;

pub struct ServeOptions {
    /// How long in-flight requests (streams included) may run on after SIGTERM.
    pub grace: Duration,
    /// Where to write the bound addresses (JSON) once everything serves; how tests and
    /// scripts find the ports of a config that says port 0.
    pub addresses_file: Option<PathBuf>,
}

/// What one `serve` bound, as written to `--addresses-file`.
#[derive(Debug, Clone, Serialize)]
pub struct Addresses {
    pub admin: SocketAddr,
    pub services: BTreeMap<String, BoundAddrs>,
}

/// Every listener of one `serve`, bound and not yet serving (stage two of start-up).
pub struct Listeners {
    admin: TcpListener,
    /// Per service: its live listener and, if configured, its preview listener.
    services: BTreeMap<String, (TcpListener, Option<TcpListener>)>,
}

impl Listeners {
    /// Binds the admin listener and every service's listeners; the first failure names the
    /// key whose address could not be bound.
    pub async fn bind(config: &Config) -> anyhow::Result<Listeners> {
        let admin = TcpListener::bind(config.admin.listen)
            .await
            .with_context(|| format!("cannot listen on admin.listen {}", config.admin.listen))?;
        let mut services = BTreeMap::new();
        for (name, svc) in &config.services {
            let live = listener::bind(svc.listen)
                .with_context(|| format!("cannot listen on services.{name}.listen {}", svc.listen))?;
            let preview = match svc.preview_listen {
                Some(p) => Some(
                    listener::bind(p)
                        .with_context(|| format!("cannot listen on services.{name}.preview_listen {p}"))?,
                ),
                None => None,
            };
            services.insert(name.clone(), (live, preview));
        }
        Ok(Listeners { admin, services })
    }

    /// The addresses actually bound (a configured port 0 is a real port here).
    pub fn addresses(&self) -> std::io::Result<Addresses> {
        let mut services = BTreeMap::new();
        for (name, (live, preview)) in &self.services {
            let addrs = BoundAddrs {
                listen: live.local_addr()?,
                preview_listen: preview.as_ref().map(TcpListener::local_addr).transpose()?,
            };
            services.insert(name.clone(), addrs);
        }
        Ok(Addresses {
            admin: self.admin.local_addr()?,
            services,
        })
    }
}

/// Runs until SIGINT or SIGTERM, then stops accepting and drains for up to `grace`.
pub async fn serve(config: Config, opts: ServeOptions) -> anyhow::Result<()> {
    serve_until(config, opts, wait_for_signal()).await
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
    let addresses = listeners.addresses()?;
    let token = token::Tokens::load(&config.admin)?;
    let config_admin_address_file = config.admin.address_file.clone();
    let fleet_config = config.store.fleet.clone();
    let ctl = Arc::new(open_and_resume(config)?);
    let _fleet = match fleet_config {
        Some(f) => Some(crate::fleet::join(ctl.clone(), &f, addresses.admin).await),
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
    let serving = Serving::new(ctl.clone(), opts.grace);
    for (name, (live, preview)) in listeners.services {
        let cfg = ctl
            .service(&name)
            .context("a bound service is in the controller")?
            .cfg();
        serving.start(&name, false, live, cfg.listen)?;
        if let (Some(p), Some(configured)) = (preview, cfg.preview_listen) {
            serving.start(&name, true, p, configured)?;
        }
    }
    let app = admin::router(AdminState::new(ctl.clone(), token).with_reload(serving.clone()));
    tracing::info!(listen = %addresses.admin, "admin API listening");
    tasks.push(tokio::spawn(serve_admin(listeners.admin, app, stop_rx.clone())));
    if let Some(path) = &config_admin_address_file {
        write_atomically(path, &format!("{}\n", addresses.admin))?;
    }
    if let Some(path) = &opts.addresses_file {
        write_atomically(path, &serde_json::to_string_pretty(&addresses)?)?;
        serving.set_addresses_file(path.clone(), addresses.admin);
    }
    let _reload_on_hup = AbortOnDrop(tokio::spawn(reload_on_sighup(serving.clone())));

    stop.await;
    tracing::info!(grace = ?opts.grace, "shutting down: no new connections; in-flight requests may finish");
    // Every receiver lives in a task we wait for below; none can have gone yet.
    stop_tx.send_replace(true);
    let all = async {
        tokio::join!(serving.shutdown(), futures_join(tasks));
    };
    if tokio::time::timeout(opts.grace + Duration::from_secs(1), all)
        .await
        .is_err()
    {
        tracing::warn!("grace period over with requests still running; exiting");
    }
    tracing::info!("stopped");
    Ok(())
}

/// Opens the store, restores routing, marks interrupted releases, adopts processes and
/// reschedules pending scale-downs: the first writes of this process.
fn open_and_resume(config: Config) -> anyhow::Result<Controller> {
    if let Some(dir) = config.store.path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create the store folder {}", dir.display()))?;
    }
    let store = Store::open(&config.store.path)
        .with_context(|| format!("cannot open the store {}", config.store.path.display()))?;
    let ctl = Controller::build(config, store)?;
    ctl.resume();
    Ok(ctl)
}

/// Writes a file of bound addresses with a rename, so a reader never sees half of one.
fn write_atomically(path: &Path, text: &str) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).with_context(|| format!("cannot write the addresses file {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write the addresses file {}", path.display()))?;
    Ok(())
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

/// Serves the admin API with the limits the data plane has: a header-read timeout (slow clients
/// are cut), a connection cap, and a graceful stop.
async fn serve_admin(listener: TcpListener, app: axum::Router, mut stop: watch::Receiver<bool>) {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    use hyper_util::server::conn::auto;
    use hyper_util::server::graceful::GracefulShutdown;
    use hyper_util::service::TowerToHyperService;

    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(ADMIN_HEADER_TIMEOUT)
        .max_buf_size(64 * 1024);
    let cap = Arc::new(tokio::sync::Semaphore::new(ADMIN_MAX_CONNECTIONS));
    let graceful = GracefulShutdown::new();
    loop {
        let permit = tokio::select! {
            p = cap.clone().acquire_owned() => p.expect("semaphore never closed"),
            _ = stop.changed() => break,
        };
        let (stream, _) = tokio::select! {
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
            _ = stop.changed() => break,
        };
        let conn = builder
            .serve_connection(TokioIo::new(stream), TowerToHyperService::new(app.clone()))
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            let _ = conn.await;
            drop(permit);
        });
    }
    drop(listener);
    let _ = tokio::time::timeout(Duration::from_secs(5), graceful.shutdown()).await;
}

/// A client must send a whole admin request head within this time.
const ADMIN_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Admin connections open at once; more wait in the listen backlog.
const ADMIN_MAX_CONNECTIONS: usize = 256;
