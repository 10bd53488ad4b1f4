//! Why a request was sent again after a reused connection died under it, or why not: the
//! vocabulary of the exchange's resend rule, counted by the per-color statistics (a leaf, so
//! the statistics need not know the exchange).

/// Why a request went again after a reused connection died under it: the `reason` label of
/// `cutover_upstream_resends_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ResendReason {
    /// GET, HEAD, OPTIONS, TRACE, PUT, DELETE.
    IdempotentMethod,
    /// The path is in the service's `retry_paths` and the body asks to store nothing.
    RetryPath,
    /// The request carries an `Idempotency-Key`.
    IdempotencyKey,
}

impl ResendReason {
    pub const ALL: [ResendReason; 3] = [
        ResendReason::IdempotentMethod,
        ResendReason::RetryPath,
        ResendReason::IdempotencyKey,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ResendReason::IdempotentMethod => "idempotent_method",
            ResendReason::RetryPath => "retry_path",
            ResendReason::IdempotencyKey => "idempotency_key",
        }
    }
}

/// Why such a request was answered 502 instead of sent again: the `reason` label of
/// `cutover_upstream_not_resent_total`, and the 502's message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Refusal {
    /// Part of the body was streamed upstream and is gone.
    BodyNotAtHand,
    /// `retry_non_idempotent = false`.
    Disabled,
    /// The path is not in `retry_paths` and there is no `Idempotency-Key`.
    NotRetryPath,
    /// The path is in `retry_paths` but the body sets `"store": true`.
    AsksToStore,
}

impl Refusal {
    pub const ALL: [Refusal; 4] = [
        Refusal::BodyNotAtHand,
        Refusal::Disabled,
        Refusal::NotRetryPath,
        Refusal::AsksToStore,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::BodyNotAtHand => "body_streamed",
            Refusal::Disabled => "retry_non_idempotent_off",
            Refusal::NotRetryPath => "not_a_retry_path",
            Refusal::AsksToStore => "asks_to_store",
        }
    }

    pub(crate) fn explain(self) -> &'static str {
        match self {
            Refusal::BodyNotAtHand => "its body was streamed and is no longer at hand",
            Refusal::Disabled => "the method is not idempotent and the service has retry_non_idempotent = false",
            Refusal::NotRetryPath => {
                "the method is not idempotent, the path is not in the service's retry_paths, and there is no Idempotency-Key header"
            }
            Refusal::AsksToStore => "its body asks the server to store something (\"store\": true)",
        }
    }
}
