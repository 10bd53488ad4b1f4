//! Prometheus metrics at `GET /metrics`, rendered at scrape time from the data plane's own
//! lock-free counters: the request path pays nothing for them beyond its atomic adds.

use std::fmt;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use cutover_proxy::stats::{Histogram, Sketch, BUCKETS_US};
use cutover_proxy::{Color, ColorRoute, Health, ProbeReason};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::controller::Controller;
use crate::service::ServiceCtl;

struct ControllerCollector(Arc<Controller>);

impl fmt::Debug for ControllerCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ControllerCollector")
    }
}

type Labels = Vec<(&'static str, String)>;

/// A per-color counter: name, help, and how to read it.
type ColorCounter = (&'static str, &'static str, fn(&ColorRoute) -> u64);

fn color_labels(svc: &ServiceCtl, r: &ColorRoute) -> Labels {
    vec![
        ("service", svc.name.clone()),
        ("color", r.color.as_str().to_string()),
        ("version", r.version.clone().unwrap_or_default()),
    ]
}

/// Every (service, color route) pair, in a stable order.
fn routes(ctl: &Controller) -> Vec<(Arc<ServiceCtl>, Arc<ColorRoute>)> {
    let mut out = Vec::new();
    for svc in ctl.services().values() {
        for c in Color::ALL {
            if let Some(r) = svc.route(c) {
                out.push((svc.clone(), r));
            }
        }
    }
    out
}

fn histogram(m: &mut MetricEncoder, labels: &Labels, h: &Histogram) -> fmt::Result {
    let s = h.snapshot();
    let mut buckets: Vec<(f64, u64)> = BUCKETS_US
        .iter()
        .zip(s.buckets.iter())
        .map(|(b, n)| (*b as f64 / 1e6, *n))
        .collect();
    buckets.push((f64::MAX, s.buckets[BUCKETS_US.len()]));
    m.encode_family(labels)?
        .encode_histogram::<NoLabelSet>(s.sum_us as f64 / 1e6, s.count(), &buckets, None)
}

/// A per-color sketch as a metric: name, help, where it is.
type ColorSketch = (&'static str, &'static str, fn(&ColorRoute) -> &Sketch);

/// A sketch as a Prometheus histogram on the usual bounds (a sample within 6 % of a bound
/// may count in the next bucket: the sketch's resolution).
fn sketch_histogram(m: &mut MetricEncoder, labels: &Labels, h: &Sketch) -> fmt::Result {
    let s = h.snapshot();
    let mut below = 0;
    let mut buckets: Vec<(f64, u64)> = BUCKETS_US
        .iter()
        .map(|b| {
            let cumulative = s.count_below(*b);
            let n = cumulative - below;
            below = cumulative;
            (*b as f64 / 1e6, n)
        })
        .collect();
    buckets.push((f64::MAX, s.count() - below));
    m.encode_family(labels)?
        .encode_histogram::<NoLabelSet>(h.sum_us() as f64 / 1e6, s.count(), &buckets, None)
}

impl Collector for ControllerCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        let routes = routes(&self.0);
        encode_traffic(&mut enc, &routes)?;
        encode_color_state(&mut enc, &routes)?;
        encode_services(&mut enc, &self.0)?;
        encode_fleet(&mut enc, &self.0)?;
        encode_shadow(&mut enc, &self.0)?;
        encode_tls(&mut enc)
    }
}

/// The sketches each color keeps, as histograms.
const SKETCHES: [ColorSketch; 2] = [
    (
        "cutover_time_to_first_token_seconds",
        "Request arrival to an event stream's first event",
        |r| &r.stats.ttft,
    ),
    (
        "cutover_token_gap_seconds",
        "Time between reads that carried events, within a stream",
        |r| &r.stats.token_gap,
    ),
];

/// The plain counters each color keeps.
const COLOR_COUNTERS: [ColorCounter; 5] = [
    (
        "cutover_empty_generations",
        "2xx answers that carried no generation (a stream of a bare [DONE], a POST's empty 200): errors for verification",
        |r| r.stats.empty_generations.load(Relaxed),
    ),
    (
        "cutover_stream_events",
        "Server-sent events relayed (derive tokens/s)",
        |r| r.stats.stream_events.load(Relaxed),
    ),
    (
        "cutover_upstream_failures",
        "Requests the proxy failed for the upstream (no endpoint, connect, timeout, bad response)",
        |r| r.stats.upstream_failures.load(Relaxed),
    ),
    (
        "cutover_aborted_bodies",
        "Response bodies cut short after the head was sent",
        |r| r.stats.aborted_bodies.load(Relaxed),
    ),
    (
        "cutover_drain_closed",
        "Requests closed at the drain deadline of an old color",
        |r| r.stats.drain_closed.load(Relaxed),
    ),
];

