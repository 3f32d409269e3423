-- What a sweep says of each table beyond its confirmed divergences: rows still changing on
-- both sides through every recheck (`unconverged`, counted apart from `changed`), and why a
-- table could not be compared (`error`: no usable plan, a failed query), so such a table is
-- reported with its reason instead of stopping the sweep or being left out.

ALTER TABLE comparison_tables ADD COLUMN unconverged BIGINT NOT NULL DEFAULT 0;
ALTER TABLE comparison_tables ADD COLUMN error TEXT;
ALTER TABLE sweep_chunks ADD COLUMN unconverged BIGINT NOT NULL DEFAULT 0;
ALTER TABLE sweep_chunks ADD COLUMN error TEXT;
