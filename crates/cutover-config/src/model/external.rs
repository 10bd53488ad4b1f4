//! External gates of the bake: `[[services.NAME.release.verify.prometheus]]` (a PromQL query
//! against a Prometheus-compatible server) and `[[services.NAME.release.verify.scrape]]` (one
//! metric of the new color's own `/metrics`, reduced across its endpoints).

use serde::Deserialize;

pub use cutover_release::external::Reduce;

use crate::value::Duration;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrometheusGate {
    /// The gate's name in the release document and on the dashboard.
    pub name: String,
    /// The Prometheus base URL (`http://127.0.0.1:9090`); `/api/v1/query` is appended.
    pub url: String,
    /// PromQL; `{service}`, `{color}` and `{version}` are substituted before it is sent.
    pub query: String,
    #[serde(default)]
    pub max: Option<f64>,
    #[serde(default)]
    pub min: Option<f64>,
    /// How often the query is sent during the bake.
    #[serde(default = "interval")]
    pub interval: Duration,
    /// Deadline of one query; a query past it reads as no data (inconclusive).
    #[serde(default = "timeout")]
    pub timeout: Duration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScrapeGate {
    /// The gate's name (default: the metric's name).
    #[serde(default)]
    pub name: Option<String>,
    /// A sample name of the Prometheus text format (`vllm:num_requests_waiting`); the samples
    /// of one endpoint with this name (any labels) are added up.
    pub metric: String,
    /// How the endpoints' values become one reading.
    #[serde(default)]
    pub reduce: Reduce,
    /// Set: `metric` is a histogram (`vllm:time_to_first_token_seconds`); the endpoints'
    /// buckets are added up and this quantile read from them, as `histogram_quantile` does
    /// (`reduce` is not used).
    #[serde(default)]
    pub quantile: Option<f64>,
    #[serde(default)]
    pub max: Option<f64>,
    #[serde(default)]
    pub min: Option<f64>,
    #[serde(default = "metrics_path")]
    pub path: String,
    #[serde(default = "interval")]
    pub interval: Duration,
    #[serde(default = "timeout")]
    pub timeout: Duration,
}

impl ScrapeGate {
    pub fn gate_name(&self) -> String {
        self.name.clone().unwrap_or_else(|| self.metric.clone())
    }

    /// What the gate reads, as the release document shows it: `max(vllm:num_requests_waiting)`
    /// or `histogram_quantile(0.99, vllm:time_to_first_token_seconds)`.
    pub fn describe(&self) -> String {
        match self.quantile {
            Some(q) => format!("histogram_quantile({q}, {})", self.metric),
            None => format!("{}({})", self.reduce.as_str(), self.metric),
        }
    }
}

fn interval() -> Duration {
    Duration(std::time::Duration::from_secs(1))
}
fn timeout() -> Duration {
    Duration(std::time::Duration::from_secs(2))
}
fn metrics_path() -> String {
    "/metrics".into()
}

/// The first key whose value cannot work, and why; shared by both kinds.
pub(crate) fn invalid_bounds(max: Option<f64>, min: Option<f64>) -> Option<(&'static str, String)> {
    match (max, min) {
        (None, None) => Some(("max", "set max and/or min: a gate needs a threshold".into())),
        (Some(m), _) if !m.is_finite() => Some(("max", format!("must be a finite number, got {m}"))),
        (_, Some(m)) if !m.is_finite() => Some(("min", format!("must be a finite number, got {m}"))),
        (Some(hi), Some(lo)) if lo > hi => Some(("min", format!("min {lo} is above max {hi}"))),
        _ => None,
    }
}

impl PrometheusGate {
    pub(crate) fn invalid(&self) -> Option<(&'static str, String)> {
        if !self.url.starts_with("http://") {
            return Some((
                "url",
                format!("must be an http:// URL of a Prometheus server, got {:?}", self.url),
            ));
        }
        if self.query.trim().is_empty() {
            return Some(("query", "must not be empty".into()));
        }
        invalid_bounds(self.max, self.min)
    }
}

impl ScrapeGate {
    pub(crate) fn invalid(&self) -> Option<(&'static str, String)> {
        if !valid_metric(&self.metric) {
            return Some(("metric", format!("{:?} is not a Prometheus metric name", self.metric)));
        }
        if let Some(q) = self.quantile.filter(|q| !(*q > 0.0 && *q < 1.0)) {
            return Some(("quantile", format!("must be between 0 and 1 (exclusive), got {q}")));
        }
        if !self.path.starts_with('/') {
            return Some(("path", "must start with '/'".into()));
        }
        invalid_bounds(self.max, self.min)
    }
}

/// `[a-zA-Z_:][a-zA-Z0-9_:]*`.
fn valid_metric(name: &str) -> bool {
    let mut c = name.chars();
    c.next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && c.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}
