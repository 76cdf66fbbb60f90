//! The request metadata headers of the 2026-07-28 era: HTTP headers that mirror fields of the
//! body (`MCP-Protocol-Version`, `Mcp-Method`, `Mcp-Name`) so intermediaries can route on them
//! without reading it. Whoever does read the body must check that the two agree, or a component
//! trusting the header could be steered by a body that says otherwise.

use axum::response::Response;
use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use http::{HeaderMap, HeaderValue, StatusCode};

use crate::protocol::error::ProxyError;
use serde_json::value::RawValue;

use crate::protocol::{ErrorCode, Kind, Message};

use super::respond::json_response;

/// The body fields the headers mirror.
#[derive(serde::Deserialize)]
struct Body<'a> {
    #[serde(borrow)]
    params: Option<Params<'a>>,
}

#[derive(serde::Deserialize)]
struct Params<'a> {
    #[serde(borrow)]
    name: Option<&'a RawValue>,
    #[serde(borrow)]
    uri: Option<&'a RawValue>,
    #[serde(rename = "_meta", borrow)]
    meta: Option<Meta<'a>>,
}

#[derive(serde::Deserialize)]
struct Meta<'a> {
    #[serde(rename = "io.modelcontextprotocol/protocolVersion", borrow)]
    version: Option<&'a RawValue>,
    #[serde(rename = "io.modelcontextprotocol/clientCapabilities", borrow)]
    capabilities: Option<&'a RawValue>,
}

/// A raw JSON string's text.
fn text(raw: Option<&RawValue>) -> Option<String> {
    raw.and_then(|raw| serde_json::from_str::<String>(raw.get()).ok())
}

/// A stateless-era (2026-07-28) request's mirrored headers against its body, as the spec asks
/// of anyone who processes the body: `MCP-Protocol-Version` must equal the body's
/// `_meta["io.modelcontextprotocol/protocolVersion"]`, `Mcp-Method` the method, and `Mcp-Name`
/// (for `tools/call`, `prompts/get`, `resources/read`) `params.name` or `params.uri`, after
/// decoding a `=?base64?…?=` value. Missing, malformed or different: 400 with `-32020`. A body
/// without the `_meta` every request of that era carries (the protocol version and the client's
/// capabilities) has no value to compare: 400 with `-32602`, as a server answers it.
/// `Mcp-Param-*` headers need the tool's schema to check ([`check_params`]).
#[allow(clippy::result_large_err)] // The error is the response itself, returned at once.
pub(super) fn check(headers: &HeaderMap, msg: &Message) -> Result<(), Response> {
    let (Some(method), Kind::Request) = (msg.method(), msg.kind()) else {
        return Ok(());
    };
    let refuse = |header: &str, why: String| mismatch(msg, header, &why);
    let header = |name: &str| match headers.get(name).map(HeaderValue::to_str) {
        None => Ok(None),
        Some(Ok(value)) => Ok(Some(value.trim().to_owned())),
        Some(Err(_)) => Err(refuse(
            name,
            format!("the {name} header has invalid characters"),
        )),
    };
    let params = serde_json::from_slice::<Body<'_>>(msg.raw())
        .ok()
        .and_then(|b| b.params);
    let meta = params.as_ref().and_then(|p| p.meta.as_ref());
    let Some(body_version) = text(meta.and_then(|m| m.version)) else {
        return Err(invalid_meta(msg, "io.modelcontextprotocol/protocolVersion"));
    };
    if meta.and_then(|m| m.capabilities).is_none() {
        return Err(invalid_meta(
            msg,
            "io.modelcontextprotocol/clientCapabilities",
        ));
    }
    match header("MCP-Protocol-Version")? {
        Some(value) if value == body_version => {}
        Some(value) => {
            return Err(refuse(
                "MCP-Protocol-Version",
                format!(
                    "the MCP-Protocol-Version header says {value:?} but the body's io.modelcontextprotocol/protocolVersion is {body_version:?}"
                ),
            ));
        }
        None => {
            return Err(refuse(
                "MCP-Protocol-Version",
                "the MCP-Protocol-Version header is required".into(),
            ));
        }
    }
    match header("Mcp-Method")? {
        Some(value) if value == method.as_str() => {}
        Some(value) => {
            return Err(refuse(
                "Mcp-Method",
                format!(
                    "the Mcp-Method header says {value:?} but the body's method is {:?}",
                    method.as_str()
                ),
            ));
        }
        None => {
            return Err(refuse(
                "Mcp-Method",
                format!(
                    "the Mcp-Method header is required (the body's method is {:?})",
                    method.as_str()
                ),
            ));
        }
    }
    let (field, raw) = match method.as_str() {
        "tools/call" | "prompts/get" => ("params.name", params.as_ref().and_then(|p| p.name)),
        "resources/read" => ("params.uri", params.as_ref().and_then(|p| p.uri)),
        _ => return Ok(()),
    };
    check_name(
        method.as_str(),
        header("Mcp-Name")?,
        field,
        text(raw).as_deref(),
    )
    .map_err(|why| refuse("Mcp-Name", why))
}

