-- When each backfill chunk was planned, so `tandem backfill status` can say when a table's
-- backfill started (NULL for chunks planned before this column existed).

ALTER TABLE backfill_chunks ADD COLUMN planned_at_ms BIGINT;
