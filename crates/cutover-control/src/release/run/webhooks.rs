//! Release webhooks: a signed JSON POST per release event (`x-cutover-signature:
//! sha256=HEX`, the HMAC-SHA256 of the body), and the approval webhook whose 2xx approves a
//! release awaiting manual promotion.
//!
//! Each webhook has its own task and bounded queue: the run only ever `try_send`s, so a slow,
//! failing or dead receiver never blocks or delays a phase, and never a rollback. One task per
//! receiver sends its events one at a time, so a receiver sees them in order.

use std::time::Duration;

use bytes::Bytes;
use cutover_config::{ApprovalWebhookConfig, WebhookConfig};
use hmac::{Hmac, Mac};
use http_body_util::Full;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use sha2::Sha256;
use tokio::sync::mpsc;

type Http = Client<HttpConnector, Full<Bytes>>;

/// The first retry waits this long; each next one twice as long, up to `MAX_BACKOFF`.
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// The senders of one release run; their tasks send what is queued, then end, once it drops.
pub(crate) struct Webhooks {
    queues: Vec<(WebhookConfig, mpsc::Sender<Bytes>)>,
    seq: std::sync::atomic::AtomicU64,
}

impl Webhooks {
    /// Starts one sender task per configured webhook (none: no tasks).
    pub(crate) fn start(service: &str, cfgs: &[WebhookConfig]) -> Webhooks {
        let http = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
        let queues = cfgs
            .iter()
            .map(|c| {
                let (tx, rx) = mpsc::channel(c.queue);
                tokio::spawn(deliver(service.to_string(), c.clone(), http.clone(), rx));
                (c.clone(), tx)
            })
            .collect();
        Webhooks {
            queues,
            seq: Default::default(),
        }
    }

    /// Queues `event` (one of `WEBHOOK_EVENTS`) for every webhook that wants it. Never waits:
    /// a full queue drops the event, and says so in the log.
    pub(crate) fn send(&self, event: &str, mut payload: Value) {
        if !self.queues.iter().any(|(c, _)| c.wants(event)) {
            return;
        }
        let seq = self.seq.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        payload["event"] = event.into();
        payload["seq"] = seq.into();
        let body = Bytes::from(payload.to_string());
        for (c, tx) in self.queues.iter().filter(|(c, _)| c.wants(event)) {
            if tx.try_send(body.clone()).is_err() {
                tracing::warn!(url = %c.url, event, "webhook queue full (receiver too slow or down); event dropped");
            }
        }
    }
}

/// The HMAC-SHA256 of `body` under `key`, as the `x-cutover-signature` header value.
pub(crate) fn signature(key: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes a key of any length");
    mac.update(body);
    let hex: String = mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}

/// The key in `secret_file`, read when the run starts (a rotated secret applies to the next
/// release). `Err` names the file.
fn secret(file: Option<&std::path::Path>) -> Result<Option<Vec<u8>>, String> {
    let Some(f) = file else { return Ok(None) };
    std::fs::read_to_string(f)
        .map(|s| Some(s.trim().as_bytes().to_vec()))
        .map_err(|e| format!("cannot read secret_file {}: {e}", f.display()))
}

/// Sends every queued event to one webhook, in order, retrying each with backoff.
async fn deliver(service: String, c: WebhookConfig, http: Http, mut rx: mpsc::Receiver<Bytes>) {
    let key = match secret(c.secret_file.as_deref()) {
        Ok(k) => k,
        Err(e) => {
            // Unsigned events would be refused by a receiver that checks: send none, loudly.
            tracing::error!(service, url = %c.url, error = %e, "webhook disabled for this release");
            return;
        }
    };
    while let Some(body) = rx.recv().await {
        let mut wait = FIRST_BACKOFF;
        for attempt in 1..=c.attempts {
            match post(&http, &c.url, key.as_deref(), &body, c.timeout.get()).await {
                Ok(_) => break,
                Err(e) if !e.retry || attempt == c.attempts => {
                    tracing::warn!(service, url = %c.url, attempts = attempt, error = %e.why, "webhook event dropped");
                    break;
                }
                Err(e) => {
                    tracing::debug!(service, url = %c.url, attempt, error = %e.why, "webhook attempt failed; retrying");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(MAX_BACKOFF);
                }
            }
        }
    }
}

