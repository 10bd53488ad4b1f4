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

use std::net::SocketAddr;
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

/// How a connection ended.
pub(crate) enum Outcome {
    Closed,
    /// The client speaks HTTP/2 (prior knowledge): its first bytes, to be replayed to hyper.
    Http2(TcpStream, Vec<u8>),
}

/// Serve one client connection until it closes, the listener shuts down, or it turns out
/// to be HTTP/2.
pub(crate) async fn serve_connection(
    client: TcpStream,
    peer: SocketAddr,
    fwd: Arc<Forwarder>,
    shutdown: watch::Receiver<bool>,
) -> Outcome {
    let mut c = ClientConn::new(client, peer, fwd, shutdown);
    let mut first = true;
    loop {
        let (head, out) = match c.read_head(first).await {
            Ok(h) => h,
            Err(Stop::Closed) => return Outcome::Closed,
            Err(Stop::Http2) => {
                let pre = c.inbuf.bytes().to_vec();
                return Outcome::Http2(c.client, pre);
            }
            Err(Stop::Refuse(e)) => {
                Box::pin(async {
                    c.refuse(e, None).await;
                    c.linger().await;
                })
                .await;
                return Outcome::Closed;
            }
        };
        first = false;
        // Boxed: the exchange's state (timers, both sockets' futures) is several KiB, and an
        // idle connection's task would otherwise carry it while it waits for a request.
        match Box::pin(c.exchange(head, out)).await {
            After::KeepAlive => {}
            After::Close => return Outcome::Closed,
            After::LingerClose => {
                Box::pin(c.linger()).await;
                return Outcome::Closed;
            }
        }
        // A drain that began after this answer's head went out (it said keep-alive) does
        // not close the connection here: the client may already be sending its next request,
        // which `read_head` waits for and which is answered with `Connection: close`.
        // Idle connections hold no buffer.
        c.inbuf.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route::{RouteTable, Service};
    use crate::settings::ServiceSettings;

    #[tokio::test]
    async fn a_connection_task_is_small() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let svc = Service::new("t", ServiceSettings::default(), RouteTable::default());
        let fwd = Arc::new(Forwarder::new(svc, false));
        let (_tx, rx) = watch::channel(false);
        let peer = client.local_addr().unwrap();
        let fut = serve_connection(client, peer, fwd, rx);
        // What every open connection costs while it waits for its next request (plus the
        // socket's registration): hyper's connections kept 10-19 KiB of buffers instead.
        let size = std::mem::size_of_val(&fut);
        assert!(size <= 1024, "the connection future grew to {size} bytes");
    }
}
