-- The migration's identity. Redis holds the same id (a key next to the events key), so a
-- DATABASE_URL and a REDIS_URL that belong to different migrations are refused instead of
-- mixed. Filled on first contact (by prepare, or by the first command after an upgrade);
-- `migration_id_in_redis_since` says it reached Redis once, so a Redis without it later has
-- lost it (restarted empty, flushed, evicted) rather than never had it.
ALTER TABLE tsmigrate.migration_state
    ADD COLUMN IF NOT EXISTS migration_id uuid,
    ADD COLUMN IF NOT EXISTS migration_id_in_redis_since timestamptz;
