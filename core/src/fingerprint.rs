//! The request fingerprint: SHA-256 over method, route template, path
//! parameters and the canonical JSON body. Same key + other fingerprint → 422.
use serde_json::Value;
use sha2::{Digest, Sha256};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint([u8; 32]);

impl Fingerprint {
    /// `params` in route order; an absent body is `{}`.
    pub fn compute(method: &str, route: &str, params: &[(&str, &str)], body: &Value) -> Self {
        let mut h = Sha256::new();
        // Length-prefixed fields: no two different requests hash the same input.
        let mut field = |bytes: &[u8]| {
            h.update((bytes.len() as u64).to_be_bytes());
            h.update(bytes);
        };
        field(method.as_bytes());
        field(route.as_bytes());
        for (name, value) in params {
            field(name.as_bytes());
            field(value.as_bytes());
        }
        let mut canonical = String::new();
        write_canonical(body, &mut canonical);
        field(canonical.as_bytes());
        Fingerprint(h.finalize().into())
    }

    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        bytes.try_into().ok().map(Fingerprint)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

/// The body in the JSON Canonicalization Scheme (RFC 8785): object members
/// sorted by their names' UTF-16 code units, no whitespace, strings as
/// ECMAScript's JSON.stringify writes them, numbers as IEEE 754 doubles in
/// ECMAScript's shortest form (`10`, `10.0` and `1e1` are all `10`) —
/// whatever order, spacing or number spelling the client sent.
fn write_canonical(v: &Value, out: &mut String) {
    match v {
        Value::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_by(|a, b| a.0.encode_utf16().cmp(b.0.encode_utf16()));
            out.push('{');
            for (i, (k, v)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                // serde_json escapes exactly as RFC 8785 asks: `"`, `\`, and
                // controls (`\b\t\n\f\r`, else `\u00xx` in lower case).
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                write_canonical(v, out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        Value::Number(n) => match n.as_f64() {
            Some(f) if f.is_finite() => write_es_number(f, out),
            // Not reachable from parsed JSON (serde_json refuses what no
            // double holds); kept as sent rather than guessed.
            _ => out.push_str(&n.to_string()),
        },
        scalar => out.push_str(&scalar.to_string()),
    }
}

/// ECMAScript's Number::toString (ECMA-262 7.1.12.1), as RFC 8785 section
/// 3.2.2.3 requires: ryu gives the same shortest round-trip digits (a tie
/// goes to the even digit, as ECMAScript asks; Rust's `{:e}` rounds it up);
/// only the layout differs.
fn write_es_number(f: f64, out: &mut String) {
    if f == 0.0 {
        // Both zeros.
        out.push('0');
        return;
    }
    if f < 0.0 {
        out.push('-');
    }
    let mut buffer = ryu::Buffer::new();
    let printed = buffer.format_finite(f.abs());
    // ryu prints `123.45`, `10.0`, `1e21`, `1.5e-7` or `0.001`.
    let (mantissa, exp) = printed.split_once('e').unwrap_or((printed, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let all = format!("{int}{frac}");
    let leading = all.len() - all.trim_start_matches('0').len();
    let digits = all.trim_matches('0');
    // The value is 0.DIGITS × 10^n, DIGITS without leading or trailing zeros.
    let (k, n) = (digits.len() as i32, int.len() as i32 - leading as i32 + exp);
    if k <= n && n <= 21 {
        out.push_str(digits);
        out.extend(std::iter::repeat_n('0', (n - k) as usize));
    } else if 0 < n && n <= 21 {
        out.push_str(&digits[..n as usize]);
        out.push('.');
        out.push_str(&digits[n as usize..]);
    } else if -6 < n && n <= 0 {
        out.push_str("0.");
        out.extend(std::iter::repeat_n('0', (-n) as usize));
        out.push_str(digits);
    } else {
        out.push_str(&digits[..1]);
        if k > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        out.push('e');
        out.push(if n - 1 < 0 { '-' } else { '+' });
        out.push_str(&(n - 1).abs().to_string());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn key_order_and_spacing_do_not_matter() {
        let a: Value = serde_json::from_str(r#"{"b":1,"a":{"y":2,"x":[1,2]}}"#).unwrap();
        let b: Value = serde_json::from_str(r#"{ "a": {"x":[1, 2], "y":2}, "b": 1 }"#).unwrap();
        let route = "/invoices/{id}/mark-paid";
        assert_eq!(
            Fingerprint::compute("PATCH", route, &[("id", "1")], &a),
            Fingerprint::compute("PATCH", route, &[("id", "1")], &b)
        );
    }

    fn es(f: f64) -> String {
        let mut s = String::new();
        write_es_number(f, &mut s);
        s
    }

    /// RFC 8785 appendix B: IEEE 754 bits and their canonical form.
    #[test]
    fn numbers_follow_rfc_8785_appendix_b() {
        let cases: [(u64, &str); 24] = [
            (0x0000000000000000, "0"),
            (0x8000000000000000, "0"),
            (0x0000000000000001, "5e-324"),
            (0x8000000000000001, "-5e-324"),
            (0x7fefffffffffffff, "1.7976931348623157e+308"),
            (0xffefffffffffffff, "-1.7976931348623157e+308"),
            (0x4340000000000000, "9007199254740992"),
            (0xc340000000000000, "-9007199254740992"),
            (0x4430000000000000, "295147905179352830000"),
            (0x44b52d02c7e14af5, "9.999999999999997e+22"),
            (0x44b52d02c7e14af6, "1e+23"),
            (0x44b52d02c7e14af7, "1.0000000000000001e+23"),
            (0x444b1ae4d6e2ef4e, "999999999999999700000"),
            (0x444b1ae4d6e2ef4f, "999999999999999900000"),
            (0x444b1ae4d6e2ef50, "1e+21"),
            (0x3eb0c6f7a0b5ed8c, "9.999999999999997e-7"),
            (0x3eb0c6f7a0b5ed8d, "0.000001"),
            (0x41b3de4355555553, "333333333.3333332"),
            (0x41b3de4355555554, "333333333.33333325"),
            (0x41b3de4355555555, "333333333.3333333"),
            (0x41b3de4355555556, "333333333.3333334"),
            (0x41b3de4355555557, "333333333.33333343"),
            (0xbecbf647612f3696, "-0.0000033333333333333333"),
            (0x43143ff3c1cb0959, "1424953923781206.2"),
        ];
        for (bits, expected) in cases {
            assert_eq!(es(f64::from_bits(bits)), expected, "{bits:#018x}");
        }
    }

    /// RFC 8785 section 3.2.4's example, whitespace and order changed.
    #[test]
    fn the_rfc_8785_example_is_canonicalised() {
        let input = r#"{
            "numbers": [333333333.33333329, 1E30, 4.50, 2e-3, 0.000000000000000000000000001],
            "string": "\u20ac$\u000F\u000aA'\u0042\u0022\u005c\\\"\/",
            "literals": [null, true, false]
        }"#;
        let mut out = String::new();
        write_canonical(&serde_json::from_str(input).unwrap(), &mut out);
        assert_eq!(
            out,
            r#"{"literals":[null,true,false],"numbers":[333333333.3333333,1e+30,4.5,0.002,1e-27],"string":"€$\u000f\nA'B\"\\\\\"/"}"#
        );
    }

    #[test]
    fn number_spellings_of_one_value_are_one_request() {
        let route = "/meter-readings";
        let fp = |body: &str| Fingerprint::compute("POST", route, &[], &serde_json::from_str(body).unwrap());
        let ten = fp(r#"{"contractId":"c","reading":10}"#);
        for same in ["10.0", "1e1", "1E+1", "10.000", "100e-1"] {
            assert_eq!(
                fp(&format!(r#"{{"contractId":"c","reading":{same}}}"#)),
                ten,
                "{same}"
            );
        }
        assert_ne!(fp(r#"{"contractId":"c","reading":10.5}"#), ten);
        assert_ne!(fp(r#"{"contractId":"c","reading":"10"}"#), ten);
    }

    #[test]
    fn every_part_counts() {
        let body = json!({"paymentMethod": "card"});
        let base = Fingerprint::compute("PATCH", "/r/{id}", &[("id", "1")], &body);
        assert_ne!(
            base,
            Fingerprint::compute("POST", "/r/{id}", &[("id", "1")], &body)
        );
        assert_ne!(
            base,
            Fingerprint::compute("PATCH", "/s/{id}", &[("id", "1")], &body)
        );
        assert_ne!(
            base,
            Fingerprint::compute("PATCH", "/r/{id}", &[("id", "2")], &body)
        );
        assert_ne!(
            base,
            Fingerprint::compute(
                "PATCH",
                "/r/{id}",
                &[("id", "1")],
                &json!({"paymentMethod": "cash"})
            )
        );
    }

    mod properties {
        use proptest::prelude::*;
        use rand::{rngs::StdRng, seq::SliceRandom, Rng, SeedableRng};
        use serde_json::{Map, Number};

        use super::*;

        fn arb_json() -> impl Strategy<Value = Value> {
            let leaf = prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::Bool),
                any::<i64>().prop_map(Value::from),
                any::<u64>().prop_map(Value::from),
                any::<f64>()
                    .prop_filter("finite", |f| f.is_finite())
                    .prop_map(|f| Value::Number(Number::from_f64(f).unwrap())),
                (-1000i32..1000, 0u32..4).prop_map(|(m, scale)| {
                    Value::Number(Number::from_f64(f64::from(m) / 10f64.powi(scale as i32)).unwrap())
                }),
                "\\PC{0,8}".prop_map(Value::String),
                any::<String>().prop_map(Value::String),
            ];
            leaf.prop_recursive(4, 48, 6, |inner| {
                prop_oneof![
                    proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                    proptest::collection::btree_map("\\PC{0,6}", inner, 0..6)
                        .prop_map(|m| Value::Object(m.into_iter().collect::<Map<_, _>>())),
                ]
            })
        }

        /// `v` as some client might write it: members in any order, any
        /// whitespace, numbers and strings spelled any valid way.
        fn render(v: &Value, rng: &mut StdRng, out: &mut String) {
            let ws = |rng: &mut StdRng, out: &mut String| {
                out.push_str(["", " ", "\n  ", "\t", "\r\n"][rng.random_range(0..5)])
            };
            ws(rng, out);
            match v {
                Value::Object(map) => {
                    let mut entries: Vec<_> = map.iter().collect();
                    entries.shuffle(rng);
                    out.push('{');
                    for (i, (k, v)) in entries.into_iter().enumerate() {
                        if i > 0 {
                            out.push(',');
                        }
                        render_string(k, rng, out);
                        ws(rng, out);
                        out.push(':');
                        render(v, rng, out);
                    }
                    out.push('}');
                }
                Value::Array(items) => {
                    out.push('[');
                    for (i, item) in items.iter().enumerate() {
                        if i > 0 {
                            out.push(',');
                        }
                        render(item, rng, out);
                    }
                    ws(rng, out);
                    out.push(']');
                }
                Value::Number(n) if n.is_f64() || rng.random_bool(0.5) => {
                    let f = n.as_f64().unwrap();
                    let plain = format!("{f}");
                    let spelled = match rng.random_range(0..4) {
                        0 => plain,
                        1 => format!("{f:e}"),
                        2 => format!("{f:E}").replace('E', "E+").replace("E+-", "E-"),
                        _ if plain.contains('.') => format!("{plain}000"),
                        _ => format!("{plain}.0"),
                    };
                    out.push_str(&spelled);
                }
                Value::String(s) => render_string(s, rng, out),
                other => out.push_str(&other.to_string()),
            }
            ws(rng, out);
        }

        /// A JSON string, each character either as is (escaped where JSON
        /// needs it) or as `\uXXXX` (a surrogate pair beyond the BMP).
        fn render_string(s: &str, rng: &mut StdRng, out: &mut String) {
            out.push('"');
            for c in s.chars() {
                if rng.random_bool(0.3) {
                    let mut units = [0u16; 2];
                    for u in c.encode_utf16(&mut units) {
                        out.push_str(&if rng.random_bool(0.5) {
                            format!("\\u{u:04x}")
                        } else {
                            format!("\\u{u:04X}")
                        });
                    }
                } else {
                    let escaped = Value::String(c.to_string()).to_string();
                    out.push_str(&escaped[1..escaped.len() - 1]);
                }
            }
            out.push('"');
        }

        /// Numbers as the doubles RFC 8785 compares.
        fn as_doubles(v: &Value) -> Value {
            match v {
                Value::Number(n) => Value::from(n.as_f64().unwrap()),
                Value::Array(a) => Value::Array(a.iter().map(as_doubles).collect()),
                Value::Object(m) => {
                    Value::Object(m.iter().map(|(k, v)| (k.clone(), as_doubles(v))).collect())
                }
                other => other.clone(),
            }
        }

        fn fp(body: &Value) -> Fingerprint {
            Fingerprint::compute("POST", "/meter-readings", &[], body)
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2048))]

            /// Member order, whitespace and the spelling of numbers and
            /// strings never change the fingerprint.
            #[test]
            fn spelling_never_changes_it(v in arb_json(), seed in any::<u64>()) {
                let mut text = String::new();
                render(&v, &mut StdRng::seed_from_u64(seed), &mut text);
                let reparsed: Value = serde_json::from_str(&text).map_err(|e| TestCaseError::fail(format!("{e}: {text}")))?;
                prop_assert_eq!(fp(&reparsed), fp(&v), "{}", text);
            }

            /// The canonical form means the same value (numbers as doubles):
            /// different values never share it, so never share a fingerprint.
            #[test]
            fn the_canonical_form_is_the_value(v in arb_json()) {
                let mut canonical = String::new();
                write_canonical(&v, &mut canonical);
                let back: Value = serde_json::from_str(&canonical).map_err(|e| TestCaseError::fail(format!("{e}: {canonical}")))?;
                prop_assert_eq!(as_doubles(&back), as_doubles(&v), "{}", canonical);
            }

            /// Two different text values or readings: two fingerprints.
            #[test]
            fn different_values_change_it(
                (a, b) in (any::<String>(), any::<String>()),
                (x, y) in (any::<f64>(), any::<f64>()),
            ) {
                prop_assume!(a != b);
                prop_assert_ne!(fp(&json!({ "contractId": a, "reading": 1 })), fp(&json!({ "contractId": b, "reading": 1 })));
                if x.is_finite() && y.is_finite() && x != y {
                    prop_assert_ne!(fp(&json!({ "contractId": "c", "reading": x })), fp(&json!({ "contractId": "c", "reading": y })));
                }
            }
        }
    }
}
