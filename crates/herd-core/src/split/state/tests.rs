use super::*;

fn ids(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("t{i:03}")).collect()
}

fn run(id: &str, outcome: RunOutcome) -> TestRun {
    TestRun {
        id: id.to_string(),
        outcome,
        secs: Some(0.1),
        message: (outcome == RunOutcome::Failed).then(|| "assert 1 == 2".to_string()),
    }
}

/// Takes batches for `worker` until none is handed out; reports each with
/// `outcome_of`. Returns the batches run.
fn drain(
    s: &mut SplitState,
    job: i64,
    attempt: i64,
    worker: &str,
    outcome_of: &mut dyn FnMut(&str) -> RunOutcome,
) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for _ in 0..10_000 {
        match s.next(job, attempt, worker, 0) {
            Next::Batch { id, tests } => {
                let runs = tests.iter().map(|t| run(t, outcome_of(t))).collect();
                assert!(s.report(
                    attempt,
                    &BatchReport {
                        batch: id,
                        exit_code: Some(0),
                        wall_secs: 1.0,
                        tests: Some(runs),
                    },
                    1,
                ));
                out.push(tests);
            }
            Next::Wait | Next::Done { .. } => break,
        }
    }
    out
}

#[test]
fn every_test_gets_one_outcome_and_the_verdict_is_per_shard() {
    let mut s = SplitState::new(ids(50), &HashMap::new(), 2, 0.0, false);
    let ran = drain(&mut s, 1, 10, "w1", &mut |_| RunOutcome::Passed);
    let n: usize = ran.iter().map(Vec::len).sum();
    assert_eq!(n, 50);
    assert!(s.is_complete());
    assert_eq!(s.summary().passed, 50);
    match s.next(2, 20, "w2", 0) {
        Next::Done { failed, summary } => {
            assert!(!failed);
            assert_eq!(summary, "50 tests: 50 passed");
        }
        other => panic!("expected done, got {other:?}"),
    }
}

#[test]
fn failed_once_then_passed_elsewhere_is_flaky_and_twice_is_failed() {
    // Planned for one shard: w1 takes everything in one batch; t001 and
    // t002 fail. A second shard (w2) joins for the retries.
    let mut s = SplitState::new(ids(10), &HashMap::new(), 1, 100.0, false);
    let Next::Batch { id, tests } = s.next(1, 10, "w1", 0) else {
        panic!("a batch")
    };
    assert_eq!(tests.len(), 10);
    let runs = tests
        .iter()
        .map(|t| {
            run(
                t,
                if t == "t001" || t == "t002" {
                    RunOutcome::Failed
                } else {
                    RunOutcome::Passed
                },
            )
        })
        .collect();
    // w2 holds nothing yet but runs (it will ask soon): register it.
    s.report(
        10,
        &BatchReport {
            batch: id,
            exit_code: Some(1),
            wall_secs: 3.0,
            tests: Some(runs),
        },
        5,
    );
    // The retry goes to another worker: w1 gets it only when none other runs.
    let Next::Batch { id, tests } = s.next(2, 20, "w2", 6) else {
        panic!("the retry goes to w2")
    };
    assert_eq!(tests, vec!["t001".to_string(), "t002".to_string()]);
    s.report(
        20,
        &BatchReport {
            batch: id,
            exit_code: Some(1),
            wall_secs: 1.0,
            tests: Some(vec![
                run("t001", RunOutcome::Passed),
                run("t002", RunOutcome::Failed),
            ]),
        },
        7,
    );
    let t = &s.tests;
    assert_eq!(t["t001"].outcome, Some(Outcome::Flaky));
    assert_eq!(t["t001"].runs, 2);
    assert_eq!(t["t002"].outcome, Some(Outcome::Failed));
    assert_eq!(t["t002"].worker.as_deref(), Some("w2"));
    // The failure belongs to shard 2; shard 1's verdict is clean.
    assert!(matches!(
        s.next(1, 10, "w1", 8),
        Next::Done { failed: false, .. }
    ));
    match s.next(2, 20, "w2", 8) {
        Next::Done { failed, summary } => {
            assert!(failed);
            assert!(summary.contains("1 flaky (t001)"), "{summary}");
            assert!(summary.contains("1 failed (t002)"), "{summary}");
        }
        other => panic!("{other:?}"),
    }
    assert!(s.failed());
}

