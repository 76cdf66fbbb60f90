//! Shadowcat: a single-binary MCP (Model Context Protocol) proxy.
//!
//! # Layout
//!
//! Every mode is the same machine with different ends plugged in:
//!
//! ```text
//!  client ─► downstream transport ─► pipeline stages ─► upstream transport ─► server
//!         ◄─                      ◄─                 ◄─                    ◄─
//! ```
//!
//! - [`cli`]: clap definitions only (raw arguments).
//! - [`intercept`]: interceptor rules: the rule file, matching, actions, hot reload.
//! - [`config`]: validated configuration from file + environment + command line; `DEFAULT_*`.
//! - [`app`]: wiring: builds the pipeline and transports for a command, runs them, shuts down.
//! - [`protocol`]: the JSON-RPC/MCP message model: ids, envelope parsing, batches, error codes.
//! - [`transport`]: framing and I/O: stdio lines, our stdio, child processes, writers.
//! - [`proxy`]: the pipeline and its stages, the relays that pump messages through it, and
//!   the front ends (today: `forward stdio`).
//! - [`session`]: sessions and their pending-request tables.
//! - [`tape`]: the tape format (recordings of sessions): writing and reading.
//! - [`telemetry`]: tracing setup and counters.
//!
//! `main.rs` only parses arguments, sets up logging, calls [`app::run`] and exits.

pub mod app;
pub mod cli;
pub mod config;
pub mod intercept;
pub mod protocol;
pub mod proxy;
pub mod ratelimit;
pub mod session;
pub mod tape;
pub mod telemetry;
pub mod transport;
