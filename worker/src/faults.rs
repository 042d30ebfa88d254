//! Fault injection for tests: off unless its environment variable is set,
//! read once when the worker process starts, and only in the worker (the
//! request path has none).
//!
//! Most faults need no code: a test makes a job fail with an infrastructure
//! error or hang by creating a trigger on the business table (`RAISE
//! EXCEPTION`, `pg_sleep`). A panic cannot come from the database, hence:
//!
//! - `IDEMQ_FAULT_PANIC_INVOICE=<invoice id>`: an attempt of
//!   `invoice.mark_paid` on that invoice panics (inside the attempt's task,
//!   where a real bug would) before it touches the database;
//! - `IDEMQ_FAULT_PANIC_ATTEMPTS=<n>`: only attempts 1..=n panic (default:
//!   every attempt).
//!
//! A worker with a fault armed says so at start (`fault injection armed`).
//! Never set these in production.
use idemq_core::operation::{OperationId, OperationKind};
use sqlx::PgPool;

pub const PANIC_INVOICE_VAR: &str = "IDEMQ_FAULT_PANIC_INVOICE";
pub const PANIC_ATTEMPTS_VAR: &str = "IDEMQ_FAULT_PANIC_ATTEMPTS";

/// The faults armed in this process (none by default).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Faults {
    panic_invoice: Option<String>,
    panic_attempts: Option<u32>,
}

impl Faults {
    /// Reads the environment once. An unparsable attempt count is an error
    /// (a test that meant to arm a fault must not silently run without it).
    pub fn from_env() -> anyhow::Result<Faults> {
        let panic_invoice = std::env::var(PANIC_INVOICE_VAR).ok().filter(|v| !v.is_empty());
        let panic_attempts = match std::env::var(PANIC_ATTEMPTS_VAR) {
            Ok(v) if !v.is_empty() => Some(
                v.trim()
                    .parse()
                    .map_err(|_| anyhow::anyhow!("{PANIC_ATTEMPTS_VAR}: not a number: {v:?}"))?,
            ),
            _ => None,
        };
        let faults = Faults {
            panic_invoice,
            panic_attempts,
        };
        if faults.is_armed() {
            tracing::warn!(?faults, "fault injection armed (test only)");
        }
        Ok(faults)
    }

    pub fn is_armed(&self) -> bool {
        self.panic_invoice.is_some()
    }

    /// Called inside the attempt's task before the attempt runs. Costs
    /// nothing unless a fault is armed.
    pub async fn before_attempt(&self, pool: &PgPool, op: OperationId, kind: OperationKind, attempt: u32) {
        let Some(invoice) = &self.panic_invoice else {
            return;
        };
        if kind != OperationKind::InvoiceMarkPaid || self.panic_attempts.is_some_and(|n| attempt > n) {
            return;
        }
        let target: Option<String> =
            sqlx::query_scalar("SELECT request->'params'->>'id' FROM operations WHERE id = $1")
                .bind(op.uuid())
                .fetch_optional(pool)
                .await
                .ok()
                .flatten();
        if target.as_deref() == Some(invoice.as_str()) {
            panic!("injected fault: {PANIC_INVOICE_VAR}={invoice}, attempt {attempt}");
        }
    }
}
