//! Sessions: who is talking to whom, and what is still waiting for an answer.
//!
//! This module grows into the session manager (store, LRU, expiry, persistence). For now it owns
//! the [`Session`] a pipeline runs in and its [`PendingRequests`], one table per direction.

pub mod pending;

use std::fmt;

pub use pending::{Pending, PendingError, PendingRequests};

use crate::protocol::Direction;

/// A session id: 128 bits from the OS's CSPRNG, shown as 32 hex digits.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SessionId(String);

impl SessionId {
    /// A fresh random id.
    pub fn random() -> Self {
        Self(uuid::Uuid::new_v4().simple().to_string())
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// How the client reached us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportKind {
    /// Our stdin/stdout.
    Stdio,
}

/// One client's conversation with one server, as the pipeline sees it.
#[derive(Debug)]
pub struct Session {
    id: SessionId,
    transport: TransportKind,
    to_server: PendingRequests,
    to_client: PendingRequests,
}

impl Session {
    /// A new session whose pending tables hold at most `max_pending` requests each.
    pub fn new(transport: TransportKind, max_pending: usize) -> Self {
        Self {
            id: SessionId::random(),
            transport,
            to_server: PendingRequests::new(max_pending),
            to_client: PendingRequests::new(max_pending),
        }
    }

    /// The session id.
    pub fn id(&self) -> &SessionId {
        &self.id
    }

    /// How the client reached us.
    pub fn transport(&self) -> TransportKind {
        self.transport
    }

    /// Requests travelling in `direction` that still await their answer.
    pub fn pending(&self, direction: Direction) -> &PendingRequests {
        match direction {
            Direction::ClientToServer => &self.to_server,
            Direction::ServerToClient => &self.to_client,
        }
    }
}
