//! The payment path end to end (issue 2).
use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::*;

#[tokio::test]
async fn new_request_is_accepted_with_location_and_operation() {
    let app = spawn_app().await;
    app.insert_invoice("123").await;

    let r = app.mark_paid("123", "key-1").await;

    assert_eq!(r.status(), StatusCode::ACCEPTED);
    assert_eq!(header(&r, "content-type"), Some("application/json"));
    assert_eq!(header(&r, "idempotent-replayed"), None);
    let location = header(&r, "location").unwrap().to_owned();
    let op: Value = r.json().await.unwrap();
    let id = op["id"].as_str().unwrap();
    assert!(id.starts_with("op_"), "{op}");
    assert_eq!(location, format!("/operations/{id}"));
    assert_eq!(op["kind"], "invoice.mark_paid");
    assert_eq!(op["status"], "queued");
    assert_eq!(op["idempotencyKey"], "key-1");
    assert_eq!(op["finishedAt"], Value::Null);
    assert_eq!(op["response"], Value::Null);
    assert_eq!(op["links"]["self"], location);
    // The record and its job exist, both.
    assert_eq!(app.count("SELECT count(*) FROM operations").await, 1);
    assert_eq!(
        app.count("SELECT count(*) FROM apalis.jobs WHERE job_type = 'payments'")
            .await,
        1
    );
}

#[tokio::test]
async fn worker_pays_the_invoice_once_with_one_audit_entry_and_polling_shows_the_response() {
    let mut app = spawn_app().await;
    app.insert_invoice("123").await;
    app.start_worker().await;

    let r = app.mark_paid("123", "key-1").await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let op: Value = r.json().await.unwrap();
    let done = app.await_final(op["id"].as_str().unwrap()).await;

    assert_eq!(done["status"], "succeeded");
    assert!(done["finishedAt"].is_string());
    assert_eq!(done["response"]["status"], 200);
    let invoice = &done["response"]["body"]["invoice"];
    assert_eq!(invoice["id"], "123");
    assert_eq!(invoice["status"], "PAID");
    assert_eq!(invoice["paymentMethod"], "card");
    assert_eq!(invoice["amountCents"], 5000);
    let (status, method): (String, Option<String>) =
        sqlx::query_as("SELECT status, payment_method FROM invoices WHERE id = '123'")
            .fetch_one(&app.db.pool)
            .await
            .unwrap();
    assert_eq!((status.as_str(), method.as_deref()), ("PAID", Some("card")));
    assert_eq!(
        app.count("SELECT count(*) FROM audit_log WHERE entity_id = '123' AND action = 'invoice.mark_paid'")
            .await,
        1
    );
    // One attempt on record, closed by the job transaction's own finish.
    assert_eq!(
        app.count(
            "SELECT count(*) FROM operation_attempts
             WHERE attempt = 1 AND outcome = 'succeeded' AND ended_at IS NOT NULL AND worker <> ''"
        )
        .await,
        1
    );
    assert_eq!(app.count("SELECT count(*) FROM operation_attempts").await, 1);
}

#[tokio::test]
async fn replay_after_completion_is_byte_identical_and_marked() {
    let mut app = spawn_app().await;
    app.insert_invoice("123").await;
    app.start_worker().await;
    let op: Value = app.mark_paid("123", "key-1").await.json().await.unwrap();
    let done = app.await_final(op["id"].as_str().unwrap()).await;

    let first = app.mark_paid("123", "key-1").await;
    assert_eq!(first.status(), StatusCode::OK);
    assert_eq!(header(&first, "idempotent-replayed"), Some("true"));
    assert_eq!(header(&first, "content-type"), Some("application/json"));
    let first_body = first.bytes().await.unwrap();
    // The stored response, as the operation shows it.
    assert_eq!(
        serde_json::from_slice::<Value>(&first_body).unwrap(),
        done["response"]["body"]
    );

    let second = app.mark_paid("123", "key-1").await;
    assert_eq!(second.status(), StatusCode::OK);
    assert_eq!(header(&second, "idempotent-replayed"), Some("true"));
    assert_eq!(second.bytes().await.unwrap(), first_body);
    // Still one effect.
    assert_eq!(app.count("SELECT count(*) FROM audit_log").await, 1);
    assert_eq!(app.count("SELECT count(*) FROM operations").await, 1);
}

#[tokio::test]
async fn repeat_before_completion_returns_the_same_operation() {
    let app = spawn_app().await; // no worker: the operation stays queued
    app.insert_invoice("123").await;

    let first: Value = app.mark_paid("123", "key-1").await.json().await.unwrap();
    let again = app.mark_paid("123", "key-1").await;

    assert_eq!(again.status(), StatusCode::ACCEPTED);
    assert_eq!(header(&again, "idempotent-replayed"), Some("true"));
    assert_eq!(header(&again, "location"), first["links"]["self"].as_str());
    let again: Value = again.json().await.unwrap();
    assert_eq!(again["id"], first["id"]);
    assert_eq!(app.count("SELECT count(*) FROM operations").await, 1);
    assert_eq!(app.count("SELECT count(*) FROM apalis.jobs").await, 1);
}

#[tokio::test]
async fn missing_key_is_a_400_problem_and_writes_nothing() {
    let app = spawn_app().await;
    app.insert_invoice("123").await;

    let r = app
        .patch("/invoices/123/mark-paid")
        .json(&serde_json::json!({ "paymentMethod": "card" }))
        .response()
        .await;

    assert_problem(&r, StatusCode::BAD_REQUEST);
    let problem: Value = r.json().await.unwrap();
    assert_eq!(
        problem["type"],
        "https://idemq.dev/problems/idempotency-key-missing"
    );
    assert_eq!(problem["status"], 400);
    assert_eq!(app.count("SELECT count(*) FROM operations").await, 0);
    assert_eq!(app.count("SELECT count(*) FROM apalis.jobs").await, 0);
}

