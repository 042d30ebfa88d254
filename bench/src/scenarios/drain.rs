//! `drain`: N payment operations recorded and enqueued up front through the
//! API's own code (`idempotency::begin`), then W worker processes started:
//! jobs/s until every operation is final.
use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use clap::Args;
use idemq_core::{
    fingerprint::Fingerprint,
    idempotency::{self, NewOperation, NextAction},
    key::IdempotencyKey,
    operation::OperationKind,
};
use serde_json::json;

use super::{check_payments, fleet, profile_reset, profile_take, seed_invoices, wait_all_final};
use crate::{
    cpu::CpuProbe,
    dbstats::DbSnapshot,
    progress,
    report::Report,
    server::{RunDb, Server},
};

/// The API's route template for mark-paid (part of the fingerprint; the
/// same string as `idemq_api::routes::invoices::MARK_PAID`).
pub const MARK_PAID_ROUTE: &str = "/invoices/{id}/mark-paid";

#[derive(Debug, Clone, Args)]
pub struct DrainArgs {
    /// Operations enqueued before the workers start.
    #[arg(long, default_value_t = 20_000)]
    pub operations: u64,
    /// Worker processes.
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    /// Concurrent transactions while enqueueing.
    #[arg(long, default_value_t = 16)]
    pub enqueue_concurrency: usize,
}

pub async fn run(server: &Server, db: &RunDb, args: &DrainArgs, report: &mut Report) -> anyhow::Result<()> {
    report.param("operations", args.operations);
    report.param("workers", args.workers);
    seed_invoices(&db.pool, args.operations).await?;

    progress(format!(
        "drain: enqueueing {} operations ({} at a time, record + job in one transaction each)",
        args.operations, args.enqueue_concurrency
    ));
    let enqueue_started = Instant::now();
    enqueue(db, args.operations, args.enqueue_concurrency).await?;
    let enqueue_secs = enqueue_started.elapsed().as_secs_f64();

    let mut fleet = fleet(server, db, report);
    progress(format!("drain: starting {} workers", args.workers));
    let db_before = DbSnapshot::take_settled(&db.pool).await;
    profile_reset(server, db).await;
    let t0 = Instant::now();
    fleet.spawn_workers(args.workers)?;
    let probe = CpuProbe::new(None, fleet.worker_pids(), &db.pool).await;
    let before = probe.snapshot();
    let deadline = Duration::from_secs(120.max(args.operations / 50));
    let done = wait_all_final(&db.pool, &mut fleet, deadline).await?;
    let after = probe.snapshot();
    profile_take(server, db, report).await;
    let db_after = DbSnapshot::take_settled(&db.pool).await;
    report.cpu = Some(probe.split(&before, &after).await);
    report.set_rss(fleet.rss());

    let wall = done.duration_since(t0).as_secs_f64();
    let first_to_last: f64 = sqlx::query_scalar(
        "SELECT coalesce(extract(epoch FROM max(finished_at) - min(finished_at))::float8, 0) FROM operations",
    )
    .fetch_one(&db.pool)
    .await?;
    let wall_rate = args.operations as f64 / wall;
    let steady_rate = args.operations as f64 / first_to_last.max(1e-3);
    report.figure(
        "jobs_per_s",
        wall_rate,
        "jobs/s (from spawning the workers until all final)",
    );
    report.figure(
        "jobs_per_s_steady",
        steady_rate,
        "jobs/s (first to last finished job: without start-up)",
    );
    report.figure("drain_seconds", wall, "s");
    report.figure(
        "startup_seconds",
        (wall - first_to_last).max(0.0),
        "s (spawn → first job finished, about)",
    );
    report.figure(
        "enqueue_ops_per_s",
        args.operations as f64 / enqueue_secs,
        "operations/s (begin(), before the drain)",
    );
    DbSnapshot::report(db_before, db_after, args.operations as f64, "op", report);
    report.headline = format!(
        "{wall_rate:.0} jobs/s ({steady_rate:.0} steady), {} workers",
        args.workers
    );
    check_payments(&db.pool, report, Some(args.operations as i64)).await?;
    fleet.shutdown().await;
    Ok(())
}

/// `n` mark-paid operations for `inv-1…inv-n` through `idempotency::begin`,
/// `concurrency` transactions at a time.
async fn enqueue(db: &RunDb, n: u64, concurrency: usize) -> anyhow::Result<()> {
    let next = Arc::new(AtomicU64::new(1));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let next = next.clone();
        let pool = db.pool.clone();
        let principal = db.principal.clone();
        tasks.spawn(async move {
            let body = json!({ "paymentMethod": "card" });
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i > n {
                    return anyhow::Ok(());
                }
                let invoice = format!("inv-{i}");
                let key = IdempotencyKey::parse(format!("drain-{i}").as_bytes())
                    .map_err(|e| anyhow::anyhow!("key: {e:?}"))?;
                let fingerprint = Fingerprint::compute("PATCH", MARK_PAID_ROUTE, &[("id", &invoice)], &body);
                let request = json!({ "params": { "id": invoice }, "body": body });
                let next_action = idempotency::begin(
                    &pool,
                    NewOperation {
                        id: idemq_core::operation::OperationId::new(),
                        announce_finish: false,
                        principal: &principal,
                        key: &key,
                        fingerprint,
                        kind: OperationKind::InvoiceMarkPaid,
                        request: &request,
                    },
                )
                .await?;
                if !matches!(next_action, NextAction::Started(_)) {
                    anyhow::bail!("operation {i} was not new");
                }
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    Ok(())
}
