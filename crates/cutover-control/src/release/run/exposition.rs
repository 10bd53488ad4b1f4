//! Reading the Prometheus text exposition a model server serves at `/metrics`, as much as the
//! scrape gates need: the samples of one name (any labels), and a histogram's buckets with
//! the quantile Prometheus's `histogram_quantile` would read from them.

/// Where a sample's label set begins (a named constant: a brace in a character literal
/// miscounts in the project's function-length tool).
const LABELS_OPEN: char = '{';

/// Every sample named `name` exactly (`foo` is not `foo_total`): its label set (with the
/// braces, empty without) and value. Comments and lines that do not parse are skipped.
fn samples<'a>(text: &'a str, name: &'a str) -> impl Iterator<Item = (&'a str, f64)> + 'a {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .filter_map(move |line| {
            let rest = line.strip_prefix(name)?;
            let (labels, rest) = match rest.chars().next()? {
                LABELS_OPEN => rest.split_at(labels_end(rest)?),
                ' ' | '\t' => ("", rest),
                _ => return None,
            };
            let v = match rest.split_whitespace().next()? {
                "+Inf" => f64::INFINITY,
                "-Inf" => f64::NEG_INFINITY,
                v => v.parse().ok()?,
            };
            Some((labels, v))
        })
}

/// The sum of every sample named `metric` (any labels); `None` when there is none.
pub(crate) fn sample_sum(text: &str, metric: &str) -> Option<f64> {
    samples(text, metric).map(|(_, v)| v).reduce(|a, b| a + b)
}

/// Adds the cumulative buckets of histogram `metric` (`{metric}_bucket{..,le="X"}`, any
/// other labels added up) into `into` as (upper bound, count). `false` when it has none.
pub(crate) fn add_buckets(text: &str, metric: &str, into: &mut Vec<(f64, f64)>) -> bool {
    let name = format!("{metric}_bucket");
    let mut found = false;
    for (labels, count) in samples(text, &name) {
        let Some(le) = label(labels, "le").and_then(|v| match v {
            "+Inf" => Some(f64::INFINITY),
            v => v.parse::<f64>().ok(),
        }) else {
            continue;
        };
        found = true;
        match into.iter_mut().find(|(b, _)| *b == le) {
            Some((_, c)) => *c += count,
            None => into.push((le, count)),
        }
    }
    into.sort_by(|a, b| a.0.total_cmp(&b.0));
    found
}

/// The `q` quantile of cumulative buckets, interpolated linearly within its bucket as
/// Prometheus's `histogram_quantile` does; `None` without observations or a `+Inf` bucket.
/// A rank in the `+Inf` bucket reads the highest finite bound (nothing better is known).
pub(crate) fn quantile(q: f64, buckets: &[(f64, f64)]) -> Option<f64> {
    let &(last, total) = buckets.last()?;
    if last != f64::INFINITY || total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let i = buckets.iter().position(|&(_, c)| c >= rank)?;
    let (upper, count) = buckets[i];
    let (lower, below) = if i == 0 {
        (0.0_f64.min(upper), 0.0)
    } else {
        buckets[i - 1]
    };
    if upper == f64::INFINITY {
        return Some(lower);
    }
    if count <= below {
        return Some(upper);
    }
    Some(lower + (upper - lower) * (rank - below) / (count - below))
}

/// The value of label `name` in a label set `{a="x",le="0.5"}`, unescaped quotes only.
fn label<'a>(labels: &'a str, name: &str) -> Option<&'a str> {
    let inner = labels.strip_prefix('{')?.strip_suffix('}')?;
    let mut rest = inner;
    while !rest.is_empty() {
        let (key, after) = rest.split_once("=\"")?;
        let end = value_end(after)?;
        if key.trim().trim_start_matches(',').trim() == name {
            return Some(&after[..end]);
        }
        rest = &after[end + 1..];
    }
    None
}

/// The index of the `"` that ends a label value (a `\"` inside it does not).
fn value_end(s: &str) -> Option<usize> {
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            '"' => return Some(i),
            _ => {}
        }
    }
    None
}

