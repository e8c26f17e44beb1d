-- --depth counts: how many target events in each hour of the window (no hashing). $1 and $2
-- are the hours' starts and ends (the window's hours in the configured time zone); each hour
-- is counted by a range scan of the time index (an index-only scan once the visibility map is
-- set: backfill vacuums the table beside its closing refresh), so no expression is computed
-- per row. An event's time counts as rounded to the millisecond (as event times are), hence
-- the bounds half a millisecond early. The hour is returned as the minute (epoch ms / 60000)
-- it starts at, which rolls up into that hour.
SELECT (extract(epoch FROM h.start) / 60)::bigint AS minute,
       (SELECT count(*) FROM analytics_events_ts
        WHERE time >= h.start - interval '500 microseconds' AND time < h.stop - interval '500 microseconds') AS events
FROM unnest($1::timestamptz[], $2::timestamptz[]) AS h (start, stop)
