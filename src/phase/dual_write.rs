//! `tsmigrate dual-write start|stop`.
//!
//! Start turns on the outbox flag in Redis (the ingest path reads it at most once per
//! [`DUAL_WRITE_FLAG_REFRESH`]), waits until every ingest server must have seen it, then
//! records the completion point T: every event stored before T is the backfill's job,
//! every event after it reaches the target through the outbox. Run again while dual-write
//! is on, start repairs what Redis may have lost (flag, consumer group) and keeps T.

use chrono::{DateTime, Utc};
use serde_json::json;

use super::state::{AuditEntry, PhaseGuard, StateChanges};
use super::{Phase, PhaseReport, DUAL_WRITE_START, DUAL_WRITE_STOP};
use crate::config::Settings;
use crate::dual_write::{durability, flag, relay};
use crate::http::DUAL_WRITE_FLAG_REFRESH;
use crate::legacy::LegacyKeys;

pub async fn start(settings: &Settings, dry_run: bool) -> anyhow::Result<PhaseReport> {
    let mut guard = PhaseGuard::acquire(&settings.database.url, DUAL_WRITE_START.command).await?;
    let current = guard.state().await?;
    if current.phase.dual_write_active() {
        return repair(settings, &mut guard, current.phase, dry_run).await;
    }
    let state = guard.check(&DUAL_WRITE_START, json!({"dry_run": dry_run})).await?;
    let keys = LegacyKeys::from_settings(settings);
    let mut redis = crate::db::redis(settings).await?;
    let mut report = PhaseReport::for_transition(&DUAL_WRITE_START, state.phase, dry_run, json!({"outbox": keys.outbox}));
    report.warnings = durability::inspect_or_warn(&mut redis).await.warnings;
    if dry_run {
        return Ok(report);
    }
    relay::ensure_group(&mut redis, &keys, &settings.redis.outbox_group).await?;
    redis::cmd("SET").arg(&keys.dual_write_flag).arg(flag::ON).query_async::<()>(&mut redis).await?;
    // Every ingest server refreshes the flag within this interval; after it, no batch
    // can skip the outbox, so T below is a clean cut.
    tokio::time::sleep(DUAL_WRITE_FLAG_REFRESH + std::time::Duration::from_millis(250)).await;
    let (secs, micros): (i64, i64) = redis::cmd("TIME").query_async(&mut redis).await?;
    let completion_point = DateTime::from_timestamp(secs, (micros * 1000) as u32).unwrap_or_else(Utc::now);
    guard
        .commit(
            &DUAL_WRITE_START,
            state.phase,
            StateChanges { completion_point: Some(Some(completion_point)), ..Default::default() },
            AuditEntry { details: json!({"completion_point": completion_point, "outbox": keys.outbox}), ..Default::default() },
        )
        .await?;
    report.details["completion_point"] = json!(completion_point);
    report.details["backfill_copies"] = json!("every event stored before the completion point");
    report.details["relay_writes"] = json!(format!("every event after it, through {}", keys.outbox));
    Ok(report)
}

/// `dual-write start` once dual-write is already on (the state in PostgreSQL says so): puts
/// back what Redis may have lost — the flag and the consumer group — and keeps the phase and
/// the completion point. This is the way back after a Redis restart without persistence.
async fn repair(settings: &Settings, guard: &mut PhaseGuard, phase: Phase, dry_run: bool) -> anyhow::Result<PhaseReport> {
    let keys = LegacyKeys::from_settings(settings);
    let mut redis = crate::db::redis(settings).await?;
    let found: Option<String> = redis::cmd("GET").arg(&keys.dual_write_flag).query_async(&mut redis).await?;
    let mut details = json!({"outbox": keys.outbox, "dual_write": "already on", "flag_found": found});
    if !dry_run {
        let group_created = relay::ensure_group(&mut redis, &keys, &settings.redis.outbox_group).await?;
        redis::cmd("SET").arg(&keys.dual_write_flag).arg(flag::ON).query_async::<()>(&mut redis).await?;
        details["flag_set"] = json!(found.as_deref() != Some(flag::ON));
        details["consumer_group_created"] = json!(group_created);
        guard.audit_noop(DUAL_WRITE_START.command, phase, details.clone()).await?;
    }
    let mut report = PhaseReport { phase_after: phase, ..PhaseReport::for_transition(&DUAL_WRITE_START, phase, dry_run, details) };
    report.warnings = durability::inspect_or_warn(&mut redis).await.warnings;
    if found.as_deref() != Some(flag::ON) {
        report.warnings.push(format!(
            "the dual-write flag was {} in Redis although the migration is in phase {phase}: Redis may have lost its data; `tsmigrate status` lists possible gaps in the outbox",
            found.as_deref().map(|v| format!("{v:?}")).unwrap_or_else(|| "missing".into())
        ));
    }
    report.next_steps = if dry_run { vec!["tsmigrate dual-write start   # without --dry-run".into()] } else { phase.next_steps() };
    Ok(report)
}

pub async fn stop(settings: &Settings, dry_run: bool) -> anyhow::Result<PhaseReport> {
    let mut guard = PhaseGuard::acquire(&settings.database.url, DUAL_WRITE_STOP.command).await?;
    let state = guard.check(&DUAL_WRITE_STOP, json!({"dry_run": dry_run})).await?;
    let keys = LegacyKeys::from_settings(settings);
    let mut report = PhaseReport::for_transition(
        &DUAL_WRITE_STOP,
        state.phase,
        dry_run,
        json!({"outbox": keys.outbox, "previous_completion_point": state.completion_point}),
    );
    if dry_run {
        return Ok(report);
    }
    let mut redis = crate::db::redis(settings).await?;
    // "0", not a deleted key: a missing flag means Redis lost it, and the daemon restores it
    // from the migration state; "0" is an explicit off.
    redis::cmd("SET").arg(&keys.dual_write_flag).arg(flag::OFF).query_async::<()>(&mut redis).await?;
    guard
        .commit(
            &DUAL_WRITE_STOP,
            state.phase,
            StateChanges { completion_point: Some(None), ..Default::default() },
            AuditEntry { details: json!({"previous_completion_point": state.completion_point}), ..Default::default() },
        )
        .await?;
    report.next_steps = vec!["the relay keeps draining what is already in the outbox".into(), "tsmigrate dual-write start   # when ready to try again".into()];
    Ok(report)
}
