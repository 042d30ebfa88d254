//! The OpenAPI schemas of the domain types that requests and answers carry.
//! The types live in `idemq_core` (the jobs read and write them too), which
//! knows no OpenAPI; each schema here describes one of them under the same
//! name, field for field, with the same serde attributes. The test below
//! fails when a core type gains, loses or renames a field its schema does
//! not.
use chrono::{DateTime, Utc};
use utoipa::ToSchema;

/// RFC 9457 problem details. `type` is `https://idemq.dev/problems/` + one of:
/// unauthorized, idempotency-key-missing, idempotency-key-empty,
/// idempotency-key-too-long, idempotency-key-invalid-characters,
/// idempotency-key-reused, invalid-body, invalid-path, payload-too-large,
/// unsupported-media-type,
/// not-found, method-not-allowed, rate-limited, service-unavailable,
/// internal-error; stored by jobs: invoice-not-found, invoice-already-paid,
/// application-not-found, application-not-pending, contract-not-found,
/// reading-below-last, operation-failed.
#[derive(ToSchema)]
pub struct Problem {
    #[serde(rename = "type")]
    #[schema(example = "https://idemq.dev/problems/idempotency-key-missing")]
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

// Each: the core type of the same name in `idemq_core::business`.
#[derive(ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MarkPaid {
    pub payment_method: String,
}

#[derive(ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Invoice {
    pub id: String,
    pub amount_cents: i64,
    pub currency: String,
    pub status: String,
    pub payment_method: Option<String>,
    pub paid_at: Option<DateTime<Utc>>,
}

#[derive(ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Approve {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

#[derive(ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Reject {
    pub reason: String,
}

#[derive(ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Application {
    pub id: String,
    pub applicant: String,
    pub room: String,
    pub status: String,
    pub version: i32,
    pub note: Option<String>,
    pub reason: Option<String>,
    pub decided_at: Option<DateTime<Utc>>,
}

#[derive(ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Contract {
    pub id: String,
    pub application_id: Option<String>,
    pub created_at: DateTime<Utc>,
}

#[derive(ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RecordReading {
    pub contract_id: String,
    /// A JSON number ≥ 0; equal to the last reading is allowed, below it is refused (422).
    #[schema(minimum = 0)]
    pub reading: f64,
}

#[derive(ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MeterReading {
    pub id: String,
    pub contract_id: String,
    pub reading: f64,
    pub recorded_at: DateTime<Utc>,
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use idemq_core::{
        business::{approvals, meter_readings, payments},
        problem,
        text::Text,
    };
    use serde::Serialize;
    use utoipa::{
        openapi::{RefOr, Schema},
        PartialSchema,
    };

    use super::*;

    fn properties<T: PartialSchema>() -> BTreeSet<String> {
        match T::schema() {
            RefOr::T(Schema::Object(o)) => o.properties.keys().cloned().collect(),
            _ => panic!("not an object schema"),
        }
    }

    /// The fields a value serialises to (every optional field set).
    fn fields(value: impl Serialize) -> BTreeSet<String> {
        match serde_json::to_value(value).unwrap() {
            serde_json::Value::Object(m) => m.keys().cloned().collect(),
            other => panic!("not an object: {other}"),
        }
    }

    fn text(s: &str) -> Text {
        serde_json::from_value(serde_json::json!(s)).unwrap()
    }

    #[test]
    fn each_schema_has_the_fields_of_its_core_type() {
        let now = chrono::Utc::now();
        let mut p = problem::Problem::new("x", "X", 500).detail("d");
        p.error_id = Some("e".into());
        assert_eq!(properties::<Problem>(), fields(p));
        assert_eq!(
            properties::<MarkPaid>(),
            fields(payments::MarkPaid {
                payment_method: text("card")
            })
        );
        assert_eq!(
            properties::<Invoice>(),
            fields(payments::Invoice {
                id: "i".into(),
                amount_cents: 1,
                currency: "EUR".into(),
                status: "PAID".into(),
                payment_method: Some("card".into()),
                paid_at: Some(now),
            })
        );
        assert_eq!(
            properties::<Approve>(),
            fields(approvals::Approve {
                note: Some(text("n"))
            })
        );
        assert_eq!(
            properties::<Reject>(),
            fields(approvals::Reject { reason: text("r") })
        );
        assert_eq!(
            properties::<Application>(),
            fields(approvals::Application {
                id: "a".into(),
                applicant: "x".into(),
                room: "r".into(),
                status: "PENDING".into(),
                version: 1,
                note: Some("n".into()),
                reason: Some("r".into()),
                decided_at: Some(now),
            })
        );
        assert_eq!(
            properties::<Contract>(),
            fields(approvals::Contract {
                id: "c".into(),
                application_id: Some("a".into()),
                created_at: now,
            })
        );
        assert_eq!(
            properties::<RecordReading>(),
            fields(meter_readings::RecordReading {
                contract_id: text("c"),
                reading: 1.into(),
            })
        );
        assert_eq!(
            properties::<MeterReading>(),
            fields(meter_readings::MeterReading {
                id: "1".into(),
                contract_id: "c".into(),
                reading: 1.into(),
                recorded_at: now,
            })
        );
    }
}
