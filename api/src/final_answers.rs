//! Recent final answers, kept in memory so that a repeat of a finished
//! request is answered without Postgres (the common retry: the client lost
//! the first answer and sends the same request again).
//!
//! Only `succeeded` operations are kept: their stored response never changes
//! until the record expires (an operator can retry only a `failed` one, and
//! cancel only a `queued` one), so every API process may answer from its
//! own copy. An entry is used only with the same principal, key and
//! fingerprint (anything else goes to the database, which knows the 422),
//! and only until `EXPIRY_MARGIN` before the record's expiry (by this host's
//! clock; the database's decides after that). The cache is bounded: two
//! generations of at most `GENERATION_SIZE` entries; when the young one is
//! full it becomes the old one and the old one is dropped.
use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    body::Bytes,
    http::{header, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
};
use chrono::{DateTime, Utc};
use idemq_core::{
    fingerprint::Fingerprint,
    key::IdempotencyKey,
    operation::{Operation, OperationId, OperationStatus},
};
use uuid::Uuid;

use crate::idempotency::header_value;

/// Entries per generation (each holds one response body, typically < 1 KiB).
pub const GENERATION_SIZE: usize = 4096;
/// An entry is not used this close to its record's expiry.
pub const EXPIRY_MARGIN: Duration = Duration::from_secs(5);

/// A stored final response, ready to send again.
#[derive(Debug)]
pub struct FinalAnswer {
    pub operation: OperationId,
    fingerprint: Fingerprint,
    status: StatusCode,
    content_type: HeaderValue,
    body: Bytes,
    usable_until: DateTime<Utc>,
}

impl FinalAnswer {
    /// The answer of a finished operation that may be kept (see the module).
    fn of(op: &Operation) -> Option<FinalAnswer> {
        if op.status != OperationStatus::Succeeded {
            return None;
        }
        let stored = op.response.as_ref()?;
        let margin = chrono::Duration::from_std(EXPIRY_MARGIN).ok()?;
        Some(FinalAnswer {
            operation: op.id,
            fingerprint: op.fingerprint,
            status: StatusCode::from_u16(stored.status).ok()?,
            content_type: header_value(&stored.content_type),
            body: Bytes::from(stored.body.clone()),
            usable_until: op.expires_at? - margin,
        })
    }

    /// The stored status, content type and body (the headers that mark a
    /// replay are the caller's).
    pub fn response(&self) -> Response {
        (
            self.status,
            [(header::CONTENT_TYPE, self.content_type.clone())],
            self.body.clone(),
        )
            .into_response()
    }
}

type Key = (Uuid, String);

#[derive(Debug, Default)]
struct Generations {
    young: HashMap<Key, Arc<FinalAnswer>>,
    old: HashMap<Key, Arc<FinalAnswer>>,
}

#[derive(Debug, Default)]
pub struct FinalAnswers {
    inner: Mutex<Generations>,
}

impl FinalAnswers {
    /// The kept answer for this request, if any and still usable.
    pub fn get(
        &self,
        principal: Uuid,
        key: &IdempotencyKey,
        fingerprint: &Fingerprint,
    ) -> Option<Arc<FinalAnswer>> {
        let k = (principal, key.as_str().to_owned());
        let found = {
            let g = self.inner.lock().ok()?;
            g.young.get(&k).or_else(|| g.old.get(&k)).cloned()?
        };
        (found.fingerprint == *fingerprint && Utc::now() < found.usable_until).then_some(found)
    }

    /// Keeps `op`'s answer if it may be kept (a `succeeded` operation).
    pub fn remember(&self, op: &Operation) {
        let Some(answer) = FinalAnswer::of(op) else { return };
        if let Ok(mut g) = self.inner.lock() {
            if g.young.len() >= GENERATION_SIZE {
                g.old = std::mem::take(&mut g.young);
            }
            g.young
                .insert((op.principal_id, op.key.clone()), Arc::new(answer));
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.inner
            .lock()
            .map(|g| g.young.len() + g.old.len())
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use idemq_core::operation::{OperationKind, StoredResponse};

    use super::*;

    fn op(n: usize, status: OperationStatus, expires_in: chrono::Duration) -> Operation {
        Operation {
            id: OperationId::new(),
            principal_id: Uuid::nil(),
            key: format!("key-{n}"),
            fingerprint: Fingerprint::compute("POST", "/x", &[], &serde_json::json!({})),
            kind: OperationKind::InvoiceMarkPaid,
            status,
            attempts: 1,
            job_id: String::new(),
            queue: "payments".into(),
            created_at: Utc::now(),
            finished_at: Some(Utc::now()),
            expires_at: Some(Utc::now() + expires_in),
            response: Some(StoredResponse {
                status: 200,
                content_type: "application/json".into(),
                body: format!("{{\"n\":{n}}}"),
            }),
        }
    }

    fn key(n: usize) -> IdempotencyKey {
        IdempotencyKey::parse(format!("key-{n}").as_bytes()).unwrap()
    }

    #[test]
    fn keeps_succeeded_answers_for_the_same_fingerprint_until_near_expiry() {
        let answers = FinalAnswers::default();
        let day = chrono::Duration::days(1);
        let fresh = op(1, OperationStatus::Succeeded, day);
        answers.remember(&fresh);
        let hit = answers.get(Uuid::nil(), &key(1), &fresh.fingerprint).unwrap();
        assert_eq!(hit.operation, fresh.id);
        let other = Fingerprint::compute("POST", "/y", &[], &serde_json::json!({}));
        assert!(
            answers.get(Uuid::nil(), &key(1), &other).is_none(),
            "another request: the database decides"
        );
        assert!(
            answers.get(Uuid::max(), &key(1), &fresh.fingerprint).is_none(),
            "another principal"
        );

        let refused = op(2, OperationStatus::Failed, day);
        answers.remember(&refused);
        assert!(
            answers.get(Uuid::nil(), &key(2), &refused.fingerprint).is_none(),
            "failed: retryable by ops"
        );

        let expiring = op(3, OperationStatus::Succeeded, chrono::Duration::seconds(2));
        answers.remember(&expiring);
        assert!(
            answers.get(Uuid::nil(), &key(3), &expiring.fingerprint).is_none(),
            "within the margin"
        );
    }

    #[test]
    fn holds_at_most_two_generations() {
        let answers = FinalAnswers::default();
        let day = chrono::Duration::days(1);
        let first = op(0, OperationStatus::Succeeded, day);
        answers.remember(&first);
        for n in 1..=2 * GENERATION_SIZE {
            answers.remember(&op(n, OperationStatus::Succeeded, day));
        }
        assert!(answers.len() <= 2 * GENERATION_SIZE);
        assert!(
            answers.get(Uuid::nil(), &key(0), &first.fingerprint).is_none(),
            "the oldest went"
        );
        let last = op(2 * GENERATION_SIZE, OperationStatus::Succeeded, day);
        assert!(answers
            .get(Uuid::nil(), &key(2 * GENERATION_SIZE), &last.fingerprint)
            .is_some());
    }
}
