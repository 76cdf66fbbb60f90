//! What is masked before a message is written to a tape.
//!
//! Two things: the values at configured RFC 9535 JSONPaths (`--redact '$.params.arguments.password'`,
//! evaluated against the whole JSON-RPC message), and every occurrence of a configured secret
//! (the value of `--bearer-token-env`, of an `Authorization` or `Cookie` `--header`) anywhere in a
//! message. Headers themselves are never written to tapes at all.

use std::borrow::Cow;

use serde_json::Value;
use serde_json_path::JsonPath;

/// What a masked value becomes.
pub const MASK: &str = "[REDACTED]";

/// The masks applied to every recorded message.
#[derive(Debug, Default)]
pub struct Redactor {
    /// JSONPaths whose values are masked, with their text for messages.
    paths: Vec<(String, JsonPath)>,
    /// Strings masked wherever they appear.
    secrets: Vec<String>,
}

/// A `--redact` path that is not an RFC 9535 JSONPath.
#[derive(Debug, thiserror::Error)]
#[error("{path:?} is not a JSONPath (RFC 9535), at character {position}: {reason}")]
pub struct BadPath {
    /// The path as given.
    pub path: String,
    /// Where it goes wrong, from 0.
    pub position: usize,
    /// What is wrong.
    pub reason: String,
}

/// Parses one RFC 9535 JSONPath, with an error naming where it goes wrong.
pub fn parse_path(path: &str) -> Result<JsonPath, BadPath> {
    JsonPath::parse(path).map_err(|e| BadPath {
        path: path.to_owned(),
        position: e.position(),
        reason: e.message().to_owned(),
    })
}

/// The JSON pointers of every value `path` selects in `value`.
pub fn pointers(path: &JsonPath, value: &Value) -> Vec<String> {
    path.query_located(value)
        .locations()
        .map(serde_json_path::NormalizedPath::to_json_pointer)
        .collect()
}

impl Redactor {
    /// Masks for `paths` (RFC 9535 JSONPaths) and `secrets` (empty ones are ignored).
    pub fn new(paths: &[String], secrets: Vec<String>) -> Result<Self, BadPath> {
        Ok(Self {
            paths: paths
                .iter()
                .map(|p| Ok((p.clone(), parse_path(p)?)))
                .collect::<Result<_, BadPath>>()?,
            secrets: secrets.into_iter().filter(|s| !s.is_empty()).collect(),
        })
    }

    /// Whether any secret strings are masked.
    pub fn has_secrets(&self) -> bool {
        !self.secrets.is_empty()
    }

    /// Whether nothing is masked.
    pub fn is_empty(&self) -> bool {
        self.paths.is_empty() && self.secrets.is_empty()
    }

    /// `raw` with every mask applied (borrowed when nothing matched).
    pub fn apply<'a>(&self, raw: &'a [u8]) -> Cow<'a, [u8]> {
        let mut out = Cow::Borrowed(raw);
        if !self.paths.is_empty() {
            if let Ok(mut value) = serde_json::from_slice::<Value>(raw) {
                if self.mask_paths(&mut value) {
                    out = Cow::Owned(value.to_string().into_bytes());
                }
            }
        }
        for secret in &self.secrets {
            let secret = secret.as_bytes();
            if memchr::memmem::find(&out, secret).is_none() {
                continue;
            }
            let mut masked = Vec::with_capacity(out.len());
            let mut rest: &[u8] = &out;
            while let Some(at) = memchr::memmem::find(rest, secret) {
                masked.extend_from_slice(&rest[..at]);
                masked.extend_from_slice(MASK.as_bytes());
                rest = &rest[at + secret.len()..];
            }
            masked.extend_from_slice(rest);
            out = Cow::Owned(masked);
        }
        out
    }

    /// Masks the values at the configured paths in `value`; whether any was found.
    pub fn mask_paths(&self, value: &mut Value) -> bool {
        let mut changed = false;
        for (_, path) in &self.paths {
            for pointer in pointers(path, value) {
                if let Some(target) = value.pointer_mut(&pointer) {
                    *target = Value::String(MASK.to_owned());
                    changed = true;
                }
            }
        }
        changed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_secrets_are_masked_and_the_rest_is_untouched() {
        let r = Redactor::new(
            &["$.params.arguments.password".into(), "$..token".into()],
            vec!["s3cr3t".into(), String::new()],
        )
        .unwrap();
        let msg = br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"login","arguments":{"user":"ann","password":"hunter2","nested":{"token":"t0k"}},"_meta":{"note":"Bearer s3cr3t"}}}"#;
        let out = r.apply(msg);
        let text = std::str::from_utf8(&out).unwrap();
        assert!(!text.contains("hunter2") && !text.contains("t0k") && !text.contains("s3cr3t"));
        let v: Value = serde_json::from_str(text).unwrap();
        assert_eq!(v["params"]["arguments"]["password"], MASK);
        assert_eq!(v["params"]["arguments"]["nested"]["token"], MASK);
        assert_eq!(v["params"]["arguments"]["user"], "ann");
        assert_eq!(v["params"]["_meta"]["note"], format!("Bearer {MASK}"));
        // Nothing to mask: the very same bytes.
        let plain = br#"{"jsonrpc":"2.0","id":2,"method":"ping"}"#;
        assert!(matches!(r.apply(plain), Cow::Borrowed(_)));
        assert!(Redactor::default().is_empty());
    }

    #[test]
    fn a_bad_path_says_where() {
        let err = Redactor::new(&["$.params[".into()], vec![]).unwrap_err();
        assert_eq!(err.path, "$.params[");
        assert!(err.to_string().contains("JSONPath"), "{err}");
        assert!(Redactor::new(&["params.x".into()], vec![]).is_err());
    }
}
