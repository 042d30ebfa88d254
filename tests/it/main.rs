//! Black-box tests: real Postgres (one throwaway cluster per run, a fresh
//! database per test), real HTTP on port 0, real worker loops and processes.
mod browser;
mod harness;
mod helpers;

mod approvals;
mod attempts;
mod auth;
mod bench_smoke;
mod cleanup;
mod client_ts;
mod console;
mod dev_process;
mod errors;
mod fetch_gate;
mod final_answers;
mod fleet;
mod fleet_limits;
mod idempotency_contract;
mod job_ack;
mod maintenance;
mod meter_readings;
mod observability;
mod openapi;
mod operations_table;
mod ops;
mod payments;
mod pg_immediate_stop;
mod pgbouncer;
mod property;
mod queue_schema;
mod rate_limit;
mod read_models;
mod revocation;
mod schemathesis;
mod wakeups;
mod warmup;
