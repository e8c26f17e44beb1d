-- Plain PostgreSQL mode: the aggregates as ordinary tables with the continuous aggregates'
-- names and columns, maintained incrementally by tsmigrate.refresh_rollups.
CREATE TABLE analytics_hourly (
    bucket          timestamptz NOT NULL,
    event_name      text NOT NULL,
    category        text NOT NULL,
    event_count     bigint NOT NULL,
    unique_users    bigint NOT NULL,
    unique_sessions bigint NOT NULL,
    PRIMARY KEY (bucket, event_name, category)
);
CREATE TABLE analytics_daily (LIKE analytics_hourly INCLUDING ALL);
CREATE TABLE analytics_asset_popularity_ts (
    bucket           timestamptz NOT NULL,
    asset_type       text,
    generation_count bigint NOT NULL,
    unique_creators  bigint NOT NULL
);
CREATE UNIQUE INDEX analytics_asset_popularity_ts_key
    ON analytics_asset_popularity_ts (bucket, asset_type) NULLS NOT DISTINCT;

-- Recomputes every hourly and daily bucket that overlaps [p_from, p_to) from the raw
-- table, in one transaction, so readers never see a half-rebuilt bucket.
CREATE FUNCTION tsmigrate.refresh_rollups(p_from timestamptz, p_to timestamptz) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    tz constant text := '{{bucket_timezone}}';
    h_from timestamptz := date_trunc('hour', p_from, tz);
    h_to timestamptz := date_trunc('hour', p_to - INTERVAL '1 microsecond', tz) + INTERVAL '1 hour';
    d_from timestamptz := date_trunc('day', p_from, tz);
    d_to timestamptz := ((date_trunc('day', p_to - INTERVAL '1 microsecond', tz) AT TIME ZONE tz) + INTERVAL '1 day') AT TIME ZONE tz;
BEGIN
    IF p_to <= p_from THEN
        RETURN;
    END IF;
    PERFORM pg_advisory_xact_lock(hashtext('tsmigrate.rollups'));

    DELETE FROM analytics_hourly WHERE bucket >= h_from AND bucket < h_to;
    INSERT INTO analytics_hourly
    SELECT date_trunc('hour', time, tz), event_name, category,
           count(*), count(DISTINCT user_id), count(DISTINCT session_id)
    FROM analytics_events_ts
    WHERE time >= h_from AND time < h_to
    GROUP BY 1, 2, 3;

    DELETE FROM analytics_daily WHERE bucket >= d_from AND bucket < d_to;
    INSERT INTO analytics_daily
    SELECT date_trunc('day', time, tz), event_name, category,
           count(*), count(DISTINCT user_id), count(DISTINCT session_id)
    FROM analytics_events_ts
    WHERE time >= d_from AND time < d_to
    GROUP BY 1, 2, 3;

    DELETE FROM analytics_asset_popularity_ts WHERE bucket >= d_from AND bucket < d_to;
    INSERT INTO analytics_asset_popularity_ts
    SELECT date_trunc('day', time, tz), properties->>'asset_type',
           count(*), count(DISTINCT user_id)
    FROM analytics_events_ts
    WHERE time >= d_from AND time < d_to AND event_name = 'asset_generated'
    GROUP BY 1, 2;
END $$;
