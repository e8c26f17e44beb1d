//! The read-switch half of the migration: `cutover`, `reverse`, `retire-flush`,
//! `complete`, and the shadow-read switch. Gates read the recorded validation runs.

use chrono::{DateTime, Duration, Utc};
use serde_json::json;
use sqlx::PgConnection;

use super::state::{AuditEntry, MigrationState, PhaseGuard, StateChanges};
use super::{Phase, PhaseReport, Refusal, Transition, COMPLETE, CUTOVER, RETIRE_FLUSH, REVERSE};
use crate::config::Settings;
use crate::legacy::{flush, LegacyKeys};

/// `--force --reason`: pass a validation/soak gate (never the phase order), audited.
#[derive(Debug, Clone, Default)]
pub struct Force {
    pub reason: Option<String>,
}

impl Force {
    pub fn forced(&self) -> bool {
        self.reason.is_some()
    }
}

#[derive(Debug, Clone)]
pub struct LatestValidation {
    pub id: i64,
    pub finished_at: DateTime<Utc>,
    pub result: String,
}

pub async fn latest_validation(conn: &mut PgConnection) -> sqlx::Result<Option<LatestValidation>> {
    let row: Option<(i64, DateTime<Utc>, String)> =
        sqlx::query_as("SELECT id, finished_at, result FROM tsmigrate.validation_runs ORDER BY finished_at DESC, id DESC LIMIT 1").fetch_optional(conn).await?;
    Ok(row.map(|(id, finished_at, result)| LatestValidation { id, finished_at, result }))
}

/// The cutover gate: the latest validation is clean and fresher than `freshness`. Pure.
pub fn cutover_gate(latest: Option<&LatestValidation>, now: DateTime<Utc>, freshness: Duration) -> Result<serde_json::Value, String> {
    match latest {
        None => Err("no validation has run yet".into()),
        Some(v) if v.result != "clean" => Err(format!("the latest validation (#{}, {}) found {}", v.id, v.finished_at, v.result)),
        Some(v) if now - v.finished_at > freshness => Err(format!(
            "the latest clean validation (#{}) finished {} ago; the gate needs one from the last {}h",
            v.id,
            humanize(now - v.finished_at),
            freshness.num_hours()
        )),
        Some(v) => Ok(json!({"validation": v.id, "validated_at": v.finished_at})),
    }
}

/// The retire gate: reads switched for the soak period, and a clean validation since the switch. Pure.
pub fn retire_gate(state: &MigrationState, latest: Option<&LatestValidation>, now: DateTime<Utc>, soak: Duration) -> Result<serde_json::Value, String> {
    let switched = state.reads_switched_at.ok_or("reads were never switched")?;
    if now - switched < soak {
        return Err(format!("reads switched {} ago; the soak period is {}", humanize(now - switched), humanize(soak)));
    }
    match latest {
        Some(v) if v.result == "clean" && v.finished_at > switched => Ok(json!({"validation": v.id, "reads_switched_at": switched})),
        Some(v) if v.finished_at > switched => Err(format!("the latest validation since the switch (#{}) found {}", v.id, v.result)),
        _ => Err("no validation has run since reads were switched".into()),
    }
}

fn humanize(d: Duration) -> String {
    let s = d.num_seconds().max(0);
    match s {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s => format!("{}h", s / 3600),
    }
}

async fn begin(settings: &Settings, transition: &Transition, dry_run: bool) -> anyhow::Result<(PhaseGuard, MigrationState)> {
    let mut guard = PhaseGuard::acquire(&settings.database.url, transition.command).await?;
    let state = guard.check(transition, json!({"dry_run": dry_run})).await?;
    Ok((guard, state))
}

/// Evaluates a gate; a refusal is audited unless forced.
async fn pass_gate(
    guard: &mut PhaseGuard,
    transition: &Transition,
    phase: Phase,
    gate: Result<serde_json::Value, String>,
    force: &Force,
) -> anyhow::Result<serde_json::Value> {
    match gate {
        Ok(evidence) => Ok(evidence),
        Err(why) if force.forced() => Ok(json!({"gate_failed": why})),
        Err(why) => {
            let refusal = Refusal {
                command: transition.command.into(),
                reason: why,
                next: "tsmigrate validate   # or pass --force --reason \"...\" to proceed anyway (audited)".into(),
            };
            guard.audit_refusal(transition.command, phase, &refusal, json!({})).await?;
            Err(refusal.into())
        }
    }
}

