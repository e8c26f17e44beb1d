-- Several `tsmigrate run` replicas may run; the scheduled jobs run in the one holding the
-- jobs lease. Each run says which replica ran it: the last one in job_runs, every one in
-- job_run_log (kept 30 days), so a run twice in one slot would show.
ALTER TABLE tsmigrate.job_runs ADD COLUMN IF NOT EXISTS replica text;

CREATE TABLE IF NOT EXISTS tsmigrate.job_run_log (
    id          bigserial PRIMARY KEY,
    job         text NOT NULL,
    replica     text NOT NULL,
    started_at  timestamptz NOT NULL,
    finished_at timestamptz NOT NULL,
    status      text NOT NULL
);
CREATE INDEX IF NOT EXISTS job_run_log_job_started ON tsmigrate.job_run_log (job, started_at);

-- A scheduled run first claims its tick (job, slot): a replica that takes the lease just after
-- the old holder ran a tick does not run that tick again.
CREATE TABLE IF NOT EXISTS tsmigrate.job_slots (
    job     text NOT NULL,
    slot    timestamptz NOT NULL,
    replica text NOT NULL,
    claimed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (job, slot)
);
