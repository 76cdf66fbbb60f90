//! What is masked before a message is written to a tape.
//!
//! Two things: the values at configured RFC 9535 JSONPaths (`--redact '$.params.arguments.password'`,
//! evaluated against the whole JSON-RPC message), and every occurrence of a configured secret
//! (the value of `--bearer-token-env`, of an `Authorization` or `Cookie` `--header`) anywhere in a
//! message. Headers themselves are never written to tapes at all.
//!
//! [`command`]: the server's command line as it may be written down, secret-looking arguments
//! masked.

use std::borrow::Cow;

use serde_json::Value;
use serde_json_path::JsonPath;

use crate::pattern::{BadPath, parse_path, pointers};

pub mod command;

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
    ///
    /// Secrets are looked for in the bytes, and, when the message has escapes (a secret may be
    /// spelt `\u0073ecret` or `a\/b`), in its decoded strings too. A message that must be read
    /// as a tree for that and cannot be (valid JSON no tree holds: a number beyond a double's
    /// range, an escaped lone surrogate) is masked whole: what cannot be read is not written.
    pub fn apply<'a>(&self, raw: &'a [u8]) -> Cow<'a, [u8]> {
        let mut out = Cow::Borrowed(raw);
        let escaped = !self.secrets.is_empty() && memchr::memchr(b'\\', raw).is_some();
        if !self.paths.is_empty() || escaped {
            match serde_json::from_slice::<Value>(raw) {
                Ok(mut value) => {
                    let mut changed = self.mask_paths(&mut value);
                    if escaped {
                        changed |= self.mask_secrets_in(&mut value);
                    }
                    if changed {
                        out = Cow::Owned(value.to_string().into_bytes());
                    }
                }
                Err(e) => return Cow::Owned(masked_whole(raw, &e.to_string())),
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

    /// `text` (not a message: a name, a command line) with the secrets in it masked.
    pub fn mask_text(&self, text: &str) -> String {
        let mut text = text.to_owned();
        for secret in &self.secrets {
            if text.contains(secret.as_str()) {
                text = text.replace(secret.as_str(), MASK);
            }
        }
        text
    }

    /// `meta` masked as the `initialize` exchange it tells of is: `clientInfo` as the request's
    /// `params` member, `serverInfo` as the answer's `result` member (so `--redact
    /// '$.params.clientInfo.title'` masks both), the principal as a string with secrets in it.
    /// What cannot be read back after masking is left out.
    pub fn mask_meta(&self, meta: &super::Meta) -> super::Meta {
        if self.is_empty() {
            return meta.clone();
        }
        let masked = |message: Value, part: &str, member: &str| -> Option<Value> {
            let raw = self.apply(message.to_string().as_bytes()).into_owned();
            let value: Value = serde_json::from_slice(&raw).ok()?;
            let found = value.get(part)?.get(member)?.clone();
            // A message masked whole says why in place of its params or result.
            (!found.is_null()).then_some(found)
        };
        let request = |info: &Value| {
            serde_json::json!({"jsonrpc": "2.0", "id": 0, "method": "initialize",
                "params": {"protocolVersion": meta.protocol_version, "clientInfo": info}})
        };
        let answer = |info: &Value| {
            serde_json::json!({"jsonrpc": "2.0", "id": 0,
                "result": {"protocolVersion": meta.protocol_version, "serverInfo": info}})
        };
        let principal = meta.principal.as_deref().map(|p| self.mask_text(p));
        super::Meta {
            protocol_version: meta.protocol_version.clone(),
            client_info: meta
                .client_info
                .as_ref()
                .and_then(|info| masked(request(info), "params", "clientInfo")),
            server_info: meta
                .server_info
                .as_ref()
                .and_then(|info| masked(answer(info), "result", "serverInfo")),
            principal,
        }
    }

    /// Masks the secrets in every string (and member name) of `value`; whether any was found.
    fn mask_secrets_in(&self, value: &mut Value) -> bool {
        let mask = |text: &mut String| {
            let masked = self.mask_text(text);
            let changed = masked != *text;
            *text = masked;
            changed
        };
        match value {
            Value::String(text) => mask(text),
            Value::Array(items) => items
                .iter_mut()
                .fold(false, |changed, item| self.mask_secrets_in(item) | changed),
            Value::Object(members) => {
                let mut changed = false;
                for (name, member) in std::mem::take(members) {
                    let mut name = name;
                    changed |= mask(&mut name);
                    let mut member = member;
                    changed |= self.mask_secrets_in(&mut member);
                    members.insert(name, member);
                }
                changed
            }
            Value::Null | Value::Bool(_) | Value::Number(_) => false,
        }
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

/// What is written for a message that had to be read to be masked and could not be (`why`):
/// its id and method as they came (the envelope read both), and in place of its `params`,
/// `result` or `error` a mask saying why. The line is still a JSON-RPC message.
fn masked_whole(raw: &[u8], why: &str) -> Vec<u8> {
    use serde::de::IgnoredAny;
    use serde_json::value::RawValue;

    #[derive(serde::Deserialize)]
    struct Outline<'a> {
        #[serde(borrow)]
        id: Option<&'a RawValue>,
        #[serde(borrow)]
        method: Option<&'a RawValue>,
        result: Option<IgnoredAny>,
        error: Option<ErrorOutline>,
    }
    #[derive(serde::Deserialize)]
    struct ErrorOutline {
        code: Option<i64>,
    }

    let note =
        serde_json::json!({ MASK: format!("the message could not be read to mask it: {why}") });
    let Ok(outline) = serde_json::from_slice::<Outline<'_>>(raw) else {
        // The envelope read these members before the message got here; this cannot happen.
        return format!(r#"{{"jsonrpc":"2.0","method":"{MASK}","params":{note}}}"#).into_bytes();
    };
    let id = outline
        .id
        .map(|id| format!(r#","id":{}"#, id.get()))
        .unwrap_or_default();
    let body = if let Some(method) = outline.method {
        format!(r#","method":{},"params":{note}"#, method.get())
    } else if let Some(error) = outline.error {
        let code = error.code.unwrap_or(-32603);
        format!(r#","error":{{"code":{code},"message":"{MASK}","data":{note}}}"#)
    } else if outline.result.is_some() {
        format!(r#","result":{note}"#)
    } else {
        String::new()
    };
    format!(r#"{{"jsonrpc":"2.0"{id}{body}}}"#).into_bytes()
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
    }

    #[test]
    fn the_meta_line_is_masked_as_the_initialize_exchange_it_tells_of() {
        let r = Redactor::new(
            &["$.params.clientInfo.title".into(), "$..apiKey".into()],
            vec!["s3cr3t-t0k3n".into()],
        )
        .unwrap();
        let meta = crate::tape::Meta {
            protocol_version: Some("2025-06-18".into()),
            client_info: Some(
                serde_json::json!({"name": "c", "title": "Ann's laptop", "apiKey": "k"}),
            ),
            server_info: Some(serde_json::json!({"name": "s", "version": "build s3cr3t-t0k3n"})),
            principal: Some("key:s3cr3t-t0k3n".into()),
        };
        let masked = r.mask_meta(&meta);
        assert_eq!(
            masked.client_info,
            Some(serde_json::json!({"name": "c", "title": MASK, "apiKey": MASK}))
        );
        assert_eq!(
            masked.server_info,
            Some(serde_json::json!({"name": "s", "version": format!("build {MASK}")}))
        );
        assert_eq!(masked.principal.as_deref(), Some("key:[REDACTED]"));
        assert_eq!(masked.protocol_version, meta.protocol_version);
        assert_eq!(Redactor::default().mask_meta(&meta), meta);
        // Nothing to mask: the very same bytes.
        let plain = br#"{"jsonrpc":"2.0","id":2,"method":"ping"}"#;
        assert!(matches!(r.apply(plain), Cow::Borrowed(_)));
        assert!(Redactor::default().is_empty());
    }

    #[test]
    fn secrets_spelt_with_escapes_are_masked_too() {
        let r = Redactor::new(&[], vec!["s3cr3t/k3y".into()]).unwrap();
        for spelt in [r"s3cr\u0033t\/k3y", r"s3cr3t\/k3y", r"\u0073\u0033cr3t/k3y"] {
            let msg = format!(
                r#"{{"jsonrpc":"2.0","id":1,"result":{{"note":"Bearer {spelt}","q":"a\"b"}}}}"#
            );
            let out = r.apply(msg.as_bytes());
            let v: Value = serde_json::from_slice(&out).unwrap();
            assert_eq!(v["result"]["note"], format!("Bearer {MASK}"), "{spelt}");
            assert_eq!(v["result"]["q"], "a\"b");
        }
    }

    /// Valid JSON no tree holds cannot be searched for paths or escaped secrets: the message is
    /// masked whole, and the line is still the same JSON-RPC message (id, method, kind).
    #[test]
    fn what_cannot_be_read_is_masked_whole() {
        let by_path = Redactor::new(&["$..password".into()], vec![]).unwrap();
        let by_secret = Redactor::new(&[], vec!["hunter2".into()]).unwrap();
        let cases = [
            (
                &by_path,
                r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"arguments":{"password":"hunter2","n":1e999}}}"#,
            ),
            (
                &by_secret,
                r#"{"jsonrpc":"2.0","method":"notifications/message","params":{"x":"hunt\u0065r2\ud800"}}"#,
            ),
            (
                &by_path,
                r#"{"jsonrpc":"2.0","id":"a","result":{"password":"hunter2","n":-1e400}}"#,
            ),
            (
                &by_path,
                r#"{"jsonrpc":"2.0","id":8,"error":{"code":-32001,"message":"hunter2","data":{"n":1E+999}}}"#,
            ),
        ];
        for (redactor, raw) in cases {
            let out = redactor.apply(raw.as_bytes());
            let text = std::str::from_utf8(&out).unwrap();
            assert!(
                !text.contains("hunter2") && !text.contains("hunt"),
                "{text}"
            );
            let msg = crate::protocol::Message::parse(out.to_vec().into()).unwrap();
            let original = crate::protocol::Message::parse(raw.as_bytes().to_vec().into()).unwrap();
            assert_eq!(msg.kind(), original.kind(), "{text}");
            assert_eq!(msg.id(), original.id());
            assert_eq!(msg.method(), original.method());
            assert!(text.contains("could not be read to mask it"), "{text}");
        }
        // Without paths or escapes nothing needs the tree: the bytes are searched as they are.
        let raw = br#"{"jsonrpc":"2.0","id":1,"result":{"n":1e999,"x":"hunter2"}}"#;
        let out = by_secret.apply(raw);
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            r#"{"jsonrpc":"2.0","id":1,"result":{"n":1e999,"x":"[REDACTED]"}}"#
        );
    }

    #[test]
    fn a_bad_path_says_where() {
        let err = Redactor::new(&["$.params[".into()], vec![]).unwrap_err();
        assert_eq!(err.path, "$.params[");
        assert!(err.to_string().contains("JSONPath"), "{err}");
        assert!(Redactor::new(&["params.x".into()], vec![]).is_err());
    }
}
