//! `cleanup`: ROWS expired operations and as many finished queue jobs past
//! the retention (inserted with `generate_series`), then `idemq cleanup` run
//! while a steady enqueue load (C closed-loop clients) goes on: how long the
//! cleanup takes, and how much the load's throughput and latency suffer.
use std::{
    process::Stdio,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::Context;
use clap::Args;

use super::{fleet, mark_paid, payments::truncate, profile_reset, profile_take};
use crate::{
    cpu::CpuProbe,
    load::{closed_loop, http_client, Reply},
    progress,
    report::Report,
    server::{RunDb, Server},
};

/// Rows per INSERT transaction while preparing.
const CHUNK: u64 = 100_000;

#[derive(Debug, Clone, Args)]
pub struct CleanupArgs {
    /// Expired operations to delete (and as many finished queue jobs).
    #[arg(long, default_value_t = 1_000_000)]
    pub rows: u64,
    /// Clients of the steady enqueue load.
    #[arg(long, default_value_t = 4)]
    pub clients: usize,
    /// Load alone before the cleanup starts (its first second is warm-up).
    #[arg(long, default_value_t = 5)]
    pub baseline_seconds: u64,
}

pub async fn run(server: &Server, db: &RunDb, args: &CleanupArgs, report: &mut Report) -> anyhow::Result<()> {
    report.param("rows", args.rows);
    report.param("clients", args.clients);
    report.param("baseline_seconds", args.baseline_seconds);

    progress(format!(
        "cleanup: inserting {} expired operations and finished jobs",
        args.rows
    ));
    let prepared = Instant::now();
    insert_expired(db, args.rows).await?;
    sqlx::query("VACUUM ANALYZE operations").execute(&db.pool).await?;
    sqlx::query("VACUUM ANALYZE apalis.jobs")
        .execute(&db.pool)
        .await?;
    report.figure(
        "prepare_seconds",
        prepared.elapsed().as_secs_f64(),
        "s (insert + vacuum analyze)",
    );

    let mut fleet = fleet(server, db, report);
    fleet.start_api(&[]).await?;
    let client = http_client()?;
    let probe = CpuProbe::new(fleet.api_pid(), vec![], &db.pool).await;

    progress(format!(
        "cleanup: steady load of {} clients; cleanup after {} s",
        args.clients, args.baseline_seconds
    ));
    let stop = Arc::new(AtomicBool::new(false));
    let load_started = Instant::now();
    let load = {
        let (client, api, token) = (client.clone(), fleet.api_url.clone(), db.token.clone());
        tokio::spawn(closed_loop(args.clients, stop.clone(), move |c, n| {
            let key = format!("cl-{c}-{n}");
            let req = mark_paid(&client, &api, &token, &key, &key);
            async move {
                match req.send().await {
                    Ok(r) => {
                        let s = r.status().as_u16();
                        let _ = r.bytes().await;
                        Reply::expect(s, s == 202, || format!("status {s}"))
                    }
                    Err(e) => Reply::transport(e),
                }
            }
        }))
    };
    tokio::time::sleep(Duration::from_secs(args.baseline_seconds)).await;

    profile_reset(server, db).await;
    let before = probe.snapshot();
    let c0 = load_started.elapsed();
    let out = tokio::process::Command::new(&server.exe)
        .arg("cleanup")
        .env("DATABASE_URL", &db.url)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .context("running `idemq cleanup`")?;
    let c1 = load_started.elapsed();
    let after = probe.snapshot();
    profile_take(server, db, report).await;
    stop.store(true, Ordering::Relaxed);
    let load = load.await?;
    fleet.check_alive()?;
    report.cpu = Some(probe.split(&before, &after).await);
    report.set_rss(fleet.rss());
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        anyhow::bail!(
            "`idemq cleanup` failed ({}): {}{}",
            out.status,
            truncate(&stdout),
            truncate(&String::from_utf8_lossy(&out.stderr))
        );
    }

    let secs = (c1 - c0).as_secs_f64();
    let warm = Duration::from_secs(1).min(c0 / 2);
    let (base_rate, base) = load.window(warm, c0);
    let (during_rate, during) = load.window(c0, c1);
    let drop = 1.0 - during_rate / base_rate.max(1e-9);
    let deleted: Vec<(String, u64)> = stdout
        .lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            let (table, n) = (it.next()?, it.next()?.parse().ok()?);
            Some((table.to_owned(), n))
        })
        .collect();
    let count = |table: &str| deleted.iter().find(|(t, _)| t == table).map(|(_, n)| *n);
    // A run that printed no counts did not run: that is a failure, not a 0.
    let total =
        count("total").with_context(|| format!("`idemq cleanup` printed no total: {}", truncate(&stdout)))?;
    report.figure2("cleanup_seconds", secs, "s");
    report.figure("deleted_rows_per_s", total as f64 / secs.max(1e-6), "rows/s");
    report.text(
        "deleted",
        deleted
            .iter()
            .map(|(t, n)| format!("{t} {n}"))
            .collect::<Vec<_>>()
            .join(" | "),
    );
    report.figure("load_before_per_s", base_rate, "requests/s (load alone)");
    report.figure(
        "load_during_per_s",
        during_rate,
        "requests/s (during the cleanup)",
    );
    report.figure("throughput_drop_percent", drop * 100.0, "%");
    report.latency("latency_before_ms", &base.summary());
    report.latency("latency_during_ms", &during.summary());
    report.headline = format!("{secs:.1} s for {total} rows; load −{:.0}%", drop * 100.0);

    let (expired_left, old_jobs_left, load_ops): (i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM operations WHERE expires_at <= now()),
                (SELECT count(*) FROM apalis.jobs WHERE status = 'Done' AND done_at < now() - interval '1 day'),
                (SELECT count(*) FROM operations WHERE idempotency_key LIKE 'cl-%')",
    )
    .fetch_one(&db.pool)
    .await?;
    let (ops_deleted, jobs_deleted) = (count("operations"), count("apalis.jobs"));
    report.check(
        "the cleanup deleted the inserted rows, no more",
        ops_deleted == Some(args.rows) && jobs_deleted == Some(args.rows) && total == 2 * args.rows,
        format!(
            "operations {ops_deleted:?}, apalis.jobs {jobs_deleted:?}, total {total}; {} each inserted",
            args.rows
        ),
    );
    report.check(
        "every expired operation deleted",
        expired_left == 0,
        format!("{expired_left} left"),
    );
    report.check(
        "every finished job past the retention deleted",
        old_jobs_left == 0,
        format!("{old_jobs_left} left"),
    );
    let accepted = load.statuses.get(&202).copied().unwrap_or(0) as i64;
    report.check(
        "the load's requests all accepted and kept",
        load.unexpected == 0 && load_ops == accepted,
        format!(
            "{accepted} accepted, {load_ops} operations kept{}",
            load.first_unexpected
                .as_deref()
                .map(|f| format!("; first unexpected: {f}"))
                .unwrap_or_default()
        ),
    );
    fleet.shutdown().await;
    Ok(())
}