/// The index just past the `}` that closes a label set at the start of `s` (a `}` inside a
/// quoted label value does not close it).
fn labels_end(s: &str) -> Option<usize> {
    let (mut quoted, mut escaped) = (false, false);
    for (i, c) in s.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            '}' if !quoted => return Some(i + 1),
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# HELP vllm:num_requests_waiting Waiting.\n# TYPE vllm:num_requests_waiting gauge\n\
        vllm:num_requests_waiting{model_name=\"a\"} 3\nvllm:num_requests_waiting{model_name=\"b\",x=\"}\"} 4 1700000000\n\
        vllm:num_requests_waiting_total 100\ntgi_queue_size 2.5\n";

    #[test]
    fn samples_of_one_name_are_added_across_labels_and_no_other_name_counts() {
        assert_eq!(sample_sum(TEXT, "vllm:num_requests_waiting"), Some(7.0));
        assert_eq!(sample_sum(TEXT, "tgi_queue_size"), Some(2.5));
        assert_eq!(sample_sum(TEXT, "vllm:num_requests"), None);
        assert_eq!(sample_sum(TEXT, "llamacpp:requests_deferred"), None);
    }

    /// vLLM's shape: ten observations of 0.3 s, all in the (0.25, 0.5] bucket.
    const TTFT: &str = "# TYPE vllm:time_to_first_token_seconds histogram\n\
        vllm:time_to_first_token_seconds_bucket{model_name=\"m\",le=\"0.1\"} 0\n\
        vllm:time_to_first_token_seconds_bucket{model_name=\"m\",le=\"0.25\"} 0\n\
        vllm:time_to_first_token_seconds_bucket{model_name=\"m\",le=\"0.5\"} 10\n\
        vllm:time_to_first_token_seconds_bucket{model_name=\"m\",le=\"+Inf\"} 10\n\
        vllm:time_to_first_token_seconds_sum{model_name=\"m\"} 3\n\
        vllm:time_to_first_token_seconds_count{model_name=\"m\"} 10\n";

    #[test]
    fn histogram_quantiles_interpolate_within_the_bucket_like_prometheus() {
        let mut b = Vec::new();
        assert!(add_buckets(TTFT, "vllm:time_to_first_token_seconds", &mut b));
        assert_eq!(b, vec![(0.1, 0.0), (0.25, 0.0), (0.5, 10.0), (f64::INFINITY, 10.0)]);
        let p99 = quantile(0.99, &b).unwrap();
        assert!((p99 - 0.4975).abs() < 1e-9, "{p99}");
        // A second endpoint's buckets add up; its faster answers pull the median down.
        let fast = TTFT
            .replace("le=\"0.1\"} 0", "le=\"0.1\"} 10")
            .replace("le=\"0.25\"} 0", "le=\"0.25\"} 10");
        assert!(add_buckets(&fast, "vllm:time_to_first_token_seconds", &mut b));
        assert_eq!(b[3], (f64::INFINITY, 20.0));
        assert!((quantile(0.5, &b).unwrap() - 0.1).abs() < 1e-9);
        // No observations, or no histogram: no reading.
        assert_eq!(quantile(0.99, &[(0.5, 0.0), (f64::INFINITY, 0.0)]), None);
        assert!(!add_buckets(TEXT, "vllm:time_to_first_token_seconds", &mut Vec::new()));
        // All in +Inf: the highest finite bound.
        assert_eq!(quantile(0.5, &[(0.5, 0.0), (f64::INFINITY, 4.0)]), Some(0.5));
    }

    #[test]
    fn labels_are_read_with_quotes_and_escapes() {
        assert_eq!(label("{a=\"x,y\",le=\"0.5\"}", "le"), Some("0.5"));
        assert_eq!(label("{a=\"say \\\"le=\\\"\",le=\"+Inf\"}", "le"), Some("+Inf"));
        assert_eq!(label("{a=\"x\"}", "le"), None);
    }
}
