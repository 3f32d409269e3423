-- Backfills: each table's key range split into chunks, claimed with leases and checkpointed
-- once copied and verified, so that a killed backfill resumes after its last finished chunk.

CREATE TABLE backfill_chunks (
    id             BIGSERIAL PRIMARY KEY,
    job            TEXT    NOT NULL,
    table_name     TEXT    NOT NULL,
    new_table_name TEXT    NOT NULL,
    seq            BIGINT  NOT NULL,
    range_after    TEXT,
    range_through  TEXT,
    status         TEXT    NOT NULL,
    owner          TEXT,
    claimed_at_ms  BIGINT,
    attempts       BIGINT  NOT NULL DEFAULT 0,
    rows_old       BIGINT  NOT NULL DEFAULT 0,
    copied         BIGINT  NOT NULL DEFAULT 0,
    repaired       BIGINT  NOT NULL DEFAULT 0,
    conflicts      BIGINT  NOT NULL DEFAULT 0,
    unconverged    BIGINT  NOT NULL DEFAULT 0,
    finished_at_ms BIGINT,
    UNIQUE (job, seq)
);
CREATE INDEX backfill_chunks_by_job ON backfill_chunks (job, status, seq);
