//! The database refuses a write while the server runs: nothing is lost.
//! The fault is real: a trigger put into the server's own SQLite file by
//! another process makes every new attempt fail until it is dropped.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(60);

fn sql(db: &std::path::Path, statement: &str) {
    let o = std::process::Command::new("python3")
        .arg("-c")
        .arg("import sqlite3, sys; c = sqlite3.connect(sys.argv[1], timeout=30); c.execute(sys.argv[2]); c.commit()")
        .arg(db)
        .arg(statement)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", out(&o));
}

#[test]
fn a_job_whose_attempt_cannot_be_written_waits_and_runs_once_the_database_takes_writes() {
    let server = Server::start_on_sqlite(
        "projects:\n  p:\n    pipeline: |\n      builders:\n        b:\n          steps:\n            - run: echo ran\n",
        &[],
    );
    let _w = server.worker("w1", 1, &[]);
    let db = server.data.join("herd.db");
    sql(
        &db,
        "CREATE TRIGGER refuse_attempts BEFORE INSERT ON attempts BEGIN SELECT RAISE(ABORT, 'injected fault'); END",
    );
    let id = server.start_build("p", &[]);
    wait_until(LIMIT, "the scheduler to meet the fault", || {
        server.log().contains("injected fault").then_some(())
    });
    assert_eq!(server.build(id)["state"], "queued");
    sql(&db, "DROP TRIGGER refuse_attempts");
    // No restart: the job is still in the queue the scheduler retries.
    let b = server.wait_build(id, LIMIT);
    assert_eq!(b["state"], "success", "{b}");
    assert_eq!(b["jobs"][0]["attempts"].as_array().unwrap().len(), 1, "{b}");
}
