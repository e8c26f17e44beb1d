-- Per minute of [$1, $2): how many target events, and the sum of their fingerprints.
-- The sum is exact (numeric); validate reduces it modulo 2^64, which makes it the same
-- order-independent hash Redis members get. Minutes (epoch ms / 60000) roll up into the
-- window's hours in Rust, with the hour boundaries of the configured time zone, and
-- tell validate which minutes to narrow to when an hour differs.
-- The marker below is replaced with event_fingerprints.sql.
SELECT time_ms / 60000 AS minute,
       count(*) AS events,
       sum(fingerprint)::text AS fingerprint_sum
FROM (
/*event_fingerprints*/
) AS f
GROUP BY 1
