-- Labels the server gives a worker (from its enrollment token, or set by
-- the admin with `herd workers label`): unlike the labels a worker states
-- itself, these may gate secrets.
CREATE TABLE worker_labels (
    worker TEXT NOT NULL,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (worker, key)
);
