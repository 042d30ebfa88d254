//! `PATCH /applications/{id}/approve|reject`: optimistic, one conditional
//! `UPDATE … WHERE status = 'PENDING' AND version = $v`; approval creates the
//! contract in the same transaction.
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sqlx::{PgConnection, PgExecutor};

use super::{Actor, Audit, Outcome};
use crate::{problem::Problem, text::Text, Error};

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Approve {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<Text>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Reject {
    pub reason: Text,
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
#[serde(rename_all = "camelCase")]
pub struct Application {
    pub id: String,
    pub applicant: String,
    pub room: String,
    pub status: String,
    pub version: i32,
    pub note: Option<String>,
    pub reason: Option<String>,
    pub decided_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
#[serde(rename_all = "camelCase")]
pub struct Contract {
    pub id: String,
    pub application_id: Option<String>,
    pub created_at: DateTime<Utc>,
}

enum Decision<'a> {
    Approve(&'a Approve),
    Reject(&'a Reject),
}

pub async fn approve(
    conn: &mut PgConnection,
    actor: Actor,
    id: &str,
    req: &Approve,
) -> Result<Outcome, Error> {
    decide(conn, actor, id, Decision::Approve(req)).await
}

pub async fn reject(conn: &mut PgConnection, actor: Actor, id: &str, req: &Reject) -> Result<Outcome, Error> {
    decide(conn, actor, id, Decision::Reject(req)).await
}

fn not_pending(id: &str, status: &str) -> Outcome {
    Outcome::refused(
        Problem::new("application-not-pending", "Application is no longer pending", 409)
            .detail(format!("Application {id} is {status}.")),
    )
}

async fn decide(
    conn: &mut PgConnection,
    actor: Actor,
    id: &str,
    decision: Decision<'_>,
) -> Result<Outcome, Error> {
    let current = sqlx::query!("SELECT status, version FROM applications WHERE id = $1", id)
        .fetch_optional(&mut *conn)
        .await?
        .map(|row| (row.status, row.version));
    let Some((status, version)) = current else {
        return Ok(Outcome::refused(
            Problem::new("application-not-found", "Application not found", 404)
                .detail(format!("There is no application {id}.")),
        ));
    };
    if status != "PENDING" {
        return Ok(not_pending(id, &status));
    }
    let (new_status, note, reason) = match &decision {
        Decision::Approve(a) => ("APPROVED", a.note.as_deref(), None),
        Decision::Reject(r) => ("REJECTED", None, Some(r.reason.as_str())),
    };
    let lock_started = std::time::Instant::now();
    // A concurrent decision on the same version makes this match no row.
    let updated = sqlx::query_as!(
        Application,
        "UPDATE applications SET status = $3, version = version + 1, note = coalesce($4, note),
                reason = coalesce($5, reason), decided_at = now(), updated_at = now()
         WHERE id = $1 AND status = 'PENDING' AND version = $2
         RETURNING id, applicant, room, status, version, note, reason, decided_at",
        id,
        version,
        new_status,
        note,
        reason,
    )
    .fetch_optional(&mut *conn)
    .await?;
    let kind = match &decision {
        Decision::Approve(_) => "application.approve",
        Decision::Reject(_) => "application.reject",
    };
    super::record_lock_wait(kind, lock_started);
    let Some(application) = updated else {
        let now = sqlx::query_scalar!("SELECT status FROM applications WHERE id = $1", id)
            .fetch_optional(&mut *conn)
            .await?;
        return Ok(not_pending(id, now.as_deref().unwrap_or("gone")));
    };
    match decision {
        Decision::Approve(_) => {
            let contract = sqlx::query_as!(
                Contract,
                "INSERT INTO contracts (id, application_id) VALUES ($1, $2)
                 RETURNING id, application_id, created_at",
                format!("ctr_{}", uuid::Uuid::now_v7().simple()),
                id,
            )
            .fetch_one(&mut *conn)
            .await?;
            let audit = Audit::new(
                actor,
                "application.approve",
                "application",
                id,
                json!({ "contractId": contract.id, "version": application.version }),
            );
            Ok(
                Outcome::success(200, &json!({ "application": application, "contract": contract }))?
                    .audited(audit),
            )
        }
        Decision::Reject(_) => {
            let audit = Audit::new(
                actor,
                "application.reject",
                "application",
                id,
                json!({ "version": application.version }),
            );
            Ok(Outcome::success(200, &json!({ "application": application }))?.audited(audit))
        }
    }
}

/// Read model for `GET /applications/{id}`, with its contract if approved.
pub async fn find(
    conn: &mut PgConnection,
    id: &str,
) -> Result<Option<(Application, Option<Contract>)>, Error> {
    let app = sqlx::query_as!(
        Application,
        "SELECT id, applicant, room, status, version, note, reason, decided_at
         FROM applications WHERE id = $1",
        id,
    )
    .fetch_optional(&mut *conn)
    .await?;
    let Some(app) = app else { return Ok(None) };
    let contract = find_contract_of(&mut *conn, id).await?;
    Ok(Some((app, contract)))
}

async fn find_contract_of<'e>(
    db: impl PgExecutor<'e>,
    application_id: &str,
) -> Result<Option<Contract>, Error> {
    Ok(sqlx::query_as!(
        Contract,
        "SELECT id, application_id, created_at FROM contracts WHERE application_id = $1",
        application_id,
    )
    .fetch_optional(db)
    .await?)
}
