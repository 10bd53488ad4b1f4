//! The one accept loop of every listener in the process, the data plane's and the admin
//! API's: a connection cap under which new clients wait in the listen backlog, one gauge of
//! open connections, and one drain.
//!
//! Each connection holds a [`Held`] for as long as it lives (its place under the cap, its
//! place in the gauge, and a handle the drain waits for), however its task ends. The drain
//! is that wait, bounded by the grace period; a hyper connection is told to finish through
//! [`until_drained`].

use std::net::SocketAddr;
use std::pin::pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use hyper_util::server::graceful::GracefulConnection;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};

/// Counters of one listener, for metrics and logs.
#[derive(Default)]
pub struct ListenerStats {
    pub accepted: AtomicU64,
    pub open: AtomicU64,
    /// Times the accept loop waited because `max_connections` were open.
    pub at_cap: AtomicU64,
    /// TLS connections that closed before their handshake completed (timeout, plain HTTP,
    /// a refused protocol version, a client that did not trust the certificate).
    pub tls_handshake_failed: AtomicU64,
}

/// What a listener does with the connections it accepts.
pub trait Connections {
    /// Called before each accept: the cap on open connections now (a reload may have
    /// changed it, and with it how connections are served).
    fn refresh(&mut self) -> usize;

    /// Serve one connection in a task of its own, which keeps `held` until the connection
    /// ends.
    fn spawn(&mut self, stream: TcpStream, peer: SocketAddr, held: Held);
}

/// One open connection: its place under the cap and in the gauge, and the drain's wait.
pub struct Held {
    stats: Arc<ListenerStats>,
    _permit: OwnedSemaphorePermit,
    _drain: mpsc::Sender<()>,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.stats.open.fetch_sub(1, Relaxed);
    }
}

/// How a listener runs, apart from what it serves.
pub struct Accept {
    /// For logs: the service's name, or `admin`.
    pub name: String,
    pub stats: Arc<ListenerStats>,
    /// Turns true when the listener stops accepting and drains.
    pub shutdown: watch::Receiver<bool>,
    /// How long open connections get to finish once it drains.
    pub grace: Duration,
}

/// Accept connections on `listener` for `conns` until `shutdown` turns true, then stop
/// accepting and wait (at most `grace`) for the open connections to end.
pub async fn serve(listener: TcpListener, conns: &mut impl Connections, mut a: Accept) {
    let (drain_tx, mut drain_rx) = mpsc::channel::<()>(1);
    let mut max = conns.refresh();
    let mut cap = Arc::new(Semaphore::new(max));
    let addr = listener.local_addr().ok();
    loop {
        // The connections open before a new cap hold places under the old one, counted
        // apart from the new one until they close (for at most their lifetime, the two caps
        // add up).
        let now = conns.refresh();
        if now != max {
            (max, cap) = (now, Arc::new(Semaphore::new(now)));
        }
        let Some(permit) = next_permit(&cap, max, &a, addr).await else {
            break;
        };
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(e) => {
                    // EMFILE and friends: back off rather than spin on the error.
                    tracing::warn!(listener = %a.name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
            _ = a.shutdown.changed() => break,
        };
        let _ = stream.set_nodelay(true);
        a.stats.accepted.fetch_add(1, Relaxed);
        a.stats.open.fetch_add(1, Relaxed);
        let held = Held {
            stats: a.stats.clone(),
            _permit: permit,
            _drain: drain_tx.clone(),
        };
        conns.spawn(stream, peer, held);
    }
    drop(listener);
    drop(drain_tx);
    if tokio::time::timeout(a.grace, drain_rx.recv()).await.is_err() {
        tracing::warn!(listener = %a.name, address = ?addr, "grace period over: closing connections still open");
    }
}

/// A place under the cap, waiting (new connections stay in the listen backlog) while it is
/// reached. None: shutdown came first.
async fn next_permit(
    cap: &Arc<Semaphore>,
    max: usize,
    a: &Accept,
    addr: Option<SocketAddr>,
) -> Option<OwnedSemaphorePermit> {
    if let Ok(p) = cap.clone().try_acquire_owned() {
        return Some(p);
    }
    // Logged at the first wait and every 1000th after, not once per waiting connection.
    let waits = a.stats.at_cap.fetch_add(1, Relaxed);
    if waits % 1000 == 0 {
        tracing::warn!(
            listener = %a.name,
            address = ?addr,
            max_connections = max,
            "connection cap reached: new connections wait in the listen backlog until one closes"
        );
    }
    let mut shutdown = a.shutdown.clone();
    tokio::select! {
        p = cap.clone().acquire_owned() => Some(p.expect("semaphore never closed")),
        _ = shutdown.changed() => None,
    }
}

/// Run a hyper connection until it ends. Once the listener drains, it has `window` to close
/// by itself (an HTTP/1.1 answer then says `Connection: close`: closed at once, an idle
/// connection would meet the request a client may be sending on it right then); after
/// that it is told to finish what it is doing and close.
pub async fn until_drained<C: GracefulConnection>(conn: C, mut shutdown: watch::Receiver<bool>, window: Duration) {
    let mut conn = pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => return,
        _ = shutdown.wait_for(|s| *s) => {}
    }
    if !window.is_zero() {
        tokio::select! {
            _ = conn.as_mut() => return,
            _ = tokio::time::sleep(window) => {}
        }
    }
    conn.as_mut().graceful_shutdown();
    let _ = conn.await;
}
