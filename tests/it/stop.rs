//! Long work stops cleanly at a page boundary: interrupted (SIGINT: exit 130, audited,
//! `status` knows at once that it is not running, a re-run resumes) or having lost the
//! connection that holds its migration lock (exit 2, it says so and does not carry on
//! unlocked; another run takes the lock and finishes) — with no gap and no duplicate.

use std::io::{BufRead, BufReader, Read};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

use crate::fault::{pg_addr, Outage};
use crate::scenario::{prepare_and_dual_write, seed, target_counts, Mode};
use crate::support::{eventually, field, ChildGuard, CliOutput, TestEnv};

const EVENTS: i64 = 4000;

/// A tsmigrate command running as a process: stdout kept for the end, stderr read as it
/// comes (to see when it noted an interrupt).
struct Running {
    child: ChildGuard,
    stderr: Arc<Mutex<String>>,
}

impl Running {
    fn start(env: &TestEnv, args: &[&str]) -> Running {
        Running::start_with(env, args, &[])
    }

    fn start_with(env: &TestEnv, args: &[&str], vars: &[(&str, &str)]) -> Running {
        let mut command = env.clean_command(args, vars);
        command.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = ChildGuard::spawn(command);
        let pipe = child.child().stderr.take().expect("the command's stderr");
        let stderr = Arc::new(Mutex::new(String::new()));
        let lines = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                lines.lock().unwrap().push_str(&(line + "\n"));
            }
        });
        Running { child, stderr }
    }

    fn interrupt(&mut self) {
        self.signal("-INT");
    }

    /// Sends `signal` (`-TERM`) to the process.
    fn signal(&mut self, signal: &str) {
        let pid = self.child.child().id().to_string();
        assert!(std::process::Command::new("kill").args([signal, &pid]).status().unwrap().success());
    }

    /// Waits until it said it will stop at the next page boundary.
    async fn noted_the_interrupt(&self) {
        eventually("the interrupt to be noted", Duration::from_secs(30), || {
            let noted = self.stderr.lock().unwrap().contains("stopping at the next page boundary");
            async move { noted.then_some(()) }
        })
        .await
    }

    /// Waits for the process to end; its exit code and output.
    async fn exited(&mut self) -> CliOutput {
        let child = &mut self.child;
        let code = eventually("the command to end", Duration::from_secs(60), || {
            let status = child.child().try_wait().expect("wait for the command");
            async move { status.map(|s| s.code().unwrap_or(-1)) }
        })
        .await;
        let mut stdout = String::new();
        if let Some(pipe) = child.child().stdout.as_mut() {
            pipe.read_to_string(&mut stdout).expect("read the command's output");
        }
        // The reader thread ends with the pipe; what it read by then is all there is.
        let stderr = eventually("the command's stderr to close", Duration::from_secs(10), || {
            let done = Arc::strong_count(&self.stderr) == 1;
            let text = self.stderr.lock().unwrap().clone();
            async move { done.then_some(text) }
        })
        .await;
        CliOutput { code, stdout, stderr }
    }
}

/// A backfill of `EVENTS` in pages of 100 at 400 events/s (about ten seconds), as a
/// process, once it has committed its first pages.
async fn backfill_under_way() -> (TestEnv, Running) {
    let env = TestEnv::new().await;
    seed(&env, EVENTS as u64, false);
    prepare_and_dual_write(&env, Mode::Postgres);
    let running = Running::start(&env, &["backfill", "--page-size", "100", "--max-rate", "400", "--json"]);
    eventually("the backfill to commit its first pages", Duration::from_secs(60), || async { (committed_pages(&env).await >= 3).then_some(()) }).await;
    (env, running)
}

/// Pages the backfill's checkpoints say are committed: its own while it copies in one
/// stream, the sum of its streams' (`backfill.part<i>`) while it copies in several.
async fn committed_pages(env: &TestEnv) -> i64 {
    sqlx::query_scalar(
        "SELECT coalesce(sum((position->>'pages')::bigint), 0)::bigint FROM tsmigrate.checkpoints
         WHERE name LIKE 'backfill.part%' OR (name = 'backfill' AND coalesce((position->>'parts')::int, 0) = 0)",
    )
    .fetch_one(&env.pool)
    .await
    .unwrap()
}

