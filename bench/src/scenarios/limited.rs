//! `limited`: the 429 path. With a tiny sensitive limit every mutating
//! request past the first is refused before any database work; its rate is
//! compared with `/healthz` (no auth, no database) at the same concurrency.
//! By default two API processes under `IDEMQ_RATE_LIMIT_SCOPE=fleet` share
//! the load (client i talks to process i mod N): the fleet's 429 is answered
//! locally once a lease said when the next request is due.
use std::time::Duration;

use clap::Args;

use super::{fleet, mark_paid, profile_reset, profile_take};
use crate::{
    cpu::CpuProbe,
    fleet::Fleet,
    load::{closed_loop_for, http_client, LoadResult, Reply},
    progress,
    report::Report,
    server::{RunDb, Server},
};

const TARGET_RATIO: f64 = 0.8;

#[derive(Debug, Clone, Args)]
pub struct LimitedArgs {
    /// Concurrent HTTP clients (both phases).
    #[arg(long, default_value_t = 8)]
    pub clients: usize,
    /// Duration of each phase (in alternating one-second slices).
    #[arg(long, default_value_t = 5)]
    pub seconds: u64,
    /// The sensitive limit set for the API.
    #[arg(long, default_value = "1/h")]
    pub limit: String,
    /// API processes sharing the load (and, under `fleet`, the budget).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=16))]
    pub apis: u16,
    /// `IDEMQ_RATE_LIMIT_SCOPE` of the API processes.
    #[arg(long, default_value = "fleet", value_parser = ["fleet", "process"])]
    pub scope: String,
}

