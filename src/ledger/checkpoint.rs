//! `tsmigrate.checkpoints`: resumable positions, typed, written in the same transaction as
//! the rows they cover — the backfill's, the tail's, each repair's (`repair:<run>`), the
//! relay's newest committed outbox entry (`relay:<group>`) and the last look at Redis's
//! evictions (`redis:evicted_keys`, kept by [`super::gaps`]).

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sqlx::PgConnection;

/// "Every member scored below `score` is done, and so are the first `skip` members scored
/// exactly `score`": enough to resume in the middle of a run of equal scores (Redis orders
/// those by member bytes). Read and moved by `legacy::reader`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ScoreCursor {
    pub score: f64,
    pub skip: u64,
}

/// The backfill's position, saved with every page.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BackfillPosition {
    pub cursor: ScoreCursor,
    /// Scores up to this (inclusive) are the backfill's.
    pub until: f64,
    pub read: u64,
    pub inserted: u64,
    pub already_present: u64,
    pub dead_letters: u64,
    pub pages: u64,
    pub min_time_ms: Option<i64>,
    pub max_time_ms: Option<i64>,
    /// The copy is complete (saved after its last page).
    pub finished: bool,
    /// The closing steps (aggregate refresh, history import) ran after the copy. A copy
    /// finished but not closed — stopped during those steps — is not copied again: a re-run
    /// goes on with the closing steps. A finished and closed backfill run again is a new
    /// pass. Checkpoints written before this was kept count as closed.
    #[serde(default = "closed_before_it_was_kept")]
    pub closed: bool,
    /// The copy is split into this many streams, each with its own position
    /// ([`Checkpoint::BackfillPart`]); the counts here are their sums. 0: one stream, whose
    /// position is this one (`cursor`).
    #[serde(default)]
    pub parts: usize,
}

fn closed_before_it_was_kept() -> bool {
    true
}

/// The tail's position: the highest score copied so far.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TailPosition {
    pub score: f64,
}

/// What a repair did, counted over every run of it.
#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq)]
pub struct RepairCounts {
    /// Missing events copied from Redis.
    pub copied: u64,
    /// Events the target held in another version, rewritten from Redis.
    pub rewritten: u64,
    /// Events only the target held, deleted (`--delete-extra`).
    pub deleted: u64,
    /// Events only the target holds, kept (no `--delete-extra`).
    pub kept_extra: u64,
    /// Already as Redis has them (fixed meanwhile, e.g. by the relay).
    pub already_right: u64,
    /// Redis no longer holds them (trimmed by the cap): they cannot be repaired from it.
    pub gone_from_redis: u64,
    pub dead_letters: u64,
}

/// A repair's position, saved with every batch: how many findings (in order) are done, and
/// what was done.
#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq)]
pub struct RepairPosition {
    pub done: usize,
    pub counts: RepairCounts,
    pub first_ms: Option<i64>,
    pub last_ms: Option<i64>,
    pub finished: bool,
}

/// A position to save, in the transaction of what it covers.
#[derive(Debug, Clone, PartialEq)]
pub enum Checkpoint {
    Backfill(BackfillPosition),
    /// Stream `index` of a backfill copied in several.
    BackfillPart {
        index: usize,
        position: BackfillPosition,
    },
    Tail(TailPosition),
    /// The repair of validation run `run`.
    Repair {
        run: i64,
        position: RepairPosition,
    },
}

const BACKFILL: &str = "backfill";
const TAIL: &str = "tail";

fn backfill_part_name(index: usize) -> String {
    format!("backfill.part{index}")
}

fn repair_name(run: i64) -> String {
    format!("repair:{run}")
}

impl Checkpoint {
    fn name(&self) -> String {
        match self {
            Checkpoint::Backfill(_) => BACKFILL.into(),
            Checkpoint::BackfillPart { index, .. } => backfill_part_name(*index),
            Checkpoint::Tail(_) => TAIL.into(),
            Checkpoint::Repair { run, .. } => repair_name(*run),
        }
    }

