//! The session manager: every session of the process, bounded, expiring, observable.
//!
//! - Sessions live in a sharded map (`DashMap`), so lookups from many connections don't contend.
//! - LRU order is a `LinkedHashMap` of ids (one entry per session, O(1) moves). Touching a session
//!   on every message only stores an atomic timestamp; the LRU position moves at most once per
//!   [`LRU_GRANULARITY`], so busy sessions don't serialise on the LRU lock.
//! - Expiry is a min-heap of deadlines with one entry per session, pushed at creation and only
//!   re-pushed when popped early (the deadline is re-computed from the session's activity then),
//!   so touching never grows it and a cleanup pass costs O(expired · log n), not a scan.
//! - No method holds one of these locks while taking another, or while calling out.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use dashmap::DashMap;
use linked_hash_map::LinkedHashMap;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::id::SessionId;
use super::info::{Session, TagThresholds, TransportKind};
use super::lifecycle::{EndReason, State};
use super::metrics::{SessionMetrics, SessionMetricsSnapshot};
use super::pending::{DEFAULT_MAX_PENDING_REQUESTS, DEFAULT_MAX_PENDING_TOTAL, PendingBudget};
use super::store::StoreWriter;
use crate::task::Task;

/// Default bound on open sessions.
pub const DEFAULT_MAX_SESSIONS: usize = 10_000;
/// Default time between cleanup passes.
pub const DEFAULT_CLEANUP_INTERVAL: Duration = Duration::from_secs(10);
/// Default age after which a session is tagged `long-running`.
pub const DEFAULT_LONG_RUNNING_AFTER: Duration = Duration::from_secs(3600);
/// Default message count after which a session is tagged `high-volume`.
pub const DEFAULT_HIGH_VOLUME_FRAMES: u64 = 10_000;
/// A session's LRU position moves at most this often.
pub const LRU_GRANULARITY: Duration = Duration::from_millis(100);
/// How many LRU entries eviction copies out per lock while looking for an idle session.
const EVICTION_SCAN: usize = 64;

/// How sessions are bounded.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Most open sessions.
    pub max_sessions: usize,
    /// Sessions with no message for this long expire (`None`: never).
    pub idle_timeout: Option<Duration>,
    /// Sessions older than this expire (`None`: never).
    pub max_age: Option<Duration>,
    /// Most pending requests per session and direction.
    pub max_pending_requests: usize,
    /// Most pending requests across all sessions.
    pub max_pending_total: usize,
    /// Automatic tag thresholds.
    pub tags: TagThresholds,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            max_sessions: DEFAULT_MAX_SESSIONS,
            idle_timeout: None,
            max_age: None,
            max_pending_requests: DEFAULT_MAX_PENDING_REQUESTS,
            max_pending_total: DEFAULT_MAX_PENDING_TOTAL,
            tags: TagThresholds {
                long_running_after: DEFAULT_LONG_RUNNING_AFTER,
                high_volume_frames: DEFAULT_HIGH_VOLUME_FRAMES,
            },
        }
    }
}

/// Why a session could not be created.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SessionError {
    /// `--max-sessions` are open and none is idle enough to evict.
    #[error("too many sessions: {limit} are open and none is idle (--max-sessions)")]
    TooManySessions {
        /// The bound.
        limit: usize,
    },
    /// A session of that id is already open here ([`SessionManager::create_as`]).
    #[error("a session of that id is already open")]
    Exists,
}

/// What one cleanup pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CleanupReport {
    /// Sessions ended as expired.
    pub expired: usize,
    /// Heap entries examined.
    pub examined: usize,
}

/// The session manager. Share it as `Arc<SessionManager>`.
#[derive(Debug)]
pub struct SessionManager {
    config: SessionConfig,
    sessions: DashMap<SessionId, Arc<Session>>,
    lru: Mutex<LinkedHashMap<SessionId, ()>>,
    expiry: Mutex<BinaryHeap<Reverse<(Instant, SessionId)>>>,
    /// Sessions open or being created: the capacity reservation for `max_sessions`.
    slots: AtomicUsize,
    budget: Arc<PendingBudget>,
    metrics: SessionMetrics,
    store: Option<StoreWriter>,
    /// Told each ended session's age ([`Self::on_end`]).
    end_hook: std::sync::OnceLock<Hook>,
    /// Makes the next cleanup pass panic (tests of the cleanup task's resilience).
    #[cfg(test)]
    panic_next_cleanup: std::sync::atomic::AtomicBool,
}

/// What [`SessionManager::on_end`] calls with each ended session's age.
pub type EndHook = Box<dyn Fn(Duration) + Send + Sync>;

struct Hook(EndHook);

