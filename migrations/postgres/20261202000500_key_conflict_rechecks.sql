-- The comparator service's targeted recheck of each listed key: claimed by one instance at a
-- time (a lease, as sweep chunks are), then `settled` (both sides hold the same row),
-- `diverged` (they still differ after the rechecks: an alert opens) or `unmapped` (no
-- table's ordering-key pattern names it), with the table and what was found.

ALTER TABLE key_conflicts ADD COLUMN status TEXT NOT NULL DEFAULT 'pending';
ALTER TABLE key_conflicts ADD COLUMN owner TEXT;
ALTER TABLE key_conflicts ADD COLUMN claimed_at_ms BIGINT;
ALTER TABLE key_conflicts ADD COLUMN attempts BIGINT NOT NULL DEFAULT 0;
ALTER TABLE key_conflicts ADD COLUMN table_name TEXT;
ALTER TABLE key_conflicts ADD COLUMN outcome TEXT;
ALTER TABLE key_conflicts ADD COLUMN checked_at_ms BIGINT;
CREATE INDEX key_conflicts_by_status ON key_conflicts (status, id);
