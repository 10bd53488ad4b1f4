//! The admin API (JSON over HTTP, bearer token on every `/v1` call), on its own listener.
//! [`error`] turns the control core's errors into statuses and codes; [`access`] says which
//! role each route needs.

pub mod access;
pub mod error;
pub mod logs;
mod shadow;

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, MatchedPath, Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use cutover_proxy::Color;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::api::token::{Identity, Tokens};
use crate::controller::Controller;
use crate::service::stop::StopRequest;
use crate::service::switch::{RollbackRequest, SwitchRequest};
pub use error::ApiError;

/// Admin request bodies larger than this are refused with 413.
pub const MAX_BODY: usize = 64 * 1024;

#[derive(Clone)]
pub struct AdminState {
    pub ctl: Arc<Controller>,
    /// The tokens accepted, with their names and roles; re-read when the tokens file changes.
    pub tokens: Tokens,
    pub metrics: Arc<prometheus_client::registry::Registry>,
    /// The running `serve`'s listeners, which a reload changes; `None` in a bare controller.
    pub serving: Option<Arc<dyn crate::api::reload::Reload>>,
    /// Which process answers, for `/healthz`: after `serve --upgrade`, which one it replaced.
    pub process: Arc<Value>,
}

impl AdminState {
    pub fn new(ctl: Arc<Controller>, tokens: Tokens) -> AdminState {
        let metrics = Arc::new(crate::api::metrics::registry(ctl.clone()));
        let process = Arc::new(json!({
            "pid": std::process::id(),
            "started_at": cutover_store::now_rfc3339(),
            "upgraded_from_pid": null,
        }));
        AdminState {
            ctl,
            tokens,
            metrics,
            serving: None,
            process,
        }
    }

    /// Records the pid of the process this one took over from (`serve --upgrade`).
    pub fn upgraded_from(mut self, pid: Option<u32>) -> AdminState {
        let mut p = (*self.process).clone();
        p["upgraded_from_pid"] = json!(pid);
        self.process = Arc::new(p);
        self
    }

    /// Lets `POST /v1/reload` reload the configuration of this `serve`.
    pub fn with_reload(mut self, serving: Arc<dyn crate::api::reload::Reload>) -> AdminState {
        self.serving = Some(serving);
        self
    }
}

pub fn router(state: AdminState) -> Router {
    let v1 = Router::new()
        .route("/v1/services", get(list_services))
        .route("/v1/services/{svc}", get(get_service))
        .route("/v1/services/{svc}/switch", post(switch))
        .route("/v1/services/{svc}/rollback", post(rollback))
        .route("/v1/services/{svc}/stop", post(stop))
        .route("/v1/services/{svc}/shadow", post(shadow::set_sample))
        .route("/v1/services/{svc}/history", get(history))
        .route("/v1/services/{svc}/series", get(series))
        .route("/v1/services/{svc}/logs", get(service_logs))
        .route("/v1/services/{svc}/releases", post(start_release).get(list_releases))
        .route("/v1/services/{svc}/releases/{id}", get(get_release))
        .route("/v1/services/{svc}/releases/{id}/approve", post(approve))
        .route("/v1/services/{svc}/releases/{id}/abort", post(abort))
        .route("/v1/reload", post(reload))
        .route("/v1/fleet", get(fleet))
        .route_layer(middleware::from_fn_with_state(state.clone(), auth));
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/", get(dashboard))
        .route("/openapi.json", get(openapi))
        .merge(v1)
        .fallback(|| async { ApiError::not_found("no such admin endpoint; see GET /openapi.json") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(405, "method_not_allowed", "method not allowed on this endpoint")
        })
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
}

/// Liveness, and which process is serving: its pid, start time and, after an upgrade, the pid
/// it took over from.
async fn healthz(State(st): State<AdminState>) -> Json<Value> {
    let mut v = (*st.process).clone();
    v["status"] = json!("ok");
    Json(v)
}

async fn dashboard() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            // Everything is inline and served from here: nothing loads from elsewhere.
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:",
            ),
            (header::X_FRAME_OPTIONS, "DENY"),
        ],
        include_str!("dashboard.html"),
    )
        .into_response()
}

async fn openapi() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        include_str!("openapi.json"),
    )
        .into_response()
}

