//! The one table of JSON-RPC error codes that Shadowcat itself generates.
//!
//! Standard JSON-RPC codes are used where they fit (`-32700`, `-32600`, `-32601`, `-32602`,
//! `-32603`), and MCP's own
//! where the spec defines the case (`-32020`, a header that does not match the body). Everything
//! proxy-specific lives in `-32080..=-32099`, clear of the codes MCP and its SDKs use
//! (`-32000..=-32010`, `-32020..=-32022`, `-32042`). Every error carries `data.shadowcat` naming
//! the cause, so a client can tell a proxy error from one of its server's. docs/errors.md is
//! this table in prose; keep the two in step.

use bytes::Bytes;
use serde::Serialize;
use serde_json::Value;

use super::id::RequestId;

/// Codes the proxy reads in its peers' errors (JSON-RPC's and MCP's), where what it does
/// depends on them: the 2026-07-28 HTTP binding gives each its own status.
pub mod peer {
    /// JSON-RPC: the method does not exist (2026-07-28 HTTP: 404).
    pub const METHOD_NOT_FOUND: i64 = -32601;
    /// JSON-RPC: invalid method parameters (2026-07-28 HTTP: 400).
    pub const INVALID_PARAMS: i64 = -32602;
    /// MCP `HeaderMismatch` (2026-07-28 HTTP: 400).
    pub const HEADER_MISMATCH: i64 = -32020;
    /// MCP `MissingRequiredClientCapability` (2026-07-28 HTTP: 400).
    pub const MISSING_CLIENT_CAPABILITY: i64 = -32021;
    /// MCP `UnsupportedProtocolVersion` (2026-07-28 HTTP: 400).
    pub const UNSUPPORTED_PROTOCOL_VERSION: i64 = -32022;
}

/// A proxy-generated error code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorCode {
    /// `-32700`: the frame is not valid JSON.
    ParseError,
    /// `-32600`: valid JSON, but not a valid JSON-RPC 2.0 message.
    InvalidRequest,
    /// `-32601`: the method does not exist in the request's protocol era (`initialize` sent to
    /// a stdio server as a 2026-07-28 request; HTTP 404).
    MethodNotFound,
    /// `-32602`: a rule hides the tool or prompt the request names (what a server says of one
    /// it does not have).
    InvalidParams,
    /// `-32002` (MCP's "resource not found"): a rule hides the resource the request names.
    ResourceNotFound,
    /// `-32603`: Shadowcat failed in a way that is its own fault.
    InternalError,
    /// `-32020` (MCP's `HeaderMismatch`, 2026-07-28): a request's mirrored HTTP headers are
    /// missing, malformed, or differ from its body.
    HeaderMismatch,
    /// `-32080`: the message is larger than `--max-message-size`.
    MessageTooLarge,
    /// `-32081`: the server exited (or its connection closed) with the request in flight.
    UpstreamExited,
    /// `-32082`: the server's answer to the request was malformed or too large to forward.
    InvalidUpstreamResponse,
    /// `-32083`: too many requests are already waiting for an answer in this direction.
    TooManyPendingRequests,
    /// `-32084`: a request reused the id of one still waiting for its answer.
    DuplicateRequestId,
    /// `-32085`: Shadowcat is shutting down and did not forward the request.
    ShuttingDown,
    /// `-32086`: no answer came within `--request-timeout`.
    RequestTimedOut,
    /// `-32087`: the upstream HTTP server could not be reached (connection refused, reset,
    /// timed out).
    UpstreamUnreachable,
    /// `-32088`: the upstream HTTP server answered with an error status and no JSON-RPC answer.
    UpstreamHttpError,
    /// `-32089`: `--max-sessions` sessions are open and none is idle enough to evict.
    TooManySessions,
    /// `-32090`: `shadowcat replay` has no recorded request matching this one.
    ReplayUnmatched,
    /// `-32091`: an interceptor rule blocks the message (`block:`; a rule may give its own
    /// code).
    BlockedByRule,
    /// `-32092`: a rate limit refuses the request (`data.retryAfterMs` says when to retry).
    RateLimited,
    /// `-32093`: no server process for the session became available within
    /// `--pool-acquire-timeout` (all in use, or starting).
    PoolTimedOut,
    /// `-32094`: a request from a server shared by several sessions (`--share always`) that
    /// cannot be tied to exactly one of them; the server gets this rather than a guess.
    Unattributable,
    /// `-32095`: a rule requires a scope the caller's token lacks (`require_scope:`;
    /// `data.scope` names the scopes to ask for). The gateway answers such a POST 403
    /// `insufficient_scope`, so that the client can step up.
    InsufficientScope,
}

