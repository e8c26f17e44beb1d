//! The read replica (`database.read_url`): whether the target's reads may go to the hot
//! standby, and how fresh its answers are.
//!
//! An answer read on the standby must never claim to be fresher than the standby is, so the
//! check works out the standby's **replay point**: a time such that everything the primary
//! had committed by then has been replayed on the standby (an answer's `as_of` is never later).
//!
//! * `pg_last_xact_replay_timestamp()` is the primary's commit time of the last transaction
//!   replayed, a lower bound of the replay point. Alone it is not enough: while the primary is
//!   idle it stays old although the standby is caught up, so an idle system would look as
//!   far behind as its last write is old.
//! * So the primary is asked too, for its clock and its WAL insert position
//!   (`pg_current_wal_insert_lsn()`, read together). A transaction that had committed by then
//!   has its commit record before that position (the record is inserted before the commit
//!   returns, synchronous_commit off included), so a standby whose
//!   `pg_last_wal_replay_lsn()` has reached the position holds everything committed up to
//!   that clock reading: the replay point is that time and the lag is 0. The two queries may
//!   run in either order: the argument needs only "the standby has replayed past the mark".
//! * A standby that has not reached the current mark may have reached an earlier check's
//!   (the previous one's, or the newest one it was seen to reach); the replay point is then the
//!   latest of those marks' times and the replay timestamp (a single write after a long idle
//!   time does not make a standby a second behind look an hour behind, and a paused standby's
//!   replay point does not move back).
//! * Commit timestamps are taken just before the commit record is inserted, so concurrent
//!   commits may reach WAL out of timestamp order by that instant; the replay point is rounded
//!   down to the whole second. Time is the primary's clock (the replay timestamps are too);
//!   the process's own clock only bounds it from above (`as_of` is the earlier of the request's
//!   minute and the replay point).
//! * When a check cannot say (no transaction replayed since the standby started, and no mark
//!   reached), the lag is unknown and reads go to the primary.
//!
//! `pg_last_wal_receive_lsn()` is shown beside the replay position: WAL received but not
//! replayed means replay is slow or paused (`pg_is_wal_replay_paused()`), not the network.
//!
//! The check runs at most once per [`REPLICA_REFRESH`] ([`ReplicaWatch`]), within
//! [`CHECK_DEADLINE`]; requests in between use what it found. The replay point only moves
//! forward, so a remembered one stays true; the lag may have grown by up to the refresh since.
//! Reads go to the primary when the standby is further behind than
//! `database.read_max_lag_secs`, unreachable, not in recovery (promoted, or not a standby),
//! a standby of another cluster, or its lag unknown; and while shadow reads compare the
//! sources (both answers then come from the same moment).

use std::time::Duration as StdDuration;

use chrono::{DateTime, Duration, DurationRound, Utc};
use serde::Serialize;
use sqlx::PgPool;

use crate::context::Context;
use crate::remembered::Remembered;

/// How long a check of the replica is trusted.
pub const REPLICA_REFRESH: StdDuration = StdDuration::from_secs(1);
/// A check (both servers, concurrently) gives up after this; the replica then counts as unreachable.
pub const CHECK_DEADLINE: StdDuration = StdDuration::from_secs(1);

/// A WAL position (`pg_lsn`), as a byte offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct Lsn(pub u64);

impl Lsn {
    /// `16/B374D848` → the byte position. Pure.
    pub fn parse(text: &str) -> Option<Lsn> {
        let (high, low) = text.trim().split_once('/')?;
        Some(Lsn((u64::from_str_radix(high, 16).ok()? << 32) | u64::from_str_radix(low, 16).ok()?))
    }
}

/// The primary's clock and WAL insert position, read in one statement (the clock first).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrimaryMark {
    pub at: DateTime<Utc>,
    pub lsn: Lsn,
}

/// What the standby says of itself.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StandbyReport {
    pub in_recovery: bool,
    pub receive_lsn: Option<Lsn>,
    pub replay_lsn: Option<Lsn>,
    pub replay_timestamp: Option<DateTime<Utc>>,
    pub replay_paused: Option<bool>,
    pub system_identifier: Option<String>,
}

