-- The legacy daily asset popularity for the days [$1, $2] (legacy.asset_table).
SELECT day, asset_type, generation_count, unique_creators
FROM {{asset_table}}
WHERE day >= $1 AND day <= $2