/// Why a POST did not deliver, and whether sending it again may help.
struct Failure {
    why: String,
    retry: bool,
}

impl Failure {
    fn retry(why: String) -> Failure {
        Failure { why, retry: true }
    }
}

/// One signed POST; `Ok` only for a 2xx answer within `timeout`. A 4xx other than 408 and 429
/// is final: the receiver refused this event (a bad signature, say), and will again.
async fn post(http: &Http, url: &str, key: Option<&[u8]>, body: &Bytes, timeout: Duration) -> Result<u16, Failure> {
    let mut req = http::Request::post(url).header("content-type", "application/json");
    if let Some(k) = key {
        req = req.header("x-cutover-signature", signature(k, body));
    }
    let req = req.body(Full::new(body.clone())).map_err(|e| Failure {
        why: e.to_string(),
        retry: false,
    })?;
    let resp = tokio::time::timeout(timeout, http.request(req))
        .await
        .map_err(|_| Failure::retry(format!("no answer within {timeout:?}")))?
        .map_err(|e| Failure::retry(e.to_string()))?;
    let status = resp.status();
    // The body is not read: a receiver's answer carries nothing we use.
    if status.is_success() {
        return Ok(status.as_u16());
    }
    let retry = !status.is_client_error() || matches!(status.as_u16(), 408 | 429);
    Err(Failure {
        why: format!("answered {status}"),
        retry,
    })
}

/// Offers the release to the approval webhook every `interval` while it awaits approval; the
/// first 2xx calls `approve` with who approved. The task stops when the returned guard drops
/// (the wait for approval is over, however it ended).
pub(crate) fn approval_poller(
    c: &ApprovalWebhookConfig,
    payload: Value,
    approve: impl FnOnce(String) + Send + 'static,
) -> ApprovalGuard {
    let c = c.clone();
    let task = tokio::spawn(async move {
        let key = match secret(c.secret_file.as_deref()) {
            Ok(k) => k,
            Err(e) => {
                tracing::error!(url = %c.url, error = %e, "approval webhook disabled for this release");
                return;
            }
        };
        let http = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
        let body = Bytes::from(payload.to_string());
        let mut tick = tokio::time::interval(c.interval.get());
        loop {
            tick.tick().await;
            match post(&http, &c.url, key.as_deref(), &body, c.timeout.get()).await {
                Ok(status) => {
                    approve(format!("approval webhook {} ({status})", c.url));
                    return;
                }
                Err(e) => tracing::debug!(url = %c.url, error = %e.why, "approval webhook has not approved yet"),
            }
        }
    });
    ApprovalGuard(task)
}

/// Stops the approval poller when the wait for approval ends, however it ends.
pub(crate) struct ApprovalGuard(tokio::task::JoinHandle<()>);

impl Drop for ApprovalGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The Slack-compatible one-line summary of an event (`text`).
pub(crate) fn text(service: &str, id: i64, version: &str, event: &str, phase: &str, reason: &str) -> String {
    let what = match event {
        "phase" => format!("now {phase}"),
        "awaiting_approval" => "awaiting approval (`cutover approve`)".into(),
        other => other.replace('_', " "),
    };
    format!("cutover: {service} release #{id} of {version}: {what}: {reason}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn signature_is_the_rfc_4231_hmac_sha256() {
        // RFC 4231 test case 2.
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[tokio::test]
    async fn a_full_queue_drops_instead_of_waiting() {
        let cfg: WebhookConfig =
            toml::from_str("url = \"http://127.0.0.1:9/\"\nqueue = 1\nattempts = 1\ntimeout = \"30s\"").unwrap();
        let w = Webhooks::start("chat", &[cfg]);
        // More events than the queue holds, with nobody able to take them: each send returns.
        for _ in 0..100 {
            w.send("phase", json!({}));
        }
        assert_eq!(w.seq.load(std::sync::atomic::Ordering::Relaxed), 100);
    }
}
