//! `tsmigrate.migration_state`: the one row saying where the migration stands, read as a
//! typed [`MigrationState`] (phase, storage mode, read source resolved once, here), and the
//! migration's identity (`migration_id`). Changed by `PhaseGuard::commit` ([`create`],
//! [`advance`]), `shadow` ([`set_shadow`]) and `abort` (which drops the table).

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::state::{MigrationState, Phase, ReadSource, Shadow, StorageMode};

type StateRow = (String, String, String, bool, Option<DateTime<Utc>>, Option<DateTime<Utc>>, Option<DateTime<Utc>>, Option<DateTime<Utc>>, DateTime<Utc>);

/// Reads the state; a target without control tables is in phase `new`.
pub async fn load(conn: &mut PgConnection) -> anyhow::Result<MigrationState> {
    if !super::exists(&mut *conn, "migration_state").await? {
        return Ok(MigrationState::new_migration());
    }
    let row: Option<StateRow> = sqlx::query_as(
        "SELECT phase, storage_mode, read_source, shadow, completion_point, backfilled_until,
                reads_switched_at, flush_retired_at, updated_at
         FROM tsmigrate.migration_state",
    )
    .fetch_optional(&mut *conn)
    .await?;
    let Some((phase, mode, read_source, shadow, completion_point, backfilled_until, reads_switched_at, flush_retired_at, updated_at)) = row else {
        return Ok(MigrationState::new_migration());
    };
    Ok(MigrationState {
        phase: Phase::parse(&phase).ok_or_else(|| anyhow::anyhow!("unknown phase {phase:?} in tsmigrate.migration_state"))?,
        storage_mode: StorageMode::parse(&mode),
        read_source: ReadSource::parse(&read_source).ok_or_else(|| anyhow::anyhow!("unknown read source {read_source:?} in tsmigrate.migration_state"))?,
        shadow,
        completion_point,
        backfilled_until,
        reads_switched_at,
        flush_retired_at,
        updated_at: Some(updated_at),
    })
}

pub async fn load_from_pool(pool: &PgPool) -> anyhow::Result<MigrationState> {
    let mut conn = pool.acquire().await?;
    load(&mut conn).await
}

/// Where reads are answered from and whether shadow reads are on (`None` before prepare):
/// what the read API's routing needs, in one small query.
pub async fn routing(pool: &PgPool) -> sqlx::Result<Option<(ReadSource, Shadow)>> {
    if !super::exists(pool, "migration_state").await? {
        return Ok(None);
    }
    let row: Option<(String, bool)> = sqlx::query_as("SELECT read_source, shadow FROM tsmigrate.migration_state").fetch_optional(pool).await?;
    Ok(row.map(|(source, shadow)| (ReadSource::parse(&source).unwrap_or(ReadSource::Legacy), if shadow { Shadow::On } else { Shadow::Off })))
}

/// What a committed transition changes besides the phase.
#[derive(Debug, Default, Clone)]
pub struct StateChanges {
    pub storage_mode: Option<StorageMode>,
    pub read_source: Option<ReadSource>,
    pub completion_point: Option<Option<DateTime<Utc>>>,
    pub backfilled_until: Option<DateTime<Utc>>,
    pub reads_switched_at: Option<Option<DateTime<Utc>>>,
    pub flush_retired_at: Option<Option<DateTime<Utc>>>,
}

/// The first state of a migration (`new` → `to`), in the caller's transaction.
pub async fn create(conn: &mut PgConnection, to: Phase, mode: StorageMode) -> sqlx::Result<()> {
    sqlx::query("INSERT INTO tsmigrate.migration_state (phase, storage_mode) VALUES ($1, $2)").bind(to.as_str()).bind(mode.as_str()).execute(conn).await?;
    Ok(())
}

