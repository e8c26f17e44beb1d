-- One row per target event in [$1, $2): id, time in epoch milliseconds, name, fingerprint.
--
-- The fingerprint is the first 8 bytes of the MD5 of the row's canonical text, read as a
-- big-endian signed bigint (the same 64 bits Rust reads as an unsigned number). The
-- canonical text is the columns joined with U+001F (chr(31)), NULL written \N, the JSON
-- columns as jsonb prints them. src/validate/fingerprint.rs computes the same text from
-- a Redis member; the two must stay identical, field by field.
SELECT event_id,
       time_ms,
       event_name,
       ('x' || substr(md5(concat_ws(chr(31),
            event_id::text,
            time_ms::text,
            event_name,
            category,
            coalesce(user_id, '\N'),
            coalesce(session_id, '\N'),
            coalesce(page_url, '\N'),
            coalesce(referrer, '\N'),
            properties::text,
            device_info::text)), 1, 16))::bit(64)::bigint AS fingerprint
FROM (
    SELECT *, (extract(epoch FROM time) * 1000)::bigint AS time_ms
    FROM analytics_events_ts
    WHERE time >= $1 AND time < $2 /*rows*/
) AS e