async fn series(State(st): State<AdminState>, Path(svc): Path<String>) -> Result<Json<Value>, ApiError> {
    let points = st.ctl.series(&svc)?;
    Ok(Json(
        json!({"service": svc, "interval_s": crate::service::series::SAMPLE_EVERY.as_secs(), "points": points}),
    ))
}

async fn metrics(State(st): State<AdminState>, headers: HeaderMap) -> Response {
    let body = crate::api::metrics::render(&st.metrics);
    let wants_openmetrics = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("application/openmetrics-text"));
    if wants_openmetrics {
        (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        )
            .into_response()
    } else {
        let text = crate::api::metrics::to_prometheus_text(&body);
        (
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
            text,
        )
            .into_response()
    }
}

/// Authenticates the bearer token (401 when missing or unknown), checks its role against
/// the route's ([`access::TABLE`]; 403 when too low), and records who calls: the identity as
/// a request extension and the actor (see [`actor`]) in `x-cutover-actor`.
async fn auth(State(st): State<AdminState>, mut req: Request, next: Next) -> Response {
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    // Look up even when nothing was presented, so a missing and a wrong token take the same path.
    let Some(who) = st.tokens.authenticate(presented.trim()) else {
        return ApiError::new(
            401,
            "unauthorized",
            "missing or wrong bearer token (Authorization: Bearer TOKEN)",
        )
        .into_response();
    };
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string())
        .unwrap_or_default();
    let needed = access::needed(req.method(), &route);
    if who.role < needed {
        return ApiError::forbidden(format!(
            "{} {} needs a token with the role {needed}{}; token {:?} has the role {}",
            req.method(),
            req.uri().path(),
            if needed == crate::api::token::Role::Admin {
                ""
            } else {
                " or higher"
            },
            who.name,
            who.role
        ))
        .into_response();
    }
    // A successor is taking over: what this process would change now, it could not hand on.
    if req.method() != http::Method::GET && st.ctl.is_quiesced() {
        return ApiError::new(
            503,
            "upgrading",
            "cutover is handing over to a new process (serve --upgrade); retry in a few seconds",
        )
        .into_response();
    }
    let label = req.headers().get(ACTOR_HEADER).and_then(|v| v.to_str().ok());
    let recorded = actor_of(&who, label);
    // Built from a checked name and a label that was already a header value.
    let value = HeaderValue::from_str(&recorded).unwrap_or_else(|_| HeaderValue::from_static("token:?"));
    req.headers_mut().insert(ACTOR_HEADER, value);
    req.extensions_mut().insert(who);
    next.run(req).await
}

/// The header a client may label its calls with (the CLI sends `cli:USER`, the dashboard
/// `dashboard`); the auth layer replaces it with the recorded actor.
const ACTOR_HEADER: &str = "x-cutover-actor";

/// The actor recorded in the history for a call by `who`: `token:NAME`, then the client's
/// label in parentheses when it sent one, e.g. `token:ci (cli:bob)`. The first word is
/// always the authenticated token's name; the label is only what the client says.
fn actor_of(who: &Identity, label: Option<&str>) -> String {
    let label: String = label
        .unwrap_or("")
        .chars()
        .filter(|c| !c.is_control())
        .take(100)
        .collect();
    match label.trim() {
        "" => format!("token:{}", who.name),
        l => format!("token:{} ({l})", who.name),
    }
}

/// Parses a JSON body strictly: unknown fields and wrong types are 400s with the reason. An
/// empty body means "all defaults".
fn parse_body<T: DeserializeOwned + Default>(body: Result<Bytes, BytesRejection>) -> Result<T, ApiError> {
    let body = body.map_err(|e| {
        let status = e.status().as_u16();
        let code = if status == 413 {
            "body_too_large"
        } else {
            "invalid_body"
        };
        ApiError::new(status, code, format!("request body: {}", e.body_text()))
    })?;
    if body.is_empty() {
        return Ok(T::default());
    }
    serde_json::from_slice(&body).map_err(|e| ApiError::bad_request("invalid_body", format!("request body: {e}")))
}