/// What each color served: responses by code, latency histograms, per-color counters.
fn encode_traffic(enc: &mut DescriptorEncoder, routes: &[(Arc<ServiceCtl>, Arc<ColorRoute>)]) -> fmt::Result {
    let mut m = enc.encode_descriptor(
        "cutover_requests",
        "Responses by status code (proxy-made errors included)",
        None,
        MetricType::Counter,
    )?;
    for (svc, r) in routes {
        for (code, n) in r.stats.codes() {
            let mut l = color_labels(svc, r);
            l.push(("code", code.to_string()));
            m.encode_family(&l)?.encode_counter::<NoLabelSet, _, u64>(&n, None)?;
        }
    }
    let mut m = enc.encode_descriptor(
        "cutover_request_duration_seconds",
        "Request arrival to last response byte",
        None,
        MetricType::Histogram,
    )?;
    for (svc, r) in routes {
        histogram(&mut m, &color_labels(svc, r), &r.stats.duration)?;
    }
    let mut m = enc.encode_descriptor(
        "cutover_time_to_first_byte_seconds",
        "Request arrival to response head: time to first token for streams",
        None,
        MetricType::Histogram,
    )?;
    for (svc, r) in routes {
        histogram(&mut m, &color_labels(svc, r), &r.stats.ttfb)?;
    }
    for (name, help, get) in SKETCHES {
        let mut m = enc.encode_descriptor(name, help, None, MetricType::Histogram)?;
        for (svc, r) in routes {
            sketch_histogram(&mut m, &color_labels(svc, r), get(r))?;
        }
    }
    for (name, help, get) in COLOR_COUNTERS {
        let mut m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
        for (svc, r) in routes {
            m.encode_family(&color_labels(svc, r))?
                .encode_counter::<NoLabelSet, _, u64>(&get(r), None)?;
        }
    }
    encode_resends(enc, routes)
}

/// Requests a reused connection died under: sent once more, or answered 502, by reason.
fn encode_resends(enc: &mut DescriptorEncoder, routes: &[(Arc<ServiceCtl>, Arc<ColorRoute>)]) -> fmt::Result {
    let mut m = enc.encode_descriptor(
        "cutover_upstream_resends",
        "Requests sent once more on a new connection after a reused one died before any answer, by reason (idempotent_method, retry_path, idempotency_key)",
        None,
        MetricType::Counter,
    )?;
    for (svc, r) in routes {
        for (why, n) in r.stats.resends() {
            let mut l = color_labels(svc, r);
            l.push(("reason", why.as_str().to_string()));
            m.encode_family(&l)?.encode_counter::<NoLabelSet, _, u64>(&n, None)?;
        }
    }
    let mut m = enc.encode_descriptor(
        "cutover_upstream_not_resent",
        "Requests answered 502 instead of sent again after a reused connection died under them, by reason (body_streamed, retry_non_idempotent_off, not_a_retry_path, asks_to_store)",
        None,
        MetricType::Counter,
    )?;
    for (svc, r) in routes {
        for (why, n) in r.stats.not_resent() {
            let mut l = color_labels(svc, r);
            l.push(("reason", why.as_str().to_string()));
            m.encode_family(&l)?.encode_counter::<NoLabelSet, _, u64>(&n, None)?;
        }
    }
    Ok(())
}

