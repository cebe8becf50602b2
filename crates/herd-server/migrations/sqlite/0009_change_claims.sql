-- Which server is building a change (several servers poll the same
-- project): a claim older than 5 minutes is taken as abandoned.
ALTER TABLE changes ADD COLUMN claimed_by TEXT;
ALTER TABLE changes ADD COLUMN claimed_at BIGINT;
