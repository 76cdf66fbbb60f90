//! The 2026-07-28 HTTP binding where the gateway is the HTTP server: in front of the stdio child
//! shared by stateless requests (`reverse -- <cmd>`), the child speaks JSON-RPC and sees no
//! HTTP, so what that era's HTTP server does beyond JSON-RPC is done here: the status each
//! error gets, the headers only the tool's schema can check, and the one method the child must
//! not see. (An HTTP upstream does all of this itself, and its answers pass as they are.)

use axum::response::Response;
use bytes::Bytes;
use http::{HeaderMap, StatusCode};

use crate::protocol::error::ProxyError;
use crate::protocol::{ErrorCode, Message, RequestId};

use super::gateway::SessionLink;

/// An error member, searched for before an answer is read.
static ERROR: crate::protocol::needle::Needle = crate::protocol::needle::Needle::new(b"\"error\"");

/// The answer to `initialize` sent as a 2026-07-28 request: that era has no such method (404).
/// The child would take it for the other era's handshake, so it never gets it.
pub(super) fn no_initialize(id: Option<&RequestId>) -> Bytes {
    ProxyError::new(
        ErrorCode::MethodNotFound,
        "Method not found: initialize is not part of protocol 2026-07-28 and later",
    )
    .with("httpStatus", 404)
    .to_response(id)
}

/// What the gateway checks of a stateless request to the stdio child it shares, being the
/// HTTP server there: a `tools/call`'s `Mcp-Param-*` headers against the tool's mirrored
/// parameters (known from the child's `tools/list` answers; a tool not seen there yet is not
/// checked).
#[allow(clippy::result_large_err)] // The error is the response itself, returned at once.
pub(super) fn check_request(
    link: &SessionLink,
    headers: &HeaderMap,
    msg: &Message,
) -> Result<(), Response> {
    match link.tool_params.of(msg) {
        Ok(Some(params)) => super::mirror::check_params(headers, msg, &params),
        Ok(None) => Ok(()),
        // Some tool mirrors parameters, and which one this calls cannot be read.
        Err(()) => Err(super::mirror::mismatch(
            msg,
            "Mcp-Name",
            "the tool's name cannot be read to check its Mcp-Param headers",
        )),
    }
}

/// The status of a JSON answer. From the stdio child shared by stateless requests, the
/// 2026-07-28 HTTP binding's: a method that does not exist (-32601) is 404; invalid params
/// (-32602), a header mismatch (-32020), a missing client capability (-32021) and an
/// unsupported protocol version (-32022) are 400. (An HTTP upstream sets its own status, which
/// is passed on.) Anything else, and a batch, is 200.
pub(super) fn answer_status(shared: bool, batch: bool, answers: &[Bytes]) -> StatusCode {
    use crate::protocol::error::peer;
    let ([only], true, false) = (answers, shared, batch) else {
        return StatusCode::OK;
    };
    if !ERROR.is_in(only) {
        return StatusCode::OK;
    }
    let code = serde_json::from_slice::<serde_json::Value>(only)
        .ok()
        .and_then(|v| v.pointer("/error/code").and_then(serde_json::Value::as_i64));
    match code {
        Some(peer::METHOD_NOT_FOUND) => StatusCode::NOT_FOUND,
        Some(
            peer::INVALID_PARAMS
            | peer::HEADER_MISMATCH
            | peer::MISSING_CLIENT_CAPABILITY
            | peer::UNSUPPORTED_PROTOCOL_VERSION,
        ) => StatusCode::BAD_REQUEST,
        _ => StatusCode::OK,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shared_childs_errors_get_the_stateless_eras_statuses() {
        let answer = |code: i64| {
            Bytes::from(format!(
                r#"{{"jsonrpc":"2.0","id":1,"error":{{"code":{code},"message":"x"}}}}"#
            ))
        };
        assert_eq!(
            answer_status(true, false, &[answer(-32601)]),
            StatusCode::NOT_FOUND
        );
        for code in [-32602, -32020, -32021, -32022] {
            assert_eq!(
                answer_status(true, false, &[answer(code)]),
                StatusCode::BAD_REQUEST
            );
        }
        assert_eq!(
            answer_status(true, false, &[answer(-32000)]),
            StatusCode::OK
        );
        let result = Bytes::from_static(br#"{"jsonrpc":"2.0","id":1,"result":{"error":1}}"#);
        assert_eq!(answer_status(true, false, &[result]), StatusCode::OK);
        // An HTTP upstream sets its own; a batch is 200.
        assert_eq!(
            answer_status(false, false, &[answer(-32601)]),
            StatusCode::OK
        );
        assert_eq!(answer_status(true, true, &[answer(-32601)]), StatusCode::OK);
    }
}
