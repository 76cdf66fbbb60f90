//! MCP's HTTP request headers: their names, which of a client's go upstream, and the headers
//! of the 2026-07-28 era that mirror fields of the body (`MCP-Protocol-Version`, `Mcp-Method`,
//! `Mcp-Name`, and `Mcp-Param-*` for the tool parameters a `tools/list` answer marks
//! `x-mcp-header`), made from a message so they say what its body says.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};

use http::{HeaderMap, HeaderName, HeaderValue};
use serde_json::value::RawValue;

use super::{Kind, Message};

/// `Mcp-Session-Id`.
pub static MCP_SESSION_ID: HeaderName = HeaderName::from_static("mcp-session-id");
/// `MCP-Protocol-Version`.
pub static MCP_PROTOCOL_VERSION: HeaderName = HeaderName::from_static("mcp-protocol-version");
/// `Last-Event-ID`.
pub static LAST_EVENT_ID: HeaderName = HeaderName::from_static("last-event-id");
/// `Mcp-Method` (2026-07-28).
pub static MCP_METHOD: HeaderName = HeaderName::from_static("mcp-method");
/// `Mcp-Name` (2026-07-28).
pub static MCP_NAME: HeaderName = HeaderName::from_static("mcp-name");

/// W3C trace context's `traceparent` header.
pub const TRACEPARENT: &str = "traceparent";
/// W3C trace context's `tracestate` header.
pub const TRACESTATE: &str = "tracestate";

/// Whether a client's header may be forwarded to the upstream: the request headers MCP defines
/// (`Mcp-Session-Id` is not among them; it is mapped, never copied), and W3C trace context,
/// which passes through untouched as it does in `_meta` (with tracing on, the proxy's own
/// replaces it: [`with_trace_context`]).
pub fn is_forwarded_header(name: &HeaderName) -> bool {
    let name = name.as_str();
    name == TRACEPARENT
        || name == TRACESTATE
        || name == MCP_PROTOCOL_VERSION.as_str()
        || name == LAST_EVENT_ID.as_str()
        || name == MCP_METHOD.as_str()
        || name == MCP_NAME.as_str()
        || name.starts_with("mcp-param-")
}

/// The body fields the headers mirror.
#[derive(serde::Deserialize)]
pub(crate) struct Body<'a> {
    #[serde(borrow)]
    pub(crate) params: Option<Params<'a>>,
}

#[derive(serde::Deserialize)]
pub(crate) struct Params<'a> {
    #[serde(borrow)]
    pub(crate) name: Option<&'a RawValue>,
    #[serde(borrow)]
    pub(crate) uri: Option<&'a RawValue>,
    #[serde(rename = "_meta", borrow)]
    pub(crate) meta: Option<Meta<'a>>,
}

#[derive(serde::Deserialize)]
pub(crate) struct Meta<'a> {
    #[serde(rename = "io.modelcontextprotocol/protocolVersion", borrow)]
    pub(crate) version: Option<&'a RawValue>,
    #[serde(rename = "io.modelcontextprotocol/clientCapabilities", borrow)]
    pub(crate) capabilities: Option<&'a RawValue>,
}

/// A raw JSON string's text.
pub(crate) fn text(raw: Option<&RawValue>) -> Option<String> {
    raw.and_then(|raw| serde_json::from_str::<String>(raw.get()).ok())
}

/// The headers an HTTP client sends with `msg`, for a client that has none (the stdio side of
/// `forward stdio --url`): in the stateless era (the body's `_meta` names the protocol version)
/// `MCP-Protocol-Version` from it, and for requests `Mcp-Method` and `Mcp-Name` (encoded when
/// not header-safe); otherwise the session's `negotiated` version, if any. (`Mcp-Param-*`
/// headers would need the tool's schema; they are not made.) `initialize` gets none: the
/// version header belongs to the requests after the handshake, and a dual-era server reads one
/// on `initialize` (say `2026-07-28`, which the client asked for) as a stateless request.
pub fn headers_for(msg: &Message, negotiated: Option<HeaderValue>) -> HeaderMap {
    if msg.method() == Some(&super::Method::Initialize) {
        return HeaderMap::new();
    }
    stateless_headers(msg).unwrap_or_else(|| {
        let mut headers = HeaderMap::new();
        if let Some(version) = negotiated {
            headers.insert(MCP_PROTOCOL_VERSION.clone(), version);
        }
        headers
    })
}

