//! How a sample of real events would be stored in the target's storage mode, measured in a
//! transaction that is rolled back: the sample table (the target's columns and indexes) is
//! never visible to another session and is gone whatever happens (`tsmigrate assess`).
//! Each [`super::Store`] supplies its mode's statements; the measuring is shared.

use std::time::Instant;

use serde::Serialize;
use sqlx::{PgConnection, PgPool};

use super::bulk::{encode_copy_binary, Row, BINARY_COPY_COLUMNS};
use crate::event::TargetEvent;

/// The target's columns (`sql/*/0*_events_*.sql`), for the sample table.
pub const COLUMNS: &str = "time timestamptz NOT NULL, event_id uuid NOT NULL, event_name text NOT NULL, category text NOT NULL,
    user_id text, session_id text, properties jsonb NOT NULL DEFAULT '{}', device_info jsonb NOT NULL DEFAULT '{}',
    page_url text, referrer text, stored_fingerprint bigint, raw_digest bigint";

/// The target's indexes on `table` (the same columns as the migrations create).
pub fn indexes(table: &str, with_time_index: bool) -> Vec<String> {
    let mut out = vec![
        format!("CREATE UNIQUE INDEX ON {table} (event_id, time)"),
        format!("CREATE INDEX ON {table} (category, time DESC)"),
        format!("CREATE INDEX ON {table} (event_name, time DESC)"),
        format!("CREATE INDEX ON {table} (user_id, time DESC) WHERE user_id IS NOT NULL"),
    ];
    if with_time_index {
        out.push(format!("CREATE INDEX ON {table} (time DESC)"));
    }
    out
}

/// What the sample measured.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SampleStorage {
    pub rows: u64,
    /// Heap (and TOAST) of the rows, uncompressed.
    pub table_bytes: i64,
    pub index_bytes: i64,
    /// After compression; `None` where the mode has no columnstore.
    pub compressed_bytes: Option<i64>,
    /// How long `COPY` of the rows took, indexes maintained (seconds).
    pub copy_secs: f64,
}

impl SampleStorage {
    /// Uncompressed bytes a row takes, indexes included.
    pub fn bytes_per_row(&self) -> f64 {
        (self.table_bytes + self.index_bytes) as f64 / self.rows.max(1) as f64
    }

    /// (table + indexes) / compressed.
    pub fn compression_ratio(&self) -> Option<f64> {
        self.compressed_bytes.filter(|c| *c > 0).map(|c| (self.table_bytes + self.index_bytes) as f64 / c as f64)
    }

    /// Rows a second that `COPY` wrote.
    pub fn copy_rate(&self) -> Option<f64> {
        (self.copy_secs > 0.0).then(|| self.rows as f64 / self.copy_secs)
    }
}

/// The statements of one mode: `setup` makes `table` (in the open transaction), `sizes`
/// returns (table bytes, index bytes) and `compress`, when the mode has a columnstore, is
/// the statement that compresses and the query that returns the compressed bytes.
pub struct Plan {
    pub table: String,
    pub setup: Vec<String>,
    pub sizes: String,
    pub compress: Option<(String, String)>,
}

/// Copies `events` into the plan's table inside a transaction, measures, and rolls back.
pub async fn measure(pool: &PgPool, plan: Plan, events: &[TargetEvent]) -> sqlx::Result<SampleStorage> {
    let mut tx = pool.begin().await?;
    let measured = measure_in(&mut tx, &plan, events).await;
    // Nothing of the sample is kept, whatever happened.
    tx.rollback().await?;
    measured
}

async fn measure_in(conn: &mut PgConnection, plan: &Plan, events: &[TargetEvent]) -> sqlx::Result<SampleStorage> {
    for statement in &plan.setup {
        sqlx::query(statement.as_str()).execute(&mut *conn).await?;
    }
    // Encoded and sent as the writer sends a page (binary COPY, each row with its fingerprint;
    // the raw digest, 8 bytes a row, is left NULL: the sample's members are not kept).
    let payload = encode_copy_binary(&Row::without_raw_digests(events));
    let started = Instant::now();
    let mut copy = conn.copy_in_raw(&format!("COPY {} ({BINARY_COPY_COLUMNS}) FROM STDIN (FORMAT binary)", plan.table)).await?;
    if let Err(e) = copy.send(payload.as_slice()).await {
        let _ = copy.abort("tsmigrate: send failed").await;
        return Err(e);
    }
    let rows = copy.finish().await?;
    let copy_secs = started.elapsed().as_secs_f64();
    let (table_bytes, index_bytes): (i64, i64) = sqlx::query_as(&plan.sizes).fetch_one(&mut *conn).await?;
    let compressed_bytes = match &plan.compress {
        Some((compress, size)) => {
            sqlx::query(compress.as_str()).execute(&mut *conn).await?;
            sqlx::query_scalar::<_, Option<i64>>(size).fetch_one(&mut *conn).await?
        }
        None => None,
    };
    Ok(SampleStorage { rows, table_bytes, index_bytes, compressed_bytes, copy_secs })
}
