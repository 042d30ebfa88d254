//! The idempotency layer of the request path: the key header, `Prefer:
//! wait`, recording the operation, and the answer (new, replayed, waited).
use std::time::Duration;

use axum::{
    body::Bytes,
    http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
};
use idemq_core::{
    fingerprint::Fingerprint,
    idempotency::{self, NextAction},
    key::IdempotencyKey,
    operation::{Operation, OperationId, OperationKind},
    principal::Principal,
};
use serde::de::DeserializeOwned;
use serde_json::{json, Map, Value};

use crate::{
    error::ApiError,
    record_batch::NewRecord,
    waiters::{Registration, MAX_WAIT},
    AppState,
};

pub const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");
pub const IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");
pub const PREFER: HeaderName = HeaderName::from_static("prefer");
pub const PREFERENCE_APPLIED: HeaderName = HeaderName::from_static("preference-applied");

/// The key header: `Ok(None)` when absent.
pub fn idempotency_key(headers: &HeaderMap) -> Result<Option<IdempotencyKey>, ApiError> {
    match headers.get(IDEMPOTENCY_KEY) {
        None => Ok(None),
        Some(v) => IdempotencyKey::parse(v.as_bytes())
            .map(Some)
            .map_err(ApiError::KeyInvalid),
    }
}

/// `Prefer: wait=N` (RFC 7240) in seconds; N over 30 is treated as 30.
pub fn prefer_wait(headers: &HeaderMap) -> Option<Duration> {
    headers
        .get_all(PREFER)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split([',', ';']))
        .filter_map(|pref| {
            let (name, value) = pref.split_once('=')?;
            name.trim()
                .eq_ignore_ascii_case("wait")
                .then(|| wait_seconds(value.trim().trim_matches('"')))
                .flatten()
        })
        .next()
}

/// A delta-seconds value; one too large for a u64 is also over 30 s, so it
/// is treated as 30 s like any other, not ignored.
fn wait_seconds(value: &str) -> Option<Duration> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let secs = value.parse::<u64>().unwrap_or(u64::MAX);
    Some(Duration::from_secs(secs).min(MAX_WAIT))
}

/// Parses the (already size-limited) body as `T`; an absent or blank body
/// ([`crate::extract::is_blank`]) is `{}`.
/// Returns the validated value and its JSON for the fingerprint and the job.
pub fn parse_body<T: DeserializeOwned + serde::Serialize>(body: &Bytes) -> Result<(T, Value), ApiError> {
    let value: Value = if crate::extract::is_blank(body) {
        Value::Object(Map::new())
    } else {
        serde_json::from_slice(body).map_err(|e| ApiError::InvalidBody(format!("not valid JSON: {e}")))?
    };
    // serde reads a struct from an array too (`["card"]`): only an object is a body.
    if !value.is_object() {
        return Err(ApiError::InvalidBody("the body must be a JSON object".into()));
    }
    let parsed: T = serde_json::from_value(value).map_err(|e| ApiError::InvalidBody(e.to_string()))?;
    // The normalised body (defaults applied, nothing unknown) is what is kept.
    let normalised = serde_json::to_value(&parsed).map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok((parsed, normalised))
}

/// A mutating request after authentication, ready to be recorded.
pub struct Submission<'a> {
    pub kind: OperationKind,
    pub method: &'static str,
    /// The route template, e.g. `/invoices/{id}/mark-paid`.
    pub route: &'static str,
    pub params: &'a [(&'static str, &'a str)],
}

