//! The client side of the HTTP/1.1 engine: read request heads (idle connections hold no
//! buffer), answer refusals and errors, and run one exchange per request.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Instant;

use http::StatusCode;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant as Deadline;

use super::buf::{self, Buf, Out};
use super::io::{poll_now, read_ready, write_by, ReadableBy};
use super::pick::{self, Picked};
use super::relay::error_response;
use super::request::{self, HeadError, RequestHead};
use super::send::{self, Sender};
use super::{After, Fail, Framing};
use crate::error::{ProxyError, Source};
use crate::exchange::{self, Exchange, Forwarder};
use crate::route::ColorRoute;
use crate::settings::ServiceSettings;

/// One client connection, for as long as it lasts.
pub(super) struct ClientConn {
    pub(super) client: TcpStream,
    pub(super) peer: SocketAddr,
    /// The peer's address as written into `X-Forwarded-For` (made once per connection).
    pub(super) peer_ip: Box<[u8]>,
    /// The peer is one of the service's trusted proxies (decided once per connection).
    pub(super) trusted: bool,
    pub(super) fwd: Arc<Forwarder>,
    pub(super) settings: Arc<ServiceSettings>,
    /// Bytes read from the client and not consumed yet: a head, body bytes, or a pipelined
    /// next request. Released (no memory) while the connection is idle.
    pub(super) inbuf: Buf,
    pub(super) shutdown: watch::Receiver<bool>,
}

/// Why no request head came.
pub(super) enum Stop {
    Closed,
    Http2,
    Refuse(ProxyError),
}

fn head_error(e: HeadError) -> ProxyError {
    let (status, code, m) = match e {
        HeadError::Bad(m) => return exchange::malformed(m),
        HeadError::Unsupported(m) => return exchange::unsupported_coding(m),
        HeadError::LineTooLong => return exchange::header_line_too_large(),
        HeadError::TooLarge => (
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers_too_large",
            "the request head has too many header lines or is larger than limits.max_header_bytes",
        ),
        HeadError::UriTooLong => (
            StatusCode::URI_TOO_LONG,
            "uri_too_long",
            "the request line is longer than limits.max_header_line_bytes",
        ),
        HeadError::Version => (
            StatusCode::HTTP_VERSION_NOT_SUPPORTED,
            "http_version_not_supported",
            "only HTTP/1.x is accepted in a request line (HTTP/2 starts with its preface)",
        ),
    };
    ProxyError::new(status, code, Source::Client, m)
}

impl ClientConn {
    pub(super) fn new(
        client: TcpStream,
        peer: SocketAddr,
        fwd: Arc<Forwarder>,
        shutdown: watch::Receiver<bool>,
    ) -> ClientConn {
        let settings = fwd.service.settings();
        ClientConn {
            client,
            peer,
            peer_ip: peer.ip().to_string().into_bytes().into_boxed_slice(),
            trusted: !settings.trusted_proxies.is_empty() && settings.trusted_proxies.contains(peer.ip()),
            fwd,
            settings,
            inbuf: Buf::new(),
            shutdown,
        }
    }

    /// Parse what is buffered: a head rewritten into `out`, not enough yet, or a refusal.
    fn try_head(&self, first: bool) -> Result<Option<(RequestHead, Out)>, Stop> {
        let preface = if first {
            buf::h2_preface(self.inbuf.bytes())
        } else {
            Some(false)
        };
        match preface {
            Some(true) => return Err(Stop::Http2),
            None => return Ok(None),
            Some(false) => {}
        }
        let target = request::Target {
            peer_ip: &self.peer_ip,
            trusted: self.trusted,
            scheme: b"http",
            want_path: self.settings.access_log,
            max_line: self.settings.max_header_line_bytes,
            upgrades: &self.settings.upgrade_protocols,
            drop: self.settings.header_route.as_ref().map(|r| &r.header),
        };
        let mut out = Out::new();
        match request::request_head(self.inbuf.bytes(), &target, out.vec()) {
            Ok(Some(h)) => Ok(Some((h, out))),
            Ok(None) => Ok(None),
            Err(e) => Err(Stop::Refuse(head_error(e))),
        }
    }

