//! apalis-board (UI and its API) for every queue. Read-only here: its
//! job-pushing `PUT` routes are refused with 403 — jobs enter only through
//! the public API (the board would accept any task id, and a non-ULID id
//! blocks a queue).
//!
//! Two of its routes are answered by us instead (docs/ops-console.md):
//! - `/api/v1/events`: our own filtered log feed ([`super::log_feed`]). The
//!   UI's footer reads "Unhealthy" whenever that stream fails or ends.
//! - `/api/v1/overview`: apalis-postgres 1.0's figures, corrected. It sends
//!   "Oldest Pending Job" as 0 (1970) when nothing is pending, both
//!   timestamps through a 32-bit float (rounded by up to two minutes, so
//!   "Most Recent Job" lands in the future), and two figures the UI 1.0 has
//!   no label for (`KILL_RATE`, `KILLED_JOBS_TODAY`), which it titles "Total
//!   Jobs".
use apalis_board::axum::{
    framework::{ApiBuilder, RegisterRoute},
    ui::ServeUI,
};
use apalis_core::backend::{Metrics, StatType, Statistic};
use apalis_postgres::{Config, PostgresStorage};
use axum::{
    extract::{Request, State},
    http::Method,
    middleware::{self, Next},
    response::{IntoResponse, Response},
    Json, Router,
};
use idemq_core::{problem::Problem, queue, queue::JobPayload};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use super::log_feed;
use crate::error::problem_response;

/// The statistic titles apalis-board's UI 1.0 has a label for; any other is
/// shown as "Total Jobs".
const KNOWN_STATISTICS: &[&str] = &[
    "RUNNING_JOBS",
    "PENDING_JOBS",
    "FAILED_JOBS",
    "ACTIVE_JOBS",
    "STALE_RUNNING_JOBS",
    "FAILURE_RATE",
    "JOBS_PAST_HOUR",
    "JOBS_TODAY",
    "FAILED_JOBS_TODAY",
    "AVG_JOBS_PER_MINUTE_PAST_HOUR",
    "TOTAL_JOBS",
    "DONE_JOBS",
    "COMPLETED_JOBS",
    "KILLED_JOBS",
    "SUCCESS_RATE",
    "AVG_JOB_DURATION_MINS",
    "LONGEST_RUNNING_JOB_MINS",
    "QUEUE_BACKLOG",
    "JOBS_PAST_24_HOURS",
    "JOBS_PAST_7_DAYS",
    "FAILED_JOBS_PAST_7_DAYS",
    "SUCCESS_RATE_PAST_24H",
    "AVG_JOBS_PER_HOUR_PAST_24H",
    "AVG_JOBS_PER_DAY_PAST_7D",
    "MOST_RECENT_JOB",
    "OLDEST_PENDING_JOB",
    "PEAK_HOUR_JOBS",
    "DB_PAGE_SIZE",
    "DB_PAGE_COUNT",
    "DB_SIZE",
];

#[derive(Clone)]
struct Board {
    pool: PgPool,
    shutdown: CancellationToken,
}

pub fn router(pool: &PgPool, shutdown: CancellationToken) -> Router {
    let mut api = ApiBuilder::new(Router::new());
    for name in queue::ALL {
        let storage = PostgresStorage::<JobPayload>::new(pool).with_config(Config::default().queue(name));
        api = api.register(name, storage);
    }
    let board = Board {
        pool: pool.clone(),
        shutdown,
    };
    Router::new()
        .nest("/api/v1", api.build())
        .layer(middleware::from_fn_with_state(board, ours_or_read_only))
        .fallback_service(ServeUI::new())
}

async fn ours_or_read_only(State(board): State<Board>, req: Request, next: Next) -> Response {
    let path = req.uri().path();
    let read = matches!(*req.method(), Method::GET | Method::HEAD);
    if read && path == "/api/v1/events" {
        return log_feed::events(board.shutdown).into_response();
    }
    if read && path == "/api/v1/overview" {
        return match overview(&board.pool).await {
            Ok(stats) => Json(stats).into_response(),
            Err(e) => {
                tracing::warn!(error = %e, "ops: cannot compute the board's overview");
                problem_response(&Problem::new("internal-error", "Internal error", 500))
            }
        };
    }
    if path.starts_with("/api/v1") && !read {
        tracing::warn!(method = %req.method(), path, "ops: refused a write to the board API");
        return problem_response(
            &Problem::new("forbidden", "Forbidden", 403)
                .detail("The dashboard is read-only: jobs enter only through the public API."),
        );
    }
    next.run(req).await
}

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The board's overview figures (all queues), corrected (see the module doc).
pub async fn overview(pool: &PgPool) -> Result<Vec<Statistic>, BoxError> {
    let storage = PostgresStorage::<JobPayload>::new(pool);
    let mut stats = storage.global().await?;
    let times = sqlx::query!(
        r#"SELECT extract(epoch FROM max(run_at) FILTER (WHERE run_at <= now()))::float8 AS most_recent,
                extract(epoch FROM min(run_at) FILTER (WHERE status = 'Pending' AND run_at <= now()))::float8
                    AS oldest_pending
         FROM apalis.jobs"#,
    )
    .fetch_one(pool)
    .await?;
    let (most_recent, oldest_pending) = (times.most_recent, times.oldest_pending);
    let exact = |title: &str| match title {
        "MOST_RECENT_JOB" => Some(most_recent),
        "OLDEST_PENDING_JOB" => Some(oldest_pending),
        _ => None,
    };
    stats.retain_mut(|stat| {
        if !KNOWN_STATISTICS.contains(&stat.title.as_str()) {
            return false;
        }
        match exact(&stat.title) {
            // Nothing to date (nothing pending): no tile rather than 1970.
            Some(None) => false,
            Some(Some(epoch)) => {
                stat.stat_type = StatType::Timestamp;
                stat.value = format!("{}", epoch.floor() as u64);
                true
            }
            None => true,
        }
    });
    Ok(stats)
}
