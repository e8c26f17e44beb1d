//! Possible gaps in dual-write, recorded in `tsmigrate.outbox_gaps`.
//!
//! The relay keeps the time of the newest outbox entry it committed (in the same transaction
//! as the rows). When it finds its consumer group gone — Redis lost the outbox, e.g. a restart
//! without persistence — it recreates the group and records the window from that time to
//! now: outbox entries written in it may never reach the target. The daemon also records a
//! window in which Redis evicted keys during dual-write ([`record_evictions`]): evicted
//! events (outbox entries, sorted-set members) are in neither system. `status` and `validate`
//! show open gaps; `tsmigrate backfill --from --to` over the window repairs what Redis still
//! holds, and closes a gap only when it read events of the gap's window from Redis. A window
//! Redis holds nothing for stays open — a loss, not a repair — until the operator accepts it
//! (`--accept-loss REASON`, audited).

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{PgConnection, PgPool};

use super::{checkpoint, migration};

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
    /// `outbox_lost` (the consumer group was missing) or `evicted` (Redis evicted keys).
    pub cause: String,
    /// For `evicted`: how many keys Redis evicted in the window.
    pub evicted_keys: Option<i64>,
    /// Set when an operator accepted the loss (the gap closed without a copy).
    pub acknowledged_reason: Option<String>,
}

/// The cause of a gap opened by evictions.
pub const EVICTED: &str = "evicted";
const COLUMNS: &str = "id, group_name, window_from, window_to, detected_at, repaired_at, cause, evicted_keys, acknowledged_reason";

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
        if self.cause == EVICTED {
            return format!(
                "possible loss #{}: Redis evicted {} key(s) between {from} and {} while dual-write was on (its maxmemory-policy evicts): \
                 events accepted before then and not yet in the target may be in neither system",
                self.id,
                self.evicted_keys.map(|n| n.to_string()).unwrap_or_else(|| "some".into()),
                self.window_to
            );
        }
        format!(
            "possible gap #{} in dual-write: outbox entries from {from} to {} may not have reached the target (Redis lost the outbox)",
            self.id, self.window_to
        )
    }
}

/// Records a gap for a consumer group the relay had to recreate at `now`. `None` when
/// dual-write is not on (then a missing group is not a loss: nothing was written to it).
pub async fn record(pool: &PgPool, group: &str, now: DateTime<Utc>) -> anyhow::Result<Option<OutboxGap>> {
    let mut conn = pool.acquire().await?;
    let state = migration::load(&mut conn).await?;
    if !state.phase.dual_write_active() {
        return Ok(None);
    }
    let newest = checkpoint::relayed(&mut conn, group).await?;
    let from = newest.and_then(DateTime::from_timestamp_millis).or(state.completion_point);
    let gap: OutboxGap = sqlx::query_as(&format!(
        "INSERT INTO tsmigrate.outbox_gaps (group_name, window_from, window_to, detected_at) VALUES ($1, $2, $3, $3) RETURNING {COLUMNS}"
    ))
    .bind(group)
    .bind(from)
    .bind(now)
    .fetch_one(&mut *conn)
    .await?;
    Ok(Some(gap))
}

/// Gaps not repaired yet, oldest first (none before `prepare` created the table).
pub async fn open(pool: &PgPool) -> sqlx::Result<Vec<OutboxGap>> {
    if !super::exists(pool, "outbox_gaps").await? {
        return Ok(vec![]);
    }
    sqlx::query_as(&format!("SELECT {COLUMNS} FROM tsmigrate.outbox_gaps WHERE repaired_at IS NULL ORDER BY window_to")).fetch_all(pool).await
}

/// The open gaps that lie inside `[from, to]`, oldest first.
pub async fn open_within(conn: &mut PgConnection, from: DateTime<Utc>, to: DateTime<Utc>) -> sqlx::Result<Vec<OutboxGap>> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM tsmigrate.outbox_gaps
         WHERE repaired_at IS NULL AND coalesce(window_from, window_to) >= $1 AND window_to <= $2 ORDER BY window_to"
    ))
    .bind(from)
    .bind(to)
    .fetch_all(conn)
    .await
}

/// Closes gap `id`: repaired by a copy that read its window, or, with `accepted_loss`, an
/// operator's acceptance that what Redis no longer holds is lost.
pub async fn close(conn: &mut PgConnection, id: i64, accepted_loss: Option<&str>) -> sqlx::Result<()> {
    sqlx::query("UPDATE tsmigrate.outbox_gaps SET repaired_at = now(), acknowledged_reason = $2 WHERE id = $1 AND repaired_at IS NULL")
        .bind(id)
        .bind(accepted_loss)
        .execute(conn)
        .await?;
    Ok(())
}

fn evictions_checkpoint() -> &'static str {
    "redis:evicted_keys"
}

