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
//! What it keeps from the hyper path: the same routing (one atomic load per request), the
//! same per-color statistics and in-flight guard, the same JSON errors, the same limits and
//! timeouts, retries only for requests that never reached an upstream, SSE error events,
//! and the drain deadline. HTTP/2 clients (prior knowledge) are detected on the first bytes
//! and handed to hyper; h2c upstreams use the hyper path for every client.

mod buf;
mod chunked;
#[cfg(any(test, fuzzing))]
pub(crate) mod fuzz;
mod request;
mod response;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::{pin, Pin};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::{sleep_until, Instant as Deadline};

use crate::body::{count_events, sse_error_event};
use crate::error::{ProxyError, Source};
use crate::exchange::{self, Exchange, Forwarder, Replay, Retry, DRAIN_CLOSED, TIMED_OUT};
use crate::route::{ColorRoute, Endpoint};
use crate::settings::ServiceSettings;
use crate::upstream::ConnectError;
use buf::{Buf, Out};
use chunked::{chunk, last_chunk, Chunked};
use request::{HeadError, RequestHead};
use response::{OutMode, ResponseContext, ResponseHead, ResponseParse};

pub(crate) use buf::BUF_SIZE;

/// How a message body is delimited on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    None,
    Length(u64),
    Chunked,
    /// Until the sender closes (responses only).
    Close,
}

/// How a connection ended.
pub(crate) enum Outcome {
    Closed,
    /// The client speaks HTTP/2 (prior knowledge): its first bytes, to be replayed to hyper.
    Http2(TcpStream, Vec<u8>),
}

/// What becomes of the client connection after an exchange.
enum After {
    KeepAlive,
    Close,
    /// Close after reading what the client still sends for a while, so the error response
    /// is not destroyed by a reset (unread data at close makes the kernel send RST).
    LingerClose,
}

/// Poll once without registering interest: the fast path when the socket is already ready.
fn poll_now<F: Future>(f: Pin<&mut F>) -> Poll<F::Output> {
    f.poll(&mut Context::from_waker(Waker::noop()))
}

struct Conn {
    client: TcpStream,
    peer: SocketAddr,
    peer_ip: Box<[u8]>,
    /// The peer is one of the service's trusted proxies (decided once per connection).
    trusted: bool,
    fwd: Arc<Forwarder>,
    settings: Arc<ServiceSettings>,
    inbuf: Buf,
    shutdown: watch::Receiver<bool>,
}

/// Serve one client connection until it closes, the listener shuts down, or it turns out
/// to be HTTP/2.
pub(crate) async fn serve_connection(
    client: TcpStream,
    peer: SocketAddr,
    fwd: Arc<Forwarder>,
    shutdown: watch::Receiver<bool>,
) -> Outcome {
    let settings = fwd.service.settings.clone();
    let mut c = Conn {
        client,
        peer,
        peer_ip: peer.ip().to_string().into_bytes().into_boxed_slice(),
        trusted: !settings.trusted_proxies.is_empty() && settings.trusted_proxies.contains(peer.ip()),
        fwd,
        settings,
        inbuf: Buf::new(),
        shutdown,
    };
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
        if *c.shutdown.borrow() {
            return Outcome::Closed;
        }
        // Idle connections hold no buffer.
        c.inbuf.release();
    }
}

enum Stop {
    Closed,
    Http2,
    Refuse(ProxyError),
}

fn head_error(e: HeadError) -> ProxyError {
    match e {
        HeadError::Bad(m) => ProxyError::new(StatusCode::BAD_REQUEST, "malformed_request", Source::Client, m),
        HeadError::TooLarge => ProxyError::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers_too_large",
            Source::Client,
            "the request head has too many header lines or is larger than limits.max_header_bytes",
        ),
        HeadError::LineTooLong => ProxyError::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "header_line_too_large",
            Source::Client,
            "a header line is longer than limits.max_header_line_bytes",
        ),
        HeadError::UriTooLong => ProxyError::new(
            StatusCode::URI_TOO_LONG,
            "uri_too_long",
            Source::Client,
            "the request line is longer than limits.max_header_line_bytes",
        ),
        HeadError::Version => ProxyError::new(
            StatusCode::HTTP_VERSION_NOT_SUPPORTED,
            "http_version_not_supported",
            Source::Client,
            "only HTTP/1.x is accepted in a request line (HTTP/2 starts with its preface)",
        ),
        HeadError::Unsupported(m) => ProxyError::new(
            StatusCode::NOT_IMPLEMENTED,
            "unsupported_transfer_coding",
            Source::Client,
            m,
        ),
    }
}

