use crate::human;
use chrono::{DateTime, Utc};

use crate::config::Settings;
use crate::legacy::{flush, schema, LegacyKeys};

use super::{parse_time, Reply};

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Create the legacy hourly and asset tables and the reporting function, if missing.
    Setup,
    /// Run the legacy hourly flush: Redis events → the hourly and asset tables.
    ///
    /// Without --from/--to it flushes the last closed hour, like the legacy worker's cron.
    /// Refused once the flush is retired (the control key is set), unless --even-if-retired.
    Flush(FlushArgs),
}

#[derive(Debug, clap::Args)]
pub struct FlushArgs {
    /// Start of the range (rounded down to the hour).
    #[arg(long, value_parser = parse_time, requires = "to", allow_hyphen_values = true)]
    pub from: Option<DateTime<Utc>>,
    /// End of the range (exclusive, rounded down to the hour).
    #[arg(long, value_parser = parse_time, requires = "from", allow_hyphen_values = true)]
    pub to: Option<DateTime<Utc>>,
    /// Flush even though the legacy flush was retired.
    #[arg(long)]
    pub even_if_retired: bool,
}

pub async fn run(command: Command, settings: &Settings) -> anyhow::Result<Reply> {
    let legacy_pool = crate::db::legacy_pool(settings).await?;
    match command {
        Command::Setup => {
            schema::ensure(&legacy_pool, &settings.legacy).await?;
            Ok(Reply::done(
                serde_json::json!({"created_or_present": [&settings.legacy.hourly_table, &settings.legacy.asset_table, &settings.legacy.popular_function]}),
                format!("legacy tables ready: {}, {}, {}()\n", settings.legacy.hourly_table, settings.legacy.asset_table, settings.legacy.popular_function),
            ))
        }
        Command::Flush(args) => {
            let mut redis = crate::db::redis_bulk(settings).await?;
            let keys = LegacyKeys::from_settings(settings);
            let retired: Option<String> = redis::cmd("GET").arg(&keys.flush_retired).query_async(&mut redis).await?;
            if retired.as_deref() == Some("1") && !args.even_if_retired {
                return Err(crate::phase::Refusal {
                    command: "legacy flush".into(),
                    reason: format!("the legacy flush is retired ({} is set)", keys.flush_retired),
                    next: "aggregates now come from the target; pass --even-if-retired to flush anyway".into(),
                }
                .into());
            }
            let tz = settings.target.timezone();
            let (from, to) = match (args.from, args.to) {
                (Some(from), Some(to)) => (from, to),
                _ => crate::calendar::last_closed_hour(Utc::now(), tz),
            };
            if to <= from {
                anyhow::bail!("--to must be after --from");
            }
            schema::ensure(&legacy_pool, &settings.legacy).await?;
            let outcome = flush::flush_range(&mut redis, &legacy_pool, &keys, &settings.legacy, tz, from, to).await?;
            let o = &outcome;
            let text = format!(
                "flushed {} from {} to {}: {} read, {} skipped, {}, {}{}\n",
                human::plural(o.hours as u64, "hour"),
                o.from.map(human::utc).unwrap_or_default(),
                o.to.map(human::utc).unwrap_or_default(),
                human::plural(o.events_read as u64, "event"),
                human::plural(o.skipped_members as u64, "member"),
                human::plural(o.hourly_rows as u64, "hourly row"),
                human::plural(o.asset_rows as u64, "asset row"),
                if o.rejected_rows > 0 {
                    format!(", {} refused by the database (see the log)", human::plural(o.rejected_rows as u64, "row"))
                } else {
                    String::new()
                }
            );
            Ok(Reply::done(&outcome, text))
        }
    }
}
