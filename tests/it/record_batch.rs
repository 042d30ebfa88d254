//! Group commit of the request path's record (`api/src/record_batch.rs`):
//! requests that arrive while the record statements are busy share the next
//! one's statement and commit, and each still gets what a lone record would
//! give it. The real `idemq api` process, its `/metrics`, and a table lock
//! held by the test to keep the one record statement busy.
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use sqlx::{PgPool, Postgres, Transaction};
use tokio::task::JoinHandle;

use crate::helpers::*;

/// `idemq api` with one record statement at a time, so that the test knows
/// which requests wait for it.
fn spawn_api(db_url: &str, batches: &str) -> ApiProcess {
    spawn_api_process(
        db_url,
        &[
            ("IDEMQ_API_RECORD_BATCHES", batches),
            ("IDEMQ_RATE_LIMIT_ENABLED", "false"),
            ("IDEMQ_API_WARM_CONNECTIONS", "0"),
        ],
    )
}

async fn setup(invoices: usize) -> (TestDb, String) {
    let db = fresh_db().await;
    let (_, token) = idemq_core::principal::create_token(&db.pool, "batcher")
        .await
        .unwrap();
    sqlx::query("INSERT INTO invoices (id) SELECT g::text FROM generate_series(1, $1) g")
        .bind(invoices as i32)
        .execute(&db.pool)
        .await
        .unwrap();
    (db, token)
}

