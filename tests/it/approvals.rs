//! Approving and rejecting rental applications (issue 3): optimistic,
//! conditional on status and version; approval creates the contract in the
//! same transaction.
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::helpers::*;

/// `PATCH /applications/{id}/{action}` with `Prefer: wait=10`.
async fn decide(app: &TestApp, id: &str, action: &str, key: &str, body: Value) -> Answer {
    app.patch(&format!("/applications/{id}/{action}"))
        .key(key)
        .header("Prefer", "wait=10")
        .json(&body)
        .send()
        .await
}

async fn application_row(app: &TestApp, id: &str) -> (String, i32, Option<String>, Option<String>) {
    sqlx::query_as("SELECT status, version, note, reason FROM applications WHERE id = $1")
        .bind(id)
        .fetch_one(&app.db.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn approval_answers_the_application_and_its_new_contract() {
    let mut app = spawn_app().await;
    app.insert_application("app-1").await;
    app.start_worker().await;

    let r = decide(&app, "app-1", "approve", "key-1", json!({ "note": "welcome" })).await;

    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.content_type.as_deref(), Some("application/json"));
    let body = r.json();
    let application = &body["application"];
    assert_eq!(application["id"], "app-1");
    assert_eq!(application["status"], "APPROVED");
    assert_eq!(application["version"], 2);
    assert_eq!(application["note"], "welcome");
    assert!(application["decidedAt"].is_string(), "{body}");
    let contract = &body["contract"];
    assert_eq!(contract["applicationId"], "app-1");
    let contract_id = contract["id"].as_str().unwrap();
    // The rows: the application decided, one contract for it, one audit entry.
    assert_eq!(
        application_row(&app, "app-1").await,
        ("APPROVED".into(), 2, Some("welcome".into()), None)
    );
    let contracts: Vec<(String, Option<String>)> = sqlx::query_as("SELECT id, application_id FROM contracts")
        .fetch_all(&app.db.pool)
        .await
        .unwrap();
    assert_eq!(contracts, [(contract_id.to_owned(), Some("app-1".to_owned()))]);
    assert_eq!(
        app.count(
            "SELECT count(*) FROM audit_log WHERE action = 'application.approve' AND entity_id = 'app-1'"
        )
        .await,
        1
    );
    // The read model shows the same.
    let r = app.get("/applications/app-1").response().await;
    assert_eq!(r.status(), StatusCode::OK);
    let read: Value = r.json().await.unwrap();
    assert_eq!(read["application"]["status"], "APPROVED");
    assert_eq!(read["contract"]["id"], contract_id);
}

#[tokio::test]
async fn an_empty_body_approves_too() {
    let mut app = spawn_app().await;
    app.insert_application("app-1").await;
    app.start_worker().await;

    let r = app
        .patch("/applications/app-1/approve")
        .key("key-1")
        .header("Prefer", "wait=10")
        .response()
        .await;

    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["application"]["status"], "APPROVED");
    // `{}` is the same request as no body at all.
    let again = decide(&app, "app-1", "approve", "key-1", json!({})).await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(again.replayed.as_deref(), Some("true"));
}

/// Blank is JSON's whitespace only (space, tab, line feed, carriage
/// return): such a body is `{}`. A form feed is not JSON whitespace (found
/// by schemathesis: `\x0c` was approved as if there were no body).
#[tokio::test]
async fn a_blank_body_is_json_whitespace_only() {
    let mut app = spawn_app().await;
    app.insert_application("app-1").await;

    for (what, content_type, status, slug) in [
        (
            "declared JSON",
            Some("application/json"),
            StatusCode::BAD_REQUEST,
            "invalid-body",
        ),
        (
            "undeclared",
            None,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
        ),
    ] {
        let mut request = app.patch("/applications/app-1/approve").key("key-ff");
        if let Some(content_type) = content_type {
            request = request.header("Content-Type", content_type);
        }
        let r = request.body("\x0c").response().await;
        expect_problem(r, status, slug).await;
        assert_eq!(app.count("SELECT count(*) FROM operations").await, 0, "{what}");
    }

    app.start_worker().await;
    let r = app
        .patch("/applications/app-1/approve")
        .key("key-1")
        .header("Prefer", "wait=10")
        .body(" \t\r\n")
        .response()
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    // The same request as `{}`.
    let again = decide(&app, "app-1", "approve", "key-1", json!({})).await;
    assert_eq!(again.replayed.as_deref(), Some("true"));
}

#[tokio::test]
async fn rejection_with_a_reason_rejects_and_creates_no_contract() {
    let mut app = spawn_app().await;
    app.insert_application("app-1").await;
    app.start_worker().await;

    let r = decide(
        &app,
        "app-1",
        "reject",
        "key-1",
        json!({ "reason": "no references" }),
    )
    .await;

    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let body = r.json();
    assert_eq!(body["application"]["status"], "REJECTED");
    assert_eq!(body["application"]["version"], 2);
    assert_eq!(body["application"]["reason"], "no references");
    assert!(body.get("contract").is_none(), "{body}");
    assert_eq!(
        application_row(&app, "app-1").await,
        ("REJECTED".into(), 2, None, Some("no references".into()))
    );
    assert_eq!(app.count("SELECT count(*) FROM contracts").await, 0);
    assert_eq!(
        app.count("SELECT count(*) FROM audit_log WHERE action = 'application.reject'")
            .await,
        1
    );
    let read: Value = app
        .get("/applications/app-1")
        .response()
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(read["application"]["status"], "REJECTED");
    assert_eq!(read["contract"], Value::Null);
}