/// Steps 4–7 after the extractors (the key's, `extract::Key`, and the
/// body's, `extract::LimitedBody`): body, fingerprint, record + enqueue, answer.
pub async fn submit<T: DeserializeOwned + serde::Serialize>(
    state: &AppState,
    principal: &Principal,
    key: IdempotencyKey,
    headers: &HeaderMap,
    submission: Submission<'_>,
    body: &Bytes,
    validate: impl FnOnce(&T) -> Result<(), String>,
) -> Result<Response, ApiError> {
    let (parsed, body_value) = parse_body::<T>(body)?;
    validate(&parsed).map_err(ApiError::InvalidBody)?;
    let fingerprint = Fingerprint::compute(
        submission.method,
        submission.route,
        submission.params,
        &body_value,
    );
    let params: Map<String, Value> = submission
        .params
        .iter()
        .map(|(k, v)| ((*k).to_owned(), Value::String((*v).to_owned())))
        .collect();
    let wait = prefer_wait(headers);
    if let Some(kept) = state.final_answers.get(principal.id(), &key, &fingerprint) {
        tracing::Span::current().record("operation", kept.operation.to_string());
        tracing::info!(operation = %kept.operation, status = "succeeded", "IDEMPOTENT replay");
        metrics::counter!(idemq_core::telemetry::REPLAYS).increment(1);
        return Ok(mark(kept.response(), true, wait));
    }
    let request = json!({ "params": params, "body": body_value });
    let id = OperationId::new();
    // A waiting request listens before its operation exists (see `Waiters::expect`).
    let expected = wait.map(|_| state.waiters.expect(id));
    let batched = state
        .record_batch
        .record(NewRecord {
            id,
            announce_finish: wait.is_some(),
            principal: principal.clone(),
            key,
            fingerprint,
            kind: submission.kind,
            request,
        })
        .await?;
    let next = match batched {
        (_, Some(next)) => next,
        (record, None) => {
            let mut conn = state.records.acquire().await?;
            let next = idempotency::begin_on(&mut conn, record.as_new()).await?;
            // Committed before the answer (behind a pooler, here), and the
            // connection kept for the next request.
            state.records.done(conn).await?;
            next
        }
    };
    match next {
        NextAction::Started(op) => {
            state.notifier.job_pushed(op.kind.queue(), &op.job_id);
            tracing::Span::current().record("operation", op.id.to_string());
            tracing::info!(operation = %op.id, kind = op.kind.as_str(), "operation accepted");
            answer(state, principal, op, false, wait, expected).await
        }
        NextAction::Existing(op) => {
            tracing::Span::current().record("operation", op.id.to_string());
            tracing::info!(operation = %op.id, status = op.status.as_str(), "IDEMPOTENT replay");
            metrics::counter!(idemq_core::telemetry::REPLAYS).increment(1);
            state.final_answers.remember(&op);
            drop(expected);
            answer(state, principal, op, true, wait, None).await
        }
        NextAction::KeyReused(op) => {
            tracing::info!(operation = %op.id, "key reused with a different fingerprint");
            Err(ApiError::KeyReused)
        }
    }
}

/// The answer for an operation: its final response if finished (the
/// stored bytes), else 202 with the operation. `replayed` adds
/// `Idempotent-Replayed: true`; `wait` holds the answer for completion.
pub async fn answer(
    state: &AppState,
    principal: &Principal,
    op: Operation,
    replayed: bool,
    wait: Option<Duration>,
    expected: Option<Registration<'_>>,
) -> Result<Response, ApiError> {
    let op = match wait {
        Some(w) if !op.status.is_final() => state
            .waiters
            .wait_for(
                &state.pool,
                principal,
                op.id,
                w,
                expected.map(|r| (r, op.clone())),
            )
            .await?
            .unwrap_or(op),
        _ => op,
    };
    let response = match &op.response {
        Some(stored) => (
            StatusCode::from_u16(stored.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            [(header::CONTENT_TYPE, header_value(&stored.content_type))],
            stored.body.clone(),
        )
            .into_response(),
        None => {
            let mut r = json_response(StatusCode::ACCEPTED, crate::views::operation_json(&op)?);
            r.headers_mut()
                .insert(header::LOCATION, header_value(&crate::views::location(op.id)));
            r
        }
    };
    Ok(mark(response, replayed, wait))
}

/// `Idempotent-Replayed: true` on a replay, `Preference-Applied` when the
/// request asked to wait.
fn mark(mut response: Response, replayed: bool, wait: Option<Duration>) -> Response {
    if replayed {
        response
            .headers_mut()
            .insert(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
    }
    if let Some(w) = wait {
        response
            .headers_mut()
            .insert(PREFERENCE_APPLIED, header_value(&format!("wait={}", w.as_secs())));
    }
    response
}

pub fn json_response(status: StatusCode, body: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))],
        body,
    )
        .into_response()
}