fn report(transition: &Transition, state: &MigrationState, dry_run: bool, force: &Force, details: serde_json::Value) -> PhaseReport {
    PhaseReport { forced: force.forced(), reason: force.reason.clone(), ..PhaseReport::for_transition(transition, state.phase, dry_run, details) }
}

async fn commit(
    guard: &mut PhaseGuard,
    transition: &Transition,
    state: &MigrationState,
    changes: StateChanges,
    force: &Force,
    details: &serde_json::Value,
) -> anyhow::Result<()> {
    guard.commit(transition, state.phase, changes, AuditEntry { forced: force.forced(), reason: force.reason.clone(), details: details.clone() }).await
}

pub async fn cutover(settings: &Settings, dry_run: bool, force: Force) -> anyhow::Result<PhaseReport> {
    let (mut guard, state) = begin(settings, &CUTOVER, dry_run).await?;
    let latest = latest_validation(guard.conn()).await?;
    let freshness = Duration::hours(i64::from(settings.migration.validation_freshness_hours));
    let evidence = pass_gate(&mut guard, &CUTOVER, state.phase, cutover_gate(latest.as_ref(), Utc::now(), freshness), &force).await?;
    let details = json!({"reads_from": "target", "gate": evidence});
    if !dry_run {
        let changes = StateChanges { read_source: Some("target"), reads_switched_at: Some(Some(Utc::now())), ..Default::default() };
        commit(&mut guard, &CUTOVER, &state, changes, &force, &details).await?;
    }
    Ok(report(&CUTOVER, &state, dry_run, &force, details))
}

pub async fn reverse(settings: &Settings, dry_run: bool) -> anyhow::Result<PhaseReport> {
    let (mut guard, state) = begin(settings, &REVERSE, dry_run).await?;
    let mut details = json!({"reads_from": "legacy"});
    if !dry_run {
        if state.phase == Phase::FlushRetired {
            // Legacy reads need the legacy tables: bring the flush back and fill the hours it skipped.
            let keys = LegacyKeys::from_settings(settings);
            let mut redis = crate::db::redis_bulk(settings).await?;
            redis::cmd("DEL").arg(&keys.flush_retired).query_async::<()>(&mut redis).await?;
            let legacy = crate::db::legacy_pool(settings).await?;
            let tz = settings.target.timezone();
            let from = state.flush_retired_at.unwrap_or_else(Utc::now) - Duration::hours(1);
            let refill = flush::flush_range(&mut redis, &legacy, &keys, &settings.legacy, tz, from, Utc::now()).await?;
            details["legacy_flush_restored"] = json!({"hours_refilled": refill.hours});
        }
        let changes = StateChanges { read_source: Some("legacy"), reads_switched_at: Some(None), flush_retired_at: Some(None), ..Default::default() };
        commit(&mut guard, &REVERSE, &state, changes, &Force::default(), &details).await?;
    }
    Ok(report(&REVERSE, &state, dry_run, &Force::default(), details))
}

pub async fn retire_flush(settings: &Settings, dry_run: bool, soak: Option<Duration>, force: Force) -> anyhow::Result<PhaseReport> {
    let (mut guard, state) = begin(settings, &RETIRE_FLUSH, dry_run).await?;
    let latest = latest_validation(guard.conn()).await?;
    let soak = soak.unwrap_or_else(|| Duration::hours(i64::from(settings.migration.soak_hours)));
    let evidence = pass_gate(&mut guard, &RETIRE_FLUSH, state.phase, retire_gate(&state, latest.as_ref(), Utc::now(), soak), &force).await?;
    let keys = LegacyKeys::from_settings(settings);
    let details = json!({
        "gate": evidence,
        "soak_seconds": soak.num_seconds(),
        "control_key": keys.flush_retired,
        "external_workers": format!("check `GET {}` (\"1\" = retired) before flushing; see runbooks/05-retire-flush.md", keys.flush_retired),
    });
    if !dry_run {
        let mut redis = crate::db::redis(settings).await?;
        redis::cmd("SET").arg(&keys.flush_retired).arg("1").query_async::<()>(&mut redis).await?;
        let changes = StateChanges { flush_retired_at: Some(Some(Utc::now())), ..Default::default() };
        commit(&mut guard, &RETIRE_FLUSH, &state, changes, &force, &details).await?;
    }
    Ok(report(&RETIRE_FLUSH, &state, dry_run, &force, details))
}

