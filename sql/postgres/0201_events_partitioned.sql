-- Plain PostgreSQL mode: the same table, range-partitioned by day (UTC). Partitions are
-- created ahead and dropped by retention by tsmigrate itself (tsmigrate.ensure_partitions).
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
) PARTITION BY RANGE (time);

CREATE UNIQUE INDEX analytics_events_ts_event ON analytics_events_ts (event_id, time);
CREATE INDEX analytics_events_ts_time ON analytics_events_ts (time DESC);
CREATE INDEX analytics_events_ts_category ON analytics_events_ts (category, time DESC);
CREATE INDEX analytics_events_ts_name ON analytics_events_ts (event_name, time DESC);
CREATE INDEX analytics_events_ts_user ON analytics_events_ts (user_id, time DESC) WHERE user_id IS NOT NULL;

-- Creates the missing daily partitions covering [p_from, p_to). Safe to call concurrently.
CREATE FUNCTION tsmigrate.ensure_partitions(p_from timestamptz, p_to timestamptz) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    day date := (p_from AT TIME ZONE 'UTC')::date;
    last_day date := (p_to AT TIME ZONE 'UTC')::date;
    created integer := 0;
    name text;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('tsmigrate.partitions'));
    WHILE day <= last_day LOOP
        name := format('analytics_events_ts_p%s', to_char(day, 'YYYYMMDD'));
        IF to_regclass(name) IS NULL THEN
            EXECUTE format(
                'CREATE TABLE %I PARTITION OF analytics_events_ts FOR VALUES FROM (%L) TO (%L)',
                name, (day::timestamp AT TIME ZONE 'UTC'), ((day + 1)::timestamp AT TIME ZONE 'UTC'));
            created := created + 1;
        END IF;
        day := day + 1;
    END LOOP;
    RETURN created;
END $$;

-- Drops the daily partitions wholly older than p_before (raw retention).
CREATE FUNCTION tsmigrate.drop_partitions_before(p_before timestamptz) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    part record;
    dropped integer := 0;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('tsmigrate.partitions'));
    FOR part IN
        SELECT c.relname
        FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = 'analytics_events_ts'::regclass
          AND c.relname ~ '^analytics_events_ts_p[0-9]{8}$'
          AND (to_date(substr(c.relname, 22), 'YYYYMMDD') + 1)::timestamp AT TIME ZONE 'UTC' <= p_before
    LOOP
        EXECUTE format('DROP TABLE %I', part.relname);
        dropped := dropped + 1;
    END LOOP;
    RETURN dropped;
END $$;
