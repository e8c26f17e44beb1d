//! Warming the read path before `/ready` says 200: the first request a fresh process
//! answers would otherwise pay for opening the target pool's connections, each connection's
//! first look at the tables (catalog and chunk caches), preparing every statement and the
//! first routing and horizon lookups — tens of milliseconds that a user behind a load
//! balancer would see after every deploy. The daemon asks each read endpoint's question,
//! uncached and unrecorded, on a few concurrent tasks (as many connections as one answer
//! uses at once), twice, and only then lets `/ready` answer 200. A warm-up that fails or
//! runs past its deadline is logged and ends: it never keeps a service out of rotation (the
//! probes do).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use chrono::Utc;
use futures::future::{join_all, try_join_all};

use super::AppState;
use crate::reads::{self, ReadSource, Request, TimeRange};

/// A warm-up gives up after this; `/ready` then answers from its probes alone.
pub const WARM_UP_DEADLINE: Duration = Duration::from_secs(20);

/// Concurrent askers at most: about the connections one answer uses at once (its
/// concurrent queries), so the connections a first request would open are open.
const MAX_WIDTH: usize = 4;

/// Rounds of every question on every task: the second finds the statements of answers
/// whose first round went another way (a horizon or routing lookup that was cached).
const ROUNDS: usize = 2;

/// Whether the read path is warm: true from the start for a server nobody warms.
#[derive(Debug)]
pub struct Warmth(AtomicBool);

impl Default for Warmth {
    fn default() -> Self {
        Warmth(AtomicBool::new(true))
    }
}

impl Warmth {
    pub fn cold() -> Self {
        Warmth(AtomicBool::new(false))
    }

    pub fn is_warm(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }

    fn warmed(&self) {
        self.0.store(true, Ordering::Release);
    }
}

/// The questions a warm-up asks: one per endpoint, with the windows users ask most.
fn questions(now: chrono::DateTime<Utc>) -> Vec<Request> {
    let days = |n: i64| TimeRange { from: now - chrono::Duration::days(n), to: now };
    let mut out = vec![
        Request::Summary(days(30)),
        Request::Summary(days(1)),
        Request::Hourly { range: days(1), filter: Default::default() },
        Request::Hourly { range: days(7), filter: Default::default() },
    ];
    out.extend(Request::comparison(chrono::Duration::days(1), now));
    out.extend(Request::popular(30, now));
    out.extend(Request::intervals(chrono::Duration::minutes(10), chrono::Duration::hours(24), now));
    out.extend(Request::intervals(chrono::Duration::hours(1), chrono::Duration::days(7), now));
    out
}

/// Warms the target's read path of `state` when the target serves reads (or shadows
/// them), then marks it warm. Never fails: what goes wrong is logged.
pub async fn warm_up(state: AppState) {
    let started = Instant::now();
    match tokio::time::timeout(WARM_UP_DEADLINE, ask_everything(&state)).await {
        Ok(Ok(asked)) => tracing::info!(answers = asked, elapsed_ms = started.elapsed().as_millis() as u64, "read path warmed up"),
        Ok(Err(e)) => tracing::warn!(error = %e, "warming up the read path failed; serving anyway (the first reads may be slower)"),
        Err(_) => tracing::warn!(deadline_secs = WARM_UP_DEADLINE.as_secs(), "warming up the read path took too long; serving anyway"),
    }
    state.warmth.warmed();
}

async fn ask_everything(state: &AppState) -> Result<usize, reads::ReadError> {
    if state.target().is_none() {
        return Ok(0);
    }
    let routing = state.routing.current(state.target()).await;
    // Only the target's pools start cold; the legacy path reads Redis over the connection
    // the process already holds (and its 30-day reads are too heavy to repeat at each start).
    if routing.source != ReadSource::Target && !routing.shadow {
        return Ok(0);
    }
    let connections = state.ctx.settings.database.max_connections as usize;
    // Every connection the pools may hold, open and primed (`connect::PgLimits::serving`)
    // before the questions: a request would otherwise wait for one still opening.
    if let Some(target) = state.target() {
        let held = try_join_all((0..connections).map(|_| target.acquire())).await.map_err(|e| reads::ReadError::postgres("the target database", e))?;
        drop(held);
    }
    if let Some(Ok(replica)) = state.ctx.read_replica() {
        if let Err(e) = try_join_all((0..connections).map(|_| replica.acquire())).await {
            tracing::warn!(error = %e, "could not open the read replica's connections while warming up; reads go to the primary until it answers");
        }
    }
    let width = connections.clamp(1, MAX_WIDTH);
    let mut asked = 0;
    for _ in 0..ROUNDS {
        let now = reads::minute_floor(Utc::now());
        let ctx = state.reads_at(now).routed(routing, &state.replica).await;
        let questions = questions(now);
        let tasks = (0..width).map(|_| async {
            for question in &questions {
                ReadSource::Target.answer(&ctx, question).await?;
            }
            Ok::<_, reads::ReadError>(questions.len())
        });
        for done in join_all(tasks).await {
            asked += done?;
        }
    }
    Ok(asked)
}