pub async fn complete(settings: &Settings, dry_run: bool) -> anyhow::Result<PhaseReport> {
    let (mut guard, state) = begin(settings, &COMPLETE, dry_run).await?;
    let keys = LegacyKeys::from_settings(settings);
    let details = json!({
        "legacy_keys_expire_after_days": settings.migration.legacy_key_expiry_days,
        "legacy_keys": [keys.events, keys.event_counters, keys.category_counters, keys.sessions],
    });
    if !dry_run {
        commit(&mut guard, &COMPLETE, &state, StateChanges::default(), &Force::default(), &details).await?;
        expire_legacy_keys(settings).await?;
    }
    Ok(report(&COMPLETE, &state, dry_run, &Force::default(), details))
}

/// After completion the legacy keys are only history: give them an expiry (kept if one is set).
pub async fn expire_legacy_keys(settings: &Settings) -> anyhow::Result<u64> {
    let keys = LegacyKeys::from_settings(settings);
    let mut redis = crate::db::redis(settings).await?;
    let seconds = i64::from(settings.migration.legacy_key_expiry_days) * 86_400;
    let mut set = 0;
    for key in [&keys.events, &keys.event_counters, &keys.category_counters, &keys.sessions] {
        let applied: i64 = redis::cmd("EXPIRE").arg(key).arg(seconds).arg("NX").query_async(&mut redis).await?;
        set += applied as u64;
    }
    Ok(set)
}

/// Shadow reads on or off: serve from the current source and compare with the other one.
pub async fn set_shadow(settings: &Settings, on: bool) -> anyhow::Result<PhaseReport> {
    let mut guard = PhaseGuard::acquire(&settings.database.url, if on { "shadow on" } else { "shadow off" }).await?;
    let state = guard.state().await?;
    if state.phase == Phase::New || state.phase < Phase::Backfilled {
        return Err(Refusal {
            command: "shadow".into(),
            reason: format!("the migration is in phase {}; shadow reads compare with the target, which is complete only after backfill", state.phase),
            next: state.phase.next_steps().first().cloned().unwrap_or_default(),
        }
        .into());
    }
    sqlx::query("UPDATE tsmigrate.migration_state SET shadow = $1, updated_at = now()").bind(on).execute(guard.conn()).await?;
    guard.audit_noop(if on { "shadow on" } else { "shadow off" }, state.phase, json!({"shadow": on})).await?;
    Ok(PhaseReport {
        command: format!("shadow {}", if on { "on" } else { "off" }),
        dry_run: false,
        phase_before: state.phase,
        phase_after: state.phase,
        forced: false,
        reason: None,
        details: json!({"serving": state.read_source, "comparing_with": if on { Some(if state.read_source == "legacy" { "target" } else { "legacy" }) } else { None }}),
        warnings: vec![],
        next_steps: state.phase.next_steps(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(id: i64, ago_h: i64, result: &str, now: DateTime<Utc>) -> LatestValidation {
        LatestValidation { id, finished_at: now - Duration::hours(ago_h), result: result.into() }
    }

    #[test]
    fn cutover_needs_a_fresh_clean_validation() {
        let now = Utc::now();
        let day = Duration::hours(24);
        assert!(cutover_gate(None, now, day).unwrap_err().contains("no validation"));
        assert!(cutover_gate(Some(&run(1, 1, "differences", now)), now, day).unwrap_err().contains("found differences"));
        assert!(cutover_gate(Some(&run(2, 30, "clean", now)), now, day).unwrap_err().contains("30h ago"));
        assert!(cutover_gate(Some(&run(3, 2, "clean", now)), now, day).is_ok());
    }

    #[test]
    fn retire_needs_the_soak_and_a_clean_validation_after_the_switch() {
        let now = Utc::now();
        let mut state = MigrationState::new_migration();
        state.reads_switched_at = Some(now - Duration::hours(30));
        let soak = Duration::hours(24);
        assert!(retire_gate(&state, Some(&run(1, 31, "clean", now)), now, soak).unwrap_err().contains("since reads were switched"));
        assert!(retire_gate(&state, Some(&run(2, 1, "differences", now)), now, soak).unwrap_err().contains("found differences"));
        assert!(retire_gate(&state, Some(&run(3, 1, "clean", now)), now, soak).is_ok());
        state.reads_switched_at = Some(now - Duration::hours(2));
        assert!(retire_gate(&state, Some(&run(4, 1, "clean", now)), now, soak).unwrap_err().contains("soak period"));
    }
}
