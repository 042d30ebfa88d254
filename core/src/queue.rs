//! The apalis Postgres queue: names, the job payload, enqueueing inside the
//! caller's transaction.
use apalis::prelude::{TaskBuilder, TaskId};
use serde::{Deserialize, Serialize};
use sqlx::PgConnection;
use ulid::Ulid;
use uuid::Uuid;

use crate::{operation::OperationId, Error};

pub const PAYMENTS: &str = "payments";
pub const APPROVALS: &str = "approvals";
pub const METER_READINGS: &str = "meter_readings";
pub const ALL: [&str; 3] = [PAYMENTS, APPROVALS, METER_READINGS];

/// apalis's own attempt bound. Our retries (with backoff) run inside the
/// handler and are bounded by `IDEMQ_JOB_MAX_ATTEMPTS` in `operations`; this
/// only stops a job that keeps killing its worker from looping for ever.
pub const APALIS_MAX_ATTEMPTS: usize = 25;

/// What a job carries: only the operation id. Everything else is read from
/// the operation row under its lock, so a redelivered job sees the truth.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct JobPayload {
    pub operation_id: Uuid,
    /// Never stored: the attempt the worker's fetch counted for this
    /// delivery (`FETCH_STARTING_ATTEMPTS` in worker/src/fetch_gate.rs, docs/job-path.md "Waking
    /// and fetching"), so that its first attempt does not start itself.
    /// `None`: the fetch counted nothing (the operation was final, gone, or
    /// locked by an attempt in flight): the attempt starts itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_attempt: Option<i32>,
}

impl JobPayload {
    pub fn operation_id(&self) -> OperationId {
        OperationId::from_uuid(self.operation_id)
    }
}

/// The job's arguments as apalis stores them: the JSON of `JobPayload`.
pub fn job_args(op: OperationId) -> Result<Vec<u8>, Error> {
    serde_json::to_vec(&JobPayload {
        operation_id: op.uuid(),
        started_attempt: None,
    })
    .map_err(|e| Error::Corrupt(e.to_string()))
}

/// A fresh task id. apalis requires ULIDs: any other id blocks the queue.
pub fn new_job_id() -> Ulid {
    Ulid::generate()
}

/// Pushes the job on `conn` — the caller's transaction — so the job and the
/// operation row commit or roll back together, and wakes the queue's
/// workers at commit. For the rare enqueues (operator retry, reconciler):
/// the request path wakes them after its commit through `Notifier`, because
/// a notifying commit runs alone (see `notifier`).
pub async fn push(conn: &mut PgConnection, queue: &str, job_id: Ulid, op: OperationId) -> Result<(), Error> {
    let args = job_args(op)?;
    let task = TaskBuilder::new(args)
        .task_id(TaskId::from_ulid(job_id))
        .max_attempts(APALIS_MAX_ATTEMPTS)
        .build();
    apalis_postgres::queries::push_tasks(&mut *conn, queue, vec![task]).await?;
    sqlx::query!(
        "SELECT pg_notify($1, json_build_object('job_type', $2::text, 'id', $3::text)::text)",
        crate::notifier::JOB_INSERT_CHANNEL,
        queue,
        job_id.to_string(),
    )
    .execute(conn)
    .await?;
    Ok(())
}
