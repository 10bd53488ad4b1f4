//! The drain of an HTTP/2 client connection: streams in flight are counted, and once none is,
//! the connection takes no more and ends with one GOAWAY naming the last stream it served.
//!
//! Why not hyper's graceful shutdown: it sends a GOAWAY announcing every stream id, a PING,
//! and a second GOAWAY with the real last id once the PING comes back (RFC 9113 §6.8's
//! advice). A client built on python-h2 (httpx) takes any GOAWAY as the end of the
//! connection and fails on every frame after it: the PING, and the rest of a response still
//! on its way ("RECV_PING in state CLOSED"). One GOAWAY sent while nothing is in flight, with
//! the last stream id the service saw, is understood by every client: streams it opened past
//! that id were not processed, and go to a new connection (httpx does that on its own).

use std::sync::atomic::{AtomicU64, Ordering::AcqRel, Ordering::Acquire, Ordering::Relaxed};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

/// Set in [`H2Streams::state`] once the connection takes no more streams.
const CLOSED: u64 = 1 << 63;

/// The streams of one HTTP/2 client connection, for its drain.
pub(crate) struct H2Streams {
    /// Streams in flight (in the service, or their response body not finished), with
    /// `CLOSED` set once the connection takes no more.
    state: AtomicU64,
    /// Streams taken so far. A client numbers its streams 1, 3, 5...: the last one taken is
    /// `2 * taken - 1` (an id a client skipped only makes the GOAWAY's id lower, which
    /// tells it that nothing past that was processed: still true).
    taken: AtomicU64,
    /// True once the connection is gone. A stream refused after `CLOSED` waits for it, so
    /// its answer never reaches the client, which sends the request again elsewhere.
    gone: watch::Sender<bool>,
}

impl Default for H2Streams {
    fn default() -> Self {
        H2Streams {
            state: AtomicU64::new(0),
            taken: AtomicU64::new(0),
            gone: watch::Sender::new(false),
        }
    }
}

/// A stream's place in its connection's in-flight count, held until its response body ends.
pub(crate) struct StreamHold(Arc<H2Streams>);

impl Drop for StreamHold {
    fn drop(&mut self) {
        self.0.state.fetch_sub(1, AcqRel);
    }
}

impl H2Streams {
    /// A place for a new stream; None once the connection takes no more.
    pub(crate) fn enter(self: &Arc<Self>) -> Option<StreamHold> {
        if self.state.fetch_add(1, AcqRel) & CLOSED != 0 {
            self.state.fetch_sub(1, AcqRel);
            return None;
        }
        self.taken.fetch_add(1, Relaxed);
        Some(StreamHold(self.clone()))
    }

    /// Take no more streams, if none is in flight now.
    pub(crate) fn close_if_idle(&self) -> bool {
        self.state.compare_exchange(0, CLOSED, AcqRel, Acquire).is_ok()
    }

    /// Resolves once the connection is gone (or was never drained and ended).
    pub(crate) async fn gone(&self) {
        let mut rx = self.gone.subscribe();
        let _ = rx.wait_for(|g| *g).await;
    }

    pub(crate) fn set_gone(&self) {
        self.gone.send_replace(true);
    }

    fn last_stream_id(&self) -> u32 {
        (self.taken.load(Acquire) * 2).saturating_sub(1).min(i32::MAX as u64) as u32
    }
}

/// A GOAWAY frame (RFC 9113 §6.8): NO_ERROR, `last` the highest stream id processed.
fn goaway(last: u32) -> [u8; 17] {
    let mut f = [0u8; 17];
    f[2] = 8; // length
    f[3] = 0x7; // type GOAWAY; flags 0, stream 0
    f[9..13].copy_from_slice(&(last & 0x7fff_ffff).to_be_bytes());
    f
}

/// After hyper let go of the connection (nothing in flight, nothing left to write): one
/// GOAWAY on `socket` (a second handle on the client's socket), then the close. What the
/// client still sends is read and dropped for up to a second, so the close is a FIN after
/// the GOAWAY and not a reset that could destroy it.
pub(crate) async fn goaway_and_close(socket: std::net::TcpStream, streams: &H2Streams) {
    let Ok(mut s) = TcpStream::from_std(socket) else {
        return;
    };
    if s.write_all(&goaway(streams.last_stream_id())).await.is_err() {
        return;
    }
    let _ = s.shutdown().await;
    let mut sink = [0u8; 4096];
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), async {
        while let Ok(n) = s.read(&mut sink).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_closes_only_with_nothing_in_flight_and_names_the_last_stream() {
        let s = Arc::new(H2Streams::default());
        assert_eq!(s.last_stream_id(), 0);
        let a = s.enter().unwrap();
        let b = s.enter().unwrap();
        assert!(!s.close_if_idle(), "two streams in flight");
        drop(a);
        assert!(!s.close_if_idle(), "one stream in flight");
        drop(b);
        assert!(s.close_if_idle());
        assert!(s.enter().is_none(), "a closed connection takes no stream");
        assert_eq!(s.last_stream_id(), 3, "streams 1 and 3 were taken");
        assert_eq!(goaway(3), [0, 0, 8, 7, 0, 0, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 0]);
    }
}
