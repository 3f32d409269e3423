-- tandem control plane: stage history, mirror failures awaiting replay, response mismatches.
-- Times are Unix epoch milliseconds (UTC) so that SQLite and PostgreSQL hold the same values.

CREATE TABLE stage_changes (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    stage          TEXT    NOT NULL,
    previous_stage TEXT,
    changed_by     TEXT    NOT NULL,
    reason         TEXT    NOT NULL,
    changed_at_ms  BIGINT  NOT NULL
);

CREATE TABLE mirror_failures (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    request_id    TEXT    NOT NULL,
    target_side   TEXT    NOT NULL,
    method        TEXT    NOT NULL,
    uri           TEXT    NOT NULL,
    headers       BLOB    NOT NULL,
    body          BLOB,
    ordering_key  TEXT    NOT NULL,
    reason        TEXT    NOT NULL,
    last_error    TEXT    NOT NULL,
    attempts      BIGINT  NOT NULL,
    status        TEXT    NOT NULL,
    accepted_at_ms BIGINT NOT NULL,
    accepted_seq  BIGINT  NOT NULL,
    created_at_ms BIGINT  NOT NULL,
    updated_at_ms BIGINT  NOT NULL
);
-- Replay order: the order in which the authoritative side accepted the writes.
CREATE INDEX mirror_failures_pending ON mirror_failures (status, accepted_at_ms, accepted_seq, id);
CREATE INDEX mirror_failures_key ON mirror_failures (ordering_key, status);

CREATE TABLE response_mismatches (
    id                 INTEGER PRIMARY KEY AUTOINCREMENT,
    request_id         TEXT    NOT NULL,
    method             TEXT    NOT NULL,
    path               TEXT    NOT NULL,
    route              TEXT    NOT NULL,
    authoritative_side TEXT    NOT NULL,
    status_old         BIGINT  NOT NULL,
    status_new         BIGINT  NOT NULL,
    diff               TEXT    NOT NULL,
    created_at_ms      BIGINT  NOT NULL
);
CREATE INDEX response_mismatches_created ON response_mismatches (created_at_ms);
