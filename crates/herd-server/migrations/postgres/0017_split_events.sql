-- A split's state is its last snapshot and the events after it: a
-- shard's request appends O(batch) instead of rewriting the whole state.
-- splits.seq numbers the last event; splits.stamp is drawn anew by every
-- write (a server's cached state is current only when its (seq, stamp) is
-- in the log). New rows keep only a format marker in splits.data.
ALTER TABLE splits ADD COLUMN seq BIGINT NOT NULL DEFAULT 0;
ALTER TABLE splits ADD COLUMN stamp BIGINT NOT NULL DEFAULT 0;
-- Its tests' counts by outcome (herd_core::split::Summary as JSON): what a
-- build's page shows of it, without reading the state.
ALTER TABLE splits ADD COLUMN counts TEXT;

-- The state as of event data_seq (herd_core::split::SplitState, JSON,
-- zstd). Apart from splits: a row is rewritten whole when it changes.
CREATE TABLE split_snapshots (
    split_id BIGINT PRIMARY KEY REFERENCES splits (id),
    data_seq BIGINT NOT NULL,
    data     BYTEA NOT NULL
);

-- herd_core::split::SplitEvent as JSON, numbered per split.
CREATE TABLE split_events (
    split_id BIGINT NOT NULL REFERENCES splits (id),
    seq      BIGINT NOT NULL,
    stamp    BIGINT NOT NULL,
    data     TEXT NOT NULL,
    PRIMARY KEY (split_id, seq)
);

-- Attempts that hold a running batch of a split: an attempt that ends
-- looks here rather than into every split's state.
CREATE TABLE split_holders (
    attempt_id BIGINT NOT NULL,
    split_id   BIGINT NOT NULL REFERENCES splits (id),
    PRIMARY KEY (attempt_id, split_id)
);
