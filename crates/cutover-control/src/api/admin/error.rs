//! Admin API errors: JSON `{"error":{"code","message"}}` with the right status code. The one
//! place where the control core's errors become HTTP statuses.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use cutover_store::StoreError;
use serde_json::json;

use crate::base::error::{ControlError, ReleaseError, StopError, StoreFailure, SwitchError};

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: u16,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: u16, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }
    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(404, "not_found", message)
    }
    pub fn conflict(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(409, code, message)
    }
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(400, code, message)
    }
    /// A known token whose role does not allow the call.
    pub fn forbidden(message: impl Into<String>) -> ApiError {
        ApiError::new(403, "forbidden", message)
    }
    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(500, "internal", message)
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.message, self.code)
    }
}

impl std::error::Error for ApiError {}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (
            status,
            Json(json!({"error": {"code": self.code, "message": self.message}})),
        )
            .into_response()
    }
}

impl From<StoreFailure> for ApiError {
    fn from(e: StoreFailure) -> ApiError {
        match e {
            StoreFailure::Store(e @ StoreError::Conflict { .. }) => {
                ApiError::conflict("stale_generation", e.to_string())
            }
            StoreFailure::Store(e @ StoreError::NotFound(_)) => ApiError::not_found(e.to_string()),
            StoreFailure::Store(other) => ApiError::new(
                503,
                "store_unavailable",
                format!("the change was not made because the store could not record it: {other}"),
            ),
            other @ (StoreFailure::Task(_) | StoreFailure::Document(_)) => ApiError::internal(other.to_string()),
        }
    }
}

impl From<SwitchError> for ApiError {
    fn from(e: SwitchError) -> ApiError {
        let code = match &e {
            SwitchError::StaleGeneration { .. } => "stale_generation",
            SwitchError::NothingLive { .. } | SwitchError::NothingToRollBack { .. } => "nothing_live",
            SwitchError::AlreadyLive { .. } => "already_live",
            SwitchError::TargetUnhealthy { .. } => "target_unhealthy",
            SwitchError::ScaledDown { .. } => "scaled_down",
            SwitchError::NoPreviousVersion { .. } => "no_previous_version",
            SwitchError::WakeFailed { .. } => "wake_failed",
            // Mapped by their own kind below.
            SwitchError::Store(_) | SwitchError::Fleet { .. } => "",
        };
        match e {
            SwitchError::Store(s) => s.into(),
            e @ SwitchError::Fleet { .. } => ApiError::new(503, "fleet_unavailable", e.to_string()),
            e => ApiError::conflict(code, e.to_string()),
        }
    }
}

impl From<ReleaseError> for ApiError {
    fn from(e: ReleaseError) -> ApiError {
        let code = match &e {
            ReleaseError::InvalidVersion => return ApiError::bad_request("invalid_version", e.to_string()),
            ReleaseError::NotFound { .. } => return ApiError::not_found(e.to_string()),
            ReleaseError::InProgress { .. } => "release_in_progress",
            ReleaseError::NotRunning { .. } => "not_running",
            ReleaseError::NotAwaitingApproval { .. } => "not_awaiting_approval",
            ReleaseError::AlreadySwitched { .. } => "already_switched",
            ReleaseError::Aborting { .. } => "already_aborting",
            ReleaseError::Ended { .. } => "already_ended",
            ReleaseError::NoPreviousVersion => "no_previous_version",
            ReleaseError::NotLeader { .. } => "not_leader",
            // Mapped by its own kind below.
            ReleaseError::Store(_) | ReleaseError::Fleet { .. } => "",
        };
        match e {
            ReleaseError::Store(s) => s.into(),
            e @ ReleaseError::Fleet { .. } => ApiError::new(503, "fleet_unavailable", e.to_string()),
            e => ApiError::conflict(code, e.to_string()),
        }
    }
}

impl From<StopError> for ApiError {
    fn from(e: StopError) -> ApiError {
        let code = match &e {
            StopError::NotManaged { .. } => "not_managed",
            StopError::NothingLive { .. } => "nothing_live",
            StopError::Live { .. } => "color_live",
        };
        ApiError::conflict(code, e.to_string())
    }
}

impl From<ControlError> for ApiError {
    fn from(e: ControlError) -> ApiError {
        match e {
            ControlError::UnknownService { .. } => ApiError::not_found(e.to_string()),
            ControlError::Switch(e) => e.into(),
            ControlError::Release(e) => e.into(),
            ControlError::Stop(e) => e.into(),
            ControlError::Store(e) => e.into(),
        }
    }
}
