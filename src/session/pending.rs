//! The table of requests that have been forwarded and not yet answered.
//!
//! One table per direction per session. Entries live in a `LinkedHashMap` in the order they were
//! sent. A request's deadline is its last sign of life (when it was sent, or its latest progress
//! notification) plus `--request-timeout`, and at most `--request-timeout-max` after it was sent;
//! since no deadline comes before `sent_at` plus the shorter limit, expired requests are all in
//! a prefix of the table, and finding them costs nothing per message.
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

/// Whatever a stage above keeps with a request until it ends (its trace spans): dropped with the
/// entry, however the request ends.
pub type Attachment = Box<dyn std::any::Any + Send + Sync>;

/// What the proxy remembers about a forwarded request.
#[derive(Debug)]
pub struct Pending {
    /// Its method.
    pub method: Method,
    /// When it arrived.
    pub sent_at: Instant,
    /// When it went on to its receiver, after the stages (a rule may delay it); set so only
    /// where it is read: for the operation durations, and with spans.
    pub forwarded_at: Instant,
    /// What a stage keeps with it ([`PendingRequests::forwarded`]).
    pub attachment: Option<Attachment>,
    /// Its last sign of life: when it was sent, or its latest progress notification.
    pub active_at: Instant,
    /// The JSON text of its `progressToken`, if it has one.
    progress_token: Option<Box<str>>,
}

/// How long a request may go unanswered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Timeouts {
    /// Since it was sent or last reported progress (`--request-timeout`).
    pub idle: Option<Duration>,
    /// Since it was sent, whatever its progress (`--request-timeout-max`).
    pub max: Option<Duration>,
}

impl Timeouts {
    /// Whether any limit is set.
    pub fn any(&self) -> bool {
        self.idle.is_some() || self.max.is_some()
    }

    /// When `request` times out (never, with no limit).
    pub fn deadline(&self, request: &Pending) -> Option<Instant> {
        let idle = self.idle.and_then(|t| request.active_at.checked_add(t));
        let max = self.max.and_then(|t| request.sent_at.checked_add(t));
        match (idle, max) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The shorter limit: no request times out sooner than this after it was sent.
    fn shortest(&self) -> Option<Duration> {
        match (self.idle, self.max) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
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
    /// Another waiting request carries the same progress token (tokens must be unique among
    /// active requests, or progress could not say which request it is for).
    #[error("the progressToken is already used by an outstanding request")]
    TokenInUse,
    /// The peer that would answer is gone; nothing more will be recorded.
    #[error("the peer that would answer is gone")]
    Closed,
}

/// A count of pending requests across the tables that share it, and its bound.
#[derive(Debug)]
pub struct PendingBudget {
    used: AtomicUsize,
    max: usize,
    /// Tasks waiting in [`Self::room`]; only when there are any does a freed slot wake them.
    waiting: AtomicUsize,
    freed: Notify,
}

impl PendingBudget {
    /// A budget of `max` requests.
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            used: AtomicUsize::new(0),
            max,
            waiting: AtomicUsize::new(0),
            freed: Notify::new(),
        })
    }

    /// Requests pending across all tables now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// Whether one more request fits.
    fn has_room(&self) -> bool {
        self.used.load(Ordering::SeqCst) < self.max
    }

    /// Waits until one more request fits (at once, if it does now). Another task may take the
    /// slot first, so an insert after this can still find the budget full.
    pub async fn room(&self) {
        /// Counts the waiter for as long as it waits, however the wait ends (it may be dropped).
        struct Waiting<'a>(&'a AtomicUsize);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::SeqCst);
            }
        }
        if self.has_room() {
            return;
        }
        self.waiting.fetch_add(1, Ordering::SeqCst);
        let _waiting = Waiting(&self.waiting);
        loop {
            let freed = self.freed.notified();
            let mut freed = std::pin::pin!(freed);
            // Registered before looking, so a slot freed in between still wakes us.
            freed.as_mut().enable();
            if self.has_room() {
                return;
            }
            freed.await;
        }
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
            self.used.fetch_sub(n, Ordering::SeqCst);
            if self.waiting.load(Ordering::SeqCst) > 0 {
                self.freed.notify_waiters();
            }
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
    /// Progress token → the request that carried it.
    tokens: std::collections::HashMap<Box<str>, RequestId>,
    closed: bool,
}

