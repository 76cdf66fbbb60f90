//! Framing and I/O: how bytes become frames and frames become bytes on each kind of link.
//!
//! - [`lines`]: the newline-delimited framing of MCP's stdio transport, with a length bound.
//! - [`stdio`]: our own stdin/stdout, driven by the reactor when they are pipes or sockets.
//! - [`child`]: the upstream server as a child process: spawn, stderr tail, graceful shutdown,
//!   one request written straight to it (`exchange`), `Restart`, `ChildCounters`.
//! - [`reaper`]: a helper process that ends our children's process groups when we are killed.
//! - [`http`]: the Streamable HTTP client: a pooled hyper client for one upstream URL.
//! - [`credentials`]: the upstream's credentials that change: a token file, the OAuth
//!   client-credentials grant; kept current by a task.
//! - [`sse`]: server-sent events: writing them, and a bounded decoder.
//! - [`writer`]: the outgoing half of a link: a queue drained into a buffered writer.
//! - [`backoff`]: reconnection delays (exponential, full jitter, capped, at least `retry:`).
//! - [`serve`]: serving HTTP/1 to clients: header and body deadlines, connection caps in total
//!   and per address, accept errors counted, graceful shutdown.
//! - [`files`]: files only their owner reads (tapes, history, logs): `0600`, directories `0700`.
//! - [`redis`]: the Redis a cluster's instances share (`--redis-url`): bounded commands, a
//!   breaker while it fails, a subscriber that reconnects.

pub mod backoff;
pub mod child;
pub mod credentials;
pub mod files;
pub mod http;
pub mod lines;
pub mod reaper;
pub mod redis;
pub mod serve;
pub mod sse;
pub mod stdio;
pub mod writer;

/// How long a process group is given after SIGTERM before SIGKILL, by a shutdown
/// ([`child`]) and by the [`reaper`] alike.
pub const KILL_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// Default bound on one message, in bytes (`--max-message-size`).
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 32 * 1024 * 1024;