impl ErrorCode {
    /// Every code, in table order (for docs and tests).
    pub const ALL: [Self; 23] = [
        Self::ParseError,
        Self::InvalidRequest,
        Self::MethodNotFound,
        Self::InvalidParams,
        Self::ResourceNotFound,
        Self::InternalError,
        Self::HeaderMismatch,
        Self::MessageTooLarge,
        Self::UpstreamExited,
        Self::InvalidUpstreamResponse,
        Self::TooManyPendingRequests,
        Self::DuplicateRequestId,
        Self::ShuttingDown,
        Self::RequestTimedOut,
        Self::UpstreamUnreachable,
        Self::UpstreamHttpError,
        Self::TooManySessions,
        Self::ReplayUnmatched,
        Self::BlockedByRule,
        Self::RateLimited,
        Self::PoolTimedOut,
        Self::Unattributable,
        Self::InsufficientScope,
    ];

    /// [`Self::code`] as text (a metric label, `error.type`).
    pub fn code_text(self) -> &'static str {
        match self {
            Self::ParseError => "-32700",
            Self::InvalidRequest => "-32600",
            Self::MethodNotFound => "-32601",
            Self::InvalidParams => "-32602",
            Self::ResourceNotFound => "-32002",
            Self::InternalError => "-32603",
            Self::HeaderMismatch => "-32020",
            Self::MessageTooLarge => "-32080",
            Self::UpstreamExited => "-32081",
            Self::InvalidUpstreamResponse => "-32082",
            Self::TooManyPendingRequests => "-32083",
            Self::DuplicateRequestId => "-32084",
            Self::ShuttingDown => "-32085",
            Self::RequestTimedOut => "-32086",
            Self::UpstreamUnreachable => "-32087",
            Self::UpstreamHttpError => "-32088",
            Self::TooManySessions => "-32089",
            Self::ReplayUnmatched => "-32090",
            Self::BlockedByRule => "-32091",
            Self::RateLimited => "-32092",
            Self::PoolTimedOut => "-32093",
            Self::Unattributable => "-32094",
            Self::InsufficientScope => "-32095",
        }
    }

    /// The numeric JSON-RPC code.
    pub fn code(self) -> i32 {
        match self {
            Self::ParseError => -32700,
            Self::InvalidRequest => -32600,
            Self::MethodNotFound => -32601,
            Self::InvalidParams => -32602,
            Self::ResourceNotFound => -32002,
            Self::InternalError => -32603,
            Self::HeaderMismatch => -32020,
            Self::MessageTooLarge => -32080,
            Self::UpstreamExited => -32081,
            Self::InvalidUpstreamResponse => -32082,
            Self::TooManyPendingRequests => -32083,
            Self::DuplicateRequestId => -32084,
            Self::ShuttingDown => -32085,
            Self::RequestTimedOut => -32086,
            Self::UpstreamUnreachable => -32087,
            Self::UpstreamHttpError => -32088,
            Self::TooManySessions => -32089,
            Self::ReplayUnmatched => -32090,
            Self::BlockedByRule => -32091,
            Self::RateLimited => -32092,
            Self::PoolTimedOut => -32093,
            Self::Unattributable => -32094,
            Self::InsufficientScope => -32095,
        }
    }

    /// The stable machine-readable name, sent as `data.shadowcat`.
    pub fn name(self) -> &'static str {
        match self {
            Self::ParseError => "parse_error",
            Self::InvalidRequest => "invalid_request",
            Self::MethodNotFound => "method_not_found",
            Self::InvalidParams => "invalid_params",
            Self::ResourceNotFound => "resource_not_found",
            Self::InternalError => "internal_error",
            Self::HeaderMismatch => "header_mismatch",
            Self::MessageTooLarge => "message_too_large",
            Self::UpstreamExited => "upstream_exited",
            Self::InvalidUpstreamResponse => "invalid_upstream_response",
            Self::TooManyPendingRequests => "too_many_pending_requests",
            Self::DuplicateRequestId => "duplicate_request_id",
            Self::ShuttingDown => "shutting_down",
            Self::RequestTimedOut => "request_timed_out",
            Self::UpstreamUnreachable => "upstream_unreachable",
            Self::UpstreamHttpError => "upstream_http_error",
            Self::TooManySessions => "too_many_sessions",
            Self::ReplayUnmatched => "replay_unmatched",
            Self::BlockedByRule => "blocked_by_rule",
            Self::RateLimited => "rate_limited",
            Self::PoolTimedOut => "pool_timed_out",
            Self::Unattributable => "unattributable",
            Self::InsufficientScope => "insufficient_scope",
        }
    }
}

