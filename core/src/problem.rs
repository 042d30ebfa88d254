//! RFC 9457 problem details: every error idemq answers, whether at once by
//! the API or stored by a job for replay.
use serde::{Deserialize, Serialize};

pub const CONTENT_TYPE: &str = "application/problem+json";
/// Base of every problem `type`; the slug after it is stable and documented.
pub const TYPE_BASE: &str = "https://idemq.dev/problems/";

/// RFC 9457 problem details. `type` is `https://idemq.dev/problems/` + one of:
/// unauthorized, idempotency-key-missing, idempotency-key-empty,
/// idempotency-key-too-long, idempotency-key-invalid-characters,
/// idempotency-key-reused, invalid-body, invalid-path, payload-too-large,
/// unsupported-media-type,
/// not-found, method-not-allowed, rate-limited, service-unavailable,
/// internal-error; stored by jobs: invoice-not-found, invoice-already-paid,
/// application-not-found, application-not-pending, contract-not-found,
/// reading-below-last, operation-failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    #[serde(rename = "type")]
    pub type_uri: String,
    pub title: String,
    pub status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// Only on a 500 `internal-error`: the id of the log line that tells
    /// the operator what failed.
    #[serde(rename = "errorId", default, skip_serializing_if = "Option::is_none")]
    pub error_id: Option<String>,
}

impl Problem {
    pub fn new(slug: &str, title: &str, status: u16) -> Self {
        Problem {
            type_uri: format!("{TYPE_BASE}{slug}"),
            title: title.to_owned(),
            status,
            detail: None,
            error_id: None,
        }
    }

    pub fn detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    pub fn to_json(&self) -> String {
        // A struct of strings and integers always serializes.
        serde_json::to_string(self).unwrap_or_else(|_| String::from("{}"))
    }
}
