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
//!   where a real bug would) after its start (the attempt is counted) and
//!   before its effect;
//! - `IDEMQ_FAULT_PANIC_ATTEMPTS=<n>`: only attempts 1..=n panic (default:
//!   every attempt).
//!
//! A worker with a fault armed says so at start (`fault injection armed`).
//! Never set these in production. The module is in the release binary
//! because the fleet tests run that binary, as users do (README "Fault
//! injection"); without `IDEMQ_FAULT_PANIC_INVOICE` it is inert.
use idemq_core::operation::{OperationId, OperationKind};
use serde_json::Value;

pub const PANIC_INVOICE_VAR: &str = "IDEMQ_FAULT_PANIC_INVOICE";
pub const PANIC_ATTEMPTS_VAR: &str = "IDEMQ_FAULT_PANIC_ATTEMPTS";

/// The faults armed in this process (none by default).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Faults {
    panic_invoice: Option<String>,
    panic_attempts: Option<u32>,
}

impl Faults {
    /// Reads the environment once. Without `IDEMQ_FAULT_PANIC_INVOICE` no
    /// other variable is even read: the worker runs as if this module did
    /// not exist. An unparsable attempt count is an error (a test that meant
    /// to arm a fault must not silently run without it).
    pub fn from_env() -> anyhow::Result<Faults> {
        let faults = Faults::from_vars(|name| std::env::var(name).ok())?;
        if faults.is_armed() {
            tracing::warn!(?faults, "fault injection armed (test only)");
        }
        Ok(faults)
    }

    fn from_vars(var: impl Fn(&str) -> Option<String>) -> anyhow::Result<Faults> {
        let Some(panic_invoice) = var(PANIC_INVOICE_VAR).filter(|v| !v.is_empty()) else {
            return Ok(Faults::default());
        };
        let panic_attempts = match var(PANIC_ATTEMPTS_VAR) {
            Some(v) if !v.is_empty() => Some(
                v.trim()
                    .parse()
                    .map_err(|_| anyhow::anyhow!("{PANIC_ATTEMPTS_VAR}: not a number: {v:?}"))?,
            ),
            _ => None,
        };
        Ok(Faults {
            panic_invoice: Some(panic_invoice),
            panic_attempts,
        })
    }

    pub fn is_armed(&self) -> bool {
        self.panic_invoice.is_some()
    }

    /// Called inside the attempt's task once the attempt is started (counted,
    /// its operation locked) and before its effect, with the stored request.
    /// Costs nothing unless a fault is armed.
    pub fn before_attempt(&self, op: OperationId, kind: OperationKind, attempt: u32, request: &Value) {
        let Some(invoice) = &self.panic_invoice else {
            return;
        };
        if kind != OperationKind::InvoiceMarkPaid || self.panic_attempts.is_some_and(|n| attempt > n) {
            return;
        }
        if request["params"]["id"].as_str() == Some(invoice.as_str()) {
            panic!("injected fault: {PANIC_INVOICE_VAR}={invoice}, attempt {attempt} of {op}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from(vars: &[(&str, &str)]) -> anyhow::Result<Faults> {
        Faults::from_vars(|name| vars.iter().find(|(k, _)| *k == name).map(|(_, v)| v.to_string()))
    }

    #[test]
    fn inert_without_the_invoice_variable() {
        assert_eq!(from(&[]).unwrap(), Faults::default());
        assert_eq!(from(&[(PANIC_INVOICE_VAR, "")]).unwrap(), Faults::default());
        // The attempt count alone arms nothing and is not even parsed.
        assert_eq!(from(&[(PANIC_ATTEMPTS_VAR, "many")]).unwrap(), Faults::default());
        assert!(!Faults::default().is_armed());
    }

    #[test]
    fn armed_by_the_invoice_variable() {
        let f = from(&[(PANIC_INVOICE_VAR, "inv-1"), (PANIC_ATTEMPTS_VAR, " 2 ")]).unwrap();
        assert!(f.is_armed());
        assert_eq!(f.panic_invoice.as_deref(), Some("inv-1"));
        assert_eq!(f.panic_attempts, Some(2));
        assert!(from(&[(PANIC_INVOICE_VAR, "inv-1"), (PANIC_ATTEMPTS_VAR, "many")]).is_err());
    }
}
