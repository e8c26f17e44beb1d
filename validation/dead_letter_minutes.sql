-- --depth counts: dead letters recorded per minute of [$1, $2) (by their score, rounded
-- to the millisecond like an event time). ZCOUNT counts them too; validate subtracts them.
SELECT round(score)::bigint / 60000 AS minute, count(*) AS dead_letters
FROM tsmigrate.dead_letter
WHERE score >= $1::float8 - 0.5 AND score < $2::float8 - 0.5
GROUP BY 1
