//! The `idemq` binary's library: the command line, `idemq dev`, and the
//! private Postgres cluster (shared with the test harness).
pub mod cli;
pub mod config;
pub mod demo;
pub mod dev;
pub mod json_log;
pub mod pg_cluster;
pub mod telemetry;
pub mod worker_health;
