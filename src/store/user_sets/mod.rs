//! Exact, mergeable user sets (`tsmigrate.user_sets`, the same tables in both storage modes):
//! for every closed minute, hour and day (cut in the bucket time zone) the users seen as a
//! roaring bitmap of their ordinals (`tsmigrate.user_ordinals`), the events per
//! (event_name, category) with (minutes and hours) each group's users, and the generations
//! and creators per asset type. Bitmaps
//! union exactly, so unique users over any window cost O(buckets), not O(events).
//!
//! Minutes are built from raw rows, an hour from its minutes, a day from its hours
//! ([`build`]). Every write path records the minutes it touched in `tsmigrate.user_set_marks`
//! in the same transaction as its rows ([`mark`]); a set that holds a marked minute is stale
//! until the builder, in one transaction, consumes the marks, rebuilds the minutes and drops
//! the hour and day above them. So a row that exists and holds no mark is exact.

pub mod build;
pub mod report;

use std::collections::{BTreeMap, HashSet};

use chrono::{DateTime, Duration, Utc};
use chrono_tz::Tz;
use roaring::RoaringBitmap;
use sqlx::{PgConnection, PgPool};

use crate::calendar::{minute_floor, next_day, next_hour};
use crate::event::TargetEvent;

/// The asset events whose creators are counted per asset type.
pub const ASSET_EVENT: &str = "asset_generated";

/// The width of a set's bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Span {
    Minute,
    Hour,
    Day,
}

impl Span {
    pub fn as_str(self) -> &'static str {
        match self {
            Span::Minute => "minute",
            Span::Hour => "hour",
            Span::Day => "day",
        }
    }

    fn parse(s: &str) -> Option<Span> {
        [Span::Minute, Span::Hour, Span::Day].into_iter().find(|span| span.as_str() == s)
    }

    /// The span a bucket of this one divides into.
    pub fn finer(self) -> Option<Span> {
        match self {
            Span::Minute => None,
            Span::Hour => Some(Span::Minute),
            Span::Day => Some(Span::Hour),
        }
    }

    /// The buckets of this span from `from` (a bucket start) that end by `until`.
    pub fn starts(self, from: DateTime<Utc>, until: DateTime<Utc>, tz: Tz) -> Vec<DateTime<Utc>> {
        let mut out = Vec::new();
        let mut bucket = from;
        while self.end(bucket, tz) <= until {
            out.push(bucket);
            bucket = self.end(bucket, tz);
        }
        out
    }

    /// The end of the bucket starting at `start` (hours and days cut in `tz`).
    pub fn end(self, start: DateTime<Utc>, tz: Tz) -> DateTime<Utc> {
        match self {
            Span::Minute => start + Duration::minutes(1),
            Span::Hour => next_hour(start, tz),
            Span::Day => next_day(start, tz),
        }
    }
}

/// Distinct users: ordinals, and the ids that have none yet. Only raw rows newer than the
/// last build can hold such an id, and then it is in no set, so the two never overlap.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Users {
    pub ordinals: RoaringBitmap,
    pub unmapped: HashSet<String>,
}

impl Users {
    pub fn len(&self) -> u64 {
        self.ordinals.len() + self.unmapped.len() as u64
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn union(&mut self, other: &Users) {
        self.ordinals |= &other.ordinals;
        self.unmapped.extend(other.unmapped.iter().cloned());
    }

    /// One raw user: by ordinal when it has one. A NULL user id is nobody.
    fn add(&mut self, user_id: Option<&str>, ordinal: Option<i64>) {
        match (ordinal.and_then(|o| u32::try_from(o).ok()), user_id) {
            (Some(ordinal), _) => {
                self.ordinals.insert(ordinal);
            }
            (None, Some(id)) => {
                self.unmapped.insert(id.to_string());
            }
            (None, None) => {}
        }
    }
}

/// One asset type's generations and creators.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AssetTally {
    pub generations: i64,
    pub creators: Users,
    /// A day's row carries the cardinality instead of the bitmap: a whole day needs no union.
    pub creators_counted: Option<i64>,
}

impl AssetTally {
    pub fn unique_creators(&self) -> i64 {
        self.creators_counted.unwrap_or(self.creators.len() as i64)
    }
}

/// What a bucket of events holds, or a stretch of raw rows tallied the same way.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Tally {
    pub events: i64,
    pub users: Users,
    /// Events per (event_name, category).
    pub groups: BTreeMap<(String, String), i64>,
    /// `asset_generated` events per `properties->>'asset_type'` (`None`: no asset type).
    pub assets: BTreeMap<Option<String>, AssetTally>,
    /// The users of each group of `groups`; `None` when unknown: not asked for, or a set
    /// built before they were kept (such a set does not answer a per-group read).
    pub group_users: Option<BTreeMap<(String, String), Users>>,
}

