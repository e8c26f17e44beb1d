-- The new daily asset popularity over [$1, $2). A NULL asset_type (an asset_generated
-- event without one) is what the legacy flush records as 'unknown'.
SELECT bucket,
       coalesce(asset_type, 'unknown') AS asset_type,
       sum(generation_count)::bigint AS generation_count,
       sum(unique_creators)::bigint AS unique_creators
FROM analytics_asset_popularity_ts
WHERE bucket >= $1 AND bucket < $2
GROUP BY 1, 2
