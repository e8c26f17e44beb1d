-- Per minute of [$1, $2): how many target events, and the sum of their fingerprints; and of
-- those, how many carry a raw digest, and the sum of their raw digests.
-- The sums are exact (numeric); validate reduces them modulo 2^64, which makes them the same
-- order-independent hashes Redis members get. Minutes (epoch ms / 60000) roll up into the
-- window's hours in Rust, with the hour boundaries of the configured time zone, and
-- tell validate which minutes to narrow to when an hour differs.
--
-- Rows carry the fingerprint their writer stored with them (stored_fingerprint: every
-- write path fills it, an UPDATE clears it), so most rows are summed, not hashed. Only
-- rows without one are fingerprinted from their content: the marker below is replaced
-- with event_fingerprints.sql restricted to those rows (counted as rows without a raw
-- digest). raw_digest (fingerprint::raw_digest of the member the row was parsed from,
-- cleared with the fingerprint by an UPDATE) lets validate compare a minute with Redis
-- without parsing its members: a minute where every row has one and the sums agree holds
-- exactly the rows written from Redis's members.
SELECT minute,
       sum(events)::bigint AS events,
       sum(fingerprint_sum)::text AS fingerprint_sum,
       sum(raw_events)::bigint AS raw_events,
       coalesce(sum(raw_sum), 0)::text AS raw_sum
FROM (
    -- Grouped by the UTC minute of the time rounded to the millisecond (integer arithmetic
    -- per row), numbered once per group.
    SELECT (extract(epoch FROM m) / 60)::bigint AS minute,
           count(*) AS events,
           sum(stored_fingerprint) AS fingerprint_sum,
           count(raw_digest) AS raw_events,
           sum(raw_digest) AS raw_sum
    FROM (
        SELECT date_trunc('minute', (time + interval '500 microseconds') AT TIME ZONE 'UTC') AS m, stored_fingerprint, raw_digest
        FROM analytics_events_ts
        WHERE time >= $1 AND time < $2 AND stored_fingerprint IS NOT NULL
    ) AS stored
    GROUP BY m
    UNION ALL
    SELECT time_ms / 60000, count(*), sum(fingerprint), 0, NULL
    FROM (
/*event_fingerprints*/
    ) AS f
    GROUP BY 1
) AS parts
GROUP BY 1
