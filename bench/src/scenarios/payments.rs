//! `payments`, the standard workload: I unpaid invoices; R mark-paid requests
//! from C clients — I with distinct keys plus R − I exact repeats of earlier
//! requests — with W workers running. Operations/s from the first request
//! until every operation is final.
use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::bail;
use clap::Args;
use rand::{rngs::StdRng, Rng, SeedableRng};

use super::{
    at_least, check_payments, fleet, mark_paid, profile_reset, profile_take, seed_history, seed_invoices,
    wait_all_final,
};
use crate::{
    cpu::CpuProbe,
    dbstats::DbSnapshot,
    load::{http_client, Reply},
    progress,
    report::Report,
    server::{RunDb, Server},
    stats::Samples,
};

/// Issue 8's end-to-end target on this 2-core machine.
const TARGET_OPS: f64 = 1200.0;

#[derive(Debug, Clone, Args)]
pub struct PaymentsArgs {
    /// Unpaid invoices, each paid by one request with its own key.
    #[arg(long, default_value_t = 5000)]
    pub invoices: usize,
    /// Requests in all: the distinct ones plus exact repeats of earlier ones.
    #[arg(long, default_value_t = 6000)]
    pub requests: usize,
    /// Concurrent HTTP clients.
    #[arg(long, default_value_t = 16)]
    pub clients: usize,
    /// Worker processes.
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
}

