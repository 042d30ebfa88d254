//! idemq's core: the idempotency machinery (keys, fingerprints, the record
//! store, the queue) and the business operations, each one Postgres
//! transaction. Knows no web framework: `api` and `worker` build on it.

pub mod business;
pub mod config;
pub mod db;
pub mod error;
pub mod fingerprint;
pub mod idempotency;
pub mod job;
pub mod key;
pub mod notifier;
pub mod operation;
pub mod ops;
pub mod principal;
pub mod problem;
pub mod queue;
pub mod seed;
pub mod telemetry;
pub mod text;

pub use error::Error;