/// Where the target's reads go, and why: the `reason` label of `tsmigrate_reads_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Why {
    /// The replica: within `database.read_max_lag_secs`.
    WithinLimit,
    /// The primary: no `database.read_url`.
    NoReplica,
    /// The primary: shadow reads compare the sources, of one moment.
    Shadow,
    /// The primary: the replica is further behind than the limit.
    Lagging,
    /// The primary: how far behind the replica is cannot be told.
    LagUnknown,
    /// The primary: the replica did not answer (or the URL is unusable).
    Unreachable,
    /// The primary: the replica is not in recovery (promoted, or not a standby).
    NotStandby,
    /// The primary: the replica is a standby of another cluster.
    OtherCluster,
}

impl Why {
    pub const ALL: [Why; 8] =
        [Why::WithinLimit, Why::NoReplica, Why::Shadow, Why::Lagging, Why::LagUnknown, Why::Unreachable, Why::NotStandby, Why::OtherCluster];

    pub fn as_str(self) -> &'static str {
        match self {
            Why::WithinLimit => "within_limit",
            Why::NoReplica => "no_replica",
            Why::Shadow => "shadow",
            Why::Lagging => "lagging",
            Why::LagUnknown => "lag_unknown",
            Why::Unreachable => "unreachable",
            Why::NotStandby => "not_standby",
            Why::OtherCluster => "other_cluster",
        }
    }

    /// The `database` label: `replica` or `primary`.
    pub fn database(self) -> &'static str {
        if self == Why::WithinLimit {
            "replica"
        } else {
            "primary"
        }
    }

    /// Why reads go where they go, for people.
    pub fn describe(self) -> &'static str {
        match self {
            Why::WithinLimit => "the replica is within the lag limit",
            Why::NoReplica => "no read replica is set (database.read_url)",
            Why::Shadow => "shadow reads compare the sources on the primary",
            Why::Lagging => "the replica is further behind than database.read_max_lag_secs",
            Why::LagUnknown => "how far behind the replica is cannot be told",
            Why::Unreachable => "the replica is unreachable",
            Why::NotStandby => "the replica is not a standby (not in recovery)",
            Why::OtherCluster => "the replica is a standby of another cluster than the target",
        }
    }
}

/// One check of the replica: where reads go, and what that was decided on.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReplicaView {
    /// The replica's URL, password redacted.
    pub url: String,
    /// `replica` or `primary`.
    pub reads_go_to: &'static str,
    pub why: Why,
    /// Everything the primary had committed by this time is on the replica (whole seconds).
    pub replayed_to: Option<DateTime<Utc>>,
    /// How far the replay point is behind the primary at the check; `None` when unknown.
    pub lag_seconds: Option<f64>,
    pub max_lag_seconds: u64,
    pub replay_paused: Option<bool>,
    /// WAL the replica has received but not replayed yet, in bytes.
    pub received_not_replayed_bytes: Option<u64>,
    pub checked_at: DateTime<Utc>,
    /// Why the replica could not be used, as the server said (scrubbed).
    pub error: Option<String>,
    /// The primary's mark of this check (or the last one known), for the next check.
    #[serde(skip)]
    pub mark: Option<PrimaryMark>,
    /// The newest mark the standby was seen to have replayed, for the next check.
    #[serde(skip)]
    pub reached: Option<PrimaryMark>,
}

impl ReplicaView {
    /// Whether reads go to the replica.
    pub fn serving(&self) -> bool {
        self.why == Why::WithinLimit
    }

    /// One line for people.
    pub fn line(&self) -> String {
        let lag = match self.lag_seconds {
            Some(lag) => format!("lag {lag:.1}s (limit {}s)", self.max_lag_seconds),
            None => format!("lag unknown (limit {}s)", self.max_lag_seconds),
        };
        let paused = if self.replay_paused == Some(true) { ", replay PAUSED" } else { "" };
        let error = self.error.as_ref().map(|e| format!(": {e}")).unwrap_or_default();
        let whom = if self.serving() { "reads go to the replica".to_string() } else { format!("reads go to the PRIMARY: {}{error}", self.why.describe()) };
        format!("{} ({lag}{paused}); {whom}", self.url)
    }
}

