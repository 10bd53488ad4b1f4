//! Test fixtures: a tiny model server, a temporary store, a controller over both.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

use crate::controller::Controller;
use crate::release::ReleaseDoc;

/// A model server that answers every path with 200 and its version, on port 0.
pub(super) struct TinyServer {
    pub(super) addr: SocketAddr,
    /// Requests it answered (health probes included).
    pub(super) hits: Arc<AtomicU64>,
}

impl TinyServer {
    pub(super) async fn start(version: &'static str) -> TinyServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicU64::new(0));
        let counter = hits.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let counter = counter.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |_req| {
                        counter.fetch_add(1, Relaxed);
                        let body = format!(r#"{{"object":"chat.completion","model":"{version}"}}"#);
                        async move { Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from(body)))) }
                    });
                    let _closed = http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
                });
            }
        });
        TinyServer { addr, hits }
    }
}

/// A folder removed when dropped.
pub(super) struct TempDir(pub(super) PathBuf);

impl TempDir {
    pub(super) fn new(tag: &str) -> TempDir {
        static N: AtomicU64 = AtomicU64::new(0);
        let p = std::env::temp_dir().join(format!(
            "cutover-control-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Relaxed)
        ));
        let _fresh = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _gone = std::fs::remove_dir_all(&self.0);
    }
}

/// A controller for one static service `chat` (blue v1, green v2) in `dir`, with `release`
/// as the body of `[services.chat.release]` and its sub-tables.
pub(super) fn controller(dir: &TempDir, blue: SocketAddr, green: SocketAddr, release: &str) -> Arc<Controller> {
    let text = format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n[store]\npath = \"cutover.db\"\n\
         [services.chat]\nlisten = \"127.0.0.1:0\"\nhealth = {{ interval = \"1s\", timeout = \"1s\" }}\n\
         [services.chat.blue]\nendpoints = [\"{blue}\"]\nversion = \"v1\"\n\
         [services.chat.green]\nendpoints = [\"{green}\"]\nversion = \"v2\"\n\
         [services.chat.release]\n{release}\n"
    );
    let config = cutover_config::parse(&dir.0.join("cutover.toml"), &text).unwrap();
    let store = cutover_store::Store::open(&config.store.path).unwrap();
    Arc::new(Controller::build(config, store).unwrap())
}

/// The history kinds of `chat`, newest first, as the store has them.
pub(super) async fn kinds(ctl: &Controller) -> Vec<String> {
    ctl.history("chat", 100)
        .await
        .unwrap()
        .iter()
        .map(|h| h.kind.to_string())
        .collect()
}

/// Waits (in paused time) for release `id` to end; returns the stored document.
pub(super) async fn wait_end(ctl: &Controller, id: i64) -> ReleaseDoc {
    let waiting = async {
        while ctl.active_release_doc("chat").is_some() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(24 * 3600), waiting)
        .await
        .expect("the release ends within a (virtual) day");
    ctl.release_doc("chat", id).await.unwrap()
}