#[test]
fn flaky_fail_setting_makes_flaky_fail() {
    let mut s = SplitState::new(vec!["a".into()], &HashMap::new(), 1, 0.0, true);
    let mut first = true;
    drain(&mut s, 1, 10, "w1", &mut |_| {
        if std::mem::take(&mut first) {
            RunOutcome::Failed
        } else {
            RunOutcome::Passed
        }
    });
    assert_eq!(s.tests["a"].outcome, Some(Outcome::Flaky));
    assert!(s.failed());
}

#[test]
fn a_retry_waits_for_another_worker_while_one_runs() {
    let mut s = SplitState::new(vec!["a".into(), "b".into()], &HashMap::new(), 2, 0.0, false);
    let Next::Batch { id: ida, .. } = s.next(1, 10, "w1", 0) else {
        panic!()
    };
    let Next::Batch { id: idb, .. } = s.next(2, 20, "w2", 0) else {
        panic!()
    };
    s.report(
        10,
        &BatchReport {
            batch: ida,
            exit_code: Some(1),
            wall_secs: 1.0,
            tests: None,
        },
        1,
    );
    assert_eq!(
        s.next(1, 10, "w1", 2),
        Next::Wait,
        "w2 still runs: it takes the retry"
    );
    s.report(
        20,
        &BatchReport {
            batch: idb,
            exit_code: Some(0),
            wall_secs: 1.0,
            tests: None,
        },
        3,
    );
    assert!(matches!(s.next(2, 20, "w2", 4), Next::Batch { .. }));
}

#[test]
fn asking_again_returns_the_held_batch_and_a_resent_report_changes_nothing() {
    let mut s = SplitState::new(ids(6), &HashMap::new(), 1, 100.0, false);
    let first = s.next(1, 10, "w1", 0);
    assert_eq!(s.next(1, 10, "w1", 0), first);
    let Next::Batch { id, tests } = first else {
        panic!()
    };
    let report = BatchReport {
        batch: id,
        exit_code: Some(0),
        wall_secs: 1.0,
        tests: None,
    };
    assert!(s.report(10, &report, 1));
    assert!(!s.report(10, &report, 2), "a resend");
    assert!(
        !s.report(99, &report, 2),
        "another attempt cannot report it"
    );
    assert_eq!(s.summary().passed, tests.len());
}

#[test]
fn tests_missing_from_the_report_go_back_once_then_are_not_run() {
    let mut s = SplitState::new(
        vec!["a".into(), "b".into()],
        &HashMap::new(),
        1,
        100.0,
        false,
    );
    for round in 0..2 {
        let Next::Batch { id, tests } = s.next(1, 10, "w1", 0) else {
            panic!("round {round}")
        };
        let runs = tests
            .iter()
            .filter(|t| *t == "a")
            .map(|t| run(t, RunOutcome::Passed))
            .collect();
        s.report(
            10,
            &BatchReport {
                batch: id,
                exit_code: Some(139),
                wall_secs: 1.0,
                tests: Some(runs),
            },
            1,
        );
    }
    assert_eq!(s.tests["a"].outcome, Some(Outcome::Passed));
    assert_eq!(s.tests["b"].outcome, Some(Outcome::NotRun));
    assert!(s.tests["b"]
        .message
        .as_deref()
        .unwrap_or("")
        .contains("code 139"));
    assert!(s.is_complete());
}

#[test]
fn a_lost_batch_runs_elsewhere_and_a_killer_test_ends_lost() {
    let mut s = SplitState::new(vec!["killer".into()], &HashMap::new(), 2, 0.0, false);
    let Next::Batch { .. } = s.next(1, 10, "w1", 0) else {
        panic!()
    };
    assert!(s.release(10, "w1 did not come back", 5));
    assert!(!s.is_complete());
    let Next::Batch { .. } = s.next(2, 20, "w2", 6) else {
        panic!("the lost batch goes to w2")
    };
    s.release(20, "w2 did not come back", 7);
    assert_eq!(s.tests["killer"].outcome, Some(Outcome::Lost));
    assert!(s.is_complete());
    // The loss belongs to shard 2's job; its next attempt hears it failed.
    assert!(matches!(
        s.next(2, 21, "w3", 8),
        Next::Done { failed: true, .. }
    ));
}

