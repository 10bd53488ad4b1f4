//! Serves a data-plane listener's connections, accepted, capped and drained by
//! [`crate::accept`]: HTTP/1.1 and HTTP/2 (h2c prior knowledge, or ALPN `h2` over TLS), each
//! connection on the engine it takes.
//!
//! A TLS listener's connections all take the hyper engine: the own HTTP/1.1 engine (`h1`)
//! works on `TcpStream` readiness and never sees decrypted bytes.

use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;

type H2Builder = hyper::server::conn::http2::Builder<TokioExecutor>;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::accept::{self, Accept, Connections, Held};
use crate::forward::Forwarder;
use crate::h1;
use crate::h2drain::H2Streams;
use crate::settings::{Http1Engine, Protocol, ServiceSettings};
use crate::tls::TlsAcceptor;

pub use crate::accept::ListenerStats;

/// Connections the kernel may queue for a listener before it drops SYNs. A burst of new
/// clients (hundreds of streams opened at once) must wait in this queue, not be dropped: a
/// dropped SYN costs the client a 1 s retransmit. The kernel caps it at `net.core.somaxconn`.
pub const BACKLOG: u32 = 4096;

/// A data-plane listener with a deep accept queue (`TcpListener::bind` gives 128).
pub fn bind(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

/// The HTTP/2 settings of both hyper builders (the auto one for h2c-upstream services, the
/// plain one for clients the HTTP/1.1 engine hands over): different types, the same values.
macro_rules! h2_settings {
    ($b:expr, $settings:expr) => {
        $b.timer(TokioTimer::new())
            .max_header_list_size($settings.max_header_bytes.min(u32::MAX as usize) as u32)
            .max_concurrent_streams(1024)
            // A model can think for minutes before its first token: no idle limit on
            // streams, but dead peers are found with pings.
            .keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(20))
    };
}

/// How one listener serves its connections.
struct Engines {
    /// hyper for HTTP/1.1 and HTTP/2 (services with h2c upstreams, TLS clients, or the escape
    /// hatch). Shared with the tasks that finish TLS handshakes.
    auto: Arc<auto::Builder<TokioExecutor>>,
    /// hyper for HTTP/2 clients the HTTP/1.1 engine recognised.
    h2: Arc<H2Builder>,
    /// HTTP/1.1 clients of HTTP/1.1 upstreams take the own engine (see `h1`).
    fast: bool,
}

impl Engines {
    fn new(settings: &ServiceSettings) -> Engines {
        let mut auto = auto::Builder::new(TokioExecutor::new());
        auto.http1()
            .timer(TokioTimer::new())
            .header_read_timeout(settings.header_read_timeout)
            .max_buf_size(settings.max_header_bytes.max(8192))
            .keep_alive(true);
        h2_settings!(auto.http2(), settings);
        let mut h2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        h2_settings!(h2, settings);
        // The own engine dials plain `TcpStream`s: TLS upstreams take hyper.
        let fast = settings.protocol == Protocol::Http1
            && settings.upstream_tls.is_none()
            && settings.http1_engine == Http1Engine::Own;
        Engines {
            auto: Arc::new(auto),
            h2: Arc::new(h2),
            fast,
        }
    }
}

/// Serves `listener` until `shutdown` turns true, then stops accepting and gives open
/// connections up to `grace` to finish their requests (streams included). With `tls`, every
/// connection is a TLS one, its handshake bounded by the service's `header_read_timeout`.
pub async fn serve(
    listener: TcpListener,
    fwd: Arc<Forwarder>,
    stats: Arc<ListenerStats>,
    shutdown: watch::Receiver<bool>,
    grace: Duration,
    tls: Option<TlsAcceptor>,
) {
    let settings = fwd.service.settings();
    let accept = Accept {
        name: fwd.service.name.clone(),
        stats: stats.clone(),
        shutdown: shutdown.clone(),
        grace,
    };
    let mut plane = Plane {
        engines: Engines::new(&settings),
        settings,
        fwd,
        tls,
        stats,
        shutdown,
        grace,
    };
    accept::serve(listener, &mut plane, accept).await;
}

