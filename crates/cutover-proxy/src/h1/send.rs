//! The request's way to an upstream: its rewritten head with whatever part of the body was
//! already read, then the rest of the body, on a pooled or new connection (one attempt; the
//! loop and its retry rule are [`Exchange::attempts`]); then the response head, rewritten for
//! the client.

use std::pin::pin;
use std::sync::Arc;
use std::task::Poll;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant as Deadline;

use super::buf::{Buf, Out, BUF_SIZE};
use super::chunked::{chunk, last_chunk, Chunked};
use super::io::{client_gone, poll_now, read_ready, write_by, UpstreamSocket};
use super::relay::{Answer, Relay};
use super::request::RequestHead;
use super::response::{self, ResponseContext, ResponseHead, ResponseParse};
use super::Framing;
use super::{After, Fail};
use crate::error::ProxyError;
use crate::exchange::{self, Exchange, Failed, Forwarder, ReplayFacts};
use crate::mirror::Capture;
use crate::route::{Endpoint, EndpointLoad};
use crate::settings::ServiceSettings;

use crate::exchange::REPLAY_BUFFER;

/// Where the request body stands.
#[derive(Clone)]
pub(super) struct BodyProgress {
    framing: Framing,
    /// Bytes sent so far (Content-Length bodies).
    sent: u64,
    /// Data bytes seen so far (chunked bodies, for the size limit).
    data_seen: u64,
    dec: Chunked,
    limit: u64,
    /// Set when the shadow comparison copies this request: its data, as it goes upstream.
    capture: Option<Arc<Capture>>,
}

impl BodyProgress {
    fn new(framing: Framing, limit: u64, capture: Option<Arc<Capture>>) -> BodyProgress {
        BodyProgress {
            framing,
            sent: 0,
            data_seen: 0,
            dec: Chunked::new(),
            limit,
            capture,
        }
    }

    fn copy(&self, d: &[u8]) {
        if let Some(c) = &self.capture {
            c.request_data(d);
        }
    }

    /// A Content-Length body small enough to read whole before sending (chunked bodies of
    /// unknown size are streamed).
    fn small(&self) -> bool {
        matches!(self.framing, Framing::Length(n) if n <= REPLAY_BUFFER)
    }

    pub(super) fn done(&self) -> bool {
        match self.framing {
            Framing::Length(n) => self.sent == n,
            Framing::Chunked => self.dec.done(),
            Framing::None | Framing::Close => true,
        }
    }

    /// Of `avail` bytes at hand, how many belong to a Content-Length body (counted as sent).
    fn take_length(&mut self, avail: usize) -> usize {
        let Framing::Length(n) = self.framing else { return 0 };
        let take = (avail as u64).min(n - self.sent) as usize;
        self.sent += take as u64;
        take
    }

