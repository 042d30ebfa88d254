//! The `Idempotency-Key` header value: parse, don't validate.
use std::fmt;

pub const MAX_KEY_BYTES: usize = 255;

/// 1–255 bytes of visible ASCII (0x21–0x7E). The only way in is `parse`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IdempotencyKey(String);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyError {
    Empty,
    TooLong,
    NotVisibleAscii,
}

impl KeyError {
    /// Stable slug of the problem `type` for this rejection.
    pub fn slug(self) -> &'static str {
        match self {
            KeyError::Empty => "idempotency-key-empty",
            KeyError::TooLong => "idempotency-key-too-long",
            KeyError::NotVisibleAscii => "idempotency-key-invalid-characters",
        }
    }

    pub fn detail(self) -> &'static str {
        match self {
            KeyError::Empty => "The Idempotency-Key header is empty.",
            KeyError::TooLong => "The Idempotency-Key is longer than 255 bytes.",
            KeyError::NotVisibleAscii => {
                "The Idempotency-Key may contain only visible ASCII characters (0x21-0x7E)."
            }
        }
    }
}

impl IdempotencyKey {
    /// Accepts the IETF structured-field form (`"abc"`) and the bare form
    /// (`abc`): surrounding quotes are removed before the checks.
    pub fn parse(raw: &[u8]) -> Result<Self, KeyError> {
        let raw = trim_ows(raw);
        let inner = match raw {
            [b'"', inner @ .., b'"'] => inner,
            other => other,
        };
        if inner.is_empty() {
            return Err(KeyError::Empty);
        }
        if inner.len() > MAX_KEY_BYTES {
            return Err(KeyError::TooLong);
        }
        if !inner.iter().all(|b| (0x21..=0x7e).contains(b)) {
            return Err(KeyError::NotVisibleAscii);
        }
        // All bytes are ASCII, so this is valid UTF-8.
        String::from_utf8(inner.to_vec())
            .map(IdempotencyKey)
            .map_err(|_| KeyError::NotVisibleAscii)
    }

    /// A key the server makes when the key requirement is switched off.
    pub fn generated() -> Self {
        IdempotencyKey(format!("srv_{}", uuid::Uuid::new_v4().simple()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn trim_ows(mut b: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = b {
        b = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = b {
        b = rest;
    }
    b
}

impl fmt::Display for IdempotencyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_and_quoted_forms_are_the_same_key() {
        assert_eq!(IdempotencyKey::parse(b"abc").unwrap().as_str(), "abc");
        assert_eq!(IdempotencyKey::parse(b"\"abc\"").unwrap().as_str(), "abc");
    }

    #[test]
    fn limits() {
        assert_eq!(IdempotencyKey::parse(b""), Err(KeyError::Empty));
        assert_eq!(IdempotencyKey::parse(b"\"\""), Err(KeyError::Empty));
        assert!(IdempotencyKey::parse(&[b'k'; 255]).is_ok());
        assert_eq!(IdempotencyKey::parse(&[b'k'; 256]), Err(KeyError::TooLong));
        assert_eq!(IdempotencyKey::parse(b"a b"), Err(KeyError::NotVisibleAscii));
        assert_eq!(
            IdempotencyKey::parse("é".as_bytes()),
            Err(KeyError::NotVisibleAscii)
        );
    }
}