    fn position(&self) -> serde_json::Result<serde_json::Value> {
        match self {
            Checkpoint::Backfill(p) => serde_json::to_value(p),
            Checkpoint::BackfillPart { position, .. } => serde_json::to_value(position),
            Checkpoint::Tail(p) => serde_json::to_value(p),
            Checkpoint::Repair { position, .. } => serde_json::to_value(position),
        }
    }

    pub async fn save(&self, conn: &mut PgConnection) -> anyhow::Result<()> {
        sqlx::query(
            "INSERT INTO tsmigrate.checkpoints (name, position, updated_at) VALUES ($1, $2, now())
             ON CONFLICT (name) DO UPDATE SET position = EXCLUDED.position, updated_at = now()",
        )
        .bind(self.name())
        .bind(self.position()?)
        .execute(conn)
        .await?;
        Ok(())
    }
}

async fn load<T: DeserializeOwned>(conn: &mut PgConnection, name: &str) -> anyhow::Result<Option<T>> {
    let value: Option<serde_json::Value> =
        sqlx::query_scalar("SELECT position FROM tsmigrate.checkpoints WHERE name = $1").bind(name).fetch_optional(conn).await?;
    Ok(value.map(serde_json::from_value).transpose()?)
}

/// The backfill's saved position (`None`: it never ran, or the target is not prepared).
pub async fn backfill(conn: &mut PgConnection) -> anyhow::Result<Option<BackfillPosition>> {
    if !super::exists(&mut *conn, "checkpoints").await? {
        return Ok(None);
    }
    load(conn, BACKFILL).await
}

/// The saved position of stream `index` of a backfill copied in several.
pub async fn backfill_part(conn: &mut PgConnection, index: usize) -> anyhow::Result<Option<BackfillPosition>> {
    load(conn, &backfill_part_name(index)).await
}

pub async fn tail(conn: &mut PgConnection) -> anyhow::Result<Option<TailPosition>> {
    load(conn, TAIL).await
}

/// The saved position of the repair of validation run `run`.
pub async fn repair(conn: &mut PgConnection, run: i64) -> anyhow::Result<Option<RepairPosition>> {
    load(conn, &repair_name(run)).await
}

fn relay_name(group: &str) -> String {
    format!("relay:{group}")
}

/// Notes the newest outbox entry of a committed batch (epoch ms of its stream id), in the
/// batch's transaction. Several relays share the row; it only ever moves forward.
pub async fn note_relayed(conn: &mut PgConnection, group: &str, newest_entry_ms: i64) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO tsmigrate.checkpoints (name, position, updated_at) VALUES ($1, jsonb_build_object('newest_entry_ms', $2::bigint), now())
         ON CONFLICT (name) DO UPDATE SET position = EXCLUDED.position, updated_at = now()
         WHERE (tsmigrate.checkpoints.position->>'newest_entry_ms')::bigint < $2",
    )
    .bind(relay_name(group))
    .bind(newest_entry_ms)
    .execute(conn)
    .await?;
    Ok(())
}

/// The newest outbox entry relayed for `group` (epoch ms), if any was.
pub async fn relayed(conn: &mut PgConnection, group: &str) -> sqlx::Result<Option<i64>> {
    Ok(sqlx::query_scalar("SELECT (position->>'newest_entry_ms')::bigint FROM tsmigrate.checkpoints WHERE name = $1")
        .bind(relay_name(group))
        .fetch_optional(conn)
        .await?
        .flatten())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_repair_keeps_its_own_position() {
        assert_eq!(Checkpoint::Repair { run: 7, position: RepairPosition::default() }.name(), "repair:7");
        assert_ne!(Checkpoint::Tail(TailPosition { score: 1.0 }).name(), Checkpoint::Repair { run: 1, position: RepairPosition::default() }.name());
    }
}
