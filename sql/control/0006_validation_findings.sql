-- Every event-level difference a validation run found (not only the ones it listed), so
-- `tsmigrate repair` fixes exactly what the latest run found.
CREATE TABLE IF NOT EXISTS tsmigrate.validation_findings (
    run_id      bigint NOT NULL REFERENCES tsmigrate.validation_runs (id) ON DELETE CASCADE,
    kind        text NOT NULL CHECK (kind IN ('missing', 'extra', 'different')),
    event_id    uuid NOT NULL,
    redis_time  timestamptz,
    target_time timestamptz
);
CREATE INDEX IF NOT EXISTS validation_findings_run ON tsmigrate.validation_findings (run_id);
