//! The proxy: the one pipeline every message passes through, and the pumps that move messages
//! between a downstream (client side) and an upstream (server side).
//!
//! Its modules in layer order, lowest first; each uses only those before it (`tests/layers.rs`
//! checks this list as it checks the crate's):
//!
//! - [`shutdown`]: requests to shut down (SIGINT and SIGTERM, or a test's), as front ends take them.
//! - [`tracker`]: the request-tracking stage (pending requests per direction).
//! - [`pipeline`]: [`Pipeline`], its stages and the order they run in; the one place a
//!   pipeline is built (the stages' contract is [`crate::stage`]).
//! - [`outbox`]: the way out to one peer: a bounded queue to its writer, which also re-assembles
//!   answers to a JSON-RPC batch into one array.
//! - [`relay`]: reads frames from one peer, parses them, runs the pipeline, routes the verdicts.
//! - [`timeouts`]: request timeouts: an error for the requester, a cancellation for the other.
//! - [`upstream`]: what a session's server is, as the session holds it: a stdio child
//!   ([`upstream::StdioLink`]) or its session at an HTTP server ([`upstream::HttpSession`]).
//! - [`forward`]: the `forward stdio` front end: our stdio on one side, a child on the other.
//! - [`bridge`]: `forward stdio --url`: our stdio on one side, one HTTP upstream session on the
//!   other.
//! - [`reverse`]: the `reverse` front end: a Streamable HTTP gateway, a session per client.

pub mod bridge;
pub mod forward;
pub mod outbox;
pub mod pipeline;
pub mod relay;
pub mod reverse;
pub mod shutdown;
pub mod timeouts;
pub mod tracker;
pub mod upstream;

pub use pipeline::Pipeline;