impl std::fmt::Debug for Hook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EndHook")
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Critical sections are single collection operations; a poisoned lock is still consistent.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl SessionManager {
    /// A manager; `store`, if given, receives every session's record as it changes.
    pub fn new(config: SessionConfig, store: Option<StoreWriter>) -> Arc<Self> {
        Arc::new(Self {
            budget: PendingBudget::new(config.max_pending_total),
            config,
            sessions: DashMap::new(),
            lru: Mutex::new(LinkedHashMap::new()),
            expiry: Mutex::new(BinaryHeap::new()),
            slots: AtomicUsize::new(0),
            metrics: SessionMetrics::default(),
            end_hook: std::sync::OnceLock::new(),
            store,
            #[cfg(test)]
            panic_next_cleanup: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &SessionConfig {
        &self.config
    }

    /// Creates a session, evicting the least recently used idle one if the manager is full.
    pub fn create(
        &self,
        transport: TransportKind,
        upstream: Option<String>,
    ) -> Result<Arc<Session>, SessionError> {
        self.create_with(transport, upstream, true, None)
    }

    /// [`create`](Self::create) for the session of one stateless request, which the history
    /// store does not keep ([`Session::unkept`]).
    pub fn create_unkept(
        &self,
        transport: TransportKind,
        upstream: Option<String>,
    ) -> Result<Arc<Session>, SessionError> {
        self.create_with(transport, upstream, false, None)
    }

    /// [`create`](Self::create) under a given `id`: a session another instance of a cluster
    /// opened, now served here too ([`super::seal`]). Refused if a session of that id is open
    /// here (the caller serialises these).
    pub fn create_as(
        &self,
        id: SessionId,
        transport: TransportKind,
        upstream: Option<String>,
    ) -> Result<Arc<Session>, SessionError> {
        if self.sessions.contains_key(&id) {
            return Err(SessionError::Exists);
        }
        self.create_with(transport, upstream, true, Some(id))
    }

    fn create_with(
        &self,
        transport: TransportKind,
        upstream: Option<String>,
        kept: bool,
        id: Option<SessionId>,
    ) -> Result<Arc<Session>, SessionError> {
        self.reserve_slot()?;
        let mut session = Session::new(
            transport,
            upstream,
            self.config.max_pending_requests,
            &self.budget,
            self.config.tags,
        );
        if let Some(id) = id {
            session = session.with_id(id);
        }
        let session = Arc::new(if kept { session } else { session.unkept() });
        let id = session.id().clone();
        // LRU first: a concurrent `end` finds nothing in the map until both are in place, so it
        // can never leave an LRU entry behind.
        lock(&self.lru).insert(id.clone(), ());
        self.sessions.insert(id.clone(), session.clone());
        if let Some(deadline) = self.deadline(&session) {
            lock(&self.expiry).push(Reverse((deadline, id)));
        }
        self.metrics.created();
        self.persist(&session);
        Ok(session)
    }

    fn reserve_slot(&self) -> Result<(), SessionError> {
        let max = self.config.max_sessions;
        loop {
            if self
                .slots
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                    (n < max).then_some(n + 1)
                })
                .is_ok()
            {
                return Ok(());
            }
            if !self.evict_one() {
                self.metrics.refused_session();
                return Err(SessionError::TooManySessions { limit: max });
            }
        }
    }

    /// Ends the least recently used session that is not busy (nothing pending, nobody
    /// listening). False if there is none.
    /// Walks the LRU in chunks, taking its lock only to copy each chunk.
    fn evict_one(&self) -> bool {
        let mut offset = 0;
        loop {
            let chunk: Vec<SessionId> = lock(&self.lru)
                .keys()
                .skip(offset)
                .take(EVICTION_SCAN)
                .cloned()
                .collect();
            if chunk.is_empty() {
                return false;
            }
            offset += chunk.len();
            for id in chunk {
                let idle = self.get(&id).is_some_and(|s| !s.is_busy());
                if idle && self.end(&id, EndReason::Evicted).is_some() {
                    tracing::info!(session = %id.digest(), "evicted the least recently used idle session (--max-sessions)");
                    return true;
                }
            }
        }
    }

    /// Counts a session refused before it reached the manager (a front end's own cap, such
    /// as the gateway's per client), with those refused at `--max-sessions`.
    pub fn count_refused(&self) {
        self.metrics.refused_session();
    }

    /// The open session `id`.
    pub fn get(&self, id: &SessionId) -> Option<Arc<Session>> {
        self.sessions.get(id).map(|entry| entry.value().clone())
    }

    /// Open sessions now.
    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    /// Whether no session is open.
    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }

    /// Moves `session` in LRU order (call per message, after [`Session::record_frame`]).
    /// Reads the activity time [`Session::record_frame`] just stored, so a message costs one
    /// clock read, not two.
    pub fn touch(&self, session: &Session) {
        let now_ms = session.activity_ms();
        let moved = session.lru_moved_ms.load(Ordering::Relaxed);
        let granularity = u64::try_from(LRU_GRANULARITY.as_millis()).unwrap_or(u64::MAX);
        if now_ms.saturating_sub(moved) >= granularity
            && session
                .lru_moved_ms
                .compare_exchange(moved, now_ms, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            lock(&self.lru).get_refresh(session.id());
        }
    }

    /// The `initialize` exchange completed (or the first request was answered, in eras without
    /// one): `Initializing` → `Active`.
    pub fn activate(&self, session: &Session) {
        if session.advance(State::Active).is_ok() {
            self.persist(session);
        }
    }

    /// The session is shutting down (`Active`/`Initializing` → `Closing`): its front end stops
    /// taking requests and drains. Ignored if it is already closing or closed.
    pub fn begin_closing(&self, session: &Session) {
        if session.advance(State::Closing).is_ok() {
            self.persist(session);
        }
    }

    /// Saves the session's current record to the store (write-behind; never blocks).
    pub fn persist(&self, session: &Session) {
        if let Some(store) = self.store.as_ref().filter(|_| session.is_kept()) {
            session.mark_saved(Instant::now());
            if !store.save(session.record()) {
                self.metrics.store_dropped();
            }
        }
    }

    /// Saves open sessions whose stored record is behind (counts changed, or older than
    /// [`HEARTBEAT`](super::info::HEARTBEAT)), at most half a store queue per call. Run by the
    /// cleanup task; walks every session, so it is kept out of [`cleanup`](Self::cleanup).
    pub fn heartbeat(&self, now: Instant) -> usize {
        if self.store.is_none() {
            return 0;
        }
        let behind: Vec<Arc<Session>> = self
            .sessions
            .iter()
            .filter(|e| e.value().needs_save(now))
            .take(super::store::STORE_QUEUE / 2)
            .map(|e| e.value().clone())
            .collect();
        for session in &behind {
            self.persist(session);
        }
        behind.len()
    }

    /// Ends session `id` for `reason`: the one transition into `Closed`, counted once. Its pending
    /// tables close; requests left in them are set aside for the front end to answer
    /// ([`Session::close_pending`]). Returns the session if this call ended it.
    pub fn end(&self, id: &SessionId, reason: EndReason) -> Option<Arc<Session>> {
        // Whoever removes it from the map ends it: exactly once, however many race here.
        let (_, session) = self.sessions.remove(id)?;
        lock(&self.lru).remove(id);
        if let Err(e) = session.advance(State::Closed(reason)) {
            tracing::error!(session = %id.digest(), %e, "session was already closed");
        }
        session.abandon_pending();
        session.closed_token().cancel();
        self.slots.fetch_sub(1, Ordering::AcqRel);
        self.metrics.ended(reason);
        if let Some(Hook(hook)) = self.end_hook.get() {
            hook(session.age(Instant::now()));
        }
        self.persist(&session);
        Some(session)
    }

    /// Calls `hook` with the age of every session that ends from now on (a duration
    /// histogram). One hook per manager: a second is ignored.
    pub fn on_end(&self, hook: EndHook) {
        if self.end_hook.set(Hook(hook)).is_err() {
            tracing::debug!("a session end hook is already set");
        }
    }

    /// Ends every open session (shutdown).
    pub fn end_all(&self, reason: EndReason) {
        let ids: Vec<SessionId> = self.sessions.iter().map(|e| e.key().clone()).collect();
        for id in ids {
            self.end(&id, reason);
        }
    }

    /// When `session` should expire, from its activity and age now. Deadlines too far away to
    /// represent count as never.
    fn deadline(&self, session: &Session) -> Option<Instant> {
        let idle = self
            .config
            .idle_timeout
            .and_then(|t| session.last_activity().checked_add(t));
        match (idle, self.age_deadline(session)) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn age_deadline(&self, session: &Session) -> Option<Instant> {
        self.config
            .max_age
            .and_then(|t| session.created().checked_add(t))
    }

    /// Expires sessions whose deadline has passed. Busy sessions (requests in flight, a client
    /// listening) are not idle and only expire by age. Entries are taken off the heap one at a time, so a failure while
    /// handling one (a panic is caught and counted) never loses the others.
    pub fn cleanup(&self, now: Instant) -> CleanupReport {
        let mut report = CleanupReport::default();
        loop {
            let entry = {
                let mut heap = lock(&self.expiry);
                if heap
                    .peek()
                    .is_none_or(|Reverse((deadline, _))| *deadline > now)
                {
                    break;
                }
                heap.pop()
            };
            let Some(Reverse((deadline, id))) = entry else {
                break;
            };
            report.examined += 1;
            let handled =
                std::panic::catch_unwind(AssertUnwindSafe(|| self.expire_if_due(&id, now)));
            match handled {
                Ok(true) => report.expired += 1,
                Ok(false) => {}
                Err(_) => {
                    self.metrics.cleanup_panic();
                    tracing::error!(session = %id.digest(), "checking a session for expiry panicked; will retry");
                    let retry = now.checked_add(Duration::from_secs(1)).unwrap_or(deadline);
                    lock(&self.expiry).push(Reverse((retry, id)));
                }
            }
        }
        self.compact_heap();
        self.metrics.cleanup_pass();
        report
    }

    /// Ends `id` if its deadline has really passed, else puts it back on the heap with the
    /// deadline it has now. True if it was ended.
    fn expire_if_due(&self, id: &SessionId, now: Instant) -> bool {
        #[cfg(test)]
        assert!(
            !self.panic_next_cleanup.swap(false, Ordering::Relaxed),
            "injected cleanup panic"
        );
        let Some(session) = self.get(id) else {
            return false;
        };
        session.refresh_tags(now);
        let age_deadline = self.age_deadline(&session);
        let aged = age_deadline.is_some_and(|d| d <= now);
        let busy = session.is_busy();
        match self.deadline(&session) {
            Some(deadline) if deadline > now => {
                lock(&self.expiry).push(Reverse((deadline, id.clone())));
                false
            }
            Some(_) if busy && !aged => {
                // A request in flight is not idleness: look again an idle timeout from now, but
                // never later than the session's maximum age.
                let retry = self.config.idle_timeout.and_then(|t| now.checked_add(t));
                let retry = match (retry, age_deadline) {
                    (Some(r), Some(a)) => Some(r.min(a)),
                    (r, a) => r.or(a),
                };
                if let Some(retry) = retry {
                    lock(&self.expiry).push(Reverse((retry, id.clone())));
                }
                false
            }
            Some(_) => self.end(id, EndReason::Expired).is_some(),
            None => false,
        }
    }

    /// Drops heap entries of ended sessions once they outnumber the live ones, so the heap stays
    /// O(sessions) however many sessions come and go. The old heap is taken out under the lock,
    /// filtered outside it, and merged back into whatever was pushed meanwhile.
    fn compact_heap(&self) {
        let live = self.sessions.len();
        let old = {
            let mut heap = lock(&self.expiry);
            if heap.len() <= 2 * live + 64 {
                return;
            }
            std::mem::take(&mut *heap)
        };
        let kept: Vec<_> = old
            .into_iter()
            .filter(|Reverse((_, id))| self.sessions.contains_key(id))
            .collect();
        lock(&self.expiry).extend(kept);
    }

    /// Runs [`cleanup`](Self::cleanup) every `interval` until `stop` is cancelled or the manager is
    /// dropped. A panicking pass is caught, logged and counted; the task carries on.
    pub fn spawn_cleanup(
        self: &Arc<Self>,
        interval: Duration,
        stop: CancellationToken,
    ) -> Task<()> {
        Task::every("session-cleanup", interval, stop, self, |manager| {
            let pass =
                std::panic::catch_unwind(AssertUnwindSafe(|| manager.cleanup(Instant::now())));
            match pass {
                Ok(report) if report.expired > 0 => {
                    tracing::info!(expired = report.expired, "expired idle sessions");
                }
                Ok(_) => {}
                Err(_) => {
                    manager.metrics.cleanup_panic();
                    tracing::error!(
                        "a session cleanup pass panicked; the next one will run as usual"
                    );
                }
            }
        })
    }

    /// Saves what the history writer has queued and stops it, waiting at most `limit`.
    pub fn close_store(&self, limit: Duration) {
        if let Some(store) = &self.store {
            store.close(limit);
        }
    }

    /// The counters.
    pub fn metrics(&self) -> SessionMetricsSnapshot {
        self.metrics.snapshot(self.budget.used())
    }

    /// Records a request refused at a pending limit.
    pub fn refused_request(&self) {
        self.metrics.refused_request();
    }

    /// Sizes of the internal structures: (map, LRU, heap). For tests and diagnostics.
    pub fn sizes(&self) -> (usize, usize, usize) {
        (
            self.sessions.len(),
            lock(&self.lru).len(),
            lock(&self.expiry).len(),
        )
    }

    /// Every open session, in LRU order (least recent first).
    pub fn lru_order(&self) -> Vec<SessionId> {
        lock(&self.lru).keys().cloned().collect()
    }
}

#[cfg(test)]
mod tests;
