//! Extractors whose rejections are problem+json (axum's are plain text).
use axum::{
    body::Bytes,
    extract::{FromRequest, FromRequestParts, Path, Request},
    http::{request::Parts, StatusCode},
};

use idemq_core::text::Text;

use crate::error::ApiError;

/// Longest id accepted in a path.
pub const MAX_ID_LEN: usize = 200;

/// The request body within `DefaultBodyLimit`; over it → 413.
pub struct LimitedBody(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for LimitedBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        Bytes::from_request(req, state)
            .await
            .map(LimitedBody)
            .map_err(|r| {
                if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::PayloadTooLarge
                } else {
                    ApiError::InvalidBody(r.body_text())
                }
            })
    }
}

/// The single `{id}` of a route: 1 to `MAX_ID_LEN` bytes of `Text` (no
/// control characters), refused with 400 `invalid-path` before any database
/// work.
pub struct Id(pub String);

impl<S: Send + Sync> FromRequestParts<S> for Id {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Path(id) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|e| ApiError::InvalidPath(e.body_text()))?;
        if id.is_empty() || id.len() > MAX_ID_LEN {
            return Err(ApiError::InvalidPath(format!(
                "an id is 1 to {MAX_ID_LEN} bytes long"
            )));
        }
        let id = Text::parse(id).map_err(|e| ApiError::InvalidPath(format!("the id: {e}")))?;
        Ok(Id(id.into_string()))
    }
}
