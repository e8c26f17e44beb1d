//! The relay: drains the outbox stream into the target through a consumer group.
//!
//! Each [`Relay::step`] reads a batch, writes it to the target in one transaction
//! (idempotent: `ON CONFLICT DO NOTHING` on `(event_id, time)`), and only then
//! acknowledges and deletes the entries. A crash between commit and ack redelivers
//! entries the target already holds, which the unique index absorbs: nothing is lost,
//! nothing is doubled. While the target is down nothing is acknowledged; the stream
//! holds the events and the relay catches up when the target returns. Entries left
//! pending by a dead relay process are claimed after `claim_idle`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::connect::RedisConn;
use chrono::Utc;

use super::outbox::{self, OutboxEntry};
use crate::config::Settings;
use crate::ledger::gaps::{self, OutboxGap};
use crate::legacy::LegacyKeys;
use crate::store::writer::{Method, ParsedPage, TargetWriter};

/// The longest pause between attempts while Redis or the target fails: each attempt is one
/// connection attempt, so the relay comes back within seconds of the server answering again.
const RETRY_MAX: Duration = Duration::from_secs(2);
/// Events per entry before the first read says: a full ingest batch.
const FIRST_GUESS_EVENTS_PER_ENTRY: usize = 50;

/// What one step did; the loop (and tests) decide what to do next from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RelayOutcome {
    /// Nothing to relay (the read blocked for `block` and found nothing).
    Idle,
    Relayed {
        entries: usize,
        /// Events in those entries (an entry is an ingest batch).
        events: usize,
        inserted: u64,
        dead_letters: usize,
    },
    /// The target refused or is unreachable; nothing was acknowledged.
    TargetUnavailable { error: String },
    /// The consumer group was gone (Redis lost the outbox) and was created again; `gap` is
    /// the window recorded as a possible loss (none when dual-write is off).
    GroupRecreated { gap: Option<OutboxGap> },
}

#[derive(Debug, Clone)]
pub struct RelayOptions {
    pub group: String,
    pub consumer: String,
    /// About how many events one transaction writes: a read asks for as many entries as
    /// hold that many, judging by the entries read so far.
    pub batch_events: usize,
    /// How long a read waits for new entries.
    pub block: Duration,
    /// Entries pending this long on another consumer are taken over.
    pub claim_idle: Duration,
    /// After a read that found less than a full batch, wait this long before the next
    /// (see `redis.relay_linger_ms`).
    pub linger: Duration,
}

impl RelayOptions {
    pub fn new(group: &str) -> Self {
        RelayOptions {
            group: group.into(),
            consumer: consumer_name(),
            batch_events: 2000,
            block: Duration::from_millis(500),
            claim_idle: Duration::from_secs(60),
            linger: Duration::ZERO,
        }
    }

    /// The group and read wait from the settings.
    pub fn from_settings(settings: &Settings) -> Self {
        RelayOptions {
            block: Duration::from_millis(settings.redis.relay_block_ms),
            linger: Duration::from_millis(settings.redis.relay_linger_ms),
            ..Self::new(&settings.redis.outbox_group)
        }
    }
}

/// A consumer name unique to this process.
pub fn consumer_name() -> String {
    let host = hostname::get().map(|h| h.to_string_lossy().into_owned()).unwrap_or_else(|_| "host".into());
    format!("{host}-{}-{:04x}", std::process::id(), rand::random::<u16>())
}

pub struct Relay {
    /// A connection of the relay's own ([`crate::db::relay_redis`]): the blocking read
    /// holds it while it waits, which must not delay anyone else.
    redis: RedisConn,
    writer: Arc<TargetWriter>,
    keys: Arc<LegacyKeys>,
    options: RelayOptions,
    /// Re-read our own unacknowledged entries before taking new ones (at start, after a failure).
    own_pending_first: bool,
    last_claim: Option<Instant>,
    /// Events per entry in the last read (ingest writes up to a batch per entry).
    events_per_entry: usize,
    /// The last read filled its batch: more is waiting, read again at once.
    last_read_full: bool,
}

impl Relay {
    pub fn new(redis: RedisConn, writer: Arc<TargetWriter>, keys: Arc<LegacyKeys>, options: RelayOptions) -> Self {
        Relay { redis, writer, keys, options, own_pending_first: true, last_claim: None, events_per_entry: FIRST_GUESS_EVENTS_PER_ENTRY, last_read_full: false }
    }

    pub fn options(&self) -> &RelayOptions {
        &self.options
    }

    /// How long to let entries gather before the next step: the linger after a read that
    /// did not fill its batch (the relay has caught up), nothing while more is waiting.
    pub fn pause_before_next(&self) -> Duration {
        if self.last_read_full {
            Duration::ZERO
        } else {
            self.options.linger
        }
    }

