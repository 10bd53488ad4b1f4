//! The worker: each copied exchange that passes the body checks goes to the candidate color
//! (and, for a share of the deterministic ones, to the live color a second time), at most
//! `max_in_flight` at once, each with its own deadline; both answers are read to their end
//! (a copy of at most the cap is kept) and the pair goes into the accumulator.

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use cutover_proxy::mirror::Captured;
use cutover_proxy::{ColorRoute, Health};
use cutover_release::shadow::{eligible_body, sampled, Answer, Class, Pair, Profile, RawAnswer, SkipReason, Timings};
use http_body_util::{BodyExt, Full};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use super::Shared;
use crate::release::steps::StepClient;
use crate::service::ServiceCtl;

/// Mixed into the request key so the baseline's draw is independent of the sampling's.
const BASELINE_SALT: u64 = 0x5eed_ba5e_11fe_0001;

pub(super) struct Sender {
    shared: Arc<Shared>,
    svc: Arc<ServiceCtl>,
    client: StepClient,
    live: Arc<ColorRoute>,
    candidate: Arc<ColorRoute>,
    slots: Arc<Semaphore>,
    next: AtomicUsize,
    /// After the switch: `live` is the new version, `candidate` the old one, and a pair
    /// compares the old answer as the reference with the new one as the one judged.
    reverse: bool,
}

/// One answer as the worker read it.
struct Fetched {
    status: u16,
    content_type: Option<String>,
    body: Vec<u8>,
    truncated: bool,
    first_byte: Option<Duration>,
    total: Duration,
}

impl Sender {
    pub(super) fn new(
        svc: &Arc<ServiceCtl>,
        shared: Arc<Shared>,
        live: Arc<ColorRoute>,
        candidate: Arc<ColorRoute>,
        reverse: bool,
    ) -> Sender {
        let slots = Arc::new(Semaphore::new(shared.cfg.max_in_flight));
        Sender {
            client: crate::release::steps::client(svc),
            svc: svc.clone(),
            shared,
            live,
            candidate,
            slots,
            next: AtomicUsize::new(0),
            reverse,
        }
    }

    pub(super) async fn run(self, mut rx: mpsc::Receiver<Captured>) {
        let me = Arc::new(self);
        // The pairs in flight belong to this task: when the phase ends (the task is aborted)
        // they stop too, and no mirror goes out after it.
        let mut pairs = tokio::task::JoinSet::new();
        while let Some(c) = rx.recv().await {
            while pairs.try_join_next().is_some() {}
            let profile = match me.admit(&c) {
                Ok(p) => p,
                Err(r) => {
                    me.shared.skip(r);
                    continue;
                }
            };
            // Waiting here lets the queue fill, and a full queue drops at the tap: the
            // bound on memory is queue + max_in_flight copies of at most the cap each.
            let Ok(permit) = me.slots.clone().acquire_owned().await else {
                return;
            };
            pairs.spawn(me.clone().pair(c, profile, permit));
        }
    }

    /// The checks that need the body, and an answer worth comparing.
    fn admit(&self, c: &Captured) -> Result<Profile, SkipReason> {
        if !c.complete || c.status == 0 {
            return Err(SkipReason::LiveIncomplete);
        }
        let profile = eligible_body(&c.path, &c.request.bytes, !c.request.over)?;
        // Vectors cut at the cap cannot be compared: such a pair would be no evidence.
        if profile.class == Class::Embeddings && c.answer.over {
            return Err(SkipReason::BodyTooLarge);
        }
        Ok(profile)
    }

    async fn pair(self: Arc<Self>, c: Captured, profile: Profile, _slot: OwnedSemaphorePermit) {
        let cfg = &self.shared.cfg;
        let baseline = profile.class == Class::DeterministicChat
            && cfg.baseline > 0.0
            && sampled(c.key ^ BASELINE_SALT, cfg.baseline);
        let body = Bytes::from(c.request.bytes.clone());
        let shadow = self.fetch(&c, &self.candidate, body.clone());
        let second = async {
            match baseline {
                true => Some(self.fetch(&c, &self.live, body.clone()).await),
                false => None,
            }
        };
        let (shadow, second) = tokio::join!(shadow, second);
        // Assembling answers and ROUGE-L are CPU work: off the runtime that serves traffic.
        let me = self.clone();
        let judged = tokio::task::spawn_blocking(move || me.compare(&c, &profile, shadow, second)).await;
        if let Ok(verdict) = judged {
            self.svc.shadow_counts.pair(verdict.0, verdict.1);
        }
    }

