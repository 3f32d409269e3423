-- What each proxy's journal holds undelivered, written by the proxy every stats interval
-- (off the request path), so `tandem mirror failures` and the admin API show every instance's
-- pending copies from one place. One row per journal (host and directory): a restarted proxy
-- on the same journal takes its row over. `keys` is a JSON array of sampled keys.

CREATE TABLE journal_summaries (
    journal                TEXT PRIMARY KEY,
    instance               TEXT NOT NULL,
    written_at_ms          BIGINT NOT NULL,
    interval_ms            BIGINT NOT NULL,
    pending                BIGINT NOT NULL,
    oldest_accepted_at_ms  BIGINT,
    keys                   TEXT NOT NULL
);

-- A not-mirrored record shipped again after a crash (it was in the proxy's gap log and the
-- store took it just before) must be found, so that it is kept once.
CREATE INDEX mirror_failures_request ON mirror_failures (request_id, accepted_at_ms, accepted_seq);
