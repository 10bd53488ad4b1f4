//! `POST /v1/services/{svc}/shadow`: change a running shadow comparison's sample rate at once
//! (0 stops mirroring; the phase goes on with the pairs it has). A reload cannot do it: a
//! release in progress refuses reloads.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use super::{parse_body, post_to_leader, AdminState, ApiError};

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct ShadowBody {
    sample: Option<f64>,
}

pub(super) async fn set_sample(
    State(st): State<AdminState>,
    Path(svc): Path<String>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let s = st.ctl.service(&svc)?;
    // Only the leader's tap mirrors in a fleet: the change belongs there.
    if let Some(r) = post_to_leader(&st, &uri, &headers, &body).await {
        return r;
    }
    let b: ShadowBody = parse_body(body)?;
    let Some(sample) = b.sample.filter(|v| (0.0..=1.0).contains(v)) else {
        return Err(ApiError::bad_request(
            "invalid_sample",
            "sample must be a number between 0 and 1",
        ));
    };
    s.set_shadow_sample(sample);
    tracing::info!(service = %svc, sample, "shadow: sample rate set through the API");
    Ok(Json(json!({"service": svc, "sample": sample})).into_response())
}
