//! Rewriting one member of a message (its id, a progress token) while every other byte stays as
//! it came: members are read in order as raw JSON, and only the one on the path is replaced.
//! For a proxy that must make ids unique among several clients sharing one server, and give
//! the answers back under the ids their clients chose.

use std::borrow::Cow;
use std::fmt;

use bytes::Bytes;
use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

use super::id::RequestId;
use super::message::Message;

/// A JSON object's members in order, each value raw.
struct Members<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'de: 'a, 'a> Deserialize<'de> for Members<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct InOrder<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for InOrder<'a> {
            type Value = Members<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Self::Value, M::Error> {
                let mut members = Vec::with_capacity(map.size_hint().unwrap_or(4));
                while let Some(entry) = map.next_entry::<Cow<'de, str>, &'de RawValue>()? {
                    members.push(entry);
                }
                Ok(Members(members))
            }
        }
        deserializer.deserialize_map(InOrder(std::marker::PhantomData))
    }
}

/// `json` (an object) with the member at `path` (keys from the top) replaced by the JSON text
/// `value`; `None` if `json` is not an object or has no such member.
pub fn replace(json: &str, path: &[&str], value: &str) -> Option<String> {
    edit(json, path, value, false)
}

/// `json` (an object) with the member at `path` set to the JSON text `value`: replaced where it
/// is, or added as its object's last member, the objects on the way created when absent. `None`
/// if `json` or a member on the path is not an object, or a key on the path is there twice
/// (which one a reader takes is not settled).
pub fn set(json: &str, path: &[&str], value: &str) -> Option<String> {
    edit(json, path, value, true)
}

fn edit(json: &str, path: &[&str], value: &str, add: bool) -> Option<String> {
    let (key, rest) = path.split_first()?;
    let Members(members) = serde_json::from_str(json).ok()?;
    if add && members.iter().filter(|(name, _)| name == key).count() > 1 {
        return None;
    }
    let mut out = String::with_capacity(json.len() + value.len() + key.len() + 16);
    out.push('{');
    let mut found = false;
    for (i, (name, member)) in members.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&serde_json::to_string(name).ok()?);
        out.push(':');
        if !found && name == key {
            found = true;
            if rest.is_empty() {
                out.push_str(value);
            } else {
                out.push_str(&edit(member.get(), rest, value, add)?);
            }
        } else {
            out.push_str(member.get());
        }
    }
    if !found && add {
        if !members.is_empty() {
            out.push(',');
        }
        out.push_str(&serde_json::to_string(key).ok()?);
        out.push(':');
        if rest.is_empty() {
            out.push_str(value);
        } else {
            out.push_str(&edit("{}", rest, value, add)?);
        }
        found = true;
    }
    out.push('}');
    found.then_some(out)
}

impl Message {
    /// This message with the member at `path` replaced by the JSON text `value`; `None` if it
    /// has no such member (or the result is not a valid message).
    pub fn with_member(&self, path: &[&str], value: &str) -> Option<Message> {
        let text = std::str::from_utf8(self.raw()).ok()?;
        Message::parse(Bytes::from(replace(text, path, value)?)).ok()
    }

    /// This request or response under another id; `None` if it has none.
    pub fn with_id(&self, id: &RequestId) -> Option<Message> {
        self.id()?;
        let mut json = Vec::new();
        id.write_json(&mut json);
        self.with_member(&["id"], std::str::from_utf8(&json).ok()?)
    }

    /// This error response as the answer to request `id`, whatever id it carried (an HTTP
    /// server's refusal often has `null`); `None` unless it is an error response.
    pub fn error_for(&self, id: &RequestId) -> Option<Message> {
        if self.kind() != super::Kind::Error {
            return None;
        }
        let mut json = Vec::new();
        id.write_json(&mut json);
        self.with_member(&["id"], std::str::from_utf8(&json).ok()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_member_changes_and_every_other_byte_stays() {
        let raw = r#"{"jsonrpc":"2.0", "id" : 7,"method":"tools/call","params":{"_meta":{"progressToken":7,"x":"\u00e9"},"name":"a"}}"#;
        let msg = Message::parse(Bytes::from_static(raw.as_bytes())).unwrap();
        let renamed = msg.with_id(&RequestId::String("alias-1".into())).unwrap();
        assert_eq!(
            std::str::from_utf8(renamed.raw()).unwrap(),
            r#"{"jsonrpc":"2.0","id":"alias-1","method":"tools/call","params":{"_meta":{"progressToken":7,"x":"\u00e9"},"name":"a"}}"#
        );
        assert_eq!(renamed.id(), Some(&RequestId::String("alias-1".into())));
        assert_eq!(renamed.method(), msg.method());
        let token = renamed
            .with_member(&["params", "_meta", "progressToken"], "\"t-1\"")
            .unwrap();
        assert!(
            std::str::from_utf8(token.raw())
                .unwrap()
                .contains(r#"{"progressToken":"t-1","x":"\u00e9"}"#)
        );
        // Missing members, and messages without ids.
        assert!(msg.with_member(&["params", "nope"], "1").is_none());
        assert!(msg.with_member(&["id", "deeper"], "1").is_none());
        let note = Message::parse(Bytes::from_static(
            br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
        ))
        .unwrap();
        assert!(note.with_id(&RequestId::Number(1)).is_none());
        // An HTTP refusal's error body, answered under the request's id.
        let refusal = Message::parse(Bytes::from_static(
            br#"{"jsonrpc":"2.0","id":null,"error":{"code":-32602,"message":"bad"}}"#,
        ))
        .unwrap();
        assert_eq!(
            refusal.error_for(&RequestId::Number(4)).unwrap().raw(),
            &Bytes::from_static(
                br#"{"jsonrpc":"2.0","id":4,"error":{"code":-32602,"message":"bad"}}"#
            )
        );
        assert!(note.error_for(&RequestId::Number(1)).is_none());
        // `set` adds what `replace` cannot, and refuses a key given twice on the path.
        assert_eq!(
            set(r#"{"a":{"b":1}}"#, &["a", "c", "d"], "2").as_deref(),
            Some(r#"{"a":{"b":1,"c":{"d":2}}}"#)
        );
        assert!(set(r#"{"a":{},"a":{}}"#, &["a", "b"], "1").is_none());
        assert!(set(r#"{"a":[1]}"#, &["a", "b"], "1").is_none());
        assert!(replace(r#"{"a":1}"#, &["b"], "2").is_none());
        // Escaped keys are written back escaped.
        assert_eq!(
            replace(r#"{"a\"b":1,"c":2}"#, &["c"], "3").as_deref(),
            Some(r#"{"a\"b":1,"c":3}"#)
        );
    }
}
