//! The API's error type: each variant knows its status and problem `type`.
use axum::{
    http::{header, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
};
use idemq_core::{error::ErrorClass, key::KeyError, problem::Problem};

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("missing or invalid bearer token")]
    Unauthorized,
    #[error("Idempotency-Key header is missing")]
    KeyMissing,
    #[error("invalid Idempotency-Key: {0:?}")]
    KeyInvalid(KeyError),
    #[error("Idempotency-Key reused with a different request")]
    KeyReused,
    #[error("invalid body: {0}")]
    InvalidBody(String),
    #[error("invalid path parameter: {0}")]
    InvalidPath(String),
    #[error("body too large")]
    PayloadTooLarge,
    #[error("body is not declared JSON")]
    UnsupportedMediaType,
    #[error("not found: {0}")]
    NotFound(String),
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("the database cannot store a value of the request: {0}")]
    Unstorable(String),
    #[error("database unavailable: {0}")]
    Unavailable(String),
    #[error("internal error: {0}")]
    Internal(String),
}

/// The answer follows the core's one classifier: 503 only for what passes
/// by itself, 400 for a value the database refuses, 500 for the rest.
impl From<idemq_core::Error> for ApiError {
    fn from(e: idemq_core::Error) -> Self {
        match e.class() {
            ErrorClass::Transient => ApiError::Unavailable(e.to_string()),
            ErrorClass::InvalidInput => ApiError::Unstorable(e.to_string()),
            ErrorClass::Internal | ErrorClass::Inconsistent => ApiError::Internal(e.to_string()),
        }
    }
}

impl ApiError {
    pub fn problem(&self) -> Problem {
        match self {
            ApiError::Unauthorized => Problem::new("unauthorized", "Unauthorized", 401)
                .detail("Send a valid token as `Authorization: Bearer <token>`."),
            ApiError::KeyMissing => Problem::new("idempotency-key-missing", "Idempotency-Key is missing", 400)
                .detail("This request changes state and must carry an Idempotency-Key header."),
            ApiError::KeyInvalid(k) => Problem::new(k.slug(), "Idempotency-Key is invalid", 400).detail(k.detail()),
            ApiError::KeyReused => Problem::new(
                "idempotency-key-reused",
                "Idempotency-Key was used with a different request",
                422,
            )
            .detail("This key belongs to an earlier request with another method, path or body. Use a new key."),
            ApiError::InvalidBody(d) => Problem::new("invalid-body", "The request body is invalid", 400).detail(d),
            ApiError::InvalidPath(d) => Problem::new("invalid-path", "A path parameter is invalid", 400).detail(d),
            ApiError::PayloadTooLarge => Problem::new("payload-too-large", "The request body is too large", 413),
            ApiError::UnsupportedMediaType => {
                Problem::new("unsupported-media-type", "The request body is not JSON", 415)
                    .detail("Send the body as `Content-Type: application/json`.")
            }
            ApiError::NotFound(d) => Problem::new("not-found", "Not found", 404).detail(d),
            ApiError::MethodNotAllowed => Problem::new("method-not-allowed", "Method not allowed", 405),
            // Reached only when the path and body rules (`text::Text`) let
            // through a value the database refuses, e.g. a number out of range.
            ApiError::Unstorable(_) => Problem::new("invalid-body", "The request body is invalid", 400).detail(
                "The database cannot store a value of this request. Nothing was recorded; correct the request.",
            ),
            ApiError::Unavailable(_) => Problem::new("service-unavailable", "Service temporarily unavailable", 503)
                .detail("The database is unavailable for a moment. Retry the same request after Retry-After; a change with the same Idempotency-Key, which applies it at most once."),
            // No advice to retry: the same request is likely to fail the same way.
            ApiError::Internal(_) => Problem::new("internal-error", "Internal error", 500).detail(
                "The request failed with an unexpected error. Report the errorId to the operator of this service.",
            ),
        }
    }
}

/// A problem+json response.
pub fn problem_response(problem: &Problem) -> Response {
    let status = StatusCode::from_u16(problem.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static(idemq_core::problem::CONTENT_TYPE),
        )],
        problem.to_json(),
    )
        .into_response()
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut problem = self.problem();
        match &self {
            ApiError::Unavailable(e) => tracing::warn!(error = %e, "answering 503"),
            ApiError::Unstorable(e) => tracing::info!(error = %e, "rejected: the database refused a value"),
            ApiError::Internal(e) => {
                let error_id = uuid::Uuid::now_v7().to_string();
                tracing::error!(error_id, error = %e, "answering 500");
                problem.error_id = Some(error_id);
            }
            ApiError::KeyMissing => {
                metrics::counter!(idemq_core::telemetry::KEY_MISSING).increment(1);
                tracing::info!("rejected: Idempotency-Key missing")
            }
            ApiError::KeyInvalid(k) => {
                metrics::counter!(idemq_core::telemetry::KEY_INVALID).increment(1);
                tracing::info!(problem = k.slug(), "rejected: Idempotency-Key invalid")
            }
            ApiError::KeyReused => {
                metrics::counter!(idemq_core::telemetry::KEY_REUSED).increment(1);
                tracing::info!("rejected: Idempotency-Key reused with another request")
            }
            _ => {}
        }
        let mut response = problem_response(&problem);
        if let ApiError::Unavailable(_) = self {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if let ApiError::Unauthorized = self {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}