/// A data-plane listener's connections, served by the engine each one takes.
struct Plane {
    fwd: Arc<Forwarder>,
    /// The settings `engines` were made for: a reload gives the service new ones, and
    /// connections from then on get them.
    settings: Arc<ServiceSettings>,
    engines: Engines,
    tls: Option<TlsAcceptor>,
    stats: Arc<ListenerStats>,
    shutdown: watch::Receiver<bool>,
    grace: Duration,
}

impl Connections for Plane {
    fn refresh(&mut self) -> usize {
        let now = self.fwd.service.settings();
        if !Arc::ptr_eq(&now, &self.settings) {
            self.engines = Engines::new(&now);
            self.settings = now;
        }
        self.settings.max_connections
    }

    fn spawn(&mut self, stream: TcpStream, peer: std::net::SocketAddr, held: Held) {
        let (fwd, shutdown) = (self.fwd.clone(), self.shutdown.clone());
        // An idle hyper HTTP/1.1 connection's time to close by itself once the listener
        // drains: an idle connection's own timeout, within the grace period.
        let window = self.settings.header_read_timeout.min(self.grace);
        if let Some(acceptor) = &self.tls {
            // The handshake runs in the connection's task (a slow client holds only its own
            // place under the cap), and the drain waits for it too.
            let (acceptor, auto) = (acceptor.clone(), self.engines.auto.clone());
            let (stats, timeout) = (self.stats.clone(), self.settings.header_read_timeout);
            tokio::spawn(async move {
                let _held = held;
                let Ok((stream, spare)) = second_handle(stream) else {
                    return;
                };
                let Some(tls) = handshake(&acceptor, stream, timeout).await else {
                    stats.tls_handshake_failed.fetch_add(1, Relaxed);
                    return;
                };
                serve_hyper(&auto, tls, spare, fwd, peer, true, shutdown, window).await;
            });
            return;
        }
        if self.engines.fast {
            let conn = h1::Connection::new(stream, peer, fwd, shutdown);
            tokio::spawn(fast_connection(conn, held, self.engines.h2.clone()));
            return;
        }
        let conn = HyperConn {
            fwd,
            peer,
            shutdown,
            timeout: self.settings.header_read_timeout,
            window,
        };
        tokio::spawn(conn.serve(&self.engines, held, stream));
    }
}

/// A plain-TCP client connection on the own HTTP/1.1 engine (HTTP/2 clients go on to hyper).
///
/// This future is what every open connection's task holds, idle ones included, so it is
/// kept small (`fast_connection_task_is_small`): it borrows the connection for the HTTP/1.1
/// part, and hyper's HTTP/2 state is boxed. `held` is released however the task ends, a
/// panic included.
#[allow(clippy::manual_async_fn)] // on purpose: see the comment in the body
fn fast_connection(mut conn: h1::Connection, held: Held, h2: Arc<H2Builder>) -> impl Future<Output = ()> + Send {
    // A block, not an async fn: an async fn copies its arguments into locals of its own and
    // keeps both (rustc#62958), which doubled this future.
    async move {
        if conn.serve().await {
            let (stream, pre, peer, fwd, shutdown) = conn.into_parts();
            Box::pin(serve_h2(&h2, stream, pre, peer, fwd, shutdown)).await;
        }
        drop(held);
    }
}

/// A plain-TCP client connection on the hyper engine.
struct HyperConn {
    fwd: Arc<Forwarder>,
    peer: std::net::SocketAddr,
    shutdown: watch::Receiver<bool>,
    /// How long to wait for the first bytes that tell HTTP/2 from HTTP/1.1.
    timeout: Duration,
    /// See [`accept::until_drained`].
    window: Duration,
}

