//! The status files' JSON: flat objects built field by field, in order, and read back into
//! (key, raw value) pairs so the agent can add or override fields. serde_json does the
//! encoding and decoding; this module only keeps the field order (clients write their status
//! in a readable order, and the agent appends its own fields after them), which serde_json's
//! `Map` would sort without its `preserve_order` feature, and that feature would change the
//! order of every map in a workspace build of the host too.

use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

/// A JSON string literal.
pub fn string(s: &str) -> String {
    // Serialising a str cannot fail.
    serde_json::to_string(s).unwrap_or_default()
}

/// A JSON string literal, or `null`.
pub fn opt_string(s: Option<&str>) -> String {
    s.map_or_else(|| "null".to_string(), string)
}

/// A flat object built field by field; values are raw JSON text.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Object {
    fields: Vec<(String, String)>,
}

impl Object {
    pub fn new() -> Object {
        Object::default()
    }

    /// Sets `key` to the raw JSON `value`, replacing an earlier value in place.
    pub fn raw(&mut self, key: &str, value: impl Into<String>) -> &mut Object {
        let value = value.into();
        match self.fields.iter_mut().find(|(k, _)| k == key) {
            Some(field) => field.1 = value,
            None => self.fields.push((key.to_string(), value)),
        }
        self
    }

    pub fn str(&mut self, key: &str, value: &str) -> &mut Object {
        self.raw(key, string(value))
    }

    pub fn opt_str(&mut self, key: &str, value: Option<&str>) -> &mut Object {
        self.raw(key, opt_string(value))
    }

    pub fn num(&mut self, key: &str, value: impl std::fmt::Display) -> &mut Object {
        self.raw(key, value.to_string())
    }

    pub fn bool(&mut self, key: &str, value: bool) -> &mut Object {
        self.raw(key, if value { "true" } else { "false" })
    }

    /// The raw JSON text of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The value of `key` if it is a string.
    pub fn get_str(&self, key: &str) -> Option<String> {
        self.get(key).and_then(unquote)
    }

    /// Compact JSON on one line, fields in order.
    pub fn to_json(&self) -> String {
        let mut out = String::from("{");
        for (i, (k, v)) in self.fields.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(&string(k));
            out.push(':');
            out.push_str(v);
        }
        out.push('}');
        out
    }

    /// The object as a serde_json value (for the typed protocol's replies).
    pub fn to_value(&self) -> serde_json::Value {
        serde_json::from_str(&self.to_json()).unwrap_or(serde_json::Value::Null)
    }

    /// Splits a JSON object into its top-level fields, keeping each value's raw text.
    pub fn parse(text: &str) -> Result<Object, String> {
        serde_json::from_str::<Object>(text).map_err(|e| e.to_string())
    }
}

impl<'de> Deserialize<'de> for Object {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Object, D::Error> {
        struct Fields;
        impl<'de> Visitor<'de> for Fields {
            type Value = Object;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Object, A::Error> {
                let mut obj = Object::new();
                while let Some((key, value)) = map.next_entry::<String, Box<RawValue>>()? {
                    obj.raw(&key, value.get());
                }
                Ok(obj)
            }
        }
        d.deserialize_map(Fields)
    }
}

/// The contents of a JSON string literal (`None` if `raw` is not one).
pub fn unquote(raw: &str) -> Option<String> {
    serde_json::from_str::<String>(raw).ok()
}

/// An object of counters, e.g. `{"ENODEV":3}`, in the given order.
pub fn counters<'a>(items: impl IntoIterator<Item = (&'a str, u64)>) -> String {
    let mut obj = Object::new();
    for (k, n) in items {
        obj.num(k, n);
    }
    obj.to_json()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_strings() {
        assert_eq!(string("a\"b\\c\nd\u{1}"), r#""a\"b\\c\nd\u0001""#);
        assert_eq!(
            unquote(&string("a\"b\\c\nd\u{1}é")).as_deref(),
            Some("a\"b\\c\nd\u{1}é")
        );
        assert_eq!(opt_string(None), "null");
    }

    #[test]
    fn builds_and_overrides() {
        let mut o = Object::new();
        o.str("kind", "kms")
            .num("frames", 3)
            .bool("exited", false)
            .raw("signals", counters([("SIGBUS", 2)]));
        o.bool("exited", true);
        assert_eq!(
            o.to_json(),
            r#"{"kind":"kms","frames":3,"exited":true,"signals":{"SIGBUS":2}}"#
        );
    }

    #[test]
    fn decodes_surrogate_pairs() {
        // U+1F600 as a UTF-16 surrogate pair: the hand-written decoder this replaced made
        // two U+FFFD of it.
        assert_eq!(unquote(r#""\ud83d\ude00""#).as_deref(), Some("\u{1f600}"));
        let o = Object::parse(r#"{"s":"a\ud83d\ude00b"}"#).unwrap();
        assert_eq!(o.get_str("s").as_deref(), Some("a\u{1f600}b"));
        assert_eq!(
            unquote(r#""\ud83d""#),
            None,
            "a lone surrogate is not a string"
        );
    }

    #[test]
    fn parses_round_trip() {
        let text = r#" { "kind" : "kms", "n": -1.5e3, "m": {"a":[1,{"b":"x,}"}]}, "s":"q\"uote", "z":null } "#;
        let o = Object::parse(text).unwrap();
        assert_eq!(o.get_str("kind").as_deref(), Some("kms"));
        assert_eq!(o.get("n"), Some("-1.5e3"));
        assert_eq!(o.get("m"), Some(r#"{"a":[1,{"b":"x,}"}]}"#));
        assert_eq!(o.get_str("s").as_deref(), Some("q\"uote"));
        assert_eq!(o.get("z"), Some("null"));
        assert_eq!(Object::parse(&o.to_json()).unwrap(), o);
        assert_eq!(Object::parse("{}").unwrap(), Object::new());
    }

    #[test]
    fn rejects_garbage() {
        for bad in [
            "",
            "[]",
            "{\"a\"}",
            "{\"a\":}",
            "{\"a\":1,}",
            "{\"a\":{}",
            "{\"a",
            "{a:1}",
        ] {
            assert!(Object::parse(bad).is_err(), "{bad:?} parsed");
        }
    }
}
