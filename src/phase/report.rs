//! What a phase command reports: one type for every command, rendered as text or JSON.

use serde::Serialize;
use serde_json::Value;

use super::Phase;
use crate::state::{render_next_steps, NextStep};

/// A command's own findings: its JSON shape and the text lines that show them.
pub trait Details: Serialize {
    /// The lines between the headline and the warnings.
    fn text(&self) -> String;
}

/// Commands that report a few figures: one `key: value` line each.
impl Details for Value {
    fn text(&self) -> String {
        let Value::Object(map) = self else { return String::new() };
        map.iter()
            .map(|(key, value)| match value {
                // A time as people read it (seconds, UTC), not the wire's nanoseconds.
                Value::String(s) => match chrono::DateTime::parse_from_rfc3339(s) {
                    Ok(t) => format!("  {key}: {}\n", crate::human::utc(t.to_utc())),
                    Err(_) => format!("  {key}: {s}\n"),
                },
                other => format!("  {key}: {other}\n"),
            })
            .collect()
    }
}

/// What a phase command did, for text and `--json` output.
#[derive(Debug, Clone, Serialize)]
pub struct PhaseReport<D = Value> {
    pub command: String,
    pub dry_run: bool,
    pub phase_before: Phase,
    pub phase_after: Phase,
    pub forced: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// What the command found and did (gate evidence, objects dropped, figures).
    pub details: D,
    /// Risks the command noticed but that did not stop it.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    pub next_steps: Vec<NextStep>,
    /// What the gates say comes next from where the command left the migration (see
    /// `gates::outlook`); the default next steps.
    #[serde(skip)]
    pub gated_next: Vec<NextStep>,
}

impl<D: Details> PhaseReport<D> {
    /// The JSON answer: the report, with the keys of `details` repeated at the top level
    /// where they do not collide (the shape the per-command reports of earlier versions
    /// had, which scripts read).
    pub fn to_json(&self) -> Value {
        let mut json = serde_json::to_value(self).unwrap_or(Value::Null);
        if let (Some(Value::Object(details)), Value::Object(top)) = (json.get("details").cloned(), &mut json) {
            for (key, value) in details {
                top.entry(key).or_insert(value);
            }
        }
        json
    }

    pub fn human(&self) -> String {
        let mut o = self.headline();
        if self.forced {
            o.push_str(&format!("FORCED past the gate; reason recorded in the audit log: {}\n", self.reason.as_deref().unwrap_or("")));
        }
        o.push_str(&self.details.text());
        for warning in &self.warnings {
            o.push_str(&format!("WARNING: {warning}\n"));
        }
        o.push_str(&render_next_steps(&self.next_steps));
        o
    }

    fn headline(&self) -> String {
        match (self.dry_run, self.phase_before == self.phase_after) {
            (true, false) => {
                format!("dry run: {} can run; it would move {} -> {}; nothing was changed\n", self.command, self.phase_before, self.phase_after)
            }
            (true, true) => format!("dry run: {} can run; the phase would stay {}; nothing was changed\n", self.command, self.phase_after),
            (false, false) => format!("{}: done\nphase: {} -> {}\n", self.command, self.phase_before, self.phase_after),
            (false, true) => format!("{}: done\nphase: {} (unchanged)\n", self.command, self.phase_after),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn report(dry_run: bool) -> PhaseReport {
        PhaseReport {
            command: "cutover".into(),
            dry_run,
            phase_before: Phase::Validated,
            phase_after: Phase::ReadsSwitched,
            forced: false,
            reason: None,
            details: json!({"reads_from": "target", "phase_after": "shadowed"}),
            warnings: vec![],
            next_steps: vec![NextStep::run("tsmigrate retire-flush", "")],
            gated_next: vec![],
        }
    }

    #[test]
    fn text_names_the_move_and_the_next_steps() {
        let text = report(false).human();
        assert!(text.contains("phase: validated -> reads_switched"), "{text}");
        assert!(text.contains("  reads_from: target"), "{text}");
        assert!(text.ends_with("next:\n  tsmigrate retire-flush\n"), "{text}");
        assert!(report(true).human().contains("nothing was changed"));
    }

    #[test]
    fn json_repeats_details_at_the_top_without_overriding_the_report() {
        let json = report(false).to_json();
        assert_eq!(json["details"]["reads_from"], "target");
        assert_eq!(json["reads_from"], "target");
        assert_eq!(json["phase_after"], "reads_switched");
    }
}
