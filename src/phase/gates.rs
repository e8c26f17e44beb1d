//! The gates past the phase order, pure: given what the validation runs and the state
//! say, may the command run? Tested without a database.

use chrono::{DateTime, Duration, Utc};
use serde_json::json;

use crate::state::MigrationState;

#[derive(Debug, Clone)]
pub struct LatestValidation {
    pub id: i64,
    pub finished_at: DateTime<Utc>,
    pub result: String,
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
