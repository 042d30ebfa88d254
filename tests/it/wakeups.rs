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

/// The notice carries the finish as committed (core/src/finish_notice.rs):
/// the waiting request answers from it, so it must equal the row.
#[tokio::test]
async fn a_finish_that_a_request_waits_for_is_announced_with_the_committed_answer() {
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
    let row: Value = sqlx::query_scalar(
        "SELECT json_build_object('id', id, 'status', status, 'attempts', attempts,
                'finished_at', finished_at, 'expires_at', expires_at,
                'response_status', response_status, 'content_type', response_content_type,
                'body', response_body)
         FROM operations",
    )
    .fetch_one(&app.db.pool)
    .await
    .unwrap();
    let carried: Value = serde_json::from_str(notice.payload()).unwrap();
    assert_eq!(carried["id"], row["id"]);
    assert_eq!(carried["status"], "succeeded");
    for field in ["status", "attempts", "response_status", "content_type", "body"] {
        assert_eq!(
            carried[field], row[field],
            "{field}: {carried} against the row {row}"
        );
    }
    for time in ["finished_at", "expires_at"] {
        let at = |v: &Value| chrono::DateTime::parse_from_rfc3339(v.as_str().unwrap()).unwrap();
        assert_eq!(at(&carried[time]), at(&row[time]), "{time}");
    }
    let answer = waiting.await.unwrap().unwrap();
    assert_eq!(answer.status(), StatusCode::OK);
    assert_eq!(header(&answer, "preference-applied"), Some("wait=15"));
    let body: Value = answer.json().await.unwrap();
    assert_eq!(
        body.to_string(),
        row["body"].as_str().unwrap(),
        "the stored response, verbatim"
    );
}

/// A waiting request answers from a notice that carries its finish, without
/// reading its operation again: here the notice is sent by hand for an
/// operation that no worker ran, and the request gets the notice's answer at
/// once (a read would find it queued and wait on). A bare-id notice (the
/// rare finishes, a worker of the previous release) makes it read instead.
#[tokio::test]
async fn a_waiting_request_answers_from_the_finish_its_notice_carries() {
    let app = spawn_app().await;
    for invoice in ["n-1", "n-2"] {
        app.insert_invoice(invoice).await;
    }
    let wait = |invoice: &str| {
        tokio::spawn(
            app.request(Method::PATCH, &format!("/invoices/{invoice}/mark-paid"))
                .header("Idempotency-Key", format!("key-{invoice}"))
                .header("Prefer", "wait=3")
                .json(&serde_json::json!({ "paymentMethod": "card" }))
                .send(),
        )
    };
    let (carried, bare) = (wait("n-1"), wait("n-2"));
    eventually("both requests wait", || async {
        app.count("SELECT count(*) FROM operations WHERE notify_on_finish")
            .await
            == 2
    })
    .await;
    let id_of = |invoice: &str| {
        let pool = app.db.pool.clone();
        let key = format!("key-{invoice}");
        async move {
            sqlx::query_scalar::<_, uuid::Uuid>("SELECT id FROM operations WHERE idempotency_key = $1")
                .bind(key)
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    let finish = serde_json::json!({
        "id": id_of("n-1").await, "status": "succeeded", "attempts": 1,
        "finished_at": "2026-12-07T00:00:00Z", "expires_at": "2026-12-08T00:00:00Z",
        "response_status": 200, "content_type": "application/json",
        "body": "{\"from\":\"the notice\"}",
    });
    sqlx::query(
        "SELECT pg_notify('idemq_operation_finished', $1), pg_notify('idemq_operation_finished', $2)",
    )
    .bind(finish.to_string())
    .bind(id_of("n-2").await.to_string())
    .execute(&app.db.pool)
    .await
    .unwrap();
    // A read would have found it queued, and answered 202 at the end of
    // the wait.
    let answer = carried.await.unwrap().unwrap();
    assert_eq!(answer.status(), StatusCode::OK);
    assert_eq!(answer.text().await.unwrap(), r#"{"from":"the notice"}"#);
    // The bare id made its request read: still queued, so it waited on.
    let answer = bare.await.unwrap().unwrap();
    assert_eq!(answer.status(), StatusCode::ACCEPTED);
}
