//! The response's way back to the client: its body decoded as it arrives and written in the
//! framing the client's connection needs, event streams counted, the drain deadline and
//! the request timeout enforced; and the proxy's own error answers on the wire.

use std::future::Future;
use std::pin::{pin, Pin};
use std::sync::atomic::Ordering::Relaxed;
use std::task::Poll;

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::time::{sleep_until, Instant as Deadline, Sleep};

use super::buf::{self, Buf, Out, BUF_SIZE};
use super::chunked::{chunk, last_chunk, Chunked};
use super::io::{client_gone, poll_now, read_ready, wait_true, write_by, UpstreamSocket};
use super::response::{OutMode, ResponseHead};
use super::Framing;
use crate::error::ProxyError;
use crate::guard::{count_events, sse_error_event, Guard, DRAIN_CLOSED, TIMED_OUT};
use crate::route::{ColorRoute, Endpoint};

/// What a successful attempt hands to the relay.
pub(super) struct Answer {
    pub(super) up: UpstreamSocket,
    pub(super) head: ResponseHead,
    /// Bytes read after the response head (the start of the body).
    pub(super) rest: Buf,
    /// The client's version of the response head.
    pub(super) out: Out,
    /// A 101 to an upgrade request: what follows is a tunnel, not a body.
    pub(super) tunnel: bool,
}

/// What relaying one response needs from the exchange.
pub(super) struct Relay<'a> {
    pub(super) client: &'a mut TcpStream,
    /// The client's buffer: a pipelined next request read while watching for the client
    /// going away stays here.
    pub(super) inbuf: &'a mut Buf,
    pub(super) max_header: usize,
    /// The request's guard: it sees the body go by (bytes, events) and its clean end.
    pub(super) guard: &'a mut Guard,
    pub(super) route: &'a ColorRoute,
    pub(super) endpoint: &'a Endpoint,
    /// `request_timeout` from the request's start.
    pub(super) deadline: Deadline,
}

/// How far the body has come.
struct Progress {
    /// Content-Length bytes still to come.
    left: u64,
    dec: Chunked,
    /// An event stream's last byte was a newline (an event split across reads).
    last_nl: bool,
    /// A close-delimited body saw its end.
    eof: bool,
}

/// Resolves when the color's drain deadline closes its streams (polled again after that, it
/// would panic: a wait that sees it ends the response).
type Closing = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Why waiting for more of the body stopped.
enum Wait {
    Readable,
    /// The client left or stopped reading: nobody to tell.
    ClientGone,
    /// Cut, with the reason an event stream is told.
    Cut(&'static str),
}

impl Relay<'_> {
    /// After a 101: the client's 101 head (and whatever the upstream already sent of the new
    /// protocol) goes out, what the client already sent goes up, then bytes are copied both
    /// ways until either side closes, the request timeout, or the old color's drain deadline
    /// (counted in `drain_closed`, like a stream). The upstream connection is never pooled
    /// again.
    pub(super) async fn tunnel(self, a: Answer) {
        let Answer {
            mut up, rest, mut out, ..
        } = a;
        out.vec().extend_from_slice(rest.bytes());
        drop(rest);
        if write_by(self.client, &out.0, self.deadline).await.is_err() {
            return;
        }
        drop(out);
        if !self.inbuf.is_empty() {
            let n = self.inbuf.len();
            if write_by(&mut up.stream, self.inbuf.bytes(), self.deadline)
                .await
                .is_err()
            {
                return;
            }
            self.inbuf.consume(n);
        }
        self.inbuf.release();
        if self.route.closing.load(Relaxed) {
            self.route.stats.drain_closed.fetch_add(1, Relaxed);
            return;
        }
        let mut closed = self.route.close_signal.subscribe();
        tokio::select! {
            _ = tokio::io::copy_bidirectional(self.client, &mut up.stream) => {}
            _ = sleep_until(self.deadline) => {}
            _ = wait_true(&mut closed) => {
                self.route.stats.drain_closed.fetch_add(1, Relaxed);
            }
        }
    }

    /// Stream the response body to the client. True when it ended cleanly.
    pub(super) async fn run(mut self, a: Answer) -> bool {
        let Answer {
            mut up,
            head: rh,
            rest: mut upbuf,
            out: mut cout,
            ..
        } = a;
        let mut p = Progress {
            left: if let Framing::Length(n) = rh.body { n } else { 0 },
            dec: Chunked::new(),
            last_nl: false,
            eof: false,
        };
        // Made once per response, not per wait: a stream waits once per token, and a new
        // timer or watch registration each time is work every token would pay for.
        let mut timer = pin!(sleep_until(self.deadline));
        let mut closing: Option<Closing> = None;
        loop {
            let done = match self.take(&rh, &mut p, &mut upbuf, &mut cout) {
                Ok(done) => done,
                Err(why) => return self.fail(&rh, cout, &why).await,
            };
            if done && rh.out == OutMode::Rechunk {
                last_chunk(cout.vec(), p.dec.trailers());
            }
            if !cout.0.is_empty() {
                if write_by(self.client, &cout.0, self.deadline).await.is_err() {
                    // The client left or stopped reading: the upstream connection is
                    // dropped, which cancels the request there.
                    return false;
                }
                cout.0.clear();
            }
            if done {
                if rh.upstream_keep_alive && upbuf.is_empty() && rh.body != Framing::Close {
                    self.endpoint.pool.put_raw(up.stream);
                }
                self.guard.complete();
                return true;
            }
            if self.route.closing.load(Relaxed) {
                self.route.stats.drain_closed.fetch_add(1, Relaxed);
                return self.fail(&rh, cout, DRAIN_CLOSED).await;
            }
            // Everything read so far is consumed: wait for more without holding buffers, so
            // a stream between two tokens costs its socket and little else.
            upbuf.release();
            cout.release();
            match self.wait(&up.stream, timer.as_mut(), &mut closing).await {
                Wait::Readable => {}
                Wait::ClientGone => return false,
                Wait::Cut(why) => return self.fail(&rh, cout, why).await,
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
                Ok(0) if rh.body == Framing::Close => p.eof = true,
                Ok(0) => {
                    let why = "upstream failed mid-body: connection closed before the body ended";
                    return self.fail(&rh, cout, why).await;
                }
                Err(e) => {
                    let why = format!("upstream failed mid-body: {e}");
                    return self.fail(&rh, cout, &why).await;
                }
                Ok(_) => {}
            }
        }
    }

