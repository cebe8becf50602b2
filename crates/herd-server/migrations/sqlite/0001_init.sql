-- Times are milliseconds since the Unix epoch. Keep SQL portable: the
-- PostgreSQL migrations mirror these tables with BIGSERIAL/BYTEA.
CREATE TABLE tokens (
    id          TEXT PRIMARY KEY,          -- public part of the token
    secret_hash TEXT NOT NULL,             -- sha256 of the secret part, hex
    kind        TEXT NOT NULL,             -- admin | worker | enroll | try | read
    worker      TEXT,                      -- the worker a worker token belongs to
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT,
    revoked_at  BIGINT
);

CREATE TABLE projects (
    name       TEXT PRIMARY KEY,
    repo       TEXT,
    pipeline   TEXT,                       -- inline herd.yml for projects without one in a repo
    updated_at BIGINT NOT NULL
);

CREATE TABLE workers (
    name        TEXT PRIMARY KEY,
    slots       BIGINT NOT NULL,
    labels      TEXT NOT NULL,             -- JSON object
    facts       TEXT NOT NULL,             -- JSON object
    version     TEXT NOT NULL,
    online      BIGINT NOT NULL,           -- 0 or 1
    paused      BIGINT NOT NULL DEFAULT 0,
    first_seen  BIGINT NOT NULL,
    last_change BIGINT NOT NULL            -- when it came online or went offline
);

CREATE TABLE builds (
    id           INTEGER PRIMARY KEY,
    project      TEXT NOT NULL,
    ref_name     TEXT,                     -- what was asked for (branch, tag, sha)
    revision     TEXT,                     -- the resolved commit
    state        TEXT NOT NULL,
    priority     BIGINT NOT NULL DEFAULT 0,
    reason       TEXT NOT NULL,
    error        TEXT,
    created_at   BIGINT NOT NULL,
    started_at   BIGINT,
    finished_at  BIGINT
);
CREATE INDEX builds_project ON builds (project, id);
CREATE INDEX builds_state ON builds (state);

CREATE TABLE jobs (
    id          INTEGER PRIMARY KEY,
    build_id    BIGINT NOT NULL REFERENCES builds (id),
    builder     TEXT NOT NULL,
    name        TEXT NOT NULL,
    state       TEXT NOT NULL,
    spec        TEXT NOT NULL,             -- JSON: steps and requirements
    error       TEXT,
    created_at  BIGINT NOT NULL,
    started_at  BIGINT,
    finished_at BIGINT
);
CREATE INDEX jobs_build ON jobs (build_id);
CREATE INDEX jobs_state ON jobs (state);

CREATE TABLE attempts (
    id          INTEGER PRIMARY KEY,
    job_id      BIGINT NOT NULL REFERENCES jobs (id),
    number      BIGINT NOT NULL,
    worker      TEXT NOT NULL,
    state       TEXT NOT NULL,
    reason      TEXT,                      -- why it ended, when not by its own steps
    last_seq    BIGINT NOT NULL DEFAULT 0, -- highest event sequence number stored
    created_at  BIGINT NOT NULL,
    finished_at BIGINT
);
CREATE INDEX attempts_job ON attempts (job_id);
CREATE INDEX attempts_state ON attempts (state);

CREATE TABLE steps (
    attempt_id  BIGINT NOT NULL REFERENCES attempts (id),
    idx         BIGINT NOT NULL,
    name        TEXT NOT NULL,
    state       TEXT NOT NULL,
    exit_code   BIGINT,
    message     TEXT,
    log_size    BIGINT NOT NULL DEFAULT 0,
    started_at  BIGINT,
    finished_at BIGINT,
    PRIMARY KEY (attempt_id, idx)
);

-- Step output in zstd-compressed chunks, each starting at `byte_offset`.
CREATE TABLE log_chunks (
    attempt_id BIGINT NOT NULL,
    step       BIGINT NOT NULL,
    byte_offset BIGINT NOT NULL,
    len        BIGINT NOT NULL,
    data       BLOB NOT NULL,
    PRIMARY KEY (attempt_id, step, byte_offset)
);
