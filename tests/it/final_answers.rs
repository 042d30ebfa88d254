//! Repeats of succeeded requests are answered from the API's memory
//! (api/src/final_answers.rs): the same bytes, without the database; other
//! repeats still go to the database.
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::*;

#[tokio::test]
async fn a_repeat_of_a_succeeded_request_is_answered_from_memory_byte_for_byte() {
    let mut app = spawn_app().await;
    app.insert_invoice("123").await;
    app.start_worker().await;
    let paid: Value = app.mark_paid("123", "key-paid").await.json().await.unwrap();
    app.await_final(paid["id"].as_str().unwrap()).await;
    let refused: Value = app.mark_paid("404", "key-refused").await.json().await.unwrap();
    let refused = app.await_final(refused["id"].as_str().unwrap()).await;
    assert_eq!(refused["response"]["status"], 404, "{refused}");
    // One repeat each through the database (this is when an answer is kept).
    let from_db = Answer::read(app.mark_paid("123", "key-paid").await).await;
    assert_eq!(from_db.status, StatusCode::OK);
    assert_eq!(from_db.replayed.as_deref(), Some("true"));
    let refusal_from_db = Answer::read(app.mark_paid("404", "key-refused").await).await;
    assert_eq!(refusal_from_db.status, StatusCode::NOT_FOUND);
    app.stop_workers().await;

    // Only memory can answer now.
    sqlx::query("ALTER TABLE operations RENAME TO operations_out_of_reach")
        .execute(&app.db.pool)
        .await
        .unwrap();

    let from_memory = Answer::read(app.mark_paid("123", "key-paid").await).await;
    assert_eq!(from_memory.status, from_db.status);
    assert_eq!(from_memory.content_type, from_db.content_type);
    assert_eq!(from_memory.replayed.as_deref(), Some("true"));
    assert_eq!(from_memory.body, from_db.body, "{from_memory:?}");
    // With `Prefer: wait` too (it is final: nothing to wait for).
    let waited = app
        .patch("/invoices/123/mark-paid")
        .key("key-paid")
        .header("Prefer", "wait=5")
        .json(&json!({ "paymentMethod": "card" }))
        .send()
        .await;
    assert_eq!(waited.body, from_db.body);
    assert_eq!(waited.preference_applied.as_deref(), Some("wait=5"));

    sqlx::query("ALTER TABLE operations_out_of_reach RENAME TO operations")
        .execute(&app.db.pool)
        .await
        .unwrap();

    // A refusal is not kept (an operator may retry a failed operation): its
    // repeat is the database's answer. The stored answer is changed behind
    // the API's back, so that an answer from a kept copy would show.
    let mut changed: Value = serde_json::from_slice(&refusal_from_db.body).unwrap();
    changed["detail"] = json!("changed in the database after the first repeat");
    let changed = changed.to_string();
    let updated =
        sqlx::query("UPDATE operations SET response_body = $1 WHERE idempotency_key = 'key-refused'")
            .bind(&changed)
            .execute(&app.db.pool)
            .await
            .unwrap()
            .rows_affected();
    assert_eq!(updated, 1);
    let refusal = Answer::read(app.mark_paid("404", "key-refused").await).await;
    assert_eq!(
        refusal,
        Answer {
            body: changed.into_bytes(),
            ..refusal_from_db.clone()
        }
    );
    assert_eq!(refusal.status, StatusCode::NOT_FOUND);
    assert_eq!(refusal.content_type.as_deref(), Some("application/problem+json"));
    assert_eq!(refusal.replayed.as_deref(), Some("true"));

    // A different request under a kept key is the database's to judge: the
    // 422 of a reused key, never the kept 200.
    let reused = app
        .patch("/invoices/123/mark-paid")
        .key("key-paid")
        .json(&json!({ "paymentMethod": "cash" }))
        .send()
        .await;
    assert_eq!(reused.status, StatusCode::UNPROCESSABLE_ENTITY, "{reused:?}");
    assert_eq!(reused.content_type.as_deref(), Some("application/problem+json"));
    assert_eq!(reused.replayed, None);
    assert_eq!(reused.location, None);
    let problem: Value = serde_json::from_slice(&reused.body).unwrap();
    assert_eq!(
        problem,
        json!({
            "type": problem_type("idempotency-key-reused"),
            "title": "Idempotency-Key was used with a different request",
            "status": 422,
            "detail": "This key belongs to an earlier request with another method, path or body. Use a new key.",
        })
    );
}
