//! The server processes of a command upstream (`reverse -- <cmd>`), as a pool after sqlx's
//! (`sqlx-core/src/pool/`): a [`Pool`] is a handle on one `PoolInner`; a semaphore of `max`
//! owned permits bounds the processes alive (spare or serving a session); an idle queue holds
//! the spares; atomic counters say what is where; a maintenance task holding only a `Weak`
//! keeps `--pool-min-idle` spares started and replaces those idle past `--pool-idle-timeout`.
//!
//! [`Pool::acquire`] = a spare (health-checked: one that exited or closed its stdout is never
//! handed out) → else a permit and a start, all within `--pool-acquire-timeout`. Starts are
//! limited in concurrency and rate, so a burst of sessions cannot start a storm of processes. A
//! permit is owned by the process it was taken for, as a [`Slot`]: whatever ends that process's
//! use (a failed start, a cancelled acquire, the end of its session) gives the permit back by
//! dropping it, so the count cannot drift.
//!
//! A spare is used once: it has never seen a session, so any session may have it; a process that
//! served a session is retired with it (its state is that session's), unless sessions share it
//! (`--share always`, [`super::share`], which holds its lease as long as it runs). The spares'
//! upkeep (warm-up, health checks, the maintenance task) is in `spares`.
//!
//! Dropping the last handle (or [`Pool::close`]) closes the pool: waiting acquires get
//! [`PoolError::Closed`], spares are stopped.

use std::collections::VecDeque;
use std::io::Cursor;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use governor::clock::{Clock as _, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota};
use tokio::io::AsyncReadExt as _;
use tokio::process::ChildStdout;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::config::PoolConfig;
use crate::transport::child::{ChildCounters, ChildProcess, ChildSpec};

/// Processes being started at once, at most.
pub const MAX_CONCURRENT_SPAWNS: usize = 8;
/// Processes started per second, at most (and in a burst).
pub const SPAWNS_PER_SECOND: u32 = 32;

/// Why no process could be had.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// `PoolTimedOut`: none became free, and none could be started, in time.
    #[error(
        "no MCP server process became available within {0:?} (--pool-acquire-timeout): all are in use or starting"
    )]
    TimedOut(Duration),
    /// `PoolClosed`: the pool is shutting down.
    #[error("the pool of MCP server processes is closed: shadowcat is shutting down")]
    Closed,
    /// The process could not be started.
    #[error("cannot start the MCP server {program:?}: {error}")]
    Spawn {
        /// The program.
        program: String,
        /// Why.
        error: std::io::Error,
    },
}

/// A process's stdout as its session reads it: what it wrote while it was a spare, then the pipe.
pub type ServerOutput = tokio::io::Chain<Cursor<Vec<u8>>, ChildStdout>;

/// A pool of server processes for one command.
#[derive(Debug, Clone)]
pub struct Pool {
    inner: Arc<PoolInner>,
}

#[derive(Debug)]
struct PoolInner {
    spec: ChildSpec,
    config: PoolConfig,
    /// Spares, oldest first.
    idle: Mutex<VecDeque<Spare>>,
    /// One per process alive (spare, serving, or starting).
    permits: Arc<Semaphore>,
    /// One per start in progress.
    starts: Semaphore,
    /// Starts per second.
    start_rate: DefaultDirectRateLimiter,
    counters: Arc<ChildCounters>,
    /// Notified when a spare is added, or one warming up failed (for acquires waiting).
    spares_changed: Notify,
    /// Spares being started and warmed up.
    warming: AtomicUsize,
    /// Acquires waiting for one of those (at most one each).
    claims: AtomicUsize,
    /// Cleared when the server is found to end when pinged before `initialize`: spares are
    /// then queued as soon as they are started.
    warm_up: AtomicBool,
    /// Notified when a spare is taken or a permit comes back (for the maintenance task).
    wake_maintenance: Arc<Notify>,
    closed: CancellationToken,
}

/// A process's place in the pool: its permit, and its count in a state gauge. Dropping it gives
/// both back.
#[derive(Debug)]
pub struct Slot {
    _permit: OwnedSemaphorePermit,
    state: State,
    counters: Arc<ChildCounters>,
    wake_maintenance: Arc<Notify>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Spawning,
    Idle,
    Busy,
}