/// The replay point and lag from what both servers said, and where reads go. Pure.
///
/// `primary`: this check's mark (`None` when the primary could not be asked); `earlier`: the
/// last check's marks ([`ReplicaView::mark`], [`ReplicaView::reached`]);
/// `primary_identifier`: the target's `system_identifier`.
pub fn judge(
    url: String,
    standby: Result<StandbyReport, String>,
    primary: Option<PrimaryMark>,
    earlier: [Option<PrimaryMark>; 2],
    primary_identifier: Option<&str>,
    max_lag: Duration,
    now: DateTime<Utc>,
) -> ReplicaView {
    let mut view = ReplicaView {
        url,
        reads_go_to: "primary",
        why: Why::Unreachable,
        replayed_to: None,
        lag_seconds: None,
        max_lag_seconds: max_lag.num_seconds().max(0) as u64,
        replay_paused: None,
        received_not_replayed_bytes: None,
        checked_at: now,
        error: None,
        mark: primary.or(earlier[0]),
        reached: earlier[1],
    };
    let standby = match standby {
        Ok(standby) => standby,
        Err(error) => {
            view.error = Some(error);
            return view;
        }
    };
    if !standby.in_recovery {
        view.why = Why::NotStandby;
        return view;
    }
    if let (Some(ours), Some(theirs)) = (primary_identifier, standby.system_identifier.as_deref()) {
        if ours != theirs {
            view.why = Why::OtherCluster;
            view.error = Some(format!("its system identifier is {theirs}, the target's {ours}"));
            return view;
        }
    }
    view.replay_paused = standby.replay_paused;
    view.received_not_replayed_bytes = match (standby.receive_lsn, standby.replay_lsn) {
        (Some(received), Some(replayed)) => Some(received.0.saturating_sub(replayed.0)),
        _ => None,
    };
    let reached = |mark: &Option<PrimaryMark>| mark.filter(|m| standby.replay_lsn.is_some_and(|r| r >= m.lsn));
    view.reached = [primary, earlier[0], earlier[1]].iter().filter_map(reached).max_by_key(|m| m.at);
    let replayed_to = [standby.replay_timestamp, view.reached.map(|m| m.at)].into_iter().flatten().max();
    let Some(replayed_to) = replayed_to.map(whole_second) else {
        view.why = Why::LagUnknown;
        return view;
    };
    let reference = primary.map_or(now, |p| p.at);
    let lag = if reached(&primary).is_some() { Duration::zero() } else { (reference - replayed_to).max(Duration::zero()) };
    view.replayed_to = Some(replayed_to);
    view.lag_seconds = Some(lag.num_milliseconds() as f64 / 1000.0);
    view.why = if lag > max_lag { Why::Lagging } else { Why::WithinLimit };
    view.reads_go_to = view.why.database();
    view
}

fn whole_second(t: DateTime<Utc>) -> DateTime<Utc> {
    t.duration_trunc(Duration::seconds(1)).unwrap_or(t)
}

/// Asks both servers (concurrently, within [`CHECK_DEADLINE`]) and judges. Sets the
/// `tsmigrate_read_replica_*` gauges. `None` when no replica is set.
pub async fn check(ctx: &Context, earlier: [Option<PrimaryMark>; 2]) -> Option<ReplicaView> {
    let url = ctx.settings.database.read_url.as_ref()?;
    let max_lag = Duration::seconds(i64::try_from(ctx.settings.database.read_max_lag_secs).unwrap_or(i64::MAX / 1000));
    let standby = async {
        let pool = ctx.read_replica().ok_or_else(|| "no read replica is set".to_string())?.map_err(str::to_string)?;
        match tokio::time::timeout(CHECK_DEADLINE, standby_report(pool)).await {
            Ok(Ok(report)) => Ok(report),
            Ok(Err(e)) => Err(url.scrub(&e.to_string())),
            Err(_) => Err(format!("no answer within {} ms", CHECK_DEADLINE.as_millis())),
        }
    };
    let primary = async { tokio::time::timeout(CHECK_DEADLINE, primary_mark(&ctx.target)).await.ok().and_then(Result::ok) };
    let (standby, primary) = tokio::join!(standby, primary);
    let (mark, identifier) = primary.unzip();
    let view = judge(url.redacted(), standby, mark, earlier, identifier.flatten().as_deref(), max_lag, Utc::now());
    metrics::gauge!("tsmigrate_read_replica_lag_seconds").set(view.lag_seconds.unwrap_or(f64::NAN));
    metrics::gauge!("tsmigrate_read_replica_serving").set(if view.serving() { 1.0 } else { 0.0 });
    Some(view)
}

