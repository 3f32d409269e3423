-- What the bulk path's insert from the staging table costs, against a plain insert and a COPY
-- (docs/benchmarks.md, Backfill), 1,000,000 rows of the bench table:
--   psql -h 127.0.0.1 -U postgres -c 'CREATE DATABASE staging_cost'
--   psql -h 127.0.0.1 -U postgres -d staging_cost -f comparator/bench/staging-insert-cost.sql
--   psql -h 127.0.0.1 -U postgres -c 'DROP DATABASE staging_cost'
-- Writes /tmp/staging-cost.txt (the server's file system) and removes nothing else.
\timing on
CREATE TABLE items (id BIGINT PRIMARY KEY, customer TEXT NOT NULL, amount NUMERIC(12,2) NOT NULL, status TEXT NOT NULL, note TEXT, created_at TIMESTAMPTZ NOT NULL, qty INTEGER NOT NULL);
CREATE TABLE items2 (LIKE items INCLUDING ALL);
CREATE TABLE items3 (LIKE items INCLUDING ALL);
CREATE UNLOGGED TABLE st (c0 text, c1 text, c2 text, c3 text, c4 text, c5 text, c6 text);
INSERT INTO st SELECT g, 'customer-' || (g % 9973), (g % 100000) / 100.0, (ARRAY['open','paid','shipped'])[1 + g % 3], CASE WHEN g % 5 = 0 THEN NULL ELSE 'note ' || g END, (timestamptz '2026-01-01' + g * interval '1 second')::text, g % 17 FROM generate_series(1, 1000000) g;
CHECKPOINT;
-- 1. the bulk path's insert (skips taken keys)
INSERT INTO items SELECT CAST(c0 AS bigint), c1, CAST(c2 AS numeric(12,2)), c3, c4, CAST(c5 AS timestamptz), CAST(c6 AS integer) FROM st ON CONFLICT DO NOTHING;
CHECKPOINT;
-- 2. a plain insert (fails on a taken key)
INSERT INTO items2 SELECT CAST(c0 AS bigint), c1, CAST(c2 AS numeric(12,2)), c3, c4, CAST(c5 AS timestamptz), CAST(c6 AS integer) FROM st;
CHECKPOINT;
-- (untimed: the file for step 3)
COPY st TO '/tmp/staging-cost.txt';
-- 3. COPY from a file, as the floor's COPY FROM STDIN
COPY items3 FROM '/tmp/staging-cost.txt';
