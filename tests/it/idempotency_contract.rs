//! The idempotency contract of the request path (issue 3): key validation,
//! fingerprints, body validation before recording, concurrent first requests,
//! scoping per principal, `Prefer: wait`, the key-requirement switch, and the
//! replay of stored refusals.
use std::time::{Duration, Instant};

use reqwest::{header::HeaderValue, Method, StatusCode};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::helpers::*;

const MARK_PAID_123: &str = "/invoices/123/mark-paid";

async fn rows(app: &TestApp) -> (i64, i64) {
    (
        app.count("SELECT count(*) FROM operations").await,
        app.count("SELECT count(*) FROM apalis.jobs").await,
    )
}

// --- Key validation -------------------------------------------------------

/// Sends `PATCH /invoices/123/mark-paid` with these raw key bytes.
async fn with_raw_key(app: &TestApp, key: &[u8]) -> reqwest::Response {
    app.request(Method::PATCH, MARK_PAID_123)
        .header("Idempotency-Key", HeaderValue::from_bytes(key).unwrap())
        .json(&json!({ "paymentMethod": "card" }))
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn invalid_keys_are_400_problems_each_with_its_own_type_and_record_nothing() {
    let app = spawn_app().await;
    app.insert_invoice("123").await;
    let too_long = vec![b'k'; 256];
    let cases: [(&str, &[u8], &str); 6] = [
        ("empty", b"", "idempotency-key-empty"),
        ("empty quoted", b"\"\"", "idempotency-key-empty"),
        ("256 bytes", &too_long, "idempotency-key-too-long"),
        ("a space", b"a b", "idempotency-key-invalid-characters"),
        ("a tab", b"a\tb", "idempotency-key-invalid-characters"),
        ("non-ASCII", b"caf\xc3\xa9", "idempotency-key-invalid-characters"),
    ];
    for (what, key, slug) in cases {
        let r = with_raw_key(&app, key).await;
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{what}");
        let problem = expect_problem(r, StatusCode::BAD_REQUEST, slug).await;
        assert!(problem["title"].is_string(), "{what}: {problem}");
        assert!(problem["detail"].is_string(), "{what}: {problem}");
    }
    assert_eq!(rows(&app).await, (0, 0));
}

#[tokio::test]
async fn a_255_byte_key_is_accepted() {
    let app = spawn_app().await;
    app.insert_invoice("123").await;
    let key = "k".repeat(255);

    let r = app.mark_paid("123", &key).await;

    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let op: Value = r.json().await.unwrap();
    assert_eq!(op["idempotencyKey"], key.as_str());
    assert_eq!(rows(&app).await, (1, 1));
    // The quoted form may carry 255 bytes between its quotes, too.
    let r = with_raw_key(&app, format!("\"{key}\"").as_bytes()).await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    assert_eq!(header(&r, "idempotent-replayed"), Some("true"));
}

#[tokio::test]
async fn the_quoted_ietf_form_is_the_same_key_as_the_bare_form() {
    let app = spawn_app().await;
    app.insert_invoice("123").await;

    let first = app.mark_paid("123", "\"abc\"").await;
    assert_eq!(first.status(), StatusCode::ACCEPTED);
    assert_eq!(header(&first, "idempotent-replayed"), None);
    let first: Value = first.json().await.unwrap();
    assert_eq!(first["idempotencyKey"], "abc");

    let bare = app.mark_paid("123", "abc").await;
    assert_eq!(bare.status(), StatusCode::ACCEPTED);
    assert_eq!(header(&bare, "idempotent-replayed"), Some("true"));
    let bare: Value = bare.json().await.unwrap();
    assert_eq!(bare["id"], first["id"]);
    assert_eq!(rows(&app).await, (1, 1));
}

// --- Fingerprint ----------------------------------------------------------

#[tokio::test]
async fn same_key_with_another_request_is_a_422_and_changes_nothing() {
    let mut app = spawn_app().await;
    app.insert_invoice("123").await;
    app.insert_invoice("456").await;
    app.insert_application("app-1").await;
    app.start_worker().await;
    let op: Value = app.mark_paid("123", "key-1").await.json().await.unwrap();
    let id = op["id"].as_str().unwrap().to_owned();
    let done = app.await_final(&id).await;
    assert_eq!(done["status"], "succeeded");
    let before: Value = app.get_operation(&id).await.json().await.unwrap();

    let other_body = app
        .send(
            Method::PATCH,
            MARK_PAID_123,
            "key-1",
            json!({ "paymentMethod": "cash" }),
        )
        .await;
    let other_invoice = app.mark_paid("456", "key-1").await;
    let other_route = app
        .send(Method::PATCH, "/applications/app-1/approve", "key-1", json!({}))
        .await;

    for r in [other_body, other_invoice, other_route] {
        assert_eq!(header(&r, "idempotent-replayed"), None);
        expect_problem(r, StatusCode::UNPROCESSABLE_ENTITY, "idempotency-key-reused").await;
    }
    assert_eq!(rows(&app).await, (1, 1));
    // The original operation and its effect are untouched.
    let after: Value = app.get_operation(&id).await.json().await.unwrap();
    assert_eq!(after, before);
    let statuses: Vec<(String, String)> = sqlx::query_as("SELECT id, status FROM invoices ORDER BY id")
        .fetch_all(&app.db.pool)
        .await
        .unwrap();
    assert_eq!(
        statuses,
        [("123".into(), "PAID".into()), ("456".into(), "UNPAID".into())]
    );
    let app_status: String = sqlx::query_scalar("SELECT status FROM applications WHERE id = 'app-1'")
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
    assert_eq!(app_status, "PENDING");
    assert_eq!(app.count("SELECT count(*) FROM audit_log").await, 1);
    // The key still replays its own request.
    let replay = app.mark_paid("123", "key-1").await;
    assert_eq!(replay.status(), StatusCode::OK);
    assert_eq!(header(&replay, "idempotent-replayed"), Some("true"));
}

#[tokio::test]
async fn key_order_and_whitespace_in_the_body_are_the_same_request() {
    let app = spawn_app().await;
    app.insert_contract("c1").await;
    let send_raw = |body: &'static str| {
        app.request(Method::POST, "/meter-readings")
            .header("Idempotency-Key", "key-1")
            .header("Content-Type", "application/json")
            .body(body)
            .send()
    };

    let first = send_raw(r#"{"contractId":"c1","reading":12.5}"#).await.unwrap();
    assert_eq!(first.status(), StatusCode::ACCEPTED);
    assert_eq!(header(&first, "idempotent-replayed"), None);
    let first: Value = first.json().await.unwrap();

    let reordered = send_raw("{\n  \"reading\" : 12.5 ,\t\"contractId\": \"c1\"\n}\n")
        .await
        .unwrap();
    assert_eq!(reordered.status(), StatusCode::ACCEPTED);
    assert_eq!(header(&reordered, "idempotent-replayed"), Some("true"));
    let reordered: Value = reordered.json().await.unwrap();
    assert_eq!(reordered["id"], first["id"]);
    assert_eq!(rows(&app).await, (1, 1));
}

// --- Expiry ----------------------------------------------------------------

#[tokio::test]
async fn an_expired_record_counts_as_absent_before_cleanup() {
    let mut app = spawn_app().await;
    app.insert_invoice("123").await;
    app.insert_invoice("456").await;
    app.start_worker().await;
    let old: Value = app.mark_paid("123", "key-1").await.json().await.unwrap();
    let old_id = old["id"].as_str().unwrap().to_owned();
    let done = app.await_final(&old_id).await;
    assert_eq!(done["status"], "succeeded");
    let expires: Option<chrono::DateTime<chrono::Utc>> =
        sqlx::query_scalar("SELECT expires_at FROM operations")
            .fetch_one(&app.db.pool)
            .await
            .unwrap();
    assert!(expires.is_some(), "a finished record has an expiry");
    sqlx::query("UPDATE operations SET expires_at = now() - interval '1 second'")
        .execute(&app.db.pool)
        .await
        .unwrap();

    // The same key, even with another request, starts a new operation.
    let r = app.mark_paid("456", "key-1").await;

    assert_eq!(r.status(), StatusCode::ACCEPTED);
    assert_eq!(header(&r, "idempotent-replayed"), None);
    let new: Value = r.json().await.unwrap();
    assert_ne!(new["id"], old["id"]);
    let ids: Vec<Uuid> = sqlx::query_scalar("SELECT id FROM operations")
        .fetch_all(&app.db.pool)
        .await
        .unwrap();
    assert_eq!(ids.len(), 1, "the expired record was replaced");
    assert_eq!(format!("op_{}", ids[0].simple()), new["id"].as_str().unwrap());
    let r = app.get_operation(&old_id).await;
    expect_problem(r, StatusCode::NOT_FOUND, "not-found").await;
    let done = app.await_final(new["id"].as_str().unwrap()).await;
    assert_eq!(done["response"]["body"]["invoice"]["id"], "456");
}

// --- Body validation before recording -------------------------------------

#[tokio::test]
async fn invalid_bodies_are_400_record_nothing_and_the_key_works_after_correction() {
    let app = spawn_app().await;
    app.insert_invoice("123").await;
    let cases: [(&str, &str); 8] = [
        ("unknown field", r#"{"paymentMethod":"card","tip":5}"#),
        ("wrong type", r#"{"paymentMethod":42}"#),
        ("malformed JSON", r#"{"paymentMethod":"card""#),
        ("missing required field", r#"{}"#),
        ("an array for the object", r#"["card"]"#),
        ("null for the object", "null"),
        ("a string for the object", r#""card""#),
        ("blank required field", r#"{"paymentMethod":"  "}"#),
    ];
    for (what, body) in cases {
        let r = app
            .patch(MARK_PAID_123)
            .key("key-1")
            .header("Content-Type", "application/json")
            .body(body)
            .response()
            .await;
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{what}");
        let problem = expect_problem(r, StatusCode::BAD_REQUEST, "invalid-body").await;
        assert!(problem["detail"].is_string(), "{what}: {problem}");
        assert_eq!(rows(&app).await, (0, 0), "{what} recorded something");
    }

    let corrected = app.mark_paid("123", "key-1").await;

    assert_eq!(corrected.status(), StatusCode::ACCEPTED);
    assert_eq!(header(&corrected, "idempotent-replayed"), None);
    assert_eq!(rows(&app).await, (1, 1));
}

#[tokio::test]
async fn a_body_over_the_limit_is_a_413_problem_and_records_nothing() {
    let app = spawn_app().await;
    app.insert_invoice("123").await;
    // The test configuration's limit is 16 KiB.
    let method = "x".repeat(17 * 1024);

    let r = app
        .send(
            Method::PATCH,
            MARK_PAID_123,
            "key-1",
            json!({ "paymentMethod": method }),
        )
        .await;

    expect_problem(r, StatusCode::PAYLOAD_TOO_LARGE, "payload-too-large").await;
    assert_eq!(rows(&app).await, (0, 0));
    // A body just under the limit is not refused for its size (but for its
    // too long paymentMethod: a 400, not a 413).
    let r = app
        .send(
            Method::PATCH,
            MARK_PAID_123,
            "key-1",
            json!({ "paymentMethod": "x".repeat(15 * 1024) }),
        )
        .await;
    expect_problem(r, StatusCode::BAD_REQUEST, "invalid-body").await;
    let r = app.mark_paid("123", "key-1").await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    assert_eq!(header(&r, "idempotent-replayed"), None);
}

/// Step 3 before step 4: a bad or missing key is refused for the key,
/// whatever the body (here one over the size limit), and nothing is recorded.
#[tokio::test]
async fn the_key_is_checked_before_the_body() {
    let app = spawn_app().await;
    app.insert_invoice("123").await;
    let too_big = json!({ "paymentMethod": "x".repeat(17 * 1024) });

    let r = app
        .send(Method::PATCH, MARK_PAID_123, "bad key", too_big.clone())
        .await;
    expect_problem(r, StatusCode::BAD_REQUEST, "idempotency-key-invalid-characters").await;
    let r = app.patch(MARK_PAID_123).json(&too_big).response().await;
    expect_problem(r, StatusCode::BAD_REQUEST, "idempotency-key-missing").await;
    assert_eq!(rows(&app).await, (0, 0));
}

// --- Concurrent first requests ---------------------------------------------

#[tokio::test]
async fn a_storm_of_concurrent_first_requests_with_one_key_makes_one_operation() {
    const N: usize = 120;
    let app = spawn_app().await; // no worker: every answer is the 202
    app.insert_invoice("123").await;
    let url = format!("{}{MARK_PAID_123}", app.addr);
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(N));
    let tasks: Vec<_> = (0..N)
        .map(|_| {
            let (client, url, token, barrier) = (
                app.client.clone(),
                url.clone(),
                app.token.clone(),
                barrier.clone(),
            );
            tokio::spawn(async move {
                barrier.wait().await;
                let r = client
                    .patch(url)
                    .bearer_auth(token)
                    .header("Idempotency-Key", "storm")
                    .json(&json!({ "paymentMethod": "card" }))
                    .send()
                    .await
                    .unwrap();
                Answer::read(r).await
            })
        })
        .collect();
    let answers: Vec<Answer> = futures::future::join_all(tasks)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();

    let ids: std::collections::HashSet<String> = answers
        .iter()
        .map(|a| {
            assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.text());
            a.json()["id"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(ids.len(), 1, "{ids:?}");
    let originals = answers.iter().filter(|a| a.replayed.is_none()).count();
    assert_eq!(originals, 1, "exactly one caller started the operation");
    assert_eq!(rows(&app).await, (1, 1));
}

// --- Scoping ----------------------------------------------------------------

#[tokio::test]
async fn operations_and_keys_are_scoped_to_the_principal() {
    let app = spawn_app().await;
    app.insert_invoice("123").await;
    let other = app.token_for("other").await;
    let mine: Value = app.mark_paid("123", "shared-key").await.json().await.unwrap();
    let my_id = mine["id"].as_str().unwrap();

    // Another principal cannot see my operation, with or without waiting.
    for prefer in [None, Some("wait=1")] {
        let mut req = app.request_as(&other, Method::GET, &format!("/operations/{my_id}"));
        if let Some(p) = prefer {
            req = req.header("Prefer", p);
        }
        expect_problem(req.send().await.unwrap(), StatusCode::NOT_FOUND, "not-found").await;
    }

    // The same key under another principal is another operation.
    let theirs = app
        .patch(MARK_PAID_123)
        .token(&other)
        .key("shared-key")
        .json(&json!({ "paymentMethod": "card" }))
        .response()
        .await;
    assert_eq!(theirs.status(), StatusCode::ACCEPTED);
    assert_eq!(header(&theirs, "idempotent-replayed"), None);
    let theirs: Value = theirs.json().await.unwrap();
    let their_id = theirs["id"].as_str().unwrap();
    assert_ne!(their_id, my_id);
    assert_eq!(
        app.count("SELECT count(DISTINCT principal_id) FROM operations WHERE idempotency_key = 'shared-key'")
            .await,
        2
    );
    // Each sees their own, not the other's.
    let r = app
        .get(&format!("/operations/{their_id}"))
        .token(&other)
        .response()
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let r = app.get_operation(their_id).await;
    expect_problem(r, StatusCode::NOT_FOUND, "not-found").await;
    let r = app.get_operation(my_id).await;
    assert_eq!(r.status(), StatusCode::OK);
}

// --- Prefer: wait -----------------------------------------------------------

#[tokio::test]
async fn prefer_wait_answers_the_first_request_with_its_final_response() {
    let mut app = spawn_app().await;
    app.insert_invoice("123").await;
    app.start_worker().await;

    let r = app
        .patch(MARK_PAID_123)
        .key("key-1")
        .header("Prefer", "wait=10")
        .json(&json!({ "paymentMethod": "card" }))
        .response()
        .await;

    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(header(&r, "idempotent-replayed"), None, "the original answer");
    assert_eq!(header(&r, "preference-applied"), Some("wait=10"));
    assert_eq!(header(&r, "content-type"), Some("application/json"));
    let body = r.bytes().await.unwrap();
    let invoice: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(invoice["invoice"]["status"], "PAID");
    // It is the stored response: a replay returns the same bytes, marked.
    let replay = app.mark_paid("123", "key-1").await;
    assert_eq!(replay.status(), StatusCode::OK);
    assert_eq!(header(&replay, "idempotent-replayed"), Some("true"));
    assert_eq!(header(&replay, "preference-applied"), None);
    assert_eq!(replay.bytes().await.unwrap(), body);
}

#[tokio::test]
async fn prefer_wait_over_30_is_treated_as_30() {
    let mut app = spawn_app().await;
    app.insert_invoice("123").await;
    app.start_worker().await;

    let r = app
        .patch(MARK_PAID_123)
        .key("key-1")
        .header("Prefer", "wait=100")
        .json(&json!({ "paymentMethod": "card" }))
        .response()
        .await;

    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(header(&r, "preference-applied"), Some("wait=30"));
}

#[tokio::test]
async fn prefer_wait_on_polling_answers_when_the_operation_finishes() {
    let mut app = spawn_app().await;
    app.insert_invoice("123").await;
    let op: Value = app.mark_paid("123", "key-1").await.json().await.unwrap();
    let id = op["id"].as_str().unwrap().to_owned();
    // Start polling while nothing can finish the operation, then start a worker.
    let poll = app
        .request(Method::GET, &format!("/operations/{id}"))
        .header("Prefer", "wait=20")
        .send();
    let poll = tokio::spawn(poll);
    tokio::task::yield_now().await;
    app.start_worker().await;

    let r = poll.await.unwrap().unwrap();

    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(header(&r, "preference-applied"), Some("wait=20"));
    let op: Value = r.json().await.unwrap();
    assert_eq!(op["status"], "succeeded", "{op}");
    assert_eq!(op["response"]["status"], 200);
    assert_eq!(op["response"]["body"]["invoice"]["status"], "PAID");
}

#[tokio::test]
async fn prefer_wait_without_a_worker_answers_202_when_the_wait_is_over() {
    let app = spawn_app().await; // no worker: the operation stays queued
    app.insert_invoice("123").await;

    let started = Instant::now();
    let r = app
        .patch(MARK_PAID_123)
        .key("key-1")
        .header("Prefer", "wait=1")
        .json(&json!({ "paymentMethod": "card" }))
        .response()
        .await;
    let took = started.elapsed();

    assert_eq!(r.status(), StatusCode::ACCEPTED);
    assert_eq!(header(&r, "idempotent-replayed"), None);
    assert_eq!(header(&r, "preference-applied"), Some("wait=1"));
    assert!(took >= Duration::from_millis(900), "answered after {took:?}");
    assert!(took < Duration::from_secs(5), "answered after {took:?}");
    let op: Value = r.json().await.unwrap();
    assert_eq!(op["status"], "queued");
    let id = op["id"].as_str().unwrap();

    // Polling with a wait behaves the same way.
    let started = Instant::now();
    let r = app
        .get(&format!("/operations/{id}"))
        .header("Prefer", "wait=1")
        .response()
        .await;
    let took = started.elapsed();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(header(&r, "preference-applied"), Some("wait=1"));
    assert!(took >= Duration::from_millis(900), "answered after {took:?}");
    assert!(took < Duration::from_secs(5), "answered after {took:?}");
    let polled: Value = r.json().await.unwrap();
    assert_eq!(polled["status"], "queued");
}

// --- The key-requirement switch ---------------------------------------------

#[tokio::test]
async fn with_the_key_requirement_off_a_request_without_a_key_is_a_new_operation() {
    let app = spawn_app_with(idemq_api::config::ApiConfig {
        require_idempotency_key: false,
        ..test_api_config()
    })
    .await;
    app.insert_invoice("123").await;
    let without_key = || {
        app.request(Method::PATCH, MARK_PAID_123)
            .json(&json!({ "paymentMethod": "card" }))
            .send()
    };

    let first = without_key().await.unwrap();
    let second = without_key().await.unwrap();

    let mut ids = Vec::new();
    for r in [first, second] {
        assert_eq!(r.status(), StatusCode::ACCEPTED);
        assert_eq!(header(&r, "idempotent-replayed"), None);
        let op: Value = r.json().await.unwrap();
        let key = op["idempotencyKey"].as_str().unwrap();
        assert!(key.starts_with("srv_"), "{op}");
        ids.push(op["id"].as_str().unwrap().to_owned());
    }
    assert_ne!(ids[0], ids[1]);
    assert_eq!(rows(&app).await, (2, 2));

    // A request with a key is still deduplicated.
    let a: Value = app.mark_paid("123", "key-1").await.json().await.unwrap();
    let b = app.mark_paid("123", "key-1").await;
    assert_eq!(b.status(), StatusCode::ACCEPTED);
    assert_eq!(header(&b, "idempotent-replayed"), Some("true"));
    let b: Value = b.json().await.unwrap();
    assert_eq!(a["id"], b["id"]);
    assert_eq!(rows(&app).await, (3, 3));
    // An invalid key is still refused.
    let r = with_raw_key(&app, b"a b").await;
    expect_problem(r, StatusCode::BAD_REQUEST, "idempotency-key-invalid-characters").await;
}

// --- Stored refusals replay like successes ----------------------------------

/// Sends the request until it is final (the first with `Prefer: wait`), then
/// replays it twice; asserts each replay is the stored response, byte for byte.
async fn assert_refusal_replays(
    app: &TestApp,
    method: Method,
    path: &str,
    key: &str,
    body: Value,
    status: StatusCode,
    slug: &str,
) {
    let first = app
        .call(method.clone(), path)
        .key(key)
        .header("Prefer", "wait=10")
        .json(&body)
        .send()
        .await;
    assert_eq!(first.status, status, "{}", first.text());
    assert_eq!(first.replayed, None);
    assert_eq!(first.content_type.as_deref(), Some("application/problem+json"));
    assert_eq!(first.json()["type"], problem_type(slug));
    let (op_status, stored_status, stored_body): (String, i16, String) = sqlx::query_as(
        "SELECT status, response_status, response_body FROM operations WHERE idempotency_key = $1",
    )
    .bind(key)
    .fetch_one(&app.db.pool)
    .await
    .unwrap();
    assert_eq!(op_status, "failed", "a refusal is a failed operation");
    assert_eq!(stored_status as u16, status.as_u16());
    assert_eq!(stored_body.as_bytes(), first.body.as_slice());

    for _ in 0..2 {
        let replay = Answer::read(app.send(method.clone(), path, key, body.clone()).await).await;
        assert_eq!(replay.status, status);
        assert_eq!(replay.replayed.as_deref(), Some("true"));
        assert_eq!(replay.content_type.as_deref(), Some("application/problem+json"));
        assert_eq!(replay.body, first.body, "{} vs {}", replay.text(), first.text());
    }
}

#[tokio::test]
async fn stored_refusals_replay_with_status_content_type_and_bytes() {
    let mut app = spawn_app().await;
    app.insert_application("app-1").await;
    app.insert_contract("c1").await;
    app.start_worker().await;

    // 404: no such invoice.
    assert_refusal_replays(
        &app,
        Method::PATCH,
        "/invoices/nope/mark-paid",
        "k404",
        json!({ "paymentMethod": "card" }),
        StatusCode::NOT_FOUND,
        "invoice-not-found",
    )
    .await;
    // 409: the application was decided by another operation.
    let r = app
        .patch("/applications/app-1/reject")
        .key("decide")
        .header("Prefer", "wait=10")
        .json(&json!({ "reason": "incomplete" }))
        .response()
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_refusal_replays(
        &app,
        Method::PATCH,
        "/applications/app-1/approve",
        "k409",
        json!({}),
        StatusCode::CONFLICT,
        "application-not-pending",
    )
    .await;
    // 422: a reading below the last one.
    let r = app
        .post("/meter-readings")
        .key("r1")
        .header("Prefer", "wait=10")
        .json(&json!({ "contractId": "c1", "reading": 100 }))
        .response()
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_refusal_replays(
        &app,
        Method::POST,
        "/meter-readings",
        "k422",
        json!({ "contractId": "c1", "reading": 99 }),
        StatusCode::UNPROCESSABLE_ENTITY,
        "reading-below-last",
    )
    .await;
    // Only the two effects wrote audit entries.
    assert_eq!(app.count("SELECT count(*) FROM audit_log").await, 2);
}

// --- The principal's row --------------------------------------------------

/// Recording an operation takes no lock on its principal's row: requests of
/// one principal run concurrently, and a foreign key's `FOR KEY SHARE` on
/// that one row made each of them write it (migration `…000031`). Here the
/// row is held `FOR UPDATE` (which a key-share lock would wait for) while a
/// new request is recorded. A principal with operations still cannot be
/// deleted.
#[tokio::test]
async fn recording_takes_no_lock_on_the_principal_and_a_principal_with_operations_stays() {
    let app = spawn_app().await;
    app.insert_invoice("123").await;
    let mut holder = app.db.pool.begin().await.unwrap();
    sqlx::query("SET LOCAL lock_timeout = '5s'")
        .execute(&mut *holder)
        .await
        .unwrap();
    let locked: i64 =
        sqlx::query_scalar("SELECT count(*) FROM (SELECT id FROM principals FOR UPDATE) locked")
            .fetch_one(&mut *holder)
            .await
            .unwrap();
    assert!(locked >= 1, "the test's principal exists");
    let answer = tokio::time::timeout(
        Duration::from_secs(3),
        app.mark_paid("123", &Uuid::new_v4().to_string()),
    )
    .await
    .expect("the request waited for the principal's row lock");
    assert_eq!(answer.status(), StatusCode::ACCEPTED);
    holder.rollback().await.unwrap();
    assert_eq!(rows(&app).await, (1, 1));

    let refused = sqlx::query("DELETE FROM principals")
        .execute(&app.db.pool)
        .await
        .expect_err("a principal with operations was deleted");
    let code = refused
        .as_database_error()
        .and_then(|e| e.code())
        .map(|c| c.into_owned());
    assert_eq!(code.as_deref(), Some("23503"), "{refused}");
    assert!(app.count("SELECT count(*) FROM principals").await >= 1);
    assert_eq!(rows(&app).await, (1, 1));
}
