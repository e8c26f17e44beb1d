//! Dead letters: members that are not valid events, kept byte for byte with the reason.

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
    let reasons: Vec<String> = letters.iter().map(|l| l.reason.to_string()).collect();
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

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct DeadLetterCount {
    pub reason_code: String,
    pub count: i64,
}

/// Dead letters by reason (for `status` and summaries).
pub async fn counts(conn: &mut PgConnection) -> sqlx::Result<Vec<DeadLetterCount>> {
    sqlx::query_as("SELECT reason_code, count(*) AS count FROM tsmigrate.dead_letter GROUP BY 1 ORDER BY 2 DESC, 1").fetch_all(conn).await
}
