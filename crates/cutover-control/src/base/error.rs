//! The control core's own errors: what went wrong, in the vocabulary of services, switches,
//! releases and the store. Mapping them to HTTP status codes is the admin layer's job
//! (`admin::error`), so the core can be driven by tests and later by other front-ends.

use cutover_proxy::Color;
use cutover_release::Phase;
use cutover_store::StoreError;

/// A store call that did not complete.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreFailure {
    /// The store answered with an error (a compare-and-swap conflict included).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The blocking task running the call panicked or was cancelled.
    #[error("store task failed: {0}")]
    Task(String),
    /// A stored document could not be encoded or decoded.
    #[error("release document: {0}")]
    Document(#[from] serde_json::Error),
}

/// Why a switch or a rollback was refused or not made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SwitchError {
    #[error("if_generation is {expected} but the generation is {actual}: someone else switched first; read the status again")]
    StaleGeneration { expected: u64, actual: u64 },
    #[error("nothing is live in service {service} yet: say which color to switch to")]
    NothingLive { service: String },
    #[error("nothing is live in service {service}: there is nothing to roll back")]
    NothingToRollBack { service: String },
    #[error("{color} is already live in service {service} (generation {generation})")]
    AlreadyLive {
        service: String,
        color: Color,
        generation: u64,
    },
    /// Every endpoint of the target failed its health checks; `detail` lists them.
    #[error(
        "{color} has no healthy endpoint ({detail}); fix it, or pass --force (API: \"force\": true) to switch anyway"
    )]
    TargetUnhealthy { color: Color, detail: String },
    #[error("{color} ({version}) was scaled down, so a rollback is no longer one switch; run `cutover rollback {service} --redeploy` to release {version} again through the pipeline")]
    ScaledDown {
        service: String,
        color: Color,
        version: String,
    },
    #[error("{color} has no version recorded in service {service}: there is nothing to roll back to")]
    NoPreviousVersion { service: String, color: Color },
    /// A sleeping target did not wake (`standby = "sleep"`); nothing was switched.
    #[error("{color} is asleep (standby = \"sleep\") and did not wake: {why}; live traffic stays where it was")]
    WakeFailed { color: Color, why: String },
    /// The store did not commit the switch, so nothing was published.
    #[error(transparent)]
    Store(#[from] StoreFailure),
    /// Fleet mode: etcd did not commit the switch (unreachable, or not read yet).
    #[error("fleet: {detail}")]
    Fleet { detail: String },
}

/// Why a release could not be started, found, approved or aborted.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReleaseError {
    #[error("version must be 1-200 characters without spaces or control characters")]
    InvalidVersion,
    #[error("release #{id} of {version} is in progress ({phase}); approve, abort or wait for it first")]
    InProgress { id: i64, version: String, phase: Phase },
    #[error("release #{id} is not running")]
    NotRunning { id: i64 },
    #[error("release #{id} is {phase}, not awaiting approval")]
    NotAwaitingApproval { id: i64, phase: Phase },
    #[error("release #{id} is {phase}: traffic has already switched; use rollback instead")]
    AlreadySwitched { id: i64, phase: Phase },
    /// An abort was asked for and the run is ending; `why` names who asked.
    #[error("release #{id} is already being aborted ({why})")]
    Aborting { id: i64, why: String },
    /// The run has recorded its end and is only finishing up (tearing the idle color down).
    #[error("release #{id} has already ended: {phase}")]
    Ended { id: i64, phase: Phase },
    #[error("there is no previous version to redeploy")]
    NoPreviousVersion,
    #[error("no release #{id} in service {service}")]
    NotFound { service: String, id: i64 },
    /// Fleet mode: releases are run by the elected leader, and this router is not it.
    #[error("this router is not the fleet's leader; {}", match leader { Some(l) => format!("the leader is {l}"), None => "no leader is elected right now".into() })]
    NotLeader { leader: Option<String> },
    /// Fleet mode: etcd did not take the release document.
    #[error("fleet: {detail}")]
    Fleet { detail: String },
    #[error(transparent)]
    Store(#[from] StoreFailure),
}

/// Why `cutover stop` stopped nothing.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StopError {
    #[error("{service} has static endpoints: cutover started no process there; stop them where they were deployed")]
    NotManaged { service: String },
    #[error("nothing is live in {service}: say which color to stop")]
    NothingLive { service: String },
    #[error("{color} is live in {service}: stopped, it leaves clients with errors until something is live again; switch first, or pass --force (API: \"force\": true) to stop it anyway")]
    Live { service: String, color: Color },
}

/// Anything a control operation can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ControlError {
    #[error("no service named {name:?}; known: {known}")]
    UnknownService { name: String, known: String },
    #[error(transparent)]
    Switch(#[from] SwitchError),
    #[error(transparent)]
    Release(#[from] ReleaseError),
    #[error(transparent)]
    Stop(#[from] StopError),
    #[error(transparent)]
    Store(#[from] StoreFailure),
}

/// What sort of failure ended a release step: the reason is for people, the kind for code
/// and logs that tell failures apart without reading the text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FailureKind {
    /// The step did not finish within its deadline.
    Deadline,
    /// The color's model servers could not be stopped, started or woken.
    Processes,
    /// Endpoints did not become healthy.
    Unhealthy,
    /// An endpoint gave no answer, or not the one expected (warm-up, smoke checks).
    Answers,
    /// A user's hook exited non-zero, timed out or could not start.
    Hook,
    /// The store did not record what the step did.
    Store,
    /// A model server of the new color exited during the step.
    Exited,
    /// A gate judged the new color and failed it (verify, shadow comparison).
    Gate,
    /// The switch, a traffic step or the phase change was refused.
    Refused,
}

impl FailureKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::Deadline => "deadline",
            FailureKind::Processes => "processes",
            FailureKind::Unhealthy => "unhealthy",
            FailureKind::Answers => "answers",
            FailureKind::Hook => "hook",
            FailureKind::Store => "store",
            FailureKind::Exited => "exited",
            FailureKind::Gate => "gate",
            FailureKind::Refused => "refused",
        }
    }
}

impl std::fmt::Display for FailureKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a release step failed: its kind, and the reason as the release document will say it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct StepFailure {
    pub kind: FailureKind,
    pub reason: String,
}

impl StepFailure {
    pub fn new(kind: FailureKind, reason: impl Into<String>) -> StepFailure {
        StepFailure {
            kind,
            reason: reason.into(),
        }
    }

    /// A `map_err` for a failure of one kind: `.map_err(StepFailure::of(FailureKind::Hook))`.
    pub fn of<E: Into<String>>(kind: FailureKind) -> impl Fn(E) -> StepFailure {
        move |reason| StepFailure::new(kind, reason)
    }
}

/// What a release step returns: a detail for the release document, or why it failed.
pub type StepResult<T = String> = Result<T, StepFailure>;

/// A release step that failed: the phase it failed in, what sort of failure it was and why,
/// as the release document will say it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct StepError {
    pub phase: Phase,
    pub kind: FailureKind,
    pub reason: String,
}

impl StepError {
    pub fn new(phase: Phase, kind: FailureKind, reason: impl Into<String>) -> StepError {
        StepError {
            phase,
            kind,
            reason: reason.into(),
        }
    }

    /// `failure`, in `phase`.
    pub fn during(phase: Phase, failure: StepFailure) -> StepError {
        StepError::new(phase, failure.kind, failure.reason)
    }
}
