//! The release steps before the switch, each a plain async function that either returns a
//! detail for the release document or a [`StepFailure`](crate::error::StepFailure), the kind
//! of failure and its reason: [`provision`], [`wait_healthy`],
//! [`warm_up`], [`smoke`], and the [`hooks`] of every stage. The run (`release::run`) puts
//! deadlines, abort and the state machine around them.

pub mod hooks;
pub mod provision;
pub mod smoke;
pub mod wait_healthy;
pub mod warm_up;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use cutover_config::RequestSpec;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use tokio::time::Instant;

pub use hooks::run_hooks;
pub use provision::provision;
pub use smoke::smoke;
pub use wait_healthy::wait_healthy;
pub use warm_up::warm_up;

pub(crate) use crate::service::endpoint_client::{client, StepClient};

fn build_request(spec: &RequestSpec, scheme: &str, addr: SocketAddr) -> Result<Request<Full<Bytes>>, String> {
    let method = Method::from_bytes(spec.method.as_bytes()).map_err(|_| format!("invalid method {:?}", spec.method))?;
    let mut b = Request::builder()
        .method(method)
        .uri(format!("{scheme}://{addr}{}", spec.path));
    let has_ct = spec.headers.keys().any(|k| k.eq_ignore_ascii_case("content-type"));
    for (k, v) in &spec.headers {
        b = b.header(k, v);
    }
    if spec.body.is_some() && !has_ct {
        b = b.header("content-type", "application/json");
    }
    b.body(Full::new(Bytes::from(spec.body.clone().unwrap_or_default())))
        .map_err(|e| e.to_string())
}

/// One answer of an endpoint, read to its end.
pub(crate) struct Answer {
    pub(crate) status: u16,
    pub(crate) body: Bytes,
    pub(crate) latency: Duration,
}

pub(crate) async fn call(c: &StepClient, spec: &RequestSpec, addr: SocketAddr) -> Result<Answer, String> {
    let started = Instant::now();
    let resp = c
        .http
        .request(build_request(spec, c.scheme, addr)?)
        .await
        .map_err(|e| format!("{addr}: {e}"))?;
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("{addr}: body: {e}"))?
        .to_bytes();
    Ok(Answer {
        status,
        body,
        latency: started.elapsed(),
    })
}

/// The first 200 characters of a body or stderr, for error messages.
pub(crate) fn excerpt(b: &[u8]) -> String {
    let s = String::from_utf8_lossy(b);
    let s: String = s.chars().take(200).collect();
    if b.len() > 200 {
        format!("{s}…")
    } else {
        s
    }
}

/// `""` for one, `"s"` (or `many`) otherwise.
pub(crate) fn plural(n: usize, many: &'static str) -> &'static str {
    if n == 1 {
        ""
    } else {
        many
    }
}

/// A deadline for messages: "none" for the effectively infinite ones.
pub(crate) fn deadline_text(d: Duration) -> String {
    if d.as_secs() >= u64::MAX / 8 {
        "none".into()
    } else {
        format!("{:?}", d)
    }
}
