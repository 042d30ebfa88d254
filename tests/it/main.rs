//! Black-box tests: real Postgres (one throwaway cluster per run, a fresh
//! database per test), real HTTP on port 0, real worker loops and processes.
mod helpers;

mod auth;
mod dev_process;
mod payments;