impl Slot {
    fn new(permit: OwnedSemaphorePermit, inner: &PoolInner) -> Self {
        inner.counters.spawning.fetch_add(1, Ordering::Relaxed);
        Self {
            _permit: permit,
            state: State::Spawning,
            counters: inner.counters.clone(),
            wake_maintenance: inner.wake_maintenance.clone(),
        }
    }

    fn gauge(&self, state: State) -> &std::sync::atomic::AtomicU64 {
        match state {
            State::Spawning => &self.counters.spawning,
            State::Idle => &self.counters.idle,
            State::Busy => &self.counters.busy,
        }
    }

    fn set(&mut self, state: State) {
        self.gauge(self.state).fetch_sub(1, Ordering::Relaxed);
        self.gauge(state).fetch_add(1, Ordering::Relaxed);
        self.state = state;
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.gauge(self.state).fetch_sub(1, Ordering::Relaxed);
        // A permit is free: the maintenance task may start a spare with it.
        self.wake_maintenance.notify_one();
    }
}

/// An acquire's claim on a warming spare; dropping it withdraws the claim.
struct Claim<'a>(&'a AtomicUsize);

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A process for one session: the child (stdin still in it), its output, and its slot, which
/// must live as long as the process does.
#[derive(Debug)]
pub struct Lease {
    /// The process.
    pub child: ChildProcess,
    /// Its stdout.
    pub output: ServerOutput,
    /// Its place in the pool.
    pub slot: Slot,
    /// Whether it was started for this session (rather than a warm spare).
    pub cold: bool,
}

/// Critical sections are single pushes and pops; a poisoned lock is still consistent.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Pool {
    /// A pool running `spec`, with at most `max` processes alive (at least one), counting into
    /// `counters`. Starts its maintenance task: call it within a Tokio runtime.
    pub fn new(
        spec: ChildSpec,
        config: PoolConfig,
        max: usize,
        counters: Arc<ChildCounters>,
    ) -> Self {
        let rate = NonZeroU32::new(SPAWNS_PER_SECOND).unwrap_or(NonZeroU32::MIN);
        let inner = Arc::new(PoolInner {
            spec,
            config,
            idle: Mutex::new(VecDeque::new()),
            permits: Arc::new(Semaphore::new(max.clamp(1, Semaphore::MAX_PERMITS))),
            starts: Semaphore::new(MAX_CONCURRENT_SPAWNS),
            start_rate: DefaultDirectRateLimiter::direct(Quota::per_second(rate)),
            counters,
            spares_changed: Notify::new(),
            warming: AtomicUsize::new(0),
            claims: AtomicUsize::new(0),
            warm_up: AtomicBool::new(true),
            wake_maintenance: Arc::new(Notify::new()),
            closed: CancellationToken::new(),
        });
        if config.min_idle > 0 {
            tokio::spawn(maintain(
                Arc::downgrade(&inner),
                inner.wake_maintenance.clone(),
                inner.closed.clone(),
            ));
        }
        Self { inner }
    }

    /// The command the pool runs.
    pub fn spec(&self) -> &ChildSpec {
        &self.inner.spec
    }

    /// Spares ready now.
    pub fn idle(&self) -> usize {
        self.inner.idle()
    }

    /// A process for a new session: a spare if one is healthy, else one started for it, within
    /// `--pool-acquire-timeout`.
    pub async fn acquire(&self) -> Result<Lease, PoolError> {
        let timeout = self.inner.config.acquire_timeout;
        let acquired = tokio::time::timeout(timeout, self.inner.acquire()).await;
        acquired.unwrap_or_else(|_| {
            self.inner.counters.timeouts.fetch_add(1, Ordering::Relaxed);
            Err(PoolError::TimedOut(timeout))
        })
    }

    /// Closes the pool: acquires fail with [`PoolError::Closed`] from now on, and the spares are
    /// stopped (their stdin closed, then signalled after `grace`).
    pub async fn close(&self, grace: Duration) {
        self.inner.closed.cancel();
        self.inner.permits.close();
        let spares: Vec<Spare> = lock(&self.inner.idle).drain(..).collect();
        let stops = spares.into_iter().map(|mut spare| async move {
            let _ = spare.child.shutdown(grace).await;
        });
        futures_util::future::join_all(stops).await;
    }
}

impl Drop for PoolInner {
    fn drop(&mut self) {
        // The maintenance task ends; the spares are killed as they drop.
        self.closed.cancel();
    }
}

