-- The legacy hourly table over [$1, $2) (its name comes from legacy.hourly_table).
SELECT hour, event_name, category, event_count, unique_users
FROM {{hourly_table}}
WHERE hour >= $1 AND hour < $2