    /// Creates the consumer group (and the stream) if missing. A group missing while
    /// dual-write is on means Redis lost the outbox: that is recorded as a possible gap
    /// (returned, logged with its window, counted in `tsmigrate_outbox_gaps_total`).
    pub async fn ensure_group(&mut self) -> redis::RedisResult<Option<RelayOutcome>> {
        if !ensure_group(&mut self.redis, &self.keys, &self.options.group).await? {
            return Ok(None);
        }
        self.own_pending_first = true;
        let gap = match gaps::record(self.writer.pool(), &self.options.group, Utc::now()).await {
            Ok(gap) => gap,
            Err(e) => {
                // The window cannot be stored (target down?): still say it loudly.
                tracing::error!(error = %format!("{e:#}"), group = %self.options.group, "the outbox consumer group was missing and was recreated; the possible gap could not be recorded");
                None
            }
        };
        if let Some(gap) = &gap {
            metrics::counter!("tsmigrate_outbox_gaps_total").increment(1);
            tracing::error!(
                group = %gap.group_name,
                window_from = ?gap.window_from,
                window_to = %gap.window_to,
                repair = %gap.repair_command(),
                "the outbox consumer group was missing (did Redis lose its data?) and was recreated; outbox entries in this window may not have reached the target"
            );
        }
        Ok(Some(RelayOutcome::GroupRecreated { gap }))
    }

    /// One unit of work: read a batch (own pending, claimed, or new), write it, acknowledge it.
    #[tracing::instrument(skip_all, fields(consumer = %self.options.consumer))]
    pub async fn step(&mut self) -> redis::RedisResult<RelayOutcome> {
        let entries = match self.next_entries().await {
            Ok(entries) => entries,
            Err(e) if e.code() == Some("NOGROUP") => {
                return Ok(self.ensure_group().await?.unwrap_or(RelayOutcome::GroupRecreated { gap: None }));
            }
            Err(e) => return Err(e),
        };
        if entries.is_empty() {
            self.last_read_full = false;
            return Ok(RelayOutcome::Idle);
        }
        let events: usize = entries.iter().map(|e| e.events.len()).sum();
        self.last_read_full = events >= self.options.batch_events;
        self.events_per_entry = (events / entries.len()).max(1);
        match self.write(&entries).await {
            Ok((inserted, dead_letters)) => {
                let ids: Vec<&str> = entries.iter().map(|e| e.id.as_str()).collect();
                redis::pipe()
                    .atomic()
                    .cmd("XACK")
                    .arg(&self.keys.outbox)
                    .arg(&self.options.group)
                    .arg(&ids)
                    .ignore()
                    .cmd("XDEL")
                    .arg(&self.keys.outbox)
                    .arg(&ids)
                    .ignore()
                    .query_async::<()>(&mut self.redis)
                    .await?;
                metrics::counter!("tsmigrate_relay_events_total").increment(events as u64);
                Ok(RelayOutcome::Relayed { entries: entries.len(), events, inserted, dead_letters })
            }
            Err(e) => {
                self.own_pending_first = true;
                // The write sequence's errors are the database's (anything else counts as a connection error: retried).
                let kind = match e.downcast_ref::<sqlx::Error>().map(crate::store::write_error::classify) {
                    Some(crate::store::write_error::WriteErrorKind::Data) => "data",
                    _ => "connection",
                };
                metrics::counter!("tsmigrate_relay_errors_total", "kind" => kind).increment(1);
                Ok(RelayOutcome::TargetUnavailable { error: e.to_string() })
            }
        }
    }

    async fn next_entries(&mut self) -> redis::RedisResult<Vec<OutboxEntry>> {
        let batch = (self.options.batch_events / self.events_per_entry).max(1);
        let (outbox, group, consumer) = (&self.keys.outbox, &self.options.group, &self.options.consumer);
        if self.own_pending_first {
            let reply: redis::Value = redis::cmd("XREADGROUP")
                .arg("GROUP")
                .arg(group)
                .arg(consumer)
                .arg("COUNT")
                .arg(batch)
                .arg("STREAMS")
                .arg(outbox)
                .arg("0")
                .query_async(&mut self.redis)
                .await?;
            let entries = outbox::read_reply(&reply);
            if !entries.is_empty() {
                return Ok(entries);
            }
            self.own_pending_first = false;
        }
        if self.last_claim.is_none_or(|at| at.elapsed() >= self.options.claim_idle / 2) {
            self.last_claim = Some(Instant::now());
            let reply: redis::Value = redis::cmd("XAUTOCLAIM")
                .arg(outbox)
                .arg(group)
                .arg(consumer)
                .arg(self.options.claim_idle.as_millis() as u64)
                .arg("0-0")
                .arg("COUNT")
                .arg(batch)
                .query_async(&mut self.redis)
                .await?;
            let claimed = outbox::autoclaim_reply(&reply);
            if !claimed.is_empty() {
                tracing::info!(entries = claimed.len(), "claimed entries of a stalled relay");
                // Claimed entries are now ours; the pending pass picks up the rest next time.
                self.own_pending_first = true;
                return Ok(claimed);
            }
        }
        let reply: redis::Value = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(group)
            .arg(consumer)
            .arg("COUNT")
            .arg(batch)
            .arg("BLOCK")
            .arg(self.options.block.as_millis() as u64)
            .arg("STREAMS")
            .arg(outbox)
            .arg(">")
            .query_async(&mut self.redis)
            .await?;
        Ok(outbox::read_reply(&reply))
    }

