//! `tsmigrate dual-write start|stop`.
//!
//! Start turns on the outbox flag in Redis (the ingest path reads it at most once per
//! [`DUAL_WRITE_FLAG_REFRESH`]), waits until every ingest server must have seen it, then
//! records the completion point T: every event stored before T is the backfill's job,
//! every event after it reaches the target through the outbox.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::json;

use super::state::{AuditEntry, PhaseGuard, StateChanges};
use super::{Phase, DUAL_WRITE_START, DUAL_WRITE_STOP};
use crate::config::Settings;
use crate::dual_write::relay;
use crate::http::DUAL_WRITE_FLAG_REFRESH;
use crate::legacy::LegacyKeys;

#[derive(Debug, Clone, Serialize)]
pub struct DualWriteReport {
    pub command: String,
    pub dry_run: bool,
    pub phase_before: Phase,
    pub phase_after: Phase,
    pub completion_point: Option<DateTime<Utc>>,
    pub outbox_stream: String,
    pub next_steps: Vec<String>,
}

pub async fn start(settings: &Settings, dry_run: bool) -> anyhow::Result<DualWriteReport> {
    let mut guard = PhaseGuard::acquire(&settings.database.url).await?;
    let state = guard.check(&DUAL_WRITE_START, json!({"dry_run": dry_run})).await?;
    let keys = LegacyKeys::from_settings(settings);
    let mut redis = crate::db::redis(settings).await?;
    let mut report = DualWriteReport {
        command: DUAL_WRITE_START.command.into(),
        dry_run,
        phase_before: state.phase,
        phase_after: state.phase,
        completion_point: None,
        outbox_stream: keys.outbox.clone(),
        next_steps: vec!["tsmigrate dual-write start   # without --dry-run".into()],
    };
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
    report.phase_after = DUAL_WRITE_START.to;
    report.completion_point = Some(completion_point);
    report.next_steps = DUAL_WRITE_START.to.next_steps();
    Ok(report)
}

pub async fn stop(settings: &Settings, dry_run: bool) -> anyhow::Result<DualWriteReport> {
    let mut guard = PhaseGuard::acquire(&settings.database.url).await?;
    let state = guard.check(&DUAL_WRITE_STOP, json!({"dry_run": dry_run})).await?;
    let keys = LegacyKeys::from_settings(settings);
    let mut report = DualWriteReport {
        command: DUAL_WRITE_STOP.command.into(),
        dry_run,
        phase_before: state.phase,
        phase_after: state.phase,
        completion_point: state.completion_point,
        outbox_stream: keys.outbox.clone(),
        next_steps: vec!["tsmigrate dual-write stop   # without --dry-run".into()],
    };
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
    report.phase_after = DUAL_WRITE_STOP.to;
    report.next_steps = vec![
        "the relay keeps draining what is already in the outbox".into(),
        "tsmigrate dual-write start   # when ready to try again".into(),
    ];
    Ok(report)
}

impl DualWriteReport {
    pub fn human(&self) -> String {
        let mut o = String::new();
        if self.dry_run {
            o.push_str(&format!("dry run: {} would move {} -> {}; nothing was changed\n", self.command, self.phase_before, if self.command.ends_with("start") { Phase::DualWriting } else { Phase::Prepared }));
        } else {
            o.push_str(&format!("{}: phase {} -> {}\n", self.command, self.phase_before, self.phase_after));
            if let Some(t) = self.completion_point.filter(|_| self.phase_after == Phase::DualWriting) {
                o.push_str(&format!("completion point T = {t}\n  events stored before T: the backfill copies them\n  events after T: ingest appends them to {} and the relay writes them\n", self.outbox_stream));
            }
        }
        o.push_str("next:\n");
        for s in &self.next_steps {
            o.push_str(&format!("  {s}\n"));
        }
        o
    }
}
