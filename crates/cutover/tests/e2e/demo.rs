//! `cutover demo`, the README's first command, runs to its happy end.

use std::process::Command;

use crate::support::CUTOVER;

#[test]
fn demo_ships_v2_with_zero_failures_and_the_shadow_comparison_stops_v3_before_the_switch() {
    let out = Command::new(CUTOVER).arg("demo").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("release #1 of v1 completed"), "{text}");
    assert!(text.contains("release #2 of v2 completed: bake of 8s passed"), "{text}");
    assert!(
        text.contains("release #3 of v3 aborted: shadow comparison failed"),
        "{text}"
    );
    assert!(text.contains("v2 shadow comparison: passing"), "{text}");
    assert!(text.contains("v3 shadow comparison: failing"), "{text}");
    assert!(text.contains("failed requests across the v1 → v2 release: 0"), "{text}");
    assert!(text.contains("chat  live: green"), "v2 is live at the end: {text}");
}

#[test]
fn demo_canary_catches_v3_at_its_10_percent_step_and_returns_all_to_v2() {
    let out = Command::new(CUTOVER).args(["demo", "--canary"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("release #2 of v2 completed"), "{text}");
    assert!(text.contains("release #3 of v3 rolled_back: error rate"), "{text}");
    assert!(text.contains("(at step 1/1 (10%))"), "{text}");
    assert!(text.contains("v3 canary step: 10% of the traffic, failed"), "{text}");
    assert!(text.contains("v2           100%"), "all traffic back on v2: {text}");
}
