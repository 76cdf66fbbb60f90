//! The table of requests that have been forwarded and not yet answered.
//!
//! One table per direction per session. Entries live in a `LinkedHashMap` in the order they were
//! sent: with one timeout for every request, that is also the order they expire in, so the
//! oldest deadline is always at the front and finding expired requests costs nothing per message.
//! A `std::sync::Mutex` guards it: every critical section is one insert, remove or pop, never held
//! across an `.await`; the two tasks of a session rarely touch the same table at once.
//!
//! Two bounds apply, each a [`PendingBudget`] shared by several tables: the session's (both
//! directions together, `--max-pending-requests`) and the process's (`--max-pending-total`).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use linked_hash_map::LinkedHashMap;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::protocol::{Method, RequestId};

/// Default bound on requests awaiting an answer, per session (both directions together).
pub const DEFAULT_MAX_PENDING_REQUESTS: usize = 1_000;
/// Default bound on requests awaiting an answer across all sessions.
pub const DEFAULT_MAX_PENDING_TOTAL: usize = 100_000;

/// What the proxy remembers about a forwarded request.
#[derive(Debug, Clone)]
pub struct Pending {
    /// Its method.
    pub method: Method,
    /// When it was forwarded.
    pub sent_at: Instant,
}

/// Which bound refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PendingScope {
    /// This session's tables (`--max-pending-requests`).
    Session,
    /// All sessions together (`--max-pending-total`).
    Total,
}

/// Why a request could not be recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PendingError {
    /// The id is already awaiting an answer.
    #[error("a request with this id is already awaiting its answer")]
    Duplicate,
    /// A bound is reached.
    #[error("too many requests awaiting an answer (limit {limit})")]
    Full {
        /// The bound.
        limit: usize,
        /// Which one.
        scope: PendingScope,
    },
    /// The peer that would answer is gone; nothing more will be recorded.
    #[error("the peer that would answer is gone")]
    Closed,
}

/// A count of pending requests across the tables that share it, and its bound.
#[derive(Debug)]
pub struct PendingBudget {
    used: AtomicUsize,
    max: usize,
}

impl PendingBudget {
    /// A budget of `max` requests.
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            used: AtomicUsize::new(0),
            max,
        })
    }

    /// Requests pending across all tables now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    fn take_one(&self) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            })
            .is_ok()
    }

    fn give_back(&self, n: usize) {
        if n > 0 {
            self.used.fetch_sub(n, Ordering::AcqRel);
        }
    }
}

/// Requests awaiting their answers, bounded.
#[derive(Debug)]
pub struct PendingRequests {
    inner: Mutex<Table>,
    session: Arc<PendingBudget>,
    budget: Arc<PendingBudget>,
    /// Woken when a request is added to an empty table (a timeout watcher may be idle).
    added: Notify,
}

#[derive(Debug, Default)]
struct Table {
    requests: LinkedHashMap<RequestId, Pending>,
    closed: bool,
}

impl PendingRequests {
    /// An empty table drawing on its session's budget and the process's `total`.
    pub fn new(session: Arc<PendingBudget>, total: Arc<PendingBudget>) -> Self {
        Self {
            inner: Mutex::new(Table::default()),
            session,
            budget: total,
            added: Notify::new(),
        }
    }

    /// A table with budgets of its own (tests, tools).
    pub fn standalone(max: usize) -> Self {
        Self::new(PendingBudget::new(max), PendingBudget::new(usize::MAX))
    }

    fn give_back(&self, n: usize) {
        self.session.give_back(n);
        self.budget.give_back(n);
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
        if table.requests.contains_key(&id) {
            return Err(PendingError::Duplicate);
        }
        if !self.session.take_one() {
            return Err(PendingError::Full {
                limit: self.session.max,
                scope: PendingScope::Session,
            });
        }
        if !self.budget.take_one() {
            self.session.give_back(1);
            return Err(PendingError::Full {
                limit: self.budget.max,
                scope: PendingScope::Total,
            });
        }
        let was_empty = table.requests.is_empty();
        table.requests.insert(
            id,
            Pending {
                method,
                sent_at: Instant::now(),
            },
        );
        drop(table);
        if was_empty {
            self.added.notify_one();
        }
        Ok(())
    }

