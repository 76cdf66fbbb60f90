//! JSON-RPC request ids.

use std::fmt;
use std::sync::Arc;

use serde::Serialize;
use serde_json::value::RawValue;

/// A JSON-RPC request id: a string or an integer. `null` is not a valid id for a request.
///
/// Ids are compared by value, so `"7"` and `7` are different ids, as JSON-RPC says.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RequestId {
    /// An integer id.
    Number(i64),
    /// A string id.
    String(Arc<str>),
}

/// Why an `id` member is not a usable request id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// `"id": null`.
    #[error("id must not be null")]
    Null,
    /// A number that is not an integer, or out of the 64-bit signed range.
    #[error("id must be an integer or a string")]
    NotInteger,
    /// An object, array or boolean.
    #[error("id must be a string or an integer")]
    WrongType,
    /// A string id longer than [`MAX_ID_BYTES`] (ids are kept while their request is pending).
    #[error("id must be at most 1024 bytes long")]
    TooLong,
}

/// Longest id accepted, as JSON text: ids (and progress tokens) are kept while their request
/// is pending, so their size is bounded like everything else a client can make us hold.
pub const MAX_ID_BYTES: usize = 1024;

impl RequestId {
    /// Reads an id from its raw JSON text.
    pub fn from_raw(raw: &RawValue) -> Result<Self, IdError> {
        Self::from_json_text(raw.get())
    }

    /// Reads an id from a JSON text fragment (a string or number literal).
    pub fn from_json_text(text: &str) -> Result<Self, IdError> {
        if text.len() > MAX_ID_BYTES {
            return Err(IdError::TooLong);
        }
        match text.as_bytes().first() {
            Some(b'"') => serde_json::from_str::<std::borrow::Cow<'_, str>>(text)
                .map(|s| Self::String(Arc::from(s.as_ref())))
                .map_err(|_| IdError::WrongType),
            Some(b'-' | b'0'..=b'9') => text
                .parse::<i64>()
                .map(Self::Number)
                .map_err(|_| IdError::NotInteger),
            Some(b'n') => Err(IdError::Null),
            _ => Err(IdError::WrongType),
        }
    }

    /// Appends the id as JSON to `out`.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        match self {
            Self::Number(n) => out.extend_from_slice(n.to_string().as_bytes()),
            Self::String(s) => {
                // Serialising a str into a Vec cannot fail.
                let _ = serde_json::to_writer(&mut *out, s.as_ref());
            }
        }
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Number(n) => write!(f, "{n}"),
            Self::String(s) => write!(f, "{s:?}"),
        }
    }
}

impl Serialize for RequestId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Number(n) => s.serialize_i64(*n),
            Self::String(v) => s.serialize_str(v),
        }
    }
}

impl From<i64> for RequestId {
    fn from(n: i64) -> Self {
        Self::Number(n)
    }
}

impl From<&str> for RequestId {
    fn from(s: &str) -> Self {
        Self::String(Arc::from(s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_numbers_and_strings() {
        assert_eq!(RequestId::from_json_text("42"), Ok(RequestId::Number(42)));
        assert_eq!(RequestId::from_json_text("-7"), Ok(RequestId::Number(-7)));
        assert_eq!(
            RequestId::from_json_text("\"a\\u0062\""),
            Ok(RequestId::from("ab"))
        );
    }

    #[test]
    fn rejects_null_fractions_and_other_types() {
        assert_eq!(RequestId::from_json_text("null"), Err(IdError::Null));
        assert_eq!(RequestId::from_json_text("1.5"), Err(IdError::NotInteger));
        assert_eq!(
            RequestId::from_json_text("99999999999999999999"),
            Err(IdError::NotInteger)
        );
        assert_eq!(RequestId::from_json_text("{}"), Err(IdError::WrongType));
        assert_eq!(RequestId::from_json_text("true"), Err(IdError::WrongType));
    }

    #[test]
    fn writes_back_as_json() {
        let mut out = Vec::new();
        RequestId::from("q\"x").write_json(&mut out);
        out.push(b' ');
        RequestId::Number(-3).write_json(&mut out);
        assert_eq!(out, br#""q\"x" -3"#);
    }
}
