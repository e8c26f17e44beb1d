//! Plain PostgreSQL mode: daily range partitions and rollup tables, kept in shape by the
//! jobs `tsmigrate run` schedules (`tsmigrate.refresh_rollups`, `tsmigrate.ensure_partitions`,
//! `tsmigrate.drop_partitions_before`).

use chrono::{DateTime, Duration, Utc};
use serde_json::json;
use sqlx::PgPool;

use super::objects::{self, Form, Object, ObjectStatus, Role};
use super::{Policy, Retention, StorageFigures, StorageMode, Store, ASSET_VIEW, DAILY_VIEW, EVENTS_TABLE, HOURLY_VIEW};
use crate::config::TargetSettings;
use crate::schedule::JobName;

pub struct PostgresStore {
    pool: PgPool,
}

impl PostgresStore {
    pub fn new(pool: PgPool) -> Self {
        PostgresStore { pool }
    }
}

/// The scheduler's jobs that stand in for TimescaleDB's policies: (job, target, schedule).
const UPKEEP_JOBS: [(JobName, &str, &str); 3] = [
    (JobName::RollupRefresh, "analytics_hourly, analytics_daily, analytics_asset_popularity_ts", "every 5 minutes"),
    (JobName::PartitionUpkeep, "analytics_events_ts", "hourly"),
    (JobName::RawRetention, "analytics_events_ts", "daily"),
];

#[async_trait::async_trait]
impl Store for PostgresStore {
    fn mode(&self) -> StorageMode {
        StorageMode::Postgres
    }

    fn pool(&self) -> &PgPool {
        &self.pool
    }

    fn objects(&self) -> Vec<Object> {
        let mut list = objects::CONTROL.to_vec();
        list.push(Object { name: EVENTS_TABLE, kind: "partitioned table", form: Form::Table, role: Role::Reported });
        for table in [HOURLY_VIEW, DAILY_VIEW, ASSET_VIEW] {
            list.push(Object { name: table, kind: "rollup table", form: Form::Table, role: Role::Reported });
        }
        for function in ["tsmigrate.ensure_partitions", "tsmigrate.drop_partitions_before", "tsmigrate.refresh_rollups"] {
            list.push(Object { name: function, kind: "function", form: Form::Function, role: Role::Internal });
        }
        list
    }

    async fn verify(&self, _objects: &mut [ObjectStatus]) -> sqlx::Result<()> {
        Ok(())
    }

    async fn after_prepare(&self, target: &TargetSettings) -> sqlx::Result<()> {
        let now = Utc::now();
        self.ensure_partitions(now - Duration::days(1), now + Duration::days(i64::from(target.partitions_ahead_days))).await?;
        Ok(())
    }

    async fn refresh_chunk(&self, from: DateTime<Utc>, to: DateTime<Utc>) -> sqlx::Result<()> {
        sqlx::query("SELECT tsmigrate.refresh_rollups($1, $2)").bind(from).bind(to).execute(&self.pool).await?;
        Ok(())
    }

    async fn ensure_partitions(&self, from: DateTime<Utc>, to: DateTime<Utc>) -> sqlx::Result<i32> {
        sqlx::query_scalar("SELECT tsmigrate.ensure_partitions($1, $2)").bind(from).bind(to - Duration::milliseconds(1)).fetch_one(&self.pool).await
    }

    async fn enforce_retention(&self, t: &TargetSettings, now: DateTime<Utc>) -> sqlx::Result<Retention> {
        let dropped_partitions = sqlx::query_scalar("SELECT tsmigrate.drop_partitions_before($1)")
            .bind(now - Duration::days(i64::from(t.raw_retention_days)))
            .fetch_one(&self.pool)
            .await?;
        for (table, days) in [(HOURLY_VIEW, t.hourly_retention_days), (DAILY_VIEW, t.daily_retention_days), (ASSET_VIEW, t.daily_retention_days)] {
            sqlx::query(&format!("DELETE FROM {table} WHERE bucket < $1")).bind(now - Duration::days(i64::from(days))).execute(&self.pool).await?;
        }
        Ok(Retention { dropped_partitions })
    }

    async fn compress_older_than(&self, _days: u32) -> sqlx::Result<i64> {
        Ok(0)
    }

    async fn storage(&self) -> sqlx::Result<StorageFigures> {
        let (chunks, total_bytes): (i64, i64) = sqlx::query_as(
            "SELECT count(*), coalesce(sum(pg_total_relation_size(inhrelid)), 0)::bigint FROM pg_inherits WHERE inhparent = 'analytics_events_ts'::regclass",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(StorageFigures { chunks, total_bytes, ..Default::default() })
    }

    async fn policies(&self) -> sqlx::Result<Vec<Policy>> {
        let runs = crate::ledger::jobs::last_runs(&self.pool).await?;
        let configs = [json!({"window": "3 hours"}), json!({"create_ahead_days": 7}), json!({"drop_after_days": 90})];
        Ok(UPKEEP_JOBS
            .iter()
            .zip(configs)
            .map(|((job, target, schedule), config)| {
                let name = job.as_str();
                let run = runs.iter().find(|r| r.job == name);
                Policy {
                    name: name.to_string(),
                    target: target.to_string(),
                    schedule: schedule.to_string(),
                    config,
                    scheduled: true,
                    last_status: run.and_then(|r| r.last_status.clone()),
                    last_run_at: run.and_then(|r| r.last_started_at),
                    next_run_at: None,
                    failures: run.map(|r| r.failures).unwrap_or(0),
                }
            })
            .collect())
    }

    fn scheduler_does_upkeep(&self) -> bool {
        true
    }

    async fn failing_jobs(&self) -> sqlx::Result<Option<Vec<String>>> {
        Ok(None)
    }

    async fn measure_sample(&self, events: &[crate::event::TargetEvent]) -> sqlx::Result<super::sample::SampleStorage> {
        // One partition's worth: a partition is a plain table with the parent's indexes.
        let table = "pg_temp.tsmigrate_assess_sample";
        let mut setup = vec![format!("CREATE TEMP TABLE tsmigrate_assess_sample ({}) ON COMMIT DROP", super::sample::COLUMNS)];
        setup.extend(super::sample::indexes(table, true));
        let sizes = format!("SELECT pg_table_size('{table}'), pg_indexes_size('{table}')");
        super::sample::measure(&self.pool, super::sample::Plan { table: table.into(), setup, sizes, compress: None }, events).await
    }
}
