-- The new hourly aggregate over [$1, $2): one row per (hour, event_name, category).
SELECT bucket, event_name, category, event_count, unique_users
FROM analytics_hourly
WHERE bucket >= $1 AND bucket < $2
