-- Alerts (one active alert per condition), the append-only audit log, the promotion policy the
-- comparator publishes, and the counters proxies flush for rate-based alerts and rollbacks.

CREATE TABLE alerts (
    id                 BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    fingerprint        TEXT    NOT NULL,
    source             TEXT    NOT NULL,
    subject            TEXT    NOT NULL,
    kind               TEXT    NOT NULL,
    severity           TEXT    NOT NULL,
    summary            TEXT    NOT NULL,
    status             TEXT    NOT NULL,
    first_seen_ms      BIGINT  NOT NULL,
    last_seen_ms       BIGINT  NOT NULL,
    occurrences        BIGINT  NOT NULL,
    measured           BIGINT  NOT NULL,
    examples           TEXT    NOT NULL,
    clean_checks       BIGINT  NOT NULL DEFAULT 0,
    clean_since_ms     BIGINT,
    acknowledged_by    TEXT,
    acknowledged_at_ms BIGINT,
    ack_comment        TEXT,
    resolved_by        TEXT,
    resolved_at_ms     BIGINT,
    resolve_comment    TEXT,
    notified_at_ms     BIGINT,
    notify_due_ms      BIGINT
);
-- A repeated condition updates its active alert instead of opening another.
CREATE UNIQUE INDEX alerts_one_active_per_fingerprint ON alerts (fingerprint)
    WHERE status <> 'resolved';
CREATE INDEX alerts_by_notify_due ON alerts (notify_due_ms);

CREATE TABLE audit_log (
    id      BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at_ms   BIGINT NOT NULL,
    actor   TEXT   NOT NULL,
    action  TEXT   NOT NULL,
    subject TEXT   NOT NULL,
    detail  TEXT   NOT NULL
);
CREATE INDEX audit_log_by_time ON audit_log (at_ms);

CREATE TABLE promotion_policy (
    id              BIGINT PRIMARY KEY,
    tables          TEXT   NOT NULL,
    min_clean_ms    BIGINT NOT NULL,
    published_by    TEXT   NOT NULL,
    published_at_ms BIGINT NOT NULL
);

CREATE TABLE proxy_stats (
    id              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    instance        TEXT   NOT NULL,
    at_ms           BIGINT NOT NULL,
    compared        BIGINT NOT NULL,
    mismatches      BIGINT NOT NULL,
    mirrored        BIGINT NOT NULL,
    mirror_failures BIGINT NOT NULL,
    new_requests    BIGINT NOT NULL,
    new_errors      BIGINT NOT NULL
);
CREATE INDEX proxy_stats_by_time ON proxy_stats (at_ms);
