-- The fingerprint of each row (validate::fingerprint, validation/event_fingerprints.sql) as
-- the writer that stored it computed it: every write path (backfill, relay, tail, repair)
-- fills it through TargetWriter. NULL for rows written otherwise; an UPDATE sets it back to
-- NULL (tsmigrate.forget_stored_fingerprint), so a stored value always describes the row
-- as it was written and never a row changed since. Validation fingerprints NULL rows from
-- their content.
ALTER TABLE analytics_events_ts ADD COLUMN stored_fingerprint bigint;
CREATE TRIGGER analytics_events_ts_forget_stored_fingerprint
    BEFORE UPDATE ON analytics_events_ts
    FOR EACH ROW EXECUTE FUNCTION tsmigrate.forget_stored_fingerprint();
