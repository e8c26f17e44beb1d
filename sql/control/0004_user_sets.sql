-- Exact, mergeable user sets (both storage modes), so that unique users over any window cost
-- O(buckets), not O(events).
--
-- Every user id gets a 32-bit ordinal, assigned in bulk by the set builder and never reused.
CREATE TABLE tsmigrate.user_ordinals (
    user_id text PRIMARY KEY,
    ordinal bigint GENERATED ALWAYS AS IDENTITY (MINVALUE 0 START WITH 0 MAXVALUE 4294967295) UNIQUE
);

-- One row per closed minute, hour and day (hours and days cut in the bucket time zone): the
-- users seen (a roaring bitmap of ordinals, portable serialization), the events per
-- (event_name, category), and for asset_generated the generations and creators per asset
-- type (a NULL type: events without one). Minutes are built from raw rows, an hour from its
-- 60 minutes, a day from its hours; a bucket without events has a row too, so a missing row
-- always means "not built". event_count is what the row was built from: a row whose count
-- differs from the aggregate's is stale.
CREATE TABLE tsmigrate.user_sets (
    span           text NOT NULL CHECK (span IN ('minute', 'hour', 'day')),
    bucket         timestamptz NOT NULL,
    event_count    bigint NOT NULL,
    users          bytea NOT NULL,
    event_names    text[] NOT NULL,
    categories     text[] NOT NULL,
    group_counts   bigint[] NOT NULL,
    asset_types    text[] NOT NULL,
    asset_counts   bigint[] NOT NULL,
    asset_creators bytea[] NOT NULL,
    -- The creators' cardinalities: a whole day's answer needs no bitmap.
    asset_creator_counts bigint[] NOT NULL,
    built_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (span, bucket)
);

-- Minutes a write touched since their set was built (every write path records them in the
-- same transaction as its rows). A set containing a marked minute is stale until rebuilt.
CREATE TABLE tsmigrate.user_set_marks (
    minute    timestamptz PRIMARY KEY,
    marked_at timestamptz NOT NULL DEFAULT now()
);
