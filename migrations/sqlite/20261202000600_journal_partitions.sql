-- A shared journal's backlog per partition (a JSON array of {partition, copies, holder}), so
-- `tandem mirror failures` and the dashboard show which partitions hold copies and which
-- proxy delivers each; empty for a local journal.
ALTER TABLE journal_summaries ADD COLUMN partitions TEXT NOT NULL DEFAULT '[]';
