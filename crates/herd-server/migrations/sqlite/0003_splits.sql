-- Split test suites: one row per split step of a build, holding the whole
-- state (herd_core::split::SplitState as JSON) so that every server that
-- shares the database can answer the next shard in one transaction.
CREATE TABLE splits (
    id          INTEGER PRIMARY KEY,
    build_id    BIGINT NOT NULL REFERENCES builds (id),
    builder     TEXT NOT NULL,
    job         TEXT NOT NULL,            -- the job as named in herd.yml (shards are JOB#N)
    step_idx    BIGINT NOT NULL,
    step_name   TEXT NOT NULL,
    state       TEXT NOT NULL,            -- running | done
    failed      BIGINT NOT NULL DEFAULT 0,
    summary     TEXT,
    data        TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    finished_at BIGINT,
    UNIQUE (build_id, builder, job, step_idx)
);

-- What each test took when it passed (a moving average), per project,
-- builder and step; test '' is the runner's start-up cost.
CREATE TABLE test_timings (
    project    TEXT NOT NULL,
    builder    TEXT NOT NULL,
    step       TEXT NOT NULL,
    test       TEXT NOT NULL,
    secs       DOUBLE PRECISION NOT NULL,
    runs       BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (project, builder, step, test)
);
