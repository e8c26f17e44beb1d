//! `tsmigrate findings`: the event-level differences a validation run recorded, as text,
//! the `--json` envelope, or CSV for a spreadsheet. Reads only.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;

use crate::context::Context;
use crate::ledger::validation::{self, Depth, DifferenceKind, FoundKey, ValidationRun, Verdict};
use crate::validate::window::show_hour;

use super::output::Envelope;
use super::Reply;

/// `tsmigrate findings` (its help is the command's doc comment in `cli::Command`).
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The validation run (its id, as `validate` and `status` show it). Default: the latest.
    #[arg(long, value_name = "N")]
    pub run: Option<i64>,
    /// Only these kinds (repeat the option or separate with commas). Default: every kind.
    #[arg(long, value_enum, value_delimiter = ',')]
    pub kind: Vec<KindArg>,
    /// Output format: text, json (the --json envelope) or csv.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum KindArg {
    /// In Redis, not in the target (repair copies them).
    Missing,
    /// In the target, not in Redis (repair --delete-extra deletes them).
    Extra,
    /// The same event id with other content or time (repair rewrites them from Redis).
    Different,
}

impl From<KindArg> for DifferenceKind {
    fn from(kind: KindArg) -> DifferenceKind {
        match kind {
            KindArg::Missing => DifferenceKind::Missing,
            KindArg::Extra => DifferenceKind::Extra,
            KindArg::Different => DifferenceKind::Different,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Text,
    Json,
    Csv,
}

/// The run, as `details.run` names it.
#[derive(Debug, Serialize)]
struct RunShown {
    id: i64,
    finished_at: DateTime<Utc>,
    /// `clean`, `differences` or `error` (could not run), as recorded.
    result: &'static str,
    depth: Depth,
    window_from: Option<DateTime<Utc>>,
    window_to: Option<DateTime<Utc>>,
    #[serde(skip)]
    verdict: Verdict,
}

impl From<&ValidationRun> for RunShown {
    fn from(run: &ValidationRun) -> RunShown {
        RunShown {
            id: run.id,
            finished_at: run.finished_at,
            result: run.verdict.as_str(),
            depth: run.depth,
            window_from: run.window.map(|w| w.0),
            window_to: run.window.map(|w| w.1),
            verdict: run.verdict,
        }
    }
}

/// What `--json` puts in `details`.
#[derive(Debug, Serialize)]
struct Findings {
    run: RunShown,
    /// The kinds asked for (every kind when none was).
    kinds: Vec<DifferenceKind>,
    /// How many findings of those kinds the run recorded (all of them are listed).
    total: usize,
    findings: Vec<FoundKey>,
}

pub async fn run(args: Args, ctx: &Context, json: bool) -> anyhow::Result<Reply> {
    if json && args.format == Format::Csv {
        anyhow::bail!("--json and --format csv ask for two formats on stdout\n  next: drop one of them (tsmigrate findings --format csv > findings.csv)");
    }
    let state = crate::ledger::migration::load_from_pool(&ctx.target).await?;
    if state.phase == crate::state::Phase::New {
        anyhow::bail!("the target is not prepared: no validation has run here\n  next: tsmigrate status");
    }
    let mut conn = ctx.target.acquire().await?;
    let Some(run) = validation::run(&mut conn, args.run).await? else {
        return Err(match (args.run, validation::latest(&mut conn).await?) {
            (Some(id), Some(latest)) => {
                anyhow::anyhow!("there is no validation run #{id}; the latest is #{}\n  next: tsmigrate findings --run {}", latest.id, latest.id)
            }
            _ => anyhow::anyhow!("no validation run is recorded yet\n  next: tsmigrate validate"),
        });
    };
    let mut kinds: Vec<DifferenceKind> = args.kind.iter().copied().map(DifferenceKind::from).collect();
    kinds.sort();
    kinds.dedup();
    let findings = validation::findings(&ctx.target, run.id, &kinds).await?;
    let shown = if kinds.is_empty() { DifferenceKind::ALL.to_vec() } else { kinds };
    let details = Findings { total: findings.len(), kinds: shown, run: RunShown::from(&run), findings };
    let text = match args.format {
        Format::Text => text(&details),
        Format::Csv => csv(&details),
        Format::Json => String::new(),
    };
    let mut reply = Reply::done(&details, text).with_phase(state.phase);
    if args.format == Format::Json {
        // `--format json` prints what `--json` would.
        reply.text = serde_json::to_string_pretty(&Envelope::of_reply("findings", &reply))? + "\n";
    }
    Ok(reply)
}

/// `2026-11-19T03:12:01.123Z`; empty when the event is not on that side.
fn show_time(t: Option<DateTime<Utc>>) -> String {
    t.map(|t| t.to_rfc3339_opts(SecondsFormat::Millis, true)).unwrap_or_default()
}

fn text(f: &Findings) -> String {
    let run = &f.run;
    let window = match (run.window_from, run.window_to) {
        (Some(from), Some(to)) => format!(", window {} .. {}", show_hour(from), show_hour(to)),
        _ => String::new(),
    };
    let kinds: Vec<&str> = f.kinds.iter().map(|k| k.as_str()).collect();
    let mut o = format!(
        "validation run #{} ({}, {} depth, finished {}{window})\n{} finding(s) of kind {}\n",
        run.id,
        run.result,
        run.depth.as_str(),
        run.finished_at.format("%Y-%m-%d %H:%M:%S UTC"),
        f.total,
        kinds.join(", ")
    );
    if f.findings.is_empty() {
        if run.depth == Depth::Counts && run.verdict == Verdict::Differences {
            o.push_str("  a run at counts depth lists no events: `tsmigrate validate --depth events` finds which ones differ\n");
        }
        return o;
    }
    let side = |t: Option<DateTime<Utc>>| if t.is_some() { show_time(t) } else { "-".into() };
    let rows = f.findings.iter().map(|f| vec![f.kind.as_str().to_string(), f.event_id.to_string(), side(f.redis_time), side(f.target_time)]).collect();
    o.push_str(&crate::human::table("  ", Some(&["kind", "event_id", "redis_time", "target_time"]), rows));
    o
}

fn csv(f: &Findings) -> String {
    // No field can hold a comma, a quote or a line break: kinds, UUIDs and RFC 3339 times.
    let mut o = String::from("run_id,kind,event_id,redis_time,target_time\n");
    for finding in &f.findings {
        o.push_str(&format!(
            "{},{},{},{},{}\n",
            f.run.id,
            finding.kind.as_str(),
            finding.event_id,
            show_time(finding.redis_time),
            show_time(finding.target_time)
        ));
    }
    o
}
