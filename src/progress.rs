//! Progress on long work: a bar with rate and ETA on a terminal, a plain line every few
//! seconds otherwise (CI logs), always on stderr so `--json` output stays clean. The rate
//! is the recent one ([`Pace`]), so a stall shows as one instead of an old average; and a
//! rate limit ([`RateLimit`]) that never banks credit while the work stalls.

use std::collections::VecDeque;
use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

/// How often the bar's rate or a plain line is refreshed (also while nothing moves).
const TICK: Duration = Duration::from_secs(1);
/// Plain lines (no terminal) this often.
const LINE_EVERY: Duration = Duration::from_secs(5);
/// The rate is measured over this much recent time.
pub const PACE_WINDOW: Duration = Duration::from_secs(10);
/// Nothing done for this long is a stall, said as such.
pub const STALLED_AFTER: Duration = Duration::from_secs(10);

pub struct Progress {
    shared: Arc<Mutex<Shown>>,
    bar: Option<ProgressBar>,
    ticker: Option<(Arc<AtomicBool>, std::thread::JoinHandle<()>)>,
}

/// What is shown: the counts and their recent pace.
struct Shown {
    label: String,
    total: u64,
    done: u64,
    pace: Pace,
}

impl Progress {
    /// `quiet` suppresses the plain lines (the bar still shows on a terminal).
    pub fn new(label: &str, total: u64, quiet: bool) -> Progress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new(total);
            bar.set_style(ProgressStyle::with_template("{prefix} [{bar:40}] {pos}/{len} {msg}").expect("static template").progress_chars("=> "));
            bar.set_prefix(label.to_string());
            bar
        });
        let now = Instant::now();
        let shared = Arc::new(Mutex::new(Shown { label: label.into(), total, done: 0, pace: Pace::new(0, now) }));
        let ticker = (bar.is_some() || !quiet).then(|| spawn_ticker(shared.clone(), bar.clone()));
        Progress { shared, bar, ticker }
    }

    pub fn set_total(&mut self, total: u64) {
        self.shown().total = total;
        if let Some(bar) = &self.bar {
            bar.set_length(total);
        }
    }

    pub fn set(&self, done: u64) {
        let mut shown = self.shown();
        shown.done = done;
        shown.pace.record(done, Instant::now());
        if let Some(bar) = &self.bar {
            // More done than the estimate said (events scored in range arrived meanwhile):
            // the bar grows rather than pass its end.
            bar.set_length(shown.total.max(done));
            bar.set_position(done);
        }
    }

    fn shown(&self) -> std::sync::MutexGuard<'_, Shown> {
        self.shared.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some((stop, thread)) = self.ticker.take() {
            stop.store(true, Ordering::SeqCst);
            thread.thread().unpark();
            let _ = thread.join();
        }
    }
}

/// Refreshes the rate every [`TICK`] — while nothing moves too, which is when it matters.
fn spawn_ticker(shared: Arc<Mutex<Shown>>, bar: Option<ProgressBar>) -> (Arc<AtomicBool>, std::thread::JoinHandle<()>) {
    let stop = Arc::new(AtomicBool::new(false));
    let stopped = stop.clone();
    let thread = std::thread::spawn(move || {
        let mut last_line = Instant::now();
        while !stopped.load(Ordering::SeqCst) {
            std::thread::park_timeout(TICK);
            let now = Instant::now();
            let shown = shared.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            match &bar {
                Some(bar) => bar.set_message(shown.pace.summary(shown.done, shown.total, now)),
                None if now.duration_since(last_line) >= LINE_EVERY && !stopped.load(Ordering::SeqCst) => {
                    last_line = now;
                    eprintln!("{}", shown.line(now));
                }
                None => {}
            }
        }
    });
    (stop, thread)
}

impl Shown {
    fn line(&self, now: Instant) -> String {
        let total = self.total.max(self.done);
        format!("{}: {}/{total} ({:.1}%) {}", self.label, self.done, percent(self.done, self.total), self.pace.summary(self.done, self.total, now))
    }
}

