pub mod applications;
pub mod health;
pub mod invoices;
pub mod meter_readings;
pub mod operations;

/// A required text field: not blank and at most `max` characters.
pub fn require_text(field: &str, value: &str, max: usize) -> Result<(), String> {
    if value.trim().is_empty() {
        return Err(format!("{field} must not be empty"));
    }
    if value.chars().count() > max {
        return Err(format!("{field} must be at most {max} characters"));
    }
    Ok(())
}
