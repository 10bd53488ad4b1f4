//! State-machine and gate tests: every path through the phases, worst-wins gate results,
//! and properties over arbitrary event sequences.

use super::*;

const EVENTS: [fn() -> Event; 5] = [
    || Event::Done,
    || Event::Failed("x".into()),
    || Event::Approve,
    || Event::Abort("y".into()),
    || Event::Interrupted,
];

fn plans() -> Vec<Plan> {
    let mut v = Vec::new();
    for manual in [false, true] {
        for has_previous in [false, true] {
            for shadow in [false, true] {
                v.push(Plan {
                    manual,
                    has_previous,
                    shadow,
                });
            }
        }
    }
    v
}

fn run(plan: Plan, events: &[Event]) -> (Release, Vec<Phase>) {
    let mut r = Release::new(plan);
    let mut seen = vec![r.phase];
    for e in events {
        if r.apply(e).is_ok() {
            seen.push(r.phase);
        }
    }
    (r, seen)
}

#[test]
fn happy_path_auto_with_previous_goes_through_every_phase() {
    let plan = Plan {
        manual: false,
        has_previous: true,
        shadow: false,
    };
    let (r, seen) = run(plan, &vec![Event::Done; 8]);
    assert_eq!(r.outcome, Some(Outcome::Completed));
    use Phase::*;
    assert_eq!(
        seen,
        vec![
            Provisioning,
            WaitingHealthy,
            WarmingUp,
            SmokeTesting,
            PreSwitchHooks,
            Switching,
            Verifying,
            Completed
        ]
    );
}

#[test]
fn shadowing_comes_after_the_smoke_checks_and_before_approval_when_something_is_live() {
    let plan = Plan {
        manual: true,
        has_previous: true,
        shadow: true,
    };
    let mut r = Release::new(plan);
    for _ in 0..4 {
        r.apply(&Event::Done).unwrap();
    }
    assert_eq!(r.phase, Phase::Shadowing);
    assert!(r.phase.is_pre_switch(), "a shadow failure is an abort, live untouched");
    assert_eq!(r.apply(&Event::Done), Ok(Phase::AwaitingApproval));
    let mut failed = Release::new(plan);
    while failed.phase != Phase::Shadowing {
        failed.apply(&Event::Done).unwrap();
    }
    assert_eq!(failed.apply(&Event::Failed("shadow gate".into())), Ok(Phase::Aborted));
    // A first release has nothing live to mirror: no shadow phase.
    let (_, seen) = run(
        Plan {
            has_previous: false,
            ..plan
        },
        &vec![Event::Done; 7],
    );
    assert!(!seen.contains(&Phase::Shadowing), "{seen:?}");
    let (_, seen) = run(Plan { manual: false, ..plan }, &vec![Event::Done; 9]);
    assert_eq!(seen[4..6], [Phase::Shadowing, Phase::PreSwitchHooks]);
}

#[test]
fn first_release_skips_approval_and_verification() {
    let (r, seen) = run(
        Plan {
            manual: true,
            has_previous: false,
            shadow: false,
        },
        &vec![Event::Done; 7],
    );
    assert_eq!(r.outcome, Some(Outcome::Completed));
    assert!(!seen.contains(&Phase::AwaitingApproval));
    assert!(!seen.contains(&Phase::Verifying));
}

#[test]
fn manual_release_waits_for_approval() {
    let mut r = Release::new(Plan {
        manual: true,
        has_previous: true,
        shadow: false,
    });
    for _ in 0..4 {
        r.apply(&Event::Done).unwrap();
    }
    assert_eq!(r.phase, Phase::AwaitingApproval);
    assert!(r.apply(&Event::Done).is_err(), "work finishing cannot approve");
    assert_eq!(r.apply(&Event::Approve), Ok(Phase::PreSwitchHooks));
}

