//! Durations and times as people write them, parsed in one place for the command line,
//! the HTTP API and the settings file: `90s`, `10m`, `6h`, `2d`, `2w`, `1h30m`
//! (humantime's grammar, which includes every form accepted before: a whole number and
//! one of `s`, `m`, `min`, `h`, `d`).

use chrono::{DateTime, Utc};

/// Parses `90s`, `10m`, `6h`, `2d`, `2w`, `1h30m`.
pub fn parse_duration(s: &str) -> Result<chrono::Duration, String> {
    let std = humantime::parse_duration(s.trim()).map_err(|e| match e {
        humantime::DurationError::NumberOverflow => format!("{s:?} is too long a duration"),
        _ => format!("{s:?} is not a duration like 90s, 10m, 6h, 2d or 1h30m"),
    })?;
    chrono::Duration::from_std(std).map_err(|_| format!("{s:?} is too long a duration"))
}

/// Parses `2025-01-31`, `2025-01-31T12:00:00Z`, or a relative `-3h` / `-2d` / `now`.
pub fn parse_time(s: &str) -> Result<DateTime<Utc>, String> {
    let now = Utc::now();
    if s == "now" {
        return Ok(now);
    }
    if let Some(rel) = s.strip_prefix('-') {
        // `--from --to x` hands `--to` to --from (it takes values starting with '-'): say
        // what a time is, not what a duration is.
        return parse_duration(rel).map(|d| now - d).map_err(|e| if rel.starts_with('-') { not_a_time(s) } else { e });
    }
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    if let Ok(d) = chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        return Ok(d.and_hms_opt(0, 0, 0).expect("midnight").and_utc());
    }
    Err(not_a_time(s))
}

fn not_a_time(s: &str) -> String {
    format!("{s:?} is not a time: use RFC 3339 (2025-01-31T12:00:00Z), a date (2025-01-31), now, or -6h / -2d")
}

/// A duration as people write it, in its two largest units (rounded down): `45s`, `12m`,
/// `5h`, `21h59m`, `3d4h`.
pub fn show(d: chrono::Duration) -> String {
    let s = d.num_seconds().max(0);
    let two = |big: i64, big_unit: &str, small: i64, small_unit: &str| {
        if small == 0 {
            format!("{big}{big_unit}")
        } else {
            format!("{big}{big_unit}{small}{small_unit}")
        }
    };
    match s {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => two(s / 3600, "h", s % 3600 / 60, "m"),
        s => two(s / 86_400, "d", s % 86_400 / 3600, "h"),
    }
}

/// Every duration setting takes the format the command line takes (`"90s"`, `"24h"`,
/// `"1h30m"`, `"2w"`) or a bare number in the unit its name ends with (`settle_secs = 300`,
/// `soak_hours = 24`, `relay_block_ms = 500`, `raw_retention_days = 90`). A duration that is
/// not a whole number of that unit is refused rather than rounded.
fn in_units<'de, D: serde::Deserializer<'de>>(deserializer: D, unit_ms: u64, unit: &str) -> Result<u64, D::Error> {
    use serde::Deserialize;
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Given {
        Number(u64),
        Text(String),
    }
    match Given::deserialize(deserializer)? {
        Given::Number(n) => Ok(n),
        Given::Text(text) => {
            let d = parse_duration(&text).map_err(serde::de::Error::custom)?;
            let ms = u64::try_from(d.num_milliseconds()).map_err(|_| serde::de::Error::custom(format!("{text:?} is negative")))?;
            if ms % unit_ms != 0 {
                return Err(serde::de::Error::custom(format!("{text:?} is not a whole number of {unit} (this setting counts {unit})")));
            }
            Ok(ms / unit_ms)
        }
    }
}

/// `*_ms` settings.
pub mod millis {
    pub fn deserialize<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
        super::in_units(deserializer, 1, "milliseconds")
    }
}

/// `*_secs` settings.
pub mod secs {
    pub fn deserialize<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
        super::in_units(deserializer, 1_000, "seconds")
    }
}

/// `*_hours` settings.
pub mod hours {
    pub fn deserialize<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<u32, D::Error> {
        let n = super::in_units(deserializer, 3_600_000, "hours")?;
        u32::try_from(n).map_err(|_| serde::de::Error::custom(format!("{n} hours is too long")))
    }
}

/// `*_days` settings.
pub mod days {
    pub fn deserialize<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<u32, D::Error> {
        let n = super::in_units(deserializer, 86_400_000, "days")?;
        u32::try_from(n).map_err(|_| serde::de::Error::custom(format!("{n} days is too long")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_times_parse() {
        assert_eq!(parse_duration("10m").unwrap(), chrono::Duration::minutes(10));
        assert_eq!(parse_duration("10min").unwrap(), chrono::Duration::minutes(10));
        assert_eq!(parse_duration("90s").unwrap(), chrono::Duration::seconds(90));
        assert_eq!(parse_duration("2d").unwrap(), chrono::Duration::days(2));
        assert_eq!(parse_duration("2w").unwrap(), chrono::Duration::days(14));
        assert_eq!(parse_duration("1h30m").unwrap(), chrono::Duration::minutes(90));
        assert_eq!(parse_duration("0s").unwrap(), chrono::Duration::zero());
        assert!(parse_duration("ten").unwrap_err().contains("not a duration"));
        assert!(parse_duration("99999999999999999999d").unwrap_err().contains("too long"));
        assert!(parse_time("2025-01-31").is_ok());
        assert!(parse_time("-6h").unwrap() < Utc::now());
        assert!(parse_time("tomorrow").unwrap_err().contains("RFC 3339"));
        let show_secs = |s: i64| show(chrono::Duration::seconds(s));
        assert_eq!(
            [show_secs(45), show_secs(600), show_secs(5 * 3600), show_secs(22 * 3600 - 60), show_secs(3 * 86_400 + 4 * 3600)],
            ["45s", "10m", "5h", "21h59m", "3d4h"]
        );
    }

    #[test]
    fn settings_take_their_unit_or_a_duration() {
        #[derive(serde::Deserialize)]
        struct S {
            #[serde(deserialize_with = "secs::deserialize")]
            settle_secs: u64,
            #[serde(deserialize_with = "hours::deserialize")]
            soak_hours: u32,
            #[serde(deserialize_with = "days::deserialize")]
            retention_days: u32,
            #[serde(deserialize_with = "millis::deserialize")]
            block_ms: u64,
        }
        let s: S = toml::from_str("settle_secs = 300\nsoak_hours = 24\nretention_days = 90\nblock_ms = 500").unwrap();
        assert_eq!((s.settle_secs, s.soak_hours, s.retention_days, s.block_ms), (300, 24, 90, 500));
        let s: S = toml::from_str("settle_secs = \"5m\"\nsoak_hours = \"2d\"\nretention_days = \"2w\"\nblock_ms = \"1s\"").unwrap();
        assert_eq!((s.settle_secs, s.soak_hours, s.retention_days, s.block_ms), (300, 48, 14, 1000));
        let half = toml::from_str::<S>("settle_secs = 1\nsoak_hours = \"1h30m\"\nretention_days = 1\nblock_ms = 1").err().unwrap().to_string();
        assert!(half.contains("not a whole number of hours"), "{half}");
        assert!(toml::from_str::<S>("settle_secs = \"soon\"\nsoak_hours = 1\nretention_days = 1\nblock_ms = 1").is_err());
    }
}
