//! The table of requests that have been forwarded and not yet answered.
//!
//! One table per direction per session. A `std::sync::Mutex` guards a plain `HashMap`: every
//! critical section is a single insert or remove, never held across an `.await`, and the two
//! tasks of a session rarely touch the same table at the same instant, so a sharded map would
//! cost more than it saves.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use tokio::time::Instant;

use crate::protocol::{Method, RequestId};

/// Default bound on requests awaiting an answer, per direction per session.
pub const DEFAULT_MAX_PENDING_REQUESTS: usize = 65_536;

/// What the proxy remembers about a forwarded request.
#[derive(Debug, Clone)]
pub struct Pending {
    /// Its method.
    pub method: Method,
    /// When it was forwarded.
    pub sent_at: Instant,
}

/// Why a request could not be recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PendingError {
    /// The id is already awaiting an answer.
    #[error("a request with this id is already awaiting its answer")]
    Duplicate,
    /// The table is full.
    #[error("too many requests awaiting an answer (limit {0})")]
    Full(usize),
    /// The peer that would answer is gone; nothing more will be recorded.
    #[error("the peer that would answer is gone")]
    Closed,
}

/// Requests awaiting their answers, bounded.
#[derive(Debug)]
pub struct PendingRequests {
    inner: Mutex<Table>,
    max: usize,
}

#[derive(Debug, Default)]
struct Table {
    requests: HashMap<RequestId, Pending>,
    closed: bool,
}

impl PendingRequests {
    /// An empty table holding at most `max` requests.
    pub fn new(max: usize) -> Self {
        Self {
            inner: Mutex::new(Table::default()),
            max,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        // Every critical section leaves the table consistent, so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records a forwarded request.
    pub fn insert(&self, id: RequestId, method: Method) -> Result<(), PendingError> {
        let mut table = self.lock();
        if table.closed {
            return Err(PendingError::Closed);
        }
        let full = table.requests.len() >= self.max;
        match table.requests.entry(id) {
            std::collections::hash_map::Entry::Occupied(_) => Err(PendingError::Duplicate),
            std::collections::hash_map::Entry::Vacant(_) if full => {
                Err(PendingError::Full(self.max))
            }
            std::collections::hash_map::Entry::Vacant(slot) => {
                slot.insert(Pending {
                    method,
                    sent_at: Instant::now(),
                });
                Ok(())
            }
        }
    }

    /// Removes and returns the request an answer is for.
    pub fn remove(&self, id: &RequestId) -> Option<Pending> {
        self.lock().requests.remove(id)
    }

    /// Whether `id` is awaiting its answer.
    pub fn contains(&self, id: &RequestId) -> bool {
        self.lock().requests.contains_key(id)
    }

    /// How many requests are waiting.
    pub fn len(&self) -> usize {
        self.lock().requests.len()
    }

    /// Whether nothing is waiting.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Closes the table (later inserts fail with [`PendingError::Closed`]) and returns every
    /// request still waiting, oldest first: the answering peer is gone and they need errors.
    pub fn close(&self) -> Vec<(RequestId, Pending)> {
        let mut table = self.lock();
        table.closed = true;
        let mut drained: Vec<_> = table.requests.drain().collect();
        drained.sort_by_key(|(_, p)| p.sent_at);
        drained
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_remove_and_bounds() {
        let table = PendingRequests::new(2);
        table.insert(RequestId::Number(1), Method::Ping).unwrap();
        assert_eq!(
            table.insert(RequestId::Number(1), Method::Ping),
            Err(PendingError::Duplicate)
        );
        table
            .insert(RequestId::from("1"), Method::ToolsCall)
            .unwrap();
        assert_eq!(
            table.insert(RequestId::Number(3), Method::Ping),
            Err(PendingError::Full(2))
        );
        assert_eq!(
            table.remove(&RequestId::Number(1)).unwrap().method,
            Method::Ping
        );
        assert!(table.remove(&RequestId::Number(1)).is_none());
        assert_eq!(table.len(), 1);
    }

    #[test]
    fn close_drains_and_refuses_more() {
        let table = PendingRequests::new(10);
        table.insert(RequestId::Number(1), Method::Ping).unwrap();
        table.insert(RequestId::Number(2), Method::Ping).unwrap();
        let drained = table.close();
        assert_eq!(drained.len(), 2);
        assert!(table.is_empty());
        assert_eq!(
            table.insert(RequestId::Number(3), Method::Ping),
            Err(PendingError::Closed)
        );
    }
}
