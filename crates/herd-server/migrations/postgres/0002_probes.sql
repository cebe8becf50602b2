-- The probes the builders need (from the requirements of every pipeline
-- seen), and what each worker found.
CREATE TABLE probes (
    name       TEXT PRIMARY KEY,
    command    TEXT,                      -- shell command of a custom probe
    updated_at BIGINT NOT NULL
);

CREATE TABLE worker_probes (
    worker    TEXT NOT NULL,
    name      TEXT NOT NULL,
    present   BIGINT NOT NULL,
    version   TEXT,
    output    TEXT,                       -- what the probe printed when it failed
    probed_at BIGINT NOT NULL,
    PRIMARY KEY (worker, name)
);