    /// Writes a batch in one transaction; events the target cannot store become dead
    /// letters in it, so the batch is always acknowledged once this returns `Ok`.
    async fn write(&self, entries: &[OutboxEntry]) -> anyhow::Result<(u64, usize)> {
        let now_ms = Utc::now().timestamp_millis();
        let mut page = ParsedPage::with_capacity(entries.iter().map(|e| e.events.len()).sum());
        for (member, score) in entries.iter().flat_map(|e| e.events.iter()) {
            page.push(member.clone(), *score, now_ms);
        }
        let started = Instant::now();
        let newest = entries.iter().filter_map(OutboxEntry::appended_ms).max();
        let group = self.options.group.clone();
        let outcome = self
            .writer
            .commit_page(&page, "relay", Method::Copy, move |tx, _| {
                Box::pin(async move {
                    if let Some(newest) = newest {
                        crate::ledger::checkpoint::note_relayed(tx, &group, newest).await?;
                    }
                    Ok(())
                })
            })
            .await?;
        metrics::histogram!("tsmigrate_write_seconds", "system" => "target").record(started.elapsed().as_secs_f64());
        Ok((outcome.inserted, outcome.dead_letters))
    }
}

/// Creates the consumer group (and the stream) if missing; true when it was created. The
/// group starts at the stream's beginning, so entries added before it are relayed too.
pub async fn ensure_group(redis: &mut RedisConn, keys: &LegacyKeys, group: &str) -> redis::RedisResult<bool> {
    let created: redis::RedisResult<()> = redis::cmd("XGROUP").arg("CREATE").arg(&keys.outbox).arg(group).arg("0").arg("MKSTREAM").query_async(redis).await;
    match created {
        Ok(()) => Ok(true),
        Err(e) if e.code() == Some("BUSYGROUP") => Ok(false),
        Err(e) => Err(e),
    }
}

/// Runs steps until `shutdown` fires; a step in flight always completes (its batch is
/// committed and acknowledged, or left pending for the next run).
pub async fn run_until(mut relay: Relay, mut shutdown: tokio::sync::watch::Receiver<bool>) -> redis::RedisResult<()> {
    const FIRST_RETRY: Duration = Duration::from_millis(250);
    relay.ensure_group().await?;
    let mut backoff = FIRST_RETRY;
    loop {
        if *shutdown.borrow() {
            return Ok(());
        }
        let pause = match relay.step().await {
            Ok(RelayOutcome::Relayed { .. }) => {
                backoff = FIRST_RETRY;
                relay.pause_before_next()
            }
            Ok(RelayOutcome::Idle) | Ok(RelayOutcome::GroupRecreated { .. }) => {
                backoff = FIRST_RETRY;
                Duration::ZERO
            }
            Ok(RelayOutcome::TargetUnavailable { error }) => {
                let pause = backoff;
                tracing::warn!(%error, retry_in_ms = pause.as_millis() as u64, "target unavailable; outbox entries stay pending");
                backoff = (backoff * 2).min(RETRY_MAX);
                pause
            }
            Err(e) => {
                metrics::counter!("tsmigrate_relay_errors_total", "kind" => "redis").increment(1);
                // Reconnecting is cheap (a connection that missed its deadline is already
                // discarded): retry often, so the relay resumes soon after Redis answers again.
                let pause = backoff;
                tracing::warn!(error = %e, retry_in_ms = pause.as_millis() as u64, "Redis unavailable");
                backoff = (backoff * 2).min(RETRY_MAX);
                pause
            }
        };
        if !pause.is_zero() {
            tokio::select! {
                _ = tokio::time::sleep(pause) => {},
                _ = shutdown.changed() => {},
            }
        }
    }
}

pub use outbox::lag;
