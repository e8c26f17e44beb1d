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
        return parse_duration(rel).map(|d| now - d);
    }
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    if let Ok(d) = chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        return Ok(d.and_hms_opt(0, 0, 0).expect("midnight").and_utc());
    }
    Err(format!("{s:?} is not a time: use RFC 3339 (2025-01-31T12:00:00Z), a date (2025-01-31), now, or -6h / -2d"))
}

/// Settings that are a number of seconds also take a duration: `settle_secs = "5m"`.
pub mod secs {
    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Secs {
            Number(u64),
            Text(String),
        }
        match Secs::deserialize(deserializer)? {
            Secs::Number(n) => Ok(n),
            Secs::Text(text) => {
                let d = super::parse_duration(&text).map_err(serde::de::Error::custom)?;
                u64::try_from(d.num_seconds()).map_err(|_| serde::de::Error::custom(format!("{text:?} is negative")))
            }
        }
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
    }

    #[test]
    fn settings_take_seconds_or_a_duration() {
        #[derive(serde::Deserialize)]
        struct S {
            #[serde(with = "secs")]
            settle_secs: u64,
        }
        assert_eq!(toml::from_str::<S>("settle_secs = 300").unwrap().settle_secs, 300);
        assert_eq!(toml::from_str::<S>("settle_secs = \"5m\"").unwrap().settle_secs, 300);
        assert!(toml::from_str::<S>("settle_secs = \"soon\"").is_err());
    }
}
