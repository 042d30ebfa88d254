//! Postgres crashes in the middle of a payments run (`pg_ctl stop -m
//! immediate`: every backend killed, WAL buffers that were not yet written
//! lost, crash recovery at the next start) and comes back. The worker commits
//! its writes that carry no effect asynchronously (apalis's fetch and ack, the
//! attempt count: README "Durability of each commit"), so this is where those
//! commits are lost. The contract must not notice: no invoice paid twice, no
//! accepted operation lost, every operation final.
//!
//! Real processes throughout: a private cluster with the production
//! durability settings (fsync and synchronous_commit on, which the argument
//! relies on), `idemq api`, two `idemq worker`s, eight HTTP clients.
use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use idemq_devcluster::ClusterOptions;
use reqwest::StatusCode;
use serde_json::Value;
use sqlx::PgPool;

use crate::helpers::*;

const INVOICES: usize = 240;
const CLIENTS: usize = 8;
/// Every client request, every wait, and the whole run after the restart.
const PATIENCE: Duration = Duration::from_secs(90);

/// A real `idemq worker` that rides out the outage (killed when dropped).
fn spawn_worker(url: &str) -> Proc {
    idemq(["worker"])
        .env("DATABASE_URL", url)
        .env("IDEMQ_WORKER_LEASE", "2s")
        .env("IDEMQ_QUEUE_POLL_INTERVAL", "100ms")
        .env("IDEMQ_WORKER_CONCURRENCY", "4")
        .env("IDEMQ_DB_MAX_CONNECTIONS", "20")
        .env("IDEMQ_DB_LOST_GRACE", "60s")
        .env("IDEMQ_CLEANUP_ENABLED", "false")
        .env("IDEMQ_LOG_FORMAT", "pretty")
        .env("RUST_LOG", "info,sqlx=warn")
        .env("NO_COLOR", "1")
        .spawn()
}

/// One count over a fresh connection (the cluster may have restarted since).
async fn count(url: &str, sql: &str) -> Option<i64> {
    let pool = PgPool::connect(url).await.ok()?;
    let n = sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
        .fetch_one(&pool)
        .await
        .ok();
    pool.close().await;
    n
}

