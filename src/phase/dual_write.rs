//! `tsmigrate dual-write start|stop`.
//!
//! Start turns on the outbox flag in Redis (the ingest path reads it at most once per
//! [`DUAL_WRITE_FLAG_REFRESH`]), waits until every ingest server must have seen it, then
//! records the completion point T: every event stored before T is the backfill's job,
//! every event after it reaches the target through the outbox.

use chrono::{DateTime, Utc};
use serde_json::json;

use super::state::{AuditEntry, PhaseGuard, StateChanges};
use super::{PhaseReport, DUAL_WRITE_START, DUAL_WRITE_STOP};
use crate::config::Settings;
use crate::dual_write::relay;
use crate::http::DUAL_WRITE_FLAG_REFRESH;
use crate::legacy::LegacyKeys;

pub async fn start(settings: &Settings, dry_run: bool) -> anyhow::Result<PhaseReport> {
    let mut guard = PhaseGuard::acquire(&settings.database.url, DUAL_WRITE_START.command).await?;
    let state = guard.check(&DUAL_WRITE_START, json!({"dry_run": dry_run})).await?;
    let keys = LegacyKeys::from_settings(settings);
    let mut redis = crate::db::redis(settings).await?;
    let mut report = PhaseReport::for_transition(&DUAL_WRITE_START, state.phase, dry_run, json!({"outbox": keys.outbox}));
    if dry_run {
        return Ok(report);
    }
    relay::ensure_group(&mut redis, &keys, &settings.redis.outbox_group).await?;
    redis::cmd("SET").arg(&keys.dual_write_flag).arg("1").query_async::<()>(&mut redis).await?;
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
    redis::cmd("DEL").arg(&keys.dual_write_flag).query_async::<()>(&mut redis).await?;
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
