//! Request and response bodies: streamed frame by frame, never buffered.
//!
//! [`RespBody`] carries the request's color guard, so the color's in-flight count covers the
//! whole response, and hands the upstream connection back to its pool only after a clean end.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::route::{ColorRoute, Endpoint};
use crate::upstream::Conn;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The request body's size passed the configured limit.
#[derive(Debug)]
pub struct BodyTooLarge(pub u64);

impl std::fmt::Display for BodyTooLarge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "request body larger than the limit of {} bytes", self.0)
    }
}
impl std::error::Error for BodyTooLarge {}

/// A request body on its way upstream, cut off with [`BodyTooLarge`] past the limit.
pub struct ReqBody {
    inner: Option<Incoming>,
    limit: u64,
    seen: u64,
}

impl ReqBody {
    pub fn new(inner: Incoming, limit: u64) -> ReqBody {
        ReqBody {
            inner: Some(inner),
            limit,
            seen: 0,
        }
    }

    pub fn empty() -> ReqBody {
        ReqBody {
            inner: None,
            limit: 0,
            seen: 0,
        }
    }
}

impl Body for ReqBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        match Pin::new(inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(f))) => {
                if let Some(d) = f.data_ref() {
                    this.seen += d.len() as u64;
                    if this.seen > this.limit {
                        this.inner = None;
                        return Poll::Ready(Some(Err(Box::new(BodyTooLarge(this.limit)))));
                    }
                }
                Poll::Ready(Some(Ok(f)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(Box::new(e)))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(|b| b.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.as_ref().map_or(SizeHint::with_exact(0), |b| b.size_hint())
    }
}

/// Holds one request's place in its color's in-flight count; records its duration on drop.
pub(crate) struct Guard {
    pub(crate) route: Arc<ColorRoute>,
    pub(crate) started: Instant,
    /// Present only when the service's access log is on (one allocation per request then).
    pub(crate) access: Option<Box<Access>>,
}

/// What an access-log line says about a request, filled in as it goes.
pub(crate) struct Access {
    pub(crate) service: Arc<str>,
    pub(crate) method: http::Method,
    pub(crate) path: String,
    pub(crate) peer: std::net::SocketAddr,
    pub(crate) status: u16,
}

impl Guard {
    pub(crate) fn new(route: Arc<ColorRoute>, started: Instant, access: Option<Box<Access>>) -> Guard {
        route.stats.in_flight.fetch_add(1, Relaxed);
        Guard { route, started, access }
    }

    pub(crate) fn set_status(&mut self, status: u16) {
        if let Some(a) = self.access.as_mut() {
            a.status = status;
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.route.stats.in_flight.fetch_sub(1, Relaxed);
        let elapsed = self.started.elapsed();
        self.route.stats.duration.observe(elapsed);
        if let Some(a) = &self.access {
            // Written when the last byte has gone (or the client left): the duration covers
            // the whole stream. Status 0: the client went away before the response head.
            tracing::info!(
                target: "cutover::access",
                service = %a.service,
                color = %self.route.color,
                version = self.route.version.as_deref().unwrap_or("-"),
                method = %a.method,
                path = %a.path,
                status = a.status,
                peer = %a.peer,
                duration_ms = elapsed.as_secs_f64() * 1000.0,
                "request"
            );
        }
    }
}

/// A response body: either a proxied upstream stream or a small body the proxy made itself.
pub struct RespBody(Kind);

enum Kind {
    Full(Option<Bytes>),
    Proxied(Box<Proxied>),
}

struct Proxied {
    inner: Incoming,
    guard: Option<Guard>,
    /// The upstream connection, given back to `endpoint`'s pool after a clean end.
    conn: Option<(Arc<Endpoint>, Conn)>,
    deadline: tokio::time::Instant,
    /// Armed only when the body first has to wait: most small bodies never do, and a timer
    /// registration per request is measurable on the request path.
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Resolves when the color is closed at its drain deadline; armed with `sleep`.
    closed: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
    /// `text/event-stream`: events are counted and an upstream failure is told in-band.
    sse: bool,
    last_was_newline: bool,
    state: State,
}

#[derive(PartialEq)]
enum State {
    Streaming,
    /// An error event was handed to hyper. The next poll yields once, so hyper flushes the
    /// event to the client before the failure aborts the connection (it does not flush
    /// buffered data when a body fails).
    FailAfterEvent,
    /// The event is out: fail the body so the client also sees the transfer cut.
    FailNow,
    Done,
}

impl RespBody {
    pub fn full(b: impl Into<Bytes>) -> RespBody {
        RespBody(Kind::Full(Some(b.into())))
    }

    /// The bytes of a body the proxy made itself (empty for a proxied one).
    pub(crate) fn full_bytes(&self) -> &[u8] {
        match &self.0 {
            Kind::Full(Some(b)) => b,
            _ => &[],
        }
    }