/// Each color's state now: in-flight, live or not, endpoint health.
fn encode_color_state(enc: &mut DescriptorEncoder, routes: &[(Arc<ServiceCtl>, Arc<ColorRoute>)]) -> fmt::Result {
    let mut m = enc.encode_descriptor(
        "cutover_in_flight",
        "Requests whose response has not finished",
        None,
        MetricType::Gauge,
    )?;
    for (svc, r) in routes {
        m.encode_family(&color_labels(svc, r))?.encode_gauge(&r.in_flight())?;
    }
    let mut m = enc.encode_descriptor(
        "cutover_live_info",
        "1 for the live color of a service, 0 for the other",
        None,
        MetricType::Gauge,
    )?;
    for (svc, r) in routes {
        let live = (svc.proxy.table().live_color() == Some(r.color)) as i64;
        m.encode_family(&color_labels(svc, r))?.encode_gauge(&live)?;
    }
    let mut m = enc.encode_descriptor(
        "cutover_traffic_weight",
        "the color's share (percent) of the live listener's traffic: split during a progressive release's step",
        None,
        MetricType::Gauge,
    )?;
    for (svc, r) in routes {
        let t = svc.proxy.table();
        let weight = match t.live_color() {
            Some(l) if l == r.color => 100 - i64::from(t.weight.min(100)),
            Some(_) => i64::from(t.weight.min(100)),
            None => 0,
        };
        m.encode_family(&color_labels(svc, r))?.encode_gauge(&weight)?;
    }
    let mut m = enc.encode_descriptor(
        "cutover_endpoint_healthy",
        "1 healthy, 0 unhealthy, -1 not checked yet",
        None,
        MetricType::Gauge,
    )?;
    for (svc, r) in routes {
        for e in r.endpoints().iter() {
            let mut l = color_labels(svc, r);
            l.push(("endpoint", e.addr.to_string()));
            let v: i64 = match e.health() {
                Health::Healthy => 1,
                Health::Unhealthy => 0,
                Health::Unknown => -1,
            };
            m.encode_family(&l)?.encode_gauge(&v)?;
        }
    }
    let mut m = enc.encode_descriptor(
        "cutover_probe_failures",
        "Failed health probes by reason (timeout, connect, status, grpc_not_serving, body, tls), timeouts excused by passive evidence included",
        None,
        MetricType::Counter,
    )?;
    for (svc, r) in routes {
        for e in r.endpoints().iter() {
            for why in ProbeReason::ALL {
                let mut l = color_labels(svc, r);
                l.push(("endpoint", e.addr.to_string()));
                l.push(("reason", why.as_str().to_string()));
                m.encode_family(&l)?
                    .encode_counter::<NoLabelSet, _, u64>(&e.stats.probe_failures(why), None)?;
            }
        }
    }
    Ok(())
}

/// Per service: generation, switches and rollbacks, the phase of a release in progress.
/// Fleet mode only: the link to etcd, the routers by ack state, switch convergence.
fn encode_fleet(enc: &mut DescriptorEncoder, ctl: &Controller) -> fmt::Result {
    let Some(link) = crate::fleet::link_of(ctl) else {
        return Ok(());
    };
    let mut m = enc.encode_descriptor(
        "cutover_fleet_connected",
        "1 while this router reads etcd, 0 while it serves its last applied state without it",
        None,
        MetricType::Gauge,
    )?;
    m.encode_gauge(&i64::from(link.connected().0))?;
    let mut m = enc.encode_descriptor(
        "cutover_fleet_ahead_of_etcd",
        "Services this router serves at a newer generation than etcd holds (etcd restored from an older backup)",
        None,
        MetricType::Gauge,
    )?;
    m.encode_gauge(&(link.ahead_count() as i64))?;
    let mut m = enc.encode_descriptor(
        "cutover_fleet_acks",
        "Routers of the fleet by the state of their ack (as this router sees them)",
        None,
        MetricType::Gauge,
    )?;
    for (state, n) in link.counts() {
        let l: Labels = vec![("state", state.as_str().to_string())];
        m.encode_family(&l)?.encode_gauge(&(n as i64))?;
    }
    let mut m = enc.encode_descriptor(
        "cutover_fleet_agents",
        "Host agents registered in the fleet: connected (holding their lease) or away (their model servers keep running)",
        None,
        MetricType::Gauge,
    )?;
    let (connected, away) = link.hosts.counts();
    for (state, n) in [("connected", connected), ("away", away)] {
        let l: Labels = vec![("state", state.to_string())];
        m.encode_family(&l)?.encode_gauge(&(n as i64))?;
    }
    let mut m = enc.encode_descriptor(
        "cutover_fleet_switch_convergence_seconds",
        "Switches made through this router: commit to the last live router's ack",
        None,
        MetricType::Histogram,
    )?;
    let s = link.convergence.snapshot();
    let mut buckets: Vec<(f64, u64)> = BUCKETS_US
        .iter()
        .zip(s.buckets.iter())
        .map(|(b, n)| (*b as f64 / 1e6, *n))
        .collect();
    buckets.push((f64::MAX, s.buckets[BUCKETS_US.len()]));
    m.encode_histogram::<NoLabelSet>(s.sum_us as f64 / 1e6, s.count(), &buckets, None)
}

