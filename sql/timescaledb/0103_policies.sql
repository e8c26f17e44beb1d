-- Refresh policies. A policy's window must span at least two buckets beyond end_offset,
-- so the seed's hourly policy (start 2 h, end 30 min) is rejected by TimescaleDB.
-- Hourly: start 3 h, end 1 h -> always re-materializes the two most recent closed hours;
--         the open hour is served by real-time aggregation.
-- Daily / asset popularity: start 3 days, end 1 hour.
-- Every window is far shorter than raw retention, so a refresh never erases aggregate
-- rows whose raw data retention already dropped.
SELECT add_continuous_aggregate_policy('analytics_hourly',
    start_offset => INTERVAL '3 hours',
    end_offset => INTERVAL '1 hour',
    schedule_interval => INTERVAL '30 minutes');
SELECT add_continuous_aggregate_policy('analytics_daily',
    start_offset => INTERVAL '3 days',
    end_offset => INTERVAL '1 hour',
    schedule_interval => INTERVAL '1 hour');
SELECT add_continuous_aggregate_policy('analytics_asset_popularity_ts',
    start_offset => INTERVAL '3 days',
    end_offset => INTERVAL '1 hour',
    schedule_interval => INTERVAL '1 hour');

-- Columnstore (compression) after {{columnstore_after_days}} days. The unique index columns
-- must be segment-by or order-by columns, hence event_id in the order-by list.
ALTER TABLE analytics_events_ts SET (
    timescaledb.enable_columnstore = true,
    timescaledb.segmentby = 'category, event_name',
    timescaledb.orderby = 'time DESC, event_id'
);
CALL add_columnstore_policy('analytics_events_ts', after => INTERVAL '{{columnstore_after_days}} days');

-- Retention: raw {{raw_retention_days}} days, hourly {{hourly_retention_days}} days, daily {{daily_retention_days}} days.
SELECT add_retention_policy('analytics_events_ts', INTERVAL '{{raw_retention_days}} days');
SELECT add_retention_policy('analytics_hourly', INTERVAL '{{hourly_retention_days}} days');
SELECT add_retention_policy('analytics_daily', INTERVAL '{{daily_retention_days}} days');
SELECT add_retention_policy('analytics_asset_popularity_ts', INTERVAL '{{daily_retention_days}} days');
