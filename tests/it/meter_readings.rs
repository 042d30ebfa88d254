//! Recording meter readings (issue 3): under the contract's row lock; equal
//! to the last reading is allowed, below it is refused with a stored 422.
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::helpers::*;

/// `POST /meter-readings` with `Prefer: wait=10`.
async fn record(app: &TestApp, key: &str, body: Value) -> Answer {
    app.post("/meter-readings")
        .key(key)
        .header("Prefer", "wait=10")
        .json(&body)
        .send()
        .await
}

async fn readings(app: &TestApp, contract: &str) -> Vec<String> {
    sqlx::query_scalar("SELECT reading::text FROM meter_readings WHERE contract_id = $1 ORDER BY id")
        .bind(contract)
        .fetch_all(&app.db.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn readings_are_recorded_equal_is_allowed_and_below_is_a_stored_422() {
    let mut app = spawn_app().await;
    app.insert_contract("c1").await;
    app.start_worker().await;

    let first = record(&app, "r1", json!({ "contractId": "c1", "reading": 100.5 })).await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.text());
    assert_eq!(first.replayed, None);
    assert_eq!(first.content_type.as_deref(), Some("application/json"));
    let saved = &first.json()["meterReading"];
    assert!(saved["id"].is_string(), "{saved}");
    assert_eq!(saved["contractId"], "c1");
    assert_eq!(saved["reading"], 100.5);
    assert!(saved["recordedAt"].is_string(), "{saved}");

    let equal = record(&app, "r2", json!({ "contractId": "c1", "reading": 100.5 })).await;
    assert_eq!(equal.status, StatusCode::CREATED, "{}", equal.text());
    assert_ne!(equal.json()["meterReading"]["id"], saved["id"]);

    let below = record(&app, "r3", json!({ "contractId": "c1", "reading": 100 })).await;
    assert_eq!(below.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", below.text());
    assert_eq!(below.content_type.as_deref(), Some("application/problem+json"));
    assert_eq!(below.json()["type"], problem_type("reading-below-last"));
    let status: String = sqlx::query_scalar("SELECT status FROM operations WHERE idempotency_key = 'r3'")
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
    assert_eq!(status, "failed");

    assert_eq!(readings(&app, "c1").await, ["100.5", "100.5"]);
    assert_eq!(
        app.count("SELECT count(*) FROM audit_log WHERE action = 'meter_reading.record'")
            .await,
        2
    );

    // The read model lists them in order.
    let r = app.get("/contracts/c1/meter-readings").response().await;
    assert_eq!(r.status(), StatusCode::OK);
    let list: Value = r.json().await.unwrap();
    assert_eq!(list["contractId"], "c1");
    let items = list["meterReadings"].as_array().unwrap();
    assert_eq!(items.len(), 2, "{list}");
    assert_eq!(items[0], *saved);
    assert_eq!(items[1], equal.json()["meterReading"]);

    // Replays of the 201 and of the 422 are the stored answers.
    for (key, body, answer) in [
        ("r1", json!({ "contractId": "c1", "reading": 100.5 }), &first),
        ("r3", json!({ "contractId": "c1", "reading": 100 }), &below),
    ] {
        let replay = Answer::read(app.send(Method::POST, "/meter-readings", key, body).await).await;
        assert_eq!(replay.status, answer.status);
        assert_eq!(replay.replayed.as_deref(), Some("true"));
        assert_eq!(replay.content_type, answer.content_type);
        assert_eq!(replay.body, answer.body);
    }
}

#[tokio::test]
async fn a_reading_for_an_unknown_contract_finishes_with_a_stored_404() {
    let mut app = spawn_app().await;
    app.start_worker().await;

    let r = record(&app, "r1", json!({ "contractId": "nope", "reading": 1 })).await;

    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text());
    assert_eq!(r.content_type.as_deref(), Some("application/problem+json"));
    assert_eq!(r.json()["type"], problem_type("contract-not-found"));
    assert_eq!(app.count("SELECT count(*) FROM meter_readings").await, 0);
    assert_eq!(app.count("SELECT count(*) FROM audit_log").await, 0);
    assert_eq!(
        app.count("SELECT count(*) FROM operations WHERE status = 'failed'")
            .await,
        1
    );
}

#[tokio::test]
async fn invalid_readings_are_400_and_record_nothing() {
    let app = spawn_app().await;
    app.insert_contract("c1").await;

    for body in [
        json!({ "contractId": "c1", "reading": -1 }),
        json!({ "contractId": "c1", "reading": -0.5 }),
        json!({ "contractId": "c1", "reading": "12" }),
        json!({ "contractId": "c1", "reading": null }),
        json!({ "contractId": "c1" }),
        json!({ "reading": 1 }),
        json!({ "contractId": "", "reading": 1 }),
        json!({ "contractId": 1, "reading": 1 }),
        json!({ "contractId": "c1", "reading": 1, "unit": "kWh" }),
    ] {
        let r = app
            .send(Method::POST, "/meter-readings", "key-1", body.clone())
            .await;
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{body}");
        expect_problem(r, StatusCode::BAD_REQUEST, "invalid-body").await;
    }
    assert_eq!(app.count("SELECT count(*) FROM operations").await, 0);
    assert_eq!(app.count("SELECT count(*) FROM apalis.jobs").await, 0);
    // Zero is a valid reading, and the key is still unused.
    let r = app
        .send(
            Method::POST,
            "/meter-readings",
            "key-1",
            json!({ "contractId": "c1", "reading": 0 }),
        )
        .await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    assert_eq!(header(&r, "idempotent-replayed"), None);
}