    /// Read until a whole request head is buffered and rewritten into `out`. Waiting for it
    /// (idle keep-alive included) is bounded by `header_read_timeout`.
    ///
    /// The output buffer is taken only once bytes have arrived, so a connection waiting for
    /// its next request holds no buffer.
    #[allow(clippy::manual_async_fn)] // on purpose: see the comment in the body
    pub(super) fn read_head(
        &mut self,
        first: bool,
    ) -> impl Future<Output = Result<(RequestHead, Out), Stop>> + Send + '_ {
        // A block, not an async fn, whose arguments would be kept twice (rustc#62958): this
        // future is most of what an idle connection's task holds.
        async move {
            let max = self.settings.max_header_bytes;
            let mut deadline: Option<Deadline> = None;
            loop {
                if !self.inbuf.is_empty() {
                    if let Some(h) = self.try_head(first)? {
                        return Ok(h);
                    }
                    if self.inbuf.len() >= max {
                        return Err(Stop::Refuse(head_error(HeadError::TooLarge)));
                    }
                }
                // Wait for the socket to turn readable holding no buffer when none is needed
                // yet: between requests, this is where idle keep-alive connections spend
                // their time.
                if self.inbuf.is_empty() {
                    self.inbuf.release();
                }
                if poll_now(pin!(read_ready(&self.client))).is_pending() {
                    let d = *deadline.get_or_insert_with(|| Deadline::now() + self.settings.header_read_timeout);
                    if !ReadableBy::new(&self.client, d).await {
                        return Err(Stop::Closed);
                    }
                }
                if !self.inbuf.reserve(max) {
                    return Err(Stop::Refuse(head_error(HeadError::TooLarge)));
                }
                // `read_buf`, not `try_read_buf`: a read that leaves room in the buffer drained
                // the socket, and only `AsyncRead` then clears tokio's readiness; with
                // `try_read_buf` the next wait found stale readiness and paid a `recvfrom`
                // that returned EAGAIN (3 per request instead of 2, measured).
                match poll_now(pin!(self.client.read_buf(&mut self.inbuf.data))) {
                    Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Err(Stop::Closed),
                    Poll::Ready(Ok(_)) => {}
                    // Readiness was stale: back to waiting (without a buffer if none held).
                    Poll::Pending => {}
                }
            }
        }
    }

    /// Answer with the proxy's own error (the connection closes after it).
    pub(super) async fn refuse(&mut self, e: ProxyError, route: Option<&ColorRoute>) {
        let mut out = Out::new();
        let tag = self.settings.response_headers;
        error_response(e, &self.fwd.service.name, route, tag, true, out.vec());
        let deadline = Deadline::now() + self.settings.header_read_timeout;
        let _ = write_by(&mut self.client, &out.0, deadline).await;
    }

    /// One request: forward it, stream the response back, record it.
    pub(super) async fn exchange(&mut self, mut head: RequestHead, out: Out) -> After {
        let fwd = match self.fwd.shared.clone() {
            None => self.fwd.clone(),
            Some(shared) => match pick::pick(self.reader(), &shared, &mut head).await {
                Picked::Service(f) => f,
                Picked::Models(json) => {
                    self.inbuf.consume(head.head_len);
                    if !send::skip_buffered_body(&mut self.inbuf, head.body) {
                        return After::Close;
                    }
                    return self.answer_models(json, &head).await;
                }
                Picked::Refuse(e) => {
                    self.inbuf.consume(head.head_len);
                    let unread = !send::skip_buffered_body(&mut self.inbuf, head.body);
                    let front = self.fwd.clone();
                    return self.answer_error(e, &front, None, &head, unread).await;
                }
            },
        };
        // The head is dealt with from here on, whatever the answer: an error answered on a
        // kept-alive connection must not find the same request again.
        let capture = match fwd.preview {
            false => {
                let raw = &self.inbuf.bytes()[..head.head_len];
                fwd.service
                    .mirror(&head.method, || request::target_of(raw), || request::headers_of(raw))
            }
            true => None,
        };
        let view = HeadView {
            bytes: self.inbuf.bytes(),
            head_len: head.head_len,
            body: head.body,
        };
        let path = &mut head.path;
        let begun = Exchange::begin(&fwd, Instant::now(), &head.method, &view, || {
            exchange::access(&fwd, &head.method, path.take().unwrap_or_default(), self.peer)
        });
        self.inbuf.consume(head.head_len);
        let mut ex = match begun {
            Ok(ex) => ex,
            Err(e) => {
                let unread = !send::skip_buffered_body(&mut self.inbuf, head.body);
                return self.answer_error(e, &fwd, None, &head, unread).await;
            }
        };
        ex.attach(capture);
        let mut body_done = head.body == Framing::None;
        // On a shared listener, the picked service's settings (its body limit, timeouts,
        // retry rule); the head was read under the listener's.
        let settings = match self.fwd.shared {
            Some(_) => fwd.service.settings(),
            None => self.settings.clone(),
        };
        let mut sender = Sender {
            client: &mut self.client,
            inbuf: &mut self.inbuf,
            settings: &settings,
            fwd: &fwd,
            shutdown: &self.shutdown,
        };
        let sent = sender.forward(&head, out, &mut ex, &mut body_done).await;
        match sent {
            Ok(next) => next,
            Err(Fail::Proxy(e)) => {
                ex.failed(&e);
                let route = ex.route.clone();
                self.answer_error(e, &fwd, Some(&route), &head, !body_done).await
            }
            // The client left: nobody to answer. Stale and connect failures were turned
            // into errors by `forward`.
            Err(_) => After::Close,
        }
    }

    /// What a shared listener's pick reads from.
    fn reader(&mut self) -> pick::Reader<'_> {
        pick::Reader {
            client: &mut self.client,
            inbuf: &mut self.inbuf,
            timeout: self.settings.header_read_timeout,
        }
    }

    /// The answer to `GET /v1/models` on a shared listener (the head already consumed).
    async fn answer_models(&mut self, json: String, head: &RequestHead) -> After {
        let close = !head.keep_alive || *self.shutdown.borrow();
        let out = pick::models_answer(&json, head, close);
        let deadline = Deadline::now() + self.settings.header_read_timeout;
        match write_by(&mut self.client, &out, deadline).await {
            Ok(()) if !close => After::KeepAlive,
            _ => After::Close,
        }
    }

    async fn answer_error(
        &mut self,
        e: ProxyError,
        fwd: &Forwarder,
        route: Option<&ColorRoute>,
        head: &RequestHead,
        unread: bool,
    ) -> After {
        let close = unread
            || !head.keep_alive
            || *self.shutdown.borrow()
            || e.status == StatusCode::BAD_REQUEST
            || e.status == StatusCode::PAYLOAD_TOO_LARGE;
        let mut out = Out::new();
        // The service's own choice (on a shared listener, the picked service's).
        let tag = match self.fwd.shared {
            Some(_) => fwd.service.settings().response_headers,
            None => self.settings.response_headers,
        };
        error_response(e, &fwd.service.name, route, tag, close, out.vec());
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
}

