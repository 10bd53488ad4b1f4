//! A request body on its way upstream through hyper: streamed frame by frame, cut off past
//! the size limit, copied for the shadow comparison when it is sampled.

use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::mirror::Capture;

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
    /// A body read whole before sending (so the request can be sent again), not yet sent.
    full: Option<Bytes>,
    limit: u64,
    seen: u64,
    /// Why the body failed, if it was the client's doing: kept beside the body because the
    /// HTTP/2 client reports a failed body as a plain stream error, without the cause, and a
    /// client's mistake must never count against the color.
    fault: Arc<AtomicU8>,
    /// Set when the shadow comparison copies this request.
    capture: Option<Arc<Capture>>,
}

/// What ended a request body early on the client's side (read through [`ReqBody::fault`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientFault {
    None,
    TooLarge,
    /// The client's stream failed (it reset or went away mid-body).
    Failed,
}

impl ReqBody {
    pub fn new(inner: Incoming, limit: u64) -> ReqBody {
        ReqBody {
            inner: Some(inner),
            full: None,
            limit,
            seen: 0,
            fault: Arc::default(),
            capture: None,
        }
    }

    pub fn empty() -> ReqBody {
        ReqBody {
            inner: None,
            full: None,
            limit: 0,
            seen: 0,
            fault: Arc::default(),
            capture: None,
        }
    }

    /// Copy the data of this body, as it streams upstream, for the shadow comparison.
    pub(crate) fn capture(&mut self, c: Arc<Capture>) {
        self.capture = Some(c);
    }

    /// A body whose first bytes `start` were read already (to find its `model` on a shared
    /// listener): they go first, then the rest of `inner`, all counted against `limit`.
    pub fn prefixed(start: Bytes, inner: Incoming, limit: u64) -> ReqBody {
        let mut b = ReqBody::new(inner, limit);
        b.full = (!start.is_empty()).then_some(start);
        b
    }

    /// A body already read whole (within its limit).
    pub fn full(data: Bytes) -> ReqBody {
        let mut b = ReqBody::empty();
        b.full = (!data.is_empty()).then_some(data);
        b
    }

    /// Reads what the body's client did, after the body is gone (into a request sent).
    pub fn fault(&self) -> impl Fn() -> ClientFault + Send + Sync + 'static {
        let f = self.fault.clone();
        move || match f.load(Relaxed) {
            1 => ClientFault::TooLarge,
            2 => ClientFault::Failed,
            _ => ClientFault::None,
        }
    }
}

impl Body for ReqBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if let Some(data) = this.full.take() {
            // A read start of a streamed body (`prefixed`) is part of what streams: counted
            // and copied like the frames after it. A whole body was captured by the caller.
            if this.inner.is_some() {
                this.seen += data.len() as u64;
                if this.seen > this.limit {
                    this.inner = None;
                    this.fault.store(1, Relaxed);
                    return Poll::Ready(Some(Err(Box::new(BodyTooLarge(this.limit)))));
                }
                if let Some(c) = &this.capture {
                    c.request_data(&data);
                }
            }
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        match Pin::new(inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(f))) => {
                if let Some(d) = f.data_ref() {
                    this.seen += d.len() as u64;
                    if this.seen > this.limit {
                        this.inner = None;
                        this.fault.store(1, Relaxed);
                        return Poll::Ready(Some(Err(Box::new(BodyTooLarge(this.limit)))));
                    }
                    if let Some(c) = &this.capture {
                        c.request_data(d);
                    }
                }
                Poll::Ready(Some(Ok(f)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.fault.store(2, Relaxed);
                Poll::Ready(Some(Err(Box::new(e))))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.full.is_none() && self.inner.as_ref().is_none_or(|b| b.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        if let (Some(d), Some(inner)) = (&self.full, &self.inner) {
            let (n, rest) = (d.len() as u64, inner.size_hint());
            if let Some(e) = rest.exact() {
                return SizeHint::with_exact(n + e);
            }
            let mut h = SizeHint::new();
            h.set_lower(rest.lower() + n);
            if let Some(u) = rest.upper() {
                h.set_upper(u + n);
            }
            return h;
        }
        if let Some(d) = &self.full {
            return SizeHint::with_exact(d.len() as u64);
        }
        self.inner.as_ref().map_or(SizeHint::with_exact(0), |b| b.size_hint())
    }
}
