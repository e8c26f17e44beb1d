-- Possible gaps in dual-write: the relay found its consumer group missing (Redis lost the
-- outbox, e.g. a restart without persistence) and recreated it. Events written to the
-- outbox between the last relayed entry (window_from) and the recreation (window_to) may
-- never have reached the target. `tsmigrate backfill --from --to` over the window repairs
-- what Redis still holds and sets repaired_at.
CREATE TABLE tsmigrate.outbox_gaps (
    id           bigserial PRIMARY KEY,
    group_name   text NOT NULL,
    window_from  timestamptz,
    window_to    timestamptz NOT NULL,
    detected_at  timestamptz NOT NULL DEFAULT now(),
    repaired_at  timestamptz
);
