//! How values are written for people, one helper per kind of value, so every output says a
//! count, a rate, a size, a time or a quantity of a unit the same way. Pure.

use chrono::{DateTime, Utc};
use num_format::{Locale, ToFormattedString};

/// A count with thousands separators: `50,239`.
pub fn count<N: ToFormattedString>(n: N) -> String {
    n.to_formatted_string(&Locale::en)
}

/// A rate, rounded to a whole number per second: `2,357 events/s` (`2,357/s` without a unit).
/// The decimals of a measured rate are noise.
pub fn rate(per_second: f64, unit: &str) -> String {
    let whole = if per_second.is_finite() { per_second.round().max(0.0) as u64 } else { 0 };
    match unit {
        "" => format!("{}/s", count(whole)),
        unit => format!("{} {unit}/s", count(whole)),
    }
}

/// A size in binary units: `1.46 MiB`, `512 B`.
pub fn bytes<N: humansize::ToF64 + humansize::Unsigned>(n: N) -> String {
    humansize::format_size(n, humansize::BINARY)
}

/// A size that may be negative or unknown in the source type (PostgreSQL's bigint).
pub fn bytes_i64(n: i64) -> String {
    bytes(n.max(0) as u64)
}

/// `1 hour`, `2 hours`, `0 hours`; `unit` is the singular, the plural adds an `s`.
pub fn plural(n: impl Into<i128>, unit: &str) -> String {
    let n = n.into();
    let shown = count(n);
    if n == 1 {
        format!("{shown} {unit}")
    } else {
        format!("{shown} {unit}s")
    }
}

/// A moment, to the second, in UTC: `2026-12-07 06:00:00 UTC`.
pub fn utc(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

/// Rows as aligned columns for a terminal (comfy-table, no borders): each line starts with
/// `indent`, columns are two spaces apart and as wide as their widest cell, nothing trails.
/// `header` is the first line when given.
pub fn table(indent: &str, header: Option<&[&str]>, rows: Vec<Vec<String>>) -> String {
    let mut table = comfy_table::Table::new();
    table.load_style(comfy_table::presets::NOTHING);
    if let Some(header) = header {
        table.set_header(header.to_vec());
    }
    table.add_rows(rows);
    for column in table.column_iter_mut() {
        column.set_padding((0, 2));
    }
    table.lines().map(|line| format!("{indent}{}\n", line.trim_end())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn counts_and_rates_have_separators_and_no_noise_decimals() {
        assert_eq!(count(50_239u64), "50,239");
        assert_eq!(count(-1_234_567i64), "-1,234,567");
        assert_eq!(count(12u8), "12");
        assert_eq!(rate(2356.9384, ""), "2,357/s");
        assert_eq!(rate(9_800.2, "events"), "9,800 events/s");
        assert_eq!(rate(0.4, "events"), "0 events/s");
        assert_eq!(rate(f64::NAN, "events"), "0 events/s");
    }

    #[test]
    fn sizes_are_binary_units() {
        assert_eq!(bytes(512u64), "512 B");
        assert_eq!(bytes(1_048_576u64), "1 MiB");
        assert_eq!(bytes(1_536u64), "1.50 KiB");
        assert_eq!(bytes_i64(-5), "0 B");
        assert_eq!(bytes_i64(3 * 1_073_741_824), "3 GiB");
    }

    #[test]
    fn table_columns_are_as_wide_as_their_widest_cell() {
        let rows =
            vec![vec!["#1".to_string(), "prepare".into(), "done".into()], vec!["#12".into(), "dual-write start".into(), "refused: a long reason".into()]];
        let text = table("  ", Some(&["id", "command", "outcome"]), rows);
        assert_eq!(text, "  id   command           outcome\n  #1   prepare           done\n  #12  dual-write start  refused: a long reason\n");
        assert_eq!(table("", None, vec![]), "");
    }

    #[test]
    fn one_is_singular() {
        assert_eq!(plural(1u32, "hour"), "1 hour");
        assert_eq!(plural(0u32, "hour"), "0 hours");
        assert_eq!(plural(7_743i64, "minute"), "7,743 minutes");
    }

    #[test]
    fn times_are_seconds_in_utc() {
        let t = Utc.with_ymd_and_hms(2026, 12, 7, 6, 0, 0).unwrap() + chrono::Duration::nanoseconds(123_456_789);
        assert_eq!(utc(t), "2026-12-07 06:00:00 UTC");
    }
}
