//! Keeps a worker process honest about its health: it either works or exits
//! non-zero for its supervisor to restart it — never runs on half-dead.
//!
//! What apalis does when the database goes away: the first heartbeat, fetch
//! or acknowledgement that fails (after the pool's 5 s acquire timeout)
//! marks the backend dead and the worker loop ends with a backend error; the
//! jobs it held stay `Running` under its name and are rescued by live
//! workers once its heartbeat is older than the lease. So:
//!
//! - a queue loop that ended because the database was lost waits for the
//!   database and starts again under a new worker name (its old name's jobs
//!   are rescued like a crashed worker's), as long as the outage is shorter
//!   than `IDEMQ_DB_LOST_GRACE`; past it, the loop fails and the process
//!   exits non-zero;
//! - a queue loop that ended for any other reason fails at once;
//! - a watchdog pings the database and fails once it has been unreachable
//!   for longer than the grace, which also covers a loop that hangs instead
//!   of failing (a connection that never answers).
use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use apalis::prelude::*;
use apalis_core::backend::finalize::DurableError;
use apalis_postgres::PostgresStorage;
use idemq_core::queue::JobPayload;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::{
    config::WorkerConfig,
    fetch_gate::FetchGate,
    job_runner::{self, JobRunner},
    wake_strategy::{FetchReasons, JobNotices},
};

/// How often the watchdog pings the database.
pub const WATCHDOG_INTERVAL: Duration = Duration::from_secs(1);
/// How long one ping may take before it counts as failed.
pub const PING_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause between pings while waiting for the database to come back.
pub const RECONNECT_PAUSE: Duration = Duration::from_millis(250);

pub use crate::config::WORKER_SPARE_CONNECTIONS as SPARE_CONNECTIONS;

/// Warns when the pool cannot serve every job slot and still leave room for
/// heartbeats: starved heartbeats time out, the queue loop ends, and its
/// jobs wait a lease to be rescued.
pub fn warn_if_pool_too_small(pool: &PgPool, cfg: &WorkerConfig) {
    let slots = cfg.worker_concurrency * idemq_core::queue::ALL.len() as u32;
    let size = pool.options().get_max_connections();
    if size < cfg.pool_needed() {
        tracing::warn!(
            pool = size,
            job_slots = slots,
            "IDEMQ_DB_MAX_CONNECTIONS is smaller than IDEMQ_WORKER_CONCURRENCY × {} queues + {SPARE_CONNECTIONS}: \
             under load, jobs wait for connections and heartbeats may time out",
            idemq_core::queue::ALL.len()
        );
    }
}

/// One queue's apalis worker, restarted under a new name after a database
/// outage shorter than `db_lost_grace`. `Ok` once `shutdown` is cancelled and
/// the jobs in flight are finished.
pub async fn queue_loop(
    pool: PgPool,
    queue_name: &'static str,
    instance: String,
    runner: Arc<JobRunner>,
    notices: JobNotices,
    cfg: WorkerConfig,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut generation = 0u32;
    let mut outage_since: Option<Instant> = None;
    loop {
        let name = match generation {
            0 => format!("{queue_name}@{instance}"),
            n => format!("{queue_name}@{instance}.{n}"),
        };
        // apalis's writes carry no effect: they commit asynchronously
        // (README "Durability of each commit").
        let storage = PostgresStorage::<JobPayload>::new(runner.queue_pool())
            .with_config(crate::queue_config(queue_name, &cfg));
        // Fetches only after a notice, a full batch or the poll timer
        // (docs/job-path.md, "Waking and fetching").
        let backend = FetchGate::new(
            storage,
            FetchReasons::new(
                notices.subscribe(queue_name),
                cfg.queue_poll_interval,
                cfg.queue_backup_fetch_delay,
            ),
            runner.attempt_name().to_owned(),
            shutdown.clone(),
        );
        let worker = WorkerBuilder::new(name.clone())
            .backend(backend)
            .data(runner.clone())
            .concurrency(cfg.worker_concurrency as usize)
            .build(job_runner::handle_job);
        let stop = shutdown.clone();
        let started = Instant::now();
        let result = worker
            .run_until(async move {
                stop.cancelled().await;
                Ok::<(), std::io::Error>(())
            })
            .await;
        if shutdown.is_cancelled() {
            if let Err(e) = result {
                tracing::warn!(queue = queue_name, error = %e, "worker loop failed while stopping");
            }
            return Ok(());
        }
        let error = match result {
            Ok(()) => anyhow::bail!("worker loop of queue {queue_name} ended"),
            Err(e) if is_database_loss(&e) => e,
            Err(e) => anyhow::bail!("worker loop of queue {queue_name} failed: {e}"),
        };
        // A loop that ran for a whole grace period ended the previous outage;
        // otherwise this failure continues it (a flapping database counts).
        if started.elapsed() >= cfg.db_lost_grace {
            outage_since = None;
        }
        let since = *outage_since.get_or_insert_with(Instant::now);
        tracing::warn!(queue = queue_name, worker = name, error = %error,
            grace = ?cfg.db_lost_grace, "worker loop lost the database; waiting for it");
        if !wait_for_database(&pool, since + cfg.db_lost_grace, &shutdown).await {
            if shutdown.is_cancelled() {
                return Ok(());
            }
            anyhow::bail!(
                "database unreachable for longer than IDEMQ_DB_LOST_GRACE ({:?}); worker loop of queue {queue_name} gives up",
                cfg.db_lost_grace
            );
        }
        generation += 1;
        tracing::info!(
            queue = queue_name,
            down_for = ?since.elapsed(),
            "database reachable again; restarting the worker loop under a new name"
        );
    }
}