/// Moves the state from `from` to `to` with `changes`, in the caller's transaction; `false`
/// when the state is no longer in `from` (nothing changed then).
pub async fn advance(conn: &mut PgConnection, from: Phase, to: Phase, changes: &StateChanges) -> sqlx::Result<bool> {
    let updated = sqlx::query(
        "UPDATE tsmigrate.migration_state SET
            phase = $1,
            read_source = COALESCE($3, read_source),
            completion_point = CASE WHEN $4 THEN $5 ELSE completion_point END,
            backfilled_until = COALESCE($6, backfilled_until),
            reads_switched_at = CASE WHEN $7 THEN $8 ELSE reads_switched_at END,
            flush_retired_at = CASE WHEN $9 THEN $10 ELSE flush_retired_at END,
            updated_at = now()
         WHERE phase = $2",
    )
    .bind(to.as_str())
    .bind(from.as_str())
    .bind(changes.read_source.map(ReadSource::as_str))
    .bind(changes.completion_point.is_some())
    .bind(changes.completion_point.flatten())
    .bind(changes.backfilled_until)
    .bind(changes.reads_switched_at.is_some())
    .bind(changes.reads_switched_at.flatten())
    .bind(changes.flush_retired_at.is_some())
    .bind(changes.flush_retired_at.flatten())
    .execute(conn)
    .await?;
    Ok(updated.rows_affected() == 1)
}

/// Turns shadow reads on or off (the phase stays).
pub async fn set_shadow(conn: &mut PgConnection, shadow: Shadow) -> sqlx::Result<()> {
    sqlx::query("UPDATE tsmigrate.migration_state SET shadow = $1, updated_at = now()").bind(shadow.is_on()).execute(conn).await?;
    Ok(())
}

/// The migration's identity as the target holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Identity {
    /// No migration state: not prepared (or aborted).
    NotPrepared,
    /// Prepared by a tsmigrate without identities; `prepare` adds the column.
    Predates,
    Id {
        id: Uuid,
        /// Redis has held it before (so its absence there means Redis lost it).
        in_redis_before: bool,
    },
}

/// The target's id, made now when a prepared target has none. Two commands doing so at once
/// agree: the second one's `COALESCE` keeps the first one's id.
pub async fn identity(pool: &PgPool) -> sqlx::Result<Identity> {
    let (table, column): (bool, bool) = sqlx::query_as(
        "SELECT to_regclass('tsmigrate.migration_state') IS NOT NULL,
                EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = to_regclass('tsmigrate.migration_state') AND attname = 'migration_id' AND NOT attisdropped)",
    )
    .fetch_one(pool)
    .await?;
    if !table {
        return Ok(Identity::NotPrepared);
    }
    if !column {
        return Ok(Identity::Predates);
    }
    let row: Option<(Option<Uuid>, bool)> =
        sqlx::query_as("SELECT migration_id, migration_id_in_redis_since IS NOT NULL FROM tsmigrate.migration_state").fetch_optional(pool).await?;
    let row = match row {
        Some((Some(id), in_redis_before)) => Some((id, in_redis_before)),
        Some((None, _)) => {
            sqlx::query_as(
                "UPDATE tsmigrate.migration_state SET migration_id = COALESCE(migration_id, $1)
                 RETURNING migration_id, migration_id_in_redis_since IS NOT NULL",
            )
            .bind(Uuid::new_v4())
            .fetch_optional(pool)
            .await?
        }
        None => None,
    };
    Ok(match row {
        Some((id, in_redis_before)) => Identity::Id { id, in_redis_before },
        None => Identity::NotPrepared,
    })
}

/// Records that Redis has held the id, so that its absence later means it was lost.
pub async fn mark_identity_in_redis(pool: &PgPool) -> sqlx::Result<()> {
    sqlx::query("UPDATE tsmigrate.migration_state SET migration_id_in_redis_since = now() WHERE migration_id_in_redis_since IS NULL")
        .execute(pool)
        .await
        .map(|_| ())
}