/// Why the exchange with an upstream stopped before a response head.
#[derive(Debug)]
enum Fail {
    /// No connection: nothing was sent, another endpoint may be tried.
    Connect(ConnectError),
    /// A reused connection died before a byte of response came back.
    Stale(String),
    /// The client went away while its request was pending.
    ClientGone,
    Proxy(ProxyError),
}

struct Upstream {
    stream: TcpStream,
    reused: bool,
}

impl Conn {
    /// Read until a whole request head is buffered and rewritten into `out`. Waiting for it
    /// (idle keep-alive included) is bounded by `header_read_timeout`.
    ///
    /// The output buffer is taken only once bytes have arrived, so a connection waiting for
    /// its next request holds no buffer.
    async fn read_head(&mut self, first: bool) -> Result<(RequestHead, Out), Stop> {
        let max = self.settings.max_header_bytes;
        let mut deadline: Option<Deadline> = None;
        loop {
            if !self.inbuf.is_empty() {
                let preface = if first {
                    buf::h2_preface(self.inbuf.bytes())
                } else {
                    Some(false)
                };
                match preface {
                    Some(true) => return Err(Stop::Http2),
                    None => {}
                    Some(false) => {
                        let target = request::Target {
                            peer_ip: &self.peer_ip,
                            trusted: self.trusted,
                            scheme: b"http",
                            want_path: self.settings.access_log,
                            max_line: self.settings.max_header_line_bytes,
                        };
                        let mut out = Out::new();
                        match request::request_head(self.inbuf.bytes(), &target, out.vec()) {
                            Ok(Some(h)) => return Ok((h, out)),
                            Ok(None) => {}
                            Err(e) => return Err(Stop::Refuse(head_error(e))),
                        }
                    }
                }
                if self.inbuf.len() >= max {
                    return Err(Stop::Refuse(head_error(HeadError::TooLarge)));
                }
            }
            if self.inbuf.is_empty() {
                // Between requests: wait for the socket to turn readable without holding a
                // buffer (this is where idle keep-alive connections spend their time).
                self.inbuf.release();
                let mut ready = pin!(read_ready(&self.client));
                if poll_now(ready.as_mut()).is_pending() {
                    let d = *deadline.get_or_insert_with(|| Deadline::now() + self.settings.header_read_timeout);
                    tokio::select! {
                        biased;
                        r = ready => if r.is_err() { return Err(Stop::Closed) },
                        _ = sleep_until(d) => return Err(Stop::Closed),
                        _ = wait_true(&mut self.shutdown) => return Err(Stop::Closed),
                    }
                }
            }
            if !self.inbuf.reserve(max) {
                return Err(Stop::Refuse(head_error(HeadError::TooLarge)));
            }
            let partial = !self.inbuf.is_empty();
            let r = {
                let mut fut = pin!(self.client.read_buf(&mut self.inbuf.data));
                match poll_now(fut.as_mut()) {
                    Poll::Ready(r) => r,
                    // Readiness was stale: back to waiting without a buffer.
                    Poll::Pending if !partial => continue,
                    Poll::Pending => {
                        let d = *deadline.get_or_insert_with(|| Deadline::now() + self.settings.header_read_timeout);
                        tokio::select! {
                            biased;
                            r = fut => r,
                            _ = sleep_until(d) => return Err(Stop::Closed),
                        }
                    }
                }
            };
            match r {
                Ok(0) | Err(_) => return Err(Stop::Closed),
                Ok(_) => {}
            }
        }
    }

    /// Answer with the proxy's own error (the connection closes after it).
    async fn refuse(&mut self, e: ProxyError, route: Option<&ColorRoute>) {
        let mut out = Out::new();
        error_response(e, &self.fwd.service.name, route, true, out.vec());
        let deadline = Deadline::now() + self.settings.header_read_timeout;
        let _ = write_by(&mut self.client, &out.0, deadline).await;
    }