/// Compares Redis's `evicted_keys` with the last look (a checkpoint row, shared by every
/// replica) and, when it grew while dual-write is on, records the window since that look as
/// a possible loss. Returns the gap recorded. A counter that went down means Redis restarted
/// (a lost outbox is the relay's to find); the first look only sets the baseline, unless
/// dual-write is on and Redis has evicted already: then the window starts at the completion point.
pub async fn record_evictions(pool: &PgPool, group: &str, evicted_keys: u64, now: DateTime<Utc>) -> anyhow::Result<Option<OutboxGap>> {
    let mut tx = pool.begin().await?;
    let state = migration::load(&mut tx).await?;
    sqlx::query(
        "INSERT INTO tsmigrate.checkpoints (name, position, updated_at) VALUES ($1, jsonb_build_object('evicted_keys', -1, 'at', $2::timestamptz), now())
         ON CONFLICT (name) DO NOTHING",
    )
    .bind(evictions_checkpoint())
    .bind(now)
    .execute(&mut *tx)
    .await?;
    let (seen, at): (i64, Option<DateTime<Utc>>) =
        sqlx::query_as("SELECT (position->>'evicted_keys')::bigint, (position->>'at')::timestamptz FROM tsmigrate.checkpoints WHERE name = $1 FOR UPDATE")
            .bind(evictions_checkpoint())
            .fetch_one(&mut *tx)
            .await?;
    let evicted = evicted_keys as i64;
    let grew = if seen < 0 { evicted } else { evicted - seen };
    let mut gap = None;
    if grew > 0 && seen <= evicted && state.phase.dual_write_active() {
        let from = if seen < 0 { state.completion_point } else { at.or(state.completion_point) };
        let recorded: OutboxGap = sqlx::query_as(&format!(
            "INSERT INTO tsmigrate.outbox_gaps (group_name, window_from, window_to, detected_at, cause, evicted_keys) VALUES ($1, $2, $3, $3, $4, $5) RETURNING {COLUMNS}"
        ))
        .bind(group)
        .bind(from)
        .bind(now)
        .bind(EVICTED)
        .bind(grew)
        .fetch_one(&mut *tx)
        .await?;
        gap = Some(recorded);
    }
    sqlx::query(
        "UPDATE tsmigrate.checkpoints SET position = jsonb_build_object('evicted_keys', $2::bigint, 'at', $3::timestamptz), updated_at = now() WHERE name = $1",
    )
    .bind(evictions_checkpoint())
    .bind(evicted)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(gap)
}

/// The cause of a gap opened by a change of Redis master (a failover, a master restarted).
pub const FAILOVER: &str = "failover";

fn masters_checkpoint() -> &'static str {
    "redis:masters"
}

/// Compares the Redis masters (`address run_id` each, as `observe` reads them from `INFO`)
/// with the last look, kept in a checkpoint row like [`record_evictions`]'s. A master of the
/// last look that is gone, or runs another process now, during dual-write, is a possible gap:
/// replication is asynchronous, so writes the old master acknowledged may never have reached
/// the replica that took over. The window runs from the last look at which it still served to
/// now. A new master (a node added, a replica promoted) is no loss by itself.
pub async fn record_master_change(pool: &PgPool, group: &str, masters: &[String], now: DateTime<Utc>) -> anyhow::Result<Option<OutboxGap>> {
    let mut tx = pool.begin().await?;
    let state = migration::load(&mut tx).await?;
    let previous: Option<(serde_json::Value, Option<DateTime<Utc>>)> =
        sqlx::query_as("SELECT position->'masters', (position->>'at')::timestamptz FROM tsmigrate.checkpoints WHERE name = $1 FOR UPDATE")
            .bind(masters_checkpoint())
            .fetch_optional(&mut *tx)
            .await?;
    let mut gap = None;
    if let Some((seen, at)) = previous {
        let seen: Vec<String> = serde_json::from_value(seen).unwrap_or_default();
        let replaced = seen.iter().any(|m| !masters.contains(m));
        if replaced && state.phase.dual_write_active() {
            let recorded: OutboxGap = sqlx::query_as(&format!(
                "INSERT INTO tsmigrate.outbox_gaps (group_name, window_from, window_to, detected_at, cause) VALUES ($1, $2, $3, $3, $4) RETURNING {COLUMNS}"
            ))
            .bind(group)
            .bind(at.or(state.completion_point))
            .bind(now)
            .bind(FAILOVER)
            .fetch_one(&mut *tx)
            .await?;
            gap = Some(recorded);
        }
    }
    sqlx::query(
        "INSERT INTO tsmigrate.checkpoints (name, position, updated_at) VALUES ($1, jsonb_build_object('masters', $2::jsonb, 'at', $3::timestamptz), now())
         ON CONFLICT (name) DO UPDATE SET position = EXCLUDED.position, updated_at = now()",
    )
    .bind(masters_checkpoint())
    .bind(serde_json::json!(masters))
    .bind(now)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(gap)
}
