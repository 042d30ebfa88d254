//! The OpenAPI 3.1 document, generated from the handlers' annotations; the
//! router is built from the same registrations (`utoipa_axum::routes!`), so
//! a served route cannot be missing from it.
use idemq_core::{
    business::{
        approvals::{Application, Approve, Contract, Reject},
        meter_readings::{MeterReading, RecordReading},
        payments::{Invoice, MarkPaid},
    },
    operation::{Links, OperationView, ResponseView},
    problem::Problem,
};
use serde::Serialize;
use utoipa::{
    openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme},
    IntoParams, Modify, OpenApi, ToSchema,
};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "idemq",
        description = "State-changing requests that are safe to repeat. Every mutating route needs \
            `Idempotency-Key`; a repeat gets the same operation, and once it finished the stored \
            response verbatim with `Idempotent-Replayed: true`. Errors are application/problem+json \
            with `type` = https://idemq.dev/problems/<slug> (see the Problem schema)."
    ),
    components(schemas(Problem, OperationView, ResponseView, Links, MarkPaid, Approve, Reject, RecordReading,
        Invoice, Application, Contract, MeterReading)),
    modifiers(&BearerAuth)
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

/// Headers of every mutating route.
#[derive(IntoParams)]
#[into_params(parameter_in = Header)]
pub struct IdempotencyKeyHeader {
    /// 1–255 visible ASCII bytes; `"abc"` (structured field) and `abc` are the same key.
    /// Required unless IDEMQ_REQUIRE_IDEMPOTENCY_KEY=false.
    #[param(rename = "Idempotency-Key")]
    pub idempotency_key: Option<String>,
}

#[derive(IntoParams)]
#[into_params(parameter_in = Header)]
pub struct PreferHeader {
    /// `wait=N` (seconds, at most 30): answer when the operation finishes or N passes.
    #[param(rename = "Prefer")]
    pub prefer: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct InvoiceBody {
    pub invoice: Invoice,
}

#[derive(Serialize, ToSchema)]
pub struct ApplicationBody {
    pub application: Application,
}

#[derive(Serialize, ToSchema)]
pub struct ApprovalBody {
    pub application: Application,
    pub contract: Option<Contract>,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MeterReadingBody {
    pub meter_reading: MeterReading,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MeterReadingList {
    pub contract_id: String,
    pub meter_readings: Vec<MeterReading>,
}

/// The document as served (rendered once at start).
#[derive(Clone)]
pub struct DocumentJson(pub std::sync::Arc<str>);

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "health",
    responses((status = 200, description = "The OpenAPI 3.1 document", content_type = "application/json")))]
pub async fn document(axum::Extension(doc): axum::Extension<DocumentJson>) -> axum::response::Response {
    crate::idempotency::json_response(axum::http::StatusCode::OK, doc.0.to_string())
}
