-- Changes in (polling, webhooks, try) and statuses out.
ALTER TABLE builds ADD COLUMN branch TEXT;
ALTER TABLE builds ADD COLUMN kind TEXT NOT NULL DEFAULT 'manual';   -- manual | change | try
ALTER TABLE builds ADD COLUMN sender TEXT;                           -- who sent a try build
ALTER TABLE builds ADD COLUMN report_pending BIGINT NOT NULL DEFAULT 0; -- statuses still to send
CREATE INDEX builds_report_pending ON builds (report_pending);

-- The last revision seen on each watched branch: a poll compares and swaps
-- it in the same transaction that records the change, so two servers
-- polling the same project record each commit once.
CREATE TABLE branch_heads (
    project    TEXT NOT NULL,
    branch     TEXT NOT NULL,
    revision   TEXT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (project, branch)
);

CREATE TABLE changes (
    id           INTEGER PRIMARY KEY,
    project      TEXT NOT NULL,
    branch       TEXT NOT NULL,
    revision     TEXT NOT NULL,
    author       TEXT NOT NULL,
    message      TEXT NOT NULL,              -- the whole commit message
    committed_at BIGINT NOT NULL,
    files        TEXT,                       -- JSON list; NULL when unknown
    created_at   BIGINT NOT NULL,
    build_id     BIGINT,                     -- NULL when nothing was built
    skipped      TEXT                        -- why nothing was built
);
CREATE INDEX changes_project ON changes (project, id);

-- Webhook deliveries already acted on (replays are ignored).
CREATE TABLE hook_deliveries (
    project     TEXT NOT NULL,
    delivery    TEXT NOT NULL,
    received_at BIGINT NOT NULL,
    PRIMARY KEY (project, delivery)
);

-- Per build, reporter and context (a builder, or '' for the whole build):
-- the state last sent, and the retry schedule.
CREATE TABLE status_reports (
    build_id   BIGINT NOT NULL,
    target     TEXT NOT NULL,
    context    TEXT NOT NULL,
    sent       TEXT,
    attempts   BIGINT NOT NULL DEFAULT 0,
    next_at    BIGINT NOT NULL DEFAULT 0,
    last_error TEXT,
    PRIMARY KEY (build_id, target, context)
);

-- The patch of a try build, once per build; it joins the checkout step when
-- a job is assigned (job specs stay small for the pages that read them).
CREATE TABLE build_patches (
    build_id BIGINT PRIMARY KEY,
    patch    TEXT NOT NULL
);
