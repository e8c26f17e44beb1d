-- What opened a possible gap, and how it was closed.
-- cause: 'outbox_lost' (the relay found its consumer group missing: Redis lost the outbox)
-- or 'evicted' (Redis evicted keys while dual-write was on; evicted_keys says how many).
-- A gap is repaired (repaired_at) only by a copy that read events of its window from
-- Redis; one Redis holds nothing for stays open until an operator accepts the loss
-- (acknowledged_reason, audited), which also sets repaired_at.
ALTER TABLE tsmigrate.outbox_gaps
    ADD COLUMN cause text NOT NULL DEFAULT 'outbox_lost',
    ADD COLUMN evicted_keys bigint,
    ADD COLUMN acknowledged_reason text;
