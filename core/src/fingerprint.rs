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

/// Keys sorted, no whitespace, numbers as serde_json prints them — whatever
/// order or spacing the client sent.
fn write_canonical(v: &Value, out: &mut String) {
    match v {
        Value::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            out.push('{');
            for (i, (k, v)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
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
        scalar => out.push_str(&scalar.to_string()),
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
}
