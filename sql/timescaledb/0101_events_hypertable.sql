-- TimescaleDB mode: the raw events hypertable, daily chunks.
CREATE EXTENSION IF NOT EXISTS timescaledb;

CREATE TABLE analytics_events_ts (
    time        timestamptz NOT NULL,
    event_id    uuid NOT NULL,
    event_name  text NOT NULL,
    category    text NOT NULL,
    user_id     text,
    session_id  text,
    properties  jsonb NOT NULL DEFAULT '{}',
    device_info jsonb NOT NULL DEFAULT '{}',
    page_url    text,
    referrer    text
);
SELECT create_hypertable('analytics_events_ts', by_range('time', INTERVAL '1 day'));

-- Idempotent inserts: the same event (id, time) is stored once, whichever path wrote it.
CREATE UNIQUE INDEX analytics_events_ts_event ON analytics_events_ts (event_id, time);
CREATE INDEX analytics_events_ts_category ON analytics_events_ts (category, time DESC);
CREATE INDEX analytics_events_ts_name ON analytics_events_ts (event_name, time DESC);
CREATE INDEX analytics_events_ts_user ON analytics_events_ts (user_id, time DESC) WHERE user_id IS NOT NULL;
