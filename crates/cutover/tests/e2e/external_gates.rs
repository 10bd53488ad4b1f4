//! External gates through the bake: PromQL gates against a real Prometheus (the Debian
//! package) scraping cutover's own `/metrics` and the new color's mock-model, and scrape gates
//! reading the new color's endpoints directly. A gate passes, fails (rolls back), and reads
//! inconclusive on a query without data.

use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::support::*;

/// A real Prometheus on a free port, scraping every second; killed when dropped. The gates'
/// queries read `max_over_time(...[5s])`, as production ones would: one scrape that fails on
/// a loaded machine makes the series stale, and a bare selector would then read no data.
struct Prometheus {
    port: u16,
    _dir: TempDir,
    _proc: Proc,
}

impl Prometheus {
    /// Starts it scraping cutover's admin `/metrics` and `model` (labelled `color`), and waits
    /// until both targets have been scraped (so a gate reads data from the bake's start).
    async fn start(port: u16, cutover_admin: u16, model: &Mock, color: &str) -> Prometheus {
        let dir = TempDir::new("prometheus");
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             scrape_configs:\n  - job_name: cutover\n    static_configs:\n      - targets: ['127.0.0.1:{cutover_admin}']\n\
             \x20 - job_name: model\n    static_configs:\n      - targets: ['{}']\n        labels: {{color: {color}}}\n",
            model.addr()
        );
        let file = dir.path().join("prometheus.yml");
        std::fs::write(&file, config).unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", file.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus (the Debian package) is installed");
        let p = Prometheus {
            port,
            _dir: dir,
            _proc: Proc(Some(child)),
        };
        wait_for("prometheus to scrape both targets", Duration::from_secs(60), || async {
            let v = p.query("sum(up)").await?;
            (v == 2.0).then_some(())
        })
        .await;
        p
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The first value of an instant query, if it has one.
    async fn query(&self, q: &str) -> Option<f64> {
        let url = format!("{}/api/v1/query?query={}", self.url(), q.replace(' ', "%20"));
        // Not JSON while it starts ("Service Unavailable"): no value yet.
        let v: Value = serde_json::from_str(&get(&url).await.ok()?.text()).ok()?;
        v["data"]["result"][0]["value"][1].as_str()?.parse().ok()
    }
}

/// A router fronting blue (v1, live) and green (v2, `green_args`), a Prometheus scraping it
/// and green, and `verify` as the body of `[services.chat.release.verify]` (`{prom}` becomes
/// Prometheus's URL). Returns the ended release of v2.
async fn release_with(green_args: &[&str], verify: &str) -> Value {
    let blue = Mock::start("v1", &[]).await;
    let green = Mock::start("v2", green_args).await;
    let prom_port = free_port();
    let verify = verify.replace("{prom}", &format!("http://127.0.0.1:{prom_port}"));
    let r = Router::start(&format!(
        "{}\n[services.chat.release]\n[services.chat.release.verify]\nbake = \"4s\"\nmin_requests = 0\n{verify}\n",
        static_service(&[&blue], &[&green], "")
    ))
    .await;
    assert_eq!(r.switch("blue").await.status, 200);
    let _prom = Prometheus::start(prom_port, r.admin, &green, "green").await;
    let id = r.release("v2").await;
    r.wait_end(id, Duration::from_secs(60)).await
}

fn gate<'a>(doc: &'a Value, name: &str) -> &'a Value {
    doc["gates"]
        .as_array()
        .and_then(|g| g.iter().find(|g| g["name"] == name))
        .unwrap_or_else(|| panic!("no gate {name} in {doc}"))
}

/// Both sources pass: a query on cutover's own metrics (substituted service and color) and
/// one on the model server's; the readings and the queries as sent are in the document.
#[tokio::test]
async fn promql_gates_pass_on_cutover_and_model_metrics() {
    let d = release_with(
        &[],
        "[[services.chat.release.verify.prometheus]]\nname = \"green healthy\"\nurl = \"{prom}\"\n\
         query = 'sum(max_over_time(cutover_endpoint_healthy{service=\"{service}\",color=\"{color}\"}[5s]))'\nmin = 1\ninterval = \"300ms\"\n\
         [[services.chat.release.verify.prometheus]]\nname = \"queue\"\nurl = \"{prom}\"\n\
         query = 'max(max_over_time(vllm:num_requests_waiting{color=\"{color}\"}[5s]))'\nmax = 5\ninterval = \"300ms\"\n",
    )
    .await;
    assert_eq!(d["outcome"], "completed", "{d}");
    let healthy = gate(&d, "green healthy");
    assert_eq!(healthy["result"], "passing", "{d}");
    assert_eq!(healthy["value"], 1.0, "{d}");
    assert_eq!(
        healthy["query"],
        "sum(max_over_time(cutover_endpoint_healthy{service=\"chat\",color=\"green\"}[5s]))"
    );
    let queue = gate(&d, "queue");
    assert_eq!(
        (queue["result"].as_str(), queue["value"].as_f64()),
        (Some("passing"), Some(0.0)),
        "{d}"
    );
}

