//! Progress on long work: a bar with rate and ETA on a terminal, a plain line every few
//! seconds otherwise (CI logs), always on stderr so `--json` output stays clean.

use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

pub struct Progress {
    label: String,
    total: u64,
    bar: Option<ProgressBar>,
    started: Instant,
    last_line: Mutex<Instant>,
    quiet: bool,
}

const LINE_EVERY: Duration = Duration::from_secs(5);

impl Progress {
    /// `quiet` suppresses the plain lines (the bar still shows on a terminal).
    pub fn new(label: &str, total: u64, quiet: bool) -> Progress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new(total);
            bar.set_style(ProgressStyle::with_template("{prefix} [{bar:40}] {pos}/{len} {per_sec} eta {eta}").expect("static template").progress_chars("=> "));
            bar.set_prefix(label.to_string());
            bar
        });
        Progress { label: label.into(), total, bar, started: Instant::now(), last_line: Mutex::new(Instant::now()), quiet }
    }

    pub fn set_total(&mut self, total: u64) {
        self.total = total;
        if let Some(bar) = &self.bar {
            bar.set_length(total);
        }
    }

    pub fn set(&self, done: u64) {
        if let Some(bar) = &self.bar {
            bar.set_position(done);
            return;
        }
        if self.quiet {
            return;
        }
        let mut last = self.last_line.lock().expect("progress lock");
        if last.elapsed() >= LINE_EVERY {
            *last = Instant::now();
            eprintln!("{}", self.line(done));
        }
    }

    fn line(&self, done: u64) -> String {
        let secs = self.started.elapsed().as_secs_f64().max(0.001);
        let rate = done as f64 / secs;
        let eta = if rate > 0.0 && self.total > done { format!("{:.0}s", (self.total - done) as f64 / rate) } else { "-".into() };
        let pct = if self.total > 0 { 100.0 * done as f64 / self.total as f64 } else { 100.0 };
        format!("{}: {}/{} ({pct:.1}%) {} eta {eta}", self.label, crate::human::count(done), crate::human::count(self.total), crate::human::rate(rate, ""))
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