    /// Adds the pair (and the baseline pair) to the accumulator; the class and verdict labels.
    fn compare(
        &self,
        c: &Captured,
        profile: &Profile,
        shadow: Result<Fetched, String>,
        second: Option<Result<Fetched, String>>,
    ) -> (&'static str, &'static str) {
        let live = Answer::assemble(&RawAnswer {
            status: c.status,
            content_type: c.content_type.as_deref(),
            body: &c.answer.bytes,
            truncated: c.answer.over,
            timings: Timings {
                first_byte: c.first_byte,
                total: Some(c.total),
            },
        });
        let other = answer(shadow);
        let second = second.map(answer);
        // The one judged is always the new version: the candidate before the switch, the
        // live color after it (reverse).
        let (reference, judged) = if self.reverse { (&other, &live) } else { (&live, &other) };
        let mut acc = self.shared.acc.lock().unwrap_or_else(|p| p.into_inner());
        let pair = Pair {
            key: c.key,
            profile,
            request: Some(&c.request.bytes),
            live: reference,
            shadow: judged,
        };
        let d = acc.add_pair(&pair);
        if let Some(second) = &second {
            acc.add_baseline(&Pair {
                live: &live,
                shadow: second,
                ..pair
            });
        }
        let verdict = if d.severity() > 0.0 { "differ" } else { "agree" };
        (profile.class.as_str(), verdict)
    }

    /// An endpoint of `route` in turn, healthy ones first.
    fn endpoint(&self, route: &ColorRoute) -> Option<std::net::SocketAddr> {
        let eps = route.endpoints();
        let healthy: Vec<_> = eps.iter().filter(|e| e.health() != Health::Unhealthy).collect();
        let pool: Vec<_> = if healthy.is_empty() {
            eps.iter().collect()
        } else {
            healthy
        };
        let n = self.next.fetch_add(1, Relaxed);
        pool.get(n % pool.len().max(1)).map(|e| e.addr)
    }

    /// Sends the copy to one endpoint of `route` and reads the answer to its end.
    async fn fetch(&self, c: &Captured, route: &ColorRoute, body: Bytes) -> Result<Fetched, String> {
        let addr = self
            .endpoint(route)
            .ok_or_else(|| format!("color {} has no endpoint", route.color))?;
        let mut b = http::Request::builder()
            .method(c.method.clone())
            .uri(self.client.uri(addr, &c.path));
        for (k, v) in &c.headers {
            b = b.header(k, v);
        }
        let mut req = b.body(Full::new(body)).map_err(|e| e.to_string())?;
        req.headers_mut()
            .insert("x-cutover-shadow", http::HeaderValue::from_static("1"));
        // A slow answer is the comparison's business (time ratios), not a timeout: the
        // deadline stretches to three times what the live answer took.
        let limit = self.shared.cfg.timeout.get().max(c.total * 3);
        let cap = self.shared.cfg.max_body_bytes;
        tokio::time::timeout(limit, read(&self.client, req, cap))
            .await
            .unwrap_or_else(|_| Err(format!("no complete answer within shadow.timeout ({limit:?})")))
    }
}

async fn read(client: &StepClient, req: http::Request<Full<Bytes>>, cap: usize) -> Result<Fetched, String> {
    let started = Instant::now();
    let resp = client.send(req).await?;
    let status = resp.status().as_u16();
    let content_type = resp
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let mut body = resp.into_body();
    let mut out = Fetched {
        status,
        content_type,
        body: Vec::new(),
        truncated: false,
        first_byte: None,
        total: Duration::ZERO,
    };
    // Read to the end even past the cap: a stream's total time is part of the comparison.
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| format!("the answer's body failed: {e}"))?;
        let Some(d) = frame.data_ref() else { continue };
        if out.first_byte.is_none() && !d.is_empty() {
            out.first_byte = Some(started.elapsed());
        }
        let room = cap.saturating_sub(out.body.len());
        out.truncated |= d.len() > room;
        out.body.extend_from_slice(&d[..d.len().min(room)]);
    }
    out.total = started.elapsed();
    Ok(out)
}

/// A fetched answer for the comparison; a failed fetch is an error answer (no status).
fn answer(f: Result<Fetched, String>) -> Answer {
    match f {
        Ok(f) => Answer::assemble(&RawAnswer {
            status: f.status,
            content_type: f.content_type.as_deref(),
            body: &f.body,
            truncated: f.truncated,
            timings: Timings {
                first_byte: f.first_byte,
                total: Some(f.total),
            },
        }),
        Err(e) => Answer {
            error: Some(e),
            ..Answer::default()
        },
    }
}