/// The backend holding this test database's migration lock (other tests hold their own).
async fn migration_lock_holder(env: &TestEnv) -> Option<i32> {
    sqlx::query_scalar(
        "SELECT l.pid FROM pg_locks l JOIN pg_database d ON d.oid = l.database
         WHERE l.locktype = 'advisory' AND l.objid = hashtext('tsmigrate.phase')::oid AND l.granted AND d.datname = current_database()",
    )
    .fetch_optional(&env.pool)
    .await
    .unwrap()
}

/// Holds every checkpoint write back (the page or batch in hand then waits to commit).
async fn hold_checkpoints(env: &TestEnv) -> sqlx::Transaction<'static, sqlx::Postgres> {
    let mut hold = env.pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE tsmigrate.checkpoints IN SHARE MODE").execute(&mut *hold).await.unwrap();
    hold
}

/// The newest audit entry of the backfill: (outcome, details).
async fn last_backfill_audit(env: &TestEnv) -> (String, Value) {
    sqlx::query_as("SELECT outcome, details FROM tsmigrate.audit_log WHERE command = 'backfill' ORDER BY id DESC LIMIT 1").fetch_one(&env.pool).await.unwrap()
}

/// The backfill's row in `status --json`'s long work.
fn backfill_progress(status: &Value) -> Value {
    field(status, "running").as_array().unwrap().iter().find(|t| t["task"] == "backfill").cloned().unwrap_or(Value::Null)
}

/// The re-run resumes from the checkpoint and finishes with every event exactly once.
fn resume_and_finish(env: &TestEnv) -> Value {
    let report = env.cli(&["backfill", "--json"]).expect_success().details();
    assert_eq!(field(&report, "resumed"), &Value::Bool(true), "{report}");
    assert_eq!(field(&report, "run.phase_after"), "backfilled");
    assert_eq!((field(&report, "read").as_i64(), field(&report, "inserted").as_i64()), (Some(EVENTS), Some(EVENTS)), "{report}");
    report
}

#[tokio::test]
async fn an_interrupted_backfill_stops_at_a_page_boundary_says_so_and_a_rerun_resumes() {
    let (env, mut backfill) = backfill_under_way().await;
    let running = backfill_progress(&env.cli(&["status", "--json"]).expect_success().details());
    assert_eq!(running["running"], Value::Bool(true), "while it works, status sees the run's lock held: {running}");

    backfill.interrupt();
    let out = backfill.exited().await;
    out.expect_code(130);
    let envelope = out.json();
    assert_eq!(field(&envelope, "details.stopped"), "interrupted", "{envelope}");
    assert_eq!(field(&envelope, "details.signal"), "SIGINT");
    assert!(field(&envelope, "error.message").as_str().unwrap().contains("interrupted (SIGINT) and stopped at a page boundary after"), "{envelope}");
    // The command line as given: resuming keeps the rate limit.
    assert_eq!(envelope["next_steps"][0]["command"], "tsmigrate backfill --max-rate 400", "{envelope}");
    assert_eq!(field(&envelope, "details.rerun"), "resumes", "{envelope}");
    assert!(out.stderr.contains("next: tsmigrate backfill --max-rate 400   # resumes where it stopped"), "{}", out.stderr);

    // Whole pages only: the checkpoint covers exactly the rows committed.
    let (rows, distinct) = target_counts(&env).await;
    let pages = committed_pages(&env).await;
    assert!(pages >= 3 && rows < EVENTS, "stopped part-way: {rows} rows in {pages} pages");
    assert_eq!((rows, distinct), (pages * 100, pages * 100), "no partial page, no duplicate");

    let (outcome, details) = last_backfill_audit(&env).await;
    assert_eq!((outcome.as_str(), details["signal"].as_str()), ("interrupted", Some("SIGINT")), "{details}");

    // At once, with no heartbeat to age: the run holds no lock, so it is not running.
    let status = env.cli(&["status", "--json"]).expect_success().details();
    let stopped = backfill_progress(&status);
    assert_eq!((stopped["running"].as_bool(), stopped["done"].as_i64()), (Some(false), Some(rows)), "{status}");
    assert_eq!(field(&status, "verdict"), "blocked", "{status}");
    assert!(field(&status, "verdict_reason").as_str().unwrap().contains("`tsmigrate backfill --max-rate 400` resumes it"), "{status}");
    env.cli(&["status", "--check"]).expect_code(3);

    resume_and_finish(&env);
    assert_eq!(target_counts(&env).await, (EVENTS, EVENTS), "no gap, no duplicate");
    let status = env.cli(&["status", "--json"]).expect_success().details();
    assert_eq!(backfill_progress(&status), Value::Null, "the finished run is not listed: {status}");
    env.cleanup().await;
}

