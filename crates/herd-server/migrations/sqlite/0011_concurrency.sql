-- The concurrency group of a change's build (herd.yml `concurrency:`): a
-- newer build of the group cancels the older ones still queued or running.
ALTER TABLE builds ADD COLUMN concurrency_group TEXT;
CREATE INDEX builds_concurrency ON builds (project, concurrency_group);
