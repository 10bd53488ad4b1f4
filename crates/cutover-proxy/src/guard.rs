//! A request's place in its color's in-flight count (held to the response's last byte), its
//! access-log record, and what a stream cut short is told: shared by both engines.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Instant;

use crate::mirror::{AnswerCopy, Capture};
use crate::route::ColorRoute;

/// The message an event stream gets (in-band) and the count it lands in when the old
/// color's drain deadline cuts it.
pub(crate) const DRAIN_CLOSED: &str = "closed: the drain deadline of the old color passed";
pub(crate) const TIMED_OUT: &str = "request timeout: the whole exchange took longer than limits.request_timeout";

/// Holds one request's place in its color's in-flight count, and watches its response go by
/// (events of a stream, body bytes) so that on drop it records what the gates judge: the
/// latency of a plain answer, a stream's time to first token, its stalls and its rate, and
/// answers that carried no generation.
pub(crate) struct Guard {
    pub(crate) route: Arc<ColorRoute>,
    pub(crate) started: Instant,
    /// Present only when the service's access log is on (one allocation per request then).
    pub(crate) access: Option<Box<Access>>,
    pub(crate) kind: Kind,
    /// The request is a POST (a generation): a 200 with an empty body then failed.
    post: bool,
    status: u16,
    body_bytes: u64,
    events: u64,
    first_event: Option<Instant>,
    last_event: Option<Instant>,
    /// The response ended cleanly (its last byte went out).
    complete: bool,
    /// Set for a request being copied for the shadow comparison (boxed: rare, and the
    /// guard lives in every connection's task).
    mirror: Option<Box<Mirroring>>,
}

/// A copied exchange's answer side, delivered with the capture when the guard drops.
struct Mirroring {
    capture: Arc<Capture>,
    answer: AnswerCopy,
}

/// What kind of answer the request got, for the statistics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// No response head yet.
    Pending,
    Plain,
    /// `text/event-stream`.
    Stream,
    /// An upgraded connection: it lasts as long as its session, so its duration is not a
    /// request's latency and stays out of what the gates read.
    Tunnel,
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
    pub(crate) fn new(route: Arc<ColorRoute>, started: Instant, post: bool, access: Option<Box<Access>>) -> Guard {
        route.stats.in_flight.fetch_add(1, Relaxed);
        Guard {
            route,
            started,
            access,
            kind: Kind::Pending,
            post,
            status: 0,
            body_bytes: 0,
            events: 0,
            first_event: None,
            last_event: None,
            complete: false,
            mirror: None,
        }
    }

    /// Copy this exchange's answer for the shadow comparison, delivered at the end.
    pub(crate) fn mirror(&mut self, capture: Arc<Capture>) {
        self.mirror = Some(Box::new(Mirroring {
            capture,
            answer: AnswerCopy::default(),
        }));
    }

    /// The response head of a copied exchange: a stream or a plain answer (what the
    /// comparison needs of its content type).
    pub(crate) fn mirror_head(&mut self, sse: bool) {
        if let Some(m) = self.mirror.as_mut() {
            m.answer
                .head(Some(if sse { "text/event-stream" } else { "application/json" }));
        }
    }

    /// Body bytes of the answer (data, without chunk framing) as they go to the client.
    #[inline]
    pub(crate) fn mirror_data(&mut self, d: &[u8]) {
        if let Some(m) = self.mirror.as_mut() {
            let (cap, started) = (m.capture.cap(), self.started);
            m.answer.data(d, cap, || started.elapsed());
        }
    }

    pub(crate) fn set_status(&mut self, status: u16) {
        self.status = status;
        if let Some(a) = self.access.as_mut() {
            a.status = status;
        }
    }

    /// The response head went out: a plain answer or an event stream.
    pub(crate) fn answered(&mut self, status: u16, sse: bool) {
        self.set_status(status);
        self.kind = if sse { Kind::Stream } else { Kind::Plain };
    }

    /// `bytes` of body went out, carrying `events` whole events of a stream. The first
    /// event is the first token; the time since the previous read with events is a stall.
    pub(crate) fn body(&mut self, bytes: usize, events: u64) {
        self.body_bytes += bytes as u64;
        if events == 0 {
            return;
        }
        let now = Instant::now();
        let stats = &self.route.stats;
        match self.last_event {
            None => stats.ttft.observe(now - self.started),
            Some(last) => stats.token_gap.observe(now - last),
        }
        self.first_event.get_or_insert(now);
        self.last_event = Some(now);
        self.events += events;
    }

    /// The response's last byte went out.
    pub(crate) fn complete(&mut self) {
        self.complete = true;
    }

    /// What a complete answer says about the version that gave it.
    fn judge_answer(&self, elapsed: std::time::Duration) {
        let stats = &self.route.stats;
        let ok = (200..300).contains(&self.status);
        match self.kind {
            Kind::Plain => {
                stats.plain_duration.observe(elapsed);
                if self.post && self.status == 200 && self.body_bytes == 0 {
                    stats.empty_generations.fetch_add(1, Relaxed);
                }
            }
            Kind::Stream if ok && self.events < 2 => {
                // A bare `[DONE]` (or nothing): llama.cpp answers an overlong prompt this way.
                stats.empty_generations.fetch_add(1, Relaxed);
            }
            Kind::Stream => {
                if let (Some(first), Some(last)) = (self.first_event, self.last_event) {
                    stats
                        .token_time
                        .observe((last - first) / (self.events - 1).max(1) as u32);
                }
            }
            Kind::Pending | Kind::Tunnel => {}
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.route.stats.in_flight.fetch_sub(1, Relaxed);
        let elapsed = self.started.elapsed();
        if self.kind != Kind::Tunnel {
            self.route.stats.duration.observe(elapsed);
        }
        if self.complete {
            self.judge_answer(elapsed);
        }
        if let Some(m) = self.mirror.take() {
            m.capture.deliver(m.answer, self.status, self.complete, elapsed);
        }
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