/// Ctrl-C after the last page, during the closing aggregate refresh: it stops there too
/// (exit 130, audited, the phase not moved), says the copy is complete, and the re-run goes
/// straight on with the closing steps without copying anything again.
#[tokio::test]
async fn a_backfill_interrupted_during_its_closing_refresh_stops_and_a_rerun_does_not_copy_again() {
    let env = TestEnv::new().await;
    seed(&env, EVENTS as u64, false);
    prepare_and_dual_write(&env, Mode::Postgres);
    // The refresh writes the hourly rollup: held, it waits there once the copy is complete.
    let mut hold = env.pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE analytics_hourly IN EXCLUSIVE MODE").execute(&mut *hold).await.unwrap();
    let mut backfill = Running::start(&env, &["backfill", "--page-size", "500", "--json"]);
    eventually("the copy to be complete and the refresh to wait", Duration::from_secs(60), || async {
        let copied: bool =
            sqlx::query_scalar("SELECT coalesce((SELECT (position->>'finished')::bool FROM tsmigrate.checkpoints WHERE name = 'backfill'), false)")
                .fetch_one(&env.pool)
                .await
                .unwrap();
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND application_name = 'tsmigrate' AND wait_event_type = 'Lock'",
        )
        .fetch_one(&env.pool)
        .await
        .unwrap();
        (copied && waiting > 0).then_some(())
    })
    .await;
    let pages = committed_pages(&env).await;
    // Shown as running until it closes (its count written within a second).
    eventually("status to show the whole copy done, still running", Duration::from_secs(30), || async {
        let closing = backfill_progress(&env.cli(&["status", "--json"]).expect_success().details());
        (closing["running"].as_bool() == Some(true) && closing["done"].as_i64() == Some(EVENTS)).then_some(())
    })
    .await;
    backfill.interrupt();
    let out = backfill.exited().await;
    hold.rollback().await.unwrap();
    out.expect_code(130);
    let envelope = out.json();
    assert_eq!((field(&envelope, "details.stopped"), field(&envelope, "details.rerun")), (&Value::from("interrupted"), &Value::from("resumes")), "{envelope}");
    let message = field(&envelope, "error.message").as_str().unwrap();
    assert!(
        message.contains("during its closing aggregate refresh") && message.contains(&format!("the copy is complete (4,000 events read in {pages} pages)")),
        "{envelope}"
    );
    assert_eq!(envelope["next_steps"][0]["command"], "tsmigrate backfill", "{envelope}");
    assert!(out.stderr.contains("next: tsmigrate backfill   # resumes where it stopped"), "{}", out.stderr);
    let (outcome, _) = last_backfill_audit(&env).await;
    assert_eq!(outcome, "interrupted");
    let phase: String = sqlx::query_scalar("SELECT phase FROM tsmigrate.migration_state").fetch_one(&env.pool).await.unwrap();
    assert_eq!(phase, "dual_writing", "the phase moves only once the closing steps ran");
    let status = env.cli(&["status", "--json"]).expect_success().details();
    assert_eq!(backfill_progress(&status)["running"], Value::Bool(false), "{status}");
    assert!(field(&status, "verdict_reason").as_str().unwrap().contains("`tsmigrate backfill` resumes it"), "{status}");

    let report = env.cli(&["backfill", "--json"]).expect_success().details();
    assert_eq!((field(&report, "copy_complete_before"), field(&report, "read_this_run")), (&Value::Bool(true), &Value::from(0)), "{report}");
    assert_eq!((field(&report, "read").as_i64(), field(&report, "inserted").as_i64()), (Some(EVENTS), Some(EVENTS)), "the totals are the copy's: {report}");
    assert!(field(&report, "refresh").is_object(), "{report}");
    assert_eq!(field(&report, "run.phase_after"), "backfilled");
    assert_eq!(committed_pages(&env).await, pages, "no page copied again");
    assert_eq!(target_counts(&env).await, (EVENTS, EVENTS));
    let status = env.cli(&["status", "--json"]).expect_success().details();
    assert_eq!(backfill_progress(&status), Value::Null, "closed, the run is not listed: {status}");
    env.cleanup().await;
}