/// `headers` with the trace context of `msg` (as the proxy's tracing wrote it into
/// `params._meta`) as its `traceparent` and `tracestate`, in place of any it had.
pub fn with_trace_context(headers: &HeaderMap, msg: &Message) -> HeaderMap {
    let mut headers = headers.clone();
    let carrier = msg.trace_context();
    headers.remove(TRACEPARENT);
    headers.remove(TRACESTATE);
    for (name, value) in [
        (TRACEPARENT, carrier.traceparent),
        (TRACESTATE, carrier.tracestate),
    ] {
        if let Some(value) = value.and_then(|v| HeaderValue::from_str(&v).ok()) {
            headers.insert(name, value);
        }
    }
    headers
}

/// Built once: setting up a search for this needle costs more than most searches.
static VERSION: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
    std::sync::LazyLock::new(|| {
        memchr::memmem::Finder::new(b"io.modelcontextprotocol/protocolVersion")
    });

/// The protocol version a stateless-era (2026-07-28) request names in its
/// `params._meta["io.modelcontextprotocol/protocolVersion"]`, if it names one.
pub fn body_version(msg: &Message) -> Option<String> {
    VERSION.find(msg.raw())?;
    let params = serde_json::from_slice::<Body<'_>>(msg.raw()).ok()?.params?;
    text(params.meta?.version)
}

/// The headers that mirror `msg`'s body in the stateless era, if the body is of that era (its
/// `_meta` names the protocol version): `MCP-Protocol-Version`, and for requests `Mcp-Method`
/// and `Mcp-Name` (encoded when not header-safe).
fn stateless_headers(msg: &Message) -> Option<HeaderMap> {
    let params = if VERSION.find(msg.raw()).is_some() {
        serde_json::from_slice::<Body<'_>>(msg.raw())
            .ok()
            .and_then(|b| b.params)
    } else {
        None
    };
    let version = text(params.as_ref().and_then(|p| p.meta.as_ref()?.version))
        .and_then(|v| HeaderValue::from_str(&v).ok())?;
    let mut headers = HeaderMap::new();
    headers.insert(MCP_PROTOCOL_VERSION.clone(), version);
    let (Some(method), Kind::Request) = (msg.method(), msg.kind()) else {
        return Some(headers);
    };
    if let Ok(value) = HeaderValue::from_str(method.as_str()) {
        headers.insert(MCP_METHOD.clone(), value);
    }
    let name = match method.as_str() {
        "tools/call" | "prompts/get" => text(params.as_ref().and_then(|p| p.name)),
        "resources/read" => text(params.as_ref().and_then(|p| p.uri)),
        _ => None,
    };
    if let Some(value) = name.and_then(|n| HeaderValue::from_str(&encode_sentinel(&n)).ok()) {
        headers.insert(MCP_NAME.clone(), value);
    }
    Some(headers)
}

/// The headers sent upstream with `msg` for a client that sent `client`: theirs that MCP defines
/// ([`crate::transport::http::is_forwarded_header`]), except that `Mcp-Method` and `Mcp-Name`
/// are made from `msg` itself, never copied: they then say what the forwarded body says (after
/// any rule changed it), and a client cannot steer an intermediary with values nobody checked.
/// Before the stateless era, which defines them, none of the mirrored headers go (nor the
/// client's `Mcp-Param-*`).
/// The client's `Mcp-Param-*` go as sent (the upstream checks them against the body), except
/// where a rule changed a mirrored argument ([`follow_rule_change`]).
pub fn upstream_headers(client: &HeaderMap, msg: &Message) -> HeaderMap {
    let made = stateless_headers(msg);
    let modern = made.is_some();
    let made = made.unwrap_or_default();
    let mut headers = HeaderMap::with_capacity(client.len().min(8) + made.len());
    for (name, value) in client {
        let made_here = name == MCP_METHOD
            || name == MCP_NAME
            || (!modern && name.as_str().starts_with("mcp-param-"));
        if is_forwarded_header(name) && !made_here {
            headers.append(name.clone(), value.clone());
        }
    }
    for (name, value) in made {
        if let Some(name) = name.filter(|name| *name != MCP_PROTOCOL_VERSION) {
            headers.insert(name, value);
        }
    }
    headers
}

/// `value` as a header value: as it is when that is safe (visible ASCII and inner spaces, not
/// itself looking encoded), else in the `=?base64?…?=` form.
pub fn encode_sentinel(value: &str) -> String {
    use base64::Engine as _;
    let safe = !value.is_empty()
        && value.bytes().all(|b| b == b' ' || b.is_ascii_graphic())
        && value.trim() == value
        && !(value.starts_with("=?base64?") && value.ends_with("?="));
    if safe {
        return value.to_owned();
    }
    format!(
        "=?base64?{}?=",
        base64::engine::general_purpose::STANDARD.encode(value)
    )
}

