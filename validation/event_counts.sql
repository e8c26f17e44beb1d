-- --depth counts: per minute of [$1, $2), how many target events (no hashing).
SELECT (extract(epoch FROM time) * 1000)::bigint / 60000 AS minute,
       count(*) AS events,
       '0' AS fingerprint_sum
FROM analytics_events_ts
WHERE time >= $1 AND time < $2
GROUP BY 1
