-- What a validation run had to compare to open a gate: the whole migrated range when it
-- started (from the oldest event either system holds for the migration to the settle
-- boundary). A run whose window (window_from, window_to) is narrower opens no gate.
-- Runs recorded before this migration have none: they open no gate either.
ALTER TABLE tsmigrate.validation_runs
    ADD COLUMN IF NOT EXISTS range_from timestamptz,
    ADD COLUMN IF NOT EXISTS range_to timestamptz;
