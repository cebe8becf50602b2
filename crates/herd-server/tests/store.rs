//! The store test suite, run on SQLite and on PostgreSQL: each test on
//! both, each in its own fresh database (a file in a temporary directory;
//! a database created on the PostgreSQL of `HERD_TEST_POSTGRES`, default
//! postgres://postgres@127.0.0.1:5432, and dropped afterwards).
#![allow(clippy::unwrap_used)]

use herd_core::plan::JobSpec;
use herd_core::state::RunState;
use herd_proto::{StepAction, StepSpec, StepStatus};
use herd_server::store::{
    Applied, AttemptEvents, BuildKind, ChangeKind, LostOutcome, NewBuild, NewChange, NewJob,
    ProjectRow, PullFacts, Store, StoredEvent, TokenRow,
};
use sqlx::Connection;
use std::sync::Arc;

struct TestDb {
    store: Store,
    _dir: Option<tempfile::TempDir>,
    postgres: Option<(String, String)>,
}

fn postgres_base() -> String {
    std::env::var("HERD_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".to_string())
}

impl TestDb {
    async fn sqlite() -> TestDb {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_sqlite(&dir.path().join("herd.db"))
            .await
            .unwrap();
        TestDb {
            store,
            _dir: Some(dir),
            postgres: None,
        }
    }

    async fn postgres() -> TestDb {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let name = format!(
            "herd_store_{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let base = postgres_base();
        let mut admin = sqlx::PgConnection::connect(&format!("{base}/postgres"))
            .await
            .expect("PostgreSQL must run for the store tests (./scripts/test starts one)");
        for sql in [
            format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
            format!("CREATE DATABASE {name}"),
        ] {
            sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                .execute(&mut admin)
                .await
                .unwrap();
        }
        let store = Store::open_postgres(&format!("{base}/{name}"))
            .await
            .unwrap();
        TestDb {
            store,
            _dir: None,
            postgres: Some((base, name)),
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Some((base, name)) = self.postgres.take() {
            // Drop runs outside async: a thread with its own runtime.
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async {
                    if let Ok(mut c) =
                        sqlx::PgConnection::connect(&format!("{base}/postgres")).await
                    {
                        let sql = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
                        let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                            .execute(&mut c)
                            .await;
                    }
                });
            })
            .join();
        }
    }
}

/// Each test body runs once on SQLite and once on PostgreSQL.
macro_rules! on_both {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn sqlite() {
                let db = super::TestDb::sqlite().await;
                super::$name(db.store.clone()).await;
                db.store.close().await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn postgres() {
                let db = super::TestDb::postgres().await;
                super::$name(db.store.clone()).await;
                db.store.close().await;
            }
        }
    )*};
}

on_both!(
    tokens_and_projects_round_trip,
    a_build_runs_its_course_with_logs_byte_for_byte,
    concurrent_claims_give_each_job_to_exactly_one_worker,
    jobs_ending_at_once_end_their_build,
    a_lost_attempt_requeues_until_attempts_run_out,
    a_late_worker_is_fenced_and_resends_are_harmless,
    branch_heads_move_once_and_deliveries_are_seen_once,
    status_reports_count_failures_and_keep_the_last_sent,
    a_change_is_claimed_by_one_server,
    a_pull_requests_change_waits_until_approved_and_a_newer_push_drops_it,
    a_schedules_firing_is_claimed_once,
    a_cancel_racing_claims_never_cancels_a_claimed_job,
    an_attempt_of_many_steps_keeps_every_step_in_order,
    a_claim_that_finds_no_queued_job_changes_nothing,
);

fn shell_job(builder: &str) -> NewJob {
    NewJob {
        builder: builder.into(),
        name: "main".into(),
        spec: JobSpec {
            steps: vec![StepSpec {
                name: "run".into(),
                action: StepAction::Shell {
                    run: "true".into(),
                    results: None,
                },
                timeout_secs: None,
                env: Default::default(),
                always: false,
            }],
            ..JobSpec::default()
        },
    }
}

