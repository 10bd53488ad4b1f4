//! Standby of the old color in vLLM's sleep mode (`standby = "sleep"`): put to sleep once a
//! release completes and the color has drained (`POST /sleep?level=1`: the weights move to CPU
//! memory, the accelerator's is freed), and woken before it takes traffic again
//! (`POST /wake_up`, then `GET /is_sleeping` until false, then healthy by the health checks).
//! Both run under the service's operation lock, so a sleep never races a rollback's wake.

use std::time::Duration;

use bytes::Bytes;
use cutover_proxy::{Color, Health};
use http_body_util::{BodyExt, Full};
use tokio::time::Instant;

use super::endpoint_client::{client, StepClient};
use super::{ColorState, ServiceCtl};

/// How often a waking color's `/is_sleeping` and health verdicts are read.
const WAKE_POLL: Duration = Duration::from_millis(50);

impl ServiceCtl {
    /// Puts every endpoint of `color` to sleep and stops its health checks (a sleeping server
    /// fails them on purpose). The caller holds `op`. `Err`: the first endpoint that refused;
    /// the color is then left as it was (awake, warm).
    pub(crate) async fn sleep_locked(&self, color: Color) -> Result<String, String> {
        let route = self.route(color).ok_or("the color has no route")?;
        let c = client(self);
        let endpoints = route.endpoints();
        for ep in endpoints.iter() {
            let (status, body) = call(&c, http::Method::POST, &c.uri(ep.addr, "/sleep?level=1")).await?;
            if !(200..300).contains(&status) {
                return Err(format!("{ep}: POST /sleep?level=1 answered {status}: {body}"));
            }
        }
        self.unwatch(color);
        self.set_state(color, Some(ColorState::Sleeping));
        Ok(format!("{color}: {} endpoint(s) asleep (level 1)", endpoints.len()))
    }

    /// Wakes a sleeping `color` and waits, within `wake_timeout`, until every endpoint says
    /// it is awake and the health checks find it healthy. The caller holds `op`. On failure
    /// the color stays marked asleep (a later switch tries again).
    pub(crate) async fn wake_locked(&self, color: Color) -> Result<(), String> {
        let limit = self.cfg().release.wake_timeout.get();
        let started = Instant::now();
        let r = tokio::time::timeout(limit, self.wake(color)).await;
        match r {
            Ok(Ok(())) => {
                self.set_state(color, None);
                tracing::info!(service = %self.name, color = %color, ms = started.elapsed().as_millis() as u64, "woke the sleeping color");
                Ok(())
            }
            Ok(Err(why)) => Err(why),
            Err(_) => Err(format!(
                "not awake and healthy within wake_timeout ({})",
                self.cfg().release.wake_timeout
            )),
        }
    }

    async fn wake(&self, color: Color) -> Result<(), String> {
        let route = self.route(color).ok_or("the color has no route")?;
        let c = client(self);
        for ep in route.endpoints().iter() {
            let (status, body) = call(&c, http::Method::POST, &c.uri(ep.addr, "/wake_up")).await?;
            if !(200..300).contains(&status) {
                return Err(format!("{ep}: POST /wake_up answered {status}: {body}"));
            }
        }
        for ep in route.endpoints().iter() {
            while is_sleeping(&c, ep.addr).await? {
                tokio::time::sleep(WAKE_POLL).await;
            }
        }
        // Awake by its own word; serving only once the health checks say so.
        self.watch(color);
        while !route.endpoints().iter().all(|e| e.health() == Health::Healthy) {
            tokio::time::sleep(WAKE_POLL).await;
        }
        Ok(())
    }
}

/// `GET /is_sleeping` → `{"is_sleeping": bool}`.
async fn is_sleeping(c: &StepClient, addr: std::net::SocketAddr) -> Result<bool, String> {
    let (status, body) = call(c, http::Method::GET, &c.uri(addr, "/is_sleeping")).await?;
    let v: serde_json::Value = serde_json::from_str(&body)
        .map_err(|_| format!("{addr}: GET /is_sleeping answered {status} without JSON: {body}"))?;
    v["is_sleeping"]
        .as_bool()
        .ok_or_else(|| format!("{addr}: GET /is_sleeping has no is_sleeping field: {body}"))
}

async fn call(c: &StepClient, method: http::Method, uri: &str) -> Result<(u16, String), String> {
    let req = http::Request::builder()
        .method(method)
        .uri(uri)
        .body(Full::new(Bytes::new()))
        .map_err(|e| e.to_string())?;
    let resp = c.send(req).await.map_err(|e| format!("{uri}: {e}"))?;
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("{uri}: {e}"))?
        .to_bytes();
    // A short excerpt: it only ever ends up in an error message.
    let text: String = String::from_utf8_lossy(&body).chars().take(200).collect();
    Ok((status, text))
}
