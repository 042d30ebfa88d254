//! idemq's core: the idempotency machinery (keys, fingerprints, the record
//! store, the queue) and the business operations, each one Postgres
//! transaction. Knows no web framework: `api` and `worker` build on it.

pub mod business;
pub mod db;
pub mod error;
pub mod fingerprint;
pub mod finish_notice;
pub mod idempotency;
pub mod job;
pub mod job_group;
pub mod key;
pub mod notifier;
pub mod operation;
pub mod ops;
pub mod principal;
pub mod problem;
pub mod queue;
pub mod seed;
pub mod settings;
pub mod telemetry;
pub mod text;
pub mod warmup;

pub use error::Error;

#[cfg(test)]
mod tests {
    /// The HTTP representation and the command line belong to `api`, the
    /// worker and the binary; `core` depends on none of their frameworks.
    #[test]
    fn core_depends_on_no_web_framework_or_command_line() {
        let manifest = include_str!("../Cargo.toml");
        let dependencies = manifest
            .split("[dependencies]")
            .nth(1)
            .and_then(|rest| rest.split("\n[").next())
            .expect("core's manifest has [dependencies]");
        let names: Vec<&str> = dependencies
            .lines()
            .filter_map(|l| l.split(['.', ' ', '=']).next())
            .filter(|n| !n.is_empty() && !n.starts_with('#'))
            .collect();
        assert!(names.contains(&"sqlx"), "{names:?}");
        for framework in ["axum", "clap", "utoipa", "utoipa-axum", "tower", "tower-http"] {
            assert!(!names.contains(&framework), "core depends on {framework}");
        }
    }
}
