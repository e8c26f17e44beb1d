-- Continuous aggregates, each from the raw hypertable (distinct counts do not roll up),
-- created WITH NO DATA (a populating create cannot run in a transaction) and
-- refreshed explicitly by the tool; real-time aggregation on (materialized_only = false).
CREATE MATERIALIZED VIEW analytics_hourly
WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
SELECT time_bucket(INTERVAL '1 hour', time, '{{bucket_timezone}}') AS bucket,
       event_name,
       category,
       count(*) AS event_count,
       count(DISTINCT user_id) AS unique_users,
       count(DISTINCT session_id) AS unique_sessions
FROM analytics_events_ts
GROUP BY 1, 2, 3
WITH NO DATA;

CREATE MATERIALIZED VIEW analytics_daily
WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
SELECT time_bucket(INTERVAL '1 day', time, '{{bucket_timezone}}') AS bucket,
       event_name,
       category,
       count(*) AS event_count,
       count(DISTINCT user_id) AS unique_users,
       count(DISTINCT session_id) AS unique_sessions
FROM analytics_events_ts
GROUP BY 1, 2, 3
WITH NO DATA;

CREATE MATERIALIZED VIEW analytics_asset_popularity_ts
WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
SELECT time_bucket(INTERVAL '1 day', time, '{{bucket_timezone}}') AS bucket,
       properties->>'asset_type' AS asset_type,
       count(*) AS generation_count,
       count(DISTINCT user_id) AS unique_creators
FROM analytics_events_ts
WHERE event_name = 'asset_generated'
GROUP BY 1, 2
WITH NO DATA;
