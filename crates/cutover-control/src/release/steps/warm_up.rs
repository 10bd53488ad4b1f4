//! Warm-up: `requests` copies of one request to every endpoint of the new color,
//! `concurrency` at a time, so caches and compiled kernels are hot before real traffic. More
//! than `max_failures` failed requests on an endpoint (default 0) abort the release: a build
//! that fails 30 % of its requests was once let through with "only" 3 of 10 failing.

use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cutover_config::WarmupConfig;
use cutover_proxy::ColorRoute;

use super::{call, client};
use crate::base::error::{FailureKind, StepFailure, StepResult};
use crate::service::ServiceCtl;

/// Each request's index and its latency or why it failed.
type Results = Vec<(u32, Result<Duration, String>)>;

pub async fn warm_up(svc: Arc<ServiceCtl>, route: Arc<ColorRoute>, w: WarmupConfig) -> StepResult {
    let mut details = Vec::new();
    let mut failed_total = 0;
    for ep in route.endpoints().iter() {
        let res = warm_one(&svc, ep.addr, &w).await;
        let ok: Vec<Duration> = res.iter().filter_map(|(_, r)| r.as_ref().ok().copied()).collect();
        let failed = res.len() - ok.len();
        failed_total += failed;
        if failed > w.max_failures as usize {
            let first_err = res
                .iter()
                .find_map(|(_, r)| r.as_ref().err().cloned())
                .unwrap_or_default();
            let reason = format!(
                "warm-up of {}: {failed} of {} requests failed, more than warmup.max_failures = {} (first: {first_err})",
                ep,
                res.len(),
                w.max_failures
            );
            return Err(StepFailure::new(FailureKind::Answers, reason));
        }
        details.push(format!("{ep}: {}", latencies(res.len(), &ok)));
    }
    let mut s = details.join("; ");
    if failed_total > 0 {
        s.push_str(&format!("; {failed_total} failed"));
    }
    Ok(s)
}

/// "10 requests, first 840 ms, last 95 ms" of one endpoint's answered requests (in request
/// order): only what was measured, never a 0.0 ms for a request that had no answer.
fn latencies(sent: usize, ok: &[Duration]) -> String {
    let ms = |d: &Duration| {
        let ms = d.as_secs_f64() * 1000.0;
        if ms < 1.0 {
            format!("{ms:.2} ms")
        } else {
            format!("{ms:.1} ms")
        }
    };
    let plural = if sent == 1 { "" } else { "s" };
    match ok {
        [] => format!("{sent} request{plural}, none answered"),
        [one] => format!("{sent} request{plural}, {}", ms(one)),
        [first, .., last] => format!("{sent} request{plural}, first {}, last {}", ms(first), ms(last)),
    }
}

/// Sends the warm-up requests to one endpoint; results in request order.
async fn warm_one(svc: &ServiceCtl, addr: std::net::SocketAddr, w: &WarmupConfig) -> Results {
    let c = client(svc);
    let next = Arc::new(AtomicU32::new(0));
    let results = Arc::new(Mutex::new(Results::new()));
    let mut workers = Vec::new();
    for _ in 0..w.concurrency.min(w.requests.max(1)) {
        let (c, next, results, spec) = (c.clone(), next.clone(), results.clone(), w.request.clone());
        let total = w.requests;
        workers.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Relaxed);
                if i >= total {
                    return;
                }
                let r = match call(&c, &spec, addr).await {
                    Ok(a) if a.status < 500 => Ok(a.latency),
                    Ok(a) => Err(format!("status {}", a.status)),
                    Err(e) => Err(e),
                };
                results.lock().unwrap_or_else(|p| p.into_inner()).push((i, r));
            }
        }));
    }
    for wk in workers {
        if let Err(e) = wk.await {
            // Its unfinished requests are simply missing from the results, which count them.
            tracing::warn!(error = %e, "a warm-up worker failed");
        }
    }
    let mut res = std::mem::take(&mut *results.lock().unwrap_or_else(|p| p.into_inner()));
    res.sort_by_key(|(i, _)| *i);
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latencies_say_only_what_was_measured() {
        let d = Duration::from_micros;
        assert_eq!(
            latencies(10, &[d(840_000), d(95_000)]),
            "10 requests, first 840.0 ms, last 95.0 ms"
        );
        assert_eq!(latencies(1, &[d(400)]), "1 request, 0.40 ms");
        assert_eq!(latencies(3, &[]), "3 requests, none answered");
    }
}