pub async fn run(
    server: &Server,
    db: &RunDb,
    args: &PaymentsArgs,
    report: &mut Report,
) -> anyhow::Result<()> {
    if args.requests < args.invoices || args.invoices == 0 {
        bail!("--requests must be at least --invoices (the rest are repeats), and --invoices at least 1");
    }
    report.param("invoices", args.invoices);
    report.param("requests", args.requests);
    report.param("clients", args.clients);
    report.param("workers", args.workers);
    seed_invoices(&db.pool, args.invoices as u64).await?;
    seed_history(db, server.history, report).await?;
    let mut fleet = fleet(server, db, report);
    fleet.start_api(&[]).await?;
    fleet.start_workers(args.workers, &db.pool).await?;

    let plan = Arc::new(plan(args.invoices, args.requests, args.clients));
    let client = http_client()?;
    progress(format!(
        "payments: {} requests ({} repeats) from {} clients, {} workers",
        args.requests,
        args.requests - args.invoices,
        args.clients,
        args.workers
    ));
    let probe = CpuProbe::new(fleet.api_pid(), fleet.worker_pids(), &db.pool).await;
    let db_before = DbSnapshot::take_settled(&db.pool).await;
    profile_reset(server, db).await;
    let before = probe.snapshot();
    let t0 = Instant::now();
    let cursor = Arc::new(AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..args.clients {
        let (plan, cursor, client) = (plan.clone(), cursor.clone(), client.clone());
        let (api, token) = (fleet.api_url.clone(), db.token.clone());
        tasks.spawn(async move {
            let mut tally = Tally::default();
            loop {
                let i = cursor.fetch_add(1, Ordering::Relaxed);
                let Some(&invoice) = plan.get(i) else { break };
                let name = format!("inv-{invoice}");
                let key = format!("pay-{invoice}");
                let t = Instant::now();
                let reply = send(mark_paid(&client, &api, &token, &name, &key)).await;
                tally.samples.record(t.elapsed());
                tally.add(reply);
            }
            tally
        });
    }
    let mut tally = Tally::default();
    while let Some(t) = tasks.join_next().await {
        tally.merge(t?);
    }
    let sent = t0.elapsed();
    let done = wait_all_final(&db.pool, &mut fleet, Duration::from_secs(300)).await?;
    let after = probe.snapshot();
    profile_take(server, db, report).await;
    let db_after = DbSnapshot::take_settled(&db.pool).await;
    report.cpu = Some(probe.split(&before, &after).await);
    report.set_rss(fleet.rss());

    let total = done.duration_since(t0).as_secs_f64();
    let ops = args.invoices as f64 / total;
    report.figure(
        "operations_per_s",
        ops,
        "operations/s (first request → every operation final)",
    );
    report.seconds("seconds", total);
    report.figure(
        "requests_per_s",
        args.requests as f64 / sent.as_secs_f64(),
        "requests/s (while sending)",
    );
    report.latency("request_latency_ms", &tally.samples.summary());
    report.text(
        "answers",
        format!(
            "202 new ×{} | 202 replayed ×{} | 200 replayed ×{} | other ×{}",
            tally.new, tally.replayed_202, tally.replayed_200, tally.other
        ),
    );
    DbSnapshot::report(db_before, db_after, args.invoices as f64, "op", report);
    report.headline = format!("{ops:.0} operations/s ({total:.2} s)");
    at_least(report, "operations/s", ops, TARGET_OPS, "ops/s");

    let repeats = args.requests - args.invoices;
    report.check(
        "answers",
        tally.other == 0 && tally.new == args.invoices && tally.replayed_202 + tally.replayed_200 == repeats,
        format!(
            "{} new (expected {}), {} replayed (expected {repeats}), {} other{}",
            tally.new,
            args.invoices,
            tally.replayed_202 + tally.replayed_200,
            tally.other,
            tally
                .first_other
                .as_deref()
                .map(|o| format!("; first: {o}"))
                .unwrap_or_default()
        ),
    );
    check_payments(&db.pool, report, Some(args.invoices as i64)).await?;
    fleet.shutdown().await;
    Ok(())
}

/// The invoice number of each request, in sending order: every invoice once,
/// with the repeats spread among them, each repeating a request placed at
/// least `2 × clients` positions earlier (so it was sent before). Seeded:
/// the same plan every run.
pub fn plan(invoices: usize, requests: usize, clients: usize) -> Vec<usize> {
    let mut rng = StdRng::seed_from_u64(8);
    let mut out = Vec::with_capacity(requests);
    let (mut distinct_left, mut repeats_left) = (invoices, requests - invoices);
    let gap = 2 * clients;
    let mut emitted = 0usize;
    while distinct_left + repeats_left > 0 {
        let can_repeat = repeats_left > 0 && emitted > gap;
        let repeat = can_repeat
            && (distinct_left == 0 || rng.random_range(0..distinct_left + repeats_left) < repeats_left);
        if repeat {
            out.push(rng.random_range(1..=emitted - gap));
            repeats_left -= 1;
        } else if distinct_left > 0 {
            emitted += 1;
            out.push(emitted);
            distinct_left -= 1;
        } else {
            // Tiny runs: too few distinct requests for the gap.
            out.push(rng.random_range(1..=emitted.max(1)));
            repeats_left -= 1;
        }
    }
    out
}

#[derive(Default)]
struct Tally {
    new: usize,
    replayed_202: usize,
    replayed_200: usize,
    other: usize,
    first_other: Option<String>,
    samples: Samples,
}

/// (status, replayed header, note)
struct Answer(u16, bool, Option<String>);

async fn send(req: reqwest::RequestBuilder) -> Answer {
    match req.send().await {
        Ok(r) => {
            let status = r.status().as_u16();
            let replayed = r
                .headers()
                .get("idempotent-replayed")
                .is_some_and(|v| v == "true");
            let body = r.text().await.unwrap_or_default();
            Answer(status, replayed, Some(format!("{status}: {}", truncate(&body))))
        }
        Err(e) => {
            let Reply { note, .. } = Reply::transport(e);
            Answer(0, false, note)
        }
    }
}

impl Tally {
    fn add(&mut self, a: Answer) {
        match (a.0, a.1) {
            (202, false) => self.new += 1,
            (202, true) => self.replayed_202 += 1,
            (200, true) => self.replayed_200 += 1,
            _ => {
                self.other += 1;
                if self.first_other.is_none() {
                    self.first_other = a.2;
                }
            }
        }
    }

    fn merge(&mut self, o: Tally) {
        self.new += o.new;
        self.replayed_202 += o.replayed_202;
        self.replayed_200 += o.replayed_200;
        self.other += o.other;
        if self.first_other.is_none() {
            self.first_other = o.first_other;
        }
        self.samples.extend(o.samples);
    }
}

pub fn truncate(s: &str) -> String {
    s.chars().take(200).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_has_every_invoice_once_and_repeats_of_earlier_ones() {
        let p = plan(5000, 6000, 16);
        assert_eq!(p.len(), 6000);
        let mut seen = std::collections::HashSet::new();
        let mut firsts = 0;
        for (pos, &inv) in p.iter().enumerate() {
            if seen.insert(inv) {
                firsts += 1;
            } else {
                // The original was placed at least 2 × clients earlier.
                let first = p.iter().position(|&x| x == inv).unwrap();
                assert!(pos - first >= 32, "repeat of {inv} too close");
            }
        }
        assert_eq!(firsts, 5000);
        let tiny = plan(3, 5, 4);
        assert_eq!(tiny.len(), 5);
        assert!(tiny.iter().all(|&i| (1..=3).contains(&i)));
    }
}
