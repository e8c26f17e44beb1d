//! The per-event fingerprint both systems compute, so that an hour of events can be
//! compared by a count and an order-independent hash without moving the events.
//!
//! Canonical text of a row: `event_id | time_ms | event_name | category | user_id |
//! session_id | page_url | referrer | properties | device_info`, joined with U+001F,
//! NULL written `\N`. The JSON columns are written exactly as PostgreSQL prints a
//! `jsonb` (`properties::text`), which [`jsonb_text`] reproduces from the
//! `serde_json::Value` the row was written from. Fingerprint = the first 8 bytes
//! (big-endian) of the MD5 of that text; a bucket's hash is the wrapping sum of its
//! fingerprints. `validation/event_fingerprints.sql` is the same definition in SQL.
//!
//! The raw digest ([`raw_digest`]) is a cheaper, stricter sibling: a hash of the exact
//! member bytes as Redis holds them, with the event time in milliseconds, that the writer
//! stores with each row it parsed from a member (`analytics_events_ts.raw_digest`).
//! Validation hashes Redis members per minute without parsing them and compares the sums
//! with the stored ones; equal raw digests imply equal fingerprints (the row was parsed
//! from those bytes and is unchanged since), while different ones prove nothing (key order,
//! whitespace, number spelling): such a minute is compared by fingerprints, from parsed
//! members, as before.

use std::fmt::Write as _;

use md5::{Digest, Md5};
use serde_json::{Number, Value};

use crate::event::TargetEvent;

/// Between the fields of the canonical text (cannot occur in sane data, unlike `|`).
pub const FIELD_SEPARATOR: char = '\u{1f}';
/// How a NULL column is written in the canonical text.
pub const NULL_TEXT: &str = "\\N";

/// Computes fingerprints, reusing one text buffer (hashing runs per event, a million times).
#[derive(Debug, Default)]
pub struct Fingerprinter {
    text: String,
}

impl Fingerprinter {
    pub fn fingerprint(&mut self, event: &TargetEvent) -> u64 {
        canonical_text(event, &mut self.text);
        fingerprint_of(&self.text)
    }
}

/// The 64-bit fingerprint of a canonical text: MD5, first 8 bytes, big-endian
/// (SQL: `('x' || substr(md5(text), 1, 16))::bit(64)::bigint`, the same bits).
pub fn fingerprint_of(text: &str) -> u64 {
    let digest = Md5::digest(text.as_bytes());
    u64::from_be_bytes(digest[..8].try_into().expect("md5 digests are 16 bytes"))
}

/// The raw digest of a member (`analytics_events_ts.raw_digest`, as the signed `bigint`
/// holding its 64 bits): rapidhash v3 (a portable hash whose output is fixed across versions
/// and platforms, default secrets) of the time in milliseconds (8 bytes, big-endian; the
/// score rounded as `TargetEvent::from_member` rounds it) followed by the member's exact bytes.
/// Not a fingerprint: it says nothing about two members that differ only in spelling.
#[derive(Debug, Default)]
pub struct RawDigester {
    buffer: Vec<u8>,
}

impl RawDigester {
    pub fn digest(&mut self, member: &[u8], time_ms: i64) -> u64 {
        self.buffer.clear();
        self.buffer.extend_from_slice(&time_ms.to_be_bytes());
        self.buffer.extend_from_slice(member);
        rapidhash::v3::rapidhash_v3(&self.buffer)
    }
}

/// [`RawDigester::digest`] without a reusable buffer.
pub fn raw_digest(member: &[u8], time_ms: i64) -> u64 {
    RawDigester::default().digest(member, time_ms)
}

/// The millisecond a score stands for (`TargetEvent::from_member` rounds the same way).
pub fn score_ms(score: f64) -> i64 {
    score.round() as i64
}

/// Writes the canonical text of `event` into `out` (cleared first).
pub fn canonical_text(event: &TargetEvent, out: &mut String) {
    out.clear();
    let _ = write!(out, "{}{FIELD_SEPARATOR}{}", event.event_id, event.time_ms());
    for field in [
        Some(event.event_name.as_str()),
        Some(event.category.as_str()),
        event.user_id.as_deref(),
        event.session_id.as_deref(),
        event.page_url.as_deref(),
        event.referrer.as_deref(),
    ] {
        out.push(FIELD_SEPARATOR);
        out.push_str(field.unwrap_or(NULL_TEXT));
    }
    out.push(FIELD_SEPARATOR);
    write_jsonb_text(&event.properties, out);
    out.push(FIELD_SEPARATOR);
    write_jsonb_text(&event.device_info, out);
}

