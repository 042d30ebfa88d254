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
    /// A quoted key that is not an RFC 8941 sf-string: an escape other than
    /// `\"` or `\\`, no closing quote, or something after it.
    BadQuoting,
}

impl KeyError {
    /// Stable slug of the problem `type` for this rejection.
    pub fn slug(self) -> &'static str {
        match self {
            KeyError::Empty => "idempotency-key-empty",
            KeyError::TooLong => "idempotency-key-too-long",
            KeyError::NotVisibleAscii | KeyError::BadQuoting => "idempotency-key-invalid-characters",
        }
    }

    pub fn detail(self) -> &'static str {
        match self {
            KeyError::Empty => "The Idempotency-Key header is empty.",
            KeyError::TooLong => "The Idempotency-Key is longer than 255 bytes.",
            KeyError::NotVisibleAscii => {
                "The Idempotency-Key may contain only visible ASCII characters (0x21-0x7E)."
            }
            KeyError::BadQuoting => {
                r#"A quoted Idempotency-Key is a structured-field string (RFC 8941): only \" and \\ may be escaped, and its closing quote ends the value."#
            }
        }
    }
}

impl IdempotencyKey {
    /// Accepts the IETF structured-field form (`"abc"`, an RFC 8941 string:
    /// `\"` and `\\` are decoded) and the bare form (`abc`, taken as is). The
    /// checks apply to the decoded key.
    pub fn parse(raw: &[u8]) -> Result<Self, KeyError> {
        let raw = trim_ows(raw);
        let decoded;
        let inner = match raw {
            [b'"', rest @ ..] => {
                decoded = decode_sf_string(rest)?;
                &decoded[..]
            }
            bare => bare,
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

/// The rest of an RFC 8941 sf-string after its opening quote (section
/// 4.2.5): up to the closing quote, which must end the value. Bytes outside
/// 0x21–0x7E are left to the caller's visible-ASCII check.
fn decode_sf_string(rest: &[u8]) -> Result<Vec<u8>, KeyError> {
    let mut out = Vec::with_capacity(rest.len());
    let mut bytes = rest.iter();
    while let Some(&b) = bytes.next() {
        match b {
            b'\\' => match bytes.next() {
                Some(&c @ (b'"' | b'\\')) => out.push(c),
                _ => return Err(KeyError::BadQuoting),
            },
            b'"' if bytes.as_slice().is_empty() => return Ok(out),
            b'"' => return Err(KeyError::BadQuoting),
            other => out.push(other),
        }
    }
    Err(KeyError::BadQuoting)
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
    use proptest::prelude::*;

    use super::*;

    fn parse(raw: &str) -> Result<String, KeyError> {
        IdempotencyKey::parse(raw.as_bytes()).map(|k| k.as_str().to_owned())
    }

    /// `key` as an RFC 8941 sf-string.
    fn sf_string(key: &str) -> String {
        format!("\"{}\"", key.replace('\\', r"\\").replace('"', r#"\""#))
    }

    #[test]
    fn bare_and_quoted_forms_are_the_same_key() {
        assert_eq!(IdempotencyKey::parse(b"abc").unwrap().as_str(), "abc");
        assert_eq!(IdempotencyKey::parse(b"\"abc\"").unwrap().as_str(), "abc");
    }

    #[test]
    fn quoted_keys_are_sf_strings() {
        assert_eq!(parse(r#""a\"b""#), Ok(r#"a"b"#.to_owned()));
        assert_eq!(parse(r#""a\\b""#), Ok(r"a\b".to_owned()));
        assert_eq!(parse("  \"abc\"\t"), Ok("abc".to_owned()));
        for bad in [
            r#""a\b""#,
            r#""abc"#,
            r#"""#,
            r#""ab"c""#,
            r#""abc"x"#,
            r#""abc";p=1"#,
            r#""abc\""#,
            r#""a\"#,
        ] {
            assert_eq!(parse(bad), Err(KeyError::BadQuoting), "{bad}");
        }
        assert_eq!(parse(r#""a b""#), Err(KeyError::NotVisibleAscii));
        // The bare form is taken as is.
        assert_eq!(parse(r"a\b"), Ok(r"a\b".to_owned()));
        assert_eq!(parse(r#"ab""#), Ok(r#"ab""#.to_owned()));
        assert_eq!(KeyError::BadQuoting.slug(), "idempotency-key-invalid-characters");
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

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4096))]

        /// Any valid key, bare or as an sf-string, with optional spaces
        /// around it, parses to itself.
        #[test]
        fn every_valid_key_round_trips_in_both_forms(
            key in "[!-~]{1,255}",
            (pre, post) in ("[ \t]{0,3}", "[ \t]{0,3}"),
        ) {
            prop_assert_eq!(parse(&sf_string(&key)), Ok(key.clone()));
            prop_assert_eq!(parse(&format!("{pre}{}{post}", sf_string(&key))), Ok(key.clone()));
            if !key.starts_with('"') {
                prop_assert_eq!(parse(&format!("{pre}{key}{post}")), Ok(key.clone()));
            }
        }

        /// Whatever the bytes, parsing never panics, and what it accepts is
        /// 1–255 bytes of visible ASCII.
        #[test]
        fn any_input_is_a_valid_key_or_a_typed_refusal(raw in proptest::collection::vec(any::<u8>(), 0..300)) {
            if let Ok(k) = IdempotencyKey::parse(&raw) {
                let len = k.as_str().len();
                prop_assert!((1..=MAX_KEY_BYTES).contains(&len));
                prop_assert!(k.as_str().bytes().all(|b| (0x21..=0x7e).contains(&b)));
            }
        }

        /// A backslash before anything but `"` or `\` in a quoted key is refused.
        #[test]
        fn other_escapes_are_refused(
            (a, b) in ("[!-~]{0,20}", "[!-~]{0,20}"),
            escaped in any::<u8>().prop_filter("not \" or \\", |c| *c != b'"' && *c != b'\\'),
        ) {
            let mut raw = sf_string(&a).into_bytes();
            raw.pop();
            raw.push(b'\\');
            raw.push(escaped);
            raw.extend(sf_string(&b).bytes().skip(1));
            prop_assert_eq!(IdempotencyKey::parse(&raw), Err(KeyError::BadQuoting));
        }

        /// A quoted key that is not closed is refused, never taken bare.
        #[test]
        fn an_unterminated_quote_is_refused(key in "[!-~]{0,50}") {
            let mut raw = sf_string(&key);
            raw.pop();
            prop_assert_eq!(parse(&raw), Err(KeyError::BadQuoting));
        }
    }
}
