//! Extractors whose rejections are problem+json (axum's are plain text).
use axum::{
    body::Bytes,
    extract::{FromRequest, FromRequestParts, Path, Request},
    http::{header::CONTENT_TYPE, request::Parts, HeaderValue, StatusCode},
};

use idemq_core::text::Text;

use idemq_core::key::IdempotencyKey;

use crate::{error::ApiError, AppState};

/// Longest id accepted in a path.
pub const MAX_ID_LEN: usize = 200;

/// The request body within `DefaultBodyLimit`; over it → 413. A body that
/// is not blank must be declared JSON (`application/json` or
/// `application/*+json`), else 415: the document promises only JSON.
pub struct LimitedBody(pub Bytes);

/// Whether `body` is empty or only JSON's whitespace (RFC 8259, section 2:
/// space, tab, line feed, carriage return): such a body is `{}`. Not
/// `u8::is_ascii_whitespace`, which also counts a form feed: a body of one
/// form feed was taken for no body, where it is invalid JSON.
pub fn is_blank(body: &[u8]) -> bool {
    body.iter().all(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
}

fn is_json(content_type: &HeaderValue) -> bool {
    let Ok(value) = content_type.to_str() else {
        return false;
    };
    let media_type = value
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    media_type == "application/json"
        || (media_type.starts_with("application/") && media_type.ends_with("+json"))
}

impl<S: Send + Sync> FromRequest<S> for LimitedBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let json = req.headers().get(CONTENT_TYPE).is_some_and(is_json);
        let body = Bytes::from_request(req, state).await.map_err(|r| {
            if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge
            } else {
                ApiError::InvalidBody(r.body_text())
            }
        })?;
        if !json && !is_blank(&body) {
            return Err(ApiError::UnsupportedMediaType);
        }
        Ok(LimitedBody(body))
    }
}

/// The single `{id}` of a route: 1 to `MAX_ID_LEN` characters of `Text` (no
/// control characters), refused with 400 `invalid-path` before any database
/// work.
pub struct Id(pub String);

impl<S: Send + Sync> FromRequestParts<S> for Id {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Path(id) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|e| ApiError::InvalidPath(e.body_text()))?;
        // Characters, not bytes: the OpenAPI document (maxLength) can only
        // count characters.
        if id.is_empty() || id.chars().count() > MAX_ID_LEN {
            return Err(ApiError::InvalidPath(format!(
                "an id is 1 to {MAX_ID_LEN} characters long"
            )));
        }
        let id = Text::parse(id).map_err(|e| ApiError::InvalidPath(format!("the id: {e}")))?;
        Ok(Id(id.into_string()))
    }
}

/// Step 3 of the request path: the `Idempotency-Key` header. Missing → 400
/// `idempotency-key-missing` (or, with `IDEMQ_REQUIRE_IDEMPOTENCY_KEY=false`,
/// a key the server generates and logs); invalid → 400
/// `idempotency-key-invalid`. A header extractor, so it runs before the
/// body's (step 4): a bad key is refused whatever the body.
pub struct Key(pub IdempotencyKey);

impl FromRequestParts<AppState> for Key {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        match crate::idempotency::idempotency_key(&parts.headers)? {
            Some(key) => Ok(Key(key)),
            None if !state.require_idempotency_key => {
                let key = IdempotencyKey::generated();
                tracing::info!(key = %key, "no Idempotency-Key and the requirement is off: generated one");
                Ok(Key(key))
            }
            None => Err(ApiError::KeyMissing),
        }
    }
}
