-- Comparator runs: one row per run, one per table compared, and the confirmed divergences.

CREATE TABLE comparison_runs (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    old_source     TEXT    NOT NULL,
    new_source     TEXT    NOT NULL,
    status         TEXT    NOT NULL,
    error          TEXT,
    started_at_ms  BIGINT  NOT NULL,
    finished_at_ms BIGINT
);

CREATE TABLE comparison_tables (
    id                 INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id             BIGINT  NOT NULL REFERENCES comparison_runs (id),
    table_name         TEXT    NOT NULL,
    new_table_name     TEXT    NOT NULL,
    rows_old           BIGINT  NOT NULL,
    rows_new           BIGINT  NOT NULL,
    missing_in_new     BIGINT  NOT NULL,
    extra_in_new       BIGINT  NOT NULL,
    changed            BIGINT  NOT NULL,
    converged          BIGINT  NOT NULL,
    windows            BIGINT  NOT NULL,
    schema_differences BIGINT  NOT NULL,
    identical          BIGINT  NOT NULL,
    finished_at_ms     BIGINT  NOT NULL
);
CREATE INDEX comparison_tables_by_table ON comparison_tables (table_name, id);

CREATE TABLE divergences (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id      BIGINT  NOT NULL REFERENCES comparison_runs (id),
    table_name  TEXT    NOT NULL,
    kind        TEXT    NOT NULL,
    row_key     TEXT    NOT NULL,
    columns     TEXT    NOT NULL,
    found_at_ms BIGINT  NOT NULL
);
CREATE INDEX divergences_by_run ON divergences (run_id, table_name);