/// `value` as PostgreSQL prints it after storing it as `jsonb` (`value::jsonb::text`).
pub fn jsonb_text(value: &Value) -> String {
    let mut out = String::new();
    write_jsonb_text(value, &mut out);
    out
}

/// Appends [`jsonb_text`] of `value` to `out`.
///
/// jsonb's canonical output: object keys ordered by (byte length, bytes), duplicates
/// already resolved; `": "` and `", "` as separators; strings escaped like PostgreSQL's
/// `escape_json`; numbers as `numeric_out` prints them.
pub fn write_jsonb_text(value: &Value, out: &mut String) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => write_numeric(n, out),
        Value::String(s) => write_json_string(s, out),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_jsonb_text(item, out);
            }
            out.push(']');
        }
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            // serde_json's map is ordered by bytes; jsonb orders by length first.
            entries.sort_by(|a, b| a.0.len().cmp(&b.0.len()).then_with(|| a.0.as_bytes().cmp(b.0.as_bytes())));
            out.push('{');
            for (i, (key, item)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_json_string(key, out);
                out.push_str(": ");
                write_jsonb_text(item, out);
            }
            out.push('}');
        }
    }
}

/// PostgreSQL's `escape_json`: the short escapes, other control characters as `\u00xx`
/// (lower-case hex), everything else (non-ASCII included) verbatim.
fn write_json_string(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// A JSON number as jsonb prints it. The row was written from serde_json's text of the
/// number (integers verbatim, floats in shortest round-trip form, e.g. `1e21`, `1.5e-7`),
/// which PostgreSQL read as `numeric` and prints in plain positional notation with the
/// scale the text implied: `1e21` → `1000000000000000000000`, `1.5e-7` → `0.00000015`,
/// `1.0` stays `1.0`; numeric has no negative zero, so `-0.0` → `0.0`.
fn write_numeric(n: &Number, out: &mut String) {
    let start = out.len();
    let _ = write!(out, "{n}");
    if !n.is_f64() {
        return;
    }
    if let Some(e) = out[start..].find(['e', 'E']) {
        let text = out.split_off(start);
        let (mantissa, exponent) = (&text[..e], &text[e + 1..]);
        write_positional(mantissa, exponent.parse().unwrap_or(0), out);
    }
    let written = &out[start..];
    if let Some(unsigned) = written.strip_prefix('-') {
        if unsigned.bytes().all(|b| b == b'0' || b == b'.') {
            out.replace_range(start..start + 1, "");
        }
    }
}

/// `mantissa × 10^exponent` in positional notation, keeping the scale
/// `max(0, fraction digits − exponent)` as `numeric_in` does.
fn write_positional(mantissa: &str, exponent: i64, out: &mut String) {
    let (negative, mantissa) = match mantissa.strip_prefix('-') {
        Some(m) => (true, m),
        None => (false, mantissa),
    };
    let (int_part, frac_part) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let digits: String = format!("{int_part}{frac_part}");
    let digits = digits.trim_start_matches('0');
    // Position of the decimal point within `digits` (may be negative or past the end).
    let leading_zeros = (int_part.len() + frac_part.len()) as i64 - digits.len() as i64;
    let point = int_part.len() as i64 + exponent - leading_zeros;
    let scale = (frac_part.len() as i64 - exponent).max(0);
    if negative {
        out.push('-');
    }
    if digits.is_empty() {
        out.push('0');
        if scale > 0 {
            out.push('.');
            out.extend(std::iter::repeat_n('0', scale as usize));
        }
        return;
    }
    if point <= 0 {
        out.push_str("0.");
        out.extend(std::iter::repeat_n('0', (-point) as usize));
        out.push_str(digits);
        let written = -point + digits.len() as i64;
        out.extend(std::iter::repeat_n('0', (scale - written).max(0) as usize));
    } else if point as usize >= digits.len() {
        out.push_str(digits);
        out.extend(std::iter::repeat_n('0', point as usize - digits.len()));
        if scale > 0 {
            out.push('.');
            out.extend(std::iter::repeat_n('0', scale as usize));
        }
    } else {
        let (int_digits, frac_digits) = digits.split_at(point as usize);
        out.push_str(int_digits);
        out.push('.');
        out.push_str(frac_digits);
        out.extend(std::iter::repeat_n('0', (scale - frac_digits.len() as i64).max(0) as usize));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};
    use serde_json::json;

    const RAW_DIGEST_OF_EXAMPLE: u64 = 4_537_972_302_610_257_521;

    fn parsed(text: &str) -> Value {
        serde_json::from_str(text).unwrap()
    }

    #[test]
    fn objects_are_ordered_by_key_length_then_bytes() {
        assert_eq!(jsonb_text(&json!({"b": 1, "aa": [1, 2, {"x": null}], "a": "q"})), r#"{"a": "q", "b": 1, "aa": [1, 2, {"x": null}]}"#);
        assert_eq!(jsonb_text(&json!({})), "{}");
        assert_eq!(jsonb_text(&json!({"e": [], "é": true, "z": false})), r#"{"e": [], "z": false, "é": true}"#);
    }

    #[test]
    fn strings_are_escaped_like_postgres() {
        let v = json!({"s": "q\"\\\n\r\t\u{8}\u{c}\u{1}\u{1f}é😀/\u{7f}"});
        assert_eq!(jsonb_text(&v), "{\"s\": \"q\\\"\\\\\\n\\r\\t\\b\\f\\u0001\\u001fé😀/\u{7f}\"}");
    }

    #[test]
    fn numbers_print_as_numeric_out_does() {
        let cases = [
            ("1e21", "1000000000000000000000"),
            ("1.5e-7", "0.00000015"),
            ("-1.5e-7", "-0.00000015"),
            ("1.25e1", "12.5"),
            ("1.50", "1.5"),
            ("1.0", "1.0"),
            ("-0.0", "0.0"),
            ("-3", "-3"),
            ("0.30000000000000004", "0.30000000000000004"),
            ("18446744073709551615", "18446744073709551615"),
            ("-9223372036854775808", "-9223372036854775808"),
            ("123456789012345678901234", "123456789012345690000000"),
            ("1e-5", "0.00001"),
            ("1e16", "10000000000000000"),
            ("1e15", "1000000000000000.0"),
        ];
        for (input, expected) in cases {
            assert_eq!(jsonb_text(&parsed(input)), expected, "{input}");
        }
    }

    #[test]
    fn raw_digests_are_fixed_and_cover_the_time_and_every_byte() {
        // Stored with each row: the value must never change (rapidhash v3, default secrets).
        let member = br#"{"id":"0b7e8f6a-1c2d-4e5f-8a9b-0c1d2e3f4a5b","event_name":"x","category":"y"}"#;
        let digest = raw_digest(member, 1_700_000_000_123);
        assert_eq!(digest, RAW_DIGEST_OF_EXAMPLE);
        let mut digester = RawDigester::default();
        assert_eq!(digester.digest(member, 1_700_000_000_123), digest);
        assert_ne!(digester.digest(member, 1_700_000_000_124), digest);
        let reordered = br#"{"event_name":"x","id":"0b7e8f6a-1c2d-4e5f-8a9b-0c1d2e3f4a5b","category":"y"}"#;
        assert_ne!(digester.digest(reordered, 1_700_000_000_123), digest, "another spelling is another member");
        assert_eq!((score_ms(1_700_000_000_122.5), score_ms(1_700_000_000_122.49)), (1_700_000_000_123, 1_700_000_000_122));
    }

    #[test]
    fn fingerprint_covers_every_field_and_nulls() {
        let event = TargetEvent {
            event_id: uuid::Uuid::nil(),
            time: Utc.timestamp_millis_opt(1_700_000_000_123).unwrap(),
            event_name: "click".into(),
            category: "ui".into(),
            user_id: None,
            session_id: Some("s".into()),
            properties: json!({"k": 1}),
            device_info: json!({}),
            page_url: None,
            referrer: None,
        };
        let mut text = String::new();
        canonical_text(&event, &mut text);
        assert_eq!(
            text,
            "00000000-0000-0000-0000-000000000000\u{1f}1700000000123\u{1f}click\u{1f}ui\u{1f}\\N\u{1f}s\u{1f}\\N\u{1f}\\N\u{1f}{\"k\": 1}\u{1f}{}"
        );
        let mut f = Fingerprinter::default();
        let base = f.fingerprint(&event);
        // md5("") starts d41d8cd98f00b204.
        assert_eq!(fingerprint_of(""), 0xd41d_8cd9_8f00_b204);
        let mut other = event.clone();
        other.user_id = Some("\\N".into());
        assert_eq!(f.fingerprint(&other), base, "a literal \\N user id is indistinguishable from NULL (documented)");
        other.user_id = Some("u".into());
        assert_ne!(f.fingerprint(&other), base);
    }
}
