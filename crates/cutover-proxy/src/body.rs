//! The response body of the hyper engine: streamed frame by frame, never buffered.
//!
//! [`RespBody`] carries the request's color guard, so the color's in-flight count covers the
//! whole response, and hands the upstream connection back to its pool only after a clean end.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::guard::{count_events, sse_error_event, Guard, DRAIN_CLOSED, TIMED_OUT};
use crate::request_body::BoxError;
use crate::route::EndpointLoad;
use crate::upstream::Conn;

/// A response body: either a proxied upstream stream or a small body the proxy made itself.
pub struct RespBody(Kind, Option<crate::h2drain::StreamHold>);

enum Kind {
    Full(Option<Bytes>),
    Proxied(Box<Proxied>),
}

struct Proxied {
    inner: Incoming,
    guard: Option<Guard>,
    /// The upstream connection, given back to `endpoint`'s pool after a clean end.
    conn: Option<(EndpointLoad, Conn)>,
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

/// The answer to an HTTP/2 stream a draining connection refused: never delivered (the
/// connection is gone by then), so the client sends the request again elsewhere.
pub(crate) fn refused_response() -> http::Response<RespBody> {
    let mut r = http::Response::new(RespBody::full(Bytes::new()));
    *r.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
    r
}

impl RespBody {
    pub fn full(b: impl Into<Bytes>) -> RespBody {
        RespBody(Kind::Full(Some(b.into())), None)
    }

    /// Hold an HTTP/2 stream's place in its connection's in-flight count until this body
    /// ends (dropped), so a drain closes the connection only after it.
    pub(crate) fn hold(&mut self, h: crate::h2drain::StreamHold) {
        self.1 = Some(h);
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
        conn: (EndpointLoad, Conn),
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
        RespBody(Kind::Proxied(Box::new(p)), None)
    }
}

impl Proxied {
    /// Clean end: the connection can serve another request, and the request is done.
    fn finish(&mut self) {
        self.state = State::Done;
        if let Some((load, conn)) = self.conn.take() {
            if let Some(s) = conn.into_reusable() {
                load.endpoint().pool.put(s);
            }
        }
        if let Some(g) = self.guard.as_mut() {
            g.complete();
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

    /// A data frame goes to the client: its bytes, and for a stream its events.
    fn count(&mut self, d: &Bytes) {
        let n = if self.sse {
            count_events(&mut self.last_was_newline, d)
        } else {
            0
        };
        if let Some(g) = self.guard.as_mut() {
            if n > 0 {
                g.route.stats.stream_events.fetch_add(n, Relaxed);
            }
            g.body(d.len(), n);
            g.mirror_data(d);
        }
    }
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
            return p.fail(DRAIN_CLOSED);
        }
        match Pin::new(&mut p.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(f))) => {
                if let Some(d) = f.data_ref() {
                    let d = d.clone();
                    p.count(&d);
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
                    return p.fail(TIMED_OUT);
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
                    return p.fail(DRAIN_CLOSED);
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