pub fn header_value(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static("application/octet-stream"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(prefer: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(PREFER, HeaderValue::from_str(prefer).unwrap());
        h
    }

    #[test]
    fn prefer_wait_is_parsed_and_capped() {
        assert_eq!(prefer_wait(&headers("wait=5")), Some(Duration::from_secs(5)));
        assert_eq!(
            prefer_wait(&headers("respond-async, wait=10")),
            Some(Duration::from_secs(10))
        );
        assert_eq!(prefer_wait(&headers("wait=600")), Some(MAX_WAIT));
        assert_eq!(prefer_wait(&headers("return=minimal")), None);
        assert_eq!(prefer_wait(&HeaderMap::new()), None);
        assert_eq!(
            prefer_wait(&headers("wait=99999999999999999999999")),
            Some(MAX_WAIT)
        );
        assert_eq!(prefer_wait(&headers("wait=-1")), None);
        assert_eq!(prefer_wait(&headers("wait=+5")), None);
    }

    mod properties {
        use proptest::prelude::*;

        use super::*;

        /// Preferences that are not `wait`.
        fn other() -> impl Strategy<Value = String> {
            prop_oneof![
                Just("respond-async".to_owned()),
                Just("return=minimal".to_owned()),
                Just("return=representation".to_owned()),
                Just("handling=lenient".to_owned()),
                "[a-vx-z][a-z-]{0,10}(=[a-z0-9]{1,5})?",
            ]
        }

        fn ows() -> impl Strategy<Value = String> {
            "[ \t]{0,2}"
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(4096))]

            /// `wait=N` is N seconds up to 30, whatever N, its case, quoting,
            /// spacing and the preferences around it.
            #[test]
            fn wait_is_honoured_and_capped(
                digits in "[0-9]{1,40}",
                name in "(?i:wait)",
                quoted in any::<bool>(),
                before in proptest::collection::vec(other(), 0..3),
                after in proptest::collection::vec(other(), 0..3),
                (s1, s2, s3) in (ows(), ows(), ows()),
            ) {
                let value = if quoted { format!("\"{digits}\"") } else { digits.clone() };
                let mut prefs = before.clone();
                prefs.push(format!("{s1}{name}{s2}={s3}{value}"));
                prefs.extend(after.iter().cloned());
                let header = prefs.join(", ");
                let expected = digits
                    .parse::<u64>()
                    .map(|n| Duration::from_secs(n).min(MAX_WAIT))
                    .unwrap_or(MAX_WAIT);
                prop_assert_eq!(prefer_wait(&headers(&header)), Some(expected), "{}", header);
            }

            /// Without `wait`, nothing is waited for.
            #[test]
            fn no_wait_without_wait(prefs in proptest::collection::vec(other(), 0..5)) {
                prop_assert_eq!(prefer_wait(&headers(&prefs.join(", "))), None);
            }

            /// Any header value: no panic, never more than 30 s.
            #[test]
            fn any_header_is_safe(raw in proptest::collection::vec(0x20u8..0x7f, 0..80)) {
                let value = HeaderValue::from_bytes(&raw).unwrap();
                let mut h = HeaderMap::new();
                h.insert(PREFER, value);
                if let Some(w) = prefer_wait(&h) {
                    prop_assert!(w <= MAX_WAIT);
                }
            }
        }
    }
}