    /// Half-close, then drain what the client still sends for up to a second (64 KiB at
    /// most), so the response is read before the socket goes away.
    async fn linger(&mut self) {
        let _ = self.client.shutdown().await;
        let mut sink = [0u8; 4096];
        let mut left = 64 * 1024;
        let _ = tokio::time::timeout(std::time::Duration::from_secs(1), async {
            while left > 0 {
                match self.client.read(&mut sink).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => left -= n.min(left),
                }
            }
        })
        .await;
    }

    /// One request: forward it, stream the response back, record it.
    async fn exchange(&mut self, mut head: RequestHead, out: Out) -> After {
        // The head is dealt with from here on, whatever the answer: an error answered on a
        // kept-alive connection must not find the same request again.
        self.inbuf.consume(head.head_len);
        let fwd = self.fwd.clone();
        let begun = Exchange::begin(&fwd, Instant::now(), || {
            exchange::access(&fwd, &head.method, head.path.take().unwrap_or_default(), self.peer)
        });
        let mut ex = match begun {
            Ok(ex) => ex,
            Err(e) => {
                let unread = !self.skip_buffered_body(head.body);
                return self.answer_error(e, None, &head, unread).await;
            }
        };
        let mut body_done = head.body == Framing::None;
        match self.forward(&head, out, &mut ex, &mut body_done).await {
            Ok(next) => next,
            Err(Fail::Proxy(e)) => {
                ex.failed(&e);
                let route = ex.route.clone();
                self.answer_error(e, Some(&route), &head, !body_done).await
            }
            // The client left: nobody to answer. Stale and connect failures were turned
            // into errors by `forward`.
            Err(_) => After::Close,
        }
    }

    async fn answer_error(
        &mut self,
        e: ProxyError,
        route: Option<&ColorRoute>,
        head: &RequestHead,
        unread: bool,
    ) -> After {
        let close = unread
            || !head.keep_alive
            || e.status == StatusCode::BAD_REQUEST
            || e.status == StatusCode::PAYLOAD_TOO_LARGE;
        let mut out = Out::new();
        error_response(e, &self.fwd.service.name, route, close, out.vec());
        if !close && head.minor == 0 {
            // error_response ends the head; HTTP/1.0 keep-alive must be restated.
            let at = out.0.windows(4).position(|w| w == b"\r\n\r\n").unwrap_or(0) + 2;
            out.0.splice(at..at, b"connection: keep-alive\r\n".iter().copied());
        }
        let deadline = Deadline::now() + self.settings.header_read_timeout;
        if write_by(&mut self.client, &out.0, deadline).await.is_err() {
            return After::Close;
        }
        if unread {
            After::LingerClose
        } else if close {
            After::Close
        } else {
            After::KeepAlive
        }
    }

    /// For a request answered without an upstream: when its whole body is already buffered
    /// (the usual small JSON), drop it so the connection can carry the next request. False
    /// when the body is still on the wire: the connection must then close.
    fn skip_buffered_body(&mut self, body: Framing) -> bool {
        let n = match body {
            Framing::None | Framing::Close => return true,
            Framing::Length(n) => match usize::try_from(n) {
                Ok(n) if n <= self.inbuf.len() => n,
                _ => return false,
            },
            Framing::Chunked => {
                let mut dec = Chunked::new();
                match dec.feed(self.inbuf.bytes(), |_| {}) {
                    Ok(n) if dec.done() => n,
                    _ => return false,
                }
            }
        };
        self.inbuf.consume(n);
        true
    }

    /// Send the request to an endpoint of `route` and stream the response back.
    async fn forward(
        &mut self,
        head: &RequestHead,
        mut out: Out,
        ex: &mut Exchange,
        body_done: &mut bool,
    ) -> Result<After, Fail> {
        let settings = self.settings.clone();
        if let Framing::Length(n) = head.body {
            if n > settings.max_body_bytes {
                return Err(Fail::Proxy(exchange::too_large(n, settings.max_body_bytes)));
            }
        }
        let route = ex.route.clone();
        let mut endpoint = match ex.first_endpoint(&self.fwd) {
            Ok(e) => e,
            Err(e) => {
                *body_done = self.skip_buffered_body(head.body);
                return Err(Fail::Proxy(e));
            }
        };
        if head.needs_host {
            // An HTTP/1.0 request without Host: the upstream gets the endpoint's address.
            let end = out.0.len() - 2;
            out.0.truncate(end);
            out.0
                .extend_from_slice(format!("host: {}\r\n\r\n", endpoint.addr).as_bytes());
        }
        // The part of the body already read goes out with the head; when that is all of it,
        // the request can be sent again if a pooled connection turns out dead.
        let mut dec = Chunked::new();
        let mut data_seen = 0u64;
        let mut sent = 0u64;
        match head.body {
            Framing::None | Framing::Close => {}
            Framing::Length(n) => {
                let take = (self.inbuf.len() as u64).min(n) as usize;
                out.0.extend_from_slice(&self.inbuf.bytes()[..take]);
                self.inbuf.consume(take);
                sent = take as u64;
                *body_done = sent == n;
            }
            Framing::Chunked => {
                // Framed anew: the upstream reads only chunks the proxy wrote.
                let o = &mut out.0;
                let k = dec
                    .feed(self.inbuf.bytes(), |d| {
                        data_seen += d.len() as u64;
                        chunk(o, d);
                    })
                    .map_err(|m| Fail::Proxy(exchange::bad_body(m)))?;
                if data_seen > settings.max_body_bytes {
                    return Err(Fail::Proxy(exchange::too_large(data_seen, settings.max_body_bytes)));
                }
                if dec.done() {
                    last_chunk(o, dec.trailers());
                }
                self.inbuf.consume(k);
                *body_done = dec.done();
            }
        }
        let replayable = *body_done;
        if head.expect_continue && !*body_done && head.minor == 1 {
            let d = Deadline::now() + settings.header_read_timeout;
            write_by(&mut self.client, b"HTTP/1.1 100 Continue\r\n\r\n", d)
                .await
                .map_err(|_| Fail::ClientGone)?;
        }

        let rcx = ResponseContext {
            head_request: head.method == http::Method::HEAD,
            client_minor: head.minor,
            client_keep_alive: head.keep_alive && !*self.shutdown.borrow(),
            color: route.color.as_str().as_bytes(),
            version: route.version_header.as_ref().map(|v| v.as_bytes()),
        };
        let first_byte_deadline = Deadline::from_std(ex.started) + settings.first_byte_timeout;
        let replay = Replay::of(&head.method, replayable);
        let mut fresh_only = false;
        let mut cout = Out::new();
        let mut upbuf = Buf::new();
        let body = Body {
            framing: head.body,
            sent,
            data_seen,
            dec,
        };
        let (up, rh) = loop {
            cout.0.clear();
            upbuf.consume(upbuf.len());
            let attempt = self.attempt(
                &endpoint,
                fresh_only,
                &out.0,
                body_done,
                body.clone(),
                &rcx,
                &mut cout,
                &mut upbuf,
            );
            let (retry, e) = match tokio::time::timeout_at(first_byte_deadline, attempt).await {
                Err(_) => {
                    return Err(Fail::Proxy(exchange::first_byte_timeout(
                        &endpoint,
                        settings.first_byte_timeout,
                    )))
                }
                Ok(Ok(r)) => break r,
                Ok(Err(Fail::Connect(e))) => {
                    tracing::debug!(service = %self.fwd.service.name, endpoint = %endpoint.addr, error = %e, "upstream connect failed");
                    (Retry::OtherEndpoint, exchange::connect_failed(&e, &endpoint, &route))
                }
                Ok(Err(Fail::Stale(why))) => (Retry::ReusedConnection, exchange::upstream_failed(&endpoint, &why)),
                Ok(Err(e)) => return Err(e),
            };
            match ex.after_failure(retry, &endpoint, replay) {
                exchange::Next::OtherEndpoint(next) => endpoint = next,
                exchange::Next::FreshConnection => fresh_only = true,
                exchange::Next::GiveUp => return Err(Fail::Proxy(e)),
            }
        };

        // The request is out: its buffers go back to the pool for the length of the
        // response (a stream can last minutes).
        drop(out);
        self.inbuf.release();
        ex.answered(rh.status);
        let deadline = Deadline::from_std(ex.started) + settings.request_timeout;
        let complete = relay(
            &mut self.client,
            &mut self.inbuf,
            settings.max_header_bytes,
            up,
            upbuf,
            &rh,
            cout,
            &route,
            &endpoint,
            deadline,
        )
        .await;
        Ok(if complete && !rh.close_client && head.keep_alive {
            After::KeepAlive
        } else {
            After::Close
        })
    }

    /// One try on one connection: send the request (streaming what is left of its body) and
    /// read the response head, rewritten for the client into `cout`.
    #[allow(clippy::too_many_arguments)]
    async fn attempt(
        &mut self,
        endpoint: &Arc<Endpoint>,
        fresh_only: bool,
        out: &[u8],
        body_done: &mut bool,
        mut body: Body,
        rcx: &ResponseContext<'_>,
        cout: &mut Out,
        upbuf: &mut Buf,
    ) -> Result<(Upstream, ResponseHead), Fail> {
        let pooled = if fresh_only { None } else { endpoint.pool.take_raw() };
        let mut up = match pooled {
            Some(stream) => Upstream { stream, reused: true },
            None => Upstream {
                stream: endpoint.pool.connect_raw().await.map_err(Fail::Connect)?,
                reused: false,
            },
        };
        if let Err(e) = up.stream.write_all(out).await {
            // A write refused outright did not reach the upstream: safe to send again.
            return Err(if up.reused && *body_done {
                Fail::Stale(format!("{e}"))
            } else {
                Fail::Proxy(exchange::upstream_failed(
                    endpoint,
                    &format!("sending the request failed: {e}"),
                ))
            });
        }
        if !*body_done {
            self.stream_body(&mut up.stream, &mut body, endpoint).await?;
            *body_done = true;
        }
        loop {
            if !upbuf.is_empty() {
                match response::response_head(upbuf.bytes(), rcx, cout.vec()) {
                    Ok(ResponseParse::Partial) => {}
                    Ok(ResponseParse::Interim(n)) => {
                        upbuf.consume(n);
                        continue;
                    }
                    Ok(ResponseParse::Head(h)) => {
                        upbuf.consume(h.head_len);
                        return Ok((up, h));
                    }
                    Err(m) => return Err(Fail::Proxy(exchange::bad_response(endpoint, &m))),
                }
            }
            let nothing_yet = upbuf.is_empty();
            let max = self.settings.max_header_bytes;
            if nothing_yet {
                // The model may think for minutes: wait without holding a buffer.
                upbuf.release();
                let mut ready = pin!(read_ready(&up.stream));
                if poll_now(ready.as_mut()).is_pending() {
                    tokio::select! {
                        biased;
                        _ = ready => {}
                        _ = client_gone(&mut self.client, &mut self.inbuf, max) => return Err(Fail::ClientGone),
                    }
                }
            }
            if !upbuf.reserve(response::MAX_RESPONSE_HEAD) {
                return Err(Fail::Proxy(exchange::bad_response(endpoint, "response head too large")));
            }
            let r = {
                let mut fut = pin!(up.stream.read_buf(&mut upbuf.data));
                match poll_now(fut.as_mut()) {
                    Poll::Ready(r) => r,
                    // Readiness was stale: wait again.
                    Poll::Pending if nothing_yet => continue,
                    Poll::Pending => {
                        tokio::select! {
                            biased;
                            r = fut => r,
                            _ = client_gone(&mut self.client, &mut self.inbuf, max) => return Err(Fail::ClientGone),
                        }
                    }
                }
            };
            let why = match r {
                Ok(0) => "closed the connection before answering".to_string(),
                Err(e) => format!("failed before answering: {e}"),
                Ok(_) => continue,
            };
            if up.reused && nothing_yet {
                return Err(Fail::Stale(why));
            }
            return Err(Fail::Proxy(exchange::upstream_failed(endpoint, &why)));
        }
    }

    /// Copy the rest of the request body from the client to the upstream (chunked bodies
    /// framed anew on the way).
    async fn stream_body(&mut self, up: &mut TcpStream, body: &mut Body, endpoint: &Endpoint) -> Result<(), Fail> {
        let limit = self.settings.max_body_bytes;
        let mut framed = Out::new();
        loop {
            let done = match body.framing {
                Framing::Length(n) => body.sent == n,
                Framing::Chunked => body.dec.done(),
                Framing::None | Framing::Close => true,
            };
            if done {
                return Ok(());
            }
            if self.inbuf.is_empty() {
                self.inbuf.reserve(BUF_SIZE);
                match self.client.read_buf(&mut self.inbuf.data).await {
                    Ok(0) | Err(_) => {
                        return Err(Fail::Proxy(exchange::bad_body(
                            "the client closed the connection before the whole body",
                        )))
                    }
                    Ok(_) => {}
                }
            }
            let (take, wrote) = match body.framing {
                Framing::Length(n) => {
                    let take = (self.inbuf.len() as u64).min(n - body.sent) as usize;
                    body.sent += take as u64;
                    (take, up.write_all(&self.inbuf.bytes()[..take]).await)
                }
                _ => {
                    let mut seen = 0u64;
                    let o = framed.vec();
                    let k = body
                        .dec
                        .feed(self.inbuf.bytes(), |d| {
                            seen += d.len() as u64;
                            chunk(o, d);
                        })
                        .map_err(|m| Fail::Proxy(exchange::bad_body(m)))?;
                    body.data_seen += seen;
                    if body.data_seen > limit {
                        return Err(Fail::Proxy(exchange::too_large(body.data_seen, limit)));
                    }
                    if body.dec.done() {
                        last_chunk(o, body.dec.trailers());
                    }
                    let r = up.write_all(o).await;
                    o.clear();
                    (k, r)
                }
            };
            if let Err(e) = wrote {
                return Err(Fail::Proxy(exchange::upstream_failed(
                    endpoint,
                    &format!("sending the request body failed: {e}"),
                )));
            }
            self.inbuf.consume(take);
        }
    }
}

