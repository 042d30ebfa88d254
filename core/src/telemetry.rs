//! Metric names (prefix `idemq_`) and their registration at start, so that a
//! scrape shows every counter at 0 before its first event.
use crate::{operation::OperationKind, queue};

pub const HTTP_REQUESTS: &str = "idemq_http_requests_total";
pub const HTTP_DURATION: &str = "idemq_http_request_duration_seconds";
pub const REPLAYS: &str = "idemq_idempotent_replays_total";
pub const KEY_REUSED: &str = "idemq_idempotency_key_reused_total";
pub const KEY_MISSING: &str = "idemq_idempotency_key_missing_total";
pub const KEY_INVALID: &str = "idemq_idempotency_key_invalid_total";
pub const RATE_LIMITED: &str = "idemq_rate_limited_total";
pub const JOBS: &str = "idemq_jobs_total";
pub const JOB_DURATION: &str = "idemq_job_duration_seconds";
pub const LOCK_WAIT: &str = "idemq_lock_wait_seconds";
pub const QUEUE_JOBS: &str = "idemq_queue_jobs";
pub const OPERATIONS: &str = "idemq_operations";
pub const CLEANUP_DELETED: &str = "idemq_cleanup_deleted_total";
pub const RECONCILER_ACTIONS: &str = "idemq_reconciler_actions_total";
pub const RECORD_BATCH_SIZE: &str = "idemq_record_batch_size";
pub const RECORD_WAITING: &str = "idemq_record_waiting";
pub const JOB_GROUP_SIZE: &str = "idemq_job_group_size";
pub const QUEUE_FETCHES: &str = "idemq_queue_fetches_total";
/// The `reason` label of `idemq_queue_fetches_total` (the worker's
/// `wake_strategy::FetchReason`).
pub const FETCH_REASONS: [&str; 5] = ["start", "timer", "backup", "full_batch", "notice"];
/// Buckets of `idemq_record_batch_size` (requests per record statement).
pub const RECORD_BATCH_BUCKETS: [f64; 8] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0];

/// Job outcomes, the `outcome` label of `idemq_jobs_total`.
pub const JOB_OUTCOMES: [&str; 5] = ["succeeded", "refused", "redelivered", "retried", "exhausted"];

/// Registers every counter at 0 with its known labels, and describes them.
pub fn register_all() {
    use metrics::{counter, describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(HTTP_REQUESTS, "HTTP requests by route template and status");
    describe_histogram!(HTTP_DURATION, Unit::Seconds, "HTTP request latency");
    describe_counter!(
        REPLAYS,
        "Requests answered from an existing operation (Idempotent-Replayed)"
    );
    describe_counter!(KEY_REUSED, "Same key with a different request (422)");
    describe_counter!(KEY_MISSING, "Mutating requests without Idempotency-Key (400)");
    describe_counter!(
        KEY_INVALID,
        "Mutating requests with an invalid Idempotency-Key (400)"
    );
    describe_counter!(RATE_LIMITED, "429 answers by route class");
    describe_counter!(JOBS, "Job runs by kind and outcome");
    describe_histogram!(JOB_DURATION, Unit::Seconds, "Job run time by kind (all attempts)");
    describe_histogram!(
        LOCK_WAIT,
        Unit::Seconds,
        "Time to acquire the business row lock by kind"
    );
    describe_gauge!(
        QUEUE_JOBS,
        "apalis jobs by queue and state (refreshed on a timer)"
    );
    describe_gauge!(OPERATIONS, "Operations rows by status (refreshed on a timer)");
    describe_counter!(CLEANUP_DELETED, "Rows deleted by cleanup by table");
    describe_counter!(RECONCILER_ACTIONS, "Reconciler actions");
    describe_counter!(
        QUEUE_FETCHES,
        "Worker fetches by queue, what made them due, and whether they found jobs"
    );
    describe_histogram!(
        RECORD_BATCH_SIZE,
        "Requests recorded by one record statement and commit (API group commit)"
    );
    describe_histogram!(
        JOB_GROUP_SIZE,
        "Jobs run by one job transaction and commit (worker group commit)"
    );
    describe_gauge!(
        RECORD_WAITING,
        "Requests waiting for a free record statement (API group commit)"
    );
    metrics::gauge!(RECORD_WAITING).set(0.0);
    for c in [REPLAYS, KEY_REUSED, KEY_MISSING, KEY_INVALID] {
        counter!(c).absolute(0);
    }
    for class in ["sensitive", "read"] {
        counter!(RATE_LIMITED, "class" => class).absolute(0);
    }
    for kind in OperationKind::ALL {
        for outcome in JOB_OUTCOMES {
            counter!(JOBS, "kind" => kind.as_str(), "outcome" => outcome).absolute(0);
        }
    }
    for table in ["operations", "apalis.jobs", "apalis.workers", "duty_ticks"] {
        counter!(CLEANUP_DELETED, "table" => table).absolute(0);
    }
    for action in ["reenqueued", "failed"] {
        counter!(RECONCILER_ACTIONS, "action" => action).absolute(0);
    }
    for q in queue::ALL {
        for reason in FETCH_REASONS {
            for found in ["jobs", "none"] {
                counter!(QUEUE_FETCHES, "queue" => q, "reason" => reason, "found" => found).absolute(0);
            }
        }
    }
}