/// in recovery, received, replayed, replay timestamp, paused, system identifier.
type StandbyRow = (bool, Option<String>, Option<String>, Option<DateTime<Utc>>, Option<bool>, Option<String>);

/// The standby's replay state. `pg_is_wal_replay_paused()` fails outside recovery, hence the CASE.
async fn standby_report(pool: &PgPool) -> sqlx::Result<StandbyReport> {
    let (in_recovery, receive, replay, replay_timestamp, replay_paused, system_identifier): StandbyRow = sqlx::query_as(
        "SELECT pg_is_in_recovery(), pg_last_wal_receive_lsn()::text, pg_last_wal_replay_lsn()::text, pg_last_xact_replay_timestamp(),
                CASE WHEN pg_is_in_recovery() THEN pg_is_wal_replay_paused() END,
                (SELECT system_identifier::text FROM pg_control_system())",
    )
    .fetch_one(pool)
    .await?;
    Ok(StandbyReport {
        in_recovery,
        receive_lsn: receive.as_deref().and_then(Lsn::parse),
        replay_lsn: replay.as_deref().and_then(Lsn::parse),
        replay_timestamp,
        replay_paused,
        system_identifier,
    })
}

/// The primary's clock, then its WAL insert position, and its system identifier. An error
/// (a target that is itself in recovery cannot say its insert position) leaves the mark out.
async fn primary_mark(pool: &PgPool) -> sqlx::Result<(PrimaryMark, Option<String>)> {
    let (at, lsn, identifier): (DateTime<Utc>, String, Option<String>) =
        sqlx::query_as("SELECT clock_timestamp(), pg_current_wal_insert_lsn()::text, (SELECT system_identifier::text FROM pg_control_system())")
            .fetch_one(pool)
            .await?;
    let lsn = Lsn::parse(&lsn).ok_or_else(|| sqlx::Error::Protocol(format!("not a WAL position: {lsn}")))?;
    Ok((PrimaryMark { at, lsn }, identifier))
}

/// The last check of the replica, trusted for [`REPLICA_REFRESH`] (shared by the process's
/// requests, like the routing).
pub struct ReplicaWatch(Remembered<Option<ReplicaView>>);

impl Default for ReplicaWatch {
    fn default() -> Self {
        ReplicaWatch(Remembered::new(REPLICA_REFRESH))
    }
}

