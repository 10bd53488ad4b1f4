//! Verification gates that fit token streams: whole-request latency judges plain answers
//! only, time to first token and stalls judge streams, values are measured (not bucket
//! bounds), and answers without a generation count as errors.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;

use crate::support::*;

/// Streaming chat completions in a loop on `workers` tasks until stopped: (ok, failed).
struct Streams {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    handles: Vec<tokio::task::JoinHandle<()>>,
}

impl Streams {
    fn start(url: String, workers: usize, tokens: u64) -> Streams {
        let (stop, ok, failed) = (Arc::default(), Arc::default(), Arc::default());
        let handles = (0..workers)
            .map(|_| {
                let (stop, ok, failed, url): (Arc<AtomicBool>, Arc<AtomicU64>, Arc<AtomicU64>, String) =
                    (Arc::clone(&stop), Arc::clone(&ok), Arc::clone(&failed), url.clone());
                tokio::spawn(async move {
                    let c = http_client();
                    while !stop.load(Ordering::Relaxed) {
                        let body = format!(r#"{{"stream":true,"max_tokens":{tokens}}}"#);
                        let req = http::Request::post(&url).body(Full::new(Bytes::from(body))).unwrap();
                        match c.request(req).await {
                            Ok(resp) if resp.status() == 200 => {
                                let (_, err) = read_stream(resp).await;
                                let n = if err.is_none() { &ok } else { &failed };
                                n.fetch_add(1, Ordering::Relaxed);
                            }
                            _ => {
                                failed.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                })
            })
            .collect();
        Streams {
            stop,
            ok,
            failed,
            handles,
        }
    }

    async fn stop(self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        for h in self.handles {
            let _ = h.await;
        }
        (self.ok.load(Ordering::Relaxed), self.failed.load(Ordering::Relaxed))
    }
}

async fn static_release(green_args: &[&str], verify: &str) -> (Router, Mock, Mock) {
    let blue = Mock::start("v1", &[]).await;
    let green = Mock::start("v2", green_args).await;
    let r = Router::start(&format!(
        "{}\n[services.chat.release]\n[services.chat.release.verify]\n{verify}\n",
        static_service(&[&blue], &[&green], "")
    ))
    .await;
    assert_eq!(r.switch("blue").await.status, 200);
    (r, blue, green)
}

/// A healthy streaming release whose streams take 3 s each (150 tokens x 20 ms) passes a 2 s
/// whole-request latency limit, which judges plain answers only (it was rolled back:
/// "p99 latency 5s > 2s", a bucket bound at that).
#[tokio::test]
async fn a_healthy_streaming_release_is_not_rolled_back_by_whole_request_latency() {
    let (r, _b, _g) = static_release(
        &["--token-interval", "20ms"],
        "bake = \"5s\"\nmin_requests = 3\nmax_p99_latency = \"2s\"\nmax_ttft_p99 = \"1s\"",
    )
    .await;
    let streams = Streams::start(r.url("/v1/chat/completions"), 4, 150);
    let id = r.release("v2").await;
    let d = r.wait_end(id, Duration::from_secs(60)).await;
    let (_, failed) = streams.stop().await;
    assert_eq!(d["outcome"], "completed", "{d}");
    assert_eq!(failed, 0);
    let gates = d["gates"].as_array().unwrap();
    // Judged on streams, not on an empty window: min_requests (3) of them reached green.
    let requests = gates.iter().find(|g| g["name"] == "requests").expect("a requests gate");
    assert_eq!(requests["result"], "passing", "{d}");
    let ttft = gates
        .iter()
        .find(|g| g["name"] == "ttft_p99")
        .expect("a ttft gate reading");
    assert_eq!(ttft["result"], "passing", "{d}");
    let value = ttft["value"].as_f64().unwrap();
    assert!(value < 1.0, "time to first token of a quick server: {value}");
}

/// A version whose first token comes after 1.5 s fails a 500 ms time-to-first-token gate and
/// rolls back; the reading is the measured time (about 1.5 s), not a bucket's bound.
#[tokio::test]
async fn a_slow_first_token_rolls_back_with_the_measured_value() {
    let (r, _b, _g) = static_release(
        &["--latency", "1500ms"],
        "bake = \"10s\"\nmin_requests = 3\nmax_ttft_p99 = \"500ms\"",
    )
    .await;
    let streams = Streams::start(r.url("/v1/chat/completions"), 4, 3);
    let id = r.release("v2").await;
    let d = r.wait_end(id, Duration::from_secs(60)).await;
    let _ = streams.stop().await;
    assert_eq!(d["outcome"], "rolled_back", "{d}");
    let reason = d["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("time to first token p99"), "{reason}");
    let gate = d["gates"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["name"] == "ttft_p99")
        .cloned()
        .unwrap();
    let value = gate["value"].as_f64().unwrap();
    assert!(
        (1.4..1.9).contains(&value),
        "measured, within the sketch's 6 %: {value}"
    );
    assert_eq!(r.status().await["live"], "blue");
}

/// A build that fails 30 % of its requests is caught before the switch: the warm-up tolerates
/// `max_failures` failed requests per endpoint (default 0; it let 3 of 10 through), and a smoke
/// check with `repeat` must pass every time (one lucky answer passed it).
#[tokio::test]
async fn a_build_failing_30_percent_is_stopped_before_the_switch() {
    let warm = "warmup = { requests = 10, concurrency = 2, request = { method = \"POST\", path = \"/v1/chat/completions\", body = '{}' } }\n";
    for (release, phase, says) in [
        (warm.to_string(), "warm-up", "more than warmup.max_failures = 0"),
        (
            "[[services.chat.release.smoke]]\nname = \"chat answers\"\nrepeat = 10\n\
             request = { method = \"POST\", path = \"/v1/chat/completions\", body = '{}' }\nexpect = { status = 200 }\n"
                .to_string(),
            "smoke check",
            "of 10)",
        ),
    ] {
        let blue = Mock::start("v1", &[]).await;
        let green = Mock::start("v2", &["--error-rate", "0.3"]).await;
        let r = Router::start(&format!(
            "{}\n[services.chat.release]\n{release}",
            static_service(&[&blue], &[&green], "")
        ))
        .await;
        assert_eq!(r.switch("blue").await.status, 200);
        let id = r.release("v2").await;
        let d = r.wait_end(id, Duration::from_secs(30)).await;
        assert_eq!(d["outcome"], "aborted", "{d}");
        let reason = d["reason"].as_str().unwrap();
        assert!(reason.contains(phase) && reason.contains(says), "{reason}");
        assert_eq!(r.status().await["live"], "blue", "live traffic never moved");
    }
    // Tolerating failures is a choice the config states.
    let blue = Mock::start("v1", &[]).await;
    let green = Mock::start("v2", &["--error-rate", "0.3"]).await;
    let release = warm.replace("body = '{}' }", "body = '{}' }, max_failures = 5");
    let r = Router::start(&format!(
        "{}\n[services.chat.release]\n{release}[services.chat.release.verify]\nbake = \"300ms\"\nmin_requests = 0\nmax_error_rate = 1.0\n",
        static_service(&[&blue], &[&green], "")
    ))
    .await;
    assert_eq!(r.switch("blue").await.status, 200);
    let id = r.release("v2").await;
    let d = r.wait_end(id, Duration::from_secs(30)).await;
    assert_eq!(d["outcome"], "completed", "{d}");
}