/// `cutover_releases_total{service,outcome}`: releases this process saw end.
fn encode_releases(enc: &mut DescriptorEncoder, ctl: &Controller) -> fmt::Result {
    let mut m = enc.encode_descriptor(
        "cutover_releases",
        "Releases that ended, by outcome: completed, aborted, rolled_back, interrupted (seen by this process)",
        None,
        MetricType::Counter,
    )?;
    for svc in ctl.services().values() {
        // Every outcome shows, at 0 until one happens: an alert on a rate needs the series.
        for (o, n) in crate::service::OUTCOMES.iter().zip(&svc.releases_ended) {
            let outcome = serde_json::to_value(o)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default();
            let l: Labels = vec![("service", svc.name.clone()), ("outcome", outcome)];
            m.encode_family(&l)?
                .encode_counter::<NoLabelSet, _, u64>(&n.load(Relaxed), None)?;
        }
    }
    Ok(())
}

fn encode_services(enc: &mut DescriptorEncoder, ctl: &Controller) -> fmt::Result {
    let mut m = enc.encode_descriptor(
        "cutover_generation",
        "Switches ever made (survives restarts)",
        None,
        MetricType::Gauge,
    )?;
    for svc in ctl.services().values() {
        let l: Labels = vec![("service", svc.name.clone())];
        m.encode_family(&l)?
            .encode_gauge(&(svc.proxy.table().generation as i64))?;
    }
    for (name, help, kind) in [
        (
            "cutover_switches",
            "Switches made by this process (rollbacks included)",
            0,
        ),
        ("cutover_rollbacks", "Rollbacks made by this process", 1),
    ] {
        let mut m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
        for svc in ctl.services().values() {
            let l: Labels = vec![("service", svc.name.clone())];
            let v = if kind == 0 {
                svc.switches.load(Relaxed)
            } else {
                svc.rollbacks.load(Relaxed)
            };
            m.encode_family(&l)?.encode_counter::<NoLabelSet, _, u64>(&v, None)?;
        }
    }
    encode_releases(enc, ctl)?;
    encode_restarts(enc, ctl)?;
    let mut m = enc.encode_descriptor(
        "cutover_config_reloads",
        "Configuration reloads by this process (SIGHUP, POST /v1/reload), by result; an error changed nothing",
        None,
        MetricType::Counter,
    )?;
    for (result, n) in [("ok", &ctl.reloads.ok), ("error", &ctl.reloads.error)] {
        let l: Labels = vec![("result", result.to_string())];
        m.encode_family(&l)?
            .encode_counter::<NoLabelSet, _, u64>(&n.load(Relaxed), None)?;
    }
    encode_release_phase(enc, ctl)
}

/// Restarts of managed processes per color and version.
fn encode_restarts(enc: &mut DescriptorEncoder, ctl: &Controller) -> fmt::Result {
    let mut m = enc.encode_descriptor(
        "cutover_process_restarts",
        "Managed processes started again by the restart policy after an exit (this process)",
        None,
        MetricType::Counter,
    )?;
    for svc in ctl.services().values() {
        let Some(procs) = &svc.procs else { continue };
        let mut counts: std::collections::BTreeMap<(Color, String), u64> = std::collections::BTreeMap::new();
        // Every version a color runs shows, at 0 until it restarts: a rate needs the series.
        for c in Color::ALL {
            if let Some(v) = svc.version_of(c) {
                counts.insert((c, v), 0);
            }
        }
        for (c, v, n) in procs.restarts_total() {
            counts.insert((c, v), n);
        }
        for ((c, v), n) in counts {
            let l: Labels = vec![
                ("service", svc.name.clone()),
                ("color", c.as_str().to_string()),
                ("version", v),
            ];
            m.encode_family(&l)?.encode_counter::<NoLabelSet, _, u64>(&n, None)?;
        }
    }
    Ok(())
}

