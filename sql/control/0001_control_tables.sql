-- tsmigrate control tables: migration state, audit log, checkpoints, validation runs,
-- dead letters, history imported from the legacy hourly tables, and job runs.
CREATE SCHEMA IF NOT EXISTS tsmigrate;

-- One row: where the migration stands. Written only by the phase state machine.
CREATE TABLE tsmigrate.migration_state (
    singleton        boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    phase            text NOT NULL,
    storage_mode     text NOT NULL CHECK (storage_mode IN ('timescaledb', 'postgres')),
    read_source      text NOT NULL DEFAULT 'legacy' CHECK (read_source IN ('legacy', 'target')),
    shadow           boolean NOT NULL DEFAULT false,
    completion_point timestamptz,
    backfilled_until timestamptz,
    reads_switched_at timestamptz,
    flush_retired_at timestamptz,
    updated_at       timestamptz NOT NULL DEFAULT now()
);

-- Every phase command, who ran it, what it found and did.
-- Kept by `abort`, so the record of an aborted migration survives a new prepare.
CREATE TABLE IF NOT EXISTS tsmigrate.audit_log (
    id         bigserial PRIMARY KEY,
    at         timestamptz NOT NULL DEFAULT now(),
    actor      text NOT NULL,
    command    text NOT NULL,
    from_phase text,
    to_phase   text,
    outcome    text NOT NULL,
    forced     boolean NOT NULL DEFAULT false,
    reason     text,
    details    jsonb NOT NULL DEFAULT '{}'
);

-- Resumable positions (backfill, tail). Written in the same transaction as the rows they cover.
CREATE TABLE tsmigrate.checkpoints (
    name       text PRIMARY KEY,
    position   jsonb NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE tsmigrate.validation_runs (
    id           bigserial PRIMARY KEY,
    started_at   timestamptz NOT NULL,
    finished_at  timestamptz NOT NULL,
    window_from  timestamptz,
    window_to    timestamptz,
    depth        text NOT NULL,
    result       text NOT NULL CHECK (result IN ('clean', 'differences', 'error')),
    phase        text,
    figures      jsonb NOT NULL DEFAULT '{}',
    duration_ms  bigint NOT NULL
);
CREATE INDEX validation_runs_finished ON tsmigrate.validation_runs (finished_at DESC);

-- Members that are not valid events: kept byte for byte with the reason, never retried silently.
CREATE TABLE tsmigrate.dead_letter (
    id          bigserial PRIMARY KEY,
    source      text NOT NULL,
    raw         bytea NOT NULL,
    score       double precision,
    reason_code text NOT NULL,
    reason      text NOT NULL,
    first_seen  timestamptz NOT NULL DEFAULT now(),
    raw_digest  bytea GENERATED ALWAYS AS (sha256(raw)) STORED
);
CREATE UNIQUE INDEX dead_letter_once ON tsmigrate.dead_letter (raw_digest, score) NULLS NOT DISTINCT;

-- Legacy aggregates for periods older than the Redis horizon (history import).
CREATE TABLE tsmigrate.history_hourly (
    hour         timestamptz NOT NULL,
    event_name   text NOT NULL,
    category     text NOT NULL,
    event_count  bigint NOT NULL,
    unique_users bigint NOT NULL,
    PRIMARY KEY (hour, event_name, category)
);
CREATE TABLE tsmigrate.history_asset_popularity (
    day              date NOT NULL,
    asset_type       text NOT NULL,
    generation_count bigint NOT NULL,
    unique_creators  bigint NOT NULL,
    PRIMARY KEY (day, asset_type)
);

-- Scheduled jobs of `tsmigrate run` (plain-mode rollups, partitions, validation...).
CREATE TABLE tsmigrate.job_runs (
    job              text PRIMARY KEY,
    last_started_at  timestamptz,
    last_finished_at timestamptz,
    last_status      text,
    last_error       text,
    runs             bigint NOT NULL DEFAULT 0,
    failures         bigint NOT NULL DEFAULT 0
);
