//! The request metadata headers of the 2026-07-28 era: HTTP headers that mirror fields of the
//! body (`MCP-Protocol-Version`, `Mcp-Method`, `Mcp-Name`) so intermediaries can route on them
//! without reading it. Whoever does read the body must check that the two agree, or a component
//! trusting the header could be steered by a body that says otherwise.

use axum::response::Response;

use http::{HeaderMap, HeaderValue, StatusCode};

use crate::protocol::error::ProxyError;

use crate::protocol::{ErrorCode, Kind, Message};

use super::respond::json_response;
use crate::protocol::headers::{Body, ParamHeader, decode_sentinel, text};

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::headers::{encode_sentinel, headers_for};

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
}
