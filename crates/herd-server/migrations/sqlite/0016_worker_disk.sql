-- The disk a worker keeps its workspaces on, as it last said (JSON of
-- herd_proto::DiskReport): the worker page shows it on every server.
ALTER TABLE workers ADD COLUMN disk TEXT;