    /// Take what of `input` belongs to the body, appended to `out` as it goes upstream: a
    /// Content-Length body as it is, a chunked one framed anew (the upstream reads only
    /// chunks the proxy wrote). Returns the bytes of `input` consumed.
    fn take(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<usize, ProxyError> {
        if let Framing::Length(_) = self.framing {
            let k = self.take_length(input.len());
            out.extend_from_slice(&input[..k]);
            self.copy(&input[..k]);
            return Ok(k);
        }
        if self.framing != Framing::Chunked {
            return Ok(0);
        }
        let mut seen = 0u64;
        let capture = self.capture.as_deref();
        let k = self
            .dec
            .feed(input, |d| {
                seen += d.len() as u64;
                chunk(out, d);
                if let Some(c) = capture {
                    c.request_data(d);
                }
            })
            .map_err(exchange::bad_body)?;
        self.data_seen += seen;
        if self.data_seen > self.limit {
            return Err(exchange::too_large(self.data_seen, self.limit));
        }
        if self.dec.done() {
            last_chunk(out, self.dec.trailers());
        }
        Ok(k)
    }
}

/// The request as it goes upstream.
pub(super) struct Outgoing {
    /// The rewritten head, followed by the part of the body already read.
    bytes: Out,
    body: BodyProgress,
}

impl Outgoing {
    /// What the resend rule reads, from the bytes that went out: the path of the request
    /// line, and the body after the head when all of it is here (`whole`). Read only after
    /// a reused connection died, so the common path pays nothing for it.
    fn facts<'a>(&'a self, head: &'a RequestHead, whole: bool) -> ReplayFacts<'a> {
        let bytes = &self.bytes.0;
        let line_end = bytes.iter().position(|&b| b == b'\r').unwrap_or(bytes.len());
        let target = bytes[..line_end].split(|&b| b == b' ').nth(1).unwrap_or(b"");
        let path = target.split(|&b| b == b'?').next().unwrap_or(target);
        let body = whole.then(|| {
            let at = bytes
                .windows(4)
                .position(|w| w == b"\r\n\r\n")
                .map_or(bytes.len(), |i| i + 4);
            &bytes[at..]
        });
        ReplayFacts {
            method: &head.method,
            path,
            idempotency_key: head.idempotency_key,
            body,
        }
    }
}

/// The client connection's parts an exchange with an upstream uses.
pub(super) struct Sender<'a> {
    pub(super) client: &'a mut TcpStream,
    pub(super) inbuf: &'a mut Buf,
    pub(super) settings: &'a ServiceSettings,
    pub(super) fwd: &'a Forwarder,
    /// True once the listener drains: an answer whose head is written after that says
    /// `Connection: close`, and the client's connection closes after it. Read when the head
    /// is written, not when the request came: a model may think for minutes.
    pub(super) shutdown: &'a tokio::sync::watch::Receiver<bool>,
}

/// For a request answered without an upstream: when its whole body is already buffered
/// (the usual small JSON), drop it so the connection can carry the next request. False
/// when the body is still on the wire: the connection must then close.
pub(super) fn skip_buffered_body(inbuf: &mut Buf, body: Framing) -> bool {
    let n = match body {
        Framing::None | Framing::Close => return true,
        Framing::Length(n) => match usize::try_from(n) {
            Ok(n) if n <= inbuf.len() => n,
            _ => return false,
        },
        Framing::Chunked => {
            let mut dec = Chunked::new();
            match dec.feed(inbuf.bytes(), |_| {}) {
                Ok(n) if dec.done() => n,
                _ => return false,
            }
        }
    };
    inbuf.consume(n);
    true
}

