//! Resumable positions, written in the same transaction as the rows they cover.

use serde::de::DeserializeOwned;
use serde::Serialize;
use sqlx::PgConnection;

pub async fn load<T: DeserializeOwned>(conn: &mut PgConnection, name: &str) -> anyhow::Result<Option<T>> {
    let value: Option<serde_json::Value> =
        sqlx::query_scalar("SELECT position FROM tsmigrate.checkpoints WHERE name = $1").bind(name).fetch_optional(conn).await?;
    Ok(value.map(serde_json::from_value).transpose()?)
}

pub async fn save<T: Serialize>(conn: &mut PgConnection, name: &str, position: &T) -> anyhow::Result<()> {
    sqlx::query(
        "INSERT INTO tsmigrate.checkpoints (name, position, updated_at) VALUES ($1, $2, now())
         ON CONFLICT (name) DO UPDATE SET position = EXCLUDED.position, updated_at = now()",
    )
    .bind(name)
    .bind(serde_json::to_value(position)?)
    .execute(conn)
    .await?;
    Ok(())
}
