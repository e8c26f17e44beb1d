-- Every write path stores each event row with the fingerprint its writer computed
-- (analytics_events_ts.stored_fingerprint, added by the storage mode's migration), so
-- validation sums stored numbers instead of hashing every row. A row changed afterwards
-- (an UPDATE by anyone) no longer matches it: the trigger of the storage mode's migration
-- forgets it, and validation fingerprints that row from its content again.
CREATE OR REPLACE FUNCTION tsmigrate.forget_stored_fingerprint() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.stored_fingerprint := NULL;
    RETURN NEW;
END $$;