impl HyperConn {
    /// HTTP/2 clients (prior knowledge) are told apart first, so their drain is the one
    /// GOAWAY of `h2drain` on this engine too; the rest is hyper's HTTP/1.1. `held` lasts as
    /// long as the connection.
    fn serve(
        self,
        engines: &Engines,
        held: Held,
        stream: TcpStream,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let (auto, h2) = (engines.auto.clone(), engines.h2.clone());
        async move {
            let _held = held;
            if sniff_h2(&stream, self.timeout).await {
                Box::pin(serve_h2(&h2, stream, Vec::new(), self.peer, self.fwd, self.shutdown)).await;
            } else {
                let Ok((stream, spare)) = second_handle(stream) else {
                    return;
                };
                let (fwd, peer, shutdown) = (self.fwd, self.peer, self.shutdown);
                serve_hyper(&auto, stream, spare, fwd, peer, false, shutdown, self.window).await;
            }
        }
    }
}

/// Serve a client through hyper (HTTP/1.1, or HTTP/2 negotiated by ALPN) until it ends or
/// the drain closes it; then, unless it became a tunnel, linger on `spare` (the socket's
/// second handle) if the client's bytes wait unread. Over TLS the raw bytes are drained:
/// what is left of a refused request is dropped anyway, decrypted or not.
#[allow(clippy::too_many_arguments)]
async fn serve_hyper<I>(
    auto: &auto::Builder<TokioExecutor>,
    io: I,
    spare: std::net::TcpStream,
    fwd: Arc<Forwarder>,
    peer: std::net::SocketAddr,
    https: bool,
    shutdown: watch::Receiver<bool>,
    window: Duration,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let tunneled = Arc::new(AtomicBool::new(false));
    let svc = hyper_service(fwd, peer, https, shutdown.clone(), None, Some(tunneled.clone()));
    let conn = auto.serve_connection_with_upgrades(TokioIo::new(io), svc);
    accept::until_drained(conn, shutdown, window).await;
    if !tunneled.load(Relaxed) {
        accept::linger_if_unread(spare).await;
    }
}

/// How often a draining HTTP/2 connection looks whether it has nothing in flight.
const DRAIN_POLL: Duration = Duration::from_millis(5);

/// After an HTTP/2 connection took its last stream, how long hyper keeps it to write what it
/// still holds (a last DATA frame) before the GOAWAY.
const H2_SETTLE: Duration = Duration::from_millis(20);

/// Whether the client's first bytes are the HTTP/2 preface (prior knowledge). Read with
/// `peek`, so hyper still reads them; a client that sends nothing within `timeout` is left
/// to hyper's own timeouts.
async fn sniff_h2(stream: &TcpStream, timeout: Duration) -> bool {
    let mut buf = [0u8; 24];
    let look = async {
        loop {
            let n = stream.peek(&mut buf).await.unwrap_or(0);
            match crate::h1::h2_preface(&buf[..n]) {
                Some(is) => return is,
                None if n == 0 => return false,
                // Part of the preface: the rest is on its way (rare: it comes in one segment).
                None => tokio::time::sleep(Duration::from_millis(1)).await,
            }
        }
    };
    tokio::time::timeout(timeout, look).await.unwrap_or(false)
}

/// The first byte of a TLS handshake record; anything else is not TLS.
const TLS_HANDSHAKE: u8 = 0x16;

/// A client's TLS handshake, bounded by `timeout`; `None` when it failed (logged at debug:
/// scanners and broken clients are routine). A client that spoke plain HTTP gets a plain 400
/// saying to use https, then the connection closes: clearer than a TLS alert it cannot read.
pub async fn handshake(
    acceptor: &TlsAcceptor,
    stream: TcpStream,
    timeout: Duration,
) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
    let peer = stream.peer_addr().ok();
    let attempt = async {
        let mut first = [0u8; 1];
        if stream.peek(&mut first).await? == 1 && first[0] != TLS_HANDSHAKE && first[0].is_ascii_alphabetic() {
            return Err(plain_http(stream).await);
        }
        acceptor.accept(stream).await
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(Ok(s)) => Some(s),
        Ok(Err(e)) => {
            tracing::debug!(peer = ?peer, error = %e, "TLS handshake failed");
            None
        }
        Err(_) => {
            tracing::debug!(peer = ?peer, ?timeout, "TLS handshake timed out");
            None
        }
    }
}

