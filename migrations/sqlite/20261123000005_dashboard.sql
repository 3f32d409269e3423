-- What the dashboard shows beyond counts: both sides' values of each listed divergent row, and
-- request rates and latency per side from the proxies' flushed counts.

ALTER TABLE divergences ADD COLUMN old_row TEXT;
ALTER TABLE divergences ADD COLUMN new_row TEXT;

ALTER TABLE proxy_stats ADD COLUMN requests BIGINT NOT NULL DEFAULT 0;
ALTER TABLE proxy_stats ADD COLUMN old_requests BIGINT NOT NULL DEFAULT 0;
ALTER TABLE proxy_stats ADD COLUMN old_latency_ms BIGINT NOT NULL DEFAULT 0;
ALTER TABLE proxy_stats ADD COLUMN new_latency_ms BIGINT NOT NULL DEFAULT 0;
ALTER TABLE proxy_stats ADD COLUMN queue_depth BIGINT NOT NULL DEFAULT 0;