async fn metrics(api: &ApiProcess) -> String {
    let r = reqwest::Client::new()
        .get(format!("{}/metrics", api.ops))
        .bearer_auth(API_PROCESS_OPS_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    r.text().await.unwrap()
}

/// One sample of the Prometheus text; 0 when absent (a histogram never
/// recorded is not rendered).
fn value(metrics: &str, series: &str) -> f64 {
    sample(metrics, series).unwrap_or(0.0)
}

/// `PATCH /invoices/{invoice}/mark-paid` under `key`, sent in a task.
fn pay(api: &ApiProcess, token: &str, invoice: &str, key: &str, method: &str) -> JoinHandle<Answer> {
    let call = api
        .call(Method::PATCH, &format!("/invoices/{invoice}/mark-paid"), token)
        .key(key)
        .json(&json!({ "paymentMethod": method }));
    tokio::spawn(call.send())
}

/// Holds `operations` so that no record statement can insert, and returns
/// once the API's one record statement waits for it.
async fn hold_records(
    db: &TestDb,
    api: &ApiProcess,
    token: &str,
) -> (Transaction<'static, Postgres>, JoinHandle<Answer>) {
    let mut lock = db.pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE operations IN SHARE MODE")
        .execute(&mut *lock)
        .await
        .unwrap();
    let first = pay(api, token, "1", "first", "card");
    eventually("the record statement to wait for the lock", || {
        record_statement_waits(&db.pool, &db.name)
    })
    .await;
    (lock, first)
}

async fn record_statement_waits(pool: &PgPool, database: &str) -> bool {
    sqlx::query_scalar::<_, i64>(
        "SELECT count(*) FROM pg_stat_activity
         WHERE datname = $1 AND wait_event_type = 'Lock' AND query LIKE 'WITH input AS%'",
    )
    .bind(database)
    .fetch_one(pool)
    .await
    .unwrap()
        == 1
}

async fn waiting(api: &ApiProcess, n: f64) {
    eventually(
        &format!("{n} requests waiting for a record statement"),
        || async { value(&metrics(api).await, "idemq_record_waiting") == n },
    )
    .await;
}

async fn count(pool: &PgPool, sql: &'static str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap()
}

#[tokio::test]
async fn requests_that_wait_for_a_busy_record_statement_share_the_next_one() {
    let (db, token) = setup(11).await;
    let api = spawn_api(&db.url, "1");
    // On the first scrape already, before any request.
    assert_eq!(sample(&metrics(&api).await, "idemq_record_waiting"), Some(0.0));
    let (lock, first) = hold_records(&db, &api, &token).await;
    let rest: Vec<_> = (2..=11)
        .map(|i| pay(&api, &token, &i.to_string(), &format!("k{i}"), "card"))
        .collect();
    waiting(&api, 10.0).await;
    lock.commit().await.unwrap();

    let mut ids = std::collections::HashSet::new();
    for answer in std::iter::once(first).chain(rest) {
        let answer = answer.await.unwrap();
        assert_eq!(answer.status, StatusCode::ACCEPTED, "{}", answer.text());
        assert_eq!(answer.replayed, None);
        ids.insert(answer.json()["id"].as_str().unwrap().to_owned());
    }
    assert_eq!(ids.len(), 11);
    let m = metrics(&api).await;
    // Two statements: the first request alone, then the ten that waited.
    assert_eq!(value(&m, "idemq_record_batch_size_count"), 2.0, "{m}");
    assert_eq!(value(&m, "idemq_record_batch_size_sum"), 11.0, "{m}");
    assert_eq!(value(&m, "idemq_record_batch_size_bucket{le=\"1\"}"), 1.0, "{m}");
    assert_eq!(value(&m, "idemq_record_batch_size_bucket{le=\"8\"}"), 1.0, "{m}");
    assert_eq!(value(&m, "idemq_record_waiting"), 0.0, "{m}");
    // Each request's operation with its job, and nothing else.
    assert_eq!(count(&db.pool, "SELECT count(*) FROM operations").await, 11);
    assert_eq!(
        count(
            &db.pool,
            "SELECT count(*) FROM operations o JOIN apalis.jobs j ON j.id = o.job_id AND j.job_type = o.queue"
        )
        .await,
        11
    );
    assert_eq!(count(&db.pool, "SELECT count(*) FROM apalis.jobs").await, 11);
    api.stop();
}

#[tokio::test]
async fn a_batch_settles_repeats_reused_keys_and_a_key_sent_twice_as_lone_records_would() {
    let (db, token) = setup(3).await;
    let api = spawn_api(&db.url, "1");
    let done = pay(&api, &token, "2", "done", "card").await.unwrap();
    assert_eq!(done.status, StatusCode::ACCEPTED, "{}", done.text());
    let done_id = done.json()["id"].clone();

    let (lock, first) = hold_records(&db, &api, &token).await;
    let repeat = pay(&api, &token, "2", "done", "card");
    let reused = pay(&api, &token, "2", "done", "cash");
    let twins = [
        pay(&api, &token, "3", "twin", "card"),
        pay(&api, &token, "3", "twin", "card"),
    ];
    waiting(&api, 4.0).await;
    lock.commit().await.unwrap();

    assert_eq!(first.await.unwrap().status, StatusCode::ACCEPTED);
    let repeat = repeat.await.unwrap();
    assert_eq!(repeat.replayed.as_deref(), Some("true"));
    assert_eq!(repeat.json()["id"], done_id);
    let reused = reused.await.unwrap();
    assert_eq!(reused.status, StatusCode::UNPROCESSABLE_ENTITY);
    let reused: Value = reused.json();
    assert_eq!(reused["type"], problem_type("idempotency-key-reused"));
    let mut twin_ids = Vec::new();
    let mut replayed = Vec::new();
    for twin in twins {
        let twin = twin.await.unwrap();
        assert_eq!(twin.status, StatusCode::ACCEPTED, "{}", twin.text());
        twin_ids.push(twin.json()["id"].clone());
        replayed.push(twin.replayed);
    }
    assert_eq!(twin_ids[0], twin_ids[1]);
    replayed.sort();
    assert_eq!(replayed, [None, Some("true".to_owned())]);

    let m = metrics(&api).await;
    // "done", "first", then the four that waited, together.
    assert_eq!(value(&m, "idemq_record_batch_size_count"), 3.0, "{m}");
    assert_eq!(value(&m, "idemq_record_batch_size_sum"), 6.0, "{m}");
    assert_eq!(count(&db.pool, "SELECT count(*) FROM operations").await, 3);
    assert_eq!(count(&db.pool, "SELECT count(*) FROM apalis.jobs").await, 3);
    api.stop();
}

#[tokio::test]
async fn a_batch_the_database_refuses_is_recorded_one_by_one_and_fails_only_the_bad_request() {
    let (db, token) = setup(6).await;
    // A value the database refuses for one key alone (as a CHECK would).
    sqlx::raw_sql(
        "CREATE FUNCTION refuse_poison() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
           IF NEW.idempotency_key = 'poison' THEN
             RAISE EXCEPTION 'poisoned' USING ERRCODE = '22023';
           END IF;
           RETURN NEW;
         END $$;
         CREATE TRIGGER refuse_poison BEFORE INSERT ON operations
           FOR EACH ROW EXECUTE FUNCTION refuse_poison();",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let api = spawn_api(&db.url, "1");
    let (lock, first) = hold_records(&db, &api, &token).await;
    let poison = pay(&api, &token, "2", "poison", "card");
    let good: Vec<_> = (3..=6)
        .map(|i| pay(&api, &token, &i.to_string(), &format!("good{i}"), "card"))
        .collect();
    waiting(&api, 5.0).await;
    lock.commit().await.unwrap();

    assert_eq!(first.await.unwrap().status, StatusCode::ACCEPTED);
    let poison = poison.await.unwrap();
    assert_eq!(poison.status, StatusCode::BAD_REQUEST, "{}", poison.text());
    assert_eq!(poison.json()["type"], problem_type("invalid-body"));
    for answer in good {
        let answer = answer.await.unwrap();
        assert_eq!(answer.status, StatusCode::ACCEPTED, "{}", answer.text());
    }
    // The four good requests recorded with their jobs, nothing of the bad one.
    assert_eq!(count(&db.pool, "SELECT count(*) FROM operations").await, 5);
    assert_eq!(
        count(
            &db.pool,
            "SELECT count(*) FROM operations WHERE idempotency_key = 'poison'"
        )
        .await,
        0
    );
    assert_eq!(count(&db.pool, "SELECT count(*) FROM apalis.jobs").await, 5);
    let m = metrics(&api).await;
    assert_eq!(value(&m, "idemq_record_batch_size_count"), 2.0, "{m}");
    assert!(
        api.log().contains("record batch refused: recording one by one"),
        "{}",
        api.log()
    );
    api.stop();
}

/// A request no statement takes within the pool's acquire timeout (5 s) is
/// answered 503, as it would be when no connection is free, and is never
/// recorded, even once the statements move again.
#[tokio::test]
async fn a_request_that_no_record_statement_takes_in_time_gets_503_and_is_never_recorded() {
    let (db, token) = setup(2).await;
    let api = spawn_api(&db.url, "1");
    let (lock, first) = hold_records(&db, &api, &token).await;
    let started = std::time::Instant::now();
    let late = tokio::time::timeout(Duration::from_secs(30), pay(&api, &token, "2", "late", "card"))
        .await
        .expect("a request waiting for a record statement is answered within the bound")
        .unwrap();
    assert_eq!(late.status, StatusCode::SERVICE_UNAVAILABLE, "{}", late.text());
    assert!(late.headers.contains_key("retry-after"));
    assert_eq!(late.json()["type"], problem_type("service-unavailable"));
    assert!(
        started.elapsed() >= Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(value(&metrics(&api).await, "idemq_record_waiting"), 0.0);
    lock.commit().await.unwrap();

    assert_eq!(first.await.unwrap().status, StatusCode::ACCEPTED);
    // The next batch runs (this request), and the one that gave up is not in it.
    let next = pay(&api, &token, "2", "next", "card").await.unwrap();
    assert_eq!(next.status, StatusCode::ACCEPTED);
    assert_eq!(
        count(
            &db.pool,
            "SELECT count(*) FROM operations WHERE idempotency_key = 'late'"
        )
        .await,
        0
    );
    assert_eq!(count(&db.pool, "SELECT count(*) FROM apalis.jobs").await, 2);
    // The same request again, now that statements are free: recorded.
    let retried = pay(&api, &token, "2", "late", "card").await.unwrap();
    assert_eq!(retried.status, StatusCode::ACCEPTED);
    assert_eq!(retried.replayed, None);
    api.stop();
}

#[tokio::test]
async fn with_record_batches_0_each_request_records_on_its_own() {
    let (db, token) = setup(8).await;
    let api = spawn_api(&db.url, "0");
    let sent: Vec<_> = (1..=8)
        .map(|i| pay(&api, &token, &i.to_string(), &format!("k{i}"), "card"))
        .collect();
    for answer in sent {
        assert_eq!(answer.await.unwrap().status, StatusCode::ACCEPTED);
    }
    let m = metrics(&api).await;
    assert_eq!(value(&m, "idemq_record_batch_size_count"), 0.0, "{m}");
    assert_eq!(count(&db.pool, "SELECT count(*) FROM apalis.jobs").await, 8);
    api.stop();
}

#[test]
fn a_record_batch_max_out_of_range_is_refused_at_start_by_name() {
    for value in ["0", "1001", "many"] {
        let out = crate::harness::idemq(["api"])
            .env_clear()
            .env("DATABASE_URL", "postgres://nobody@127.0.0.1:1/none")
            .env("IDEMQ_API_RECORD_BATCH_MAX", value)
            .output_blocking();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{value}: {stderr}");
        assert!(stderr.contains("IDEMQ_API_RECORD_BATCH_MAX"), "{value}: {stderr}");
    }
}