impl Tally {
    /// An empty tally that keeps the users of each group.
    pub fn with_group_users() -> Tally {
        Tally { group_users: Some(BTreeMap::new()), ..Tally::default() }
    }

    /// Adds `other`'s events and unions its users (pieces of one window never overlap).
    /// Users per group stay known only while both sides know them.
    pub fn merge(&mut self, other: &Tally) {
        self.events += other.events;
        self.users.union(&other.users);
        for (group, n) in &other.groups {
            *self.groups.entry(group.clone()).or_default() += n;
        }
        for (asset_type, asset) in &other.assets {
            let mine = self.assets.entry(asset_type.clone()).or_default();
            mine.generations += asset.generations;
            mine.creators.union(&asset.creators);
        }
        self.group_users = match (self.group_users.take(), &other.group_users) {
            (Some(mut mine), Some(theirs)) => {
                for (group, users) in theirs {
                    mine.entry(group.clone()).or_default().union(users);
                }
                Some(mine)
            }
            _ => None,
        };
    }
}

/// What a read needs from each set or raw stretch (less is cheaper).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Parts {
    /// Events per (event_name, category).
    pub groups: bool,
    /// Every user.
    pub users: bool,
    /// Generations and creators per asset type.
    pub assets: bool,
    /// The users of each (event_name, category); sets without them do not answer.
    pub group_users: bool,
}

pub(crate) fn encode(bitmap: &RoaringBitmap) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(bitmap.serialized_size());
    bitmap.serialize_into(&mut bytes).expect("writing to a Vec cannot fail");
    bytes
}

fn decode(bytes: &[u8]) -> sqlx::Result<RoaringBitmap> {
    RoaringBitmap::deserialize_from(bytes).map_err(|e| sqlx::Error::Decode(format!("a user set is not a roaring bitmap: {e}").into()))
}

type SetRow = (
    String,
    DateTime<Utc>,
    i64,
    Option<Vec<u8>>,
    Vec<String>,
    Vec<String>,
    Vec<i64>,
    Option<Vec<Option<String>>>,
    Option<Vec<i64>>,
    Option<Vec<Vec<u8>>>,
    Option<Vec<i64>>,
    Option<Vec<Vec<u8>>>,
);

/// The set rows of `buckets` that exist (a bucket without a row is not built yet).
pub async fn fetch(pool: &PgPool, buckets: &[(Span, DateTime<Utc>)], parts: Parts) -> sqlx::Result<Vec<(Span, DateTime<Utc>, Tally)>> {
    if buckets.is_empty() {
        return Ok(vec![]);
    }
    // Columns a read does not need are never detoasted. Whole days carry creators' counts.
    let rows: Vec<SetRow> = sqlx::query_as(
        "SELECT s.span, s.bucket, s.event_count, CASE WHEN $3 THEN s.users END, s.event_names, s.categories, s.group_counts,
                CASE WHEN $4 THEN s.asset_types END, CASE WHEN $4 THEN s.asset_counts END,
                CASE WHEN $4 AND s.span <> 'day' THEN s.asset_creators END,
                CASE WHEN $4 AND s.span = 'day' THEN s.asset_creator_counts END, CASE WHEN $5 THEN s.group_users END
         FROM unnest($1::text[], $2::timestamptz[]) AS b(span, bucket)
         JOIN tsmigrate.user_sets s ON s.span = b.span AND s.bucket = b.bucket",
    )
    .bind(buckets.iter().map(|(span, _)| span.as_str()).collect::<Vec<_>>())
    .bind(buckets.iter().map(|(_, bucket)| *bucket).collect::<Vec<_>>())
    .bind(parts.users)
    .bind(parts.assets)
    .bind(parts.group_users)
    .fetch_all(pool)
    .await?;
    rows.into_iter().map(set_row).collect()
}

fn set_row(row: SetRow) -> sqlx::Result<(Span, DateTime<Utc>, Tally)> {
    let (span, bucket, events, users, names, categories, counts, asset_types, asset_counts, creators, creator_counts, group_users) = row;
    let span = Span::parse(&span).ok_or_else(|| sqlx::Error::Decode(format!("unknown user-set span {span:?}").into()))?;
    let mut tally = Tally { events, ..Tally::default() };
    if let Some(bytes) = users {
        tally.users.ordinals = decode(&bytes)?;
    }
    let groups: Vec<(String, String)> = names.into_iter().zip(categories).collect();
    if let Some(bitmaps) = group_users {
        if bitmaps.len() != groups.len() {
            return Err(sqlx::Error::Decode(
                format!("the {} set at {bucket} has {} groups but {} group user sets", span.as_str(), groups.len(), bitmaps.len()).into(),
            ));
        }
        let users = bitmaps.iter().map(|bytes| decode(bytes).map(|ordinals| Users { ordinals, unmapped: HashSet::new() }));
        tally.group_users = Some(groups.iter().cloned().zip(users.collect::<sqlx::Result<Vec<_>>>()?).collect());
    }
    tally.groups = groups.into_iter().zip(counts).collect();
    for (i, (asset_type, generations)) in asset_types.unwrap_or_default().into_iter().zip(asset_counts.unwrap_or_default()).enumerate() {
        let mut asset = AssetTally { generations, ..AssetTally::default() };
        match (&creators, &creator_counts) {
            (Some(sets), _) => asset.creators.ordinals = decode(&sets[i])?,
            (None, Some(counts)) => asset.creators_counted = Some(counts[i]),
            (None, None) => {}
        }
        tally.assets.insert(asset_type, asset);
    }
    Ok((span, bucket, tally))
}

