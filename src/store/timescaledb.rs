//! TimescaleDB mode: a hypertable, continuous aggregates, columnstore and the database's
//! own retention, compression and refresh policies. The only file that names TimescaleDB
//! catalogs and functions.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::PgPool;

use super::objects::{self, Form, Object, ObjectStatus, Role};
use super::{Policy, Retention, StorageFigures, StorageMode, Store, ASSET_VIEW, DAILY_VIEW, EVENTS_TABLE, HOURLY_VIEW};
use crate::config::TargetSettings;

pub struct TimescaleStore {
    pool: PgPool,
}

impl TimescaleStore {
    pub fn new(pool: PgPool) -> Self {
        TimescaleStore { pool }
    }
}

const HYPERTABLE: &str = "hypertable";
const CONTINUOUS_AGGREGATE: &str = "continuous aggregate";

type JobRow = (i32, String, String, String, Option<Value>, bool, Option<String>, Option<DateTime<Utc>>, Option<DateTime<Utc>>, Option<i64>);

#[async_trait::async_trait]
impl Store for TimescaleStore {
    fn mode(&self) -> StorageMode {
        StorageMode::Timescaledb
    }

    fn pool(&self) -> &PgPool {
        &self.pool
    }

    fn before_drop(&self) -> Vec<String> {
        // Only the jobs on tsmigrate's own objects: the application may have policies of its own.
        vec![format!(
            "SELECT delete_job(j.job_id) FROM timescaledb_information.jobs j
             LEFT JOIN timescaledb_information.continuous_aggregates c ON c.materialization_hypertable_name = j.hypertable_name
             WHERE j.job_id >= 1000 AND coalesce(c.view_name::text, j.hypertable_name::text) IN ('{EVENTS_TABLE}', '{HOURLY_VIEW}', '{DAILY_VIEW}', '{ASSET_VIEW}')"
        )]
    }

    fn objects(&self) -> Vec<Object> {
        let mut list = objects::CONTROL.to_vec();
        list.push(Object { name: EVENTS_TABLE, kind: HYPERTABLE, form: Form::Table, role: Role::Reported });
        for view in [HOURLY_VIEW, DAILY_VIEW, ASSET_VIEW] {
            list.push(Object { name: view, kind: CONTINUOUS_AGGREGATE, form: Form::MaterializedView, role: Role::Reported });
        }
        list
    }

    async fn verify(&self, objects: &mut [ObjectStatus]) -> sqlx::Result<()> {
        let installed: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb')").fetch_one(&self.pool).await?;
        let mut timescale_objects: Vec<String> = Vec::new();
        if installed {
            timescale_objects = sqlx::query_scalar(
                "SELECT hypertable_name::text FROM timescaledb_information.hypertables
                 UNION ALL SELECT view_name::text FROM timescaledb_information.continuous_aggregates",
            )
            .fetch_all(&self.pool)
            .await?;
        }
        for object in objects.iter_mut().filter(|o| o.kind == HYPERTABLE || o.kind == CONTINUOUS_AGGREGATE) {
            object.present &= timescale_objects.contains(&object.name);
        }
        Ok(())
    }

    async fn after_prepare(&self, _target: &TargetSettings) -> sqlx::Result<()> {
        Ok(())
    }

    async fn refresh_chunk(&self, from: DateTime<Utc>, to: DateTime<Utc>) -> sqlx::Result<()> {
        // The three aggregates at once, each on a connection of its own (each refresh keeps
        // one backend busy). No transaction here: refresh_continuous_aggregate refuses to run
        // inside one.
        let refreshes = [HOURLY_VIEW, DAILY_VIEW, ASSET_VIEW].map(|view| {
            sqlx::query("CALL refresh_continuous_aggregate($1::regclass, $2::timestamptz, $3::timestamptz)").bind(view).bind(from).bind(to).execute(&self.pool)
        });
        futures::future::try_join_all(refreshes).await?;
        Ok(())
    }

    async fn ensure_partitions(&self, _from: DateTime<Utc>, _to: DateTime<Utc>) -> sqlx::Result<i32> {
        // The hypertable makes its chunks as rows arrive.
        Ok(0)
    }

    async fn enforce_retention(&self, t: &TargetSettings, _now: DateTime<Utc>) -> sqlx::Result<Retention> {
        // prepare created these; if_not_exists makes this a check that they are still in force.
        for (relation, days) in [
            (EVENTS_TABLE, t.raw_retention_days),
            (HOURLY_VIEW, t.hourly_retention_days),
            (DAILY_VIEW, t.daily_retention_days),
            (ASSET_VIEW, t.daily_retention_days),
        ] {
            sqlx::query("SELECT add_retention_policy($1::regclass, make_interval(days => $2), if_not_exists => true)")
                .bind(relation)
                .bind(days as i32)
                .execute(&self.pool)
                .await?;
        }
        Ok(Retention::default())
    }

    async fn compress_older_than(&self, days: u32) -> sqlx::Result<i64> {
        sqlx::query_scalar(
            "SELECT count(compress_chunk(c, if_not_compressed => true))
             FROM show_chunks('analytics_events_ts', older_than => make_interval(days => $1)) c",
        )
        .bind(days as i32)
        .fetch_one(&self.pool)
        .await
    }

