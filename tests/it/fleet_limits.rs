//! Fleet-wide rate limits (issue 16): three real `idemq api` processes on one
//! database hold one principal's budget together.
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};

use crate::helpers::*;

/// An `idemq api` process of the fleet under test (also used by
/// tests/it/revocation.rs): rate limits on, a small pool, `env` on top.
pub fn spawn_api(db_url: &str, env: &[(&str, &str)]) -> ApiProcess {
    let mut all = vec![
        ("IDEMQ_RATE_LIMIT_ENABLED", "true"),
        ("IDEMQ_DB_MAX_CONNECTIONS", "5"),
    ];
    all.extend_from_slice(env);
    spawn_api_process(db_url, &all)
}

struct Fleet {
    db: TestDb,
    token: String,
    apis: Vec<ApiProcess>,
    client: reqwest::Client,
}

/// Three API processes under the default scope (`fleet`), one principal.
async fn fleet(env: &[(&str, &str)]) -> Fleet {
    let db = fresh_db().await;
    let (_, token) = idemq_core::principal::create_token(&db.pool, "fleet-tester")
        .await
        .unwrap();
    sqlx::query("INSERT INTO invoices (id, amount_cents) VALUES ('inv-1', 5000)")
        .execute(&db.pool)
        .await
        .unwrap();
    let apis: Vec<ApiProcess> = (0..3).map(|_| spawn_api(&db.url, env)).collect();
    // A listener that connects forgets the cached tokens (revocations sent
    // before it listened are unheard): a token cached before that is gone.
    eventually("every process listens for notices", || async {
        apis.iter()
            .all(|api| api.log().contains(NOTICE_LISTENER_CONNECTED))
    })
    .await;
    Fleet {
        db,
        token,
        apis,
        client: reqwest::Client::new(),
    }
}

impl Fleet {
    async fn mark_paid(&self, api: usize, key: &str) -> reqwest::Response {
        Call::to(
            &self.client,
            &self.apis[api].url,
            Method::PATCH,
            "/invoices/inv-1/mark-paid",
        )
        .token(&self.token)
        .key(key)
        .json(&serde_json::json!({ "paymentMethod": "card" }))
        .response()
        .await
    }

    async fn read(&self, api: usize) -> reqwest::Response {
        Call::to(&self.client, &self.apis[api].url, Method::GET, "/invoices/inv-1")
            .token(&self.token)
            .response()
            .await
    }

    async fn operations(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM operations")
            .fetch_one(&self.db.pool)
            .await
            .unwrap()
    }
}

#[tokio::test]
async fn three_processes_admit_one_budget_with_honest_retry_after() {
    // 10/min: one request comes back every 6 s, so the 30 quick requests see
    // no refill, and the window's end comes within seconds.
    let f = fleet(&[("IDEMQ_RATE_LIMIT_SENSITIVE", "10/min")]).await;

    let started = Instant::now();
    let mut accepted = 0;
    // (which process, when its answer arrived, Retry-After)
    let mut refusals: Vec<(usize, Instant, u64)> = Vec::new();
    for i in 0..30 {
        let api = i % 3;
        let r = f.mark_paid(api, &format!("key-{i}")).await;
        match r.status() {
            StatusCode::ACCEPTED => accepted += 1,
            StatusCode::TOO_MANY_REQUESTS => {
                assert_problem(&r, StatusCode::TOO_MANY_REQUESTS);
                assert_eq!(header(&r, "ratelimit-policy"), Some("\"sensitive\";q=10;w=60"));
                let retry: u64 = header(&r, "retry-after").unwrap().parse().unwrap();
                assert!((1..=6).contains(&retry), "request {i}: Retry-After {retry}");
                assert_eq!(
                    header(&r, "ratelimit"),
                    Some(format!("\"sensitive\";r=0;t={retry}").as_str())
                );
                refusals.push((api, Instant::now(), retry));
            }
            other => panic!("request {i}: {other}"),
        }
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the 30 requests took {:?}: a refill may have come in between",
        started.elapsed()
    );
    assert_eq!(accepted, 10, "the fleet admitted more or less than its budget");
    assert_eq!(refusals.len(), 20);
    assert_eq!(f.operations().await, 10, "a refused request recorded something");

    // Every Retry-After is honest: at the earliest moment any of them named,
    // a request passes (and so it would at every later one).
    let (api, at, retry) = refusals
        .iter()
        .copied()
        .min_by_key(|(_, at, retry)| *at + Duration::from_secs(*retry))
        .unwrap();
    tokio::time::sleep_until((at + Duration::from_secs(retry)).into()).await;
    let r = f.mark_paid(api, "after-retry").await;
    assert_eq!(
        r.status(),
        StatusCode::ACCEPTED,
        "a request at Retry-After was refused"
    );
    // One request came back, and the fleet gave it out once.
    for other in (0..3).filter(|a| *a != api) {
        let r = f.mark_paid(other, &format!("same-moment-{other}")).await;
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS, "process {other}");
    }
    assert_eq!(f.operations().await, 11);
}

