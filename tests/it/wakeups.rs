//! Wake-up notices go out after the commit (core/src/notifier.rs): a new
//! job wakes its queue's workers, a finish that a request waits for is
//! announced, and no enqueueing commit notifies by itself.
use reqwest::{Method, StatusCode};
use serde_json::Value;
use sqlx::postgres::PgListener;

use crate::helpers::*;

#[tokio::test]
async fn an_accepted_request_wakes_its_queue_once_its_job_is_committed() {
    let app = spawn_app().await;
    app.insert_invoice("123").await;
    let mut listener = PgListener::connect(&app.db.url).await.unwrap();
    listener.listen("apalis::job::insert").await.unwrap();

    let r = app.mark_paid("123", "key-1").await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);

    let notice = tokio::time::timeout(DEADLINE, listener.recv())
        .await
        .expect("no wake-up within the deadline")
        .unwrap();
    let payload: Value = serde_json::from_str(notice.payload()).unwrap();
    assert_eq!(payload["job_type"], "payments", "{payload}");
    // Sent after the commit: the job it names is there to be fetched.
    let job_id = payload["id"].as_str().unwrap();
    let jobs: i64 =
        sqlx::query_scalar("SELECT count(*) FROM apalis.jobs WHERE id = $1 AND job_type = 'payments'")
            .bind(job_id)
            .fetch_one(&app.db.pool)
            .await
            .unwrap();
    assert_eq!(jobs, 1);
    // apalis's per-row trigger, which notified inside every enqueueing
    // commit (so that those commits ran one at a time), is gone.
    assert_eq!(
        app.count("SELECT count(*) FROM pg_trigger WHERE tgname = 'notify_workers'")
            .await,
        0
    );
}

#[tokio::test]
async fn a_finish_that_a_request_waits_for_is_announced_with_the_operation_id() {
    let mut app = spawn_app().await;
    app.insert_invoice("123").await;
    let mut listener = PgListener::connect(&app.db.url).await.unwrap();
    listener.listen("idemq_operation_finished").await.unwrap();

    // The request waits before any worker runs, so its finish must be announced.
    let waiting = tokio::spawn(
        app.request(Method::PATCH, "/invoices/123/mark-paid")
            .header("Idempotency-Key", "key-1")
            .header("Prefer", "wait=15")
            .json(&serde_json::json!({ "paymentMethod": "card" }))
            .send(),
    );
    eventually("the request waits for its operation", || async {
        app.count("SELECT count(*) FROM operations WHERE notify_on_finish")
            .await
            == 1
    })
    .await;
    app.start_worker().await;

    let notice = tokio::time::timeout(DEADLINE, listener.recv())
        .await
        .expect("no completion notice within the deadline")
        .unwrap();
    let id: String = sqlx::query_scalar("SELECT id::text FROM operations")
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
    assert_eq!(notice.payload(), id);
    let answer = waiting.await.unwrap().unwrap();
    assert_eq!(answer.status(), StatusCode::OK);
    assert_eq!(header(&answer, "preference-applied"), Some("wait=15"));
}
