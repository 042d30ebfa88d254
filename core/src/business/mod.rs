//! The business operations of the rental back office. Each runs inside the
//! job's transaction (`crate::job`), locks its row, applies its effect with
//! one audit entry, and returns the final response. A refusal (not found,
//! conflict) is a final response too, never an error: only infrastructure
//! failures are `Err`, and those roll back and retry.
pub mod approvals;
pub mod meter_readings;
pub mod payments;

use serde::Serialize;
use serde_json::Value;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::{operation::OperationId, problem::Problem, Error};

/// The final response a job stores for replay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
    /// `false` for a business refusal: the operation finishes `failed`.
    pub succeeded: bool,
}

impl Outcome {
    pub fn success(status: u16, body: &impl Serialize) -> Result<Self, Error> {
        Ok(Outcome {
            status,
            content_type: "application/json",
            body: serde_json::to_string(body).map_err(|e| Error::Corrupt(e.to_string()))?,
            succeeded: true,
        })
    }

    pub fn refused(problem: Problem) -> Self {
        Outcome {
            status: problem.status,
            content_type: crate::problem::CONTENT_TYPE,
            body: problem.to_json(),
            succeeded: false,
        }
    }
}

/// Who asked, for the audit entry.
#[derive(Debug, Clone, Copy)]
pub struct Actor {
    pub operation: OperationId,
    pub principal: Uuid,
}

/// The one audit entry of an effect, in the effect's transaction.
pub async fn audit(
    conn: &mut PgConnection,
    actor: Actor,
    action: &str,
    entity_type: &str,
    entity_id: &str,
    details: Value,
) -> Result<(), Error> {
    sqlx::query(
        "INSERT INTO audit_log (operation_id, principal_id, action, entity_type, entity_id, details)
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(actor.operation.uuid())
    .bind(actor.principal)
    .bind(action)
    .bind(entity_type)
    .bind(entity_id)
    .bind(details)
    .execute(conn)
    .await?;
    tracing::info!(operation = %actor.operation, action, entity_type, entity_id, "audit");
    Ok(())
}

/// `idemq_lock_wait_seconds{kind}`: time spent acquiring the business row
/// lock (the locking statement's duration).
pub(crate) fn record_lock_wait(kind: &'static str, started: std::time::Instant) {
    metrics::histogram!(crate::telemetry::LOCK_WAIT, "kind" => kind).record(started.elapsed().as_secs_f64());
}
