//! Shadow reads: the answer served from one source is compared with the other's, and
//! differences are counted (`tsmigrate_shadow_mismatches_total{endpoint}`) and logged.
//!
//! Comparison is on the wire JSON, normalized: `source` and `cached` are dropped, and when
//! exactly one side could count unique users exactly (its raw horizon differs from the
//! other's), unique users are not compared — that difference is documented, not a defect.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde_json::Value;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// At most this many differences are described in a log line.
const SHOWN: usize = 5;
/// Shadow reads running at once; more are skipped (and counted) rather than queued.
const IN_FLIGHT: usize = 8;

/// Counters of shadow comparisons (also exported as metrics), readable in-process.
#[derive(Debug)]
pub struct ShadowStats {
    pub comparisons: AtomicU64,
    pub mismatches: AtomicU64,
    /// The other side could not answer.
    pub errors: AtomicU64,
    /// Not compared: too many shadow reads were running.
    pub skipped: AtomicU64,
    in_flight: Arc<Semaphore>,
}

impl Default for ShadowStats {
    fn default() -> Self {
        ShadowStats {
            comparisons: AtomicU64::new(0),
            mismatches: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            skipped: AtomicU64::new(0),
            in_flight: Arc::new(Semaphore::new(IN_FLIGHT)),
        }
    }
}

impl ShadowStats {
    /// A slot for one shadow read, if one is free.
    pub fn try_begin(&self) -> Option<OwnedSemaphorePermit> {
        self.in_flight.clone().try_acquire_owned().ok()
    }

    pub fn record_skipped(&self, endpoint: &'static str) {
        self.skipped.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("tsmigrate_shadow_skipped_total", "endpoint" => endpoint).increment(1);
    }

    pub fn comparisons(&self) -> u64 {
        self.comparisons.load(Ordering::Relaxed)
    }
    pub fn mismatches(&self) -> u64 {
        self.mismatches.load(Ordering::Relaxed)
    }
    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }

    /// Records one comparison of `endpoint` with its differences (empty = match).
    pub fn record(&self, endpoint: &'static str, differences: &[String]) {
        self.comparisons.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("tsmigrate_shadow_comparisons_total", "endpoint" => endpoint).increment(1);
        if !differences.is_empty() {
            self.mismatches.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("tsmigrate_shadow_mismatches_total", "endpoint" => endpoint).increment(1);
        }
    }

    pub fn record_error(&self, endpoint: &'static str) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("tsmigrate_shadow_errors_total", "endpoint" => endpoint).increment(1);
    }
}

/// The differences between two answers, after normalization; empty when they agree.
pub fn compare(served: &Value, other: &Value) -> Vec<String> {
    let (mut a, mut b) = (normalize(served), normalize(other));
    if a.get("unique_users_exact") != b.get("unique_users_exact") {
        for v in [&mut a, &mut b] {
            if let Some(obj) = v.as_object_mut() {
                obj.remove("unique_users");
                obj.remove("unique_users_exact");
            }
        }
    }
    let mut out = Vec::new();
    differences("", &a, &b, &mut out);
    out
}

/// Without the fields that differ by design (`source`, `cached`).
pub fn normalize(answer: &Value) -> Value {
    let mut answer = answer.clone();
    if let Some(obj) = answer.as_object_mut() {
        obj.remove("source");
        obj.remove("cached");
    }
    answer
}

fn differences(path: &str, a: &Value, b: &Value, out: &mut Vec<String>) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
            keys.sort();
            keys.dedup();
            for key in keys {
                let here = if path.is_empty() { key.clone() } else { format!("{path}.{key}") };
                differences(&here, x.get(key).unwrap_or(&Value::Null), y.get(key).unwrap_or(&Value::Null), out);
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            if x.len() != y.len() {
                out.push(format!("{path}: {} items != {} items", x.len(), y.len()));
            }
            for (i, (p, q)) in x.iter().zip(y).enumerate() {
                differences(&format!("{path}[{i}]"), p, q, out);
            }
        }
        _ if a != b => out.push(format!("{path}: {a} != {b}")),
        _ => {}
    }
}

/// A log-sized description of `differences`.
pub fn short_diff(differences: &[String]) -> String {
    let mut text = differences.iter().take(SHOWN).cloned().collect::<Vec<_>>().join("; ");
    if differences.len() > SHOWN {
        text.push_str(&format!("; and {} more", differences.len() - SHOWN));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn source_and_cached_do_not_count_as_differences() {
        let a = json!({"source": "legacy", "cached": true, "total_events": 5, "events_by_type": {"click": 5}});
        let b = json!({"source": "target", "cached": false, "total_events": 5, "events_by_type": {"click": 5}});
        assert!(compare(&a, &b).is_empty());
    }

    #[test]
    fn differences_name_their_path() {
        let a = json!({"total_events": 5, "events_by_type": {"click": 5}, "rows": [{"n": 1}, {"n": 2}]});
        let b = json!({"total_events": 4, "events_by_type": {"click": 4, "view": 1}, "rows": [{"n": 1}]});
        let diff = compare(&a, &b);
        assert_eq!(diff, vec!["events_by_type.click: 5 != 4", "events_by_type.view: null != 1", "rows: 2 items != 1 items", "total_events: 5 != 4"]);
        assert_eq!(short_diff(&diff[..2]), "events_by_type.click: 5 != 4; events_by_type.view: null != 1");
        assert!(short_diff(&[diff.clone(), diff].concat()).ends_with("and 3 more"));
    }

    #[test]
    fn unique_users_are_compared_only_when_both_are_exact_or_both_approximate() {
        let a = json!({"total_events": 5, "unique_users": 3, "unique_users_exact": true});
        let b = json!({"total_events": 5, "unique_users": 4, "unique_users_exact": false});
        assert!(compare(&a, &b).is_empty());
        let c = json!({"total_events": 5, "unique_users": 4, "unique_users_exact": true});
        assert_eq!(compare(&a, &c), vec!["unique_users: 3 != 4"]);
    }
}
