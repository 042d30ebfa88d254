//! Text the database can hold and a log can show: THE rule for every path id
//! and every text field of a body, applied before any database work.
//!
//! Refused: the C0 controls U+0000–U+001F (NUL cannot be stored in a Postgres
//! `text` or `jsonb` at all, and a line break or escape in an id forges log
//! lines), DEL U+007F, and the C1 controls U+0080–U+009F (valid UTF-8 that
//! Postgres would store, but never meant in an id, a payment method or a
//! note, and some terminals act on them, e.g. U+009B). This is exactly
//! `char::is_control` (Unicode general category Cc). Everything else passes.
use std::{fmt, ops::Deref};

use serde::{Deserialize, Serialize};

/// A string without control characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Text(String);

/// Why a string is not `Text`: the first control character and where.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("control character U+{:04X} at character {} is not allowed (U+0000–U+001F, U+007F–U+009F)", u32::from(*.found), .position + 1)]
pub struct ControlCharacter {
    pub found: char,
    /// Index in characters, from 0.
    pub position: usize,
}

impl Text {
    pub fn parse(value: String) -> Result<Text, ControlCharacter> {
        match value.chars().enumerate().find(|(_, c)| c.is_control()) {
            Some((position, found)) => Err(ControlCharacter { found, position }),
            None => Ok(Text(value)),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

impl TryFrom<String> for Text {
    type Error = ControlCharacter;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        Text::parse(value)
    }
}

impl From<Text> for String {
    fn from(t: Text) -> String {
        t.0
    }
}

impl Deref for Text {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl PartialEq<str> for Text {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for Text {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_refused_everything_else_passes() {
        for bad in [
            '\0', '\u{1}', '\t', '\n', '\r', '\u{1b}', '\u{1f}', '\u{7f}', '\u{80}', '\u{9b}', '\u{9f}',
        ] {
            let err = Text::parse(format!("ab{bad}c")).unwrap_err();
            assert_eq!(
                err,
                ControlCharacter {
                    found: bad,
                    position: 2
                }
            );
        }
        for good in ["card", "inv-1", "ä€😀", " space ", "\u{a0}", "\u{2028}", "~!\"\\"] {
            assert_eq!(Text::parse(good.to_owned()).unwrap().as_str(), good);
        }
        assert_eq!(
            Text::parse("ca\0rd".into()).unwrap_err().to_string(),
            "control character U+0000 at character 3 is not allowed (U+0000–U+001F, U+007F–U+009F)"
        );
    }

    #[test]
    fn deserializing_applies_the_rule() {
        let ok: Text = serde_json::from_str(r#""card""#).unwrap();
        assert_eq!(ok, "card");
        let err = serde_json::from_str::<Text>(r#""ca\u0000rd""#).unwrap_err();
        assert!(err.to_string().contains("U+0000"), "{err}");
        assert_eq!(serde_json::to_string(&ok).unwrap(), r#""card""#);
    }
}