/// Sends the payment until the API accepts it (202, or 200 for a repeat),
/// riding out the outage (503s, refused connections); returns the
/// operation's id when the answer names it (a 202; a replay of a finished
/// operation's stored response, 200 or 409, does not).
async fn pay_until_accepted(
    client: &reqwest::Client,
    api: &str,
    token: &str,
    invoice: &str,
    key: &str,
) -> Option<String> {
    let started = Instant::now();
    loop {
        let answer = client
            .patch(format!("{api}/invoices/{invoice}/mark-paid"))
            .bearer_auth(token)
            .header("Idempotency-Key", key)
            .json(&serde_json::json!({ "paymentMethod": "card" }))
            .send()
            .await;
        match answer {
            Ok(r) if r.status() == StatusCode::ACCEPTED => {
                let body: Value = r.json().await.unwrap();
                return Some(body["id"].as_str().expect("an operation id").to_owned());
            }
            // The replay of a finished operation: an earlier try of this
            // request was recorded but its answer was lost to the crash (a
            // 503 or a dropped connection after the commit), and the job ran
            // meanwhile. A second key's payment replays its stored 409.
            Ok(r) if header(&r, "idempotent-replayed") == Some("true") => {
                assert!(
                    matches!(r.status(), StatusCode::OK | StatusCode::CONFLICT),
                    "{invoice} {key}: replayed {}",
                    r.status()
                );
                return None;
            }
            Ok(r) => assert_eq!(
                r.status(),
                StatusCode::SERVICE_UNAVAILABLE,
                "{invoice} {key}: {:?}",
                r.text().await
            ),
            Err(e) => assert!(!e.is_status(), "{e}"),
        }
        assert!(started.elapsed() < PATIENCE, "{invoice} {key} never accepted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_immediate_stop_mid_payments_loses_nothing_accepted_and_pays_nothing_twice() {
    let dir = own_cluster_dir("immediate-pg");
    // Not `fast`: that is synchronous_commit off for everything.
    let options = |port| ClusterOptions {
        data_dir: dir.clone(),
        port,
        fast: false,
    };
    let cluster = start_own_cluster(options(0)).await;
    let port = cluster.port();
    let (url, pool) = create_migrated_db(&cluster).await;
    sqlx::query(
        "INSERT INTO invoices (id, amount_cents) SELECT 'inv-' || g, 100 * g FROM generate_series(1, $1) g",
    )
    .bind(INVOICES as i32)
    .execute(&pool)
    .await
    .unwrap();
    let (_, token) = idemq_core::principal::create_token(&pool, "tester")
        .await
        .unwrap();
    pool.close().await;

    let api = spawn_api_process(&url, &[("IDEMQ_RATE_LIMIT_ENABLED", "false")]);
    let workers: Vec<Proc> = (0..2).map(|_| spawn_worker(&url)).collect();

    // Each invoice is paid under one key; every fourth also under a second
    // key (another payment of the same invoice: one of the two must be
    // refused), and every third repeats its first request exactly.
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let (api_url, token) = (Arc::new(api.url.clone()), Arc::new(token));
    let mut clients = tokio::task::JoinSet::new();
    for c in 0..CLIENTS {
        let (client, api_url, token) = (client.clone(), api_url.clone(), token.clone());
        clients.spawn(async move {
            let mut accepted: Vec<(String, String, Option<String>)> = Vec::new();
            for i in (1..=INVOICES).filter(|i| i % CLIENTS == c) {
                let invoice = format!("inv-{i}");
                let key = format!("k-{i}");
                let id = pay_until_accepted(&client, &api_url, &token, &invoice, &key).await;
                if i % 3 == 0 {
                    let again = pay_until_accepted(&client, &api_url, &token, &invoice, &key).await;
                    if let (Some(first), Some(again)) = (&id, &again) {
                        assert_eq!(again, first, "an exact repeat names the same operation");
                    }
                }
                accepted.push((invoice.clone(), key, id));
                if i % 4 == 0 {
                    let key = format!("k2-{i}");
                    let other = pay_until_accepted(&client, &api_url, &token, &invoice, &key).await;
                    accepted.push((invoice, key, other));
                }
            }
            accepted
        });
    }

    // The crash, once a third of the invoices are paid: jobs are being
    // fetched, counted, run and acknowledged at that moment.
    let started = Instant::now();
    loop {
        let paid = count(&url, "SELECT count(*) FROM invoices WHERE status = 'PAID'").await;
        if paid.is_some_and(|n| n >= INVOICES as i64 / 3) {
            break;
        }
        assert!(started.elapsed() < PATIENCE, "payments did not get going");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let in_flight = count(
        &url,
        "SELECT count(*) FROM operations WHERE status IN ('queued', 'running')",
    )
    .await;
    tokio::task::spawn_blocking(move || cluster.stop_immediately())
        .await
        .unwrap()
        .expect("pg_ctl stop -m immediate");
    let down = Instant::now();
    println!("Postgres stopped -m immediate with {in_flight:?} operations unfinished");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let _cluster = start_own_cluster(options(port)).await;
    println!(
        "Postgres back after {:?} (crash recovery included)",
        down.elapsed()
    );

    let mut accepted = Vec::new();
    while let Some(done) = clients.join_next().await {
        accepted.extend(done.expect("a client failed"));
    }
    let pool = PgPool::connect(&url).await.unwrap();
    let back = Instant::now();
    while unfinished_operations(&pool).await > 0 {
        assert!(
            back.elapsed() < PATIENCE,
            "operations still unfinished after {PATIENCE:?}:\n{}",
            workers.iter().map(Proc::log).collect::<Vec<_>>().join("\n---\n")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!("every operation final {:?} after the restart", down.elapsed());

    // No accepted operation lost: each is on record, final, and answered.
    let rows: Vec<(String, uuid::Uuid, String, String, Option<i16>)> = sqlx::query_as(
        "SELECT idempotency_key, id, request->'params'->>'id', status, response_status FROM operations",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let stored: HashMap<String, (uuid::Uuid, String, String, Option<i16>)> = rows
        .into_iter()
        .map(|(k, id, inv, s, r)| (k, (id, inv, s, r)))
        .collect();
    let expected_ops = INVOICES + INVOICES / 4;
    assert_eq!(accepted.len(), expected_ops);
    assert_eq!(
        stored.len(),
        expected_ops,
        "one operation per key, no more, no less"
    );
    let mut succeeded_per_invoice: HashMap<&str, usize> = HashMap::new();
    for (invoice, key, id) in &accepted {
        let (stored_id, stored_invoice, status, response) = stored
            .get(key)
            .unwrap_or_else(|| panic!("accepted operation {id:?} ({invoice}, {key}) lost"));
        if let Some(id) = id {
            assert_eq!(*stored_id, op_uuid(id), "{key}");
        }
        assert_eq!(stored_invoice, invoice);
        match status.as_str() {
            "succeeded" => {
                assert_eq!(*response, Some(200));
                *succeeded_per_invoice.entry(invoice).or_default() += 1;
            }
            // The other key's payment of an invoice already paid.
            "failed" => assert_eq!(*response, Some(409), "{key} ({invoice})"),
            other => panic!("{key} ({invoice}) is {other}"),
        }
    }
    // No invoice paid twice, none left unpaid.
    assert_eq!(succeeded_per_invoice.len(), INVOICES);
    assert!(
        succeeded_per_invoice.values().all(|n| *n == 1),
        "an invoice paid twice: {succeeded_per_invoice:?}"
    );
    let n = INVOICES as i64;
    let total = |sql: &'static str| {
        let pool = pool.clone();
        async move { sqlx::query_scalar::<_, i64>(sql).fetch_one(&pool).await.unwrap() }
    };
    assert_eq!(
        total("SELECT count(*) FROM invoices WHERE status = 'PAID'").await,
        n
    );
    assert_eq!(total("SELECT count(DISTINCT entity_id) FROM audit_log").await, n);
    assert_eq!(
        total("SELECT count(*) FROM audit_log").await,
        n,
        "one audit entry per payment"
    );
    // The answers agree with the records.
    for id in accepted.iter().filter_map(|(_, _, id)| id.as_ref()).step_by(17) {
        let r = client
            .get(format!("{}/operations/{id}", api.url))
            .bearer_auth(token.as_str())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        let op: Value = r.json().await.unwrap();
        assert!(
            matches!(op["status"].as_str(), Some("succeeded" | "failed")),
            "{op}"
        );
    }
    pool.close().await;
}