fn new_build(jobs: usize) -> NewBuild {
    NewBuild {
        project: "p".into(),
        ref_name: None,
        revision: Some("a".repeat(40)),
        priority: 0,
        reason: "test".into(),
        error: None,
        jobs: (0..jobs).map(|i| shell_job(&format!("b{i}"))).collect(),
        author: Some("ann".into()),
        message: Some("subject".into()),
        branch: Some("main".into()),
        kind: BuildKind::Change,
        sender: None,
        report: false,
        patch: None,
        concurrency_group: None,
        params: Default::default(),
        pull_request: None,
        status_revision: None,
    }
}

fn finished(attempt: i64, worker: &str, seq: u64, result: RunState) -> AttemptEvents {
    AttemptEvents {
        attempt,
        worker: worker.into(),
        last_seq: seq,
        events: vec![StoredEvent::Finished {
            result,
            error: None,
        }],
    }
}

async fn tokens_and_projects_round_trip(store: Store) {
    let row = TokenRow {
        id: "t1".into(),
        secret_hash: "h".into(),
        kind: "enroll".into(),
        worker: None,
        created_at: 1,
        expires_at: None,
        revoked_at: None,
        uses_left: Some(2),
        labels: Some("{\"a\":\"b\"}".into()),
    };
    store.insert_token(&row).await.unwrap();
    let back = store.token("t1").await.unwrap().unwrap();
    assert_eq!((back.kind.as_str(), back.uses_left), ("enroll", Some(2)));
    assert!(store.take_enroll_use("t1").await.unwrap());
    assert!(store.take_enroll_use("t1").await.unwrap());
    assert!(!store.take_enroll_use("t1").await.unwrap(), "used up");
    assert_eq!(store.count_tokens("enroll").await.unwrap(), 1);
    assert!(store.revoke_token("t1").await.unwrap().is_some());
    assert_eq!(
        store.count_tokens("enroll").await.unwrap(),
        0,
        "revoked tokens do not count"
    );
    assert!(store
        .token("t1")
        .await
        .unwrap()
        .unwrap()
        .revoked_at
        .is_some());
    let project = ProjectRow {
        name: "p".into(),
        repo: Some("/r".into()),
        pipeline: None,
    };
    store.upsert_project(&project).await.unwrap();
    store.upsert_project(&project).await.unwrap();
    assert_eq!(store.projects().await.unwrap().len(), 1);
}

async fn a_build_runs_its_course_with_logs_byte_for_byte(store: Store) {
    let (build, jobs) = store.create_build(&new_build(2)).await.unwrap();
    assert_eq!(store.queued_jobs(None).await.unwrap().len(), 2);
    let names = vec!["run".to_string()];
    let a = store
        .create_attempt(jobs[0], "w1", &names)
        .await
        .unwrap()
        .unwrap();
    assert!(
        store
            .create_attempt(jobs[0], "w2", &names)
            .await
            .unwrap()
            .is_none(),
        "claimed once"
    );
    let log: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();
    let events = AttemptEvents {
        attempt: a.id,
        worker: "w1".into(),
        last_seq: 4,
        events: vec![
            StoredEvent::StepStarted { step: 0 },
            StoredEvent::Log {
                step: 0,
                offset: 0,
                len: log.len() as u64,
                compressed: zstd::encode_all(&log[..], 3).unwrap(),
            },
            StoredEvent::StepFinished {
                step: 0,
                status: StepStatus::Success,
                exit_code: Some(0),
                message: None,
            },
            StoredEvent::Finished {
                result: RunState::Success,
                error: None,
            },
        ],
    };
    let applied = store.apply_events(&[events]).await.unwrap();
    assert!(
        matches!(&applied[0], Applied::Stored { finished: Some(f) } if f.build_state == RunState::Running)
    );
    assert_eq!(store.read_log(a.id, 0, 0, 1 << 20).await.unwrap(), log);
    assert_eq!(
        store.read_log(a.id, 0, 65_000, 10).await.unwrap(),
        log[65_000..65_010]
    );
    let b = store
        .create_attempt(jobs[1], "w2", &names)
        .await
        .unwrap()
        .unwrap();
    let applied = store
        .apply_events(&[finished(b.id, "w2", 1, RunState::Failure)])
        .await
        .unwrap();
    assert!(
        matches!(&applied[0], Applied::Stored { finished: Some(f) } if f.build_state == RunState::Failure)
    );
    let row = store.build(build).await.unwrap().unwrap();
    assert_eq!(row.state, RunState::Failure);
    assert_eq!(row.branch.as_deref(), Some("main"));
    assert_eq!(row.kind, BuildKind::Change);
    assert!(row.finished_at.is_some());
}

