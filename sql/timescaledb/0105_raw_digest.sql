-- The raw digest of each row (fingerprint::raw_digest): a 64-bit hash of the exact Redis
-- member the row was parsed from, with its time in milliseconds, as the writer that stored
-- it computed it. Validation hashes Redis members' bytes per minute without parsing them
-- and compares the sums with these; a minute that differs (or holds a row without a raw
-- digest) is compared by parsing, as before, through the stored fingerprints. NULL for rows
-- written before this column existed, or otherwise than from a member; an UPDATE sets it
-- back to NULL together with the stored fingerprint, so a stored value always describes the
-- row as it was written.
ALTER TABLE analytics_events_ts ADD COLUMN raw_digest bigint;
CREATE OR REPLACE FUNCTION tsmigrate.forget_stored_fingerprint() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.stored_fingerprint := NULL;
    NEW.raw_digest := NULL;
    RETURN NEW;
END $$;
