-- The old-side rows each backfill chunk found already equal on the new side and did not
-- write (`skipped` in the backfill's report, `tandem backfill status` and /api/backfills);
-- 0 for chunks done before this column existed.

ALTER TABLE backfill_chunks ADD COLUMN skipped BIGINT NOT NULL DEFAULT 0;