async fn concurrent_claims_give_each_job_to_exactly_one_worker(store: Store) {
    let (_, jobs) = store.create_build(&new_build(20)).await.unwrap();
    let jobs = Arc::new(jobs);
    let mut tasks = Vec::new();
    for w in 0..8 {
        let (store, jobs) = (store.clone(), Arc::clone(&jobs));
        tasks.push(tokio::spawn(async move {
            let mut won = Vec::new();
            for i in 0..jobs.len() {
                // Each worker walks the jobs from a different place.
                let job = jobs[(i + w * 3) % jobs.len()];
                if store
                    .create_attempt(job, &format!("w{w}"), &["run".to_string()])
                    .await
                    .unwrap()
                    .is_some()
                {
                    won.push(job);
                }
            }
            won
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all.sort();
    let mut expected = jobs.to_vec();
    expected.sort();
    assert_eq!(all, expected, "every job claimed, none twice");
    assert!(store.queued_jobs(None).await.unwrap().is_empty());
}

async fn jobs_ending_at_once_end_their_build(store: Store) {
    for _ in 0..20 {
        let (build, jobs) = store.create_build(&new_build(8)).await.unwrap();
        let mut attempts = Vec::new();
        for (i, job) in jobs.iter().enumerate() {
            let a = store
                .create_attempt(*job, &format!("w{i}"), &["run".to_string()])
                .await
                .unwrap()
                .unwrap();
            attempts.push((a.id, format!("w{i}")));
        }
        let start = Arc::new(tokio::sync::Barrier::new(attempts.len()));
        let tasks: Vec<_> = attempts
            .into_iter()
            .map(|(id, w)| {
                let (store, start) = (store.clone(), Arc::clone(&start));
                tokio::spawn(async move {
                    start.wait().await;
                    store
                        .apply_events(&[finished(id, &w, 1, RunState::Success)])
                        .await
                        .unwrap()
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        let row = store.build(build).await.unwrap().unwrap();
        assert_eq!(
            row.state,
            RunState::Success,
            "the last job to end ends the build"
        );
    }
}

async fn a_lost_attempt_requeues_until_attempts_run_out(store: Store) {
    let (build, jobs) = store.create_build(&new_build(1)).await.unwrap();
    let names = vec!["run".to_string()];
    let a1 = store
        .create_attempt(jobs[0], "w1", &names)
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(
        store.attempt_lost(a1.id, "gone", 2).await.unwrap(),
        LostOutcome::Requeued(_)
    ));
    assert!(matches!(
        store.attempt_lost(a1.id, "gone", 2).await.unwrap(),
        LostOutcome::AlreadyEnded
    ));
    let a2 = store
        .create_attempt(jobs[0], "w2", &names)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(a2.number, 2);
    assert!(matches!(
        store.attempt_lost(a2.id, "gone again", 2).await.unwrap(),
        LostOutcome::GaveUp(_)
    ));
    assert_eq!(
        store.build(build).await.unwrap().unwrap().state,
        RunState::Error
    );
}

async fn a_late_worker_is_fenced_and_resends_are_harmless(store: Store) {
    let (_, jobs) = store.create_build(&new_build(1)).await.unwrap();
    let a = store
        .create_attempt(jobs[0], "w1", &["run".to_string()])
        .await
        .unwrap()
        .unwrap();
    let started = || AttemptEvents {
        attempt: a.id,
        worker: "w1".into(),
        last_seq: 1,
        events: vec![StoredEvent::StepStarted { step: 0 }],
    };
    assert!(matches!(
        store.apply_events(&[started()]).await.unwrap()[0],
        Applied::Stored { .. }
    ));
    assert_eq!(
        store.apply_events(&[started()]).await.unwrap()[0],
        Applied::Behind
    );
    assert_eq!(
        store
            .apply_events(&[finished(a.id, "intruder", 9, RunState::Success)])
            .await
            .unwrap()[0],
        Applied::Fenced
    );
}

async fn branch_heads_move_once_and_deliveries_are_seen_once(store: Store) {
    let change = NewChange {
        revision: "b".repeat(40),
        author: "ann".into(),
        message: "m".into(),
        committed_at: 1,
        files: Some(vec!["src/a".into()]),
        kind: ChangeKind::Branch,
        pull_request: None,
    };
    assert!(store
        .advance_branch("p", "main", None, "a1", &[])
        .await
        .unwrap()
        .is_some());
    // Two servers see the same push: one records it.
    let tasks: Vec<_> = (0..4)
        .map(|_| {
            let (store, change) = (store.clone(), change.clone());
            tokio::spawn(async move {
                store
                    .advance_branch("p", "main", Some("a1"), "b1", &[change])
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut recorded = 0;
    for t in tasks {
        recorded += usize::from(t.await.unwrap().is_some());
    }
    assert_eq!(recorded, 1);
    let changes = store.changes("p", 10).await.unwrap();
    assert_eq!(changes.len(), 1);
    assert_eq!(changes[0].files, Some(vec!["src/a".to_string()]));
    assert_eq!(store.unsettled_changes("p").await.unwrap().len(), 1);
    store
        .settle_change(changes[0].id, None, Some("[skip ci]"))
        .await
        .unwrap();
    assert!(store.unsettled_changes("p").await.unwrap().is_empty());
    assert_eq!(store.branch_heads("p").await.unwrap()["main"], "b1");
    assert!(store.note_delivery("p", "d1").await.unwrap());
    assert!(!store.note_delivery("p", "d1").await.unwrap());
    assert!(store.note_delivery("q", "d1").await.unwrap());
}

async fn status_reports_count_failures_and_keep_the_last_sent(store: Store) {
    let mut b = new_build(1);
    b.report = true;
    let (build, _) = store.create_build(&b).await.unwrap();
    assert_eq!(store.builds_to_report().await.unwrap(), vec![build]);
    store
        .save_report(build, "github:o/r", "herd/b0", Ok("queued"))
        .await
        .unwrap();
    store
        .save_report(build, "github:o/r", "herd/b0", Err(("500", 99)))
        .await
        .unwrap();
    store
        .save_report(build, "github:o/r", "herd/b0", Err(("500", 100)))
        .await
        .unwrap();
    let rows = store.reports_of(build).await.unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(
        rows[0].sent.as_deref(),
        Some("queued"),
        "a failure keeps the last sent"
    );
    assert_eq!((rows[0].attempts, rows[0].next_at), (2, 100));
    store
        .save_report(build, "github:o/r", "herd/b0", Ok("success"))
        .await
        .unwrap();
    let rows = store.reports_of(build).await.unwrap();
    assert_eq!(
        (rows[0].sent.as_deref(), rows[0].attempts),
        (Some("success"), 0)
    );
    store.reports_done(build).await.unwrap();
    assert!(store.builds_to_report().await.unwrap().is_empty());
}

async fn a_change_is_claimed_by_one_server(store: Store) {
    let change = NewChange {
        revision: "c".repeat(40),
        author: "ann".into(),
        message: "m".into(),
        committed_at: 1,
        files: None,
        kind: ChangeKind::Branch,
        pull_request: None,
    };
    let ids = store
        .advance_branch("p", "main", None, "c1", &[change])
        .await
        .unwrap()
        .unwrap();
    assert!(store.claim_change(ids[0], "server-a").await.unwrap());
    assert!(
        !store.claim_change(ids[0], "server-b").await.unwrap(),
        "A holds it"
    );
    assert!(
        store.claim_change(ids[0], "server-a").await.unwrap(),
        "A again"
    );
    store.settle_change(ids[0], Some(1), None).await.unwrap();
    assert!(
        !store.claim_change(ids[0], "server-a").await.unwrap(),
        "settled"
    );
}

/// A cancel and claims of the same build's jobs at the same moment: a job
/// is either claimed (running, its attempt among those the cancel returns
/// to be stopped) or cancelled (no live attempt), never cancelled while an
/// attempt of it runs. Without the build lock taken before the cancel
/// reads the queued jobs, PostgreSQL lets a claim slip in between.
async fn a_cancel_racing_claims_never_cancels_a_claimed_job(store: Store) {
    let names = vec!["run".to_string()];
    for round in 0..30 {
        let (build, jobs) = store.create_build(&new_build(6)).await.unwrap();
        let claimer = {
            let store = store.clone();
            let names = names.clone();
            let jobs = jobs.clone();
            tokio::spawn(async move {
                let mut claimed = Vec::new();
                for (i, job) in jobs.iter().enumerate() {
                    if let Some(a) = store
                        .create_attempt(*job, &format!("w{i}"), &names)
                        .await
                        .unwrap()
                    {
                        claimed.push(a.id);
                    }
                }
                claimed
            })
        };
        // Let the claims start first in half of the rounds.
        if round % 2 == 0 {
            tokio::task::yield_now().await;
        }
        let (_, live) = store.cancel_build(build).await.unwrap();
        let claimed = claimer.await.unwrap();
        let detail = store.build_detail(build).await.unwrap().unwrap();
        for job in &detail.jobs {
            let live_attempts: Vec<i64> = detail
                .attempts
                .iter()
                .filter(|a| a.job_id == job.id && !a.state.is_finished())
                .map(|a| a.id)
                .collect();
            if live_attempts.is_empty() {
                assert_eq!(
                    job.state,
                    RunState::Cancelled,
                    "round {round}: a job nobody claimed is cancelled"
                );
            } else {
                assert_eq!(
                    job.state,
                    RunState::Running,
                    "round {round}: job {} was cancelled while its attempt {live_attempts:?} runs",
                    job.id
                );
                for a in &live_attempts {
                    assert!(claimed.contains(a));
                    assert!(
                        live.iter().any(|(id, _)| id == a),
                        "round {round}: the cancel returns attempt {a} to be stopped"
                    );
                }
            }
        }
    }
}

async fn a_pull_requests_change_waits_until_approved_and_a_newer_push_drops_it(store: Store) {
    let change = |rev: char| NewChange {
        revision: rev.to_string().repeat(40),
        author: "mallory".into(),
        message: "m".into(),
        committed_at: 1,
        files: None,
        kind: ChangeKind::PullRequest,
        pull_request: Some(7),
    };
    store
        .advance_branch("p", "pr:", None, "", &[])
        .await
        .unwrap();
    let first = store
        .advance_branch("p", "pr:7", None, "d1", &[change('d')])
        .await
        .unwrap()
        .unwrap()[0];
    let row = store.change(first).await.unwrap().unwrap();
    assert_eq!(
        (row.kind, row.pull_request, row.branch.as_str()),
        (ChangeKind::PullRequest, Some(7), "7")
    );
    assert!(store.claim_change(first, "a").await.unwrap());
    store.hold_change(first, "from a fork").await.unwrap();
    assert!(
        store.unsettled_changes("p").await.unwrap().is_empty(),
        "a held change is not built"
    );
    assert_eq!(
        store.waiting_changes("p").await.unwrap()[0]
            .waiting
            .as_deref(),
        Some("from a fork")
    );
    // A newer push: the older head is dropped, the newer waits in turn.
    let second = store
        .advance_branch("p", "pr:7", Some("d1"), "e1", &[change('e')])
        .await
        .unwrap()
        .unwrap()[0];
    assert_eq!(
        store
            .drop_pull_request_changes("p", 7, Some(second), "a newer push")
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        store
            .change(first)
            .await
            .unwrap()
            .unwrap()
            .skipped
            .as_deref(),
        Some("a newer push")
    );
    assert!(
        store
            .approve_change(first, "admin")
            .await
            .unwrap()
            .is_none(),
        "dropped"
    );
    store.hold_change(second, "from a fork").await.unwrap();
    let approved = store
        .approve_change(second, "admin")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(approved.approved_by.as_deref(), Some("admin"));
    assert!(approved.waiting.is_none());
    assert!(
        store
            .approve_change(second, "admin")
            .await
            .unwrap()
            .is_none(),
        "once"
    );
    // What a webhook said, the newest word winning.
    let facts = PullFacts {
        number: 7,
        title: "t".into(),
        author: "mallory".into(),
        url: "https://forge/p/pull/7".into(),
        fork: true,
        base: Some("main".into()),
        closed: false,
    };
    store.save_pull_request("p", &facts).await.unwrap();
    store
        .save_pull_request(
            "p",
            &PullFacts {
                closed: true,
                ..facts
            },
        )
        .await
        .unwrap();
    let row = store.pull_request("p", 7).await.unwrap().unwrap();
    assert_eq!(row.fork, Some(true));
    assert!(row.closed_at.is_some());
}

async fn a_schedules_firing_is_claimed_once(store: Store) {
    let tasks: Vec<_> = (0..4)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .claim_schedule_run("p", "nightly", 1_000, &format!("server-{i}"))
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut won = 0;
    for t in tasks {
        won += usize::from(t.await.unwrap());
    }
    assert_eq!(won, 1, "one server starts each firing");
    store
        .settle_schedule_run("p", "nightly", 1_000, Ok((5, "abc")))
        .await
        .unwrap();
    assert!(store
        .claim_schedule_run("p", "nightly", 2_000, "server-0")
        .await
        .unwrap());
    store
        .settle_schedule_run("p", "nightly", 2_000, Err("nothing changed"))
        .await
        .unwrap();
    assert_eq!(
        store.last_schedule_fire("p", "nightly").await.unwrap(),
        Some(2_000)
    );
    assert_eq!(
        store
            .last_schedule_revision("p", "nightly")
            .await
            .unwrap()
            .as_deref(),
        Some("abc")
    );
    assert_eq!(store.last_schedule_fire("p", "other").await.unwrap(), None);
}

/// The steps of an attempt are written in chunks (one statement each):
/// every one is there, in order, across the chunks' edges.
async fn an_attempt_of_many_steps_keeps_every_step_in_order(store: Store) {
    let (build, jobs) = store.create_build(&new_build(1)).await.unwrap();
    let names: Vec<String> = (0..901).map(|i| format!("step {i}")).collect();
    let a = store
        .create_attempt(jobs[0], "w1", &names)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(a.number, 1);
    let detail = store.build_detail(build).await.unwrap().unwrap();
    assert_eq!(detail.build.state, RunState::Running);
    assert!(detail.build.started_at.is_some());
    let mut steps: Vec<_> = detail
        .steps
        .iter()
        .filter(|s| s.attempt_id == a.id)
        .collect();
    steps.sort_by_key(|s| s.idx);
    assert_eq!(steps.len(), names.len());
    for (i, s) in steps.iter().enumerate() {
        assert_eq!((s.idx, s.name.as_str()), (i as i64, names[i].as_str()));
    }
    // A second attempt is numbered after the first.
    let lost = store.attempt_lost(a.id, "gone", 3).await.unwrap();
    assert_eq!(lost, LostOutcome::Requeued(jobs[0]));
    let b = store
        .create_attempt(jobs[0], "w2", &names[..1])
        .await
        .unwrap()
        .unwrap();
    assert_eq!(b.number, 2);
}

/// A claim of a job that is no longer queued (its build was cancelled) is
/// refused and leaves the build as it was: no attempt, its state and start
/// untouched by the lock that marks a queued build running.
async fn a_claim_that_finds_no_queued_job_changes_nothing(store: Store) {
    let (build, jobs) = store.create_build(&new_build(1)).await.unwrap();
    store.cancel_build(build).await.unwrap();
    let before = store.build(build).await.unwrap().unwrap();
    assert_eq!(before.state, RunState::Cancelled);
    assert!(store
        .create_attempt(jobs[0], "w1", &["run".to_string()])
        .await
        .unwrap()
        .is_none());
    let after = store.build(build).await.unwrap().unwrap();
    assert_eq!(after.state, RunState::Cancelled);
    assert_eq!(after.started_at, before.started_at);
    assert!(store.live_attempts(None).await.unwrap().is_empty());
}