/// Done of total in percent, never past 100 (a total that was an estimate can be passed).
pub fn percent(done: u64, total: u64) -> f64 {
    if total == 0 {
        return 100.0;
    }
    (100.0 * done as f64 / total as f64).min(100.0)
}

/// The recent rate of a count: samples over the last [`PACE_WINDOW`], so the rate follows
/// what happens now, and a stall shows as a stall. Fed instants; does no timing itself.
#[derive(Debug, Clone)]
pub struct Pace {
    /// (when, done), oldest first; one sample older than the window is kept as its base.
    samples: VecDeque<(Instant, u64)>,
    /// When the count last moved.
    moved: Instant,
}

impl Pace {
    pub fn new(done: u64, now: Instant) -> Pace {
        Pace { samples: VecDeque::from([(now, done)]), moved: now }
    }

    pub fn record(&mut self, done: u64, now: Instant) {
        if self.samples.back().is_none_or(|(_, last)| *last != done) {
            self.moved = now;
        }
        self.samples.push_back((now, done));
        // Keep one sample at or before the window's start as the base.
        while self.samples.len() > 1 && self.samples[1].0 + PACE_WINDOW <= now {
            self.samples.pop_front();
        }
    }

    /// Units per second over the recent window up to `now` (so it falls during a stall).
    pub fn rate(&self, now: Instant) -> Option<f64> {
        let (&(base_at, base), &(_, last)) = (self.samples.front()?, self.samples.back()?);
        let seconds = now.duration_since(base_at).as_secs_f64();
        (seconds > 0.0).then(|| last.saturating_sub(base) as f64 / seconds)
    }

    /// Nothing done for [`STALLED_AFTER`]: how long it has been.
    pub fn stalled(&self, now: Instant) -> Option<Duration> {
        Some(now.duration_since(self.moved)).filter(|idle| *idle >= STALLED_AFTER)
    }

    /// `1200/s, eta 40s`, or `stalled for 15s`.
    pub fn summary(&self, done: u64, total: u64, now: Instant) -> String {
        if let Some(idle) = self.stalled(now) {
            return format!("stalled: nothing done for {}s", idle.as_secs());
        }
        let Some(rate) = self.rate(now).filter(|r| *r > 0.0) else { return "-/s, eta -".into() };
        let eta = if total > done { format!("{:.0}s", (total - done) as f64 / rate) } else { "-".into() };
        format!("{rate:.0}/s, eta {eta}")
    }
}

/// At most `per_second` units a second, with no credit banked while the work stalls:
/// each batch costs its size over the rate, counted from when the work resumed after the
/// batch before (its wait over, or its commit if that came later) — so time spent stalled
/// is never paid back as a burst catching up. Fed instants.
#[derive(Debug, Clone)]
pub struct RateLimit {
    per_second: f64,
    /// When the work went on after the last batch.
    resumed: Instant,
}

impl RateLimit {
    /// Work starting at `now`.
    pub fn new(per_second: u64, now: Instant) -> RateLimit {
        RateLimit { per_second: per_second.max(1) as f64, resumed: now }
    }

