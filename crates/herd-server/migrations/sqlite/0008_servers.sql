-- Several servers sharing one database: each keeps a row here fresh; a row
-- gone stale is a dead server, whose workers' jobs another one takes over.
CREATE TABLE servers (
    id         TEXT PRIMARY KEY,
    url        TEXT NOT NULL,
    started_at BIGINT NOT NULL,
    last_seen  BIGINT NOT NULL
);
-- The server a worker is connected to.
ALTER TABLE workers ADD COLUMN server TEXT;
