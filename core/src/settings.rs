//! Parsers of setting values that both the API's configuration
//! (`idemq_api::config`) and the worker's (`idemq_worker::config`) read.
//! The settings themselves are declared by the process that uses them.
use std::time::Duration;

/// The longest duration any setting takes. Durations are added to
/// instants, multiplied (the lease) and converted to chrono and Postgres
/// intervals; bounded here, none of that can overflow, and no setting needs
/// more than ten years.
pub const MAX_DURATION: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s.trim())
        .map_err(|e| format!("not a duration like `30s` or `24h`: {e}"))?;
    if d.is_zero() {
        return Err("must be longer than zero".into());
    }
    if d > MAX_DURATION {
        return Err("must be at most 3650 days (10 years)".into());
    }
    Ok(d)
}

/// The contract's booleans (docs/configuration.md): `true`/`false`, `1`/`0`.
pub fn parse_bool(s: &str) -> Result<bool, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "true" | "1" => Ok(true),
        "false" | "0" => Ok(false),
        _ => Err("must be true, false, 1 or 0".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn booleans_are_strict() {
        assert_eq!(parse_bool("TRUE"), Ok(true));
        assert_eq!(parse_bool("0"), Ok(false));
        assert!(parse_bool("yes").is_err());
    }

    #[test]
    fn durations_reject_zero_and_garbage() {
        assert_eq!(parse_duration("24h"), Ok(Duration::from_secs(86_400)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn durations_are_bounded_so_nothing_downstream_overflows() {
        assert_eq!(parse_duration("3650days"), Ok(MAX_DURATION));
        for huge in [
            "3651days",
            "500000000000years",
            "600000000000years",
            "18446744073709551615s",
        ] {
            assert!(parse_duration(huge).is_err(), "{huge}");
        }
        // The largest accepted value survives what the worker does with it.
        let d = MAX_DURATION;
        assert!(std::time::Instant::now().checked_add(d * 10).is_some());
        assert!(chrono::Duration::from_std(d * 10).is_ok());
    }
}
