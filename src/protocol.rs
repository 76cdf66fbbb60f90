//! The JSON-RPC / MCP message model.
//!
//! Shadowcat parses the *envelope* of each frame (`jsonrpc`, `id`, `method`, and whether `result`
//! or `error` is present), borrowing from the frame's bytes, and keeps the raw frame so that a
//! message no stage touched leaves as the exact bytes that arrived. `params` and `result` stay raw
//! until a stage needs them: the hot path never builds a `serde_json::Value` tree.
//!
//! - [`id`]: [`RequestId`], a string or integer (never `null`).
//! - [`method`]: [`Method`], MCP's method names as an enum with an escape hatch.
//! - [`message`]: [`Message`] and [`Frame`], envelope parsing and batches.
//! - [`error`]: the one table of proxy-generated error codes, and error-response builders.
//! - [`headers`]: MCP's HTTP request headers, and those that mirror a 2026-07-28 body.
//! - [`version`]: the protocol versions Shadowcat knows and what differs between them.
//! - [`salvage`]: best-effort recovery of a request id from a frame that failed to parse.
//! - [`rewrite`]: one member of a message replaced (an id, a progress token), the rest as it came.
//! - [`trace_context`]: W3C trace context in `params._meta` (SEP-414), read and written.
//! - [`needle`]: fixed strings searched for in frames, each searcher built once.

pub mod error;
pub mod headers;
pub mod id;
pub mod message;
pub mod method;
pub mod needle;
pub mod rewrite;
pub mod salvage;
pub mod trace_context;
pub mod version;

pub use error::ErrorCode;
pub use id::RequestId;
pub use message::{Frame, Kind, Message, ParseError};
pub use method::Method;

/// Which way a message travels through the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// From the MCP client (downstream) towards the MCP server (upstream).
    ClientToServer,
    /// From the MCP server (upstream) towards the MCP client (downstream).
    ServerToClient,
}

impl Direction {
    /// The opposite direction: where an answer to a message travelling this way goes.
    #[must_use]
    pub fn reverse(self) -> Self {
        match self {
            Self::ClientToServer => Self::ServerToClient,
            Self::ServerToClient => Self::ClientToServer,
        }
    }

    /// A short label for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ClientToServer => "client->server",
            Self::ServerToClient => "server->client",
        }
    }

    /// How tapes write it: `c2s` or `s2c`.
    pub fn short(self) -> &'static str {
        match self {
            Self::ClientToServer => "c2s",
            Self::ServerToClient => "s2c",
        }
    }
}
