//! The worker process: one apalis worker per queue, each running
//! `job_runner::handle_job`, plus (later) the fleet's background duties.
pub mod cleanup;
pub mod job_runner;

use std::{sync::Arc, time::Duration};

use apalis::prelude::*;
use apalis_postgres::{Config as QueueConfig, PostgresStorage};
use idemq_core::{config::WorkerConfig, queue, queue::JobPayload};
use sqlx::PgPool;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

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
/// name would leave its old jobs `Running` for ever (STACK.md).
pub fn instance_name() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "host".into());
    format!("{host}-{}-{}", std::process::id(), ulid::Ulid::generate())
}

fn queue_config(queue: &str, cfg: &WorkerConfig) -> QueueConfig {
    QueueConfig::default()
        .queue(queue)
        .batch_size(cfg.queue_batch_size as usize)
        .heartbeat_interval(cfg.worker_lease / HEARTBEATS_PER_LEASE)
        .missed_heartbeats(HEARTBEATS_PER_LEASE as usize)
}

/// Runs one worker per queue until `shutdown` is cancelled (then each stops
/// taking jobs and finishes those in flight). If any worker loop ends on its
/// own, the others are stopped and an error is returned: a process running on
/// with a dead queue would be a silent partial outage, so it exits non-zero
/// and its supervisor restarts it.
pub async fn run(pool: PgPool, settings: WorkerSettings, shutdown: CancellationToken) -> anyhow::Result<()> {
    let instance = instance_name();
    // Checked before anything starts.
    let cleanup_config = cleanup::CleanupConfig::from_worker_config(&settings.config)?;
    let runner = Arc::new(JobRunner::new(pool.clone(), &settings));
    let mut loops = JoinSet::new();
    for queue_name in queue::ALL {
        let backend = PostgresStorage::<JobPayload>::new(&pool)
            .with_config(queue_config(queue_name, &settings.config))
            .with_pubsub()
            .poll_with_interval(settings.config.queue_poll_interval);
        let worker = WorkerBuilder::new(format!("{queue_name}@{instance}"))
            .backend(backend)
            .data(runner.clone())
            .concurrency(settings.config.worker_concurrency as usize)
            .build(job_runner::handle_job);
        let stop = shutdown.clone();
        loops.spawn(async move {
            let result = worker
                .run_until(async move {
                    stop.cancelled().await;
                    Ok::<(), std::io::Error>(())
                })
                .await;
            (queue_name, result)
        });
    }
    // The scheduled cleanup: one more loop, under the same rule (if it ends
    // on its own, the process exits non-zero).
    if settings.config.cleanup_enabled {
        let scheduled = cleanup::run_scheduled(
            pool.clone(),
            cleanup_config,
            settings.config.cleanup_schedule.clone(),
            instance.clone(),
            shutdown.clone(),
        );
        loops.spawn(async move { (cleanup::DUTY, scheduled.await) });
    } else {
        tracing::info!("cleanup disabled in this process (IDEMQ_CLEANUP_ENABLED=false)");
    }
    tracing::info!(instance, queues = ?queue::ALL, "worker ready");

    let mut failure = None;
    while let Some(joined) = loops.join_next().await {
        let ended = match joined {
            Ok((queue_name, Ok(()))) => format!("worker loop of queue {queue_name} ended"),
            Ok((queue_name, Err(e))) => format!("worker loop of queue {queue_name} failed: {e}"),
            Err(e) => format!("worker loop panicked: {e}"),
        };
        if shutdown.is_cancelled() {
            tracing::info!("{ended}");
            continue;
        }
        tracing::error!("{ended}; stopping the other queues so that the process exits");
        failure.get_or_insert(ended);
        shutdown.cancel();
    }
    match failure {
        Some(f) => Err(anyhow::anyhow!(f)),
        None => {
            tracing::info!("worker stopped");
            Ok(())
        }
    }
}
