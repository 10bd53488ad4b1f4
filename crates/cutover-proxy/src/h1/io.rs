//! Socket waits of the HTTP/1.1 engine, written so that a connection waiting on one holds
//! no buffer and registers no timer it does not need.

use std::future::Future;
use std::io;
use std::pin::{pin, Pin};
use std::task::{Context, Poll, Waker};

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::{sleep_until, Instant as Deadline, Sleep};

use super::buf::Buf;

/// An upstream connection of this engine: a plain socket from the endpoint's pool.
pub(super) struct UpstreamSocket {
    pub(super) stream: TcpStream,
    /// Taken from the pool (it may have died while idle), not opened for this request.
    pub(super) reused: bool,
}

/// Poll once without registering interest: the fast path when the socket is already ready.
pub(super) fn poll_now<F: Future>(f: Pin<&mut F>) -> Poll<F::Output> {
    f.poll(&mut Context::from_waker(Waker::noop()))
}

/// Readiness through the socket's own reader slot: `TcpStream::readable` goes through a
/// waiter list behind a lock, measurably dearer on a path taken twice per request.
pub(super) fn read_ready(s: &TcpStream) -> impl Future<Output = io::Result<()>> + '_ {
    std::future::poll_fn(move |cx| s.poll_read_ready(cx))
}

pin_project_lite::pin_project! {
    /// Resolves when `s` is readable (true) or the deadline passes (false): where an idle
    /// keep-alive connection spends its time. Written out, not with `select!` or an async
    /// block, whose bookkeeping (a copy of the deadline, pinned pointers, the select's
    /// state) every idle connection's task would hold: this is the socket reference and the
    /// timer, nothing else.
    ///
    /// A drain does not end this wait. Closed at once, an idle connection would meet the
    /// request a client may be sending on it right then (a reset, and a POST the client
    /// cannot know whether to send again); it stays open for the rest of its idle time (the
    /// drain window, within the listener's grace), and a request that comes is answered
    /// with `Connection: close`.
    pub(super) struct ReadableBy<'a> {
        s: &'a TcpStream,
        #[pin]
        sleep: Sleep,
    }
}

impl<'a> ReadableBy<'a> {
    pub(super) fn new(s: &'a TcpStream, deadline: Deadline) -> ReadableBy<'a> {
        ReadableBy {
            s,
            sleep: sleep_until(deadline),
        }
    }
}

impl Future for ReadableBy<'_> {
    type Output = bool;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<bool> {
        let this = self.project();
        match this.s.poll_read_ready(cx) {
            Poll::Ready(r) => Poll::Ready(r.is_ok()),
            Poll::Pending => this.sleep.poll(cx).map(|()| false),
        }
    }
}

/// Resolves when the client has closed its side (data it sends meanwhile is kept in `inbuf`:
/// a pipelined next request).
pub(super) async fn client_gone(client: &mut TcpStream, inbuf: &mut Buf, max: usize) {
    loop {
        if read_ready(client).await.is_err() {
            return;
        }
        if !inbuf.reserve(max) {
            // Full of pipelined requests: stop watching; the response still goes out.
            std::future::pending::<()>().await;
        }
        match client.try_read_buf(&mut inbuf.data) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(_) => return,
        }
    }
}

/// Resolves once the watched flag is true (shutdown, or a color closed at its drain deadline).
pub(super) async fn wait_true(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

/// Write all of `b`, giving up at `deadline` (a client that stops reading).
pub(super) async fn write_by(s: &mut TcpStream, b: &[u8], deadline: Deadline) -> Result<(), ()> {
    let mut fut = pin!(s.write_all(b));
    match poll_now(fut.as_mut()) {
        Poll::Ready(r) => r.map_err(|_| ()),
        Poll::Pending => tokio::select! {
            biased;
            r = fut => r.map_err(|_| ()),
            _ = sleep_until(deadline) => Err(()),
        },
    }
}
