//! The HTTP/1.1 fast path: a client connection proxied to HTTP/1.1 upstreams by one task,
//! without hyper's server and client state machines in between.
//!
//! Why it exists: with hyper on both sides, a request went through two HTTP/1 state
//! machines, a channel hop to the upstream connection's task and back, a `HeaderMap` built
//! and torn down twice, and every idle keep-alive connection kept hyper's read and write
//! buffers (10-19 KiB each). Here the request head is parsed once with `httparse` and
//! rewritten straight into the upstream's head, bodies are copied between sockets from
//! pooled buffers, and an idle connection holds no buffer at all.
//!
//! Both engines run the same request lifecycle (`crate::exchange`): routing with one atomic
//! load per request, per-color statistics and in-flight guard, the retry rule, JSON errors,
//! limits and timeouts, SSE error events, and the drain deadline. HTTP/2 clients (prior
//! knowledge) are detected on the first bytes and handed to hyper; h2c upstreams use the hyper
//! engine for every client.
//!
//! # Layout
//! - `client`: the client connection: request heads, refusals, one exchange per request.
//! - `send`: the request to an upstream (this engine's attempt for `Exchange::attempts`, the
//!   rest of the body) and the response head back.
//! - `relay`: the response body to the client, and the proxy's own errors on the wire.
//! - `request`, `response`: the two heads, parsed and rewritten in one pass.
//! - `chunked`: the strict chunked decoder and the proxy's own chunks.
//! - `pick`: on a shared listener, the service of each request (head or body's first bytes).
//! - `buf`: pooled buffers; `io`: socket waits that hold no buffer.
//! - `fuzz` (tests and `cfg(fuzzing)` only): the invariants the fuzzer checks.

mod buf;
mod chunked;
mod client;
#[cfg(any(test, fuzzing))]
pub(crate) mod fuzz;
mod io;
mod pick;
mod relay;
mod request;
mod response;
mod send;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::error::ProxyError;
use crate::exchange::Forwarder;
use client::{ClientConn, Stop};

pub(crate) use buf::h2_preface;

/// How a message body is delimited on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum Framing {
    #[default]
    None,
    Length(u64),
    Chunked,
    /// Until the sender closes (responses only).
    Close,
}

/// Why an exchange stopped without an answer from upstream (what may be tried again is
/// [`crate::exchange::Failed`]'s).
#[derive(Debug)]
pub(crate) enum Fail {
    /// The client went away while its request was pending.
    ClientGone,
    Proxy(ProxyError),
}

impl From<ProxyError> for Fail {
    fn from(e: ProxyError) -> Fail {
        Fail::Proxy(e)
    }
}

/// What becomes of the client connection after an exchange.
pub(crate) enum After {
    KeepAlive,
    Close,
    /// Close after reading what the client still sends for a while, so the error response
    /// is not destroyed by a reset (unread data at close makes the kernel send RST).
    LingerClose,
}

/// The values of every `Connection` line of a head (read twice: for its tokens, and again
/// for the names when more were listed than fit).
fn connection_lines<'h>(headers: &'h [httparse::Header<'_>]) -> impl Iterator<Item = &'h [u8]> + Clone {
    headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("connection"))
        .map(|h| h.value)
}

/// Append one header line.
fn header_line(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// A client connection of this engine, from accept to close.
pub(crate) struct Connection(ClientConn);

impl Connection {
    pub(crate) fn new(
        client: TcpStream,
        peer: SocketAddr,
        fwd: Arc<Forwarder>,
        shutdown: watch::Receiver<bool>,
    ) -> Connection {
        Connection(ClientConn::new(client, peer, fwd, shutdown))
    }

    /// Serve requests until the connection closes or the listener shuts down (false), or
    /// until it turns out to be HTTP/2 (prior knowledge): true, and [`Self::into_parts`]
    /// gives its first bytes, to be replayed to hyper.
    ///
    /// It borrows the connection rather than taking it: a future that owns what it is given
    /// keeps room for it even once moved, and this one is what every idle connection's task
    /// holds.
    pub(crate) async fn serve(&mut self) -> bool {
        let c = &mut self.0;
        let mut first = true;
        loop {
            // What comes next is boxed before any await, out of the task's own state: the
            // exchange (timers, both sockets' futures: several KiB) or a refusal. Bound in
            // this scope, the head would keep a place in every idle connection's task.
            let next: Pin<Box<dyn Future<Output = After> + Send + '_>> = match c.read_head(first).await {
                Ok((head, out)) => Box::pin(c.exchange(head, out)),
                Err(Stop::Closed) => return false,
                Err(Stop::Http2) => return true,
                Err(Stop::Refuse(e)) => Box::pin(async {
                    c.refuse(e, None).await;
                    After::LingerClose
                }),
            };
            first = false;
            match next.await {
                After::KeepAlive => {}
                After::Close => return false,
                After::LingerClose => {
                    Box::pin(crate::accept::linger(&mut c.client)).await;
                    return false;
                }
            }
            // A drain that began after this answer's head went out (it said keep-alive) does
            // not close the connection here: the client may already be sending its next
            // request, which `read_head` waits for and which is answered with `Connection:
            // close`. Idle connections hold no buffer.
            c.inbuf.release();
        }
    }

    /// The socket, the bytes read from it, and what hyper needs to go on with it (HTTP/2).
    pub(crate) fn into_parts(self) -> (TcpStream, Vec<u8>, SocketAddr, Arc<Forwarder>, watch::Receiver<bool>) {
        let c = self.0;
        let pre = c.inbuf.bytes().to_vec();
        (c.client, pre, c.peer, c.fwd, c.shutdown)
    }
}
