-- Retention (issue 20): when a build's logs or artifacts were removed
-- while the build itself stays (`keep: {logs_days, artifacts_days}`).
ALTER TABLE builds ADD COLUMN logs_expired_at BIGINT;
ALTER TABLE builds ADD COLUMN artifacts_expired_at BIGINT;

-- Work that one server at a time does for all that share the database
-- (the janitor): held by `holder` until `held_until`, then free to take.
CREATE TABLE leases (
    name   TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    held_until BIGINT NOT NULL
);

-- What each janitor pass did, newest last (kept short by the janitor).
CREATE TABLE janitor_runs (
    id          INTEGER PRIMARY KEY,
    server      TEXT NOT NULL,
    started_at  BIGINT NOT NULL,
    finished_at BIGINT NOT NULL,
    builds      BIGINT NOT NULL,
    logs        BIGINT NOT NULL,
    artifacts   BIGINT NOT NULL,
    log_bytes   BIGINT NOT NULL,
    blob_bytes  BIGINT NOT NULL
);
