//! What a finished operation's notice carries on `FINISHED_CHANNEL`: the
//! columns its finish wrote (status, attempts, times, the stored response),
//! read back from the finish's own statement. A request waiting for the
//! operation (`Prefer: wait`) answers from it, without reading the
//! operation again: one statement and one round trip less per waiting
//! request.
//!
//! The notice is sent after the commit, so what it carries is committed.
//! Only the worker's job path sends it so; the rare finishes that notify in
//! their own transaction (exhausted, cancelled) and a response too large
//! for a notice (Postgres refuses payloads of 8,000 bytes) send the bare
//! operation id, and the waiter reads the operation as before. A waiter
//! also reads a bare id from a worker of the previous release.
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::operation::{Operation, OperationStatus, StoredResponse};

/// Payloads longer than this go out as the bare id (Postgres's limit is
/// 8,000 bytes; the margin is for the JSON around the body's escapes).
pub const MAX_PAYLOAD: usize = 7_900;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FinishNotice {
    pub id: Uuid,
    status: String,
    attempts: i32,
    finished_at: DateTime<Utc>,
    expires_at: DateTime<Utc>,
    response_status: u16,
    content_type: String,
    body: String,
}

impl FinishNotice {
    /// A finish as committed: the operation's new columns.
    pub fn new(
        id: Uuid,
        status: OperationStatus,
        attempts: i32,
        finished_at: DateTime<Utc>,
        expires_at: DateTime<Utc>,
        response: StoredResponse,
    ) -> Self {
        FinishNotice {
            id,
            status: status.as_str().to_owned(),
            attempts,
            finished_at,
            expires_at,
            response_status: response.status,
            content_type: response.content_type,
            body: response.body,
        }
    }

    /// The payload to send: this notice as JSON, or the bare id if that
    /// would be too long.
    pub fn payload(&self) -> String {
        serde_json::to_string(self)
            .ok()
            .filter(|p| p.len() <= MAX_PAYLOAD)
            .unwrap_or_else(|| self.id.to_string())
    }

    /// A received payload: the operation's id, and its finish if the
    /// payload carries one (`None` for a bare id). `None` if unreadable.
    pub fn parse(payload: &str) -> Option<(Uuid, Option<FinishNotice>)> {
        if let Ok(id) = payload.parse::<Uuid>() {
            return Some((id, None));
        }
        let notice: FinishNotice = serde_json::from_str(payload).ok()?;
        OperationStatus::parse(&notice.status).filter(|s| s.is_final())?;
        Some((notice.id, Some(notice)))
    }

    /// `op` as it was before its finish, with the finish applied: the row as
    /// committed. `None` if the notice is not `op`'s.
    pub fn apply(&self, op: Operation) -> Option<Operation> {
        if op.id.uuid() != self.id {
            return None;
        }
        Some(Operation {
            status: OperationStatus::parse(&self.status)?,
            attempts: self.attempts,
            finished_at: Some(self.finished_at),
            expires_at: Some(self.expires_at),
            response: Some(StoredResponse {
                status: self.response_status,
                content_type: self.content_type.clone(),
                body: self.body.clone(),
            }),
            ..op
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn notice(body: &str) -> FinishNotice {
        FinishNotice::new(
            Uuid::now_v7(),
            OperationStatus::Succeeded,
            1,
            Utc::now(),
            Utc::now(),
            StoredResponse {
                status: 200,
                content_type: "application/json".into(),
                body: body.into(),
            },
        )
    }

    #[test]
    fn a_notice_goes_out_whole_and_comes_back_equal() {
        let n = notice(r#"{"id":"inv-1","status":"PAID","note":"quotes \" and \\ and é"}"#);
        let payload = n.payload();
        assert!(payload.starts_with('{'), "{payload}");
        assert_eq!(FinishNotice::parse(&payload), Some((n.id, Some(n))));
    }

    #[test]
    fn a_response_too_large_for_a_notice_goes_out_as_the_bare_id() {
        let n = notice(&"x".repeat(MAX_PAYLOAD));
        assert_eq!(n.payload(), n.id.to_string());
        assert_eq!(FinishNotice::parse(&n.payload()), Some((n.id, None)));
        // Escapes count: 2,000 quotes are 4,000 bytes of JSON.
        let n = notice(&"\"".repeat(4_000));
        assert_eq!(n.payload(), n.id.to_string());
    }

    #[test]
    fn a_bare_id_is_read_and_garbage_or_a_status_not_final_is_not() {
        let id = Uuid::now_v7();
        assert_eq!(FinishNotice::parse(&id.to_string()), Some((id, None)));
        assert_eq!(FinishNotice::parse("not a notice"), None);
        let queued = notice("{}").payload().replace("\"succeeded\"", "\"queued\"");
        assert_eq!(FinishNotice::parse(&queued), None);
    }
}
