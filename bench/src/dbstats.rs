//! What the database did per unit of work: transactions committed in the
//! scenario's database (`pg_stat_database.xact_commit`, read-only ones
//! included), WAL flushes of the whole server (`pg_stat_wal.wal_sync`: with
//! group commit several commits share one) and WAL bytes. With fsync on,
//! WAL flushes are what a durable commit waits for.
use std::{
    sync::OnceLock,
    time::{Duration, Instant},
};

use sqlx::PgPool;

use crate::report::Report;

/// Cumulative statistics reach the views when a backend ends a transaction
/// or goes idle, at most once a second: wait that long before reading.
const STATS_FLUSH: Duration = Duration::from_millis(1100);

/// A backend that goes idle within a second of its last report keeps its
/// counts until it has been idle 10 s (PostgreSQL's `PGSTAT_IDLE_INTERVAL`):
/// the final reading waits this long (`--stats-settle`).
static SETTLE: OnceLock<Duration> = OnceLock::new();
const DEFAULT_SETTLE: Duration = Duration::from_secs(11);

pub fn settle_for(wait: Duration) {
    let _ = SETTLE.set(wait);
}

/// How long before a final reading.
pub fn settle() -> Duration {
    *SETTLE.get().unwrap_or(&DEFAULT_SETTLE)
}

#[derive(Debug, Clone, Copy)]
pub struct DbSnapshot {
    at: Instant,
    commits: i64,
    wal_syncs: i64,
    wal_bytes: f64,
}

impl DbSnapshot {
    /// Waits a second for pending statistics, then reads them: for a
    /// window that must start right after a phase of load (`latency`'s
    /// quiet second), where a settled reading would idle the fleet for
    /// seconds. `None` if the views cannot be read (an old server, missing
    /// rights).
    pub async fn take(pool: &PgPool) -> Option<DbSnapshot> {
        DbSnapshot::take_after(pool, STATS_FLUSH).await
    }

    /// A reading that counts everything done before it: waits until every
    /// backend has reported ([`settle`]), then reads. Both ends of a window
    /// need it: a short first reading lets the setup's counts (the bench's
    /// enqueueing, the fleet's start) arrive inside the window.
    pub async fn take_settled(pool: &PgPool) -> Option<DbSnapshot> {
        DbSnapshot::take_after(pool, settle()).await
    }

    async fn take_after(pool: &PgPool, wait: Duration) -> Option<DbSnapshot> {
        tokio::time::sleep(wait).await;
        let row: Result<(i64, i64, f64), _> = sqlx::query_as(
            "SELECT (SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()),
                    (SELECT wal_sync FROM pg_stat_wal),
                    (pg_current_wal_lsn() - '0/0'::pg_lsn)::float8",
        )
        .fetch_one(pool)
        .await;
        let (commits, wal_syncs, wal_bytes) = row.ok()?;
        Some(DbSnapshot {
            at: Instant::now(),
            commits,
            wal_syncs,
            wal_bytes,
        })
    }

    /// Adds `commits_per_<unit>`, `wal_syncs_per_<unit>`, `wal_kib_per_<unit>`
    /// and the WAL flush rate over the window to the report.
    pub fn report(
        before: Option<DbSnapshot>,
        after: Option<DbSnapshot>,
        units: f64,
        unit: &str,
        report: &mut Report,
    ) {
        let (Some(a), Some(b)) = (before, after) else {
            report.note("database statistics unavailable (pg_stat_wal needs PostgreSQL 14+)");
            return;
        };
        let units = units.max(1.0);
        let secs = b.at.duration_since(a.at).as_secs_f64().max(1e-3) - STATS_FLUSH.as_secs_f64();
        let syncs = (b.wal_syncs - a.wal_syncs) as f64;
        report.figure2(
            &format!("db_commits_per_{unit}"),
            (b.commits - a.commits) as f64 / units,
            "transactions (read-only included)",
        );
        report.figure2(
            &format!("wal_syncs_per_{unit}"),
            syncs / units,
            "WAL flushes (server-wide; group commit shares them)",
        );
        report.figure(
            &format!("wal_kib_per_{unit}"),
            (b.wal_bytes - a.wal_bytes) / 1024.0 / units,
            "KiB of WAL",
        );
        report.figure("wal_syncs_per_s", syncs / secs.max(1e-3), "WAL flushes/s");
    }
}