impl Table {
    fn take(&mut self, id: &RequestId) -> Option<Pending> {
        let removed = self.requests.remove(id)?;
        if let Some(token) = &removed.progress_token {
            self.tokens.remove(token);
        }
        Some(removed)
    }
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

    /// Whether one more request fits under both its bounds now.
    pub fn has_room(&self) -> bool {
        self.session.has_room() && self.budget.has_room()
    }

    /// Waits until this table can take one more request under both its bounds (the session's
    /// and the process's): how a client that can be slowed down is, instead of refused. Only
    /// while this table holds requests of its own, whose answers will free room: a budget that
    /// the other direction's requests fill may need this sender's answers to drain, so then it
    /// returns at once (and the insert is refused).
    pub async fn room(&self) {
        loop {
            // The table is only looked at (under its lock) when the budgets are full.
            if self.has_room() || self.is_empty() {
                return;
            }
            self.session.room().await;
            self.budget.room().await;
        }
    }

    /// Records a forwarded request.
    pub fn insert(&self, id: RequestId, method: Method) -> Result<(), PendingError> {
        self.insert_with_token(id, method, None)
    }

    /// Records a forwarded request that carries `progress_token` (its JSON text): progress
    /// notifications for it keep it from timing out (see [`Timeouts`]).
    pub fn insert_with_token(
        &self,
        id: RequestId,
        method: Method,
        progress_token: Option<String>,
    ) -> Result<(), PendingError> {
        let mut table = self.lock();
        if table.closed {
            return Err(PendingError::Closed);
        }
        if table.requests.contains_key(&id) {
            return Err(PendingError::Duplicate);
        }
        if progress_token
            .as_ref()
            .is_some_and(|t| table.tokens.contains_key(t.as_str()))
        {
            return Err(PendingError::TokenInUse);
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
        let progress_token = progress_token.map(String::into_boxed_str);
        if let Some(token) = &progress_token {
            table.tokens.insert(token.clone(), id.clone());
        }
        let now = Instant::now();
        table.requests.insert(
            id,
            Pending {
                method,
                sent_at: now,
                forwarded_at: now,
                attachment: None,
                active_at: now,
                progress_token,
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
        let removed = self.lock().take(id);
        if removed.is_some() {
            self.give_back(1);
        }
        removed
    }

    /// Request `id` went on to its receiver now, with `attachment` to keep until it ends.
    /// Nothing if it is no longer waiting.
    pub fn forwarded(&self, id: &RequestId, attachment: Option<Attachment>) {
        if let Some(request) = self.lock().requests.get_mut(id) {
            request.forwarded_at = Instant::now();
            request.attachment = attachment;
        }
    }

    /// Runs `f` on what a stage keeps with request `id` (its spans), if it is waiting and has
    /// something kept. The table is locked while `f` runs: `f` must not block.
    pub fn with_attachment(&self, id: &RequestId, f: impl FnOnce(&mut Attachment)) {
        if let Some(attachment) = self
            .lock()
            .requests
            .get_mut(id)
            .and_then(|r| r.attachment.as_mut())
        {
            f(attachment);
        }
    }

    /// Runs `f` on what stages keep with each waiting request (their spans). The table is
    /// locked while `f` runs: `f` must not block.
    pub fn each_attachment(&self, mut f: impl FnMut(&mut Attachment)) {
        for (_, request) in &mut self.lock().requests {
            if let Some(attachment) = request.attachment.as_mut() {
                f(attachment);
            }
        }
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

    /// A progress notification for the request that carried `token`: it is alive. False if no
    /// waiting request carried it.
    pub fn progressed(&self, token: &str) -> bool {
        let mut table = self.lock();
        let Some(id) = table.tokens.get(token).cloned() else {
            return false;
        };
        match table.requests.get_mut(&id) {
            Some(request) => {
                request.active_at = Instant::now();
                true
            }
            None => false,
        }
    }

    /// The earliest deadline under `limits` of the requests waiting, if any.
    pub fn next_deadline(&self, limits: Timeouts) -> Option<Instant> {
        let shortest = limits.shortest()?;
        let table = self.lock();
        let mut best: Option<Instant> = None;
        for request in table.requests.values() {
            // No later request can time out before this one's earliest possible deadline.
            if best.is_some_and(|b| request.sent_at + shortest >= b) {
                break;
            }
            if let Some(deadline) = limits.deadline(request) {
                best = Some(best.map_or(deadline, |b| b.min(deadline)));
            }
        }
        best
    }

    /// Removes and returns every request whose deadline under `limits` is at or before `now`,
    /// oldest first.
    pub fn take_expired(&self, now: Instant, limits: Timeouts) -> Vec<(RequestId, Pending)> {
        let Some(shortest) = limits.shortest() else {
            return Vec::new();
        };
        let mut table = self.lock();
        let expired: Vec<RequestId> = table
            .requests
            .iter()
            .take_while(|(_, p)| p.sent_at + shortest <= now)
            .filter(|(_, p)| limits.deadline(p).is_some_and(|d| d <= now))
            .map(|(id, _)| id.clone())
            .collect();
        let taken: Vec<_> = expired
            .into_iter()
            .filter_map(|id| table.take(&id).map(|p| (id, p)))
            .collect();
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
        self.lock().closed = true;
        self.take_all()
    }

    /// Takes every request still waiting, oldest first, leaving the table open: their
    /// answerer was replaced, and they need errors.
    pub fn take_all(&self) -> Vec<(RequestId, Pending)> {
        let mut table = self.lock();
        let drained: Vec<_> = std::mem::take(&mut table.requests).into_iter().collect();
        table.tokens.clear();
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
        let limits = Timeouts {
            idle: Some(Duration::from_millis(1500)),
            max: None,
        };
        assert_eq!(
            table.next_deadline(limits),
            Some(Instant::now() - Duration::from_millis(500))
        );
        let expired = table.take_expired(Instant::now(), limits);
        assert_eq!(expired.len(), 1);
        assert_eq!(expired[0].0, RequestId::Number(1));
        assert_eq!(table.len(), 2);
        assert!(
            table
                .take_expired(Instant::now(), Timeouts::default())
                .is_empty()
        );
    }

    #[test]
    fn a_progress_token_is_used_by_one_waiting_request_at_a_time() {
        let table = PendingRequests::standalone(10);
        let p = || Some("\"p\"".to_owned());
        table
            .insert_with_token(RequestId::Number(1), Method::ToolsCall, p())
            .unwrap();
        assert_eq!(
            table.insert_with_token(RequestId::Number(2), Method::ToolsCall, p()),
            Err(PendingError::TokenInUse)
        );
        // The refused request took nothing: the first still owns the token.
        assert_eq!(table.len(), 1);
        assert!(table.progressed("\"p\""));
        table.remove(&RequestId::Number(1)).unwrap();
        assert!(!table.progressed("\"p\""));
        table
            .insert_with_token(RequestId::Number(2), Method::ToolsCall, p())
            .unwrap();
        assert!(table.progressed("\"p\""));
    }

    #[tokio::test(start_paused = true)]
    async fn progress_keeps_a_request_alive_up_to_the_maximum() {
        let table = PendingRequests::standalone(10);
        let limits = Timeouts {
            idle: Some(Duration::from_secs(10)),
            max: Some(Duration::from_secs(25)),
        };
        table
            .insert_with_token(
                RequestId::Number(1),
                Method::ToolsCall,
                Some("\"p\"".into()),
            )
            .unwrap();
        table
            .insert(RequestId::Number(2), Method::ToolsCall)
            .unwrap();
        assert!(!table.progressed("\"nobody\""));
        for _ in 0..2 {
            tokio::time::advance(Duration::from_secs(8)).await;
            assert!(table.progressed("\"p\""));
        }
        // 16 s in: 2 (no progress) is over its 10 s; 1 reported progress 0 s ago.
        let expired = table.take_expired(Instant::now(), limits);
        assert_eq!(
            expired.iter().map(|(id, _)| id.clone()).collect::<Vec<_>>(),
            [RequestId::Number(2)]
        );
        assert_eq!(
            table.next_deadline(limits),
            Some(Instant::now() + Duration::from_secs(9))
        );
        // Progress goes on, but the maximum holds.
        for _ in 0..2 {
            tokio::time::advance(Duration::from_secs(5)).await;
            table.progressed("\"p\"");
        }
        assert_eq!(
            table.next_deadline(limits),
            Some(Instant::now() - Duration::from_secs(1))
        );
        let expired = table.take_expired(Instant::now(), limits);
        assert_eq!(expired.len(), 1);
        // Its token is forgotten with it.
        assert!(!table.progressed("\"p\""));
    }
}
