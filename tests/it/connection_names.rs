//! Each process names its connections (`application_name`), per part, so
//! that `pg_stat_activity` (and `idemq bench`'s Postgres CPU by connection)
//! tells the API's backends from the workers' fetches, listeners and
//! notifiers; a name the URL gives wins.
use std::{collections::BTreeSet, time::Instant};

use serde_json::json;

use crate::helpers::*;

/// The `application_name`s of the connections to `db` other than the test's.
async fn names(db: &TestDb) -> BTreeSet<String> {
    sqlx::query_scalar::<_, String>(
        "SELECT DISTINCT application_name FROM pg_stat_activity
         WHERE datname = current_database() AND pid <> pg_backend_pid() AND application_name <> ''",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap()
    .into_iter()
    .collect()
}

/// Backends of `db` whose last statement starts with `prefix`.
async fn backends_running(db: &TestDb, prefix: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity
         WHERE datname = current_database() AND starts_with(query, $1)",
    )
    .bind(prefix)
    .fetch_one(&db.pool)
    .await
    .unwrap()
}

/// Waits until the names include every one of `expected`; the last set.
async fn await_names(db: &TestDb, expected: &[&str]) -> BTreeSet<String> {
    let started = Instant::now();
    loop {
        let now = names(db).await;
        if expected.iter().all(|n| now.contains(*n)) {
            return now;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "expected {expected:?}, have {now:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn each_process_names_its_connections_by_part() {
    let db = fresh_db().await;
    let (_, token) = idemq_core::principal::create_token(&db.pool, "names")
        .await
        .unwrap();
    sqlx::query("INSERT INTO invoices (id, amount_cents) VALUES ('n-1', 100)")
        .execute(&db.pool)
        .await
        .unwrap();
    let api = spawn_api_process(&db.url, &[("IDEMQ_RATE_LIMIT_ENABLED", "false")]);
    let _worker = idemq(["worker"])
        .env("DATABASE_URL", &db.url)
        .env("RUST_LOG", "warn")
        .spawn();

    // A payment answered in full: the API's notifier woke the worker, the
    // worker's notifier answered the waiting request.
    let answer = reqwest::Client::new()
        .patch(format!("{}/invoices/n-1/mark-paid", api.url))
        .bearer_auth(&token)
        .header("Idempotency-Key", "names-1")
        .header("Prefer", "wait=10")
        .json(&json!({ "paymentMethod": "card" }))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), reqwest::StatusCode::OK);

    let all = await_names(
        &db,
        &[
            "idemq-api",
            "idemq-api/listener",
            "idemq-api/notifier",
            "idemq-worker",
            "idemq-worker/queue",
            "idemq-worker/listener",
            "idemq-worker/notifier",
        ],
    )
    .await;
    assert!(all.iter().all(|n| n.starts_with("idemq-")), "{all:?}");
}

#[tokio::test]
async fn a_name_in_the_url_is_kept_for_every_connection() {
    let db = fresh_db().await;
    let separator = if db.url.contains('?') { '&' } else { '?' };
    let url = format!("{}{separator}application_name=billing-worker", db.url);
    let _worker = idemq(["worker"])
        .env("DATABASE_URL", &url)
        .env("RUST_LOG", "warn")
        .spawn();

    // Its pool, the fetches' pool and its LISTEN all connect at start.
    let started = Instant::now();
    while backends_running(&db, "LISTEN").await == 0 || backends_running(&db, "WITH jobs AS").await == 0 {
        assert!(
            started.elapsed() < DEADLINE,
            "the worker never listened and fetched"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(names(&db).await, BTreeSet::from(["billing-worker".to_owned()]));
}