impl ReplicaWatch {
    /// The replica as last checked (checked again when the last check is older than the
    /// refresh); `None` when no replica is set.
    pub async fn current(&self, ctx: &Context) -> Option<ReplicaView> {
        let fetch = |last: Option<Option<ReplicaView>>| async move {
            let last = last.flatten();
            let earlier = [last.as_ref().and_then(|v| v.mark), last.as_ref().and_then(|v| v.reached)];
            Ok::<_, std::convert::Infallible>(check(ctx, earlier).await)
        };
        match self.0.get(fetch).await {
            Ok(view) => view,
            Err(never) => match never {},
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reads::testing::t;

    fn standby(replay: u64, replay_timestamp: Option<&str>) -> StandbyReport {
        StandbyReport {
            in_recovery: true,
            receive_lsn: Some(Lsn(replay + 100)),
            replay_lsn: Some(Lsn(replay)),
            replay_timestamp: replay_timestamp.map(t),
            replay_paused: Some(false),
            system_identifier: Some("7".into()),
        }
    }

    fn mark(at: &str, lsn: u64) -> Option<PrimaryMark> {
        Some(PrimaryMark { at: t(at), lsn: Lsn(lsn) })
    }

    fn judged(report: Result<StandbyReport, String>, primary: Option<PrimaryMark>, previous: Option<PrimaryMark>) -> ReplicaView {
        judge("postgres://r@h/db".into(), report, primary, [previous, None], Some("7"), Duration::seconds(30), t("2025-03-01T12:00:10Z"))
    }

    #[test]
    fn wal_positions_parse_as_postgresql_prints_them() {
        assert_eq!(Lsn::parse("16/B374D848"), Some(Lsn((0x16 << 32) | 0xB374_D848)));
        assert_eq!(Lsn::parse("0/0"), Some(Lsn(0)));
        assert!(Lsn::parse("16B374D848").is_none() && Lsn::parse("x/1").is_none());
        assert!(Lsn::parse("1/0") > Lsn::parse("0/FFFFFFFF"));
    }

    #[test]
    fn an_idle_caught_up_standby_is_current_although_its_last_replayed_commit_is_old() {
        // The last write was an hour ago; the standby has replayed everything the primary wrote.
        let view = judged(Ok(standby(500, Some("2025-03-01T11:00:00Z"))), mark("2025-03-01T12:00:09.700Z", 500), None);
        assert_eq!((view.why, view.lag_seconds, view.replayed_to), (Why::WithinLimit, Some(0.0), Some(t("2025-03-01T12:00:09Z"))));
        assert_eq!(view.reads_go_to, "replica");
    }

    #[test]
    fn a_standby_behind_the_mark_is_as_fresh_as_its_last_replayed_commit_or_the_last_mark_it_reached() {
        // Paused: the last replayed commit is 40 s old, and no mark was reached.
        let view = judged(Ok(standby(500, Some("2025-03-01T11:59:29.500Z"))), mark("2025-03-01T12:00:09Z", 900), mark("2025-03-01T12:00:08Z", 800));
        assert_eq!((view.why, view.replayed_to), (Why::Lagging, Some(t("2025-03-01T11:59:29Z"))));
        assert_eq!(view.lag_seconds, Some(40.0));
        assert_eq!(view.reads_go_to, "primary");
        // One write after an idle hour: the previous check's mark was reached a second ago.
        let view = judged(Ok(standby(500, Some("2025-03-01T11:00:00Z"))), mark("2025-03-01T12:00:09Z", 600), mark("2025-03-01T12:00:08Z", 450));
        assert_eq!((view.why, view.replayed_to, view.lag_seconds), (Why::WithinLimit, Some(t("2025-03-01T12:00:08Z")), Some(1.0)));
        // Paused after that: the next check's own mark is not reached, the one seen reached still is.
        let next = judge(
            "postgres://r@h/db".into(),
            Ok(standby(500, Some("2025-03-01T11:00:00Z"))),
            mark("2025-03-01T12:00:20Z", 700),
            [view.mark, view.reached],
            Some("7"),
            Duration::seconds(30),
            t("2025-03-01T12:00:20Z"),
        );
        assert_eq!((next.replayed_to, next.lag_seconds), (Some(t("2025-03-01T12:00:08Z")), Some(12.0)));
    }

    #[test]
    fn without_the_primary_the_replay_timestamp_and_the_clock_decide() {
        let view = judged(Ok(standby(500, Some("2025-03-01T12:00:00Z"))), None, None);
        assert_eq!((view.why, view.lag_seconds), (Why::WithinLimit, Some(10.0)));
        let view = judged(Ok(standby(500, None)), None, None);
        assert_eq!((view.why, view.replayed_to, view.lag_seconds), (Why::LagUnknown, None, None));
    }

    #[test]
    fn a_replica_that_cannot_serve_says_why() {
        let down = judged(Err("connection refused".into()), mark("2025-03-01T12:00:09Z", 9), None);
        assert_eq!((down.why, down.error.as_deref()), (Why::Unreachable, Some("connection refused")));
        assert!(down.line().contains("reads go to the PRIMARY: the replica is unreachable: connection refused"), "{}", down.line());
        let promoted = judged(Ok(StandbyReport { in_recovery: false, ..standby(1, None) }), None, None);
        assert_eq!(promoted.why, Why::NotStandby);
        let other = judged(Ok(StandbyReport { system_identifier: Some("8".into()), ..standby(500, Some("2025-03-01T12:00:00Z")) }), None, None);
        assert_eq!(other.why, Why::OtherCluster);
        for why in Why::ALL {
            assert_eq!(why.database() == "replica", why == Why::WithinLimit);
        }
    }

    #[test]
    fn the_reasons_are_the_label_values_telemetry_registers() {
        let registered: Vec<(&str, &str)> = crate::telemetry::READ_DATABASES.to_vec();
        let ours: Vec<(&str, &str)> = Why::ALL.iter().map(|w| (w.database(), w.as_str())).collect();
        assert_eq!(registered, ours);
    }
}
