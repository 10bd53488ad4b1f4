//! `cutover serve`: binds every listener first (failing before serving anything), then runs
//! the data plane, the admin API and the controller until a signal, then drains.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use cutover_config::Config;
use cutover_proxy::forward::Forwarder;
use cutover_proxy::listener::{self, ListenerStats};
use cutover_store::Store;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::admin::{self, AdminState};
use crate::controller::Controller;
use crate::token;

pub struct ServeOptions {
    /// How long in-flight requests (streams included) may run on after SIGTERM.
    pub grace: Duration,
}

/// Runs until SIGINT or SIGTERM, then stops accepting and drains for up to `grace`.
pub async fn serve(config: Config, opts: ServeOptions) -> anyhow::Result<()> {
    serve_until(config, opts, wait_for_signal()).await
}

/// Runs until `stop` resolves, then stops accepting and drains for up to `grace`.
pub async fn serve_until(
    config: Config,
    opts: ServeOptions,
    stop: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let token = token::load_or_create(&config.admin.token_file)?;
    if let Some(dir) = config.store.path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create the store folder {}", dir.display()))?;
    }
    let store = Store::open(&config.store.path)
        .with_context(|| format!("cannot open the store {}", config.store.path.display()))?;
    let ctl = Arc::new(Controller::build(config.clone(), store)?);
    ctl.resume();
    let sampler = ctl.clone();
    let sampling = tokio::spawn(async move {
        let mut tick = tokio::time::interval(crate::controller::SAMPLE_EVERY);
        loop {
            tick.tick().await;
            sampler.sample();
        }
    });
    let _sampling = AbortOnDrop(sampling);

    let admin_listener = TcpListener::bind(config.admin.listen)
        .await
        .with_context(|| format!("cannot listen on admin.listen {}", config.admin.listen))?;
    let mut data = Vec::new();
    for svc in ctl.services.values() {
        let l = cutover_proxy::listener::bind(svc.cfg.listen)
            .with_context(|| format!("cannot listen on services.{}.listen {}", svc.cfg.name, svc.cfg.listen))?;
        data.push((l, svc.clone(), false));
        if let Some(p) = svc.cfg.preview_listen {
            let l = cutover_proxy::listener::bind(p)
                .with_context(|| format!("cannot listen on services.{}.preview_listen {p}", svc.cfg.name))?;
            data.push((l, svc.clone(), true));
        }
    }

    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = Vec::new();
    for (l, svc, preview) in data {
        tracing::info!(
            service = %svc.cfg.name,
            listen = %l.local_addr()?,
            kind = if preview { "preview" } else { "live" },
            "data plane listening"
        );
        let fwd = Arc::new(Forwarder::new(svc.proxy.clone(), preview));
        tasks.push(tokio::spawn(listener::serve(
            l,
            fwd,
            Arc::new(ListenerStats::default()),
            stop_rx.clone(),
            opts.grace,
        )));
    }
    let app = admin::router(AdminState::new(ctl.clone(), token));
    tracing::info!(listen = %admin_listener.local_addr()?, "admin API listening");
    tasks.push(tokio::spawn(serve_admin(admin_listener, app, stop_rx.clone())));

    stop.await;
    tracing::info!(grace = ?opts.grace, "shutting down: no new connections; in-flight requests may finish");
    let _ = stop_tx.send(true);
    let all = futures_join(tasks);
    if tokio::time::timeout(opts.grace + Duration::from_secs(1), all)
        .await
        .is_err()
    {
        tracing::warn!("grace period over with requests still running; exiting");
    }
    tracing::info!("stopped");
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