/// A history import does not resume: interrupted, it says that running it again starts over.
#[tokio::test]
async fn an_interrupted_history_import_says_that_running_it_again_starts_over() {
    let env = TestEnv::new().await;
    seed(&env, 400, false);
    prepare_and_dual_write(&env, Mode::Postgres);
    let mut hold = env.pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE tsmigrate.history_hourly IN EXCLUSIVE MODE").execute(&mut *hold).await.unwrap();
    let mut import = Running::start(&env, &["import-history", "--json"]);
    env.wait_until_tsmigrate_waits_for_a_lock("the import's write").await;
    import.interrupt();
    let out = import.exited().await;
    hold.rollback().await.unwrap();
    out.expect_code(130);
    let envelope = out.json();
    assert_eq!(
        (field(&envelope, "details.resume"), field(&envelope, "details.rerun")),
        (&Value::from("tsmigrate import-history"), &Value::from("starts_over")),
        "{envelope}"
    );
    assert!(out.stderr.contains("next: tsmigrate import-history   # starts over") && !out.stderr.contains("resumes where"), "{}", out.stderr);
    env.cli(&["import-history"]).expect_success();
    env.cleanup().await;
}

#[tokio::test]
async fn a_backfill_that_loses_its_lock_connection_stops_and_another_takes_the_lock_and_finishes() {
    let (env, mut backfill) = backfill_under_way().await;
    // The lock connection, as PostgreSQL sees it: the holder of the migration lock.
    let holder = migration_lock_holder(&env).await.expect("the backfill holds the migration lock");
    let terminated: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)").bind(holder).fetch_one(&env.pool).await.unwrap();
    assert!(terminated);
    let pages_when_lost = committed_pages(&env).await;

    let out = backfill.exited().await;
    out.expect_code(2);
    let envelope = out.json();
    assert_eq!(field(&envelope, "details.stopped"), "lock_lost", "{envelope}");
    assert!(out.stderr.contains("the connection holding the migration lock was lost"), "{}", out.stderr);
    assert!(out.stderr.contains("does not carry on unlocked") && out.stderr.contains("next: tsmigrate backfill"), "{}", out.stderr);
    // A page that confirmed the lock before it was lost may still commit (one per stream,
    // two by default); none after it.
    let pages = committed_pages(&env).await;
    assert!(pages <= pages_when_lost + 2, "it carried on unlocked: {pages_when_lost} pages when the lock was lost, {pages} at the end");
    let (rows, distinct) = target_counts(&env).await;
    assert_eq!((rows, distinct), (pages * 100, pages * 100), "whole pages with their checkpoint, no duplicate");
    assert_eq!(last_backfill_audit(&env).await.0, "lock_lost");

    // The lock is free again: another backfill takes it and finishes from the checkpoint.
    resume_and_finish(&env);
    assert_eq!(target_counts(&env).await, (EVENTS, EVENTS), "no gap, no duplicate");
    env.cleanup().await;
}

/// The issue as operators met it: PostgreSQL goes away under a running backfill and comes
/// back (every connection of the backfill cut at once, as a restart does), a second backfill
/// takes the free lock, and the first must not carry on beside it advancing the same
/// checkpoint: it stops at its next page, exit 2, and the second finishes alone.
#[tokio::test]
async fn a_backfill_whose_server_connections_are_cut_stops_while_a_second_one_takes_the_lock() {
    let env = TestEnv::new().await;
    seed(&env, EVENTS as u64, false);
    prepare_and_dual_write(&env, Mode::Postgres);
    let proxy = Outage::start(pg_addr(env.settings.database.url.expose())).await;
    let through_proxy = proxy.url_through(env.settings.database.url.expose());
    let mut first = Running::start_with(&env, &["backfill", "--page-size", "100", "--max-rate", "400", "--json"], &[("DATABASE_URL", &through_proxy)]);
    eventually("the backfill to commit its first pages", Duration::from_secs(60), || async { (committed_pages(&env).await >= 3).then_some(()) }).await;
    proxy.take_down();
    // The server lets go of the lock once it sees the lock connection closed.
    eventually("the migration lock to be free", Duration::from_secs(30), || async { (migration_lock_holder(&env).await.is_none()).then_some(()) }).await;
    // Back, as after a restart: the first one's pool can connect again.
    proxy.bring_back().await;
    let mut second = Running::start(&env, &["backfill", "--json"]);

    let out = first.exited().await;
    out.expect_code(2);
    assert!(out.stderr.contains("the connection holding the migration lock was lost") && out.stderr.contains("next: tsmigrate backfill"), "{}", out.stderr);
    let report = second.exited().await;
    report.expect_success();
    let report = report.details();
    assert_eq!((field(&report, "read").as_i64(), field(&report, "inserted").as_i64()), (Some(EVENTS), Some(EVENTS)), "{report}");
    assert_eq!(target_counts(&env).await, (EVENTS, EVENTS), "no gap, no duplicate");
    env.cleanup().await;
}