impl Sender<'_> {
    /// Send the request to an endpoint of the exchange's color and stream the response back.
    pub(super) async fn forward(
        &mut self,
        head: &RequestHead,
        out: Out,
        ex: &mut Exchange,
        body_done: &mut bool,
    ) -> Result<After, Fail> {
        let settings = self.settings;
        if let Framing::Length(n) = head.body {
            exchange::within_body_limit(n, settings)?;
        }
        let endpoint = match ex.first_endpoint(self.fwd) {
            Ok(e) => e,
            Err(e) => {
                *body_done = skip_buffered_body(self.inbuf, head.body);
                return Err(Fail::Proxy(e));
            }
        };
        let mut req = self.prepare(head, out, &endpoint, ex.capture.clone()).await?;
        *body_done = req.body.done();
        let sent = self.send(head, &mut req, ex, endpoint).await;
        *body_done = req.body.done();
        let (answer, mut load) = sent?;
        load.answered(answer.head.status);
        let endpoint = load.endpoint().clone();
        // The request is out: its buffers go back to the pool for the length of the
        // response (a stream can last minutes).
        drop(req);
        self.inbuf.release();
        ex.answered(answer.head.status, answer.head.sse);
        let close_client = answer.head.close_client;
        if answer.tunnel {
            ex.tunnel();
        }
        let mut guard = ex.guard.take().expect("the guard is taken once, here");
        let relay = Relay {
            client: self.client,
            inbuf: self.inbuf,
            guard: &mut guard,
            max_header: settings.max_header_bytes,
            route: &ex.route,
            endpoint: &endpoint,
            deadline: Deadline::from_std(ex.started) + settings.request_timeout,
        };
        if answer.tunnel {
            relay.tunnel(answer).await;
            return Ok(After::Close);
        }
        let complete = relay.run(answer).await;
        drop(load);
        Ok(if complete && !close_client && head.keep_alive {
            After::KeepAlive
        } else {
            After::Close
        })
    }

    /// The upstream's head (an HTTP/1.0 request without Host gets the endpoint's address),
    /// with the part of the body already read; when that is all of it, the request can be
    /// sent again should a pooled connection turn out dead. Answers `100 Continue` for a
    /// body still to come.
    async fn prepare(
        &mut self,
        head: &RequestHead,
        mut out: Out,
        endpoint: &Endpoint,
        capture: Option<Arc<Capture>>,
    ) -> Result<Outgoing, Fail> {
        if head.needs_host {
            let end = out.0.len() - 2;
            out.0.truncate(end);
            out.0
                .extend_from_slice(format!("host: {}\r\n\r\n", endpoint.addr).as_bytes());
        }
        let mut body = BodyProgress::new(head.body, self.settings.max_body_bytes, capture);
        let k = body.take(self.inbuf.bytes(), &mut out.0).map_err(Fail::Proxy)?;
        self.inbuf.consume(k);
        if head.expect_continue && !body.done() && head.minor == 1 {
            let d = Deadline::now() + self.settings.header_read_timeout;
            write_by(self.client, b"HTTP/1.1 100 Continue\r\n\r\n", d)
                .await
                .map_err(|_| Fail::ClientGone)?;
        }
        if !body.done() && body.small() {
            self.read_small_body(&mut body, &mut out.0).await?;
        }
        Ok(Outgoing { bytes: out, body })
    }

    /// Read the rest of a small body (a chat request's JSON, whose head and body often come
    /// in separate segments) before anything is sent, so the whole request is at hand should
    /// a pooled connection die under it: without it, such a POST could never be sent again.
    /// The client has `header_read_timeout` to send it, like a head.
    async fn read_small_body(&mut self, body: &mut BodyProgress, out: &mut Vec<u8>) -> Result<(), Fail> {
        let deadline = Deadline::now() + self.settings.header_read_timeout;
        while !body.done() {
            self.inbuf.reserve(BUF_SIZE);
            let read = tokio::time::timeout_at(deadline, self.client.read_buf(&mut self.inbuf.data)).await;
            match read {
                Ok(Ok(n)) if n > 0 => {}
                Ok(_) => {
                    return Err(Fail::Proxy(exchange::bad_body(
                        "the client closed the connection before the whole body",
                    )))
                }
                Err(_) => {
                    return Err(Fail::Proxy(exchange::bad_body(
                        "the client did not send its body within limits.header_read_timeout",
                    )))
                }
            }
            let k = body.take(self.inbuf.bytes(), out).map_err(Fail::Proxy)?;
            self.inbuf.consume(k);
        }
        Ok(())
    }

    /// Attempts until one gets a response head, by [`Exchange::attempts`].
    async fn send(
        &mut self,
        head: &RequestHead,
        req: &mut Outgoing,
        ex: &mut Exchange,
        endpoint: Arc<Endpoint>,
    ) -> Result<(Answer, EndpointLoad), Fail> {
        let route = ex.route.clone();
        let (fwd, limit) = (self.fwd, self.settings.first_byte_timeout);
        let rcx = ResponseContext {
            upgrade: head.upgrade,
            head_request: head.method == http::Method::HEAD,
            client_minor: head.minor,
            client_keep_alive: head.keep_alive,
            tags: self.settings.response_headers.then_some(&*route),
        };
        // The whole body is in `req.bytes` (and can go again) only if it was read before sending.
        let whole = req.body.done();
        let mut tries = Tries {
            sender: self,
            req,
            head,
            rcx,
            whole,
        };
        ex.attempts(fwd, &mut tries, endpoint, limit).await
    }

    /// One try on one connection: send the request (streaming what is left of its body) and
    /// read the response head.
    async fn attempt(
        &mut self,
        endpoint: &Arc<Endpoint>,
        fresh_only: bool,
        req: &mut Outgoing,
        rcx: &ResponseContext<'_>,
    ) -> Result<Answer, Failed<Fail>> {
        let pooled = if fresh_only { None } else { endpoint.pool.take_raw() };
        let mut up = match pooled {
            Some(stream) => UpstreamSocket { stream, reused: true },
            None => UpstreamSocket {
                stream: endpoint.pool.connect_raw().await.map_err(Failed::Connect)?,
                reused: false,
            },
        };
        if let Err(e) = up.stream.write_all(&req.bytes.0).await {
            // A write refused outright on a reused connection: the upstream closed it.
            return Err(if up.reused && req.body.done() {
                Failed::Stale(exchange::upstream_failed(endpoint, &e.to_string()))
            } else {
                let m = format!("sending the request failed: {e}");
                Failed::Final(Fail::Proxy(exchange::upstream_failed(endpoint, &m)))
            });
        }
        if !req.body.done() {
            self.stream_body(&mut up.stream, &mut req.body, endpoint).await?;
        }
        // The request is out; a model may think for seconds before its first byte, and
        // thousands of streams can wait at once: the client's read buffer goes back to the
        // pool (unless pipelined bytes wait in it), and the copy kept for a resend shrinks
        // to its size (a pooled buffer would hold a whole page per waiting stream).
        self.inbuf.release();
        req.bytes.shrink();
        self.response_head(up, endpoint, rcx).await
    }

    /// Read the upstream's response head (interim 1xx answers skipped), rewritten for the
    /// client.
    async fn response_head(
        &mut self,
        mut up: UpstreamSocket,
        endpoint: &Endpoint,
        rcx: &ResponseContext<'_>,
    ) -> Result<Answer, Failed<Fail>> {
        let mut upbuf = Buf::new();
        let mut cout = Out::new();
        loop {
            if !upbuf.is_empty() {
                match self.parse_head(&mut upbuf, &mut cout, endpoint, rcx).await? {
                    Parsed::Partial => {}
                    Parsed::Interim => continue,
                    Parsed::Head(head, tunnel) => {
                        return Ok(Answer {
                            up,
                            head,
                            rest: upbuf,
                            out: cout,
                            tunnel,
                        })
                    }
                }
            }
            self.read_head_bytes(&mut up, &mut upbuf, endpoint).await?;
        }
    }

    /// Parse what of the response head is in `upbuf` (the client's version of it goes to
    /// `cout`); an interim answer the client is to see is written to it at once.
    async fn parse_head(
        &mut self,
        upbuf: &mut Buf,
        cout: &mut Out,
        endpoint: &Endpoint,
        rcx: &ResponseContext<'_>,
    ) -> Result<Parsed, Fail> {
        let rcx = &rcx.draining(*self.shutdown.borrow());
        match response::response_head(upbuf.bytes(), rcx, cout.vec()) {
            Ok(ResponseParse::Partial) => Ok(Parsed::Partial),
            Ok(ResponseParse::Interim { len, relay }) => {
                upbuf.consume(len);
                if relay {
                    let d = Deadline::now() + self.settings.header_read_timeout;
                    let sent = write_by(self.client, &cout.0, d).await;
                    cout.0.clear();
                    sent.map_err(|_| Fail::ClientGone)?;
                }
                Ok(Parsed::Interim)
            }
            Ok(ResponseParse::Head(h)) => {
                upbuf.consume(h.head_len);
                Ok(Parsed::Head(h, false))
            }
            Ok(ResponseParse::Switching { len }) => {
                upbuf.consume(len);
                let head = ResponseHead {
                    head_len: len,
                    status: 101,
                    body: Framing::Close,
                    upstream_keep_alive: false,
                    sse: false,
                    out: response::OutMode::None,
                    close_client: true,
                };
                Ok(Parsed::Head(head, true))
            }
            Err(m) => Err(Fail::Proxy(exchange::bad_response(endpoint, &m))),
        }
    }

    /// Read more of the response head into `upbuf`. While nothing came yet (the model may
    /// think for minutes) the wait holds no buffer; either way it watches the client.
    async fn read_head_bytes(
        &mut self,
        up: &mut UpstreamSocket,
        upbuf: &mut Buf,
        endpoint: &Endpoint,
    ) -> Result<(), Failed<Fail>> {
        let max = self.settings.max_header_bytes;
        loop {
            let nothing_yet = upbuf.is_empty();
            if nothing_yet {
                upbuf.release();
                let mut ready = pin!(read_ready(&up.stream));
                if poll_now(ready.as_mut()).is_pending() {
                    tokio::select! {
                        biased;
                        _ = ready => {}
                        _ = client_gone(self.client, self.inbuf, max) => return Err(Fail::ClientGone.into()),
                    }
                }
            }
            if !upbuf.reserve(response::MAX_RESPONSE_HEAD) {
                return Err(Fail::Proxy(exchange::bad_response(endpoint, "response head too large")).into());
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
                            _ = client_gone(self.client, self.inbuf, max) => return Err(Fail::ClientGone.into()),
                        }
                    }
                }
            };
            let why = match r {
                Ok(0) => "closed the connection before answering".to_string(),
                Err(e) => format!("failed before answering: {e}"),
                Ok(_) => return Ok(()),
            };
            let e = exchange::upstream_failed(endpoint, &why);
            return Err(if up.reused && nothing_yet {
                Failed::Stale(e)
            } else {
                Failed::Final(Fail::Proxy(e))
            });
        }
    }

    /// Copy the rest of the request body from the client to the upstream (chunked bodies
    /// framed anew on the way; Content-Length bodies written straight from the buffer).
    async fn stream_body(
        &mut self,
        up: &mut TcpStream,
        body: &mut BodyProgress,
        endpoint: &Endpoint,
    ) -> Result<(), Fail> {
        let mut framed = Out::new();
        while !body.done() {
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
            let (take, wrote) = if let Framing::Length(_) = body.framing {
                let take = body.take_length(self.inbuf.len());
                body.copy(&self.inbuf.bytes()[..take]);
                (take, up.write_all(&self.inbuf.bytes()[..take]).await)
            } else {
                let o = framed.vec();
                let k = body.take(self.inbuf.bytes(), o).map_err(Fail::Proxy)?;
                let r = up.write_all(o).await;
                o.clear();
                (k, r)
            };
            if let Err(e) = wrote {
                return Err(Fail::Proxy(exchange::upstream_failed(
                    endpoint,
                    &format!("sending the request body failed: {e}"),
                )));
            }
            self.inbuf.consume(take);
        }
        Ok(())
    }
}

/// What [`Sender::parse_head`] found.
enum Parsed {
    Partial,
    /// An interim answer, dealt with: the final one follows.
    Interim,
    /// The final head; `true`: a 101 that opens a tunnel.
    Head(ResponseHead, bool),
}

/// This engine's side of [`Exchange::attempts`].
struct Tries<'s, 'a> {
    sender: &'s mut Sender<'a>,
    req: &'s mut Outgoing,
    head: &'s RequestHead,
    rcx: ResponseContext<'s>,
    /// The whole body went out with the head (see [`Outgoing::facts`]).
    whole: bool,
}

impl exchange::Attempts for Tries<'_, '_> {
    type Answer = Answer;
    type Error = Fail;

    async fn attempt(&mut self, endpoint: &Arc<Endpoint>, fresh: bool) -> Result<Answer, Failed<Fail>> {
        self.sender.attempt(endpoint, fresh, self.req, &self.rcx).await
    }

    fn resend(&self) -> Result<exchange::ResendReason, exchange::Refusal> {
        exchange::resend(&self.req.facts(self.head, self.whole), self.sender.settings)
    }
}
