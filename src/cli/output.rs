//! What a command prints. Text for people; with `--json`, exactly one JSON document on
//! stdout — the envelope of `schemas/envelope.schema.json` — whether the command succeeded,
//! found differences, was refused or failed. Errors also go to stderr as text, for the
//! people reading a CI log.

use serde::Serialize;
use serde_json::{json, Map, Value};

use crate::state::{NextStep, Phase};

/// The exit codes (documented in `tsmigrate --help`).
pub use crate::exit;

/// What a command hands back: its exit code, what it has to say, and how to show it.
#[derive(Debug)]
pub struct Reply {
    pub exit_code: u8,
    /// Why the exit code is not 0 (differences found, status not healthy...).
    pub error: Option<ErrorBody>,
    /// The phase when the command ended; `None` when it was not read.
    pub phase: Option<Phase>,
    pub details: Value,
    pub next_steps: Vec<NextStep>,
    /// The text for people (stdout).
    pub text: String,
}

impl Reply {
    /// A command that did what it was asked.
    pub fn done(details: impl Serialize, text: String) -> Reply {
        Reply { exit_code: exit::SUCCESS, error: None, phase: None, details: to_value(details), next_steps: vec![], text }
    }

    pub fn with_phase(self, phase: Phase) -> Reply {
        Reply { phase: Some(phase), ..self }
    }

    pub fn with_next_steps(self, next_steps: Vec<NextStep>) -> Reply {
        Reply { next_steps: crate::state::dedupe_next_steps(next_steps), ..self }
    }

    /// Ends with `exit_code` for the reason given (the details still say all it found).
    pub fn failing(self, exit_code: u8, error: ErrorBody) -> Reply {
        Reply { exit_code, error: Some(error), ..self }
    }
}