/// `events` seeded and backfilled.
async fn backfilled(events: u64) -> TestEnv {
    let env = TestEnv::new().await;
    seed(&env, events, false);
    prepare_and_dual_write(&env, Mode::Postgres);
    env.cli(&["backfill"]).expect_success();
    env
}

/// Relative times as separate arguments (`--from -6h`) reach every command that takes a
/// time, not only backfill: the window they name is the one used.
#[tokio::test]
async fn validate_and_user_sets_build_take_relative_times_as_separate_arguments() {
    let env = backfilled(400).await;
    let now = chrono::Utc::now();
    let report = env.cli(&["validate", "--from", "-6h", "--to", "-3h", "--json"]).expect_success().details();
    let from: chrono::DateTime<chrono::Utc> = field(&report, "window.from").as_str().unwrap().parse().unwrap();
    let to: chrono::DateTime<chrono::Utc> = field(&report, "window.to").as_str().unwrap().parse().unwrap();
    // Rounded down to whole hours.
    assert!(from > now - chrono::Duration::hours(7) && from <= now - chrono::Duration::hours(6), "{from}");
    assert!(to > now - chrono::Duration::hours(4) && to <= now - chrono::Duration::hours(3), "{to}");

    let built = env.cli(&["user-sets", "build", "--from", "-2d", "--to", "now", "--json"]).expect_success().details();
    assert!(field(&built, "marked_minutes").as_u64().unwrap() > 0, "the range was marked for rebuild: {built}");
    env.cleanup().await;
}

/// Repair stops between its batches too: interrupted while its first batch waits to
/// commit, that batch commits with its checkpoint, the next never starts, and the re-run
/// resumes after it.
#[tokio::test]
async fn an_interrupted_repair_stops_after_the_batch_in_hand_and_a_rerun_resumes() {
    let env = backfilled(EVENTS as u64).await;
    sqlx::query("DELETE FROM analytics_events_ts").execute(&env.pool).await.unwrap();
    env.cli(&["validate", "--no-refresh"]).expect_code(1);
    let missing: i64 = sqlx::query_scalar("SELECT count(*) FROM tsmigrate.validation_findings WHERE kind = 'missing'").fetch_one(&env.pool).await.unwrap();
    assert!(missing > 1000, "more than one batch of 1000 to repair: {missing}");

    let hold = hold_checkpoints(&env).await;
    let mut repair = Running::start(&env, &["repair", "--json"]);
    env.wait_until_tsmigrate_waits_for_a_lock("the repair's first checkpoint").await;
    repair.interrupt();
    // Noted before the batch in hand may commit.
    repair.noted_the_interrupt().await;
    hold.rollback().await.unwrap();
    let out = repair.exited().await;
    out.expect_code(130);
    assert_eq!(field(&out.json(), "details.stopped_at"), format!("after 1000 of {missing} differences").as_str());
    let done: i64 =
        sqlx::query_scalar("SELECT (position->>'done')::bigint FROM tsmigrate.checkpoints WHERE name LIKE 'repair:%'").fetch_one(&env.pool).await.unwrap();
    assert_eq!(done, 1000, "the batch in hand committed, the next never started");
    assert_eq!(target_counts(&env).await, (1000, 1000));
    let (outcome,): (String,) =
        sqlx::query_as("SELECT outcome FROM tsmigrate.audit_log WHERE command = 'repair' ORDER BY id DESC LIMIT 1").fetch_one(&env.pool).await.unwrap();
    assert_eq!(outcome, "interrupted");

    let report = env.cli(&["repair", "--json"]).expect_success().details();
    assert_eq!(field(&report, "resumed_after").as_i64(), Some(1000), "{report}");
    assert_eq!(field(&report, "counts.copied").as_i64(), Some(missing), "every missing event copied once over both runs: {report}");
    assert_eq!(target_counts(&env).await, (missing, missing), "no gap, no duplicate");
    env.cleanup().await;
}