    /// A batch of `n` units committed at `now`: how long to wait before the next.
    pub fn after(&mut self, n: u64, now: Instant) -> Option<Duration> {
        let paid_until = self.resumed + Duration::from_secs_f64(n as f64 / self.per_second);
        self.resumed = paid_until.max(now);
        Some(paid_until.saturating_duration_since(now)).filter(|wait| !wait.is_zero())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs pages of `page` units, each taking `work` to commit, through the limit from
    /// `start` (with a stall of `stall` before page `stall_at`); returns when each committed.
    fn commits(limit: &mut RateLimit, start: Instant, pages: usize, page: u64, work: Duration, stall_at: usize, stall: Duration) -> Vec<Instant> {
        let mut now = start;
        let mut at = vec![];
        for i in 0..pages {
            now += work;
            if i == stall_at {
                now += stall;
            }
            at.push(now);
            now += limit.after(page, now).unwrap_or_default();
        }
        at
    }

    /// The most units committed within any `window` (pages of `page`).
    fn busiest(at: &[Instant], page: u64, window: Duration) -> u64 {
        at.iter().map(|from| at.iter().filter(|t| **t >= *from && **t < *from + window).count() as u64 * page).max().unwrap_or(0)
    }

    #[test]
    fn the_rate_limit_holds_the_rate_and_banks_no_credit_over_a_stall() {
        let start = Instant::now();
        let second = Duration::from_secs(1);
        // 400/s in pages of 100 taking 50 ms each: 4 pages a second, steady.
        let steady = commits(&mut RateLimit::new(400, start), start, 40, 100, Duration::from_millis(50), usize::MAX, Duration::ZERO);
        let took = steady[39].duration_since(steady[0]).as_secs_f64();
        assert!((took - 39.0 / 4.0).abs() < 0.01, "40 pages at 4 a second take 9.75 s, took {took}");
        assert!(busiest(&steady, 100, second) <= 400, "{}", busiest(&steady, 100, second));
        // A 30 s stall after page 10: the pace after it is the rate again, not a catch-up
        // burst of the 12 000 units the stall "owed" (what the limiter used to allow).
        let stalled = commits(&mut RateLimit::new(400, start), start, 40, 100, Duration::from_millis(50), 10, Duration::from_secs(30));
        let after: Vec<Instant> = stalled[10..].to_vec();
        // The page that ended the stall was slow itself; the pace after it is the rate's.
        assert!(busiest(&after, 100, second) <= 500, "at most one page over the rate after a stall: {}", busiest(&after, 100, second));
        assert!(busiest(&after[1..], 100, second) <= 400, "{}", busiest(&after[1..], 100, second));
        let took = after[29].duration_since(after[0]).as_secs_f64();
        assert!(took >= 29.0 / 4.0 - 0.25 - 0.01, "30 pages after the stall still take about 7.25 s, took {took}");
    }

    #[test]
    fn the_rate_limit_does_not_slow_work_slower_than_the_rate() {
        let start = Instant::now();
        let mut limit = RateLimit::new(1000, start);
        let at = commits(&mut limit, start, 10, 100, Duration::from_millis(200), usize::MAX, Duration::ZERO);
        let took = at[9].duration_since(at[0]);
        assert_eq!(took, Duration::from_millis(200 * 9), "pages slower than the rate never wait");
    }

    #[test]
    fn the_pace_is_recent_and_a_stall_shows_as_one() {
        let t0 = Instant::now();
        let s = |secs: u64| t0 + Duration::from_secs(secs);
        let mut pace = Pace::new(0, t0);
        for i in 1..=20 {
            pace.record(i * 1000, s(i));
        }
        assert_eq!(pace.rate(s(20)), Some(1000.0));
        assert_eq!(pace.summary(20_000, 30_000, s(20)), "1000/s, eta 10s");
        // Nothing moves: the rate falls with time, then says stalled.
        assert_eq!(pace.rate(s(25)).map(f64::round), Some(667.0), "10 000 over the last 15 s");
        assert_eq!(pace.stalled(s(25)), None);
        assert_eq!(pace.stalled(s(31)), Some(Duration::from_secs(11)));
        assert_eq!(pace.summary(20_000, 30_000, s(31)), "stalled: nothing done for 11s");
        // Samples while stalled keep it stalled; moving again ends it, at the new pace.
        pace.record(20_000, s(32));
        assert!(pace.stalled(s(32)).is_some());
        pace.record(20_500, s(33));
        assert_eq!(pace.stalled(s(33)), None);
        assert!(pace.rate(s(33)).unwrap() < 100.0, "the recent pace, not the old average of 1000/s");
    }

    #[test]
    fn percent_never_passes_100_when_the_estimate_was_passed() {
        assert_eq!(percent(1239, 1000), 100.0);
        assert_eq!(percent(500, 1000), 50.0);
        assert_eq!(percent(0, 0), 100.0);
        let shown = Shown { label: "backfill".into(), total: 1000, done: 1239, pace: Pace::new(1239, Instant::now()) };
        assert!(shown.line(Instant::now()).starts_with("backfill: 1239/1239 (100.0%)"), "{}", shown.line(Instant::now()));
    }
}
