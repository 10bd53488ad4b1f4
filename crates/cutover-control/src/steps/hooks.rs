//! Hooks: the user's argv lists run at a stage (`pre_switch`, `post_switch`, `on_rollback`),
//! in order; the first non-zero exit or timeout fails the stage.

use std::time::Duration;

use super::{deadline_text, excerpt, plural};
use crate::error::{FailureKind, StepFailure, StepResult};

/// Runs hooks in order; the first non-zero exit (or timeout) fails with its stderr excerpt.
pub async fn run_hooks(stage: &str, hooks: &[Vec<String>], env: &[(String, String)], timeout: Duration) -> StepResult {
    if hooks.is_empty() {
        return Ok(format!("no {stage} hooks"));
    }
    for argv in hooks {
        let mut cmd = tokio::process::Command::new(&argv[0]);
        cmd.args(&argv[1..])
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        let out = tokio::time::timeout(timeout, cmd.output())
            .await
            .map_err(|_| {
                hook_failed(format!(
                    "{stage} hook {argv:?} did not finish within {}",
                    deadline_text(timeout)
                ))
            })?
            .map_err(|e| hook_failed(format!("{stage} hook {argv:?} could not start: {e}")))?;
        if !out.status.success() {
            return Err(hook_failed(format!(
                "{stage} hook {argv:?} exited with {}: {}",
                out.status,
                excerpt(&out.stderr).trim()
            )));
        }
    }
    Ok(format!(
        "{} {stage} hook{} succeeded",
        hooks.len(),
        plural(hooks.len(), "s")
    ))
}

fn hook_failed(reason: String) -> StepFailure {
    StepFailure::new(FailureKind::Hook, reason)
}
