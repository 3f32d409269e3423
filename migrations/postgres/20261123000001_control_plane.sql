-- tandem control plane: stage history, mirror failures awaiting replay, response mismatches.
-- Times are Unix epoch milliseconds (UTC) so that SQLite and PostgreSQL hold the same values.

CREATE TABLE stage_changes (
    id             BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    stage          TEXT   NOT NULL,
    previous_stage TEXT,
    changed_by     TEXT   NOT NULL,
    reason         TEXT   NOT NULL,
    changed_at_ms  BIGINT NOT NULL
);

-- Every proxy LISTENs on this channel so that a stage change reaches it at once.
CREATE FUNCTION tandem_notify_stage_change() RETURNS trigger AS $$
BEGIN
    PERFORM pg_notify('tandem_stage', NEW.stage);
    RETURN NEW;
END
$$ LANGUAGE plpgsql;

CREATE TRIGGER stage_changes_notify AFTER INSERT ON stage_changes
    FOR EACH ROW EXECUTE FUNCTION tandem_notify_stage_change();

CREATE TABLE mirror_failures (
    id            BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    request_id    TEXT   NOT NULL,
    target_side   TEXT   NOT NULL,
    method        TEXT   NOT NULL,
    uri           TEXT   NOT NULL,
    headers       BYTEA  NOT NULL,
    body          BYTEA,
    ordering_key  TEXT   NOT NULL,
    reason        TEXT   NOT NULL,
    last_error    TEXT   NOT NULL,
    attempts      BIGINT NOT NULL,
    status        TEXT   NOT NULL,
    accepted_at_ms BIGINT NOT NULL,
    accepted_seq  BIGINT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL
);
-- Replay order: the order in which the authoritative side accepted the writes.
CREATE INDEX mirror_failures_pending ON mirror_failures (status, accepted_at_ms, accepted_seq, id);
CREATE INDEX mirror_failures_key ON mirror_failures (ordering_key, status);

CREATE TABLE response_mismatches (
    id                 BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    request_id         TEXT   NOT NULL,
    method             TEXT   NOT NULL,
    path               TEXT   NOT NULL,
    route              TEXT   NOT NULL,
    authoritative_side TEXT   NOT NULL,
    status_old         BIGINT NOT NULL,
    status_new         BIGINT NOT NULL,
    diff               TEXT   NOT NULL,
    created_at_ms      BIGINT NOT NULL
);
CREATE INDEX response_mismatches_created ON response_mismatches (created_at_ms);
