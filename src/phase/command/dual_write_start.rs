//! `tsmigrate dual-write start`.
//!
//! Start turns on the outbox flag in Redis (the ingest path reads it at most once per
//! [`DUAL_WRITE_FLAG_REFRESH`]), waits until every ingest server must have seen it, then
//! records the completion point T: every event stored before T is the backfill's job,
//! every event after it reaches the target through the outbox. Run again while dual-write
//! is on, start repairs what Redis may have lost (flag, consumer group) and keeps T.
//!
//! Its gate: the Redis holding the outbox must not evict it. An evicting policy
//! ([`durability::OutboxDurability::evicting`]) refuses the start; `--force --reason` overrides
//! it, audited like every forced gate.

use crate::state::NextStep;
use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use crate::context::Context;
use crate::dual_write::flag::{self, DUAL_WRITE_FLAG_REFRESH};
use crate::dual_write::{durability, relay};
use crate::phase::runner::{Applied, Commit, PhaseCommand, Run};
use crate::phase::state::StateChanges;
use crate::phase::{Transition, DUAL_WRITE_START};

pub struct DualWriteStart;

impl PhaseCommand for DualWriteStart {
    type Details = Value;

    fn transition(&self) -> &'static Transition {
        &DUAL_WRITE_START
    }

    async fn gate(&self, ctx: &Context, run: &mut Run) -> anyhow::Result<Result<Value, String>> {
        if !run.moves() {
            // Already on: the repair run puts back what Redis lost, whatever its policy.
            return Ok(Ok(Value::Null));
        }
        let mut redis = ctx.redis().await?;
        let facts = durability::inspect_or_warn(&mut redis).await;
        Ok(match facts.evicting_reason() {
            Some(why) => Err(why),
            None => Ok(json!({"maxmemory_policy": facts.maxmemory_policy, "maxmemory": facts.maxmemory})),
        })
    }

    fn gate_fix(&self) -> Option<NextStep> {
        Some(NextStep::note(
            "set `maxmemory-policy noeviction` on the Redis holding the outbox (redis-cli CONFIG SET maxmemory-policy noeviction, and in redis.conf), \
             then run tsmigrate dual-write start again; or pass --force --reason \"...\" to accept that evictions lose events (audited)",
        ))
    }

    async fn apply(&self, ctx: &Context, run: &mut Run) -> anyhow::Result<Applied<Value>> {
        let mut redis = ctx.redis().await?;
        let warnings = durability::inspect_or_warn(&mut redis).await.warnings;
        let mut applied = if run.moves() { start(ctx, run.dry_run).await? } else { repair(ctx, run).await? };
        applied.warnings.splice(0..0, warnings);
        Ok(applied)
    }
}

async fn start(ctx: &Context, dry_run: bool) -> anyhow::Result<Applied<Value>> {
    let keys = &ctx.keys;
    let mut details = json!({"outbox": keys.outbox});
    if dry_run {
        return Ok(Applied::new(details, Commit::Nothing));
    }
    let mut redis = ctx.redis().await?;
    relay::ensure_group(&mut redis, keys, &ctx.settings.redis.outbox_group).await?;
    redis::cmd("SET").arg(&keys.dual_write_flag).arg(flag::ON).query_async::<()>(&mut redis).await?;
    // Every ingest server refreshes the flag within this interval; after it, no batch
    // can skip the outbox, so T below is a clean cut.
    tokio::time::sleep(DUAL_WRITE_FLAG_REFRESH + std::time::Duration::from_millis(250)).await;
    let (secs, micros): (i64, i64) = redis::cmd("TIME").query_async(&mut redis).await?;
    let completion_point = DateTime::from_timestamp(secs, (micros * 1000) as u32).unwrap_or_else(Utc::now);
    let audit = json!({"completion_point": completion_point, "outbox": keys.outbox});
    details["completion_point"] = json!(completion_point);
    details["backfill_copies"] = json!("every event stored before the completion point");
    details["relay_writes"] = json!(format!("every event after it, through {}", keys.outbox));
    let changes = StateChanges { completion_point: Some(Some(completion_point)), ..Default::default() };
    Ok(Applied { audit, ..Applied::new(details, Commit::Move(changes)) })
}

/// Once dual-write is already on (the state in PostgreSQL says so): puts back what Redis
/// may have lost — the flag and the consumer group — and keeps the phase and the
/// completion point. This is the way back after a Redis restart without persistence.
async fn repair(ctx: &Context, run: &Run) -> anyhow::Result<Applied<Value>> {
    let keys = &ctx.keys;
    let mut redis = ctx.redis().await?;
    let found: Option<String> = redis::cmd("GET").arg(&keys.dual_write_flag).query_async(&mut redis).await?;
    let mut details = json!({"outbox": keys.outbox, "dual_write": "already on", "flag_found": found});
    if !run.dry_run {
        let group_created = relay::ensure_group(&mut redis, keys, &ctx.settings.redis.outbox_group).await?;
        redis::cmd("SET").arg(&keys.dual_write_flag).arg(flag::ON).query_async::<()>(&mut redis).await?;
        details["flag_set"] = json!(found.as_deref() != Some(flag::ON));
        details["consumer_group_created"] = json!(group_created);
    }
    let mut applied = Applied::new(details, Commit::Stay);
    if found.as_deref() != Some(flag::ON) {
        applied.warnings.push(format!(
            "the dual-write flag was {} in Redis although the migration is in phase {}: Redis may have lost its data; `tsmigrate status` lists possible gaps in the outbox",
            found.as_deref().map(|v| format!("{v:?}")).unwrap_or_else(|| "missing".into()),
            run.state.phase
        ));
    }
    Ok(applied)
}