#[test]
fn abort_works_before_the_switch_only() {
    let mut r = Release::new(Plan {
        manual: false,
        has_previous: true,
        shadow: false,
    });
    r.apply(&Event::Done).unwrap();
    assert_eq!(r.apply(&Event::Abort("stop".into())), Ok(Phase::Aborted));
    assert_eq!(r.outcome, Some(Outcome::Aborted));

    let mut r = Release::new(Plan {
        manual: false,
        has_previous: true,
        shadow: false,
    });
    while r.phase != Phase::Verifying {
        r.apply(&Event::Done).unwrap();
    }
    let e = r.apply(&Event::Abort("stop".into())).unwrap_err();
    assert!(e.reason.contains("roll back"), "{e}");
    assert_eq!(r.apply(&Event::Failed("gate".into())), Ok(Phase::RolledBack));
    assert_eq!(r.outcome, Some(Outcome::RolledBack));
}

#[test]
fn a_failed_switch_is_an_abort_not_a_rollback() {
    let mut r = Release::new(Plan {
        manual: false,
        has_previous: true,
        shadow: false,
    });
    while r.phase != Phase::Switching {
        r.apply(&Event::Done).unwrap();
    }
    assert_eq!(r.apply(&Event::Failed("store read-only".into())), Ok(Phase::Aborted));
}

/// Every sequence of up to 7 events, for every plan: the machine never reaches an invalid
/// state. Invariants:
/// - phases only move forward, and a terminal phase or an outcome ends all change;
/// - an outcome is set exactly when the release ended;
/// - `completed` is reached only through `switching` (and `verifying` when there is a
///   previous color); `rolled_back` only after the switch and only with a previous color;
/// - `awaiting_approval` only for manual releases with a previous color, and it is left only
///   by an approval or an abort.
#[test]
fn no_event_sequence_reaches_an_invalid_state() {
    let mut checked = 0u64;
    for plan in plans() {
        let n = EVENTS.len();
        for len in 0..=7u32 {
            for code in 0..n.pow(len) {
                let mut c = code;
                let events: Vec<Event> = (0..len)
                    .map(|_| {
                        let e = EVENTS[c % n]();
                        c /= n;
                        e
                    })
                    .collect();
                let mut r = Release::new(plan);
                let mut path = vec![r.phase];
                for e in &events {
                    let before = r.clone();
                    match r.apply(e) {
                        Ok(p) => {
                            assert!(before.outcome.is_none(), "changed after the end: {events:?}");
                            if before.phase == Phase::AwaitingApproval && p != Phase::AwaitingApproval {
                                assert!(
                                    matches!(e, Event::Approve | Event::Abort(_) | Event::Failed(_)),
                                    "left approval by {e:?}"
                                );
                            }
                            if !p.is_terminal() {
                                assert!(p >= before.phase, "went back: {before:?} -> {p:?}");
                            }
                            if *path.last().unwrap() != p {
                                path.push(p);
                            }
                        }
                        Err(_) => assert_eq!(r, before, "a refused event changed the state"),
                    }
                }
                assert_eq!(
                    r.outcome.is_some(),
                    r.phase.is_terminal() || r.outcome == Some(Outcome::Interrupted)
                );
                if r.phase == Phase::Completed {
                    assert!(path.contains(&Phase::Switching), "{path:?}");
                    assert_eq!(path.contains(&Phase::Verifying), plan.has_previous, "{path:?}");
                }
                if r.phase == Phase::RolledBack {
                    assert!(plan.has_previous && path.contains(&Phase::Verifying), "{path:?}");
                }
                if path.contains(&Phase::AwaitingApproval) {
                    assert!(plan.manual && plan.has_previous);
                }
                checked += 1;
            }
        }
    }
    assert!(checked > 300_000, "{checked}");
}

