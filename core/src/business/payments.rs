//! `PATCH /invoices/{id}/mark-paid`: UNPAID → PAID under the invoice's row lock.
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
    // The common case in one statement: the update takes the row lock and,
    // if another transaction held it, re-checks `status` on the row as that
    // one left it. No row: the invoice is missing or already paid, and the
    // locking read below tells which.
    let lock_started = std::time::Instant::now();
    let paid = sqlx::query_as!(
        Invoice,
        "UPDATE invoices SET status = 'PAID', payment_method = $2, paid_at = now(),
                paid_by_operation = $3, updated_at = now()
         WHERE id = $1 AND status = 'UNPAID'
         RETURNING id, amount_cents, currency, status, payment_method, paid_at",
        invoice_id,
        req.payment_method.as_str(),
        actor.operation.uuid(),
    )
    .fetch_optional(&mut *conn)
    .await?;
    super::record_lock_wait("invoice.mark_paid", lock_started);
    let Some(paid) = paid else {
        return refusal(conn, invoice_id).await;
    };
    let audit = Audit::new(
        actor,
        "invoice.mark_paid",
        "invoice",
        invoice_id,
        json!({ "paymentMethod": req.payment_method, "amountCents": paid.amount_cents }),
    );
    Ok(Outcome::success(200, &json!({ "invoice": paid }))?.audited(audit))
}

/// Why an invoice could not be marked paid: it does not exist, or it is
/// paid already (read under the row lock, so the answer holds until the
/// job's transaction ends).
async fn refusal(conn: &mut PgConnection, invoice_id: &str) -> Result<Outcome, Error> {
    let status = sqlx::query_scalar!("SELECT status FROM invoices WHERE id = $1 FOR UPDATE", invoice_id)
        .fetch_optional(&mut *conn)
        .await?;
    Ok(match status.as_deref() {
        None => Outcome::refused(
            Problem::new("invoice-not-found", "Invoice not found", 404)
                .detail(format!("There is no invoice {invoice_id}.")),
        ),
        Some(_) => Outcome::refused(
            Problem::new("invoice-already-paid", "Invoice already paid", 409).detail(format!(
                "Invoice {invoice_id} was already paid by another request."
            )),
        ),
    })
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