#[tokio::test]
async fn rejection_without_a_reason_is_a_400_and_records_nothing() {
    let app = spawn_app().await;
    app.insert_application("app-1").await;

    for body in [json!({}), json!({ "reason": "" }), json!({ "reason": 7 })] {
        let r = app
            .send(Method::PATCH, "/applications/app-1/reject", "key-1", body.clone())
            .await;
        let problem = expect_problem(r, StatusCode::BAD_REQUEST, "invalid-body").await;
        assert!(problem["detail"].is_string(), "{body}: {problem}");
    }
    assert_eq!(app.count("SELECT count(*) FROM operations").await, 0);
    assert_eq!(app.count("SELECT count(*) FROM apalis.jobs").await, 0);
    assert_eq!(application_row(&app, "app-1").await.0, "PENDING");
}

#[tokio::test]
async fn deciding_an_unknown_application_finishes_with_a_stored_404() {
    let mut app = spawn_app().await;
    app.start_worker().await;

    for (action, body) in [("approve", json!({})), ("reject", json!({ "reason": "x" }))] {
        let key = format!("key-{action}");
        let r = decide(&app, "nope", action, &key, body.clone()).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text());
        assert_eq!(r.content_type.as_deref(), Some("application/problem+json"));
        assert_eq!(r.json()["type"], problem_type("application-not-found"));
        let status: String = sqlx::query_scalar("SELECT status FROM operations WHERE idempotency_key = $1")
            .bind(&key)
            .fetch_one(&app.db.pool)
            .await
            .unwrap();
        assert_eq!(status, "failed");
        let replay = Answer::read(
            app.send(Method::PATCH, &format!("/applications/nope/{action}"), &key, body)
                .await,
        )
        .await;
        assert_eq!(replay.status, StatusCode::NOT_FOUND);
        assert_eq!(replay.replayed.as_deref(), Some("true"));
        assert_eq!(replay.body, r.body);
    }
    assert_eq!(app.count("SELECT count(*) FROM contracts").await, 0);
    assert_eq!(app.count("SELECT count(*) FROM audit_log").await, 0);
}

#[tokio::test]
async fn of_twenty_concurrent_approvals_exactly_one_succeeds() {
    const N: usize = 20;
    let mut app = spawn_app().await;
    app.insert_application("app-1").await;
    // Two worker processes' worth of loops, four jobs at once each.
    app.start_worker().await;
    app.start_worker().await;

    let keys: Vec<String> = (0..N).map(|i| format!("key-{i}")).collect();
    let sends = keys
        .iter()
        .map(|key| app.send(Method::PATCH, "/applications/app-1/approve", key, json!({})));
    let mut ids = Vec::new();
    for r in futures::future::join_all(sends).await {
        assert_eq!(r.status(), StatusCode::ACCEPTED);
        let op: Value = r.json().await.unwrap();
        ids.push(op["id"].as_str().unwrap().to_owned());
    }
    let finals = futures::future::join_all(ids.iter().map(|id| app.await_final(id))).await;

    let (won, lost): (Vec<&Value>, Vec<&Value>) = finals.iter().partition(|op| op["status"] == "succeeded");
    assert_eq!(won.len(), 1, "{finals:#?}");
    assert_eq!(lost.len(), N - 1);
    for op in &lost {
        assert_eq!(op["status"], "failed", "{op}");
        assert_eq!(op["response"]["status"], 409, "{op}");
        assert_eq!(
            op["response"]["body"]["type"],
            problem_type("application-not-pending"),
            "{op}"
        );
    }
    let winner = &won[0]["response"]["body"];
    assert_eq!(winner["application"]["status"], "APPROVED");
    assert_eq!(winner["application"]["version"], 2);
    assert_eq!(app.count("SELECT count(*) FROM contracts").await, 1);
    assert_eq!(
        app.count("SELECT count(*) FROM contracts WHERE application_id = 'app-1'")
            .await,
        1
    );
    assert_eq!(app.count("SELECT count(*) FROM audit_log").await, 1);
    assert_eq!(application_row(&app, "app-1").await.1, 2);
    // A loser's replay is its stored 409.
    let loser_key = lost[0]["idempotencyKey"].as_str().unwrap();
    let r = app
        .send(Method::PATCH, "/applications/app-1/approve", loser_key, json!({}))
        .await;
    assert_eq!(header(&r, "idempotent-replayed"), Some("true"));
    expect_problem(r, StatusCode::CONFLICT, "application-not-pending").await;
}
