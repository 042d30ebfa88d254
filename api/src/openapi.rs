//! The OpenAPI 3.1 document, generated from the handlers' annotations; the
//! router is built from the same registrations (`utoipa_axum::routes!`), so
//! a served route cannot be missing from it.
//!
//! The document is meant to be exact, because a fuzzer (schemathesis, see
//! tests/it/schemathesis.rs) checks the server against it: what it declares
//! valid must be accepted, what it declares invalid must be refused, and
//! every answer must be documented. The constraints below therefore restate
//! the server's rules (the `Id` extractor, `require_text`, `Text`, the key
//! parser); keep them in step when those change.
use utoipa::{
    openapi::{
        schema::{Object, Schema},
        security::{HttpAuthScheme, HttpBuilder, SecurityScheme},
        RefOr,
    },
    IntoParams, Modify, OpenApi, ToResponse, ToSchema,
};

use crate::{
    schemas::{
        Application, Approve, Contract, Invoice, MarkPaid, MeterReading, Problem, RecordReading, Reject,
    },
    views::{Links, OperationView, ResponseView},
};

/// Characters allowed in a path id or a text field: anything but the
/// Unicode controls (general category Cc), which `idemq_core::text::Text`
/// refuses.
pub const NO_CONTROLS: &str = r"^[^\u0000-\u001F\u007F-\u009F]*$";
/// A required text field: no controls, and not blank (`str::trim` removes
/// the Unicode White_Space characters listed in the middle class).
pub const NOT_BLANK: &str = concat!(
    r"^[^\u0000-\u001F\u007F-\u009F]*",
    r"[^\u0000-\u0020\u007F-\u00A0\u1680\u2000-\u200A\u2028\u2029\u202F\u205F\u3000]",
    r"[^\u0000-\u001F\u007F-\u009F]*$"
);

#[derive(OpenApi)]
#[openapi(
    info(
        title = "idemq",
        description = "State-changing requests that are safe to repeat. Every mutating route needs \
            `Idempotency-Key`; a repeat gets the same operation, and once it finished the stored \
            response verbatim with `Idempotent-Replayed: true`. Errors are application/problem+json \
            with `type` = https://idemq.dev/problems/<slug> (see the Problem schema).\n\n\
            `503 service-unavailable` (with `Retry-After`) is answered only for a transient cause \
            (database unreachable, pool exhausted, serialization failure): retry the same request \
            with the same key. `500 internal-error` carries an `errorId` that is also in the \
            server's log; nothing was recorded."
    ),
    components(
        schemas(Problem, OperationView, ResponseView, Links, MarkPaid, Approve, Reject, RecordReading,
            Invoice, Application, Contract, MeterReading),
        responses(MutationWithIdBadRequest, MutationBadRequest, InvalidPath, Unauthorized, PayloadTooLarge,
            UnsupportedMediaType, KeyReused, RateLimited, InternalError, ServiceUnavailable)
    ),
    modifiers(&BearerAuth, &BodyConstraints)
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The limits the handlers put on the text fields of the request bodies
/// (`require_text` in routes/*.rs, `Text` in core), which serde's derive
/// cannot state: (schema, property, max characters, must not be blank).
const TEXT_FIELDS: &[(&str, &str, usize, bool)] = &[
    ("MarkPaid", "paymentMethod", 100, true),
    ("Reject", "reason", 1000, true),
    ("Approve", "note", 1000, false),
    ("RecordReading", "contractId", 200, true),
];

struct BodyConstraints;

impl Modify for BodyConstraints {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let Some(components) = openapi.components.as_mut() else {
            return;
        };
        for &(schema, property, max, not_blank) in TEXT_FIELDS {
            let Some(RefOr::T(Schema::Object(object))) = components.schemas.get_mut(schema) else {
                continue;
            };
            let Some(RefOr::T(Schema::Object(field))) = object.properties.get_mut(property) else {
                continue;
            };
            constrain_text(field, max, not_blank);
        }
    }
}

fn constrain_text(field: &mut Object, max: usize, not_blank: bool) {
    field.max_length = Some(max);
    if not_blank {
        field.min_length = Some(1);
        field.pattern = Some(NOT_BLANK.into());
    } else {
        field.pattern = Some(NO_CONTROLS.into());
    }
}

/// Headers of every mutating route.
#[derive(IntoParams)]
#[into_params(parameter_in = Header)]
pub struct IdempotencyKeyHeader {
    /// 1–255 visible ASCII bytes; `"abc"` (structured field, `\"` and `\\` escapes) and `abc`
    /// are the same key (the pattern: a bare key does not start with a quote).
    /// Missing → 400 idempotency-key-missing; empty, too long or other characters → 400
    /// idempotency-key-empty / -too-long / -invalid-characters. (Declared required even when
    /// the server runs with IDEMQ_REQUIRE_IDEMPOTENCY_KEY=false, a rollback switch that
    /// clients must not rely on.)
    #[param(
        rename = "Idempotency-Key",
        min_length = 1,
        pattern = r#"^(?:[!#-~][!-~]{0,254}|"(?:[!#-\[\]-~]|\\["\\]){1,255}")$"#
    )]
    pub idempotency_key: String,
}