fn to_value(details: impl Serialize) -> Value {
    serde_json::to_value(details).unwrap_or(Value::Null)
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ErrorBody {
    pub message: String,
    /// What to do about it; `None` when there is no advice beyond the message.
    pub hint: Option<String>,
}

impl ErrorBody {
    pub fn new(message: impl Into<String>, hint: Option<String>) -> ErrorBody {
        ErrorBody { message: message.into(), hint }
    }

    /// The message and hint of an error and its causes. Errors here end their text with
    /// `\n  next: <what to do>`; that part is the hint.
    pub fn of(error: &anyhow::Error) -> ErrorBody {
        let mut messages = Vec::new();
        let mut hint = None;
        for cause in error.chain() {
            let (message, next) = split_hint(&cause.to_string());
            if !messages.iter().any(|m: &String| m.contains(&message)) {
                messages.push(message);
            }
            hint = hint.or(next);
        }
        ErrorBody { message: messages.join(": "), hint }
    }
}

pub use crate::state::split_hint;

/// An error as text for stderr: the message, each cause that says something the lines before
/// did not (a message often already quotes its cause), and each distinct `next:` once, last.
pub fn error_lines(error: &anyhow::Error) -> Vec<String> {
    let mut lines = Vec::new();
    let mut shown = String::new();
    let mut hints: Vec<String> = Vec::new();
    for (i, cause) in error.chain().enumerate() {
        let (message, hint) = split_hint(&cause.to_string());
        if i == 0 {
            lines.push(format!("error: {message}"));
        } else if !shown.contains(&message) {
            lines.push(format!("  caused by: {message}"));
        }
        shown.push_str(&message);
        hints.extend(hint.filter(|h| !hints.contains(h)));
    }
    lines.extend(hints.into_iter().map(|h| format!("  next: {h}")));
    lines
}

/// A hint that names a command, as a next step (`tsmigrate cutover   # why`).
fn hint_step(hint: &str) -> Option<NextStep> {
    let (command, why) = match hint.split_once('#') {
        Some((command, why)) => (command.trim(), why.trim()),
        None => (hint.trim(), ""),
    };
    command.starts_with("tsmigrate ").then(|| NextStep::run(command, why))
}

/// The one JSON shape every command prints with `--json`.
#[derive(Debug, Serialize)]
pub struct Envelope {
    /// The tsmigrate version that wrote it.
    pub version: &'static str,
    pub command: String,
    pub ok: bool,
    pub exit_code: u8,
    pub phase: Option<Phase>,
    pub error: Option<ErrorBody>,
    pub next_steps: Vec<NextStep>,
    pub details: Value,
}

impl Envelope {
    pub fn of_reply(command: &str, reply: &Reply) -> Envelope {
        Envelope {
            version: env!("CARGO_PKG_VERSION"),
            command: command.to_string(),
            ok: reply.exit_code == exit::SUCCESS,
            exit_code: reply.exit_code,
            phase: reply.phase,
            error: reply.error.clone(),
            next_steps: reply.next_steps.clone(),
            details: reply.details.clone(),
        }
    }

    /// A command that ended in an error: no details, the error, and its hint as a next
    /// step when the hint is a command.
    pub fn of_error(command: &str, exit_code: u8, error: ErrorBody, phase: Option<Phase>) -> Envelope {
        let next_steps = error.hint.as_deref().and_then(hint_step).into_iter().collect();
        Envelope {
            version: env!("CARGO_PKG_VERSION"),
            command: command.to_string(),
            ok: false,
            exit_code,
            phase,
            error: Some(error),
            next_steps,
            details: Value::Null,
        }
    }

    pub fn print(&self) {
        let text = serde_json::to_string_pretty(self).unwrap_or_else(|e| json!({"error": e.to_string()}).to_string());
        to_stdout(&(text + "\n"));
    }
}

/// Writes to stdout; a reader that went away (`tsmigrate status | head`) is not an error
/// worth a panic: the rest of the output has nowhere to go.
pub fn to_stdout(text: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
}

/// A phase command's details: what the command reports, and under `run` what the runner
/// did (dry run, the phase move, forcing, warnings).
pub fn phase_details(report: &crate::phase::PhaseReport<impl crate::phase::report::Details>) -> Value {
    let run = json!({
        "dry_run": report.dry_run,
        "phase_before": report.phase_before,
        "phase_after": report.phase_after,
        "forced": report.forced,
        "reason": report.reason,
        "warnings": report.warnings,
    });
    let mut details = match serde_json::to_value(&report.details) {
        Ok(Value::Object(map)) => map,
        Ok(Value::Null) | Err(_) => Map::new(),
        Ok(other) => Map::from_iter([("value".to_string(), other)]),
    };
    details.insert("run".into(), run);
    Value::Object(details)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_splits_into_message_and_hint_and_a_command_hint_is_a_next_step() {
        let error = anyhow::Error::new(crate::phase::Refusal {
            command: "cutover".into(),
            reason: "no clean validation".into(),
            next: "tsmigrate validate   # compare first".into(),
        });
        let body = ErrorBody::of(&error);
        assert_eq!(body, ErrorBody::new("cutover refused: no clean validation", Some("tsmigrate validate   # compare first".into())));
        let envelope = Envelope::of_error("cutover", 3, body, Some(Phase::Backfilled));
        assert_eq!(envelope.next_steps, vec![NextStep::run("tsmigrate validate", "compare first")]);
        assert!(!envelope.ok);
        let plain = Envelope::of_error("status", 2, ErrorBody::new("down", Some("check the server".into())), None);
        assert!(plain.next_steps.is_empty(), "advice that is not a command stays in the hint");
    }

    #[test]
    fn a_step_given_twice_is_shown_once_with_both_reasons() {
        let steps = vec![
            NextStep::run("tsmigrate repair", "copy the missing events"),
            NextStep::run("tsmigrate repair --delete-extra", "delete the extra ones"),
            NextStep::run("tsmigrate repair", "rewrite the different ones"),
            NextStep::run("tsmigrate repair", "copy the missing events"),
            NextStep::note("wait for the relay"),
            NextStep::note("wait for the relay"),
        ];
        let reply = Reply::done(json!({}), String::new()).with_next_steps(steps.clone());
        assert_eq!(
            reply.next_steps,
            vec![
                NextStep::run("tsmigrate repair", "copy the missing events; rewrite the different ones"),
                NextStep::run("tsmigrate repair --delete-extra", "delete the extra ones"),
                NextStep::note("wait for the relay"),
            ]
        );
        assert_eq!(crate::state::render_next_steps(&steps).matches("tsmigrate repair ").count(), 1 + 1, "repair once, --delete-extra once");
    }

    #[test]
    fn a_cause_the_message_already_quotes_and_a_repeated_fix_are_printed_once() {
        let error = anyhow::anyhow!("connection refused\n  next: start the server")
            .context("cannot connect to PostgreSQL at db: connection refused\n  next: start the server")
            .context("status is incomplete");
        assert_eq!(
            error_lines(&error),
            vec!["error: status is incomplete", "  caused by: cannot connect to PostgreSQL at db: connection refused", "  next: start the server"]
        );
    }

    #[test]
    fn causes_join_the_message() {
        let error = anyhow::anyhow!("relation \"x\" does not exist").context("cannot read the legacy table\n  next: run tsmigrate legacy setup");
        let body = ErrorBody::of(&error);
        assert_eq!(body.message, "cannot read the legacy table: relation \"x\" does not exist");
        assert_eq!(body.hint.as_deref(), Some("run tsmigrate legacy setup"));
    }
}
