-- Events depth, before Redis is read: per hour of the window ($1 the hours' starts, $2 their
-- ends), how many of a sample of its target rows (the first ones by time, read from the time
-- index) carry a raw digest. An hour whose rows mostly lack one (written before raw digests
-- existed, or changed by SQL) would have every minute parsed after hashing it: validate
-- parses it at once instead. The sample decides only how Redis's members are read; what is
-- found is the same either way. The hour is returned as its start in epoch milliseconds.
SELECT (extract(epoch FROM h.start) * 1000)::bigint AS start_ms,
       count(s.time)::bigint AS sampled,
       count(s.raw_digest)::bigint AS with_raw_digest
FROM unnest($1::timestamptz[], $2::timestamptz[]) AS h (start, stop)
LEFT JOIN LATERAL (
    SELECT time, raw_digest FROM analytics_events_ts
    WHERE time >= h.start - interval '500 microseconds' AND time < h.stop - interval '500 microseconds'
    ORDER BY time
    LIMIT 64
) AS s ON true
GROUP BY h.start
