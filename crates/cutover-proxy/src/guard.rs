//! A request's place in its color's in-flight count (held to the response's last byte), its
//! access-log record, and what a stream cut short is told: shared by both engines.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Instant;

use crate::route::ColorRoute;

/// The message an event stream gets (in-band) and the count it lands in when the old
/// color's drain deadline cuts it.
pub(crate) const DRAIN_CLOSED: &str = "closed: the drain deadline of the old color passed";
pub(crate) const TIMED_OUT: &str = "request timeout: the whole exchange took longer than limits.request_timeout";

/// Holds one request's place in its color's in-flight count; records its duration on drop.
pub(crate) struct Guard {
    pub(crate) route: Arc<ColorRoute>,
    pub(crate) started: Instant,
    /// Present only when the service's access log is on (one allocation per request then).
    pub(crate) access: Option<Box<Access>>,
    /// A tunnel (an upgraded connection) lasts as long as its session: its duration is not a
    /// request's latency and stays out of the histogram the gates read.
    pub(crate) tunnel: bool,
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
        Guard {
            route,
            started,
            access,
            tunnel: false,
        }
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
        if !self.tunnel {
            self.route.stats.duration.observe(elapsed);
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
