-- Keys written concurrently through two proxies of a fleet: while one write was at the
-- authoritative side, another instance appended a copy of the same key to the shared journal.
-- No order is known from outside the old system, so the key is listed for a targeted recheck.

CREATE TABLE key_conflicts (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    target_side      TEXT NOT NULL,
    ordering_key     TEXT NOT NULL,
    request_id       TEXT NOT NULL,
    detected_at_ms   BIGINT NOT NULL
);

CREATE INDEX key_conflicts_by_key ON key_conflicts (target_side, ordering_key);
