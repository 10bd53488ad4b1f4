//! Per-endpoint upstream connection pools (HTTP/1.1 or h2c) with explicit timeouts.
//!
//! One pool per endpoint per color, so a switch never reuses the other color's connections.
//! HTTP/1.1 connections are kept in a LIFO stack (hot ones are reused, cold ones age out);
//! an HTTP/2 endpoint shares one multiplexed connection. To `https://` endpoints both kinds
//! run over TLS (the service's [`UpstreamTls`]), the certificate checked for the host as
//! configured.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::task::{Context, Waker};
use std::time::Instant;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;

use crate::request_body::ReqBody;
use crate::settings::{Protocol, ServiceSettings};
use crate::tls::UpstreamTls;

/// Why a new connection could not be made. Nothing was sent: safe to retry elsewhere.
#[derive(Debug)]
pub enum ConnectError {
    Timeout,
    Io(std::io::Error),
    /// The TLS handshake with an `https://` endpoint failed (its certificate, most often).
    Tls(String),
    Handshake(hyper::Error),
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnectError::Timeout => f.write_str("connect timed out"),
            ConnectError::Io(e) => write!(f, "connect failed: {e}"),
            ConnectError::Tls(e) => write!(f, "TLS handshake failed: {e}"),
            ConnectError::Handshake(e) => write!(f, "handshake failed: {e}"),
        }
    }
}

/// A connection ready for one request.
pub(crate) enum Conn {
    H1(http1::SendRequest<ReqBody>),
    H2(http2::SendRequest<ReqBody>),
}

/// What became of a send on one connection.
// The request rides back on the rare retry path; the Ok side carries a Response of
// similar size, so boxing would add an allocation without shrinking the Result.
#[allow(clippy::large_enum_variant)]
pub(crate) enum SendError {
    /// The connection turned out dead before the request left: the request comes back.
    NotSent(Request<ReqBody>),
    /// The request (or part of it) may have reached the upstream: never retried.
    Failed(hyper::Error),
}

impl Conn {
    pub(crate) async fn send(&mut self, req: Request<ReqBody>) -> Result<Response<Incoming>, SendError> {
        let r = match self {
            Conn::H1(s) => {
                if s.ready().await.is_err() {
                    return Err(SendError::NotSent(req));
                }
                s.try_send_request(req).await
            }
            Conn::H2(s) => {
                if s.ready().await.is_err() {
                    return Err(SendError::NotSent(req));
                }
                s.try_send_request(req).await
            }
        };
        r.map_err(|mut e| match e.take_message() {
            Some(req) => SendError::NotSent(req),
            None => SendError::Failed(e.into_error()),
        })
    }

    /// The HTTP/1.1 sender to give back to the pool once the response body has ended.
    pub(crate) fn into_reusable(self) -> Option<http1::SendRequest<ReqBody>> {
        match self {
            Conn::H1(s) => Some(s),
            // The shared h2 connection stays in the pool; nothing to give back.
            Conn::H2(_) => None,
        }
    }
}

pub(crate) struct Pool {
    addr: SocketAddr,
    /// What the endpoint's certificate must name, when the service's endpoints are `https://`.
    tls_name: ServerName<'static>,
    settings: Arc<ServiceSettings>,
    idle: Mutex<Vec<(http1::SendRequest<ReqBody>, Instant)>>,
    h2: Mutex<Option<http2::SendRequest<ReqBody>>>,
    /// Plain connections of the HTTP/1.1 fast path: no task and no buffer while idle.
    raw: Mutex<Vec<(TcpStream, Instant)>>,
}

impl Pool {
    /// `name`: the endpoint as configured (`gpu-a.internal:8443`), when it was a name.
    pub(crate) fn new(addr: SocketAddr, name: Option<&str>, settings: Arc<ServiceSettings>) -> Pool {
        Pool {
            addr,
            tls_name: crate::tls::endpoint_name(name, addr),
            settings,
            idle: Mutex::new(Vec::new()),
            h2: Mutex::new(None),
            raw: Mutex::new(Vec::new()),
        }
    }

    /// A pooled connection, if one is open and fresh enough.
    pub(crate) fn take(&self) -> Option<Conn> {
        match self.settings.protocol {
            Protocol::Http1 => {
                let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
                while let Some((s, since)) = idle.pop() {
                    if !s.is_closed() && since.elapsed() < self.settings.pool_idle_timeout {
                        return Some(Conn::H1(s));
                    }
                }
                None
            }
            Protocol::H2c => {
                let mut h2 = self.h2.lock().unwrap_or_else(|p| p.into_inner());
                match h2.as_ref() {
                    Some(s) if !s.is_closed() => Some(Conn::H2(s.clone())),
                    _ => {
                        *h2 = None;
                        None
                    }
                }
            }
        }
    }