    pub(crate) fn proxied(
        inner: Incoming,
        guard: Guard,
        conn: (Arc<Endpoint>, Conn),
        deadline: tokio::time::Instant,
        sse: bool,
    ) -> RespBody {
        let mut p = Proxied {
            inner,
            guard: Some(guard),
            conn: Some(conn),
            deadline,
            sleep: None,
            closed: None,
            sse,
            last_was_newline: false,
            state: State::Streaming,
        };
        if p.inner.is_end_stream() {
            p.finish();
        }
        RespBody(Kind::Proxied(Box::new(p)))
    }
}

impl Proxied {
    /// Clean end: the connection can serve another request, and the request is done.
    fn finish(&mut self) {
        self.state = State::Done;
        if let Some((ep, conn)) = self.conn.take() {
            if let Some(s) = conn.into_reusable() {
                ep.pool.put(s);
            }
        }
        self.guard = None;
    }

    fn fail(&mut self, why: &str) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(g) = &self.guard {
            g.route.stats.aborted_bodies.fetch_add(1, Relaxed);
        }
        // Dropping the connection closes it: the upstream sees the request cancelled.
        self.conn = None;
        if self.sse && self.state == State::Streaming {
            self.state = State::FailAfterEvent;
            return Poll::Ready(Some(Ok(Frame::data(Bytes::from(sse_error_event(why))))));
        }
        self.state = State::Done;
        self.guard = None;
        Poll::Ready(Some(Err(why.to_string().into())))
    }

    fn count_events(&mut self, d: &Bytes) {
        let n = count_events(&mut self.last_was_newline, d);
        if n > 0 {
            if let Some(g) = &self.guard {
                g.route.stats.stream_events.fetch_add(n, Relaxed);
            }
        }
    }
}

/// Blank lines in an event stream, one per event; `last_nl` carries a newline that ended the
/// previous piece, so an event split across reads is still counted once.
pub(crate) fn count_events(last_nl: &mut bool, d: &[u8]) -> u64 {
    let mut n = 0;
    for &b in d {
        if b == b'\n' {
            if *last_nl {
                n += 1;
            }
            *last_nl = true;
        } else if b != b'\r' {
            *last_nl = false;
        }
    }
    n
}

/// The event that tells an event-stream client why its stream was cut.
pub(crate) fn sse_error_event(why: &str) -> String {
    format!(
        "event: error\ndata: {{\"error\":{{\"code\":\"upstream_stream_failed\",\"message\":\"{}\"}}}}\n\n",
        why.replace(['"', '\\', '\n'], " ")
    )
}

impl Body for RespBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let p = match &mut self.get_mut().0 {
            Kind::Full(b) => return Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Kind::Proxied(p) => p,
        };
        match p.state {
            State::Done => return Poll::Ready(None),
            State::FailAfterEvent => {
                p.state = State::FailNow;
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            State::FailNow => {
                p.state = State::Done;
                p.guard = None;
                return Poll::Ready(Some(Err("upstream stream failed".into())));
            }
            State::Streaming => {}
        }
        if p.guard.as_ref().is_some_and(|g| g.route.closing.load(Relaxed)) {
            if let Some(g) = &p.guard {
                g.route.stats.drain_closed.fetch_add(1, Relaxed);
            }
            return p.fail(crate::exchange::DRAIN_CLOSED);
        }
        match Pin::new(&mut p.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(f))) => {
                if p.sse {
                    if let Some(d) = f.data_ref() {
                        let d = d.clone();
                        p.count_events(&d);
                    }
                }
                if p.inner.is_end_stream() {
                    p.finish();
                }
                Poll::Ready(Some(Ok(f)))
            }
            Poll::Ready(Some(Err(e))) => p.fail(&format!("upstream failed mid-body: {e}")),
            Poll::Ready(None) => {
                p.finish();
                Poll::Ready(None)
            }
            Poll::Pending => {
                let deadline = p.deadline;
                let sleep = p
                    .sleep
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                if sleep.as_mut().poll(cx).is_ready() {
                    return p.fail(crate::exchange::TIMED_OUT);
                }
                if p.closed.is_none() {
                    if let Some(g) = &p.guard {
                        let mut rx = g.route.close_signal.subscribe();
                        p.closed = Some(Box::pin(async move {
                            let _ = rx.wait_for(|closed| *closed).await;
                        }));
                    }
                }
                if p.closed.as_mut().is_some_and(|c| c.as_mut().poll(cx).is_ready()) {
                    if let Some(g) = &p.guard {
                        g.route.stats.drain_closed.fetch_add(1, Relaxed);
                    }
                    return p.fail(crate::exchange::DRAIN_CLOSED);
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.0 {
            Kind::Full(b) => b.is_none(),
            Kind::Proxied(p) => p.state == State::Done,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.0 {
            Kind::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Kind::Proxied(p) if p.state == State::Streaming && !p.sse => p.inner.size_hint(),
            Kind::Proxied(_) => SizeHint::default(),
        }
    }
}
