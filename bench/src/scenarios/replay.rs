//! `replay`: repeats of finished requests. M operations are run to the end
//! first (workers then stopped); C clients then repeat random ones of them:
//! each answer must be the stored 200, byte for byte, `Idempotent-Replayed`.
use std::{collections::HashMap, sync::Arc, time::Duration};

use clap::Args;
use rand::{rngs::StdRng, Rng, SeedableRng};
use std::sync::Mutex;

use super::{at_most, fleet, mark_paid, profile_reset, profile_take, seed_invoices, wait_all_final};
use crate::{
    cpu::CpuProbe,
    dbstats::DbSnapshot,
    load::{closed_loop_for, http_client, Reply},
    progress,
    report::Report,
    server::{RunDb, Server},
};

const TARGET_P99_MS: f64 = 3.0;

#[derive(Debug, Clone, Args)]
pub struct ReplayArgs {
    /// Finished operations to repeat.
    #[arg(long, default_value_t = 1000)]
    pub operations: u64,
    /// Concurrent HTTP clients.
    #[arg(long, default_value_t = 8)]
    pub clients: usize,
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
}

pub async fn run(server: &Server, db: &RunDb, args: &ReplayArgs, report: &mut Report) -> anyhow::Result<()> {
    report.param("operations", args.operations);
    report.param("clients", args.clients);
    report.param("seconds", args.seconds);
    seed_invoices(&db.pool, args.operations).await?;
    let mut fleet = fleet(server, db, report);
    fleet.start_api(&[]).await?;
    fleet.start_workers(2, &db.pool).await?;
    let client = http_client()?;

    progress(format!(
        "replay: running {} operations to the end first",
        args.operations
    ));
    let setup = {
        let (client, api, token) = (client.clone(), fleet.api_url.clone(), db.token.clone());
        let next = Arc::new(std::sync::atomic::AtomicU64::new(1));
        let total = args.operations;
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..16 {
            let (client, api, token, next) = (client.clone(), api.clone(), token.clone(), next.clone());
            tasks.spawn(async move {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i > total {
                        return anyhow::Ok(());
                    }
                    let (name, key) = (format!("inv-{i}"), format!("rep-{i}"));
                    let r = mark_paid(&client, &api, &token, &name, &key).send().await?;
                    anyhow::ensure!(r.status().as_u16() == 202, "setup request {i}: {}", r.status());
                }
            });
        }
        async move {
            while let Some(r) = tasks.join_next().await {
                r??;
            }
            anyhow::Ok(())
        }
    };
    setup.await?;
    wait_all_final(&db.pool, &mut fleet, Duration::from_secs(120)).await?;
    fleet.stop_workers().await;

    // The stored bodies, to compare each replay with, byte for byte.
    let stored: HashMap<u64, String> = sqlx::query_as::<_, (String, String)>(
        "SELECT idempotency_key, response_body FROM operations WHERE response_body IS NOT NULL",
    )
    .fetch_all(&db.pool)
    .await?
    .into_iter()
    .filter_map(|(k, b)| Some((k.strip_prefix("rep-")?.parse().ok()?, b)))
    .collect();
    let stored = Arc::new(stored);

    progress(format!("replay: {} clients for {} s", args.clients, args.seconds));
    let probe = CpuProbe::new(fleet.api_pid(), vec![], &db.pool).await;
    let rngs: Arc<Vec<Mutex<StdRng>>> = Arc::new(
        (0..args.clients)
            .map(|c| Mutex::new(StdRng::seed_from_u64(c as u64)))
            .collect(),
    );
    let db_before = DbSnapshot::take_settled(&db.pool).await;
    profile_reset(server, db).await;
    let before = probe.snapshot();
    let load = {
        let (client, api, token, m) = (
            client.clone(),
            fleet.api_url.clone(),
            db.token.clone(),
            args.operations,
        );
        closed_loop_for(args.clients, Duration::from_secs(args.seconds), move |c, _| {
            let i = rngs[c].lock().map(|mut r| r.random_range(1..=m)).unwrap_or(1);
            let (name, key) = (format!("inv-{i}"), format!("rep-{i}"));
            let req = mark_paid(&client, &api, &token, &name, &key);
            let stored = stored.clone();
            async move {
                match req.send().await {
                    Ok(r) => {
                        let status = r.status().as_u16();
                        let replayed = r
                            .headers()
                            .get("idempotent-replayed")
                            .is_some_and(|v| v == "true");
                        let body = r.text().await.unwrap_or_default();
                        let same = stored.get(&i).is_some_and(|s| *s == body);
                        Reply::expect(status, status == 200 && replayed && same, || {
                            format!("key rep-{i}: {status}, replayed={replayed}, body as stored={same}")
                        })
                    }
                    Err(e) => Reply::transport(e),
                }
            }
        })
        .await
    };
    let after = probe.snapshot();
    profile_take(server, db, report).await;
    let db_after = DbSnapshot::take_settled(&db.pool).await;
    fleet.check_alive()?;
    report.cpu = Some(probe.split(&before, &after).await);
    report.set_rss(fleet.rss());

    let l = load.samples().summary();
    report.figure("requests_per_s", load.rate(), "requests/s");
    report.latency("latency_ms", &l);
    report.text("statuses", load.statuses_text());
    DbSnapshot::report(db_before, db_after, load.count() as f64, "request", report);
    report.headline = format!("{:.0} req/s, p50 {:.2} / p99 {:.2} ms", load.rate(), l.p50, l.p99);
    at_most(report, "p99", l.p99, TARGET_P99_MS, "ms");
    report.check(
        "every replay is the stored 200, byte for byte",
        load.unexpected == 0 && load.count() > 0,
        match &load.first_unexpected {
            Some(first) => format!("{} of {} differ; first: {first}", load.unexpected, load.count()),
            None => format!("{} replays", load.count()),
        },
    );
    super::check_payments(&db.pool, report, Some(args.operations as i64)).await?;
    fleet.shutdown().await;
    Ok(())
}