#[test]
fn list_mismatch_names_both_sides() {
    let s = SplitState::new(vec!["a".into(), "b".into()], &HashMap::new(), 2, 0.0, false);
    assert!(s.check_list(&["b".into(), "a".into(), "a".into()]).is_ok());
    let err = s
        .check_list(&["a".into(), "c".into()])
        .expect_err("a mismatch");
    assert!(
        err.contains("only in the first shard's list (1):\n  b"),
        "{err}"
    );
    assert!(
        err.contains("only in this worker's list (1):\n  c"),
        "{err}"
    );
}

#[test]
fn abandoned_rest_is_not_run() {
    let mut s = SplitState::new(ids(3), &HashMap::new(), 1, 0.0, false);
    s.abandon_rest("no shard left to run it");
    assert_eq!(s.summary().not_run, 3);
    assert!(s.is_complete());
}

#[test]
fn state_survives_a_round_trip_through_json() {
    let mut s = SplitState::new(ids(20), &HashMap::new(), 2, 0.0, false);
    let _ = s.next(1, 10, "w1", 0);
    let text = serde_json::to_string(&s).expect("serialize");
    let mut back: SplitState = serde_json::from_str(&text).expect("deserialize");
    assert_eq!(back.next(1, 10, "w1", 0), s.next(1, 10, "w1", 0));
}

/// A state as the store reads it back: no tally, no log.
fn reread(s: &SplitState) -> SplitState {
    serde_json::from_value(serde_json::to_value(s).unwrap()).unwrap()
}

#[derive(Debug, Clone)]
enum Op {
    Next {
        worker: usize,
        attempt: usize,
    },
    Report {
        attempt: usize,
        fail_every: usize,
        leave_out_every: usize,
    },
    Release {
        attempt: usize,
    },
    Abandon,
}

fn op() -> impl proptest::strategy::Strategy<Value = Op> {
    use proptest::prelude::*;
    prop_oneof![
        6 => (0..3usize, 0..4usize).prop_map(|(worker, attempt)| Op::Next { worker, attempt }),
        6 => (0..4usize, 0..6usize, 0..8usize).prop_map(|(attempt, fail_every, leave_out_every)| Op::Report { attempt, fail_every, leave_out_every }),
        1 => (0..4usize).prop_map(|attempt| Op::Release { attempt }),
        1 => Just(Op::Abandon),
    ]
}

/// Runs `ops` on a fresh split of `n` tests; returns the state right
/// after it was made (the snapshot), the live state and its events.
fn play(n: usize, ops: &[Op]) -> (SplitState, SplitState, Vec<SplitEvent>) {
    let timings: HashMap<String, f64> = ids(n)
        .into_iter()
        .enumerate()
        .filter(|(i, _)| i % 3 != 0)
        .map(|(i, t)| (t, 0.1 + (i % 7) as f64 * 0.3))
        .collect();
    let mut s = SplitState::new(ids(n), &timings, 3, 0.2, false);
    let snapshot = reread(&s);
    let mut events = s.take_events();
    let mut held: HashMap<i64, (u64, Vec<String>)> = HashMap::new();
    for (step, op) in ops.iter().enumerate() {
        let now = step as i64 * 10;
        match op {
            Op::Next { worker, attempt } => {
                let attempt = *attempt as i64 + 1;
                if let Next::Batch { id, tests } =
                    s.next(100 + attempt, attempt, &format!("w{worker}"), now)
                {
                    held.insert(attempt, (id, tests));
                }
            }
            Op::Report {
                attempt,
                fail_every,
                leave_out_every,
            } => {
                let attempt = *attempt as i64 + 1;
                let Some((id, tests)) = held.remove(&attempt) else {
                    continue;
                };
                let runs = tests
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| *leave_out_every == 0 || i % leave_out_every != 1)
                    .map(|(i, t)| {
                        let failed = *fail_every > 0 && i % fail_every == 0;
                        run(
                            t,
                            if failed {
                                RunOutcome::Failed
                            } else {
                                RunOutcome::Passed
                            },
                        )
                    })
                    .collect();
                s.report(
                    attempt,
                    &BatchReport {
                        batch: id,
                        exit_code: Some(1),
                        wall_secs: 2.0,
                        tests: Some(runs),
                    },
                    now,
                );
            }
            Op::Release { attempt } => {
                let attempt = *attempt as i64 + 1;
                held.remove(&attempt);
                s.release(attempt, "worker lost", now);
            }
            Op::Abandon => s.abandon_rest("the build ended"),
        }
        events.extend(s.take_events());
        // The tally kept along the way is what a recount finds.
        let recount = reread(&s);
        assert_eq!(s.summary(), recount.summary());
        assert_eq!(s.summary_line(), recount.summary_line());
        assert_eq!(s.failed(), recount.failed());
        for job in 101..=104 {
            assert_eq!(s.owes_failure(job), recount.owes_failure(job));
        }
    }
    (snapshot, s, events)
}

