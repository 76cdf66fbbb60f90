//! Sessions: who is talking to whom, what they said about themselves, and what is still
//! waiting for an answer.
//!
//! - [`id`]: [`SessionId`], 128 CSPRNG bits as visible ASCII.
//! - [`lifecycle`]: the one [`State`] machine and [`EndReason`].
//! - [`declared`]: [`Declared`]: what a peer said about itself, as bounded JSON text.
//! - [`info`]: [`Session`]: metadata from `initialize`, counters, tags, pending tables.
//! - [`pending`]: [`PendingRequests`], bounded per session and in total.
//! - [`principal`]: [`Principal`], who an authenticated client proved to be.
//! - [`manager`]: [`SessionManager`]: sharded map, LRU, expiry heap, limits, cleanup task.
//! - [`metrics`]: counters that change only on lifecycle transitions.
//! - [`seal`]: [`Sealer`]: session ids that carry, sealed, what any instance of a cluster needs
//!   to serve the session.
//! - [`store`]: [`SessionStore`] (memory, SQLite) and the write-behind [`StoreWriter`].

pub mod declared;
pub mod id;
pub mod info;
pub mod lifecycle;
pub mod manager;
pub mod metrics;
pub mod pending;
pub mod principal;
pub mod seal;
pub mod store;

pub use declared::Declared;
pub use id::SessionId;
pub use info::{Listening, Metadata, Session, SessionRecord, TransportKind};
pub use lifecycle::{EndReason, State};
pub use manager::{SessionConfig, SessionError, SessionManager};
pub use pending::{Pending, PendingError, PendingRequests, PendingScope};
pub use principal::Principal;
pub use seal::{Sealer, Unsealed};
pub use store::{SessionStore, StoreWriter};
