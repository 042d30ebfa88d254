//! Rate limiting to the contract (issue 4).
use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::*;

async fn limited_app() -> TestApp {
    let mut config = test_api_config();
    config.rate_limit_enabled = true;
    spawn_app_with(config).await
}

#[tokio::test]
async fn the_eleventh_quick_sensitive_request_is_429_with_headers_and_records_nothing() {
    let app = limited_app().await;
    app.insert_invoice("123").await;

    for i in 0..10 {
        let r = app.mark_paid("123", &format!("key-{i}")).await;
        assert_eq!(r.status(), StatusCode::ACCEPTED, "request {i}");
        let ratelimit = header(&r, "ratelimit").unwrap();
        assert!(
            ratelimit.starts_with(&format!("\"sensitive\";r={};t=", 9 - i)),
            "{ratelimit}"
        );
    }
    let r = app.mark_paid("123", "key-10").await;

    assert_problem(&r, StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = header(&r, "retry-after").unwrap().parse().unwrap();
    // 10/min: one request comes back every 6 s.
    assert!((1..=6).contains(&retry), "Retry-After {retry}");
    assert_eq!(header(&r, "ratelimit-policy"), Some("\"sensitive\";q=10;w=60"));
    assert_eq!(
        header(&r, "ratelimit"),
        Some(format!("\"sensitive\";r=0;t={retry}").as_str())
    );
    let problem: Value = r.json().await.unwrap();
    assert_eq!(problem["type"], "https://idemq.dev/problems/rate-limited");
    assert_eq!(app.count("SELECT count(*) FROM operations").await, 10);
    // Replays and 400s count too.
    let r = app.mark_paid("123", "key-0").await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn principals_have_independent_budgets_and_reads_their_own() {
    let app = limited_app().await;
    app.insert_invoice("123").await;
    for i in 0..11 {
        app.mark_paid("123", &format!("key-{i}")).await;
    }
    assert_eq!(
        app.mark_paid("123", "key-x").await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );

    // Another principal is not limited.
    let other = app.token_for("other").await;
    let r = app
        .patch("/invoices/123/mark-paid")
        .token(&other)
        .key("other-1")
        .json(&serde_json::json!({ "paymentMethod": "card" }))
        .response()
        .await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    // Reads are another class: the limited principal still reads.
    let r = app.get("/invoices/123").response().await;
    assert_eq!(r.status(), StatusCode::OK);
    assert!(header(&r, "ratelimit").unwrap().starts_with("\"read\";r="));
}

#[tokio::test]
async fn polling_every_100ms_for_a_minute_worth_is_never_limited_at_the_default() {
    let app = limited_app().await;
    app.insert_invoice("123").await;
    let op: Value = app.mark_paid("123", "k").await.json().await.unwrap();
    let id = op["id"].as_str().unwrap();
    // 600 polls = one a 100 ms for a minute, sent as fast as possible.
    for i in 0..600 {
        let r = app.get_operation(id).await;
        assert_eq!(r.status(), StatusCode::OK, "poll {i}");
    }
}

#[tokio::test]
async fn the_switch_turns_limiting_off() {
    let app = spawn_app().await; // rate_limit_enabled = false
    app.insert_invoice("123").await;
    for i in 0..20 {
        let r = app.mark_paid("123", &format!("key-{i}")).await;
        assert_eq!(r.status(), StatusCode::ACCEPTED);
        assert_eq!(header(&r, "ratelimit"), None);
    }
}

#[tokio::test]
async fn unauthenticated_requests_are_limited_per_ip() {
    let app = limited_app().await;
    let url = format!("{}/invoices/123/mark-paid", app.addr);
    let mut statuses = Vec::new();
    for i in 0..11 {
        let r = app
            .client
            .patch(&url)
            .bearer_auth(format!("idq_guess_{i}"))
            .header("Idempotency-Key", "k")
            .send()
            .await
            .unwrap();
        statuses.push(r.status().as_u16());
    }
    assert_eq!(statuses[..10], [401; 10]);
    assert_eq!(statuses[10], 429);
}

#[tokio::test]
async fn a_429_needs_no_database() {
    let app = limited_app().await;
    // The listener's first connection empties the token cache: wait for it,
    // so the token cached below is still cached when the database goes.
    eventually("the app's notice listener is listening", || async {
        app.count("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND query LIKE 'LISTEN%'")
            .await
            > 0
    })
    .await;
    app.insert_invoice("123").await;
    for i in 0..10 {
        assert_eq!(
            app.mark_paid("123", &format!("key-{i}")).await.status(),
            StatusCode::ACCEPTED
        );
    }
    // Take the database away from the API: no new connections, existing ones killed.
    let admin_url = format!("{}/postgres", app.db.url.rsplit_once('/').unwrap().0);
    let admin = sqlx::PgPool::connect(&admin_url).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "ALTER DATABASE {} ALLOW_CONNECTIONS false",
        app.db.name
    )))
    .execute(&admin)
    .await
    .unwrap();
    sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1")
        .bind(&app.db.name)
        .execute(&admin)
        .await
        .unwrap();

    let r = app.mark_paid("123", "key-10").await;
    assert_problem(&r, StatusCode::TOO_MANY_REQUESTS);

    // A request within budget (another principal's cached token is not
    // available, so use a read) does need the database and says so: 503.
    let r = app.get("/invoices/123").response().await;
    assert_problem(&r, StatusCode::SERVICE_UNAVAILABLE);

    sqlx::query(sqlx::AssertSqlSafe(format!(
        "ALTER DATABASE {} ALLOW_CONNECTIONS true",
        app.db.name
    )))
    .execute(&admin)
    .await
    .unwrap();
}

#[test]
fn a_bad_limit_stops_start_up_naming_the_variable() {
    let out = idemq(["api"])
        .env("DATABASE_URL", "postgres://nobody@127.0.0.1:1/none")
        .env("IDEMQ_RATE_LIMIT_SENSITIVE", "lots")
        .output_blocking();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("IDEMQ_RATE_LIMIT_SENSITIVE"), "{stderr}");
}
