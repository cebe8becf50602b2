-- The parameters a build ran with (herd.yml `params:`), as a JSON object;
-- NULL when herd.yml declares none.
ALTER TABLE builds ADD COLUMN params TEXT;
