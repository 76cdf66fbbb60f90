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
//! The modules in layer order, lowest first. Each uses only the ones listed before it
//! (`tests/layers.rs` reads this list and checks every `crate::` path in `src/` against it):
//!
//! - [`protocol`]: the JSON-RPC/MCP message model: ids, envelope parsing, batches, error codes.
//! - [`task`]: an owned background task that is awaited at most once; `Task::every`.
//! - [`pattern`]: globs, JSONPaths and regexes, shared by rules, redaction and rate limits.
//! - [`transport`]: framing and I/O: stdio lines, HTTP plumbing, SSE, child processes.
//! - [`tape`]: the tape format (recordings of sessions), the recorder and redaction.
//! - [`session`]: sessions, their pending-request tables, the manager and its stores.
//! - [`telemetry`]: tracing setup, the log format, counters, trace export, the live feed.
//! - [`stage`]: the contract between the pipeline and its stages (`Context`, `Client`, `Verdict`).
//! - [`ratelimit`]: keyed rate limits and their refusals.
//! - [`intercept`]: interceptor rules: the rule file, matching, actions, hot reload.
//! - [`cli`]: clap definitions only (raw arguments).
//! - [`config`]: validated configuration from file + environment + command line, and the `Mode`
//!   it runs in; `DEFAULT_*`.
//! - [`auth`]: who a gateway client is: bearer tokens (JWTs against the issuer's keys, API
//!   keys) checked as the MCP authorization spec's resource server does; the `Principal`.
//! - [`proxy`]: the pipeline, the pumps that move messages through it, and the front ends
//!   (`forward`, `bridge`, `reverse`).
//! - [`cmd`]: the commands that do not proxy: `session`, `tape`, `replay`, `rules`.
//! - [`ui`]: the live view (`--ui-listen`): a page and its API over the sessions, the live feed
//!   and the tapes.
//! - [`app`]: wiring: runs a mode on the runtime, signals and session manager, shuts down.
//!
//! `main.rs` only parses arguments, sets up logging, calls [`app::run`] and exits.

pub mod app;
pub mod auth;
pub mod cli;
pub mod cmd;
pub mod config;
pub mod intercept;
pub mod pattern;
pub mod protocol;
pub mod proxy;
pub mod ratelimit;
pub mod session;
pub mod stage;
pub mod tape;
pub mod task;
pub mod telemetry;
pub mod transport;
pub mod ui;
