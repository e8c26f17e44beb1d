//! The calendar: hours and days cut in the bucket time zone (`target.bucket_timezone`).
//! Every path that buckets events — the legacy flush, reads, validation, aggregate
//! refresh, history import — uses these, so an hour means the same thing everywhere,
//! DST nights included. Pure.

use chrono::{DateTime, Duration, NaiveDate, TimeZone, Timelike, Utc};
use chrono_tz::Tz;

/// Start of the hour containing `t`, hours cut in `tz`. Computed in the offset in force
/// at `t`, so the two local 02:00 hours of a DST fall-back night stay distinct.
pub fn hour_floor(t: DateTime<Utc>, tz: Tz) -> DateTime<Utc> {
    let local = t.with_timezone(&tz);
    t - Duration::minutes(i64::from(local.minute())) - Duration::seconds(i64::from(local.second())) - Duration::nanoseconds(i64::from(local.nanosecond()))
}

/// The local calendar day of `t` in `tz`.
pub fn local_day(t: DateTime<Utc>, tz: Tz) -> NaiveDate {
    t.with_timezone(&tz).date_naive()
}

/// Start of local day `day` in `tz`, as UTC.
pub fn day_start(day: NaiveDate, tz: Tz) -> DateTime<Utc> {
    let naive = day.and_hms_opt(0, 0, 0).expect("midnight");
    tz.from_local_datetime(&naive).earliest().map(|d| d.with_timezone(&Utc)).unwrap_or_else(|| naive.and_utc())
}

/// The start of the hour after the one holding `t` (hours cut in `tz`). Steps over DST
/// changes; never stalls.
pub fn next_hour(t: DateTime<Utc>, tz: Tz) -> DateTime<Utc> {
    let floor = hour_floor(t, tz);
    let next = hour_floor(floor + Duration::minutes(90), tz);
    if next > floor {
        next
    } else {
        floor + Duration::hours(1)
    }
}

/// `t` when it starts an hour, else the start of the next hour.
pub fn hour_ceil(t: DateTime<Utc>, tz: Tz) -> DateTime<Utc> {
    if hour_floor(t, tz) == t {
        t
    } else {
        next_hour(t, tz)
    }
}

/// Start of the minute containing `t`. Every zone in use is offset from UTC by whole
/// minutes, so minutes nest in the hours and days of any bucket time zone.
pub fn minute_floor(t: DateTime<Utc>) -> DateTime<Utc> {
    let ms = t.timestamp_millis();
    Utc.timestamp_millis_opt(ms - ms.rem_euclid(60_000)).single().expect("minute in range")
}

/// `t` when it starts a minute, else the start of the next minute.
pub fn minute_ceil(t: DateTime<Utc>) -> DateTime<Utc> {
    let floor = minute_floor(t);
    if floor == t {
        t
    } else {
        floor + Duration::minutes(1)
    }
}

/// The start of the local day after the one holding `t` (days last 23, 24 or 25 hours across DST).
pub fn next_day(t: DateTime<Utc>, tz: Tz) -> DateTime<Utc> {
    day_start(local_day(t, tz) + Duration::days(1), tz)
}

/// The hour the worker flushes by default: the last closed one.
pub fn last_closed_hour(now: DateTime<Utc>, tz: Tz) -> (DateTime<Utc>, DateTime<Utc>) {
    let end = hour_floor(now, tz);
    (hour_floor(end - Duration::minutes(30), tz), end)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hours_are_cut_in_the_configured_zone() {
        let t = Utc.with_ymd_and_hms(2025, 3, 10, 12, 47, 5).unwrap();
        assert_eq!(hour_floor(t, Tz::UTC), Utc.with_ymd_and_hms(2025, 3, 10, 12, 0, 0).unwrap());
        // India is UTC+05:30: local hours start at :30 UTC.
        assert_eq!(hour_floor(t, chrono_tz::Asia::Kolkata), Utc.with_ymd_and_hms(2025, 3, 10, 12, 30, 0).unwrap());
        assert_eq!(local_day(Utc.with_ymd_and_hms(2025, 3, 10, 23, 30, 0).unwrap(), chrono_tz::Europe::Berlin), NaiveDate::from_ymd_opt(2025, 3, 11).unwrap());
    }

    #[test]
    fn the_repeated_hour_of_a_dst_fall_back_is_two_hours() {
        let berlin = chrono_tz::Europe::Berlin;
        // 2025-10-26: 03:00 CEST becomes 02:00 CET; local 02:xx happens twice (00:xx and 01:xx UTC).
        let first = Utc.with_ymd_and_hms(2025, 10, 26, 0, 40, 0).unwrap();
        let second = Utc.with_ymd_and_hms(2025, 10, 26, 1, 40, 0).unwrap();
        assert_eq!(hour_floor(first, berlin), Utc.with_ymd_and_hms(2025, 10, 26, 0, 0, 0).unwrap());
        assert_eq!(hour_floor(second, berlin), Utc.with_ymd_and_hms(2025, 10, 26, 1, 0, 0).unwrap());
    }

    #[test]
    fn last_closed_hour_is_the_previous_whole_hour() {
        let now = Utc.with_ymd_and_hms(2025, 3, 10, 12, 5, 0).unwrap();
        let (from, to) = last_closed_hour(now, Tz::UTC);
        assert_eq!((from.to_rfc3339(), to.to_rfc3339()), ("2025-03-10T11:00:00+00:00".into(), "2025-03-10T12:00:00+00:00".into()));
    }
}