/// Fails once the database has not answered for longer than `grace`.
pub async fn db_watchdog(pool: PgPool, grace: Duration, shutdown: CancellationToken) -> anyhow::Result<()> {
    let mut last_ok = Instant::now();
    let mut failing = false;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            () = tokio::time::sleep(WATCHDOG_INTERVAL) => {}
        }
        match ping(&pool).await {
            Ok(()) => {
                if failing {
                    tracing::info!(down_for = ?last_ok.elapsed(), "database reachable again");
                }
                last_ok = Instant::now();
                failing = false;
            }
            Err(e) => {
                if !failing {
                    tracing::warn!(error = %e, ?grace, "database unreachable");
                }
                failing = true;
                if last_ok.elapsed() > grace && !shutdown.is_cancelled() {
                    anyhow::bail!(
                        "database unreachable for {:?}, longer than IDEMQ_DB_LOST_GRACE ({grace:?}): {e}",
                        last_ok.elapsed()
                    );
                }
            }
        }
    }
}

async fn ping(pool: &PgPool) -> anyhow::Result<()> {
    match tokio::time::timeout(PING_TIMEOUT, sqlx::query!("SELECT 1 AS alive").fetch_one(pool)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(e.into()),
        Err(_) => anyhow::bail!("no answer within {PING_TIMEOUT:?}"),
    }
}

/// Pings until the database answers (`true`), `deadline` passes or
/// `shutdown` is cancelled (`false`).
async fn wait_for_database(pool: &PgPool, deadline: Instant, shutdown: &CancellationToken) -> bool {
    loop {
        if shutdown.is_cancelled() || Instant::now() >= deadline {
            return false;
        }
        let remaining = deadline.saturating_duration_since(Instant::now());
        let answered = tokio::select! {
            () = shutdown.cancelled() => return false,
            r = tokio::time::timeout(remaining, ping(pool)) => matches!(r, Ok(Ok(()))),
        };
        if answered {
            return true;
        }
        tokio::select! {
            () = shutdown.cancelled() => return false,
            () = tokio::time::sleep(RECONNECT_PAUSE) => {}
        }
    }
}

/// The error a queue loop's backend ends with: apalis's durable wrapper
/// around apalis-postgres's error (its codec is JSON).
type BackendError = DurableError<apalis_postgres::Error, serde_json::Error>;

/// Whether a worker loop ended because the database could not be reached
/// (as opposed to a bug, a bad row, or a worker name clash). Anything not
/// recognised counts as "not a database loss": the process exits.
pub fn is_database_loss(e: &WorkerError) -> bool {
    let WorkerError::BackendError(inner) = e else {
        return false;
    };
    let postgres = match inner.downcast_ref::<BackendError>() {
        Some(DurableError::PollNextError(e)) => Some(e),
        _ => inner.downcast_ref::<apalis_postgres::Error>(),
    };
    match postgres {
        Some(apalis_postgres::Error::Database(db)) => is_connection_error(db),
        _ => false,
    }
}

/// The core's classifier: the connection is gone (a subset of transient).
fn is_connection_error(e: &sqlx::Error) -> bool {
    idemq_core::error::is_connection_loss(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backend(e: apalis_postgres::Error) -> WorkerError {
        WorkerError::BackendError(Box::new(BackendError::PollNextError(e)))
    }

    #[test]
    fn connection_errors_are_database_losses_and_nothing_else_is() {
        assert!(is_database_loss(&backend(sqlx::Error::PoolTimedOut.into())));
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert!(is_database_loss(&backend(sqlx::Error::Io(refused).into())));
        assert!(!is_database_loss(&backend(sqlx::Error::RowNotFound.into())));
        assert!(!is_database_loss(&backend(
            apalis_postgres::Error::WorkerOutOfSync
        )));
        assert!(!is_database_loss(&WorkerError::PanicError("boom".into())));
    }
}
