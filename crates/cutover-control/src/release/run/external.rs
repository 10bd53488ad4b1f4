//! External gates, read through the bake: PromQL queries against a Prometheus server and one
//! metric of the new color's own `/metrics` endpoints. Each gate polls on its own task, so a
//! slow or dead source never delays the verify tick (nor a rollback); the tick reads the
//! latest readings. A source that cannot be read, or returns nothing, reads as no data.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use cutover_config::{PrometheusGate, ScrapeGate, VerifyConfig};
use cutover_proxy::ColorRoute;
use cutover_release::external::Reading;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;

use super::exposition;
use crate::release::steps::{client, StepClient};
use crate::service::ServiceCtl;

/// What a query's answer can hold before it is refused: a gate reads one number.
const MAX_BODY: usize = 4 << 20;

/// The readings of every external gate of one bake; the polling tasks stop when it drops.
pub(crate) struct ExternalGates {
    readings: Arc<Mutex<Vec<Reading>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for ExternalGates {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// What `{service}`, `{color}` and `{version}` become in a query.
pub(crate) struct Subst<'a> {
    pub service: &'a str,
    pub color: &'a str,
    pub version: &'a str,
}

impl Subst<'_> {
    fn apply(&self, query: &str) -> String {
        query
            .replace("{service}", self.service)
            .replace("{color}", self.color)
            .replace("{version}", self.version)
    }
}

impl ExternalGates {
    /// Starts polling every external gate of `v` for the new color `route`.
    pub(crate) fn start(
        svc: &Arc<ServiceCtl>,
        route: &Arc<ColorRoute>,
        s: &Subst<'_>,
        v: &VerifyConfig,
    ) -> ExternalGates {
        let mut initial = Vec::new();
        let mut tasks = Vec::new();
        let readings = Arc::new(Mutex::new(Vec::new()));
        let http = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
        for g in &v.prometheus {
            let query = s.apply(&g.query);
            initial.push(unread(&g.name, &query, g.max, g.min));
            let (slot, readings, http, g) = (initial.len() - 1, readings.clone(), http.clone(), g.clone());
            tasks.push(tokio::spawn(async move {
                poll(readings, slot, g.interval.get(), || prometheus(&http, &g, &query)).await
            }));
        }
        for g in &v.scrape {
            let query = g.describe();
            initial.push(unread(&g.gate_name(), &query, g.max, g.min));
            let (slot, readings, c, g, route) = (
                initial.len() - 1,
                readings.clone(),
                client(svc),
                g.clone(),
                route.clone(),
            );
            tasks.push(tokio::spawn(async move {
                poll(readings, slot, g.interval.get(), || scrape(&c, &g, &route)).await
            }));
        }
        *readings.lock().unwrap_or_else(|e| e.into_inner()) = initial;
        ExternalGates { readings, tasks }
    }

