//! Hooks: the user's argv lists run at a stage (`pre_switch`, `post_switch`, `on_rollback`),
//! in order; the first non-zero exit or timeout fails the stage.

use std::time::Duration;

use super::{deadline_text, excerpt, plural};
use crate::base::error::{FailureKind, StepFailure, StepResult};

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

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(words: &[&str]) -> Vec<String> {
        words.iter().map(|w| w.to_string()).collect()
    }

    /// Each way a hook can fail is a `Hook` failure whose reason names the stage and the hook;
    /// hooks after a failed one do not run.
    #[tokio::test]
    async fn a_failing_hook_is_a_hook_failure_that_says_which_and_why() {
        let dir = std::env::temp_dir().join(format!("cutover-hooks-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let marker = dir.join("ran");
        let after = argv(&["touch", marker.to_str().unwrap()]);
        let long = Duration::from_secs(30);

        let e = run_hooks(
            "pre_switch",
            &[argv(&["sh", "-c", "echo broken >&2; exit 3"]), after.clone()],
            &[],
            long,
        )
        .await
        .unwrap_err();
        assert_eq!(e.kind, FailureKind::Hook);
        assert!(e.reason.starts_with("pre_switch hook [\"sh\""), "{e}");
        assert!(e.reason.contains("broken"), "{e}");
        assert!(!marker.exists(), "the hook after the failed one ran");

        let e = run_hooks("provision", &[argv(&["/nonexistent/cutover-hook"])], &[], long)
            .await
            .unwrap_err();
        assert_eq!(e.kind, FailureKind::Hook);
        assert!(e.reason.contains("could not start"), "{e}");

        let ok = run_hooks("post_switch", &[after], &[], long).await.unwrap();
        assert_eq!(ok, "1 post_switch hook succeeded");
        assert!(marker.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
