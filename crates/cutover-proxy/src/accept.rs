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
use tokio::sync::{mpsc, watch, Semaphore};

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

/// A cap on open connections, and what every connection under it shares. A reload that
/// changes the cap makes a new one; connections keep theirs until they close.
struct Cap {
    places: Semaphore,
    stats: Arc<ListenerStats>,
    /// Dropped with the last connection under this cap: the drain waits for every sender.
    _drain: mpsc::Sender<()>,
}

/// One open connection: its place under the cap and in the gauge, and the drain's wait.
/// One pointer, as every connection's task holds it for as long as it lives.
pub struct Held(Arc<Cap>);

impl Held {
    /// Take a place now, or None if the cap is reached.
    fn try_take(cap: &Arc<Cap>) -> Option<Held> {
        cap.places.try_acquire().ok()?.forget();
        Some(Held(cap.clone()))
    }

    async fn take(cap: &Arc<Cap>) -> Held {
        cap.places.acquire().await.expect("semaphore never closed").forget();
        Held(cap.clone())
    }
}

#[cfg(test)]
impl Held {
    /// A place under a cap of one, for tests of what a connection's task holds.
    pub(crate) fn for_test() -> Held {
        let (tx, _) = mpsc::channel(1);
        let cap = Arc::new(Cap {
            places: Semaphore::new(1),
            stats: Arc::default(),
            _drain: tx,
        });
        Held::try_take(&cap).expect("one place")
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.0.stats.open.fetch_sub(1, Relaxed);
        self.0.places.add_permits(1);
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
    let new_cap = |max| {
        Arc::new(Cap {
            places: Semaphore::new(max),
            stats: a.stats.clone(),
            _drain: drain_tx.clone(),
        })
    };
    let mut max = conns.refresh();
    let mut cap = new_cap(max);
    let addr = listener.local_addr().ok();
    loop {
        // The connections open before a new cap hold places under the old one, counted
        // apart from the new one until they close (for at most their lifetime, the two caps
        // add up).
        let now = conns.refresh();
        if now != max {
            (max, cap) = (now, new_cap(now));
        }
        let Some(held) = next_place(&cap, max, &a, addr).await else {
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
        conns.spawn(stream, peer, held);
    }
    drop(listener);
    drop(cap);
    drop(drain_tx);
    if tokio::time::timeout(a.grace, drain_rx.recv()).await.is_err() {
        tracing::warn!(listener = %a.name, address = ?addr, "grace period over: closing connections still open");
    }
}

/// A place under the cap, waiting (new connections stay in the listen backlog) while it is
/// reached. None: shutdown came first.
async fn next_place(cap: &Arc<Cap>, max: usize, a: &Accept, addr: Option<SocketAddr>) -> Option<Held> {
    if let Some(h) = Held::try_take(cap) {
        return Some(h);
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
        h = Held::take(cap) => Some(h),
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

/// Half-close, then read and drop what the client still sends until it closes, goes quiet
/// for a second, or five seconds have passed (nginx's lingering close, with shorter times).
///
/// For a connection closed with part of a request unread (a body past its limit, a refused
/// head): closing with unread bytes makes the kernel answer them with a reset, which can
/// destroy the response before the client reads it, and a client still uploading (curl
/// stops once it sees the answer) needs time, not a byte count. The connection keeps its
/// place under the cap meanwhile.
pub(crate) async fn linger(stream: &mut TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _ = stream.shutdown().await;
    let mut sink = [0u8; 4096];
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match tokio::time::timeout(Duration::from_secs(1), stream.read(&mut sink)).await {
                Ok(Ok(n)) if n > 0 => {}
                _ => break,
            }
        }
    })
    .await;
}

/// [`linger`] on the second handle of a socket that hyper let go of, if the client's bytes
/// are waiting unread (hyper closes a connection whose request body was not read to its
/// end); a socket with nothing unread closes at once.
pub(crate) async fn linger_if_unread(spare: std::net::TcpStream) {
    let mut one = [0u8; 1];
    // The handle shares the socket's non-blocking mode: nothing unread is WouldBlock.
    if !matches!(spare.peek(&mut one), Ok(n) if n > 0) {
        return;
    }
    if let Ok(mut stream) = TcpStream::from_std(spare) {
        linger(&mut stream).await;
    }
}