/// Expired, finished operations `old-1…` and their `Done` jobs from two
/// days ago, in chunks (one transaction each).
async fn insert_expired(db: &RunDb, rows: u64) -> anyhow::Result<()> {
    let mut from = 1u64;
    while from <= rows {
        let to = (from + CHUNK - 1).min(rows);
        let mut tx = db.pool.begin().await?;
        sqlx::query(
            r#"INSERT INTO operations (id, principal_id, idempotency_key, fingerprint, kind, request, status,
                    queue, job_id, attempts, response_status, response_content_type, response_body,
                    created_at, updated_at, finished_at, expires_at)
               SELECT gen_random_uuid(), $1, 'old-' || n, sha256(n::text::bytea), 'invoice.mark_paid',
                    jsonb_build_object('params', jsonb_build_object('id', 'inv-' || n),
                                       'body', jsonb_build_object('paymentMethod', 'card')),
                    'succeeded', 'payments', '0' || upper(substr(md5(n::text), 1, 25)), 1, 200,
                    'application/json',
                    '{"invoice":{"id":"inv-' || n || '","amountCents":5000,"currency":"EUR","status":"PAID","paymentMethod":"card"}}',
                    now() - interval '2 days', now() - interval '2 days', now() - interval '2 days',
                    now() - interval '1 day'
               FROM generate_series($2::bigint, $3::bigint) n"#,
        )
        .bind(db.principal.id())
        .bind(from as i64)
        .bind(to as i64)
        .execute(&mut *tx)
        .await
        .context("inserting expired operations")?;
        sqlx::query(
            r#"INSERT INTO apalis.jobs (id, job_type, job, status, attempts, max_attempts, run_at, lock_at, done_at)
               SELECT '0' || upper(substr(md5(n::text), 1, 25)), 'payments',
                      convert_to('{"operationId":"' || gen_random_uuid() || '"}', 'UTF8'),
                      'Done', 1, 25, now() - interval '2 days', now() - interval '2 days', now() - interval '2 days'
               FROM generate_series($1::bigint, $2::bigint) n"#,
        )
        .bind(from as i64)
        .bind(to as i64)
        .execute(&mut *tx)
        .await
        .context("inserting finished jobs")?;
        tx.commit().await?;
        from = to + 1;
    }
    Ok(())
}
