//! The worker process: one apalis worker per queue, each running
//! `job_runner::handle_job`, plus the fleet's background duties
//! (`maintenance`: cleanup, reconciler) and a database watchdog. See `supervise` for how the process
//! stays alive only while it is healthy.
pub mod ack;
pub mod config;
pub mod faults;
pub mod fetch_gate;
pub mod job_groups;
pub mod job_runner;
pub mod maintenance;
pub mod supervise;
pub mod wake_strategy;

use std::{sync::Arc, time::Duration};

use apalis_postgres::Config as QueueConfig;
use idemq_core::queue;
use sqlx::PgPool;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub use config::WorkerConfig;
pub use job_runner::JobRunner;

/// Heartbeats per lease: a worker is declared dead after missing this many.
pub const HEARTBEATS_PER_LEASE: u32 = 5;

/// Everything a worker process needs besides the pool.
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    pub config: WorkerConfig,
    pub idempotency_ttl: Duration,
}

/// A name unique to this process start: a restarted process that reused its
/// name would leave its old jobs `Running` for ever (apalis rescues only
/// the jobs of workers whose heartbeat stopped).
pub fn instance_name() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "host".into());
    format!("{host}-{}-{}", std::process::id(), ulid::Ulid::generate())
}

/// apalis's `lock_tasks` is off: a fetched job is already `Queued` with
/// `lock_by`/`lock_at` set, and marking it `Running` when its handler starts
/// was one more write of the job row (with its index entries) per job,
/// rarely folded into the ack at light load. Orphan recovery treats `Queued`
/// and `Running` alike; whether an operation runs is `operations.status`.
fn queue_config(queue: &str, cfg: &WorkerConfig) -> QueueConfig {
    QueueConfig::default()
        .queue(queue)
        .lock_tasks(false)
        .batch_size(cfg.queue_batch_size as usize)
        .heartbeat_interval(cfg.worker_lease / HEARTBEATS_PER_LEASE)
        .missed_heartbeats(HEARTBEATS_PER_LEASE as usize)
}

/// Runs one worker per queue until `shutdown` is cancelled (then each stops
/// taking jobs and finishes those in flight within `IDEMQ_SHUTDOWN_GRACE`;
/// past it, an error). If any loop ends on its own, the others are stopped
/// and an error is returned: a process running on with a dead queue would be
/// a silent partial outage, so it exits non-zero and its supervisor restarts
/// it. A database outage shorter than `IDEMQ_DB_LOST_GRACE` is ridden out.
pub async fn run(pool: PgPool, settings: WorkerSettings, shutdown: CancellationToken) -> anyhow::Result<()> {
    let instance = instance_name();
    // Checked before anything starts.
    let maintenance_config =
        maintenance::MaintenanceConfig::from_worker_config(&settings.config, settings.idempotency_ttl)?;
    let faults = faults::Faults::from_env()?;
    let runner = Arc::new(
        JobRunner::new(pool.clone(), &settings)
            .named(instance.clone())
            .with_faults(faults)
            .stopping_on(shutdown.clone()),
    );
    supervise::warn_if_pool_too_small(&pool, &settings.config);
    idemq_core::warmup::warm(&pool, settings.config.worker_warm_connections).await;
    let mut loops: JoinSet<(&'static str, anyhow::Result<()>)> = JoinSet::new();
    let lease = settings.config.worker_lease;
    let notices = wake_strategy::JobNotices::spawn(
        pool.clone(),
        &instance,
        lease / HEARTBEATS_PER_LEASE,
        lease,
        shutdown.clone(),
    );
    for queue_name in queue::ALL {
        let queue_loop = supervise::queue_loop(
            pool.clone(),
            queue_name,
            instance.clone(),
            runner.clone(),
            notices.clone(),
            settings.config.clone(),
            shutdown.clone(),
        );
        loops.spawn(async move { (queue_name, queue_loop.await) });
    }
    let watchdog = supervise::db_watchdog(pool.clone(), settings.config.db_lost_grace, shutdown.clone());
    loops.spawn(async move { ("database watchdog", watchdog.await) });
    // The background duties: one loop each, under the same rule.
    let maintenance =
        maintenance::Service::new(pool.clone(), instance.clone(), maintenance_config.takeover_after);
    for (duty, duty_loop) in maintenance.loops(maintenance_config, shutdown.clone()) {
        loops.spawn(async move { (duty, duty_loop.await) });
    }
    tracing::info!(instance, queues = ?queue::ALL, "worker ready");

    let grace = settings.config.shutdown_grace;
    let mut failure = None;
    let mut stop_by = None;
    loop {
        let joined = match stop_by {
            None => tokio::select! {
                joined = loops.join_next() => joined,
                () = shutdown.cancelled() => {
                    tracing::info!(?grace, "stopping: no new jobs; finishing those in flight");
                    stop_by = Some(tokio::time::Instant::now() + grace);
                    continue;
                }
            },
            Some(deadline) => match tokio::time::timeout_at(deadline, loops.join_next()).await {
                Ok(joined) => joined,
                Err(_) => {
                    let late = format!(
                        "jobs still in flight after IDEMQ_SHUTDOWN_GRACE ({grace:?}); \
                         leaving them to other workers (after the lease)"
                    );
                    tracing::error!("{late}");
                    failure.get_or_insert(late);
                    loops.abort_all();
                    break;
                }
            },
        };
        let Some(joined) = joined else { break };
        let (ended, failed) = match joined {
            Ok((name, Ok(()))) => (format!("loop {name} ended"), false),
            Ok((name, Err(e))) => (format!("loop {name} failed: {e:#}"), true),
            Err(e) => (format!("a worker loop panicked: {e}"), true),
        };
        if shutdown.is_cancelled() {
            if failed {
                tracing::warn!("{ended} while stopping");
            } else {
                tracing::info!("{ended}");
            }
            continue;
        }
        tracing::error!("{ended}; stopping the other loops so that the process exits non-zero");
        failure.get_or_insert(ended);
        shutdown.cancel();
    }
    match failure {
        Some(f) => Err(anyhow::anyhow!(f)),
        None => {
            // Every loop has ended: no heartbeat will refresh the
            // registrations. Failing here costs only the backup delay.
            if let Err(e) = wake_strategy::leave_fleet(&pool, &instance, lease).await {
                tracing::warn!(error = %e, "registrations left live until the lease runs out");
            }
            tracing::info!("worker stopped");
            Ok(())
        }
    }
}