/// 400 with `-32020` (`HeaderMismatch`) for `msg`, naming `header` and why.
pub(super) fn mismatch(msg: &Message, header: &str, why: &str) -> Response {
    let error = ProxyError::new(ErrorCode::HeaderMismatch, format!("Header mismatch: {why}"))
        .with("header", header)
        .with("httpStatus", 400);
    json_response(StatusCode::BAD_REQUEST, error.to_response(msg.id()))
}

/// 400 with `-32602` for a stateless-era request whose `params._meta` lacks `member`.
fn invalid_meta(msg: &Message, member: &str) -> Response {
    let error = ProxyError::new(
        ErrorCode::InvalidParams,
        format!(
            "Invalid params: a 2026-07-28 request's params._meta must carry {member:?} (and io.modelcontextprotocol/protocolVersion and io.modelcontextprotocol/clientCapabilities both)"
        ),
    )
    .with("missing", member)
    .with("httpStatus", 400);
    json_response(StatusCode::BAD_REQUEST, error.to_response(msg.id()))
}

/// A stateless-era `tools/call`'s `Mcp-Param-*` headers against its arguments, for the tool's
/// mirrored `params` (learnt from `tools/list`): each argument present (string, integer or
/// boolean) needs its header, equal after decoding `=?base64?…?=` (malformed encoding is
/// refused); a header for an argument the body does not have is refused too. 400 with
/// `-32020`. Checked where the gateway is the HTTP server (a stdio upstream sees no headers).
#[allow(clippy::result_large_err)] // The error is the response itself, returned at once.
pub(super) fn check_params(
    headers: &HeaderMap,
    msg: &Message,
    params: &[ParamHeader],
) -> Result<(), Response> {
    if params.is_empty() {
        return Ok(());
    }
    let body = match serde_json::from_slice::<serde_json::Value>(msg.raw()) {
        Ok(body) => body,
        // Valid JSON that no tree holds (`1e999`): what cannot be checked is refused.
        Err(e) => {
            let header = format!("Mcp-Param-{}", params[0].name);
            let why = format!("the arguments cannot be read to check the Mcp-Param headers: {e}");
            return Err(mismatch(msg, &header, &why));
        }
    };
    let arguments = body.pointer("/params/arguments");
    for param in params {
        let header = format!("Mcp-Param-{}", param.name);
        let expected = arguments
            .and_then(|a| param.path.iter().try_fold(a, |v, key| v.get(key)))
            .and_then(|value| match value {
                serde_json::Value::String(s) => Some(s.clone()),
                serde_json::Value::Bool(b) => Some(b.to_string()),
                serde_json::Value::Number(n) if n.is_i64() || n.is_u64() => Some(n.to_string()),
                _ => None,
            });
        let sent = match headers.get(header.as_str()).map(HeaderValue::to_str) {
            None => None,
            Some(Ok(value)) => Some(value.trim().to_owned()),
            Some(Err(_)) => {
                return Err(mismatch(
                    msg,
                    &header,
                    &format!("the {header} header has invalid characters"),
                ));
            }
        };
        let why = match (expected, sent) {
            (None, None) => continue,
            (Some(_), None) => format!(
                "the {header} header is required: the arguments give {}",
                param.path.join(".")
            ),
            (None, Some(_)) => format!(
                "the {header} header is sent but the arguments give no {}",
                param.path.join(".")
            ),
            (Some(expected), Some(sent)) => match decode_sentinel(&sent) {
                None => format!("the {header} header {sent:?} is not valid =?base64?…?= encoding"),
                Some(decoded) if decoded == expected => continue,
                Some(decoded) => format!(
                    "the {header} header says {decoded:?} but the arguments' {} is {expected:?}",
                    param.path.join(".")
                ),
            },
        };
        return Err(mismatch(msg, &header, &why));
    }
    Ok(())
}

