-- The users of each (event_name, category) of a minute or hour set, one roaring bitmap per
-- entry of event_names/categories, in the same order: the hourly answer's distinct users per
-- group for recent and partial hours then come from the sets instead of raw rows. NULL in
-- day sets (never asked per group), and in sets built before this column existed: those do
-- not answer a per-group read, which falls back to finer sets or raw rows.
ALTER TABLE tsmigrate.user_sets ADD COLUMN group_users bytea[];
