//! The HTTP representation of an operation (docs/routes-and-answers.md, "The operation"): what `202 Accepted` and `GET /operations/{id}` answer,
//! and the `Location` that points to it.
use chrono::{DateTime, Utc};
use idemq_core::{
    operation::{Operation, OperationId},
    Error,
};
use serde::Serialize;
use serde_json::value::RawValue;

/// The operation's URL path, for `Location` and `links.self`.
pub fn location(id: OperationId) -> String {
    format!("/operations/{id}")
}

/// The public representation (docs/routes-and-answers.md, "The operation").
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OperationView<'a> {
    /// `op_` + 32 hex digits.
    pub id: String,
    /// invoice.mark_paid, application.approve, application.reject or meter_reading.record.
    pub kind: &'static str,
    /// queued, running, succeeded or failed.
    pub status: &'static str,
    pub idempotency_key: &'a str,
    pub created_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub response: Option<ResponseView<'a>>,
    pub links: Links,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ResponseView<'a> {
    pub status: u16,
    /// The stored body embedded as is: the same bytes a replay returns.
    #[schema(value_type = Object)]
    pub body: &'a RawValue,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Links {
    #[serde(rename = "self")]
    #[schema(rename = "self")]
    pub self_: String,
}

impl<'a> OperationView<'a> {
    /// Fails only on a stored body that is not JSON (a corrupt row).
    pub fn of(op: &'a Operation) -> Result<Self, Error> {
        let response = match &op.response {
            Some(r) => Some(ResponseView {
                status: r.status,
                body: serde_json::from_str::<&RawValue>(&r.body)
                    .map_err(|e| Error::Corrupt(format!("stored body of {}: {e}", op.id)))?,
            }),
            None => None,
        };
        Ok(OperationView {
            id: op.id.to_string(),
            kind: op.kind.as_str(),
            status: op.status.as_str(),
            idempotency_key: &op.key,
            created_at: op.created_at,
            finished_at: op.finished_at,
            response,
            links: Links {
                self_: location(op.id),
            },
        })
    }
}

/// The operation's representation, serialised.
pub fn operation_json(op: &Operation) -> Result<String, Error> {
    serde_json::to_string(&OperationView::of(op)?).map_err(|e| Error::Corrupt(e.to_string()))
}