proptest::proptest! {
    /// What the store does: the snapshot plus the events replayed is the
    /// live state, whatever happened in between.
    #[test]
    fn replaying_the_events_on_the_snapshot_gives_the_live_state(
        n in 1..60usize,
        ops in proptest::collection::vec(op(), 0..60),
    ) {
        let (mut replayed, live, events) = play(n, &ops);
        for e in &events {
            replayed.replay(e);
        }
        proptest::prop_assert_eq!(serde_json::to_value(&replayed).unwrap(), serde_json::to_value(&live).unwrap());
        proptest::prop_assert_eq!(replayed.summary_line(), live.summary_line());
        proptest::prop_assert!(replayed.take_events().is_empty(), "a replay logs nothing");
        // Every test is handed out at most once at a time and none is lost
        // track of: pending tests are queued or in a running batch.
        let running: usize = live.batches.iter().filter(|b| b.state == BatchState::Running).map(|b| b.batch.tests.len()).sum();
        let queued = live.queue.remaining_tests();
        proptest::prop_assert!(live.summary().pending <= running + queued);
    }
}

#[test]
fn a_replay_hands_out_what_the_log_says_when_the_planner_would_choose_otherwise() {
    let mut s = SplitState::new(ids(20), &HashMap::new(), 2, 0.0, false);
    // Another release's planner handed t005 and t017 out as batch 1.
    let chosen = vec!["t005".to_string(), "t017".to_string()];
    s.replay(&SplitEvent::Handed {
        job: 1,
        attempt: 10,
        worker: "w1".into(),
        at_ms: 5,
        batch: 1,
        tests: chosen.clone(),
    });
    let held = s.batches.last().unwrap();
    assert_eq!((held.batch.id, &held.batch.tests), (1, &chosen));
    // Asking again returns that batch; the rest runs elsewhere, each test once.
    assert_eq!(
        s.next(1, 10, "w1", 6),
        Next::Batch {
            id: 1,
            tests: chosen.clone()
        }
    );
    let rest = drain(&mut s, 2, 20, "w2", &mut |_| RunOutcome::Passed);
    let mut seen: Vec<String> = rest.into_iter().flatten().chain(chosen).collect();
    seen.sort();
    assert_eq!(seen, ids(20));
    assert!(
        s.batches.iter().skip(1).all(|b| b.batch.id > 1),
        "batch ids go on after the logged one"
    );
}

#[test]
fn the_list_digest_ignores_order_and_repeats_and_sees_any_difference() {
    let a = list_digest(&["b", "a", "c"]);
    assert_eq!(a, list_digest(&["a", "b", "c", "a"]));
    assert_ne!(a, list_digest(&["a", "b"]));
    assert_ne!(a, list_digest(&["a", "b", "c", "d"]));
    // Ids are separated: "ab" + "c" is not "a" + "bc".
    assert_ne!(list_digest(&["ab", "c"]), list_digest(&["a", "bc"]));
    let s = SplitState::new(
        vec!["c".into(), "a".into(), "b".into()],
        &HashMap::new(),
        1,
        0.0,
        false,
    );
    assert!(s.list_matches(&a));
    assert!(!reread(&s).list_matches(&list_digest(&["a"])));
}