    async fn storage(&self) -> sqlx::Result<StorageFigures> {
        let (chunks, compressed): (i64, i64) = sqlx::query_as(
            "SELECT count(*), count(*) FILTER (WHERE is_compressed) FROM timescaledb_information.chunks WHERE hypertable_name = 'analytics_events_ts'",
        )
        .fetch_one(&self.pool)
        .await?;
        let (before, after): (Option<i64>, Option<i64>) = sqlx::query_as(
            "SELECT sum(before_compression_total_bytes)::bigint, sum(after_compression_total_bytes)::bigint FROM hypertable_compression_stats('analytics_events_ts')",
        )
        .fetch_one(&self.pool)
        .await?;
        let total_bytes = sqlx::query_scalar("SELECT hypertable_size('analytics_events_ts')::bigint").fetch_one(&self.pool).await?;
        Ok(StorageFigures {
            chunks,
            compressed_chunks: Some(compressed),
            bytes_before_compression: before,
            bytes_after_compression: after,
            compression_ratio: StorageFigures::ratio(before, after),
            total_bytes,
        })
    }

    async fn policies(&self) -> sqlx::Result<Vec<Policy>> {
        let rows: Vec<JobRow> = sqlx::query_as(
            "SELECT j.job_id, j.proc_name::text,
                    coalesce(c.view_name::text, j.hypertable_name::text, ''),
                    j.schedule_interval::text, j.config, j.scheduled,
                    s.last_run_status::text,
                    -- job_stats says -infinity / infinity while a job is starting or paused
                    CASE WHEN isfinite(s.last_run_started_at) THEN s.last_run_started_at END,
                    CASE WHEN isfinite(s.next_start) THEN s.next_start END, s.total_failures
             FROM timescaledb_information.jobs j
             LEFT JOIN timescaledb_information.job_stats s ON s.job_id = j.job_id
             LEFT JOIN timescaledb_information.continuous_aggregates c
                    ON c.materialization_hypertable_name = j.hypertable_name
             WHERE j.job_id >= 1000
             ORDER BY j.job_id",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(id, proc_name, target, schedule, config, scheduled, last_status, last_run_at, next_run_at, failures)| Policy {
                name: format!("{proc_name} [job {id}]"),
                target,
                schedule,
                config: config.unwrap_or(Value::Null),
                scheduled,
                last_status,
                last_run_at,
                next_run_at,
                failures: failures.unwrap_or(0),
            })
            .collect())
    }

    fn scheduler_does_upkeep(&self) -> bool {
        false
    }

    async fn failing_jobs(&self) -> sqlx::Result<Option<Vec<String>>> {
        let failing: Vec<(i32, String, Option<String>)> = sqlx::query_as(
            "SELECT s.job_id, j.proc_name::text, e.err_message
             FROM timescaledb_information.job_stats s
             JOIN timescaledb_information.jobs j ON j.job_id = s.job_id
             LEFT JOIN LATERAL (SELECT err_message FROM timescaledb_information.job_errors e
                                WHERE e.job_id = s.job_id ORDER BY e.finish_time DESC LIMIT 1) e ON true
             WHERE s.job_id >= 1000 AND s.last_run_status = 'Failed'",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(Some(failing.iter().map(|(id, name, err)| format!("job {id} {name}: {}", err.as_deref().unwrap_or("failed"))).collect()))
    }

    async fn measure_sample(&self, events: &[crate::event::TargetEvent]) -> sqlx::Result<super::sample::SampleStorage> {
        // A hypertable cannot be temporary: an ordinary table, with a name of its own, made
        // and dropped in the one transaction the sample lives in (rolled back: no other
        // session ever sees it). Daily chunks and the columnstore settings of prepare.
        let table = format!("tsmigrate_assess_sample_{:08x}", rand::random::<u32>());
        let mut setup = vec![
            "CREATE EXTENSION IF NOT EXISTS timescaledb".to_string(),
            format!("CREATE TABLE {table} ({})", super::sample::COLUMNS),
            format!("SELECT create_hypertable('{table}', by_range('time', INTERVAL '1 day'))"),
        ];
        setup.extend(super::sample::indexes(&table, false));
        setup.push(format!(
            "ALTER TABLE {table} SET (timescaledb.enable_columnstore = true, timescaledb.segmentby = 'category, event_name', timescaledb.orderby = 'time DESC, event_id')"
        ));
        let sizes = format!(
            "SELECT coalesce(sum(table_bytes + toast_bytes), 0)::bigint, coalesce(sum(index_bytes), 0)::bigint FROM hypertable_detailed_size('{table}')"
        );
        let compress = (
            format!("SELECT count(compress_chunk(c, if_not_compressed => true)) FROM show_chunks('{table}') c"),
            format!("SELECT sum(after_compression_total_bytes)::bigint FROM hypertable_compression_stats('{table}')"),
        );
        super::sample::measure(&self.pool, super::sample::Plan { table, setup, sizes, compress: Some(compress) }, events).await
    }
}