/// Where the request body stands.
#[derive(Clone)]
struct Body {
    framing: Framing,
    /// Bytes sent so far (Content-Length bodies).
    sent: u64,
    /// Data bytes seen so far (chunked bodies, for the size limit).
    data_seen: u64,
    dec: Chunked,
}

/// Readiness through the socket's own reader slot: `TcpStream::readable` goes through a
/// waiter list behind a lock, measurably dearer on a path taken twice per request.
fn read_ready(s: &TcpStream) -> impl Future<Output = io::Result<()>> + '_ {
    std::future::poll_fn(move |cx| s.poll_read_ready(cx))
}

/// Resolves when the client has closed its side (data it sends meanwhile is kept in `inbuf`:
/// a pipelined next request).
async fn client_gone(client: &mut TcpStream, inbuf: &mut Buf, max: usize) {
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
async fn wait_true(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

/// Write all of `b`, giving up at `deadline` (a client that stops reading).
async fn write_by(s: &mut TcpStream, b: &[u8], deadline: Deadline) -> Result<(), ()> {
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

/// Stream the response body to the client. True when it ended cleanly.
#[allow(clippy::too_many_arguments)]
async fn relay(
    client: &mut TcpStream,
    inbuf: &mut Buf,
    max_header: usize,
    mut up: Upstream,
    mut upbuf: Buf,
    rh: &ResponseHead,
    mut cout: Out,
    route: &ColorRoute,
    endpoint: &Endpoint,
    deadline: Deadline,
) -> bool {
    let mut left = if let Framing::Length(n) = rh.body { n } else { 0 };
    let mut dec = Chunked::new();
    let mut last_nl = false;
    let mut eof = false;
    let mut closed_rx: Option<watch::Receiver<bool>> = None;
    loop {
        let mut events = 0;
        let done = match rh.body {
            Framing::None => true,
            Framing::Length(_) => {
                let take = (upbuf.len() as u64).min(left) as usize;
                let d = &upbuf.bytes()[..take];
                if rh.sse {
                    events += count_events(&mut last_nl, d);
                }
                cout.vec().extend_from_slice(d);
                upbuf.consume(take);
                left -= take as u64;
                left == 0
            }
            Framing::Chunked => {
                let (mode, sse) = (rh.out, rh.sse);
                let bytes = upbuf.bytes();
                let out = cout.vec();
                let fed = dec.feed(bytes, |d| {
                    if sse {
                        events += count_events(&mut last_nl, d);
                    }
                    match mode {
                        OutMode::Rechunk => chunk(out, d),
                        OutMode::Close => out.extend_from_slice(d),
                        _ => {}
                    }
                });
                match fed {
                    Ok(k) => {
                        upbuf.consume(k);
                        dec.done()
                    }
                    Err(m) => {
                        let why = format!("upstream sent a malformed chunked body: {m}");
                        return fail(client, rh, cout, route, &why, deadline).await;
                    }
                }
            }
            Framing::Close => {
                let d = upbuf.bytes();
                if rh.sse {
                    events += count_events(&mut last_nl, d);
                }
                match rh.out {
                    OutMode::Rechunk => chunk(cout.vec(), d),
                    _ => cout.vec().extend_from_slice(d),
                }
                let n = upbuf.len();
                upbuf.consume(n);
                eof
            }
        };
        if events > 0 {
            route.stats.stream_events.fetch_add(events, Relaxed);
        }
        if done && rh.out == OutMode::Rechunk {
            last_chunk(cout.vec(), dec.trailers());
        }
        if !cout.0.is_empty() {
            if write_by(client, &cout.0, deadline).await.is_err() {
                // The client left or stopped reading: the upstream connection is dropped,
                // which cancels the request there.
                return false;
            }
            cout.0.clear();
        }
        if done {
            if rh.upstream_keep_alive && upbuf.is_empty() && rh.body != Framing::Close {
                endpoint.pool.put_raw(up.stream);
            }
            return true;
        }
        if route.closing.load(Relaxed) {
            route.stats.drain_closed.fetch_add(1, Relaxed);
            return fail(client, rh, cout, route, DRAIN_CLOSED, deadline).await;
        }
        // Everything read so far is consumed: wait for more without holding buffers, so
        // a stream between two tokens costs its socket and little else.
        upbuf.release();
        cout.release();
        {
            let mut ready = pin!(read_ready(&up.stream));
            if poll_now(ready.as_mut()).is_pending() {
                let rx = closed_rx.get_or_insert_with(|| route.close_signal.subscribe());
                tokio::select! {
                    biased;
                    _ = ready => {}
                    _ = sleep_until(deadline) => {
                        return fail(client, rh, cout, route, TIMED_OUT, deadline).await;
                    }
                    _ = wait_true(rx) => {
                        route.stats.drain_closed.fetch_add(1, Relaxed);
                        return fail(client, rh, cout, route, DRAIN_CLOSED, deadline).await;
                    }
                    _ = client_gone(client, inbuf, max_header) => return false,
                }
            }
        }
        upbuf.reserve(BUF_SIZE);
        let r = {
            let mut fut = pin!(up.stream.read_buf(&mut upbuf.data));
            match poll_now(fut.as_mut()) {
                Poll::Ready(r) => r,
                // Readiness was stale: wait again.
                Poll::Pending => continue,
            }
        };
        match r {
            Ok(0) if rh.body == Framing::Close => eof = true,
            Ok(0) => {
                let why = "upstream failed mid-body: connection closed before the body ended";
                return fail(client, rh, cout, route, why, deadline).await;
            }
            Err(e) => {
                let why = format!("upstream failed mid-body: {e}");
                return fail(client, rh, cout, route, &why, deadline).await;
            }
            Ok(_) => {}
        }
    }
}

/// The response cannot be finished: count it, tell an event stream why in-band, and let
/// the caller close the connection so the client sees the body cut.
async fn fail(
    client: &mut TcpStream,
    rh: &ResponseHead,
    mut cout: Out,
    route: &ColorRoute,
    why: &str,
    deadline: Deadline,
) -> bool {
    route.stats.aborted_bodies.fetch_add(1, Relaxed);
    if rh.sse && rh.out == OutMode::Rechunk {
        chunk(cout.vec(), sse_error_event(why).as_bytes());
    }
    if !cout.0.is_empty() {
        let d = deadline.min(Deadline::now() + std::time::Duration::from_secs(5));
        let _ = write_by(client, &cout.0, d).await;
    }
    false
}

/// The proxy's own error as an HTTP/1.1 response.
fn error_response(e: ProxyError, service: &str, route: Option<&ColorRoute>, close: bool, out: &mut Vec<u8>) {
    let resp = e.into_response(service, route);
    let status = resp.status();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    for (k, v) in resp.headers() {
        if k == http::header::CONNECTION {
            continue;
        }
        out.extend_from_slice(k.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(v.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    let body = resp.body().full_bytes();
    out.extend_from_slice(b"content-length: ");
    out.extend_from_slice(buf::itoa(body.len() as u64, &mut [0u8; 20]));
    out.extend_from_slice(b"\r\n");
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route::{RouteTable, Service};

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
