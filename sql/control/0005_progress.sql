-- Long work (backfill, validation, repair) says how far it got, so `tsmigrate status` shows
-- it from any terminal: done of total, rate and ETA. One row per kind of work, the latest run.
CREATE TABLE IF NOT EXISTS tsmigrate.progress (
    task          text PRIMARY KEY,
    actor         text NOT NULL,
    unit          text NOT NULL,
    started_at    timestamptz NOT NULL,
    updated_at    timestamptz NOT NULL,
    done          bigint NOT NULL,
    done_at_start bigint NOT NULL,
    total         bigint,
    finished_at   timestamptz
);
