//! Possible gaps in dual-write, recorded in `tsmigrate.outbox_gaps`.
//!
//! The relay keeps the time of the newest outbox entry it committed (in the same transaction
//! as the rows). When it finds its consumer group gone — Redis lost the outbox, e.g. a restart
//! without persistence — it recreates the group and records the window from that time to
//! now: outbox entries written in it may never reach the target. `status` and `validate` show
//! open gaps; `tsmigrate backfill --from --to` over the window repairs what Redis still holds.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{PgConnection, PgPool};

use crate::phase::state;

/// One recorded gap.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, sqlx::FromRow)]
pub struct OutboxGap {
    pub id: i64,
    pub group_name: String,
    /// The newest entry relayed before the loss (the completion point when none was).
    pub window_from: Option<DateTime<Utc>>,
    /// When the relay recreated the group.
    pub window_to: DateTime<Utc>,
    pub detected_at: DateTime<Utc>,
    pub repaired_at: Option<DateTime<Utc>>,
}

impl OutboxGap {
    /// The command that copies what Redis still holds of the window into the target.
    pub fn repair_command(&self) -> String {
        let from = self.window_from.map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)).unwrap_or_else(|| "<completion point>".into());
        // Rounded up: the window ends inside that second.
        let to = (self.window_to + chrono::Duration::seconds(1)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        format!("tsmigrate backfill --from {from} --to {to}")
    }

    pub fn describe(&self) -> String {
        let from = self.window_from.map(|t| t.to_string()).unwrap_or_else(|| "?".into());
        format!(
            "possible gap #{} in dual-write: outbox entries from {from} to {} may not have reached the target (Redis lost the outbox)",
            self.id, self.window_to
        )
    }
}

fn checkpoint_name(group: &str) -> String {
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
    .bind(checkpoint_name(group))
    .bind(newest_entry_ms)
    .execute(conn)
    .await?;
    Ok(())
}

/// Records a gap for a consumer group the relay had to recreate at `now`. `None` when
/// dual-write is not on (then a missing group is not a loss: nothing was written to it).
pub async fn record(pool: &PgPool, group: &str, now: DateTime<Utc>) -> anyhow::Result<Option<OutboxGap>> {
    let mut conn = pool.acquire().await?;
    let state = state::load(&mut conn).await?;
    if !state.phase.dual_write_active() {
        return Ok(None);
    }
    let newest: Option<i64> = sqlx::query_scalar("SELECT (position->>'newest_entry_ms')::bigint FROM tsmigrate.checkpoints WHERE name = $1")
        .bind(checkpoint_name(group))
        .fetch_optional(&mut *conn)
        .await?
        .flatten();
    let from = newest.and_then(DateTime::from_timestamp_millis).or(state.completion_point);
    let gap: OutboxGap = sqlx::query_as(
        "INSERT INTO tsmigrate.outbox_gaps (group_name, window_from, window_to, detected_at) VALUES ($1, $2, $3, $3)
         RETURNING id, group_name, window_from, window_to, detected_at, repaired_at",
    )
    .bind(group)
    .bind(from)
    .bind(now)
    .fetch_one(&mut *conn)
    .await?;
    Ok(Some(gap))
}

/// Gaps not repaired yet, oldest first (none before `prepare` created the table).
pub async fn open(pool: &PgPool) -> sqlx::Result<Vec<OutboxGap>> {
    let exists: bool = sqlx::query_scalar("SELECT to_regclass('tsmigrate.outbox_gaps') IS NOT NULL").fetch_one(pool).await?;
    if !exists {
        return Ok(vec![]);
    }
    sqlx::query_as(
        "SELECT id, group_name, window_from, window_to, detected_at, repaired_at FROM tsmigrate.outbox_gaps WHERE repaired_at IS NULL ORDER BY window_to",
    )
    .fetch_all(pool)
    .await
}

/// Marks the open gaps that lie inside `[from, to]` repaired; returns how many.
pub async fn mark_repaired(conn: &mut PgConnection, from: DateTime<Utc>, to: DateTime<Utc>) -> sqlx::Result<u64> {
    let done = sqlx::query(
        "UPDATE tsmigrate.outbox_gaps SET repaired_at = now()
         WHERE repaired_at IS NULL AND coalesce(window_from, window_to) >= $1 AND window_to <= $2",
    )
    .bind(from)
    .bind(to)
    .execute(conn)
    .await?;
    Ok(done.rows_affected())
}
