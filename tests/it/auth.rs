//! Bearer-token authentication (issue 2).
use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::*;

#[tokio::test]
async fn missing_or_invalid_token_is_a_401_problem() {
    let app = spawn_app().await;
    app.insert_invoice("123").await;
    let url = format!("{}/invoices/123/mark-paid", app.addr);
    let body = serde_json::json!({ "paymentMethod": "card" });

    let none = app
        .patch("/invoices/123/mark-paid")
        .anonymous()
        .key("k")
        .json(&body)
        .response()
        .await;
    let wrong = app
        .patch("/invoices/123/mark-paid")
        .token("idq_not-a-token")
        .key("k")
        .json(&body)
        .response()
        .await;
    let basic = app
        .client
        .patch(&url)
        .basic_auth("user", Some(&app.token))
        .header("Idempotency-Key", "k")
        .json(&body)
        .send()
        .await
        .unwrap();

    for r in [none, wrong, basic] {
        assert_problem(&r, StatusCode::UNAUTHORIZED);
        assert_eq!(header(&r, "www-authenticate"), Some("Bearer"));
        let p: Value = r.json().await.unwrap();
        assert_eq!(p["type"], "https://idemq.dev/problems/unauthorized");
    }
    assert_eq!(app.count("SELECT count(*) FROM operations").await, 0);
    // Reads need the token too.
    let r = app
        .client
        .get(format!("{}/invoices/123", app.addr))
        .send()
        .await
        .unwrap();
    assert_problem(&r, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn tokens_are_stored_only_as_sha256_hashes() {
    let app = spawn_app().await;
    let stored: Vec<Vec<u8>> = sqlx::query_scalar("SELECT token_sha256 FROM api_tokens")
        .fetch_all(&app.db.pool)
        .await
        .unwrap();
    assert_eq!(stored.len(), 1);
    use sha2::Digest;
    assert_eq!(stored[0], sha2::Sha256::digest(app.token.as_bytes()).to_vec());
    // And the token works.
    let r = app.get("/invoices/none").response().await;
    assert_problem(&r, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn health_is_public() {
    let app = spawn_app().await;
    let r = app
        .client
        .get(format!("{}/healthz", app.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = app
        .client
        .get(format!("{}/readyz", app.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}
