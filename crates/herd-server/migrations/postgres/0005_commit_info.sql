-- What the web page shows of a build's commit.
ALTER TABLE builds ADD COLUMN author TEXT;
ALTER TABLE builds ADD COLUMN message TEXT;