    /// Move what `upbuf` holds of the body into `cout`, in the client's framing. True when
    /// the body is complete; Err when the upstream's framing is broken.
    fn take(&mut self, rh: &ResponseHead, p: &mut Progress, upbuf: &mut Buf, cout: &mut Out) -> Result<bool, String> {
        let mut events = 0;
        let mut bytes = 0usize;
        let (mode, sse) = (rh.out, rh.sse);
        let done = match rh.body {
            Framing::None => true,
            Framing::Length(_) => {
                let take = (upbuf.len() as u64).min(p.left) as usize;
                let d = &upbuf.bytes()[..take];
                bytes += take;
                if sse {
                    events += count_events(&mut p.last_nl, d);
                }
                self.guard.mirror_data(d);
                cout.vec().extend_from_slice(d);
                upbuf.consume(take);
                p.left -= take as u64;
                p.left == 0
            }
            Framing::Chunked => {
                let out = cout.vec();
                let last_nl = &mut p.last_nl;
                let bytes = &mut bytes;
                let guard = &mut *self.guard;
                let fed = p.dec.feed(upbuf.bytes(), |d| {
                    *bytes += d.len();
                    if sse {
                        events += count_events(last_nl, d);
                    }
                    guard.mirror_data(d);
                    match mode {
                        OutMode::Rechunk => chunk(out, d),
                        OutMode::Close => out.extend_from_slice(d),
                        _ => {}
                    }
                });
                let k = fed.map_err(|m| format!("upstream sent a malformed chunked body: {m}"))?;
                upbuf.consume(k);
                p.dec.done()
            }
            Framing::Close => {
                let d = upbuf.bytes();
                bytes += d.len();
                if sse {
                    events += count_events(&mut p.last_nl, d);
                }
                self.guard.mirror_data(d);
                match mode {
                    OutMode::Rechunk => chunk(cout.vec(), d),
                    _ => cout.vec().extend_from_slice(d),
                }
                let n = upbuf.len();
                upbuf.consume(n);
                p.eof
            }
        };
        if events > 0 {
            self.route.stats.stream_events.fetch_add(events, Relaxed);
        }
        if bytes > 0 || events > 0 {
            self.guard.body(bytes, events);
        }
        Ok(done)
    }

    /// Wait for the upstream to send more, the deadline, the drain deadline's cut, or the
    /// client going away, whichever comes first.
    async fn wait(&mut self, up: &TcpStream, timer: Pin<&mut Sleep>, closing: &mut Option<Closing>) -> Wait {
        let mut ready = pin!(read_ready(up));
        if poll_now(ready.as_mut()).is_ready() {
            return Wait::Readable;
        }
        let closing = closing.get_or_insert_with(|| {
            let mut rx = self.route.close_signal.subscribe();
            Box::pin(async move { wait_true(&mut rx).await })
        });
        tokio::select! {
            biased;
            _ = ready => Wait::Readable,
            _ = timer => Wait::Cut(TIMED_OUT),
            _ = closing.as_mut() => {
                self.route.stats.drain_closed.fetch_add(1, Relaxed);
                Wait::Cut(DRAIN_CLOSED)
            }
            _ = client_gone(self.client, self.inbuf, self.max_header) => Wait::ClientGone,
        }
    }

    /// The response cannot be finished: count it, tell an event stream why in-band, and let
    /// the caller close the connection so the client sees the body cut.
    async fn fail(&mut self, rh: &ResponseHead, mut cout: Out, why: &str) -> bool {
        self.route.stats.aborted_bodies.fetch_add(1, Relaxed);
        if rh.sse && rh.out == OutMode::Rechunk {
            chunk(cout.vec(), sse_error_event(why).as_bytes());
        }
        if !cout.0.is_empty() {
            let d = self.deadline.min(Deadline::now() + std::time::Duration::from_secs(5));
            let _ = write_by(self.client, &cout.0, d).await;
        }
        false
    }
}

/// The proxy's own error as an HTTP/1.1 response.
pub(super) fn error_response(
    e: ProxyError,
    service: &str,
    route: Option<&ColorRoute>,
    tag: bool,
    close: bool,
    out: &mut Vec<u8>,
) {
    let resp = e.into_response(service, route, tag);
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