/// The model server's queue above the ceiling rolls back, naming the query and the value.
#[tokio::test]
async fn promql_gate_over_its_max_rolls_back() {
    let d = release_with(
        &["--metric", "vllm:num_requests_waiting=7"],
        "[[services.chat.release.verify.prometheus]]\nname = \"queue\"\nurl = \"{prom}\"\n\
         query = 'max(max_over_time(vllm:num_requests_waiting{color=\"{color}\"}[5s]))'\nmax = 5\ninterval = \"300ms\"\n",
    )
    .await;
    assert_eq!(d["outcome"], "rolled_back", "{d}");
    let reason = d["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("max(max_over_time(vllm:num_requests_waiting{color=\"green\"}[5s])) = 7 > max 5"),
        "{reason}"
    );
    let queue = gate(&d, "queue");
    assert_eq!(
        (queue["result"].as_str(), queue["value"].as_f64()),
        (Some("failing"), Some(7.0)),
        "{d}"
    );
}

/// A query with no data reads inconclusive (never a pass); `on_inconclusive = "rollback"`
/// decides, and the reason names the query and says it had no data.
#[tokio::test]
async fn promql_gate_without_data_is_inconclusive() {
    let d = release_with(
        &[],
        "on_inconclusive = \"rollback\"\n[[services.chat.release.verify.prometheus]]\nname = \"absent\"\nurl = \"{prom}\"\n\
         query = 'max(vllm:no_such_metric{color=\"{color}\"})'\nmax = 5\ninterval = \"300ms\"\n",
    )
    .await;
    assert_eq!(d["outcome"], "rolled_back", "{d}");
    let reason = d["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("inconclusive"), "{reason}");
    assert!(
        reason.contains("max(vllm:no_such_metric{color=\"green\"}) returned an empty result")
            && reason.contains("no data"),
        "{reason}"
    );
    let g = gate(&d, "absent");
    assert_eq!(
        (g["result"].as_str(), g["value"].is_null()),
        (Some("inconclusive"), true),
        "{d}"
    );
}

/// Releases v2 onto two green endpoints whose queues are 7 and 0, with `gates` as the
/// scrape gates; returns the ended release and the router.
async fn scrape_release(gates: &str) -> (Value, Router) {
    let blue = Mock::start("v1", &[]).await;
    let g1 = Mock::start("v2", &["--metric", "vllm:num_requests_waiting=7"]).await;
    let g2 = Mock::start("v2", &[]).await;
    let r = Router::start(&format!(
        "{}\n[services.chat.release]\n[services.chat.release.verify]\nbake = \"3s\"\nmin_requests = 0\n{gates}\n",
        static_service(&[&blue], &[&g1, &g2], "")
    ))
    .await;
    assert_eq!(r.switch("blue").await.status, 200);
    let id = r.release("v2").await;
    (r.wait_end(id, Duration::from_secs(60)).await, r)
}

/// Scrape gates read every endpoint of the new color: queues of 7 and 0 read 3.5 as a mean,
/// which passes a ceiling of 5, and the release completes.
#[tokio::test]
async fn scrape_gates_pass_on_the_mean_across_the_new_colors_endpoints() {
    let (d, _r) = scrape_release(
        "[[services.chat.release.verify.scrape]]\nname = \"queue mean\"\nmetric = \"vllm:num_requests_waiting\"\nreduce = \"mean\"\nmax = 5\ninterval = \"200ms\"\n\
         [[services.chat.release.verify.scrape]]\nname = \"kv cache\"\nmetric = \"vllm:kv_cache_usage_perc\"\nmax = 0.9\ninterval = \"200ms\"\n",
    )
    .await;
    assert_eq!(d["outcome"], "completed", "{d}");
    let mean = gate(&d, "queue mean");
    assert_eq!(
        (mean["result"].as_str(), mean["value"].as_f64()),
        (Some("passing"), Some(3.5)),
        "{d}"
    );
    assert_eq!(mean["query"], "mean(vllm:num_requests_waiting)");
    assert_eq!(gate(&d, "kv cache")["result"], "passing", "{d}");
}

/// The same endpoints read 7 as a max, over the ceiling of 5: the release rolls back and
/// live traffic is on blue again.
#[tokio::test]
async fn scrape_gate_over_its_max_rolls_back() {
    let (d, r) = scrape_release(
        "[[services.chat.release.verify.scrape]]\nmetric = \"vllm:num_requests_waiting\"\nreduce = \"max\"\nmax = 5\ninterval = \"200ms\"\n",
    )
    .await;
    assert_eq!(d["outcome"], "rolled_back", "{d}");
    let max = gate(&d, "vllm:num_requests_waiting");
    assert_eq!(
        (max["result"].as_str(), max["value"].as_f64()),
        (Some("failing"), Some(7.0)),
        "{d}"
    );
    let reason = d["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("max(vllm:num_requests_waiting) = 7 > max 5"),
        "{reason}"
    );
    assert_eq!(r.status().await["live"], "blue");
}

/// An unreachable Prometheus is no data either: inconclusive, never a pass. With the default
/// `on_inconclusive = "complete"` the release completes and says why it could not judge.
#[tokio::test]
async fn promql_gate_with_an_unreachable_prometheus_is_inconclusive() {
    let blue = Mock::start("v1", &[]).await;
    let green = Mock::start("v2", &[]).await;
    let dead = free_port();
    let r = Router::start(&format!(
        "{}\n[services.chat.release]\n[services.chat.release.verify]\nbake = \"2s\"\nmin_requests = 0\n\
         [[services.chat.release.verify.prometheus]]\nname = \"queue\"\nurl = \"http://127.0.0.1:{dead}\"\n\
         query = 'max(vllm:num_requests_waiting)'\nmax = 5\ninterval = \"200ms\"\n",
        static_service(&[&blue], &[&green], "")
    ))
    .await;
    assert_eq!(r.switch("blue").await.status, 200);
    let id = r.release("v2").await;
    let d = r.wait_end(id, Duration::from_secs(60)).await;
    assert_eq!(d["outcome"], "completed", "{d}");
    let reason = d["reason"].as_str().unwrap_or_default();
    assert!(
        reason.starts_with("inconclusive, completed as configured")
            && reason.contains("gate \"queue\" had no data: max(vllm:num_requests_waiting) could not be read"),
        "{reason}"
    );
    assert_eq!(gate(&d, "queue")["result"], "inconclusive", "{d}");
}

/// A histogram scrape gate: vLLM's `vllm:time_to_first_token_seconds` on the new color,
/// whose answers take 300 ms, reads a p99 in (0.25, 0.5] (interpolated as Prometheus does)
/// and fails a 200 ms ceiling once traffic has filled the buckets; before that it had no data.
#[tokio::test]
async fn scrape_gate_reads_a_histogram_quantile() {
    let blue = Mock::start("v1", &[]).await;
    let green = Mock::start("v2", &["--latency", "300ms"]).await;
    let r = Router::start(&format!(
        "{}\n[services.chat.release]\n[services.chat.release.verify]\nbake = \"20s\"\nmin_requests = 0\n\
         [[services.chat.release.verify.scrape]]\nname = \"ttft p99\"\nmetric = \"vllm:time_to_first_token_seconds\"\nquantile = 0.99\nmax = 0.2\ninterval = \"200ms\"\n",
        static_service(&[&blue], &[&green], "")
    ))
    .await;
    assert_eq!(r.switch("blue").await.status, 200);
    let traffic = Traffic::start(r.url("/v1/chat/completions"), 4, Duration::from_millis(5));
    let id = r.release("v2").await;
    let d = r.wait_end(id, Duration::from_secs(60)).await;
    let _ = traffic.stop().await;
    assert_eq!(d["outcome"], "rolled_back", "{d}");
    let g = gate(&d, "ttft p99");
    assert_eq!(g["query"], "histogram_quantile(0.99, vllm:time_to_first_token_seconds)");
    let v = g["value"].as_f64().unwrap();
    assert!(v > 0.25 && v <= 0.5, "{d}");
    assert_eq!(g["result"], "failing", "{d}");
}