/// Runs every admin body parser on `data`, for the fuzz targets under `fuzz/`: none may
/// panic, and each either parses or gives a 400 with a message.
#[doc(hidden)]
pub fn fuzz_admin_bodies(data: &[u8]) {
    fn one<T: DeserializeOwned + Default>(data: &[u8]) -> Option<T> {
        match parse_body::<T>(Ok(Bytes::copy_from_slice(data))) {
            Ok(v) => Some(v),
            Err(e) => {
                assert_eq!(e.status, 400, "{e}");
                assert!(!e.message.is_empty());
                None
            }
        }
    }
    one::<SwitchBody>(data);
    one::<RollbackBody>(data);
    one::<StopBody>(data);
    if let Some(b) = one::<ReleaseBody>(data) {
        // Any outcome is fine; it must only not panic.
        let _valid = crate::release::validate_version(&b.version).is_ok();
    }
}

/// The actor of a call, as the auth layer wrote it (see [`actor_of`]): every route that
/// records one is behind that layer, which replaced whatever the client sent.
fn actor(headers: &HeaderMap) -> String {
    headers
        .get(ACTOR_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("api")
        .to_string()
}

/// Reads the config file again and applies the differences (see `reload`).
async fn reload(State(st): State<AdminState>, headers: HeaderMap) -> Result<Json<Value>, ApiError> {
    use crate::api::reload::ReloadError;
    let serving = st
        .serving
        .clone()
        .ok_or_else(|| ApiError::new(503, "unavailable", "this controller serves no listeners to reload"))?;
    match serving.reload(&actor(&headers)).await {
        Ok(r) => Ok(Json(json!({
            "summary": r.summary(),
            "added": r.added,
            "removed": r.removed,
            "changed": r.changed,
            "certificates": r.certificates,
        }))),
        Err(e @ ReloadError::Invalid(_)) => Err(ApiError::new(422, "invalid_config", e.to_string())),
        Err(e @ ReloadError::Refused(_)) => Err(ApiError::conflict("reload_refused", e.to_string())),
        Err(e @ ReloadError::Bind(_)) => Err(ApiError::conflict("cannot_bind", e.to_string())),
    }
}

async fn list_services(State(st): State<AdminState>) -> Result<Json<Value>, ApiError> {
    let mut out = Vec::new();
    for name in st.ctl.services().keys() {
        out.push(service_json(&st, name)?);
    }
    Ok(Json(json!({ "services": out })))
}

fn service_json(st: &AdminState, name: &str) -> Result<Value, ApiError> {
    let svc = st.ctl.service(name)?;
    let release = st.ctl.release_in_progress(name).map(|d| release_json(st, &d));
    serde_json::to_value(svc.status(release)).map_err(|e| ApiError::internal(e.to_string()))
}

async fn get_service(State(st): State<AdminState>, Path(svc): Path<String>) -> Result<Json<Value>, ApiError> {
    Ok(Json(service_json(&st, &svc)?))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct SwitchBody {
    /// A string, parsed by [`color`]: serde's own message for a wrong one quotes a column.
    to: Option<String>,
    if_generation: Option<u64>,
    #[serde(default)]
    force: bool,
    reason: Option<String>,
}

/// A color named in a request.
fn color(s: &str) -> Result<Color, ApiError> {
    match s {
        "blue" => Ok(Color::Blue),
        "green" => Ok(Color::Green),
        other => Err(ApiError::bad_request(
            "invalid_color",
            format!("unknown color {other:?}: expected blue or green"),
        )),
    }
}

/// A manual switch. A release in progress is refused (409 `release_in_progress`) unless
/// forced: switching under it would leave it pending with its checks overtaken. Forced
/// before the release's switch, the switch happens and then ends the release (aborted,
/// with the reason); after the release's switch, use rollback, which the run answers to.
///
/// Fleet mode: the release may run on the leader. A follower refuses the same way, and
/// forwards a forced switch to the leader, where the run is that the switch must end.
async fn switch(
    State(st): State<AdminState>,
    Path(svc): Path<String>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    st.ctl.service(&svc)?;
    let raw = body.as_ref().ok().cloned();
    let b: SwitchBody = parse_body(body)?;
    let to = b.to.as_deref().map(color).transpose()?;
    let who = actor(&headers);
    let release = st.ctl.active_release_doc(&svc);
    if let Some(r) = &release {
        refuse_under_release(&svc, r, b.force)?;
    } else if let Some(r) = st.ctl.release_in_progress(&svc) {
        refuse_under_release(&svc, &r, b.force)?;
        if let Some(answer) = to_leader(&st, axum::http::Method::POST, &uri, &headers, raw.unwrap_or_default()).await {
            return answer;
        }
    }
    let reason = b.reason.unwrap_or_else(|| "manual switch".into());
    let out = st
        .ctl
        .switch(
            &svc,
            SwitchRequest {
                to,
                if_generation: b.if_generation,
                force: b.force,
                kind: cutover_store::SwitchKind::Switched,
                actor: who.clone(),
                reason: reason.clone(),
                release_id: None,
            },
        )
        .await?;
    let mut v =
        json!({"live": out.live, "previous": out.previous, "generation": out.generation, "version": out.version});
    with_sync(&st, &svc, &out, &mut v).await;
    if let Some(r) = release {
        let why = format!(
            "ended by a forced manual switch to {} (generation {}) by {who}: {reason}",
            out.live, out.generation
        );
        // The release may have ended by itself meanwhile; then there is nothing to end.
        if st.ctl.end_release(&svc, r.id, &who, why).is_ok() {
            wait_release_gone(&st, &svc, r.id).await;
            v["ended_release"] = json!(r.id);
        }
    }
    Ok(Json(v).into_response())
}

/// Fleet mode: a switch's answer waits for every live router's ack (at most
/// `store.ack_timeout`) and says where each stands (`"sync"`).
async fn with_sync(st: &AdminState, svc: &str, out: &crate::service::switch::SwitchOutcome, v: &mut Value) {
    if let Some(link) = crate::fleet::link_of(&st.ctl) {
        let report = link.await_acks(svc, out.generation, tokio::time::Instant::now()).await;
        v["sync"] = json!(report);
    }
}

/// `GET /v1/fleet`: this router's link and every router's ack.
async fn fleet(State(st): State<AdminState>) -> Result<Json<Value>, ApiError> {
    match crate::fleet::link_of(&st.ctl) {
        Some(link) => {
            // No router watches the acks all the time: read them for this answer.
            link.refresh_routers().await;
            Ok(Json(link.view()))
        }
        None => Err(ApiError::not_found(
            "this router is not in fleet mode (no `[store] url = \"etcd://...\"`)",
        )),
    }
}

fn refuse_under_release(svc: &str, r: &crate::release::ReleaseDoc, force: bool) -> Result<(), ApiError> {
    let what = format!("release #{} of {} is {}", r.id, r.version, r.phase);
    if !r.phase.is_pre_switch() {
        return Err(ApiError::conflict(
            "release_in_progress",
            format!("{what}: it has switched traffic already; wait for it, or run `cutover rollback {svc}`"),
        ));
    }
    if force {
        return Ok(());
    }
    Err(ApiError::conflict(
        "release_in_progress",
        format!(
            "{what}; `cutover approve {svc}` or `cutover abort {svc}` it first, or pass --force (API: \"force\": true) to switch anyway, which ends the release as aborted"
        ),
    ))
}

/// Waits (a few seconds at most) for an ended release to leave the active set, so the
/// answer to a forced switch means the release is over.
async fn wait_release_gone(st: &AdminState, svc: &str, id: i64) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while st.ctl.active_release_doc(svc).is_some_and(|d| d.id == id) && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RollbackBody {
    #[serde(default)]
    force: bool,
    reason: Option<String>,
    /// The previous color was scaled down: release its version again through the pipeline.
    #[serde(default)]
    redeploy: bool,
}

async fn rollback(
    State(st): State<AdminState>,
    Path(svc): Path<String>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    st.ctl.service(&svc)?;
    // Fleet mode: a release running on the leader answers to a rollback there (it ends as
    // rolled back); done here, the leader's run would go on as if nothing happened.
    if st.ctl.active_release_doc(&svc).is_none() && st.ctl.release_in_progress(&svc).is_some() {
        if let Some(answer) = post_to_leader(&st, &uri, &headers, &body).await {
            return answer;
        }
    }
    let b: RollbackBody = parse_body(body)?;
    if b.redeploy {
        let doc = st.ctl.redeploy_previous(&svc, &actor(&headers)).await?;
        return Ok((StatusCode::ACCEPTED, Json(json!({ "release": doc }))).into_response());
    }
    let out = st
        .ctl
        .rollback(
            &svc,
            RollbackRequest {
                actor: actor(&headers),
                reason: b.reason.unwrap_or_default(),
                force: b.force,
                release_id: None,
            },
        )
        .await?;
    let mut v =
        json!({"live": out.live, "previous": out.previous, "generation": out.generation, "version": out.version});
    with_sync(&st, &svc, &out, &mut v).await;
    Ok(Json(v).into_response())
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct StopBody {
    /// A string, parsed by [`color`]; `None`: the idle color.
    color: Option<String>,
    #[serde(default)]
    force: bool,
    reason: Option<String>,
}

/// `cutover stop`: drains and stops a managed color's model servers. In fleet mode the
/// leader does it (its runs own the processes), as with releases.
async fn stop(
    State(st): State<AdminState>,
    Path(svc): Path<String>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    st.ctl.service(&svc)?;
    if let Some(r) = post_to_leader(&st, &uri, &headers, &body).await {
        return r;
    }
    let b: StopBody = parse_body(body)?;
    let req = StopRequest {
        color: b.color.as_deref().map(color).transpose()?,
        force: b.force,
        actor: actor(&headers),
        reason: b.reason,
    };
    let out = st.ctl.stop(&svc, req).await?;
    Ok(Json(serde_json::to_value(out).unwrap_or_default()).into_response())
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ReleaseBody {
    version: String,
}

/// Fleet mode: release runs happen on the elected leader; another router forwards the
/// request there (`fleet_leader::forward`), or answers 409 `not_leader`.
async fn to_leader(
    st: &AdminState,
    method: axum::http::Method,
    uri: &axum::http::Uri,
    headers: &HeaderMap,
    body: Bytes,
) -> Option<Result<Response, ApiError>> {
    let link = crate::fleet::link_of(&st.ctl).filter(|l| !l.is_leader())?;
    let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or(uri.path());
    Some(
        crate::fleet::leader::forward(link, method, path, headers, body)
            .await
            .map_err(|e| ApiError::conflict("not_leader", e.0)),
    )
}

/// `to_leader` for a POST whose body is forwarded as it came (a body that could not be read
/// is answered here, by `parse_body`).
async fn post_to_leader(
    st: &AdminState,
    uri: &axum::http::Uri,
    headers: &HeaderMap,
    body: &Result<Bytes, BytesRejection>,
) -> Option<Result<Response, ApiError>> {
    let raw = body.as_ref().ok()?;
    to_leader(st, axum::http::Method::POST, uri, headers, raw.clone()).await
}

async fn start_release(
    State(st): State<AdminState>,
    Path(svc): Path<String>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    st.ctl.service(&svc)?;
    if let Some(r) = post_to_leader(&st, &uri, &headers, &body).await {
        return r;
    }
    let b: ReleaseBody = parse_body(body)?;
    if b.version.is_empty() {
        return Err(ApiError::bad_request(
            "invalid_body",
            "request body: missing field `version`",
        ));
    }
    let doc = st.ctl.start_release(&svc, &b.version, &actor(&headers)).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(serde_json::to_value(doc).unwrap_or_default()),
    )
        .into_response())
}

async fn list_releases(State(st): State<AdminState>, Path(svc): Path<String>) -> Result<Json<Value>, ApiError> {
    let r: Vec<Value> = st
        .ctl
        .releases(&svc, 50)
        .await?
        .iter()
        .map(|d| release_json(&st, d))
        .collect();
    Ok(Json(json!({"service": svc, "releases": r})))
}

/// A release document as the API serves it, with `phase_deadline_s`: how long its current
/// phase may take (null when it has no deadline or has ended), for followers to say "1m30s
/// of 10m".
fn release_json(st: &AdminState, d: &crate::release::ReleaseDoc) -> Value {
    let mut v = serde_json::to_value(d).unwrap_or_default();
    let deadline = st
        .ctl
        .service(&d.service)
        .ok()
        .filter(|_| d.outcome.is_none())
        .and_then(|svc| phase_deadline(&svc.cfg().release, d.phase));
    v["phase_deadline_s"] = json!(deadline.map(|t| t.as_secs_f64()));
    v
}

/// The deadline the run puts on `phase` (see `release::run`), `None` for none.
fn phase_deadline(rel: &cutover_config::ReleaseConfig, phase: cutover_release::Phase) -> Option<std::time::Duration> {
    use cutover_release::Phase as P;
    match phase {
        P::Provisioning | P::WarmingUp | P::SmokeTesting => Some(rel.phase_timeout.get()),
        P::WaitingHealthy => Some(rel.health_timeout.get()),
        P::AwaitingApproval => rel.auto_promote_after.map(|d| d.get()),
        P::PreSwitchHooks => Some(rel.hooks.timeout.get() * rel.hooks.pre_switch.len().max(1) as u32),
        P::Verifying => Some(match &rel.verify {
            Some(v) => v.bake.get(),
            // The defaults of an empty `[verify]` table, as the run uses them.
            None => toml::from_str::<cutover_config::VerifyConfig>("")
                .map(|v| v.bake.get())
                .unwrap_or_default(),
        }),
        _ => None,
    }
}

fn release_id(id: &str) -> Result<i64, ApiError> {
    if !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit()) {
        // A number too large to be an id names no release: 404, like any other unknown id.
        return id.parse().map_err(|_| ApiError::not_found(format!("no release #{id}")));
    }
    Err(ApiError::bad_request(
        "invalid_id",
        format!("release id must be a number, got {id:?}"),
    ))
}

async fn get_release(
    State(st): State<AdminState>,
    Path((svc, id)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let doc = st.ctl.release_doc(&svc, release_id(&id)?).await?;
    Ok(Json(release_json(&st, &doc)))
}

async fn approve(
    State(st): State<AdminState>,
    Path((svc, id)): Path<(String, String)>,
    uri: axum::http::Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let id = release_id(&id)?;
    st.ctl.service(&svc)?;
    if let Some(r) = to_leader(&st, axum::http::Method::POST, &uri, &headers, Bytes::new()).await {
        return r;
    }
    st.ctl.approve(&svc, id, &actor(&headers))?;
    Ok(Json(json!({"id": id, "approved": true})).into_response())
}

async fn abort(
    State(st): State<AdminState>,
    Path((svc, id)): Path<(String, String)>,
    uri: axum::http::Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let id = release_id(&id)?;
    st.ctl.service(&svc)?;
    if let Some(r) = to_leader(&st, axum::http::Method::POST, &uri, &headers, Bytes::new()).await {
        return r;
    }
    st.ctl.abort(&svc, id, &actor(&headers)).await?;
    Ok(Json(json!({"id": id, "aborting": true})).into_response())
}

/// The current log of each replica of a managed service's colors: a tail, or from an offset.
async fn service_logs(
    State(st): State<AdminState>,
    Path(svc): Path<String>,
    q: Result<Query<logs::LogsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(q) = q.map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))?;
    let service = st.ctl.service(&svc)?;
    let targets = logs::targets(&service.cfg().environments, &q, &svc)?;
    let data_dir = st.ctl.config.store.data_dir.clone();
    let name = svc.clone();
    let chunks = tokio::task::spawn_blocking(move || {
        targets
            .into_iter()
            .map(|(c, r)| logs::read(&data_dir, &name, c, r, &q))
            .collect::<std::io::Result<Vec<_>>>()
    })
    .await
    .map_err(|e| ApiError::internal(format!("reading the logs: {e}")))?
    .map_err(|e| ApiError::internal(format!("reading the logs: {e}")))?;
    Ok(Json(json!({"service": svc, "logs": chunks})))
}