#[derive(IntoParams)]
#[into_params(parameter_in = Header)]
pub struct PreferHeader {
    /// `wait=N` (seconds, at most 30): answer when the operation finishes or N passes.
    /// Other preferences are ignored.
    // Not `Option`: that would declare the header nullable.
    #[param(rename = "Prefer", required = false)]
    pub prefer: String,
}

/// The `{id}` of a route: what the `Id` extractor accepts; anything else is
/// 400 invalid-path (an id nobody has is 404).
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
pub struct IdPath {
    /// 1–200 characters, no control characters (U+0000–U+001F, U+007F–U+009F).
    #[param(
        min_length = 1,
        max_length = 200,
        pattern = r"^[^\u0000-\u001F\u007F-\u009F]*$"
    )]
    pub id: String,
}

// Problem answers shared by the routes. Each is a component response that
// names the problem `type`s it carries.

/// `idempotency-key-missing`, `idempotency-key-empty`, `idempotency-key-too-long`,
/// `idempotency-key-invalid-characters`, `invalid-body` (not JSON, not an object, wrong
/// types, unknown or missing fields, a text field blank, too long or with control
/// characters), or `invalid-path` (the id). Nothing was recorded.
#[derive(ToResponse)]
#[response(content_type = "application/problem+json")]
pub struct MutationWithIdBadRequest(pub Problem);

/// `idempotency-key-missing`, `idempotency-key-empty`, `idempotency-key-too-long`,
/// `idempotency-key-invalid-characters` or `invalid-body` (not JSON, not an object, wrong
/// types, unknown or missing fields, a text field blank, too long or with control
/// characters). Nothing was recorded.
#[derive(ToResponse)]
#[response(content_type = "application/problem+json")]
pub struct MutationBadRequest(pub Problem);

/// `invalid-path`: the id is empty, longer than 200 characters or has control characters.
#[derive(ToResponse)]
#[response(content_type = "application/problem+json")]
pub struct InvalidPath(pub Problem);

/// `unauthorized`: no bearer token, or one the server does not know.
#[derive(ToResponse)]
#[response(content_type = "application/problem+json", headers(("WWW-Authenticate" = String, description = "`Bearer`")))]
pub struct Unauthorized(pub Problem);

/// `payload-too-large`: the body is over IDEMQ_BODY_LIMIT_BYTES. Nothing was recorded.
#[derive(ToResponse)]
#[response(content_type = "application/problem+json")]
pub struct PayloadTooLarge(pub Problem);

/// `unsupported-media-type`: a body that is not declared `application/json`. Nothing was
/// recorded.
#[derive(ToResponse)]
#[response(content_type = "application/problem+json")]
pub struct UnsupportedMediaType(pub Problem);

/// `idempotency-key-reused`: the key belongs to an earlier request with another method,
/// path or body. Nothing changed.
#[derive(ToResponse)]
#[response(content_type = "application/problem+json")]
pub struct KeyReused(pub Problem);

/// `rate-limited`: the principal's (or, before authentication, the client IP's) budget of
/// this route class is spent. Nothing was recorded.
#[derive(ToResponse)]
#[response(content_type = "application/problem+json", headers(
    ("Retry-After" = u64, description = "Whole seconds (≥ 1) until a request would pass"),
    ("RateLimit-Policy" = String, description = "draft-ietf-httpapi-ratelimit-headers-11, e.g. `\"sensitive\";q=10;w=60`"),
    ("RateLimit" = String, description = "e.g. `\"sensitive\";r=0;t=6`")))]
pub struct RateLimited(pub Problem);

/// `internal-error`: a failure that retrying will not fix; `errorId` names the server's log
/// line. Nothing was recorded.
#[derive(ToResponse)]
#[response(content_type = "application/problem+json")]
pub struct InternalError(pub Problem);

/// `service-unavailable`: a transient cause (database unreachable, pool exhausted,
/// serialization failure). Nothing was recorded: retry the same request, same key.
#[derive(ToResponse)]
#[response(content_type = "application/problem+json", headers(("Retry-After" = u64, description = "Seconds to wait before retrying")))]
pub struct ServiceUnavailable(pub Problem);

#[derive(ToSchema)]
pub struct InvoiceBody {
    pub invoice: Invoice,
}

#[derive(ToSchema)]
pub struct ApplicationBody {
    pub application: Application,
}

#[derive(ToSchema)]
pub struct ApprovalBody {
    pub application: Application,
    pub contract: Option<Contract>,
}

#[derive(ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MeterReadingBody {
    pub meter_reading: MeterReading,
}

#[derive(ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MeterReadingList {
    pub contract_id: String,
    pub meter_readings: Vec<MeterReading>,
}

/// The document as served (rendered once at start).
#[derive(Clone)]
pub struct DocumentJson(pub std::sync::Arc<str>);

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "health", operation_id = "getOpenApiDocument",
    responses((status = 200, description = "The OpenAPI 3.1 document", content_type = "application/json")))]
pub async fn document(axum::Extension(doc): axum::Extension<DocumentJson>) -> axum::response::Response {
    crate::idempotency::json_response(axum::http::StatusCode::OK, doc.0.to_string())
}
