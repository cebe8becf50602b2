-- Enrollment tokens: how many workers one may still enroll, and the labels
-- it gives them (JSON object).
ALTER TABLE tokens ADD COLUMN uses_left BIGINT;
ALTER TABLE tokens ADD COLUMN labels TEXT;