/// The phase of each release in progress, as a 1-valued info series.
fn encode_release_phase(enc: &mut DescriptorEncoder, ctl: &Controller) -> fmt::Result {
    let mut m = enc.encode_descriptor(
        "cutover_release_phase_info",
        "1 for the phase of the release in progress",
        None,
        MetricType::Gauge,
    )?;
    for svc in ctl.services().values() {
        if let Some(d) = ctl.active_release_doc(&svc.name) {
            let l: Labels = vec![
                ("service", svc.name.clone()),
                ("release", d.id.to_string()),
                ("version", d.version.clone()),
                ("color", d.color.as_str().to_string()),
                ("phase", d.phase.as_str().to_string()),
            ];
            m.encode_family(&l)?.encode_gauge(&1i64)?;
        }
    }
    Ok(())
}

/// Certificate reloads of this process by outcome (file poll and explicit reloads alike).
fn encode_tls(enc: &mut DescriptorEncoder) -> fmt::Result {
    let c = cutover_proxy::tls::reload_counts();
    let mut m = enc.encode_descriptor(
        "cutover_tls_reloads",
        "TLS certificate reloads: loaded (new pair in use), unchanged, failed (old pair kept)",
        None,
        MetricType::Counter,
    )?;
    for (result, n) in [
        ("loaded", &c.loaded),
        ("unchanged", &c.unchanged),
        ("failed", &c.failed),
    ] {
        let l: Labels = vec![("result", result.to_string())];
        m.encode_family(&l)?
            .encode_counter::<NoLabelSet, _, u64>(&n.load(Relaxed), None)?;
    }
    Ok(())
}

/// A registry whose one collector reads the controller at every scrape.
pub fn registry(ctl: Arc<Controller>) -> Registry {
    let mut r = Registry::default();
    r.register_collector(Box::new(ControllerCollector(ctl)));
    r
}

/// The text exposition.
pub fn render(r: &Registry) -> String {
    let mut out = String::new();
    // Writing to a String cannot fail; an encoder error would be a bug in a label.
    if let Err(e) = prometheus_client::encoding::text::encode(&mut out, r) {
        tracing::error!(error = %e, "metrics encoding failed");
    }
    out
}

/// The same exposition in the Prometheus text format 0.0.4, for clients that do not ask for
/// OpenMetrics (curl, promtool, older scrapers): counter families are named with their
/// `_total` suffix and there is no `# EOF`.
pub fn to_prometheus_text(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len() + 64);
    for line in openmetrics.lines() {
        if line == "# EOF" {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|p| {
            let rest = line.strip_prefix(p)?;
            let (name, tail) = rest.split_once(' ')?;
            counters.contains(name).then(|| format!("{p}{name}_total {tail}"))
        });
        out.push_str(renamed.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

/// Shadow comparisons: pairs by class and verdict, requests not mirrored by reason.
fn encode_shadow(enc: &mut DescriptorEncoder, ctl: &Controller) -> fmt::Result {
    let mut m = enc.encode_descriptor(
        "cutover_shadow_pairs",
        "Mirrored requests whose two answers were compared, by request class and verdict (agree, differ)",
        None,
        MetricType::Counter,
    )?;
    for svc in ctl.services().values() {
        for ((class, verdict), n) in svc.shadow_counts.pairs() {
            let l: Labels = vec![
                ("service", svc.name.clone()),
                ("class", class.to_string()),
                ("verdict", verdict.to_string()),
            ];
            m.encode_family(&l)?.encode_counter::<NoLabelSet, _, u64>(&n, None)?;
        }
    }
    let mut m = enc.encode_descriptor(
        "cutover_shadow_skipped",
        "Live requests not mirrored during a shadow comparison, by reason",
        None,
        MetricType::Counter,
    )?;
    for svc in ctl.services().values() {
        if svc.cfg().release.shadow.is_none() {
            continue;
        }
        for (reason, n) in svc.shadow_counts.skipped() {
            let l: Labels = vec![("service", svc.name.clone()), ("reason", reason.to_string())];
            m.encode_family(&l)?.encode_counter::<NoLabelSet, _, u64>(&n, None)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_get_their_total_name_in_prometheus_text() {
        let om = "# HELP x_requests Reqs.\n# TYPE x_requests counter\nx_requests_total{a=\"b\"} 3\n# HELP y Gauge.\n# TYPE y gauge\ny 1\n# EOF\n";
        let t = to_prometheus_text(om);
        assert_eq!(t, "# HELP x_requests_total Reqs.\n# TYPE x_requests_total counter\nx_requests_total{a=\"b\"} 3\n# HELP y Gauge.\n# TYPE y gauge\ny 1\n");
    }
}
