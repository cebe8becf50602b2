-- The files jobs kept (herd.yml `artifacts:`). The content is on disk,
-- named by its SHA-256 (the artifact store); a row says which attempt
-- uploaded which path. The artifacts of a job are those of its latest
-- attempt.
CREATE TABLE artifacts (
    id          INTEGER PRIMARY KEY,
    build_id    BIGINT NOT NULL REFERENCES builds (id),
    job_id      BIGINT NOT NULL REFERENCES jobs (id),
    attempt_id  BIGINT NOT NULL REFERENCES attempts (id),
    path        TEXT NOT NULL,
    size        BIGINT NOT NULL,
    sha256      TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    UNIQUE (attempt_id, path)
);
CREATE INDEX artifacts_build ON artifacts (build_id);
CREATE INDEX artifacts_sha256 ON artifacts (sha256);