#[tokio::test]
async fn the_read_class_holds_fleet_wide_within_five_percent() {
    // 200/h: no refill during the test; a slice is 10 requests.
    let f = fleet(&[("IDEMQ_RATE_LIMIT_READ", "200/h")]).await;
    let f = std::sync::Arc::new(f);
    let tasks: Vec<_> = (0..6)
        .map(|t| {
            let f = f.clone();
            tokio::spawn(async move {
                let mut ok = 0u32;
                for i in 0..100 {
                    let r = f.read((t + i) % 3).await;
                    match r.status() {
                        StatusCode::OK => ok += 1,
                        StatusCode::TOO_MANY_REQUESTS => {}
                        other => panic!("{other}"),
                    }
                }
                ok
            })
        })
        .collect();
    let mut ok = 0;
    for t in tasks {
        ok += t.await.unwrap();
    }
    assert!(
        (190..=210).contains(&ok),
        "{ok} of 600 reads admitted against a fleet budget of 200"
    );
}

#[tokio::test]
async fn a_client_well_within_its_read_budget_is_never_refused_across_three_processes() {
    // 100/s, burst 200: slices of up to 10 requests, each living 100 ms. Were
    // every process to lease full slices and let them expire, the three
    // would take 300/s from the budget and drain the burst within a second.
    let f = fleet(&[("IDEMQ_RATE_LIMIT_READ", "100/s;burst=200")]).await;
    // Under a third of the budget, round-robin: each process sees a read
    // every 105 ms, just after its last full slice would have expired.
    let started = Instant::now();
    let mut pace = tokio::time::interval(Duration::from_millis(35));
    let mut i = 0;
    while started.elapsed() < Duration::from_secs(5) {
        pace.tick().await;
        let r = f.read(i % 3).await;
        assert_eq!(r.status(), StatusCode::OK, "read {i}, {:?} in", started.elapsed());
        i += 1;
    }
}

#[tokio::test]
async fn with_postgres_unreachable_each_process_falls_back_to_its_own_budget() {
    let f = fleet(&[("IDEMQ_RATE_LIMIT_SENSITIVE", "10/min")]).await;
    // The token is cached on every process (reads are another budget), and
    // stays cached while the listener cannot reconnect.
    for api in 0..3 {
        assert_eq!(f.read(api).await.status(), StatusCode::OK);
    }
    let admin_url = format!("{}/postgres", f.db.url.rsplit_once('/').unwrap().0);
    let admin = sqlx::PgPool::connect(&admin_url).await.unwrap();
    let allow = |on: bool| {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "ALTER DATABASE {} ALLOW_CONNECTIONS {on}",
            f.db.name
        )))
    };
    allow(false).execute(&admin).await.unwrap();
    f.db.pool.close().await;
    // Until none is left: a backend slow to act on its SIGTERM would still
    // serve a process.
    eventually("every connection to the database terminated", || async {
        let left: i64 = sqlx::query_scalar(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = $1",
        )
        .bind(&f.db.name)
        .fetch_one(&admin)
        .await
        .unwrap();
        left == 0
    })
    .await;

    // Documented behaviour: each process limits on its own, so two
    // processes admit a budget each (the requests then fail on the database,
    // 503), and the eleventh on a process is refused.
    for api in 0..2 {
        let answers = futures::future::join_all((0..12).map(|i| {
            let key = format!("down-{api}-{i}");
            let f = &f;
            async move { f.mark_paid(api, &key).await }
        }))
        .await;
        let refused = answers
            .iter()
            .filter(|r| r.status() == StatusCode::TOO_MANY_REQUESTS)
            .count();
        assert_eq!(
            refused,
            2,
            "process {api}: {:?}",
            answers.iter().map(|r| r.status()).collect::<Vec<_>>()
        );
        for r in answers
            .iter()
            .filter(|r| r.status() != StatusCode::TOO_MANY_REQUESTS)
        {
            assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        }
        // The log is written off the request path: awaited, not read at once.
        eventually(&format!("process {api} logs the fallback"), || async {
            f.apis[api]
                .log()
                .contains("rate-limit: postgres unreachable, falling back to per-process budgets")
        })
        .await;
    }

    // The third process meets the outage on its first mutating request.
    let r = f.mark_paid(2, "down-2").await;
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);

    // Postgres back: after its retry pause, the process leases from the
    // fleet again and says so.
    allow(true).execute(&admin).await.unwrap();
    let mut n = 0;
    eventually("fleet budgets restored with postgres back", || {
        n += 1;
        let key = format!("back-{n}");
        let f = &f;
        async move {
            f.mark_paid(2, &key).await.status() == StatusCode::ACCEPTED
                && f.apis[2]
                    .log()
                    .contains("rate-limit: postgres answers again, fleet-wide budgets restored")
        }
    })
    .await;
}
