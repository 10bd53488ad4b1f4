//! The data plane's side of shadowing: a sampled live exchange is copied as it streams
//! through (request body and answer, each up to a cap, nothing held back) and handed over
//! when it ends. What is done with the copy (sending it to the candidate, comparing the
//! answers) belongs to whoever installed the [`Tap`]; the proxy never waits for it.
//!
//! Cost when no tap is installed: one atomic load per request on the live listener.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{HeaderMap, Method};

/// What a tap hands out for a request it copies and gets back with the copy: a reserved
/// place in its queue, so the copies in flight are bounded from the moment they start.
pub type Ticket = Box<dyn std::any::Any + Send + Sync>;

/// Installed on a service while it shadows (see [`crate::Service::set_tap`]).
pub trait Tap: Send + Sync + 'static {
    /// At a request's head on the live listener: copy this one? `key` is the request's
    /// sampling key (the same request count gives the same key). Counts its own skips.
    fn wants(&self, key: u64, method: &Method, path: &str) -> Option<Ticket>;
    /// The most bytes kept of a request body and of its answer.
    fn cap(&self) -> usize;
    /// The exchange ended (answer complete, failed or cut), with the ticket `wants` gave:
    /// never blocks. Delivered to the tap that took the copy, even if another one is
    /// installed by then (a copy belongs to the comparison that asked for it).
    fn deliver(&self, exchange: Captured);
}

/// One copied part (request body or answer body).
#[derive(Debug, Default, Clone)]
pub struct Part {
    pub bytes: Vec<u8>,
    /// More came than the cap: `bytes` is a prefix.
    pub over: bool,
}

impl Part {
    fn push(&mut self, d: &[u8], cap: usize) {
        let room = cap.saturating_sub(self.bytes.len());
        if d.len() > room {
            self.over = true;
        }
        let take = d.len().min(room);
        if take > self.bytes.capacity() - self.bytes.len() {
            // Doubling, but never past the cap: a copy holds at most `cap` bytes.
            let want = (self.bytes.len() + take).max((self.bytes.capacity() * 2).min(cap));
            self.bytes.reserve_exact(want - self.bytes.len());
        }
        self.bytes.extend_from_slice(&d[..take]);
    }
}

/// A live exchange being copied: shared by the request body's path (which may run in
/// hyper's client task) and the response's guard.
pub(crate) struct Capture {
    pub(crate) key: u64,
    cap: usize,
    method: Method,
    path: String,
    headers: HeaderMap,
    request: Mutex<Part>,
    /// The tap that asked for the copy, and its ticket.
    tap: Arc<Box<dyn Tap>>,
    ticket: Mutex<Option<Ticket>>,
}

impl Capture {
    /// Gives the finished exchange to the tap that took the copy.
    pub(crate) fn deliver(&self, answer: AnswerCopy, status: u16, complete: bool, total: Duration) {
        let request = self
            .request
            .lock()
            .map(|mut p| std::mem::take(&mut *p))
            .unwrap_or_default();
        let ticket = self.ticket.lock().ok().and_then(|mut t| t.take());
        self.tap.deliver(Captured {
            key: self.key,
            method: self.method.clone(),
            path: self.path.clone(),
            headers: self.headers.clone(),
            request,
            status,
            content_type: answer.content_type,
            answer: answer.part,
            complete,
            first_byte: answer.first_byte,
            total,
            ticket,
        });
    }

    /// Request body bytes on their way upstream (data, without chunk framing).
    pub(crate) fn request_data(&self, d: &[u8]) {
        if let Ok(mut p) = self.request.lock() {
            p.push(d, self.cap);
        }
    }

    pub(crate) fn cap(&self) -> usize {
        self.cap
    }
}

/// The answer's copy, kept by the guard that watches the response go by.
#[derive(Default)]
pub(crate) struct AnswerCopy {
    part: Part,
    content_type: Option<String>,
    first_byte: Option<Duration>,
}

impl AnswerCopy {
    pub(crate) fn head(&mut self, content_type: Option<&str>) {
        self.content_type = content_type.map(str::to_string);
    }

    /// Body data; `elapsed` is read once, at the first bytes (for a stream, the first
    /// token's event: the same point the shadow's own answer is timed at).
    pub(crate) fn data(&mut self, d: &[u8], cap: usize, elapsed: impl FnOnce() -> Duration) {
        if self.first_byte.is_none() && !d.is_empty() {
            self.first_byte = Some(elapsed());
        }
        self.part.push(d, cap);
    }
}

/// What the tap receives when an exchange ends.
pub struct Captured {
    pub key: u64,
    pub method: Method,
    /// Path and query, as the client sent them.
    pub path: String,
    /// The client's end-to-end headers (connection-specific ones removed).
    pub headers: HeaderMap,
    pub request: Part,
    /// The live answer's status (0: none came).
    pub status: u16,
    pub content_type: Option<String>,
    pub answer: Part,
    /// The whole answer reached the client (a cut stream or an error is no pair).
    pub complete: bool,
    pub first_byte: Option<Duration>,
    pub total: Duration,
    /// What `Tap::wants` handed out for this request.
    pub ticket: Option<Ticket>,
}

/// The installed tap and the service's request counter that sampling keys come from.
#[derive(Default)]
pub(crate) struct TapSlot {
    pub(crate) tap: arc_swap::ArcSwapOption<Box<dyn Tap>>,
    counter: AtomicU64,
}

impl TapSlot {
    /// A capture for this request if a tap is installed and wants it.
    /// `path` and `headers` are read only while a tap is installed: an engine that must
    /// parse them again pays nothing otherwise.
    pub(crate) fn begin<'p>(
        &self,
        method: &Method,
        path: impl FnOnce() -> &'p str,
        headers: impl FnOnce() -> HeaderMap,
    ) -> Option<Arc<Capture>> {
        let guard = self.tap.load();
        let tap = guard.as_ref()?;
        let path = path();
        // The tap mixes the key before it samples: a plain counter is as good as random.
        let key = self.counter.fetch_add(1, Relaxed);
        let ticket = tap.wants(key, method, path)?;
        Some(Arc::new(Capture {
            key,
            cap: tap.cap(),
            method: method.clone(),
            path: path.to_string(),
            headers: headers(),
            request: Mutex::new(Part::default()),
            tap: tap.clone(),
            ticket: Mutex::new(Some(ticket)),
        }))
    }
}

/// Headers a mirror must not copy: the connection's own, and the framing (the mirror sets
/// its own length).
pub(crate) fn end_to_end(h: &HeaderMap) -> HeaderMap {
    let mut out = h.clone();
    for name in [
        http::header::CONNECTION,
        http::header::TRANSFER_ENCODING,
        http::header::CONTENT_LENGTH,
        http::header::TE,
        http::header::TRAILER,
        http::header::UPGRADE,
        http::header::HOST,
        http::header::PROXY_AUTHORIZATION,
        http::header::EXPECT,
    ] {
        out.remove(name);
    }
    out.remove("keep-alive");
    out.remove("proxy-connection");
    // The proxy's own markers: a client's `x-cutover-shadow: 0` must not unmark a mirror.
    let ours: Vec<_> = out
        .keys()
        .filter(|k| k.as_str().starts_with("x-cutover-"))
        .cloned()
        .collect();
    for k in ours {
        out.remove(k);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_part_keeps_at_most_its_cap_and_says_when_more_came() {
        let mut p = Part::default();
        p.push(b"hello ", 8);
        assert!(!p.over);
        p.push(b"world", 8);
        assert_eq!(p.bytes, b"hello wo");
        assert!(p.over);
    }
}
