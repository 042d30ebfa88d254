//! Black-box tests: real Postgres (one throwaway cluster per run, a fresh
//! database per test), real HTTP on port 0, real worker loops and processes.
mod helpers;

mod approvals;
mod auth;
mod cleanup;
mod dev_process;
mod idempotency_contract;
mod meter_readings;
mod payments;
mod property;
mod read_models;