    /// Removes and returns the request an answer is for, in the same step that matches it.
    pub fn remove(&self, id: &RequestId) -> Option<Pending> {
        let removed = self.lock().requests.remove(id);
        if removed.is_some() {
            self.give_back(1);
        }
        removed
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

    /// When the oldest waiting request was sent.
    pub fn oldest(&self) -> Option<Instant> {
        self.lock().requests.front().map(|(_, p)| p.sent_at)
    }

    /// Removes and returns every request sent at or before `cutoff`, oldest first.
    pub fn take_sent_before(&self, cutoff: Instant) -> Vec<(RequestId, Pending)> {
        let mut taken = Vec::new();
        let mut table = self.lock();
        while table
            .requests
            .front()
            .is_some_and(|(_, p)| p.sent_at <= cutoff)
        {
            if let Some(entry) = table.requests.pop_front() {
                taken.push(entry);
            }
        }
        drop(table);
        self.give_back(taken.len());
        taken
    }

    /// Waits until a request is added to an empty table.
    pub async fn added(&self) {
        self.added.notified().await;
    }

    /// Closes the table (later inserts fail with [`PendingError::Closed`]) and returns every
    /// request still waiting, oldest first: the answering peer is gone and they need errors.
    pub fn close(&self) -> Vec<(RequestId, Pending)> {
        let mut table = self.lock();
        table.closed = true;
        let drained: Vec<_> = std::mem::take(&mut table.requests).into_iter().collect();
        drop(table);
        self.give_back(drained.len());
        self.added.notify_waiters();
        drained
    }

    /// Whether the table was closed.
    pub fn is_closed(&self) -> bool {
        self.lock().closed
    }
}

/// How long until the oldest of `table`'s requests times out, if any waits.
pub fn next_timeout(table: &PendingRequests, timeout: Duration) -> Option<Instant> {
    table.oldest().map(|sent| sent + timeout)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_remove_and_the_session_bound() {
        let table = PendingRequests::standalone(2);
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
            Err(PendingError::Full {
                limit: 2,
                scope: PendingScope::Session
            })
        );
        assert_eq!(
            table.remove(&RequestId::Number(1)).unwrap().method,
            Method::Ping
        );
        assert!(table.remove(&RequestId::Number(1)).is_none());
        assert_eq!(table.len(), 1);
    }

    #[test]
    fn the_total_bound_is_shared_and_given_back() {
        let budget = PendingBudget::new(3);
        let a = PendingRequests::new(PendingBudget::new(10), budget.clone());
        let b = PendingRequests::new(PendingBudget::new(10), budget.clone());
        a.insert(RequestId::Number(1), Method::Ping).unwrap();
        a.insert(RequestId::Number(2), Method::Ping).unwrap();
        b.insert(RequestId::Number(1), Method::Ping).unwrap();
        assert_eq!(
            b.insert(RequestId::Number(2), Method::Ping),
            Err(PendingError::Full {
                limit: 3,
                scope: PendingScope::Total
            })
        );
        assert_eq!(budget.used(), 3);
        a.remove(&RequestId::Number(1));
        assert_eq!(a.close().len(), 1);
        assert_eq!(budget.used(), 1);
        b.insert(RequestId::Number(2), Method::Ping).unwrap();
        assert_eq!(budget.used(), 2);
    }

    #[test]
    fn a_session_budget_covers_both_directions() {
        let session = PendingBudget::new(2);
        let total = PendingBudget::new(100);
        let to_server = PendingRequests::new(session.clone(), total.clone());
        let to_client = PendingRequests::new(session.clone(), total.clone());
        to_server
            .insert(RequestId::Number(1), Method::Ping)
            .unwrap();
        to_client
            .insert(RequestId::Number(1), Method::Ping)
            .unwrap();
        assert_eq!(
            to_server.insert(RequestId::Number(2), Method::Ping),
            Err(PendingError::Full {
                limit: 2,
                scope: PendingScope::Session
            })
        );
        assert_eq!(total.used(), 2, "a refusal takes nothing from the total");
        to_client.remove(&RequestId::Number(1));
        to_server
            .insert(RequestId::Number(2), Method::Ping)
            .unwrap();
    }

    #[test]
    fn close_drains_and_refuses_more() {
        let table = PendingRequests::standalone(10);
        table.insert(RequestId::Number(1), Method::Ping).unwrap();
        table.insert(RequestId::Number(2), Method::Ping).unwrap();
        let drained = table.close();
        assert_eq!(
            drained.iter().map(|(id, _)| id.clone()).collect::<Vec<_>>(),
            [RequestId::Number(1), RequestId::Number(2)]
        );
        assert!(table.is_empty());
        assert_eq!(
            table.insert(RequestId::Number(3), Method::Ping),
            Err(PendingError::Closed)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn expired_requests_come_off_the_front_in_order() {
        let table = PendingRequests::standalone(10);
        table.insert(RequestId::Number(1), Method::Ping).unwrap();
        tokio::time::advance(Duration::from_secs(1)).await;
        table.insert(RequestId::Number(2), Method::Ping).unwrap();
        tokio::time::advance(Duration::from_secs(1)).await;
        table.insert(RequestId::Number(3), Method::Ping).unwrap();
        let timeout = Duration::from_millis(1500);
        assert_eq!(
            next_timeout(&table, timeout),
            Some(Instant::now() - Duration::from_secs(2) + timeout)
        );
        let expired = table.take_sent_before(Instant::now() - timeout);
        assert_eq!(expired.len(), 1);
        assert_eq!(expired[0].0, RequestId::Number(1));
        assert_eq!(table.len(), 2);
    }
}