#[test]
fn stream_gates_judge_streams_and_only_when_set() {
    let stream_limits = Limits {
        max_error_rate: 0.01,
        min_requests: 20,
        max_p99: Some(Duration::from_secs(2)),
        max_ttft_p99: Some(Duration::from_secs(1)),
        max_token_gap_p99: Some(Duration::from_millis(200)),
        min_tokens_per_second: Some(20.0),
        ..Limits::default()
    };
    // A healthy streaming release: 150 tokens x 20 ms is 3 s a stream, and no plain request;
    // the whole-request latency gate has no reading and does not fail it.
    let healthy = Window {
        requests: 100,
        ttft_p99: Some(Duration::from_millis(300)),
        token_gap_p99: Some(Duration::from_millis(40)),
        tokens_per_second: Some(50.0),
        ..Window::default()
    };
    let v = judge(&healthy, &stream_limits);
    assert_eq!(v.result, GateResult::Passing, "{}", v.reason);
    let names: Vec<&str> = v.gates.iter().map(|g| g.name.as_str()).collect();
    assert!(
        names.contains(&"ttft_p99") && names.contains(&"tokens_per_second"),
        "{names:?}"
    );
    let slow_first = Window {
        ttft_p99: Some(Duration::from_millis(2500)),
        ..healthy
    };
    let v = judge(&slow_first, &stream_limits);
    assert_eq!(v.result, GateResult::Failing);
    assert!(v.reason.contains("time to first token p99 2.50s > 1s"), "{}", v.reason);
    let stalls = Window {
        token_gap_p99: Some(Duration::from_millis(900)),
        tokens_per_second: Some(5.0),
        ..healthy
    };
    let v = judge(&stalls, &stream_limits);
    assert!(
        v.reason.contains("inter-token gap p99") && v.reason.contains("5.0 tokens/s"),
        "{}",
        v.reason
    );
    // No stream in the window: the stream gates have no evidence.
    let plain_only = Window {
        requests: 100,
        p99: Some(Duration::from_millis(300)),
        ..Window::default()
    };
    assert_eq!(judge(&plain_only, &stream_limits).result, GateResult::Inconclusive);
    // Unset gates are not shown at all.
    let v = judge(&healthy, &limits());
    assert!(!v
        .gates
        .iter()
        .any(|g| g.name.starts_with("ttft") || g.name == "tokens_per_second"));
}

fn limits() -> Limits {
    Limits {
        max_error_rate: 0.01,
        max_p99: Some(Duration::from_secs(3)),
        min_requests: 20,
        ..Limits::default()
    }
}

#[test]
fn too_few_requests_is_inconclusive_not_failing() {
    let v = judge(
        &Window {
            requests: 5,
            errors: 5,
            p99: Some(Duration::from_secs(10)),
            all_unhealthy: false,
            ..Window::default()
        },
        &limits(),
    );
    assert_eq!(v.result, GateResult::Inconclusive);
    assert!(v.reason.contains("only 5 requests"), "{}", v.reason);
    assert!(v.gates.iter().all(|g| g.result != GateResult::Failing));
}

#[test]
fn error_rate_breach_fails_with_a_reason_that_quotes_figures() {
    let v = judge(
        &Window {
            requests: 40,
            errors: 5,
            p99: Some(Duration::from_millis(100)),
            all_unhealthy: false,
            ..Window::default()
        },
        &limits(),
    );
    assert_eq!(v.result, GateResult::Failing);
    assert_eq!(v.reason, "error rate 12.5% > 1.0% over 40 requests");
    let g = v.gates.iter().find(|g| g.name == "error_rate").unwrap();
    assert_eq!((g.value, g.result), (Some(0.125), GateResult::Failing));
}

#[test]
fn slow_p99_fails_and_healthy_window_passes() {
    let v = judge(
        &Window {
            requests: 100,
            errors: 0,
            p99: Some(Duration::from_secs(5)),
            all_unhealthy: false,
            ..Window::default()
        },
        &limits(),
    );
    assert_eq!(v.result, GateResult::Failing);
    assert!(v.reason.starts_with("p99 latency 5.00s > 3s"), "{}", v.reason);
    let v = judge(
        &Window {
            requests: 100,
            errors: 1,
            p99: Some(Duration::from_millis(250)),
            all_unhealthy: false,
            ..Window::default()
        },
        &limits(),
    );
    assert_eq!(v.result, GateResult::Passing);
}

