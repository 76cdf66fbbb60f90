//! The commands that do not proxy: they read and write what the proxies leave behind (the
//! session history, tapes) or check a rule file, and print for a person or a script.
//!
//! - [`session`]: `shadowcat session list|show|cleanup`, against the history in the data dir.
//! - [`tape`]: `shadowcat tape list|show|delete|redact|verify|...` (`tape verify` in
//!   [`tape::verify`]).
//! - [`replay`]: `shadowcat replay` over stdio (its `--listen` form is the reverse proxy's).
//! - [`rules`]: `shadowcat rules check|test`.

pub mod replay;
pub mod rules;
pub mod session;
pub mod tape;
