-- Tags and pull/merge requests become changes too, schedules fire (issue 19).
-- kind: branch | tag | pr. For a tag, `branch` holds the tag's name; for a
-- pull request, `PR #N` and `pull_request` its number.
ALTER TABLE changes ADD COLUMN kind TEXT NOT NULL DEFAULT 'branch';
ALTER TABLE changes ADD COLUMN pull_request BIGINT;
-- Why a change waits (a pull request waiting for approval); NULL: it does not.
ALTER TABLE changes ADD COLUMN waiting TEXT;
-- Who approved a pull request's change for building.
ALTER TABLE changes ADD COLUMN approved_by TEXT;

-- What a forge's webhook told about a pull request (git does not know it):
-- fork is 1 (another repository), 0 (the same one) or NULL (unknown: only
-- polled, which counts as untrusted).
CREATE TABLE pull_requests (
    project    TEXT NOT NULL,
    number     BIGINT NOT NULL,
    title      TEXT NOT NULL,
    author     TEXT NOT NULL,
    url        TEXT NOT NULL,
    fork       BIGINT,
    base       TEXT,
    closed_at  BIGINT,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (project, number)
);

-- The pull request a build is of.
ALTER TABLE builds ADD COLUMN pull_request BIGINT;

-- Each firing of a project's `schedule:` (one row per firing, so that of
-- several servers one starts its build); `revision` what it built, or
-- NULL when it built nothing (`skipped` says why).
CREATE TABLE schedule_runs (
    project    TEXT NOT NULL,
    schedule   TEXT NOT NULL,
    fire_at    BIGINT NOT NULL,
    server     TEXT NOT NULL,
    build_id   BIGINT,
    revision   TEXT,
    skipped    TEXT,
    PRIMARY KEY (project, schedule, fire_at)
);

-- When a worker's owner (its server label `owner`) was told it is away;
-- NULL while it is not (or no one was told).
ALTER TABLE workers ADD COLUMN away_notified_at BIGINT;

-- Where a build's commit statuses go when that is not its revision: a pull
-- request's head, when the build is of its merge with the base.
ALTER TABLE builds ADD COLUMN status_revision TEXT;