#[test]
fn all_unhealthy_fails_even_without_traffic() {
    let v = judge(
        &Window {
            requests: 0,
            errors: 0,
            p99: None,
            all_unhealthy: true,
            ..Window::default()
        },
        &limits(),
    );
    assert_eq!(v.result, GateResult::Failing);
    assert!(v.reason.starts_with("every endpoint of the new color is unhealthy"));
}

/// Issue #25: the reading said 1 for a color with 2 healthy endpoints.
#[test]
fn healthy_endpoints_reads_the_real_count() {
    let v = judge(
        &Window {
            requests: 100,
            healthy_endpoints: 2,
            ..Window::default()
        },
        &limits(),
    );
    let g = v.gates.iter().find(|g| g.name == "healthy_endpoints").unwrap();
    assert_eq!((g.value, g.limit, g.result), (Some(2.0), 1.0, GateResult::Passing));
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    fn event() -> impl Strategy<Value = Event> {
        prop_oneof![
            4 => Just(Event::Done),
            1 => Just(Event::Failed("f".into())),
            1 => Just(Event::Approve),
            1 => Just(Event::Abort("a".into())),
            1 => Just(Event::Interrupted),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        /// Long random event sequences (beyond the exhaustive 7): phases never go back, an
        /// ended release never changes, a refused event changes nothing, and rolled_back is
        /// reached only after verifying with a previous color to return to.
        #[test]
        fn long_event_sequences_keep_the_invariants(manual: bool, has_previous: bool, events in proptest::collection::vec(event(), 0..40)) {
            let plan = Plan {
                manual,
                has_previous,
                shadow: false,
            };
            let mut r = Release::new(plan);
            let mut visited = vec![r.phase];
            for e in &events {
                let before = r.clone();
                match r.apply(e) {
                    Ok(p) => {
                        prop_assert!(before.outcome.is_none());
                        prop_assert!(p.is_terminal() || p >= before.phase);
                        visited.push(p);
                    }
                    Err(_) => prop_assert_eq!(&r, &before),
                }
            }
            if r.phase == Phase::RolledBack {
                prop_assert!(has_previous && visited.contains(&Phase::Verifying));
            }
            if r.phase == Phase::Completed {
                prop_assert!(visited.contains(&Phase::Switching));
            }
            prop_assert_eq!(r.outcome.is_some(), r.phase.is_terminal() || r.outcome == Some(Outcome::Interrupted));
        }
    }
}

#[test]
fn steps_come_between_the_hooks_and_the_switch_and_a_failing_step_rolls_back() {
    let plan = Plan {
        manual: false,
        has_previous: true,
        shadow: false,
    };
    let mut r = Release::new(plan);
    for _ in 0..4 {
        r.apply(&Event::Done).unwrap();
    }
    assert_eq!(r.phase, Phase::PreSwitchHooks);
    assert_eq!(r.apply(&Event::Step), Ok(Phase::Stepping));
    assert_eq!(r.apply(&Event::Step), Ok(Phase::Stepping), "one transition per step");
    assert!(!r.phase.is_pre_switch(), "a step touches live traffic");
    let mut failing = r.clone();
    assert_eq!(
        failing.apply(&Event::Failed("error rate".into())),
        Ok(Phase::RolledBack)
    );
    assert_eq!(failing.outcome, Some(Outcome::RolledBack));
    let mut aborted = r.clone();
    assert_eq!(aborted.apply(&Event::Abort("by ann".into())), Ok(Phase::Aborted));
    assert_eq!(r.apply(&Event::Done), Ok(Phase::Switching));
    assert!(r.apply(&Event::Step).is_err(), "no step after the full switch");
    assert_eq!(r.apply(&Event::Done), Ok(Phase::Verifying));
}