/// The event count of every minute of `[from, to)` whose set is built and fresh (no mark),
/// oldest first, in one statement, so the sets and the marks are read in the same snapshot:
/// a minute not returned is unbuilt or stale and must be read raw. An index range scan on
/// the key (the order is what lets a caller find the gaps in one pass).
pub async fn fresh_minute_counts(pool: &PgPool, from: DateTime<Utc>, to: DateTime<Utc>) -> sqlx::Result<Vec<(DateTime<Utc>, i64)>> {
    sqlx::query_as(
        "SELECT s.bucket, s.event_count FROM tsmigrate.user_sets s
         WHERE s.span = 'minute' AND s.bucket >= $1 AND s.bucket < $2
           AND NOT EXISTS (SELECT 1 FROM tsmigrate.user_set_marks m WHERE m.minute = s.bucket)
         ORDER BY s.bucket",
    )
    .bind(from)
    .bind(to)
    .fetch_all(pool)
    .await
}

/// The marked minutes in `[from, to)`: sets holding them are stale.
pub async fn marks_in(pool: &PgPool, from: DateTime<Utc>, to: DateTime<Utc>) -> sqlx::Result<Vec<DateTime<Utc>>> {
    sqlx::query_scalar("SELECT minute FROM tsmigrate.user_set_marks WHERE minute >= $1 AND minute < $2").bind(from).bind(to).fetch_all(pool).await
}

/// Records the minutes `events` fall in as changed, inside the writer's transaction.
///
/// `DO UPDATE` (not `DO NOTHING`) takes the mark's row lock, so a builder consuming this mark
/// waits for this transaction and then reads its rows, or does not see the mark at all and
/// leaves it for the next build: a write is never lost between a mark and a build.
pub async fn mark(conn: &mut PgConnection, events: &[TargetEvent]) -> sqlx::Result<()> {
    mark_times(conn, events.iter().map(|e| e.time)).await
}

/// Like [`mark`], for the times of rows deleted (a repair's replaced or extra events).
pub async fn mark_times(conn: &mut PgConnection, times: impl Iterator<Item = DateTime<Utc>>) -> sqlx::Result<()> {
    let mut minutes: Vec<DateTime<Utc>> = times.map(minute_floor).collect();
    minutes.sort_unstable();
    minutes.dedup();
    if minutes.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO tsmigrate.user_set_marks (minute) SELECT unnest($1::timestamptz[])
         ON CONFLICT (minute) DO UPDATE SET marked_at = now()",
    )
    .bind(&minutes)
    .execute(conn)
    .await?;
    Ok(())
}

type RawUserRow = (String, String, Option<String>, i64, Option<i64>);
type RawAssetRow = (Option<String>, Option<String>, i64, Option<i64>);

