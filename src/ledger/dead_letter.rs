//! Dead letters: members that are not valid events, rows the target refused, and
//! conflicting versions of stored events, kept byte for byte with the reason.

use serde::Serialize;
use sqlx::PgConnection;

use crate::event::DeadLetterReason;

/// One member that could not be migrated.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub raw: Vec<u8>,
    pub score: Option<f64>,
    pub reason: DeadLetterReason,
}

/// Records dead letters; the same raw member at the same score is stored once. Returns rows added.
pub async fn record(conn: &mut PgConnection, source: &str, letters: &[DeadLetter]) -> sqlx::Result<u64> {
    if letters.is_empty() {
        return Ok(0);
    }
    let raws: Vec<&[u8]> = letters.iter().map(|l| l.raw.as_slice()).collect();
    let scores: Vec<Option<f64>> = letters.iter().map(|l| l.score).collect();
    let codes: Vec<&str> = letters.iter().map(|l| l.reason.code()).collect();
    // A reason may quote what the member held; text cannot hold NUL, so it is written escaped.
    let reasons: Vec<String> = letters.iter().map(|l| l.reason.to_string().replace('\0', "\\0")).collect();
    let done = sqlx::query(
        "INSERT INTO tsmigrate.dead_letter (source, raw, score, reason_code, reason)
         SELECT $1, * FROM UNNEST($2::bytea[], $3::float8[], $4::text[], $5::text[])
         ON CONFLICT DO NOTHING",
    )
    .bind(source)
    .bind(&raws)
    .bind(&scores)
    .bind(&codes)
    .bind(&reasons)
    .execute(conn)
    .await?;
    Ok(done.rows_affected())
}

/// Recorded dead letters per minute of a score range (`validation/dead_letter_minutes.sql`):
/// validate subtracts them from `ZCOUNT` at counts depth.
pub const PER_MINUTE: &str = include_str!("../../validation/dead_letter_minutes.sql");

/// Dead letters recorded per minute (epoch minute) of `[from_ms, to_ms)`, by their score.
pub async fn per_minute(pool: &sqlx::PgPool, from_ms: i64, to_ms: i64) -> sqlx::Result<std::collections::HashMap<i64, u64>> {
    let rows: Vec<(i64, i64)> = sqlx::query_as(PER_MINUTE).bind(from_ms as f64).bind(to_ms as f64).fetch_all(pool).await?;
    Ok(rows.into_iter().map(|(m, n)| (m, n as u64)).collect())
}

/// The raw bytes and scores of the dead letters recorded with a score in `[low, high)`:
/// validation's raw-digest comparison counts them with the target's rows (a member that is
/// not an event has no row), after parsing each again.
pub async fn members_scored(pool: &sqlx::PgPool, low: f64, high: f64) -> sqlx::Result<Vec<(Vec<u8>, f64)>> {
    sqlx::query_as("SELECT raw, score FROM tsmigrate.dead_letter WHERE score >= $1 AND score < $2").bind(low).bind(high).fetch_all(pool).await
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct DeadLetterCount {
    pub reason_code: String,
    pub count: i64,
}

/// Dead letters by reason (for `status` and summaries).
pub async fn counts(conn: &mut PgConnection) -> sqlx::Result<Vec<DeadLetterCount>> {
    sqlx::query_as("SELECT reason_code, count(*) AS count FROM tsmigrate.dead_letter GROUP BY 1 ORDER BY 2 DESC, 1").fetch_all(conn).await
}

/// One dead letter as reports name it.
#[derive(Debug, Clone, Serialize)]
pub struct DeadLetterExample {
    pub source: String,
    pub reason_code: String,
    pub reason: String,
    /// The score as Redis prints it (`+inf` included).
    pub score: Option<String>,
    /// The start of the raw member, as text (invalid UTF-8 and control characters escaped).
    pub member: String,
}

/// Bytes of a member shown in reports.
const PREVIEW_BYTES: usize = 160;

/// A short printable form of a member: lossy UTF-8, control characters escaped, cut at
/// [`PREVIEW_BYTES`].
pub fn preview(raw: &[u8]) -> String {
    let cut = &raw[..raw.len().min(PREVIEW_BYTES)];
    let mut text = String::with_capacity(cut.len());
    for c in String::from_utf8_lossy(cut).chars() {
        if c.is_control() {
            text.extend(c.escape_debug());
        } else {
            text.push(c);
        }
    }
    if raw.len() > PREVIEW_BYTES {
        format!("{text}… ({} bytes)", raw.len())
    } else {
        text
    }
}

/// Redis' spelling of a score.
pub fn show_score(score: f64) -> String {
    match score {
        s if s == f64::INFINITY => "+inf".into(),
        s if s == f64::NEG_INFINITY => "-inf".into(),
        s => s.to_string(),
    }
}

/// The most recent `limit` dead letters recorded by `source`, newest first.
pub async fn recent(conn: &mut PgConnection, source: &str, limit: i64) -> sqlx::Result<Vec<DeadLetterExample>> {
    type Row = (String, String, String, Option<f64>, Vec<u8>);
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT source, reason_code, reason, score, substring(raw FROM 1 FOR 1024) FROM tsmigrate.dead_letter WHERE source = $1 ORDER BY id DESC LIMIT $2",
    )
    .bind(source)
    .bind(limit)
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(source, reason_code, reason, score, raw)| DeadLetterExample { source, reason_code, reason, score: score.map(show_score), member: preview(&raw) })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn previews_are_printable_and_short() {
        assert_eq!(preview(br#"{"a":"x\u0000"}"#), r#"{"a":"x\u0000"}"#);
        assert_eq!(preview(&[b'a', 0, 0xff]), "a\\0\u{fffd}");
        let long = vec![b'x'; 500];
        assert!(preview(&long).ends_with("… (500 bytes)"));
        assert_eq!((show_score(f64::INFINITY), show_score(f64::NEG_INFINITY), show_score(1.5)), ("+inf".into(), "-inf".into(), "1.5".into()));
    }
}