    /// The latest reading of every gate, in configuration order.
    pub(crate) fn readings(&self) -> Vec<Reading> {
        self.readings.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

fn unread(name: &str, query: &str, max: Option<f64>, min: Option<f64>) -> Reading {
    Reading {
        name: name.into(),
        query: query.into(),
        value: Err("no answer yet".into()),
        max,
        min,
    }
}

/// Reads one gate every `every` into its slot, forever (the owner aborts the task).
async fn poll<F, Fut>(readings: Arc<Mutex<Vec<Reading>>>, slot: usize, every: Duration, read: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<Option<f64>, String>>,
{
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let value = read().await;
        if let Some(r) = readings.lock().unwrap_or_else(|e| e.into_inner()).get_mut(slot) {
            r.value = value;
        }
    }
}

/// `GET {url}/api/v1/query?query=...`: the value of an instant query, the worst series
/// against the gate's bounds when it returns several.
async fn prometheus(
    http: &Client<HttpConnector, Full<Bytes>>,
    g: &PrometheusGate,
    query: &str,
) -> Result<Option<f64>, String> {
    let uri = format!("{}/api/v1/query?query={}", g.url.trim_end_matches('/'), encode(query));
    let req = http::Request::get(&uri)
        .body(Full::default())
        .map_err(|e| e.to_string())?;
    let body = tokio::time::timeout(g.timeout.get(), async {
        let resp = http.request(req).await.map_err(|e| format!("{}: {e}", g.url))?;
        let status = resp.status();
        let body = http_body_util::Limited::new(resp.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|e| format!("{}: {e}", g.url))?
            .to_bytes();
        if !status.is_success() {
            return Err(format!(
                "{} answered {status}: {}",
                g.url,
                crate::release::steps::excerpt(&body)
            ));
        }
        Ok(body)
    })
    .await
    .map_err(|_| format!("{} did not answer within {}", g.url, g.timeout))??;
    let values = prom_values(&body)?;
    // Several series: the one furthest past a bound decides (a ceiling reads the highest).
    let reduce = if g.max.is_some() {
        cutover_release::external::Reduce::Max
    } else {
        cutover_release::external::Reduce::Min
    };
    Ok(reduce.apply(&values))
}

/// The numbers of an instant query's answer (vector or scalar); empty for no data.
fn prom_values(body: &[u8]) -> Result<Vec<f64>, String> {
    let v: serde_json::Value = serde_json::from_slice(body).map_err(|e| format!("not a Prometheus answer: {e}"))?;
    if v["status"] != "success" {
        return Err(format!(
            "query failed: {}",
            v["error"].as_str().unwrap_or("no reason given")
        ));
    }
    let number = |pair: &serde_json::Value| pair[1].as_str().and_then(|s| s.parse::<f64>().ok());
    let data = &v["data"];
    match data["resultType"].as_str() {
        Some("vector") => Ok(data["result"]
            .as_array()
            .map(|a| a.iter().filter_map(|s| number(&s["value"])).collect())
            .unwrap_or_default()),
        Some("scalar") => Ok(number(&data["result"]).into_iter().collect()),
        other => Err(format!(
            "the query returns {}, not a vector or scalar",
            other.unwrap_or("nothing")
        )),
    }
}

/// Percent-encodes a query parameter (everything but unreserved characters).
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The metric on every endpoint of the new color, reduced. Any endpoint that cannot be read,
/// or lacks the metric, makes the whole reading no data: a reduction over part of the
/// endpoints could pass a version whose worst endpoint is the one hiding.
async fn scrape(c: &StepClient, g: &ScrapeGate, route: &ColorRoute) -> Result<Option<f64>, String> {
    let (mut values, mut buckets) = (Vec::new(), Vec::new());
    for ep in route.endpoints().iter() {
        let text = tokio::time::timeout(g.timeout.get(), fetch(c, ep.addr, &g.path))
            .await
            .map_err(|_| format!("{}{} did not answer within {}", ep.addr, g.path, g.timeout))??;
        if g.quantile.is_some() {
            // A histogram: the endpoints' buckets add up; the quantile is read from the sum.
            if !exposition::add_buckets(&text, &g.metric, &mut buckets) {
                return Ok(None);
            }
            continue;
        }
        match exposition::sample_sum(&text, &g.metric) {
            Some(v) => values.push(v),
            None => return Ok(None),
        }
    }
    Ok(match g.quantile {
        Some(q) => exposition::quantile(q, &buckets),
        None => g.reduce.apply(&values),
    })
}

async fn fetch(c: &StepClient, addr: SocketAddr, path: &str) -> Result<String, String> {
    let req = http::Request::get(c.uri(addr, path))
        .body(Full::default())
        .map_err(|e| e.to_string())?;
    let resp = c.send(req).await.map_err(|e| format!("{addr}{path}: {e}"))?;
    if !resp.status().is_success() {
        return Err(format!("{addr}{path} answered {}", resp.status()));
    }
    let body = http_body_util::Limited::new(resp.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| format!("{addr}{path}: {e}"))?
        .to_bytes();
    Ok(String::from_utf8_lossy(&body).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_answers_read_as_numbers_or_no_data() {
        let vector = br#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1.5,"7"]},{"metric":{"a":"b"},"value":[1.5,"2"]}]}}"#;
        assert_eq!(prom_values(vector).unwrap(), vec![7.0, 2.0]);
        let empty = br#"{"status":"success","data":{"resultType":"vector","result":[]}}"#;
        assert!(prom_values(empty).unwrap().is_empty());
        let scalar = br#"{"status":"success","data":{"resultType":"scalar","result":[1.5,"0.25"]}}"#;
        assert_eq!(prom_values(scalar).unwrap(), vec![0.25]);
        let bad = br#"{"status":"error","errorType":"bad_data","error":"parse error"}"#;
        assert!(prom_values(bad).unwrap_err().contains("parse error"));
    }

    #[test]
    fn queries_are_substituted_and_encoded() {
        let s = Subst {
            service: "chat",
            color: "green",
            version: "v2",
        };
        let q = s.apply("max(x{service=\"{service}\",color=\"{color}\",version=\"{version}\"})");
        assert_eq!(q, "max(x{service=\"chat\",color=\"green\",version=\"v2\"})");
        assert_eq!(encode("a b{c=\"d\"}+"), "a%20b%7Bc%3D%22d%22%7D%2B");
    }
}
