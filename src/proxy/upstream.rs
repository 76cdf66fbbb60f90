//! A session's upstream: the server, as the session holds it. Today a stdio child
//! ([`StdioLink`]); the HTTP upstream session, the pool of warm children, supervised restarts
//! and shared children are to move here (issue 21, then 22).
//!
//! - [`stdio`]: a child server and the two tasks that move its bytes.

pub mod stdio;

pub use stdio::{StdioLink, StdioQueue};
