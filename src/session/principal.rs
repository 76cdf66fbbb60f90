//! [`Principal`]: who an authenticated client proved to be. The gateway's door (`auth`) makes
//! one from a token; a session is bound to the one that opened it, and the stages (rate
//! limits, rules) see it as the sender of the client's messages.

use std::collections::BTreeMap;

use serde_json::Value;

/// Who a client proved to be. Never holds the token itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// Its identity, unique across issuers: `<issuer>#<sub>` for a token, `key:<name>` for an
    /// API key. What sessions are bound to and rate limits key on.
    pub id: String,
    /// The token's `sub`, or the API key's name.
    pub subject: String,
    /// The token's issuer (none for an API key).
    pub issuer: Option<String>,
    /// The scopes it was granted.
    pub scopes: Vec<String>,
    /// The token's claims the gateway keeps (`--auth-claim`), each selected one present:
    /// `null` when the token does not have it.
    pub claims: BTreeMap<String, Value>,
}

/// A claim of a [`Principal`], as [`Principal::claim`] finds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim<'a> {
    /// The token has it.
    Value(&'a Value),
    /// The token does not have it (or the principal is an API key, which has no claims).
    Absent,
    /// The gateway does not keep it: whether the token has it is not known.
    NotKept,
}

impl Principal {
    /// Whether it was granted `scope`.
    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes.iter().any(|s| s == scope)
    }

    /// Its claim `name`: `sub` and `iss` are always known; others if the gateway keeps them.
    pub fn claim(&self, name: &str) -> Claim<'_> {
        match self.claims.get(name) {
            Some(Value::Null) => Claim::Absent,
            Some(value) => Claim::Value(value),
            None if self.issuer.is_none() => Claim::Absent,
            None => Claim::NotKept,
        }
    }

    /// Its claim `name` as text to compare: `sub` and `iss` from the principal, a string as it
    /// is, a number or boolean as JSON writes it; each string of an array. `None` when the
    /// claim is not kept.
    pub fn claim_texts(&self, name: &str) -> Option<Vec<String>> {
        match name {
            "sub" => return Some(vec![self.subject.clone()]),
            "iss" => return Some(self.issuer.iter().cloned().collect()),
            _ => {}
        }
        let value = match self.claim(name) {
            Claim::Value(value) => value,
            Claim::Absent => return Some(Vec::new()),
            Claim::NotKept => return None,
        };
        let text = |v: &Value| match v {
            Value::String(s) => Some(s.clone()),
            Value::Number(_) | Value::Bool(_) => Some(v.to_string()),
            Value::Null | Value::Array(_) | Value::Object(_) => None,
        };
        Some(match value {
            Value::Array(items) => items.iter().filter_map(text).collect(),
            other => text(other).into_iter().collect(),
        })
    }
}

/// Whether `scopes` can be granted and asked for: at most `most`, each a scope token (RFC 6749
/// §3.3) that also goes in a challenge as it is (no quote or backslash). The error says which
/// is not.
pub fn check_scopes(scopes: &[String], most: usize) -> Result<(), String> {
    if scopes.len() > most {
        return Err(format!("at most {most} scopes"));
    }
    match scopes.iter().find(|s| {
        s.is_empty()
            || !s
                .bytes()
                .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\')
    }) {
        Some(bad) => Err(format!(
            "{bad:?}: a scope is printable ASCII without spaces, quotes or backslashes"
        )),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn alice() -> Principal {
        Principal {
            id: "https://id.example#alice".into(),
            subject: "alice".into(),
            issuer: Some("https://id.example".into()),
            scopes: vec!["files:read".into()],
            claims: [
                ("groups".to_owned(), json!(["admins", 7, {"x": 1}])),
                ("tenant".to_owned(), json!("acme")),
                ("email".to_owned(), Value::Null),
            ]
            .into_iter()
            .collect(),
        }
    }

    #[test]
    fn claims_are_known_kept_or_not() {
        let p = alice();
        assert_eq!(p.claim("tenant"), Claim::Value(&json!("acme")));
        assert_eq!(p.claim("email"), Claim::Absent);
        assert_eq!(p.claim("role"), Claim::NotKept);
        assert_eq!(
            p.claim_texts("groups"),
            Some(vec!["admins".to_owned(), "7".to_owned()])
        );
        assert_eq!(p.claim_texts("sub"), Some(vec!["alice".to_owned()]));
        assert_eq!(p.claim_texts("email"), Some(vec![]));
        assert_eq!(p.claim_texts("role"), None);
        let key = Principal {
            id: "key:ci".into(),
            subject: "ci".into(),
            issuer: None,
            scopes: vec![],
            claims: BTreeMap::new(),
        };
        assert_eq!(key.claim("role"), Claim::Absent);
        assert_eq!(key.claim_texts("iss"), Some(vec![]));
        assert!(p.has_scope("files:read") && !p.has_scope("files:write"));
    }
}