#[tokio::test]
async fn second_key_for_a_paid_invoice_fails_with_a_stored_409_that_replays() {
    let mut app = spawn_app().await;
    app.insert_invoice("123").await;
    app.start_worker().await;
    let first: Value = app.mark_paid("123", "key-1").await.json().await.unwrap();
    assert_eq!(
        app.await_final(first["id"].as_str().unwrap()).await["status"],
        "succeeded"
    );

    let second: Value = app.mark_paid("123", "key-2").await.json().await.unwrap();
    let done = app.await_final(second["id"].as_str().unwrap()).await;

    assert_eq!(done["status"], "failed");
    assert_eq!(done["response"]["status"], 409);
    assert_eq!(
        done["response"]["body"]["type"],
        "https://idemq.dev/problems/invoice-already-paid"
    );
    let replay = app.mark_paid("123", "key-2").await;
    assert_problem(&replay, StatusCode::CONFLICT);
    assert_eq!(header(&replay, "idempotent-replayed"), Some("true"));
    // A refusal writes no audit entry.
    assert_eq!(app.count("SELECT count(*) FROM audit_log").await, 1);
}

#[tokio::test]
async fn unknown_invoice_finishes_with_a_stored_404() {
    let mut app = spawn_app().await;
    app.start_worker().await;

    let op: Value = app.mark_paid("nope", "key-1").await.json().await.unwrap();
    let done = app.await_final(op["id"].as_str().unwrap()).await;

    assert_eq!(done["status"], "failed");
    assert_eq!(done["response"]["status"], 404);
    assert_eq!(
        done["response"]["body"]["type"],
        "https://idemq.dev/problems/invoice-not-found"
    );
    let replay = app.mark_paid("nope", "key-1").await;
    assert_problem(&replay, StatusCode::NOT_FOUND);
    assert_eq!(header(&replay, "idempotent-replayed"), Some("true"));
    assert_eq!(app.count("SELECT count(*) FROM audit_log").await, 0);
}

#[tokio::test]
async fn record_and_enqueue_are_atomic() {
    let app = spawn_app().await;
    app.insert_invoice("123").await;
    // Make the job insert fail after the operation row was inserted.
    sqlx::query(
        "ALTER TABLE apalis.jobs ADD CONSTRAINT test_no_payments CHECK (job_type <> 'payments') NOT VALID",
    )
    .execute(&app.db.pool)
    .await
    .unwrap();

    let r = app.mark_paid("123", "key-1").await;

    // A check violation is no passing fault: 500 with an error id, not 503.
    let problem = expect_problem(r, StatusCode::INTERNAL_SERVER_ERROR, "internal-error").await;
    assert!(problem["errorId"].is_string(), "{problem}");
    assert_eq!(app.count("SELECT count(*) FROM operations").await, 0);
    assert_eq!(app.count("SELECT count(*) FROM apalis.jobs").await, 0);

    // Nothing was recorded, so the same key works once the fault is gone.
    sqlx::query("ALTER TABLE apalis.jobs DROP CONSTRAINT test_no_payments")
        .execute(&app.db.pool)
        .await
        .unwrap();
    let r = app.mark_paid("123", "key-1").await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    assert_eq!(header(&r, "idempotent-replayed"), None);
    assert_eq!(app.count("SELECT count(*) FROM operations").await, 1);
    assert_eq!(app.count("SELECT count(*) FROM apalis.jobs").await, 1);
}

#[tokio::test]
async fn redelivery_of_a_finished_job_changes_nothing() {
    let mut app = spawn_app().await;
    app.insert_invoice("123").await;
    app.start_worker().await;
    let op: Value = app.mark_paid("123", "key-1").await.json().await.unwrap();
    let id = op["id"].as_str().unwrap().to_owned();
    let done = app.await_final(&id).await;
    let before: (i32, chrono::DateTime<chrono::Utc>, chrono::DateTime<chrono::Utc>) = sqlx::query_as(
        "SELECT attempts, finished_at, (SELECT paid_at FROM invoices WHERE id = '123') FROM operations",
    )
    .fetch_one(&app.db.pool)
    .await
    .unwrap();

    // The queue delivers the same operation again (a second job for it).
    let op_id: idemq_core::operation::OperationId = id.parse().unwrap();
    let job_id = idemq_core::queue::new_job_id();
    let mut conn = app.db.pool.acquire().await.unwrap();
    idemq_core::queue::push(&mut conn, idemq_core::queue::PAYMENTS, job_id, op_id)
        .await
        .unwrap();
    let job = job_id.to_string();
    eventually("the redelivered job is done", || {
        let pool = app.db.pool.clone();
        let job = job.clone();
        async move {
            sqlx::query_scalar::<_, String>("SELECT status FROM apalis.jobs WHERE id = $1")
                .bind(job)
                .fetch_one(&pool)
                .await
                .unwrap()
                == "Done"
        }
    })
    .await;

    let after: (i32, chrono::DateTime<chrono::Utc>, chrono::DateTime<chrono::Utc>) = sqlx::query_as(
        "SELECT attempts, finished_at, (SELECT paid_at FROM invoices WHERE id = '123') FROM operations",
    )
    .fetch_one(&app.db.pool)
    .await
    .unwrap();
    assert_eq!(after, before);
    assert_eq!(app.count("SELECT count(*) FROM audit_log").await, 1);
    let again: Value = app.get_operation(&id).await.json().await.unwrap();
    assert_eq!(again, done);
}