#[derive(Deserialize)]
struct HistoryQuery {
    limit: Option<u32>,
}

async fn history(
    State(st): State<AdminState>,
    Path(svc): Path<String>,
    q: Result<Query<HistoryQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let q = q.map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))?;
    let limit = match q.limit {
        None => 100,
        Some(n @ 1..=10_000) => n,
        Some(n) => {
            return Err(ApiError::bad_request(
                "invalid_query",
                format!("limit must be 1 to 10000, got {n}"),
            ))
        }
    };
    let h = st.ctl.history(&svc, limit).await?;
    Ok(Json(json!({ "service": svc, "history": h })))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    /// Every route the router declares, as (METHOD, path), read from this file's source.
    fn declared_routes() -> BTreeSet<(String, String)> {
        let src = include_str!("mod.rs");
        let mut out = BTreeSet::new();
        for line in src.lines().map(str::trim).filter(|l| l.starts_with(".route(\"")) {
            let path = line[8..].split('"').next().unwrap().to_string();
            let rest = &line[8 + path.len()..];
            for m in ["get", "post", "put", "delete", "patch"] {
                if rest.contains(&format!(" {m}("))
                    || rest.contains(&format!(".{m}("))
                    || rest.contains(&format!(", {m}("))
                {
                    out.insert((m.to_uppercase(), path.clone()));
                }
            }
        }
        out
    }

    #[test]
    fn openapi_documents_exactly_the_routes_the_router_serves() {
        let doc: serde_json::Value = serde_json::from_str(include_str!("openapi.json")).unwrap();
        let mut documented = BTreeSet::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for m in ["get", "post", "put", "delete", "patch"] {
                if item.get(m).is_some() {
                    documented.insert((m.to_uppercase(), path.clone()));
                }
            }
        }
        let declared = declared_routes();
        assert!(declared.len() >= 14, "the source scan found the routes: {declared:?}");
        assert_eq!(declared, documented, "router and /openapi.json disagree");
    }

    #[test]
    fn the_actor_is_the_token_name_then_the_clients_label() {
        use crate::api::token::{Identity, Role};
        let ci = Identity {
            name: "ci".into(),
            role: Role::Operator,
        };
        assert_eq!(super::actor_of(&ci, None), "token:ci");
        assert_eq!(super::actor_of(&ci, Some("  ")), "token:ci");
        assert_eq!(super::actor_of(&ci, Some("cli:bob")), "token:ci (cli:bob)");
        assert_eq!(super::actor_of(&ci, Some("a\tb\u{7f}")), "token:ci (ab)");
        let long = "x".repeat(500);
        assert_eq!(super::actor_of(&ci, Some(&long)).len(), "token:ci ()".len() + 100);
    }

    /// /openapi.json says which role each /v1 operation needs, and that it may answer 403.
    #[test]
    fn openapi_states_the_role_of_every_operation_as_the_table_does() {
        let doc: serde_json::Value = serde_json::from_str(include_str!("openapi.json")).unwrap();
        let mut checked = 0;
        for (path, item) in doc["paths"].as_object().unwrap() {
            for m in ["get", "post", "put", "delete", "patch"] {
                let Some(op) = item.get(m) else { continue };
                if !path.starts_with("/v1/") {
                    assert!(op.get("x-cutover-role").is_none(), "{m} {path} is public");
                    continue;
                }
                let method = axum::http::Method::from_bytes(m.to_uppercase().as_bytes()).unwrap();
                let want = super::access::needed(&method, path);
                assert_eq!(op["x-cutover-role"], want.as_str(), "{m} {path}");
                assert!(op["responses"].get("403").is_some(), "{m} {path} documents 403");
                checked += 1;
            }
        }
        assert!(checked >= 12, "{checked}");
    }

    /// The role table and the router agree: every declared route has its line (a missing one
    /// would need `admin`, silently), `/v1` routes need a token and the rest are public, and
    /// the table names no route the router lacks.
    #[test]
    fn every_route_the_router_serves_has_its_role() {
        use super::access::{Access, TABLE};
        let declared = declared_routes();
        let table: BTreeSet<(String, String)> = TABLE.iter().map(|(m, r, _)| (m.to_string(), r.to_string())).collect();
        assert_eq!(table.len(), TABLE.len(), "a route is in the table twice");
        let missing: Vec<_> = declared.difference(&table).collect();
        assert!(
            missing.is_empty(),
            "routes without a role in access::TABLE: {missing:?}"
        );
        let extra: Vec<_> = table.difference(&declared).collect();
        assert!(
            extra.is_empty(),
            "access::TABLE names routes the router lacks: {extra:?}"
        );
        for (m, r, a) in TABLE {
            assert_eq!(
                r.starts_with("/v1/"),
                *a != Access::Public,
                "{m} {r}: the /v1 routes are the authenticated ones"
            );
        }
    }
}