impl PoolInner {
    fn idle(&self) -> usize {
        lock(&self.idle).len()
    }

    async fn acquire(&self) -> Result<Lease, PoolError> {
        let mut waited = false;
        let mut claimed = false;
        loop {
            // Registered before the queue is looked at, so a spare added in between wakes us.
            let changed = self.spares_changed.notified();
            if let Some(lease) = self.take_spare() {
                return Ok(lease);
            }
            if self.closed.is_cancelled() {
                return Err(PoolError::Closed);
            }
            // A spare warming up is ready sooner than a process started now would be. (Once:
            // if another acquire took it, this one starts its own rather than wait again.)
            if !claimed {
                if let Some(_claim) = self.claim_warming() {
                    claimed = true;
                    // Bounded: a spare slow to warm up (or a short --pool-acquire-timeout)
                    // leaves time to start one of its own.
                    let patience = self.config.acquire_timeout / 2;
                    tokio::select! {
                        () = changed => continue,
                        () = tokio::time::sleep(patience) => continue,
                        () = self.closed.cancelled() => return Err(PoolError::Closed),
                    }
                }
            }
            if let Ok(permit) = self.permits.clone().try_acquire_owned() {
                return self.start(permit).await;
            }
            if !waited {
                waited = true;
                self.counters.waits.fetch_add(1, Ordering::Relaxed);
            }
            tokio::select! {
                permit = self.permits.clone().acquire_owned() => {
                    let permit = permit.map_err(|_| PoolError::Closed)?;
                    return self.start(permit).await;
                }
                () = changed => {}
                () = self.closed.cancelled() => return Err(PoolError::Closed),
            }
        }
    }

    /// A claim on a spare warming up, if one is not claimed yet: one waiting acquire per
    /// warming spare, so a burst does not queue behind a few.
    fn claim_warming(&self) -> Option<Claim<'_>> {
        let mut claims = self.claims.load(Ordering::Acquire);
        loop {
            if claims >= self.warming.load(Ordering::Acquire) {
                return None;
            }
            match self.claims.compare_exchange(
                claims,
                claims + 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Some(Claim(&self.claims)),
                Err(now) => claims = now,
            }
        }
    }

    /// A healthy spare, if there is one (dead ones found on the way are dropped, which kills
    /// what is left of them).
    fn take_spare(&self) -> Option<Lease> {
        loop {
            let spare = lock(&self.idle).pop_front()?;
            self.wake_maintenance.notify_one();
            match spare.check() {
                Ok(lease) => return Some(lease),
                Err(why) => {
                    self.counters.dead_spares.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(%why, "a spare MCP server process was dead; not used");
                }
            }
        }
    }

    /// Starts a process for a session, with `permit`.
    async fn start(&self, permit: OwnedSemaphorePermit) -> Result<Lease, PoolError> {
        let (child, stdout, mut slot) = self.spawn(permit).await?;
        slot.set(State::Busy);
        Ok(Lease {
            child,
            output: Cursor::new(Vec::new()).chain(stdout),
            slot,
            cold: true,
        })
    }

    /// Starts a process, within the limits on concurrent and per-second starts.
    async fn spawn(
        &self,
        permit: OwnedSemaphorePermit,
    ) -> Result<(ChildProcess, ChildStdout, Slot), PoolError> {
        // Counted as spawning (and undone if this is cancelled) from here.
        let slot = Slot::new(permit, self);
        let _start = self.starts.acquire().await.map_err(|_| PoolError::Closed)?;
        while let Err(not_until) = self.start_rate.check() {
            tokio::time::sleep(not_until.wait_time_from(DefaultClock::default().now())).await;
        }
        let program = self.spec.program.to_string_lossy().into_owned();
        let spawned = ChildProcess::spawn(&self.spec).and_then(|mut child| {
            let stdout = child
                .stdout
                .take()
                .ok_or_else(|| std::io::Error::other("the server's stdout was not captured"))?;
            Ok((child, stdout))
        });
        match spawned {
            Ok((child, stdout)) => {
                self.counters.spawns.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(pid = child.pid(), "started an MCP server process");
                Ok((child, stdout, slot))
            }
            Err(error) => {
                self.counters.spawn_failures.fetch_add(1, Ordering::Relaxed);
                Err(PoolError::Spawn { program, error })
            }
        }
    }
}

mod spares;

use spares::{Spare, maintain};

#[cfg(test)]
mod tests;
