//! `PATCH /invoices/{id}/mark-paid`: UNPAID → PAID under `SELECT … FOR UPDATE`.
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sqlx::{PgConnection, PgExecutor};

use super::{Actor, Audit, Outcome};
use crate::{problem::Problem, text::Text, Error};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MarkPaid {
    pub payment_method: Text,
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
#[serde(rename_all = "camelCase")]
pub struct Invoice {
    pub id: String,
    pub amount_cents: i64,
    pub currency: String,
    pub status: String,
    pub payment_method: Option<String>,
    pub paid_at: Option<DateTime<Utc>>,
}

pub async fn mark_paid(
    conn: &mut PgConnection,
    actor: Actor,
    invoice_id: &str,
    req: &MarkPaid,
) -> Result<Outcome, Error> {
    let lock_started = std::time::Instant::now();
    let invoice = sqlx::query_as!(
        Invoice,
        "SELECT id, amount_cents, currency, status, payment_method, paid_at
         FROM invoices WHERE id = $1 FOR UPDATE",
        invoice_id,
    )
    .fetch_optional(&mut *conn)
    .await?;
    super::record_lock_wait("invoice.mark_paid", lock_started);
    let Some(invoice) = invoice else {
        return Ok(Outcome::refused(
            Problem::new("invoice-not-found", "Invoice not found", 404)
                .detail(format!("There is no invoice {invoice_id}.")),
        ));
    };
    if invoice.status == "PAID" {
        return Ok(Outcome::refused(
            Problem::new("invoice-already-paid", "Invoice already paid", 409).detail(format!(
                "Invoice {invoice_id} was already paid by another request."
            )),
        ));
    }
    let paid = sqlx::query_as!(
        Invoice,
        "UPDATE invoices SET status = 'PAID', payment_method = $2, paid_at = now(),
                paid_by_operation = $3, updated_at = now()
         WHERE id = $1 RETURNING id, amount_cents, currency, status, payment_method, paid_at",
        invoice_id,
        req.payment_method.as_str(),
        actor.operation.uuid(),
    )
    .fetch_one(&mut *conn)
    .await?;
    let audit = Audit::new(
        actor,
        "invoice.mark_paid",
        "invoice",
        invoice_id,
        json!({ "paymentMethod": req.payment_method, "amountCents": paid.amount_cents }),
    );
    Ok(Outcome::success(200, &json!({ "invoice": paid }))?.audited(audit))
}

/// Read model for `GET /invoices/{id}`.
pub async fn find<'e>(db: impl PgExecutor<'e>, id: &str) -> Result<Option<Invoice>, Error> {
    Ok(sqlx::query_as!(
        Invoice,
        "SELECT id, amount_cents, currency, status, payment_method, paid_at FROM invoices WHERE id = $1",
        id,
    )
    .fetch_optional(db)
    .await?)
}