/// Answers a plain-HTTP request on a TLS port, then closes; the error is what the log says.
async fn plain_http(mut stream: TcpStream) -> std::io::Error {
    const BODY: &str =
        r#"{"error":{"code":"tls_required","message":"this port speaks TLS: use https://","source":"client"}}"#;
    let answer = format!(
        "HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{BODY}",
        BODY.len()
    );
    // The request is read first and the rest drained after: closing a socket with unread
    // bytes resets it, and a reset can destroy the answer before the client reads it.
    let mut buf = vec![0u8; 8192];
    let _ = stream.read(&mut buf).await;
    let _ = stream.write_all(answer.as_bytes()).await;
    let _ = stream.shutdown().await;
    let mut drained = 0;
    while drained < 64 * 1024 {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => drained += n,
        }
    }
    std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        "plain HTTP on a TLS port (answered 400)",
    )
}

/// The hyper service of one connection: every request through the hyper request path.
/// Once `draining`, an HTTP/1.x answer says `Connection: close` (hyper closes the connection
/// after it); on an HTTP/2 connection, `streams` counts the streams in flight for its drain.
/// `tunneled` turns true when a request is answered `101 Switching Protocols`.
fn hyper_service(
    fwd: Arc<Forwarder>,
    peer: std::net::SocketAddr,
    https: bool,
    draining: watch::Receiver<bool>,
    streams: Option<Arc<H2Streams>>,
    tunneled: Option<Arc<AtomicBool>>,
) -> impl hyper::service::Service<
    http::Request<hyper::body::Incoming>,
    Response = http::Response<crate::body::RespBody>,
    Error = Infallible,
    Future = impl std::future::Future<Output = Result<http::Response<crate::body::RespBody>, Infallible>> + Send,
> + Clone {
    // Made once per connection: no formatting per request.
    let mut peer = crate::forward::Peer::new(peer, &fwd.service.settings());
    peer.https = https;
    let peer = Arc::new(peer);
    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
        let (fwd, peer, draining, streams) = (fwd.clone(), peer.clone(), draining.clone(), streams.clone());
        let tunneled = tunneled.clone();
        async move {
            let hold = match &streams {
                Some(s) => match s.enter() {
                    Some(h) => Some(h),
                    // The connection took its last stream: this one was not processed (its
                    // id is past the GOAWAY's) and the client sends it again elsewhere.
                    None => {
                        s.gone().await;
                        return Ok(crate::body::refused_response());
                    }
                },
                None => None,
            };
            let h1 = req.version() < http::Version::HTTP_2;
            let mut resp = fwd.handle(req, &peer).await;
            if h1 && *draining.borrow() && resp.status() != http::StatusCode::SWITCHING_PROTOCOLS {
                resp.headers_mut()
                    .insert(http::header::CONNECTION, http::HeaderValue::from_static("close"));
            }
            if let Some(h) = hold {
                resp.body_mut().hold(h);
            }
            // hyper's connection future ends when the connection is upgraded, while the
            // tunnel goes on with the socket: no lingering close then.
            if let (Some(t), http::StatusCode::SWITCHING_PROTOCOLS) = (&tunneled, resp.status()) {
                t.store(true, Relaxed);
            }
            Ok::<_, Infallible>(resp)
        }
    })
}

