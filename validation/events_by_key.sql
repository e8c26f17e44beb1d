-- Full target rows for the given (event_id, time) pairs: the versions of events whose
-- fingerprints differ from Redis, to name the fields that differ.
SELECT e.event_id, e.time, e.event_name, e.category, e.user_id, e.session_id,
       e.properties, e.device_info, e.page_url, e.referrer
FROM analytics_events_ts AS e
JOIN unnest($1::uuid[], $2::timestamptz[]) AS k(event_id, time)
  ON e.event_id = k.event_id AND e.time = k.time
