//! What a peer declared about itself in the `initialize` exchange (`clientInfo`, `serverInfo`,
//! `capabilities`), kept as JSON text and bounded: a client's 8 MiB `clientInfo` must not become
//! an 8 MiB tree per session, copied into every history row. Sharing the text makes copies
//! (history saves, tapes) free.

use std::sync::Arc;

use serde::Serialize;
use serde_json::Value;
use serde_json::value::RawValue;

/// Most bytes of one declared value kept. A larger one is kept as a summary:
/// `{"truncated": true, "bytes": N}`, with its `name` and `version` when they are short strings
/// (what rules and `session list` read).
pub const MAX_DECLARED_BYTES: usize = 16 * 1024;

/// Longest `name` or `version` carried into the summary of a value over the cap.
const MAX_SUMMARY_STRING: usize = 256;

/// The members of a declared value a summary keeps.
#[derive(serde::Deserialize)]
struct Names<'a> {
    #[serde(borrow)]
    name: Option<&'a RawValue>,
    #[serde(borrow)]
    version: Option<&'a RawValue>,
}

/// One declared value: its JSON text, at most [`MAX_DECLARED_BYTES`].
#[derive(Debug, Clone)]
pub struct Declared(Arc<RawValue>);

impl Declared {
    /// `raw`, or its summary if it is over the cap.
    pub fn bounded(raw: &RawValue) -> Self {
        let text = raw.get();
        if text.len() <= MAX_DECLARED_BYTES {
            return Self(Arc::from(raw.to_owned()));
        }
        let short = |v: Option<&RawValue>| {
            v.and_then(|v| serde_json::from_str::<String>(v.get()).ok())
                .filter(|s| s.len() <= MAX_SUMMARY_STRING)
        };
        let mut summary = serde_json::Map::new();
        if let Ok(names) = serde_json::from_str::<Names<'_>>(text) {
            if let Some(name) = short(names.name) {
                summary.insert("name".into(), name.into());
            }
            if let Some(version) = short(names.version) {
                summary.insert("version".into(), version.into());
            }
        }
        summary.insert("truncated".into(), true.into());
        summary.insert("bytes".into(), text.len().into());
        Self::from_value(&Value::Object(summary))
    }

    /// `value` as declared (bounded like [`Declared::bounded`]).
    pub fn from_value(value: &Value) -> Self {
        let text = value.to_string();
        match RawValue::from_string(text) {
            Ok(raw) if raw.get().len() <= MAX_DECLARED_BYTES => Self(Arc::from(raw)),
            Ok(raw) => Self::bounded(&raw),
            // A `Value` always serializes to valid JSON.
            Err(_) => Self(Arc::from(RawValue::NULL.to_owned())),
        }
    }

    /// Parses stored JSON text (history); `None` if it is not JSON.
    pub fn parse(text: &str) -> Option<Self> {
        let raw: &RawValue = serde_json::from_str(text).ok()?;
        Some(Self::bounded(raw))
    }

    /// The JSON text.
    pub fn get(&self) -> &str {
        self.0.get()
    }

    /// As a tree (for display and tapes, off the hot path).
    pub fn to_value(&self) -> Value {
        serde_json::from_str(self.get()).unwrap_or(Value::Null)
    }

    /// Member `key` of an object, if it is a string.
    pub fn str_member(&self, key: &str) -> Option<String> {
        let members: std::collections::HashMap<&str, &RawValue> =
            serde_json::from_str(self.get()).ok()?;
        serde_json::from_str(members.get(key)?.get()).ok()
    }
}

impl PartialEq for Declared {
    fn eq(&self, other: &Self) -> bool {
        self.get() == other.get()
    }
}

impl Serialize for Declared {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(serializer)
    }
}

/// Read back as written (bounded again, as when it was declared; object keys sorted).
impl<'de> serde::Deserialize<'de> for Declared {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // As a value (a raw value cannot be read back through `#[serde(flatten)]`).
        let value = Value::deserialize(deserializer)?;
        Ok(Self::from_value(&value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(text: &str) -> Box<RawValue> {
        RawValue::from_string(text.to_owned()).unwrap()
    }

    #[test]
    fn small_values_are_kept_as_they_were_written() {
        let text = r#"{ "name": "ide", "version": "9", "x": [1, 2] }"#;
        let declared = Declared::bounded(&raw(text));
        assert_eq!(declared.get(), text);
        assert_eq!(declared.str_member("name").as_deref(), Some("ide"));
        assert_eq!(declared.str_member("x"), None);
        assert_eq!(
            serde_json::to_string(&declared).unwrap(),
            text,
            "serialized as is"
        );
        assert_eq!(declared.clone(), declared);
    }

    #[test]
    fn a_value_over_the_cap_is_kept_as_a_summary_with_its_name() {
        let padding = "p".repeat(8 * 1024 * 1024);
        let text = format!(r#"{{"name":"big-client","version":"1.0","pad":"{padding}"}}"#);
        let declared = Declared::bounded(&raw(&text));
        assert!(declared.get().len() < 200, "{}", declared.get());
        assert_eq!(
            declared.to_value(),
            serde_json::json!({"name":"big-client","version":"1.0","truncated":true,"bytes":text.len()})
        );
        let long_name = format!(r#"{{"name":"{padding}"}}"#);
        let declared = Declared::bounded(&raw(&long_name));
        assert_eq!(declared.str_member("name"), None);
        assert_eq!(declared.to_value()["truncated"], true);
        let array = format!("[\"{padding}\"]");
        assert_eq!(
            Declared::bounded(&raw(&array)).to_value(),
            serde_json::json!({"truncated": true, "bytes": array.len()})
        );
    }

    #[test]
    fn stored_text_and_trees_are_bounded_the_same_way() {
        assert_eq!(Declared::parse("not json"), None);
        let big = serde_json::json!({"name": "n", "pad": "p".repeat(MAX_DECLARED_BYTES)});
        assert_eq!(Declared::from_value(&big).to_value()["truncated"], true);
        assert_eq!(
            Declared::parse(&big.to_string()).unwrap(),
            Declared::from_value(&big)
        );
    }
}