/// What routing reads of a request in this engine: the raw head, and the body bytes that
/// arrived with it (still in the input buffer). Nothing more is read for routing: a sticky
/// field that is not in those bytes leaves the request keyless.
struct HeadView<'a> {
    /// The input buffer: the head, then whatever of the body is at hand.
    bytes: &'a [u8],
    head_len: usize,
    body: Framing,
}

impl crate::split::RequestView for HeadView<'_> {
    fn header(&self, name: &http::HeaderName) -> Option<&[u8]> {
        let head = &self.bytes[..self.head_len];
        // The head was parsed and accepted already: lines are CRLF, names are tokens.
        head.split(|&b| b == b'\n').skip(1).find_map(|line| {
            let colon = line.iter().position(|&b| b == b':')?;
            let (n, v) = (&line[..colon], &line[colon + 1..]);
            n.eq_ignore_ascii_case(name.as_str().as_bytes()).then(|| v.trim_ascii())
        })
    }

    fn body_prefix(&self) -> Option<std::borrow::Cow<'_, [u8]>> {
        let at_hand = &self.bytes[self.head_len..];
        match self.body {
            _ if at_hand.is_empty() => None,
            Framing::Chunked => Some(std::borrow::Cow::Owned(crate::split::dechunk_prefix(
                at_hand,
                crate::split::BODY_KEY_CAP,
            ))),
            // Not past the body: what follows may be the next request of a pipeline.
            Framing::Length(n) => Some(std::borrow::Cow::Borrowed(&at_hand[..at_hand.len().min(n as usize)])),
            Framing::None | Framing::Close => None,
        }
    }
}
