-- Shared sweeps: comparator instances on one control store split a sweep into key-range chunks,
-- claim them (leases that expire when an instance dies), and record each window's result.

ALTER TABLE comparison_runs ADD COLUMN shared BIGINT NOT NULL DEFAULT 0;
-- At most one shared sweep runs at a time: the instance that loses the race to start one joins it.
CREATE UNIQUE INDEX comparison_runs_one_running_sweep ON comparison_runs (shared)
    WHERE shared = 1 AND status = 'running';

CREATE TABLE sweep_chunks (
    id                 INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id             BIGINT  NOT NULL REFERENCES comparison_runs (id),
    table_name         TEXT    NOT NULL,
    new_table_name     TEXT    NOT NULL,
    range_after        TEXT,
    range_through      TEXT,
    status             TEXT    NOT NULL,
    owner              TEXT,
    claimed_at_ms      BIGINT,
    attempts           BIGINT  NOT NULL DEFAULT 0,
    rows_old           BIGINT  NOT NULL DEFAULT 0,
    rows_new           BIGINT  NOT NULL DEFAULT 0,
    missing_in_new     BIGINT  NOT NULL DEFAULT 0,
    extra_in_new       BIGINT  NOT NULL DEFAULT 0,
    changed            BIGINT  NOT NULL DEFAULT 0,
    converged          BIGINT  NOT NULL DEFAULT 0,
    windows            BIGINT  NOT NULL DEFAULT 0,
    schema_differences BIGINT  NOT NULL DEFAULT 0,
    finished_at_ms     BIGINT
);
CREATE INDEX sweep_chunks_by_run ON sweep_chunks (run_id, status, id);

CREATE TABLE comparison_windows (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id      BIGINT  NOT NULL REFERENCES comparison_runs (id),
    chunk_id    BIGINT  NOT NULL REFERENCES sweep_chunks (id),
    table_name  TEXT    NOT NULL,
    last_key    TEXT,
    rows_old    BIGINT  NOT NULL,
    rows_new    BIGINT  NOT NULL,
    old_digest  TEXT    NOT NULL,
    new_digest  TEXT    NOT NULL,
    differences BIGINT  NOT NULL
);
CREATE INDEX comparison_windows_by_run ON comparison_windows (run_id, table_name, id);
