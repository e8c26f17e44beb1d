-- --depth counts: per minute of [$1, $2), how many target events (no hashing).
-- Rows are grouped by the UTC minute of their time rounded to the millisecond (as event
-- times are; integer arithmetic per row); the minute number
-- (epoch ms / 60000) is computed once per group.
SELECT (extract(epoch FROM m) / 60)::bigint AS minute,
       count(*) AS events,
       '0' AS fingerprint_sum,
       0::bigint AS raw_events,
       '0' AS raw_sum
FROM (
    SELECT date_trunc('minute', (time + interval '500 microseconds') AT TIME ZONE 'UTC') AS m
    FROM analytics_events_ts
    WHERE time >= $1 AND time < $2
) AS e
GROUP BY m