/// A proxy-generated JSON-RPC error, ready to be serialised as an error response.
#[derive(Debug, Clone)]
pub struct ProxyError {
    /// Which entry of the table.
    pub code: ErrorCode,
    /// Human-readable message.
    pub message: String,
    /// Extra fields for `data` (an object); `shadowcat` is added automatically.
    pub data: serde_json::Map<String, Value>,
    /// The code sent instead of the table's (a rule's own `block.code`).
    custom_code: Option<i64>,
}

impl ProxyError {
    /// An error with no extra data.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            data: serde_json::Map::new(),
            custom_code: None,
        }
    }

    /// Sends `code` instead of the table's (`data.shadowcat` still names the cause).
    #[must_use]
    pub fn with_code(mut self, code: i64) -> Self {
        self.custom_code = Some(code);
        self
    }

    /// The code sent.
    pub fn sent_code(&self) -> i64 {
        self.custom_code.unwrap_or(i64::from(self.code.code()))
    }

    /// Adds a `data` field.
    #[must_use]
    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.data.insert(key.to_owned(), value.into());
        self
    }

    /// Serialises the error response for `id` (`null` when the id is unknown).
    pub fn to_response(&self, id: Option<&RequestId>) -> Bytes {
        #[derive(Serialize)]
        struct Response<'a> {
            jsonrpc: &'static str,
            id: Option<&'a RequestId>,
            error: Body<'a>,
        }
        #[derive(Serialize)]
        struct Body<'a> {
            code: i64,
            message: &'a str,
            data: Data<'a>,
        }
        #[derive(Serialize)]
        struct Data<'a> {
            shadowcat: &'static str,
            #[serde(flatten)]
            rest: &'a serde_json::Map<String, Value>,
        }
        let response = Response {
            jsonrpc: "2.0",
            id,
            error: Body {
                code: self.sent_code(),
                message: &self.message,
                data: Data {
                    shadowcat: self.code.name(),
                    rest: &self.data,
                },
            },
        };
        // Serialising plain structs, strings and a `Map` into a Vec cannot fail.
        Bytes::from(serde_json::to_vec(&response).unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_and_proxy_codes_outside_mcp_ranges() {
        let mut seen = std::collections::HashSet::new();
        let defined_elsewhere = [
            ErrorCode::ParseError,
            ErrorCode::InvalidRequest,
            ErrorCode::MethodNotFound,
            ErrorCode::InternalError,
            ErrorCode::HeaderMismatch,
            ErrorCode::InvalidParams,
            ErrorCode::ResourceNotFound,
        ];
        for code in ErrorCode::ALL {
            assert!(seen.insert(code.code()), "duplicate {}", code.code());
            if !defined_elsewhere.contains(&code) {
                assert!((-32099..=-32080).contains(&code.code()), "{code:?}");
            }
        }
    }

    #[test]
    fn docs_errors_md_lists_every_code() {
        let docs = include_str!("../../docs/errors.md");
        for code in ErrorCode::ALL {
            let row = format!("| {} | `{}` |", code.code(), code.name());
            assert!(
                docs.contains(&row),
                "docs/errors.md lacks the row for {code:?}: {row}"
            );
        }
    }

    #[test]
    fn serialises_a_complete_error_response() {
        let err = ProxyError::new(ErrorCode::MessageTooLarge, "too big").with("limit", 10);
        let body: Value =
            serde_json::from_slice(&err.to_response(Some(&RequestId::Number(3)))).unwrap();
        assert_eq!(
            body,
            serde_json::json!({"jsonrpc":"2.0","id":3,"error":{"code":-32080,"message":"too big",
                "data":{"shadowcat":"message_too_large","limit":10}}})
        );
        let null: Value = serde_json::from_slice(&err.to_response(None)).unwrap();
        assert_eq!(null["id"], Value::Null);
    }
}
