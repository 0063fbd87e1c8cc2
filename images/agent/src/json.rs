//! Just enough JSON for the status files: a writer for flat objects, and a splitter that reads a
//! top-level object back into (key, raw value) pairs so the agent can add or override fields.

/// Appends `s` to `out` as a JSON string literal.
pub fn push_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

/// A JSON string literal.
pub fn string(s: &str) -> String {
    let mut out = String::new();
    push_str(&mut out, s);
    out
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

    /// Compact JSON on one line.
    pub fn to_json(&self) -> String {
        let mut out = String::from("{");
        for (i, (k, v)) in self.fields.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            push_str(&mut out, k);
            out.push(':');
            out.push_str(v);
        }
        out.push('}');
        out
    }

    /// Splits a JSON object into its top-level fields, keeping each value's raw text.
    pub fn parse(text: &str) -> Result<Object, String> {
        let s = text.trim();
        let inner = s
            .strip_prefix('{')
            .and_then(|s| s.strip_suffix('}'))
            .ok_or_else(|| "not a JSON object".to_string())?;
        let b = inner.as_bytes();
        let mut obj = Object::new();
        let mut i = skip_ws(b, 0);
        while i < b.len() {
            if b[i] != b'"' {
                return Err(format!("expected a key at byte {i}"));
            }
            let key_end = string_end(b, i)?;
            let key = unquote(&inner[i..key_end]).ok_or("bad key")?;
            i = skip_ws(b, key_end);
            if b.get(i) != Some(&b':') {
                return Err(format!("expected ':' at byte {i}"));
            }
            let start = skip_ws(b, i + 1);
            let end = value_end(b, start)?;
            obj.raw(&key, inner[start..end].trim_end());
            i = skip_ws(b, end);
            match b.get(i) {
                Some(b',') => {
                    i = skip_ws(b, i + 1);
                    if i >= b.len() {
                        return Err("trailing ','".to_string());
                    }
                }
                None => break,
                Some(_) => return Err(format!("expected ',' at byte {i}")),
            }
        }
        Ok(obj)
    }
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && b[i].is_ascii_whitespace() {
        i += 1;
    }
    i
}

/// Index just past the string literal starting at `b[i] == '"'`.
fn string_end(b: &[u8], i: usize) -> Result<usize, String> {
    let mut j = i + 1;
    while j < b.len() {
        match b[j] {
            b'\\' => j += 2,
            b'"' => return Ok(j + 1),
            _ => j += 1,
        }
    }
    Err("unterminated string".to_string())
}

/// Index just past the value starting at `i` (at the next top-level ',' or the end).
fn value_end(b: &[u8], i: usize) -> Result<usize, String> {
    let mut depth = 0usize;
    let mut j = i;
    while j < b.len() {
        match b[j] {
            b'"' => {
                j = string_end(b, j)?;
                continue;
            }
            b'{' | b'[' => depth += 1,
            b'}' | b']' => depth = depth.checked_sub(1).ok_or("unbalanced brackets")?,
            b',' if depth == 0 => return Ok(j),
            _ => {}
        }
        j += 1;
    }
    if depth != 0 {
        return Err("unbalanced brackets".to_string());
    }
    if j == i {
        return Err("missing value".to_string());
    }
    Ok(j)
}

/// The contents of a JSON string literal (`None` if `raw` is not one).
pub fn unquote(raw: &str) -> Option<String> {
    let inner = raw.strip_prefix('"')?.strip_suffix('"')?;
    let mut out = String::new();
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next()? {
            'n' => out.push('\n'),
            'r' => out.push('\r'),
            't' => out.push('\t'),
            'b' => out.push('\u{8}'),
            'f' => out.push('\u{c}'),
            'u' => {
                let hex: String = chars.by_ref().take(4).collect();
                out.push(char::from_u32(u32::from_str_radix(&hex, 16).ok()?).unwrap_or('\u{fffd}'));
            }
            c => out.push(c),
        }
    }
    Some(out)
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