/// A tool parameter whose value is mirrored into an `Mcp-Param-{name}` header (its schema says
/// `"x-mcp-header": name`), at `path` (`properties` keys from the schema's root).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamHeader {
    /// The header is `Mcp-Param-{name}`.
    pub name: String,
    /// Where the value is in the call's `arguments`.
    pub path: Vec<String>,
}

/// The tools an upstream mirrors parameters of (`x-mcp-header`), learnt from the `tools/list`
/// answers that pass: for headers made from the forwarded body, and for checking a client's.
/// At most [`MirroredTools::MAX`] tools are kept (a later answer updates those it names).
#[derive(Debug, Default)]
pub struct MirroredTools {
    tools: Mutex<HashMap<String, Vec<ParamHeader>>>,
    /// Whether any tool was learnt: until one is, [`Self::of`] takes no lock (most servers
    /// mirror nothing, and every `tools/call` asks).
    any: AtomicBool,
}

impl MirroredTools {
    /// Most tools kept.
    pub const MAX: usize = 4096;

    /// Keeps what the answer `raw` (any message; only `tools/list` answers name tools) says.
    pub fn learn(&self, raw: &[u8]) {
        // Built once: setting up a search costs more than most searches (this runs for every
        // answer from the upstream).
        static ANNOTATION: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
            std::sync::LazyLock::new(|| memchr::memmem::Finder::new(b"x-mcp-header"));
        if ANNOTATION.find(raw).is_none() {
            return;
        }
        let found = tool_param_headers(raw);
        let mut tools = self.tools.lock().unwrap_or_else(PoisonError::into_inner);
        for (name, params) in found {
            if tools.len() < Self::MAX || tools.contains_key(&name) {
                tools.insert(name, params);
            }
        }
        if !tools.is_empty() {
            self.any.store(true, Ordering::Release);
        }
    }

    /// The parameters the tool `msg` calls mirrors. `Ok(None)`: not a `tools/call`, or a tool
    /// not known to mirror any; `Err(())`: the tool's name cannot be read, while some tool
    /// mirrors parameters (a check must not pass such a call by).
    #[allow(clippy::result_unit_err)] // As `Message::called_tool`, whose `Err(())` it passes on.
    pub fn of(&self, msg: &Message) -> Result<Option<Vec<ParamHeader>>, ()> {
        if !self.any.load(Ordering::Acquire) {
            return Ok(None);
        }
        let tools = self.tools.lock().unwrap_or_else(PoisonError::into_inner);
        Ok(msg
            .called_tool()?
            .and_then(|name| tools.get(&name).cloned()))
    }

    /// `msg` before the pipeline, if it calls a tool that mirrors parameters: the headers
    /// follow what a rule then changes in it ([`Before::follow`]).
    pub fn before(&self, msg: &Message) -> Option<Before> {
        let params = self.of(msg).ok().flatten()?;
        Some(Before {
            params,
            msg: msg.clone(),
        })
    }
}

/// A call of a tool that mirrors parameters, as the client sent it.
#[derive(Debug)]
pub struct Before {
    params: Vec<ParamHeader>,
    msg: Message,
}

impl Before {
    /// Makes the client's `headers` follow what the pipeline made of the call (`after`).
    pub fn follow(self, headers: &mut HeaderMap, after: &Message) {
        if self.msg.raw() != after.raw() {
            follow_rule_change(headers, &self.msg, after, &self.params);
        }
    }
}

/// Makes the client's `Mcp-Param-*` `headers` follow a rule that changed its message from
/// `before` to `after`: each mirrored parameter whose value the change altered gets the header
/// the forwarded body calls for (or none, if the rule removed the argument); the others stay as
/// the client sent them, right or wrong, for the upstream to judge as it would without us.
pub fn follow_rule_change(
    headers: &mut HeaderMap,
    before: &Message,
    after: &Message,
    params: &[ParamHeader],
) {
    let was = param_headers_for(before, params);
    let now = param_headers_for(after, params);
    for param in params {
        let Ok(name) = HeaderName::from_bytes(format!("mcp-param-{}", param.name).as_bytes())
        else {
            continue;
        };
        let value = |made: &[(HeaderName, HeaderValue)]| {
            made.iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.clone())
        };
        let (old, new) = (value(&was), value(&now));
        if old != new {
            headers.remove(&name);
            if let Some(new) = new {
                headers.insert(name, new);
            }
        }
    }
}