/// A second interrupt ends the command at once, even with a page waiting to commit: that
/// page rolls back, the envelope says so, and nothing half-done remains.
#[tokio::test]
async fn a_second_interrupt_ends_at_once_and_the_page_in_flight_rolls_back() {
    let env = TestEnv::new().await;
    seed(&env, 400, false);
    prepare_and_dual_write(&env, Mode::Postgres);
    let hold = hold_checkpoints(&env).await;
    let mut backfill = Running::start(&env, &["backfill", "--page-size", "100", "--json"]);
    env.wait_until_tsmigrate_waits_for_a_lock("the backfill's first checkpoint").await;
    backfill.interrupt();
    backfill.noted_the_interrupt().await;
    backfill.interrupt();
    let out = backfill.exited().await;
    out.expect_code(130);
    assert!(field(&out.json(), "error.message").as_str().unwrap().contains("interrupted twice (SIGINT) and ended at once"), "{}", out.stdout);
    hold.rollback().await.unwrap();
    eventually("the ended backfill's backends to go", Duration::from_secs(60), || async {
        let left: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND application_name = 'tsmigrate'")
            .fetch_one(&env.pool)
            .await
            .unwrap();
        (left == 0).then_some(())
    })
    .await;
    assert_eq!(target_counts(&env).await, (0, 0), "the page in flight rolled back with its checkpoint");
    assert_eq!(committed_pages(&env).await, 0);
    env.cleanup().await;
}

/// A validation, which only reads until it records its run, is abandoned where it waits:
/// nothing recorded, nothing moved, exit 130, audited. SIGTERM (a supervisor stopping it)
/// is an interrupt like Ctrl-C. It does not resume: it says so, and names the command line
/// it was given (relative times as the instants they meant) as the one that starts it over.
#[tokio::test]
async fn a_validation_stopped_with_sigterm_records_nothing_exits_130_and_says_what_starts_it_over() {
    let env = backfilled(400).await;
    let hour = chrono::Utc::now().timestamp() / 3600;
    let from = chrono::DateTime::from_timestamp((hour - 3) * 3600, 0).unwrap().to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true);
    // Held at the very end, where it records its run.
    let mut hold = env.pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE tsmigrate.validation_runs IN EXCLUSIVE MODE").execute(&mut *hold).await.unwrap();
    let mut validate = Running::start(&env, &["validate", "--from", &from, "--limit", "5", "--json"]);
    env.wait_until_tsmigrate_waits_for_a_lock("the validation's record of its run").await;
    validate.signal("-TERM");
    let out = validate.exited().await;
    hold.rollback().await.unwrap();
    out.expect_code(130);
    let envelope = out.json();
    assert_eq!((field(&envelope, "details.stopped"), field(&envelope, "details.signal")), (&Value::from("interrupted"), &Value::from("SIGTERM")), "{envelope}");
    let again = format!("tsmigrate validate --from {from} --limit 5");
    assert_eq!(
        (field(&envelope, "details.resume"), field(&envelope, "details.rerun")),
        (&Value::from(again.clone()), &Value::from("starts_over")),
        "{envelope}"
    );
    assert!(out.stderr.contains(&format!("next: {again}   # starts over")) && !out.stderr.contains("resumes where"), "{}", out.stderr);
    let runs: i64 = sqlx::query_scalar("SELECT count(*) FROM tsmigrate.validation_runs").fetch_one(&env.pool).await.unwrap();
    assert_eq!(runs, 0, "the interrupted run was not recorded");
    let (outcome, phase): (String, String) =
        sqlx::query_as("SELECT outcome, to_phase FROM tsmigrate.audit_log WHERE command = 'validate' ORDER BY id DESC LIMIT 1")
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert_eq!((outcome.as_str(), phase.as_str()), ("interrupted", "backfilled"), "audited, the phase not moved");
    env.cleanup().await;
}