/// `Mcp-Name` (as sent) against the body's `field` of a `method` request.
fn check_name(
    method: &str,
    header: Option<String>,
    field: &str,
    body: Option<&str>,
) -> Result<(), String> {
    let Some(value) = header else {
        return Err(format!("the Mcp-Name header is required for {method}"));
    };
    let Some(decoded) = decode_sentinel(&value) else {
        return Err(format!(
            "the Mcp-Name header {value:?} is not valid =?base64?…?= encoding"
        ));
    };
    match body {
        Some(body) if body == decoded => Ok(()),
        Some(body) => Err(format!(
            "the Mcp-Name header says {decoded:?} but the body's {field} is {body:?}"
        )),
        None => Err(format!(
            "the Mcp-Name header says {decoded:?} but the body has no {field}"
        )),
    }
}

/// The headers an HTTP client sends with `msg`, for a client that has none (the stdio side of
/// `forward stdio --url`): in the stateless era (the body's `_meta` names the protocol version)
/// `MCP-Protocol-Version` from it, and for requests `Mcp-Method` and `Mcp-Name` (encoded when
/// not header-safe); otherwise the session's `negotiated` version, if any. (`Mcp-Param-*`
/// headers would need the tool's schema; they are not made.) `initialize` gets none: the
/// version header belongs to the requests after the handshake, and a dual-era server reads one
/// on `initialize` (say `2026-07-28`, which the client asked for) as a stateless request.
pub fn headers_for(msg: &Message, negotiated: Option<HeaderValue>) -> HeaderMap {
    if msg.method() == Some(&crate::protocol::Method::Initialize) {
        return HeaderMap::new();
    }
    stateless_headers(msg).unwrap_or_else(|| {
        let mut headers = HeaderMap::new();
        if let Some(version) = negotiated {
            headers.insert(MCP_PROTOCOL_VERSION, version);
        }
        headers
    })
}