    /// Give an HTTP/1.1 connection back after its response ended cleanly.
    pub(crate) fn put(&self, s: http1::SendRequest<ReqBody>) {
        if s.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < self.settings.pool_max_idle {
            idle.push((s, Instant::now()));
        }
    }

    /// A pooled fast-path connection that still looks open, most recently used first.
    ///
    /// An idle connection's socket has nothing to read; if it became readable, the upstream
    /// closed it (or sent something unasked): either way it is dropped. That check reads the
    /// reactor's readiness, not the socket, so it costs no system call.
    pub(crate) fn take_raw(&self) -> Option<TcpStream> {
        let mut raw = self.raw.lock().unwrap_or_else(|p| p.into_inner());
        let mut cx = Context::from_waker(Waker::noop());
        while let Some((s, since)) = raw.pop() {
            if since.elapsed() < self.settings.pool_idle_timeout && s.poll_read_ready(&mut cx).is_pending() {
                return Some(s);
            }
        }
        None
    }

    pub(crate) fn put_raw(&self, s: TcpStream) {
        let mut raw = self.raw.lock().unwrap_or_else(|p| p.into_inner());
        if raw.len() < self.settings.pool_max_idle {
            raw.push((s, Instant::now()));
        }
    }

    /// A new plain connection for the fast path, bounded by the connect timeout.
    pub(crate) async fn connect_raw(&self) -> Result<TcpStream, ConnectError> {
        match tokio::time::timeout(self.settings.connect_timeout, TcpStream::connect(self.addr)).await {
            Ok(Ok(s)) => {
                let _ = s.set_nodelay(true);
                Ok(s)
            }
            Ok(Err(e)) => Err(ConnectError::Io(e)),
            Err(_) => Err(ConnectError::Timeout),
        }
    }

    pub(crate) fn idle_len(&self) -> usize {
        let raw = self.raw.lock().map(|v| v.len()).unwrap_or(0);
        raw + match self.settings.protocol {
            Protocol::Http1 => self.idle.lock().map(|v| v.len()).unwrap_or(0),
            Protocol::H2c => self.h2.lock().map(|v| v.is_some() as usize).unwrap_or(0),
        }
    }

    /// TLS to this endpoint, if its service's endpoints are `https://`: how, and for what name.
    pub(crate) fn tls(&self) -> Option<(&UpstreamTls, &ServerName<'static>)> {
        self.settings.upstream_tls.as_ref().map(|t| (t, &self.tls_name))
    }

    /// Open a new connection (bounded by the connect timeout, TLS and HTTP handshakes included).
    pub(crate) async fn connect(&self) -> Result<Conn, ConnectError> {
        let fut = async {
            let stream = TcpStream::connect(self.addr).await.map_err(ConnectError::Io)?;
            let _ = stream.set_nodelay(true);
            match self.tls() {
                None => self.handshake(TokioIo::new(stream)).await,
                Some((tls, name)) => {
                    let s = tls.connect(name, stream).await.map_err(ConnectError::Tls)?;
                    self.handshake(TokioIo::new(s)).await
                }
            }
        };
        match tokio::time::timeout(self.settings.connect_timeout, fut).await {
            Ok(r) => r,
            Err(_) => Err(ConnectError::Timeout),
        }
    }

    /// The HTTP handshake on a new connection, plain or TLS.
    async fn handshake<T>(&self, io: T) -> Result<Conn, ConnectError>
    where
        T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        {
            match self.settings.protocol {
                Protocol::Http1 => {
                    let (send, conn) = http1::Builder::new()
                        .handshake(io)
                        .await
                        .map_err(ConnectError::Handshake)?;
                    // With upgrades: a 101 hands the connection to a tunnel (hyper path).
                    tokio::spawn(async move {
                        let _ = conn.with_upgrades().await;
                    });
                    Ok(Conn::H1(send))
                }
                Protocol::H2c => {
                    let (send, conn) = http2::Builder::new(TokioExecutor::new())
                        .timer(TokioTimer::new())
                        .handshake(io)
                        .await
                        .map_err(ConnectError::Handshake)?;
                    tokio::spawn(async move {
                        let _ = conn.await;
                    });
                    *self.h2.lock().unwrap_or_else(|p| p.into_inner()) = Some(send.clone());
                    Ok(Conn::H2(send))
                }
            }
        }
    }
}