/// The tools of a `tools/list` answer that mirror parameters into headers: tool name → its
/// mirrored parameters. Only annotations the spec allows count (a token name, reachable through
/// `properties` alone); a tool with an invalid one mirrors nothing, and is logged.
pub fn tool_param_headers(result: &[u8]) -> Vec<(String, Vec<ParamHeader>)> {
    fn walk(
        schema: &serde_json::Value,
        path: &mut Vec<String>,
        out: &mut Vec<ParamHeader>,
    ) -> bool {
        let Some(properties) = schema
            .get("properties")
            .and_then(serde_json::Value::as_object)
        else {
            return true;
        };
        for (key, property) in properties {
            path.push(key.clone());
            if let Some(name) = property.get("x-mcp-header") {
                let valid = name
                    .as_str()
                    .is_some_and(|n| !n.is_empty() && HeaderName::from_bytes(n.as_bytes()).is_ok());
                if !valid {
                    return false;
                }
                out.push(ParamHeader {
                    name: name.as_str().unwrap_or_default().to_owned(),
                    path: path.clone(),
                });
            }
            if !walk(property, path, out) {
                return false;
            }
            path.pop();
        }
        true
    }
    let Ok(msg) = serde_json::from_slice::<serde_json::Value>(result) else {
        return Vec::new();
    };
    let Some(tools) = msg
        .pointer("/result/tools")
        .and_then(serde_json::Value::as_array)
    else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for tool in tools {
        let (Some(name), Some(schema)) = (
            tool.get("name").and_then(serde_json::Value::as_str),
            tool.get("inputSchema"),
        ) else {
            continue;
        };
        let mut params = Vec::new();
        if walk(schema, &mut Vec::new(), &mut params) {
            if !params.is_empty() {
                found.push((name.to_owned(), params));
            }
        } else {
            tracing::warn!(
                tool = name,
                "the tool has an invalid x-mcp-header annotation; its parameters are not mirrored into headers"
            );
        }
    }
    found
}

/// The `Mcp-Param-*` headers of a `tools/call` whose tool mirrors `params`: each value present
/// in the call's arguments (a string as it is or Base64-encoded, an integer in decimal, a
/// boolean as `true`/`false`; `null`, absent, or other types: no header).
pub fn param_headers_for(msg: &Message, params: &[ParamHeader]) -> Vec<(HeaderName, HeaderValue)> {
    let Ok(body) = serde_json::from_slice::<serde_json::Value>(msg.raw()) else {
        return Vec::new();
    };
    let Some(arguments) = body.pointer("/params/arguments") else {
        return Vec::new();
    };
    params
        .iter()
        .filter_map(|param| {
            let value = param.path.iter().try_fold(arguments, |v, key| v.get(key))?;
            let text = match value {
                serde_json::Value::String(s) => encode_sentinel(s),
                serde_json::Value::Bool(b) => b.to_string(),
                serde_json::Value::Number(n) if n.is_i64() || n.is_u64() => n.to_string(),
                _ => return None,
            };
            let name =
                HeaderName::from_bytes(format!("mcp-param-{}", param.name).as_bytes()).ok()?;
            Some((name, HeaderValue::from_str(&text).ok()?))
        })
        .collect()
}

