-- What long work's rate is computed from, and what runs it again.
-- sample_done / sample_at: the count and time of the write before the latest one, so
-- status shows the rate over the last sample interval (a stall shows as 0), not the
-- average of the whole run.
-- command: the command line that runs the task again as it was given; starts_over: true
-- when that does the work again from the start (a validation) rather than resuming it.
ALTER TABLE tsmigrate.progress
    ADD COLUMN sample_done bigint,
    ADD COLUMN sample_at timestamptz,
    ADD COLUMN command text,
    ADD COLUMN starts_over boolean NOT NULL DEFAULT false;
