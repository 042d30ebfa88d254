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

/// The final response a job stores for replay, and the audit entry of its
/// effect (none for a refusal).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
    /// `false` for a business refusal: the operation finishes `failed`.
    pub succeeded: bool,
    /// Written by the job's finish, in the same statement as the response
    /// (one round trip less per job), in the effect's transaction.
    pub audit: Option<Audit>,
}

impl Outcome {
    pub fn success(status: u16, body: &impl Serialize) -> Result<Self, Error> {
        Ok(Outcome {
            status,
            content_type: "application/json",
            body: serde_json::to_string(body).map_err(|e| Error::Corrupt(e.to_string()))?,
            succeeded: true,
            audit: None,
        })
    }

    pub fn refused(problem: Problem) -> Self {
        Outcome {
            status: problem.status,
            content_type: crate::problem::CONTENT_TYPE,
            body: problem.to_json(),
            succeeded: false,
            audit: None,
        }
    }

    /// The effect's one audit entry.
    pub fn audited(mut self, audit: Audit) -> Self {
        self.audit = Some(audit);
        self
    }
}

/// Who asked, for the audit entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Actor {
    pub operation: OperationId,
    pub principal: Uuid,
}

/// The one audit entry of an effect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Audit {
    pub actor: Actor,
    pub action: &'static str,
    pub entity_type: &'static str,
    pub entity_id: String,
    pub details: Value,
}

impl Audit {
    pub fn new(
        actor: Actor,
        action: &'static str,
        entity_type: &'static str,
        entity_id: &str,
        details: Value,
    ) -> Self {
        Audit {
            actor,
            action,
            entity_type,
            entity_id: entity_id.to_owned(),
            details,
        }
    }

    /// Writes the entry on `conn`, for entries no `Outcome` carries (the
    /// operator's actions).
    pub async fn insert(&self, conn: &mut PgConnection) -> Result<(), Error> {
        sqlx::query!(
            "INSERT INTO audit_log (operation_id, principal_id, action, entity_type, entity_id, details)
             VALUES ($1, $2, $3, $4, $5, $6)",
            self.actor.operation.uuid(),
            self.actor.principal,
            self.action,
            self.entity_type,
            self.entity_id,
            self.details,
        )
        .execute(conn)
        .await?;
        Ok(())
    }

    /// The `audit` log line, once the entry is committed.
    pub fn log(&self) {
        tracing::info!(
            operation = %self.actor.operation,
            action = self.action,
            entity_type = self.entity_type,
            entity_id = %self.entity_id,
            "audit"
        );
    }
}

/// `idemq_lock_wait_seconds{kind}`: time spent acquiring the business row
/// lock (the locking statement's duration).
pub(crate) fn record_lock_wait(kind: &'static str, started: std::time::Instant) {
    if crate::warmup::rehearsing() {
        return;
    }
    metrics::histogram!(crate::telemetry::LOCK_WAIT, "kind" => kind).record(started.elapsed().as_secs_f64());
}