/// A mirrored header's value: as it is, or decoded from the `=?base64?…?=` sentinel form;
/// `None` if that encoding is broken.
pub fn decode_sentinel(value: &str) -> Option<String> {
    use base64::Engine as _;
    let Some(encoded) = value
        .strip_prefix("=?base64?")
        .and_then(|v| v.strip_suffix("?="))
    else {
        return Some(value.to_owned());
    };
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .ok()?;
    String::from_utf8(bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(body: &str) -> Message {
        Message::parse(bytes::Bytes::copy_from_slice(body.as_bytes())).unwrap()
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| {
                (
                    HeaderName::from_static(k),
                    HeaderValue::from_str(v).unwrap(),
                )
            })
            .collect()
    }

    const CALL: &str = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"héllo","arguments":{},"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{}}}}"#;

    #[test]
    fn mirrored_headers_go_upstream_as_the_forwarded_body_says_never_as_sent() {
        let sent: HeaderMap = [
            ("mcp-protocol-version", "2026-07-28"),
            ("mcp-method", "tools/list"),
            ("mcp-name", "other"),
            ("mcp-param-region", "eu"),
            ("authorization", "Bearer x"),
        ]
        .into_iter()
        .map(|(k, v)| (HeaderName::from_static(k), HeaderValue::from_static(v)))
        .collect();
        let h = upstream_headers(&sent, &request(CALL));
        assert_eq!(h["mcp-method"], "tools/call");
        assert_eq!(h["mcp-name"], "=?base64?aMOpbGxv?=");
        assert_eq!(h["mcp-param-region"], "eu");
        assert_eq!(h["mcp-protocol-version"], "2026-07-28");
        assert!(!h.contains_key("authorization"));
        assert_eq!(h.len(), 4);
        // Before the stateless era, none of them: only the version the client sent.
        let old =
            request(r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x"}}"#);
        let h = upstream_headers(&sent, &old);
        assert_eq!(h.len(), 1, "{h:?}");
        assert_eq!(h["mcp-protocol-version"], "2026-07-28");
        // A stateless-era initialize (which a server of that era refuses) says what it is too.
        let init = request(
            r#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28"}}}"#,
        );
        assert_eq!(upstream_headers(&sent, &init)["mcp-method"], "initialize");
    }

    #[test]
    fn param_headers_follow_only_what_a_rule_changed() {
        let params = [
            ParamHeader {
                name: "Zone".into(),
                path: vec!["zone".into()],
            },
            ParamHeader {
                name: "Tier".into(),
                path: vec!["tier".into()],
            },
            ParamHeader {
                name: "Gone".into(),
                path: vec!["gone".into()],
            },
        ];
        let call = |arguments: &str| request(&CALL.replace(r#""arguments":{}"#, arguments));
        let before = call(r#""arguments":{"zone":"a","tier":"gold","gone":"x"}"#);
        let after = call(r#""arguments":{"zone":"b","tier":"gold"}"#);
        let mut h = headers(&[
            ("mcp-param-zone", "a"),
            // Wrong as sent, and not changed by the rule: the upstream's to refuse.
            ("mcp-param-tier", "silver"),
            ("mcp-param-gone", "x"),
        ]);
        follow_rule_change(&mut h, &before, &after, &params);
        assert_eq!(h["mcp-param-zone"], "b");
        assert_eq!(h["mcp-param-tier"], "silver");
        assert!(!h.contains_key("mcp-param-gone"), "{h:?}");
    }

    #[test]
    fn tool_parameters_marked_x_mcp_header_are_mirrored() {
        let list = br#"{"jsonrpc":"2.0","id":1,"result":{"tools":[
            {"name":"sql","inputSchema":{"type":"object","properties":{
                "region":{"type":"string","x-mcp-header":"Region"},
                "opts":{"type":"object","properties":{"dry":{"type":"boolean","x-mcp-header":"Dry"}}},
                "limit":{"type":"integer","x-mcp-header":"Limit"},
                "query":{"type":"string"}}}},
            {"name":"bad","inputSchema":{"type":"object","properties":{"x":{"type":"string","x-mcp-header":"no spaces"}}}},
            {"name":"plain","inputSchema":{"type":"object"}}]}}"#;
        let tools = tool_param_headers(list);
        assert_eq!(tools.len(), 1, "{tools:?}");
        let (name, params) = &tools[0];
        assert_eq!(name, "sql");
        let call = request(
            r#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"sql","arguments":{"region":"Köln","opts":{"dry":true},"limit":5,"query":"x"}}}"#,
        );
        let mut headers: Vec<(String, String)> = param_headers_for(&call, params)
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_owned()))
            .collect();
        headers.sort();
        assert_eq!(
            headers,
            [
                ("mcp-param-dry".to_owned(), "true".to_owned()),
                ("mcp-param-limit".to_owned(), "5".to_owned()),
                (
                    "mcp-param-region".to_owned(),
                    "=?base64?S8O2bG4=?=".to_owned()
                ),
            ]
        );
        // Absent or null values: no header.
        let call = request(
            r#"{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"sql","arguments":{"region":null}}}"#,
        );
        assert!(param_headers_for(&call, params).is_empty());
    }

    #[test]
    fn sentinel_values_decode() {
        assert_eq!(decode_sentinel("plain").as_deref(), Some("plain"));
        assert_eq!(
            decode_sentinel("=?base64?SGVsbG8sIOS4lueVjA==?=").as_deref(),
            Some("Hello, 世界")
        );
        assert_eq!(decode_sentinel("=?base64?not base64?="), None);
    }

    #[test]
    fn only_mcp_headers_are_forwarded() {
        for name in [
            "mcp-protocol-version",
            "last-event-id",
            "mcp-method",
            "mcp-name",
            "mcp-param-region",
        ] {
            assert!(
                is_forwarded_header(&HeaderName::from_static(name)),
                "{name}"
            );
        }
        for name in [
            "authorization",
            "cookie",
            "connection",
            "keep-alive",
            "transfer-encoding",
            "mcp-session-id",
            "host",
            "x-forwarded-for",
        ] {
            assert!(
                !is_forwarded_header(&HeaderName::from_static(name)),
                "{name}"
            );
        }
    }
}