/// Raw rows of `[from, to)` tallied like a set, users by ordinal where they have one. The
/// ordinal is looked up per distinct user: a hash of the whole dictionary would cost more
/// than the rows.
pub async fn raw(pool: &PgPool, from: DateTime<Utc>, to: DateTime<Utc>, parts: Parts) -> sqlx::Result<Tally> {
    let mut tally = if parts.group_users { Tally::with_group_users() } else { Tally::default() };
    if parts.users || parts.group_users {
        let rows: Vec<RawUserRow> = sqlx::query_as(
            "SELECT g.event_name, g.category, g.user_id, g.events,
                    (SELECT o.ordinal FROM tsmigrate.user_ordinals o WHERE o.user_id = g.user_id)
             FROM (SELECT event_name, category, user_id, count(*) AS events FROM analytics_events_ts
                   WHERE time >= $1 AND time < $2 GROUP BY 1, 2, 3) g",
        )
        .bind(from)
        .bind(to)
        .fetch_all(pool)
        .await?;
        for (name, category, user_id, events, ordinal) in rows {
            tally.events += events;
            let group = (name, category);
            if let Some(group_users) = tally.group_users.as_mut() {
                group_users.entry(group.clone()).or_default().add(user_id.as_deref(), ordinal);
            }
            *tally.groups.entry(group).or_default() += events;
            tally.users.add(user_id.as_deref(), ordinal);
        }
    } else if parts.groups {
        let rows: Vec<(String, String, i64)> =
            sqlx::query_as("SELECT event_name, category, count(*) FROM analytics_events_ts WHERE time >= $1 AND time < $2 GROUP BY 1, 2")
                .bind(from)
                .bind(to)
                .fetch_all(pool)
                .await?;
        for (name, category, events) in rows {
            tally.events += events;
            tally.groups.insert((name, category), events);
        }
    }
    if parts.assets {
        let rows: Vec<RawAssetRow> = sqlx::query_as(
            "SELECT g.asset_type, g.user_id, g.events, (SELECT o.ordinal FROM tsmigrate.user_ordinals o WHERE o.user_id = g.user_id)
             FROM (SELECT properties->>'asset_type' AS asset_type, user_id, count(*) AS events FROM analytics_events_ts
                   WHERE event_name = $3 AND time >= $1 AND time < $2 GROUP BY 1, 2) g",
        )
        .bind(from)
        .bind(to)
        .bind(ASSET_EVENT)
        .fetch_all(pool)
        .await?;
        for (asset_type, user_id, events, ordinal) in rows {
            let asset = tally.assets.entry(asset_type).or_default();
            asset.generations += events;
            asset.creators.add(user_id.as_deref(), ordinal);
        }
    }
    Ok(tally)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bitmaps_round_trip_in_the_portable_format() {
        let bitmap: RoaringBitmap = [0u32, 7, 65_536, 4_294_967_295].into_iter().collect();
        let bytes = encode(&bitmap);
        // The portable format starts with its cookie: 12346 (no run containers).
        assert_eq!(&bytes[..4], &12_346u32.to_le_bytes());
        assert_eq!(decode(&bytes).unwrap(), bitmap);
        assert!(decode(b"not a bitmap").is_err());
    }

    #[test]
    fn tallies_add_events_and_union_users() {
        let user = |ordinal: u32| Users { ordinals: [ordinal].into_iter().collect(), unmapped: HashSet::new() };
        let mut a = Tally { events: 2, users: user(1), groups: [(("click".into(), "ui".into()), 2)].into(), ..Tally::default() };
        let mut b = Tally { events: 3, users: user(1), groups: [(("click".into(), "ui".into()), 3)].into(), ..Tally::default() };
        b.users.unmapped.insert("new".into());
        b.assets.insert(None, AssetTally { generations: 1, creators: user(2), creators_counted: None });
        a.merge(&b);
        assert_eq!((a.events, a.users.len(), a.groups[&("click".to_string(), "ui".to_string())]), (5, 2, 5));
        assert_eq!(a.assets[&None].unique_creators(), 1);
        assert_eq!(AssetTally { creators_counted: Some(9), ..AssetTally::default() }.unique_creators(), 9);
    }

    #[test]
    fn users_per_group_union_and_stay_known_only_while_every_part_knows_them() {
        let group = |name: &str| (name.to_string(), "ui".to_string());
        let users = |ordinals: &[u32]| Users { ordinals: ordinals.iter().copied().collect(), unmapped: HashSet::new() };
        let part = |name: &str, ordinals: &[u32]| {
            let mut tally = Tally::with_group_users();
            tally.groups.insert(group(name), ordinals.len() as i64);
            tally.group_users.as_mut().unwrap().insert(group(name), users(ordinals));
            tally
        };
        let mut hour = Tally::with_group_users();
        hour.merge(&part("click", &[1, 2]));
        hour.merge(&part("click", &[2, 3]));
        hour.merge(&part("view", &[9]));
        let known = hour.group_users.clone().expect("every part knew its users");
        assert_eq!((known[&group("click")].len(), known[&group("view")].len(), hour.groups[&group("click")]), (3, 1, 4));
        // A part built without them (an earlier version's set): the sum no longer knows them.
        hour.merge(&Tally { groups: [(group("click"), 1)].into(), ..Tally::default() });
        assert_eq!(hour.group_users, None);
        assert_eq!(hour.groups[&group("click")], 5);
    }

    #[test]
    fn spans_end_where_the_calendar_says() {
        let berlin = chrono_tz::Europe::Berlin;
        // 2025-03-30 (spring forward in Berlin) is 23 hours long.
        let day = crate::calendar::day_start(chrono::NaiveDate::from_ymd_opt(2025, 3, 30).unwrap(), berlin);
        assert_eq!(Span::Day.end(day, berlin) - day, Duration::hours(23));
        assert_eq!(Span::Hour.end(day, berlin) - day, Duration::hours(1));
        assert_eq!(Span::Minute.end(day, berlin) - day, Duration::minutes(1));
    }
}
