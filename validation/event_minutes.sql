-- Per minute of [$1, $2): how many target events, and the sum of their fingerprints.
-- The sum is exact (numeric); validate reduces it modulo 2^64, which makes it the same
-- order-independent hash Redis members get. Minutes (epoch ms / 60000) roll up into the
-- window's hours in Rust, with the hour boundaries of the configured time zone, and
-- tell validate which minutes to narrow to when an hour differs.
--
-- Rows carry the fingerprint their writer stored with them (stored_fingerprint: every
-- write path fills it, an UPDATE clears it), so most rows are summed, not hashed. Only
-- rows without one are fingerprinted from their content: the marker below is replaced
-- with event_fingerprints.sql restricted to those rows.
SELECT minute,
       sum(events)::bigint AS events,
       sum(fingerprint_sum)::text AS fingerprint_sum
FROM (
    -- Grouped by the UTC minute of the time rounded to the millisecond (integer arithmetic
    -- per row), numbered once per group.
    SELECT (extract(epoch FROM m) / 60)::bigint AS minute,
           count(*) AS events,
           sum(stored_fingerprint) AS fingerprint_sum
    FROM (
        SELECT date_trunc('minute', (time + interval '500 microseconds') AT TIME ZONE 'UTC') AS m, stored_fingerprint
        FROM analytics_events_ts
        WHERE time >= $1 AND time < $2 AND stored_fingerprint IS NOT NULL
    ) AS stored
    GROUP BY m
    UNION ALL
    SELECT time_ms / 60000, count(*), sum(fingerprint)
    FROM (
/*event_fingerprints*/
    ) AS f
    GROUP BY 1
) AS parts
GROUP BY 1