/// The headers that mirror `msg`'s body in the stateless era, if the body is of that era (its
/// `_meta` names the protocol version): `MCP-Protocol-Version`, and for requests `Mcp-Method`
/// and `Mcp-Name` (encoded when not header-safe).
fn stateless_headers(msg: &Message) -> Option<HeaderMap> {
    // Built once: setting up a search for this needle costs more than most searches.
    static VERSION: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
        std::sync::LazyLock::new(|| {
            memchr::memmem::Finder::new(b"io.modelcontextprotocol/protocolVersion")
        });
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
    headers.insert(MCP_PROTOCOL_VERSION, version);
    let (Some(method), Kind::Request) = (msg.method(), msg.kind()) else {
        return Some(headers);
    };
    if let Ok(value) = HeaderValue::from_str(method.as_str()) {
        headers.insert(MCP_METHOD, value);
    }
    let name = match method.as_str() {
        "tools/call" | "prompts/get" => text(params.as_ref().and_then(|p| p.name)),
        "resources/read" => text(params.as_ref().and_then(|p| p.uri)),
        _ => None,
    };
    if let Some(value) = name.and_then(|n| HeaderValue::from_str(&encode_sentinel(&n)).ok()) {
        headers.insert(MCP_NAME, value);
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
        if crate::transport::http::is_forwarded_header(name) && !made_here {
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
fn encode_sentinel(value: &str) -> String {
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
pub struct MirroredTools(Mutex<HashMap<String, Vec<ParamHeader>>>);

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
        let mut tools = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        for (name, params) in found {
            if tools.len() < Self::MAX || tools.contains_key(&name) {
                tools.insert(name, params);
            }
        }
    }

    /// The parameters the tool `msg` calls mirrors. `Ok(None)`: not a `tools/call`, or a tool
    /// not known to mirror any; `Err(())`: the tool's name cannot be read, while some tool
    /// mirrors parameters (a check must not pass such a call by).
    #[allow(clippy::result_unit_err)] // As `Message::called_tool`, whose `Err(())` it passes on.
    pub fn of(&self, msg: &Message) -> Result<Option<Vec<ParamHeader>>, ()> {
        let tools = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if tools.is_empty() {
            return Ok(None);
        }
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
        let Ok(name) = http::HeaderName::from_bytes(format!("mcp-param-{}", param.name).as_bytes())
        else {
            continue;
        };
        let value = |made: &[(http::HeaderName, HeaderValue)]| {
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
                let valid = name.as_str().is_some_and(|n| {
                    !n.is_empty() && http::HeaderName::from_bytes(n.as_bytes()).is_ok()
                });
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
pub fn param_headers_for(
    msg: &Message,
    params: &[ParamHeader],
) -> Vec<(http::HeaderName, HeaderValue)> {
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
            let name = http::HeaderName::from_bytes(format!("mcp-param-{}", param.name).as_bytes())
                .ok()?;
            Some((name, HeaderValue::from_str(&text).ok()?))
        })
        .collect()
}

const MCP_PROTOCOL_VERSION: http::HeaderName =
    http::HeaderName::from_static("mcp-protocol-version");
const MCP_METHOD: http::HeaderName = http::HeaderName::from_static("mcp-method");
const MCP_NAME: http::HeaderName = http::HeaderName::from_static("mcp-name");

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
                    http::HeaderName::from_static(k),
                    HeaderValue::from_str(v).unwrap(),
                )
            })
            .collect()
    }

    const CALL: &str = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"héllo","arguments":{},"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{}}}}"#;

    fn mismatch(h: &[(&'static str, &str)], body: &str) -> Option<String> {
        check(&headers(h), &request(body)).err().map(|r| {
            assert_eq!(r.status(), StatusCode::BAD_REQUEST);
            format!("{r:?}")
        })
    }

    #[test]
    fn mirrored_headers_must_match_the_body() {
        let good = [
            ("mcp-protocol-version", "2026-07-28"),
            ("mcp-method", "tools/call"),
            ("mcp-name", "=?base64?aMOpbGxv?="),
        ];
        assert_eq!(mismatch(&good, CALL), None);
        // Each one wrong, or missing.
        for (i, wrong) in ["2025-11-25", "tools/list", "hello"]
            .into_iter()
            .enumerate()
        {
            let mut h = good;
            h[i].1 = wrong;
            assert!(mismatch(&h, CALL).is_some(), "{h:?}");
            let missing: Vec<_> = good
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, p)| *p)
                .collect();
            assert!(mismatch(&missing, CALL).is_some(), "{missing:?}");
        }
        // Broken Base64.
        let mut h = good;
        h[2].1 = "=?base64?***?=";
        assert!(mismatch(&h, CALL).is_some());
        // resources/read names its uri; other methods need no Mcp-Name.
        let read = r#"{"jsonrpc":"2.0","id":2,"method":"resources/read","params":{"uri":"file:///a","_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{}}}}"#;
        let h = [
            ("mcp-protocol-version", "2026-07-28"),
            ("mcp-method", "resources/read"),
            ("mcp-name", "file:///a"),
        ];
        assert_eq!(mismatch(&h, read), None);
        let list = r#"{"jsonrpc":"2.0","id":3,"method":"tools/list","params":{"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{}}}}"#;
        assert_eq!(
            mismatch(
                &[
                    ("mcp-protocol-version", "2026-07-28"),
                    ("mcp-method", "tools/list")
                ],
                list
            ),
            None
        );
        // Notifications carry no header requirements.
        let note = r#"{"jsonrpc":"2.0","method":"notifications/whatever"}"#;
        assert_eq!(mismatch(&[], note), None);
        // The error says what differs in prose, under the request's id.
        let mut h = good;
        h[0].1 = "2025-11-25";
        let refused = check(&headers(&h), &request(CALL)).unwrap_err();
        let body = body_of(refused);
        assert_eq!(body["id"], 1);
        assert_eq!(body["error"]["code"], -32020);
        assert_eq!(
            body["error"]["message"],
            "Header mismatch: the MCP-Protocol-Version header says \"2025-11-25\" but the body's io.modelcontextprotocol/protocolVersion is \"2026-07-28\""
        );
    }

    fn body_of(response: Response) -> serde_json::Value {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let bytes = runtime
            .block_on(axum::body::to_bytes(response.into_body(), usize::MAX))
            .unwrap();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[test]
    fn a_request_without_the_eras_meta_is_invalid_params_not_a_mismatch() {
        let h = headers(&[
            ("mcp-protocol-version", "2026-07-28"),
            ("mcp-method", "server/discover"),
        ]);
        for (params, missing) in [
            ("{}", "io.modelcontextprotocol/protocolVersion"),
            (
                r#"{"_meta":{"io.modelcontextprotocol/clientCapabilities":{}}}"#,
                "io.modelcontextprotocol/protocolVersion",
            ),
            (
                r#"{"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28"}}"#,
                "io.modelcontextprotocol/clientCapabilities",
            ),
        ] {
            let body = format!(
                r#"{{"jsonrpc":"2.0","id":7,"method":"server/discover","params":{params}}}"#
            );
            let refused = check(&h, &request(&body)).unwrap_err();
            assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
            let answer = body_of(refused);
            assert_eq!(answer["id"], 7, "{answer}");
            assert_eq!(answer["error"]["code"], -32602, "{answer}");
            assert_eq!(answer["error"]["data"]["missing"], missing, "{answer}");
        }
    }

    #[test]
    fn mirrored_params_are_checked_against_the_arguments() {
        let params = [ParamHeader {
            name: "Region".into(),
            path: vec!["region".into()],
        }];
        let call = |arguments: &str| {
            request(&format!(
                r#"{{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{{"name":"t","arguments":{arguments}}}}}"#
            ))
        };
        let refused = |h: &[(&'static str, &str)], arguments: &str| {
            check_params(&headers(h), &call(arguments), &params)
                .err()
                .map(|r| {
                    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
                    let body = body_of(r);
                    assert_eq!(body["error"]["code"], -32020, "{body}");
                    assert_eq!(body["id"], 3, "{body}");
                    body["error"]["message"].as_str().unwrap().to_owned()
                })
        };
        let hello = r#"{"region":"Hello"}"#;
        assert_eq!(refused(&[("mcp-param-region", "Hello")], hello), None);
        assert_eq!(refused(&[("mcp-param-region", " Hello ")], hello), None);
        assert_eq!(
            refused(&[("mcp-param-region", "=?base64?SGVsbG8=?=")], hello),
            None
        );
        assert_eq!(refused(&[], "{}"), None);
        let why = refused(&[], hello).unwrap();
        assert!(why.contains("header is required"), "{why}");
        let why = refused(&[("mcp-param-region", "Bye")], hello).unwrap();
        assert!(why.contains("says \"Bye\""), "{why}");
        // Broken padding, characters outside the alphabet.
        for bad in ["=?base64?SGVsbG8?=", "=?base64?SGVs!!!bG8=?="] {
            let why = refused(&[("mcp-param-region", bad)], hello).unwrap();
            assert!(why.contains("not valid"), "{why}");
        }
        // A header for an argument the body does not have.
        let why = refused(&[("mcp-param-region", "Hello")], "{}").unwrap();
        assert!(why.contains("no region"), "{why}");
        // Integers and booleans as their JSON text.
        assert_eq!(
            refused(&[("mcp-param-region", "42")], r#"{"region":42}"#),
            None
        );
        // Arguments no tree holds cannot be checked, so they are refused, header or not.
        for h in [&[][..], &[("mcp-param-region", "Hello")][..]] {
            let why = refused(h, r#"{"region":"Hello","n":1e999}"#).unwrap();
            assert!(why.contains("cannot be read"), "{why}");
        }
    }

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
        .map(|(k, v)| {
            (
                http::HeaderName::from_static(k),
                HeaderValue::from_static(v),
            )
        })
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
    fn headers_made_for_a_client_without_any_pass_the_check() {
        let h = headers_for(&request(CALL), None);
        assert_eq!(h["mcp-name"], "=?base64?aMOpbGxv?=");
        assert_eq!(h["mcp-method"], "tools/call");
        assert_eq!(h["mcp-protocol-version"], "2026-07-28");
        assert!(check(&h, &request(CALL)).is_ok());
        // Handshake era: only the negotiated version.
        let old =
            request(r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x"}}"#);
        let h = headers_for(&old, Some(HeaderValue::from_static("2025-06-18")));
        assert_eq!(h.len(), 1);
        assert_eq!(h["mcp-protocol-version"], "2025-06-18");
        assert!(headers_for(&old, None).is_empty());
        // The handshake itself carries no version header, whatever it asks for.
        let init = request(
            r#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2026-07-28","_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28"}}}"#,
        );
        assert!(headers_for(&init, Some(HeaderValue::from_static("2026-07-28"))).is_empty());
        assert_eq!(encode_sentinel("us-west1"), "us-west1");
        assert_eq!(encode_sentinel(" padded "), "=?base64?IHBhZGRlZCA=?=");
        assert_eq!(
            decode_sentinel(&encode_sentinel("=?base64?x?=")).as_deref(),
            Some("=?base64?x?=")
        );
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
}
