//! The gateway's own HTTP answers: a JSON body, and a refusal carrying a JSON-RPC error whose
//! `data.httpStatus` repeats the status. A leaf: everything that refuses uses it.

use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::header::{ALLOW, CONTENT_TYPE};
use http::{HeaderValue, StatusCode};

use crate::protocol::error::ProxyError;
use crate::protocol::{ErrorCode, RequestId};

/// An HTTP refusal with a JSON-RPC error body (`id: null`).
pub(super) fn refuse(status: StatusCode, message: String) -> Response {
    refuse_to(status, message, None)
}

/// [`refuse`], answering request `id` (a refusal after the body was read carries its id).
pub(super) fn refuse_to(status: StatusCode, message: String, id: Option<&RequestId>) -> Response {
    let code = match status {
        StatusCode::PAYLOAD_TOO_LARGE => ErrorCode::MessageTooLarge,
        StatusCode::SERVICE_UNAVAILABLE => ErrorCode::TooManySessions,
        _ => ErrorCode::InvalidRequest,
    };
    let error = ProxyError::new(code, message).with("httpStatus", status.as_u16());
    json_response(status, error.to_response(id))
}

/// A response with the JSON `body`.
pub(super) fn json_response(status: StatusCode, body: Bytes) -> Response {
    let mut response = (status, body).into_response();
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// 405 with `why`, and `Allow: allow`.
pub(super) fn method_not_allowed(why: &str, allow: &'static str) -> Response {
    let mut response = refuse(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("Method Not Allowed: {why}"),
    );
    response
        .headers_mut()
        .insert(ALLOW, HeaderValue::from_static(allow));
    response
}
