//! Operations: the idempotency record and the work it started, one row.
use std::{fmt, str::FromStr};

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::fingerprint::Fingerprint;

/// `op_` + 32 hex digits. Time-ordered (UUIDv7) so the table's index stays warm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct OperationId(Uuid);

impl OperationId {
    pub fn new() -> Self {
        OperationId(Uuid::now_v7())
    }
    pub fn from_uuid(id: Uuid) -> Self {
        OperationId(id)
    }
    pub fn uuid(&self) -> Uuid {
        self.0
    }
}

impl Default for OperationId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for OperationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "op_{}", self.0.simple())
    }
}

impl FromStr for OperationId {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        let hex = s.strip_prefix("op_").ok_or(())?;
        if hex.len() != 32 {
            return Err(());
        }
        Uuid::try_parse(hex).map(OperationId).map_err(|_| ())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OperationKind {
    InvoiceMarkPaid,
    ApplicationApprove,
    ApplicationReject,
    MeterReadingRecord,
}

impl OperationKind {
    pub const ALL: [OperationKind; 4] = [
        OperationKind::InvoiceMarkPaid,
        OperationKind::ApplicationApprove,
        OperationKind::ApplicationReject,
        OperationKind::MeterReadingRecord,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            OperationKind::InvoiceMarkPaid => "invoice.mark_paid",
            OperationKind::ApplicationApprove => "application.approve",
            OperationKind::ApplicationReject => "application.reject",
            OperationKind::MeterReadingRecord => "meter_reading.record",
        }
    }

    /// The apalis queue that carries this kind's jobs.
    pub fn queue(self) -> &'static str {
        match self {
            OperationKind::InvoiceMarkPaid => crate::queue::PAYMENTS,
            OperationKind::ApplicationApprove | OperationKind::ApplicationReject => crate::queue::APPROVALS,
            OperationKind::MeterReadingRecord => crate::queue::METER_READINGS,
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OperationStatus {
    Queued,
    Running,
    Succeeded,
    Failed,
}

impl OperationStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            OperationStatus::Queued => "queued",
            OperationStatus::Running => "running",
            OperationStatus::Succeeded => "succeeded",
            OperationStatus::Failed => "failed",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        [Self::Queued, Self::Running, Self::Succeeded, Self::Failed]
            .into_iter()
            .find(|k| k.as_str() == s)
    }
    pub fn is_final(self) -> bool {
        matches!(self, OperationStatus::Succeeded | OperationStatus::Failed)
    }
}

/// The final response of a finished operation, byte for byte.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredResponse {
    pub status: u16,
    pub content_type: String,
    pub body: String,
}

#[derive(Debug, Clone)]
pub struct Operation {
    pub id: OperationId,
    pub principal_id: Uuid,
    pub key: String,
    pub fingerprint: Fingerprint,
    pub kind: OperationKind,
    pub status: OperationStatus,
    pub attempts: i32,
    pub job_id: String,
    pub queue: String,
    pub created_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub expires_at: Option<DateTime<Utc>>,
    pub response: Option<StoredResponse>,
}

/// Columns `Operation::from_row` reads, for every query that returns one.
pub const COLUMNS: &str = "id, principal_id, idempotency_key, fingerprint, kind, status, attempts, \
     job_id, queue, created_at, finished_at, expires_at, response_status, response_content_type, response_body";

impl<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow> for Operation {
    fn from_row(row: &'r sqlx::postgres::PgRow) -> Result<Self, sqlx::Error> {
        use sqlx::Row;
        let corrupt = |what: &str| sqlx::Error::Decode(format!("operations.{what} is invalid").into());
        let fp: Vec<u8> = row.try_get("fingerprint")?;
        let kind: String = row.try_get("kind")?;
        let status: String = row.try_get("status")?;
        let response_status: Option<i16> = row.try_get("response_status")?;
        let response = match response_status {
            Some(code) => Some(StoredResponse {
                status: u16::try_from(code).map_err(|_| corrupt("response_status"))?,
                content_type: row
                    .try_get::<Option<String>, _>("response_content_type")?
                    .unwrap_or_else(|| "application/json".into()),
                body: row
                    .try_get::<Option<String>, _>("response_body")?
                    .unwrap_or_default(),
            }),
            None => None,
        };
        Ok(Operation {
            id: OperationId(row.try_get("id")?),
            principal_id: row.try_get("principal_id")?,
            key: row.try_get("idempotency_key")?,
            fingerprint: Fingerprint::from_bytes(&fp).ok_or_else(|| corrupt("fingerprint"))?,
            kind: OperationKind::parse(&kind).ok_or_else(|| corrupt("kind"))?,
            status: OperationStatus::parse(&status).ok_or_else(|| corrupt("status"))?,
            attempts: row.try_get("attempts")?,
            job_id: row.try_get("job_id")?,
            queue: row.try_get("queue")?,
            created_at: row.try_get("created_at")?,
            finished_at: row.try_get("finished_at")?,
            expires_at: row.try_get("expires_at")?,
            response,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operation_id_round_trips() {
        let id = OperationId::new();
        assert_eq!(id.to_string().parse::<OperationId>(), Ok(id));
        assert!("op_xyz".parse::<OperationId>().is_err());
        assert!(id.uuid().to_string().parse::<OperationId>().is_err());
    }
}
