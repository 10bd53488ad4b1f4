//! Smoke checks: each configured request against every endpoint of the new color, its answer
//! compared with `expect` (status, JSON pointers, body text, latency).

use std::sync::Arc;

use cutover_config::Expect;
use cutover_proxy::ColorRoute;

use super::{call, client, excerpt, plural, Answer};
use crate::base::error::{FailureKind, StepFailure, StepResult};
use crate::service::ServiceCtl;

pub async fn smoke(svc: Arc<ServiceCtl>, route: Arc<ColorRoute>) -> StepResult {
    let checks = &svc.cfg().release.smoke;
    if checks.is_empty() {
        return Ok("no smoke checks configured".into());
    }
    let c = client(&svc);
    let mut n = 0;
    for check in checks {
        for ep in route.endpoints().iter() {
            for round in 1..=check.repeat {
                let at = if check.repeat > 1 {
                    format!(" (answer {round} of {})", check.repeat)
                } else {
                    String::new()
                };
                let a = call(&c, &check.request, ep.addr).await.map_err(|e| {
                    let reason = format!("smoke check {:?} failed on {}{at}: request failed: {e}", check.name, ep);
                    StepFailure::new(FailureKind::Answers, reason)
                })?;
                if let Err(why) = check_expect(&check.expect, &a) {
                    let reason = format!(
                        "smoke check {:?} failed on {}{at}: {why}; body: {}",
                        check.name,
                        ep,
                        excerpt(&a.body)
                    );
                    return Err(StepFailure::new(FailureKind::Answers, reason));
                }
                n += 1;
            }
        }
    }
    Ok(format!(
        "{} check{} passed on {} endpoint{} ({n} requests)",
        checks.len(),
        plural(checks.len(), "s"),
        route.endpoints().len(),
        plural(route.endpoints().len(), "s")
    ))
}

/// Checks one smoke answer against its expectations; `Err` says what differed.
fn check_expect(e: &Expect, a: &Answer) -> Result<(), String> {
    if let Some(st) = e.status {
        if a.status != st {
            return Err(format!("expected status {st}, got {}", a.status));
        }
    }
    if let Some(max) = e.max_latency {
        if a.latency > max.get() {
            return Err(format!(
                "expected an answer within {max}, took {} ms",
                a.latency.as_millis()
            ));
        }
    }
    if let Some(needle) = &e.body_contains {
        if !String::from_utf8_lossy(&a.body).contains(needle.as_str()) {
            return Err(format!("expected the body to contain {needle:?}"));
        }
    }
    if !e.json.is_empty() {
        let v: serde_json::Value =
            serde_json::from_slice(&a.body).map_err(|err| format!("expected a JSON body ({err})"))?;
        for (pointer, want) in &e.json {
            let want = serde_json::to_value(want).map_err(|err| err.to_string())?;
            match v.pointer(pointer) {
                Some(got) if *got == want => {}
                Some(got) => return Err(format!("expected {pointer} = {want}, got {got}")),
                None => return Err(format!("expected {pointer} = {want}, but the body has no {pointer}")),
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;

    use super::*;

    fn answer(status: u16, body: &str, ms: u64) -> Answer {
        Answer {
            status,
            body: Bytes::from(body.to_string()),
            latency: Duration::from_millis(ms),
        }
    }

    fn expect(text: &str) -> Expect {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn smoke_expectations_say_what_differed() {
        let e = expect("status = 200\njson = { \"/object\" = \"chat.completion\", \"/choices/0/index\" = 0 }\nmax_latency = \"1s\"");
        assert_eq!(
            check_expect(
                &e,
                &answer(200, r#"{"object":"chat.completion","choices":[{"index":0}]}"#, 10)
            ),
            Ok(())
        );
        assert_eq!(
            check_expect(&e, &answer(500, "{}", 10)).unwrap_err(),
            "expected status 200, got 500"
        );
        assert_eq!(
            check_expect(&e, &answer(200, r#"{"object":"list","choices":[{"index":0}]}"#, 10)).unwrap_err(),
            "expected /object = \"chat.completion\", got \"list\""
        );
        assert!(check_expect(
            &e,
            &answer(200, r#"{"object":"chat.completion","choices":[{"index":0}]}"#, 1500)
        )
        .unwrap_err()
        .contains("within 1s"));
        assert!(check_expect(&e, &answer(200, "not json", 10))
            .unwrap_err()
            .starts_with("expected a JSON body"));
        let e = expect("body_contains = \"pong\"");
        assert!(check_expect(&e, &answer(200, "ping", 1)).is_err());
    }
}
