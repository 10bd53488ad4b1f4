//! vLLM-like Prometheus metrics at `/metrics`, with values a test can push (`--metric NAME=V`
//! at start, `POST /mock/metric?NAME=V` at run time) to drive model-server metric gates.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::Duration;

/// vLLM's buckets for `vllm:time_to_first_token_seconds`.
const BUCKETS: [f64; 16] = [
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];

const RUNNING: &str = "vllm:num_requests_running";
const WAITING: &str = "vllm:num_requests_waiting";
const KV_CACHE: &str = "vllm:kv_cache_usage_perc";
const SUCCESS: &str = "vllm:request_success_total";

/// The served figures: counted ones, and pushed values that override or add to them.
pub struct Metrics {
    /// Pushed values by metric name; a known name's pushed value replaces the counted one.
    pushed: Mutex<BTreeMap<String, f64>>,
    success: AtomicU64,
    ttft_buckets: [AtomicU64; BUCKETS.len()],
    ttft_count: AtomicU64,
    ttft_sum_micros: AtomicU64,
}

/// A Prometheus metric name: `[a-zA-Z_:][a-zA-Z0-9_:]*`.
pub fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// `--metric NAME=VALUE`.
pub fn parse_metric(s: &str) -> Result<(String, f64), String> {
    let (n, v) = s
        .split_once('=')
        .ok_or_else(|| format!("expected NAME=VALUE, got {s:?}"))?;
    if !valid_name(n) {
        return Err(format!("{n:?} is not a Prometheus metric name"));
    }
    let v: f64 = v.parse().map_err(|_| format!("invalid value {v:?}"))?;
    Ok((n.to_string(), v))
}

impl Metrics {
    pub fn new(pushed: &[(String, f64)]) -> Metrics {
        Metrics {
            pushed: Mutex::new(pushed.iter().cloned().collect()),
            success: AtomicU64::new(0),
            ttft_buckets: Default::default(),
            ttft_count: AtomicU64::new(0),
            ttft_sum_micros: AtomicU64::new(0),
        }
    }

    pub fn push(&self, name: &str, value: f64) {
        self.pushed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.to_string(), value);
    }

    pub fn success(&self) {
        self.success.fetch_add(1, Relaxed);
    }

    pub fn observe_ttft(&self, d: Duration) {
        let s = d.as_secs_f64();
        for (b, c) in BUCKETS.iter().zip(&self.ttft_buckets) {
            if s <= *b {
                c.fetch_add(1, Relaxed);
            }
        }
        self.ttft_count.fetch_add(1, Relaxed);
        self.ttft_sum_micros.fetch_add(d.as_micros() as u64, Relaxed);
    }

    /// The Prometheus text exposition, labelled with `model_name` as vLLM does.
    pub fn render(&self, model: &str, running: i64) -> String {
        let pushed = self.pushed.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let label = format!("{{model_name=\"{}\"}}", model.replace(['"', '\\', '\n'], "_"));
        let value = |name: &str, counted: f64| pushed.get(name).copied().unwrap_or(counted);
        let mut out = String::new();
        let running = running.max(0) as f64;
        for (name, kind, help, counted) in [
            (
                RUNNING,
                "gauge",
                "Number of requests in model execution batches.",
                running,
            ),
            (WAITING, "gauge", "Number of requests waiting to be processed.", 0.0),
            (
                KV_CACHE,
                "gauge",
                "KV-cache usage. 1 means 100 percent usage.",
                (running / 100.0).min(1.0),
            ),
        ] {
            let _ = write!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name}{label} {}\n",
                value(name, counted)
            );
        }
        let success_label = label.replace('}', ",finished_reason=\"stop\"}");
        let _ = write!(
            out,
            "# HELP {SUCCESS} Count of successfully processed requests.\n# TYPE {SUCCESS} counter\n{SUCCESS}{success_label} {}\n",
            value(SUCCESS, self.success.load(Relaxed) as f64)
        );
        self.render_ttft(&mut out, &label);
        for (name, v) in pushed
            .iter()
            .filter(|(n, _)| ![RUNNING, WAITING, KV_CACHE, SUCCESS].contains(&n.as_str()))
        {
            let _ = write!(out, "# TYPE {name} gauge\n{name} {v}\n");
        }
        out
    }

    fn render_ttft(&self, out: &mut String, label: &str) {
        let name = "vllm:time_to_first_token_seconds";
        let _ = write!(
            out,
            "# HELP {name} Histogram of time to first token in seconds.\n# TYPE {name} histogram\n"
        );
        let inner = &label[1..label.len() - 1];
        for (b, c) in BUCKETS.iter().zip(&self.ttft_buckets) {
            let _ = writeln!(out, "{name}_bucket{{{inner},le=\"{b}\"}} {}", c.load(Relaxed));
        }
        let count = self.ttft_count.load(Relaxed);
        let sum = self.ttft_sum_micros.load(Relaxed) as f64 / 1e6;
        let _ = write!(
            out,
            "{name}_bucket{{{inner},le=\"+Inf\"}} {count}\n{name}_sum{label} {sum}\n{name}_count{label} {count}\n"
        );
    }
}