/// Serve an HTTP/2 (prior knowledge) client through hyper; on shutdown, drain it as
/// `h2drain` says: wait (within the drain window) for a moment with no stream in flight,
/// then one GOAWAY and the close. A connection busy for the whole window gets hyper's
/// graceful shutdown instead (its streams finish).
async fn serve_h2(
    h2: &H2Builder,
    stream: tokio::net::TcpStream,
    pre: Vec<u8>,
    peer: std::net::SocketAddr,
    fwd: Arc<Forwarder>,
    mut shutdown: watch::Receiver<bool>,
) {
    let window = fwd.service.settings().header_read_timeout;
    // A second handle on the socket, for the GOAWAY written after hyper let go of it.
    let Ok((stream, spare)) = second_handle(stream) else {
        return;
    };
    let streams = Arc::new(H2Streams::default());
    let svc = hyper_service(fwd, peer, false, shutdown.clone(), Some(streams.clone()), None);
    let io = TokioIo::new(Prefixed {
        pre,
        pos: 0,
        io: stream,
    });
    let mut conn = Box::pin(h2.serve_connection(io, svc));
    tokio::select! {
        _ = conn.as_mut() => return streams.set_gone(),
        _ = shutdown.wait_for(|s| *s) => {}
    }
    let window_end = tokio::time::Instant::now() + window;
    while !streams.close_if_idle() {
        if tokio::time::Instant::now() >= window_end {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
            return streams.set_gone();
        }
        tokio::select! {
            _ = conn.as_mut() => return streams.set_gone(),
            _ = tokio::time::sleep(DRAIN_POLL) => {}
        }
    }
    // hyper writes what it still holds (the end of the last response) as it runs.
    if tokio::time::timeout(H2_SETTLE, conn.as_mut()).await.is_ok() {
        return streams.set_gone();
    }
    drop(conn);
    streams.set_gone();
    crate::h2drain::goaway_and_close(spare, &streams).await;
}

/// The socket as tokio's, and a second handle on it (a `dup`) that outlives the first: the
/// socket stays open once hyper has dropped its handle, for a GOAWAY or a lingering close.
fn second_handle(stream: TcpStream) -> std::io::Result<(TcpStream, std::net::TcpStream)> {
    let std = stream.into_std()?;
    let spare = std.try_clone()?;
    Ok((TcpStream::from_std(std)?, spare))
}

/// A socket whose first bytes were already read: they are replayed before the rest.
struct Prefixed {
    pre: Vec<u8>,
    pos: usize,
    io: tokio::net::TcpStream,
}

impl AsyncRead for Prefixed {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let this = &mut *self;
        if this.pos < this.pre.len() {
            let n = (this.pre.len() - this.pos).min(buf.remaining());
            buf.put_slice(&this.pre[this.pos..this.pos + n]);
            this.pos += n;
            if this.pos == this.pre.len() {
                this.pre = Vec::new();
                this.pos = 0;
            }
            return std::task::Poll::Ready(Ok(()));
        }
        std::pin::Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Prefixed {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route::{RouteTable, Service};

    #[tokio::test]
    async fn fast_connection_task_is_small() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let svc = Service::new("t", ServiceSettings::default(), RouteTable::default());
        let fwd = Arc::new(Forwarder::new(svc, false));
        let (_tx, rx) = watch::channel(false);
        let peer = client.local_addr().unwrap();
        let engines = Engines::new(&fwd.service.settings());
        let conn = h1::Connection::new(client, peer, fwd, rx);
        let fut = fast_connection(conn, Held::for_test(), engines.h2.clone());
        // What every open connection's task holds while it waits for its next request. With
        // tokio's task header and trailer (96 bytes) its cell must stay within 512 bytes
        // (cells are 128-byte aligned: a byte more costs 128), which with the socket's
        // 256-byte registration keeps an idle connection under 1 KiB. hyper's connections
        // kept 10-19 KiB of buffers instead.
        let size = std::mem::size_of_val(&fut);
        assert!(size <= 512 - 96, "the connection task's future grew to {size} bytes");
    }
}