pub async fn run(server: &Server, db: &RunDb, args: &LimitedArgs, report: &mut Report) -> anyhow::Result<()> {
    report.param("clients", args.clients);
    report.param("seconds", args.seconds);
    report.param("limit", args.limit.clone());
    report.param("apis", args.apis);
    report.param("scope", args.scope.clone());
    let env = [
        ("IDEMQ_RATE_LIMIT_ENABLED", "true"),
        ("IDEMQ_RATE_LIMIT_SENSITIVE", args.limit.as_str()),
        ("IDEMQ_RATE_LIMIT_SCOPE", args.scope.as_str()),
    ];
    let mut fleet = fleet(server, db, report);
    fleet.start_api(&env).await?;
    // Further API processes, each its own `Fleet` (one API apiece).
    let mut others = Vec::new();
    for i in 2..=args.apis {
        let mut other = Fleet::new(
            &server.exe,
            &db.url,
            &server.logs,
            &format!("{}-api{i}", report.scenario),
        );
        other.start_api(&env).await?;
        others.push(other);
    }
    let urls: Vec<String> = std::iter::once(fleet.api_url.clone())
        .chain(others.iter().map(|o| o.api_url.clone()))
        .collect();
    let client = http_client()?;
    // The two phases alternate in one-second slices (ABBA: 429s first in even
    // rounds), so that the machine's ups and downs — other processes, the
    // disk — fall on both alike; back-to-back phases moved the ratio by ±0.1.
    let slice = Duration::from_secs(1);
    let rounds = args.seconds.max(1);
    progress(format!(
        "limited: mark-paid past the limit and /healthz, {} clients, alternating 1 s slices, {} s each",
        args.clients, args.seconds
    ));
    // The CPU split covers the first API process (and Postgres) only.
    let probe = CpuProbe::new(fleet.api_pid(), vec![], &db.pool).await;
    profile_reset(server, db).await;
    let before = probe.snapshot();
    let mut limited = LoadResult::default();
    let mut health = LoadResult::default();
    for round in 0..rounds {
        for refusals in [round % 2 == 0, round % 2 == 1] {
            if refusals {
                let (client, urls, token) = (client.clone(), urls.clone(), db.token.clone());
                limited.append(
                    closed_loop_for(args.clients, slice, move |c, n| {
                        let key = format!("lim-{round}-{c}-{n}");
                        let req = mark_paid(&client, &urls[c % urls.len()], &token, &key, &key);
                        async move {
                            match req.send().await {
                                Ok(r) => {
                                    let status = r.status().as_u16();
                                    let retry_after = r.headers().contains_key("retry-after");
                                    let _ = r.bytes().await;
                                    // The burst lets the first request through.
                                    Reply::expect(
                                        status,
                                        (status == 429 && retry_after) || status == 202,
                                        || format!("{status}, Retry-After present: {retry_after}"),
                                    )
                                }
                                Err(e) => Reply::transport(e),
                            }
                        }
                    })
                    .await,
                );
            } else {
                let (client, urls) = (client.clone(), urls.clone());
                health.append(
                    closed_loop_for(args.clients, slice, move |c, _| {
                        let req = client.get(format!("{}/healthz", urls[c % urls.len()]));
                        async move {
                            match req.send().await {
                                Ok(r) => {
                                    let status = r.status().as_u16();
                                    let _ = r.bytes().await;
                                    Reply::expect(status, status == 200, || format!("{status}"))
                                }
                                Err(e) => Reply::transport(e),
                            }
                        }
                    })
                    .await,
                );
            }
        }
    }
    let after = probe.snapshot();
    profile_take(server, db, report).await;
    report.cpu = Some(probe.split(&before, &after).await);
    fleet.check_alive()?;
    let mut rss = fleet.rss();
    for other in &mut others {
        other.check_alive()?;
        rss.extend(other.rss());
    }
    report.set_rss(rss);

    let refused = limited.statuses.get(&429).copied().unwrap_or(0);
    let rate_429 = refused as f64 / limited.elapsed.as_secs_f64().max(1e-6);
    let ratio = rate_429 / health.rate().max(1e-9);
    report.figure("rate_limited_per_s", rate_429, "429s/s");
    report.latency("rate_limited_latency_ms", &limited.samples().summary());
    report.figure("healthz_per_s", health.rate(), "requests/s");
    report.latency("healthz_latency_ms", &health.samples().summary());
    report.ratio("ratio_to_healthz", ratio);
    report.text("statuses", limited.statuses_text());
    report.headline = format!(
        "{rate_429:.0} 429/s = {ratio:.2} of /healthz {:.0}/s",
        health.rate()
    );
    report.target(
        "429 rate / healthz rate",
        &format!("≥ {TARGET_RATIO}"),
        format!("{ratio:.3}"),
        ratio >= TARGET_RATIO,
    );

    report.check(
        "every refusal is a 429 with Retry-After",
        limited.unexpected == 0 && refused > 0,
        match &limited.first_unexpected {
            Some(f) => format!("{} unexpected; first: {f}", limited.unexpected),
            None => format!("{refused} refused"),
        },
    );
    let accepted = limited.statuses.get(&202).copied().unwrap_or(0) as i64;
    if args.scope == "fleet" {
        let burst = idemq_api::config::RateSpec::parse(&args.limit)
            .map_err(|e| anyhow::anyhow!("--limit: {e}"))?
            .burst;
        report.check(
            "the fleet admits one budget, however many processes",
            accepted <= i64::from(burst),
            format!("{accepted} accepted by {} processes, burst {burst}", args.apis),
        );
    }
    let operations: i64 = sqlx::query_scalar("SELECT count(*) FROM operations")
        .fetch_one(&db.pool)
        .await?;
    report.check(
        "a 429 records nothing",
        operations == accepted,
        format!("{operations} operations for {accepted} accepted requests"),
    );
    report.check(
        "every /healthz answered 200",
        health.unexpected == 0 && health.count() > 0,
        format!("{} answers, {} unexpected", health.count(), health.unexpected),
    );
    fleet.shutdown().await;
    for other in others {
        other.shutdown().await;
    }
    Ok(())
}
