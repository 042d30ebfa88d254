//! The `idemq` binary's library: the command line and `idemq dev` (whose
//! private Postgres is the `idemq-devcluster` crate).
pub mod cli;
pub mod config;
pub mod demo;
pub mod dev;
pub mod json_log;
pub mod telemetry;
pub mod worker_health;
