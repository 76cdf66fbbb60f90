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
//! served a session is retired with it (its state is that session's).
//!
//! Dropping the last handle (or [`Pool::close`]) closes the pool: waiting acquires get
//! [`PoolError::Closed`], spares are stopped.

use std::collections::VecDeque;
use std::io::Cursor;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use governor::clock::{Clock as _, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota};
use tokio::io::{AsyncRead, AsyncReadExt as _, ReadBuf};
use tokio::process::ChildStdout;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::PoolConfig;
use crate::transport::child::{ChildCounters, ChildProcess, ChildSpec, Exchanged, exchange};

/// Processes being started at once, at most.
pub const MAX_CONCURRENT_SPAWNS: usize = 8;
/// Processes started per second, at most (and in a burst).
pub const SPAWNS_PER_SECOND: u32 = 32;
/// How often the maintenance task looks at the spares when nothing wakes it.
const MAINTENANCE_TICK: Duration = Duration::from_secs(1);
/// The longest the maintenance task waits before trying again after a spare failed to start
/// (it doubles from [`MAINTENANCE_TICK`]).
const MAX_SPARE_BACKOFF: Duration = Duration::from_secs(30);
/// Bytes a spare may have written to stdout before any session (kept for the session, as the
/// start of its output); more is left in the pipe.
const STRAY_OUTPUT_MAX: usize = 64 * 1024;
/// The id of the `ping` a new spare is sent to know it is up (the spec lets a client ping
/// before `initialize`).
const WARM_UP_ID: &str = "shadowcat-warm-up";
/// Longest a new spare is given to answer that `ping`; one that has not is used as it is, and
/// later spares are not pinged (the server does not answer before `initialize`).
const WARM_UP_TIMEOUT: Duration = Duration::from_secs(10);

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

/// A started process that no session has had yet.
#[derive(Debug)]
struct Spare {
    child: ChildProcess,
    stdout: ChildStdout,
    /// What it wrote to stdout so far (its session reads this first).
    stray: Vec<u8>,
    since: Instant,
    slot: Slot,
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

    /// Starts one spare, warms it up (unless that is off), and queues it.
    async fn add_spare(&self) -> Result<Added, PoolError> {
        let Ok(permit) = self.permits.clone().try_acquire_owned() else {
            return Ok(Added::NoPlace);
        };
        let warming = Warming::begin(&self.warming, &self.spares_changed);
        let (mut child, mut stdout, mut slot) = self.spawn(permit).await?;
        let mut stray = Vec::new();
        if self.warm_up.load(Ordering::Relaxed) {
            match warm_up(&mut child, &mut stdout, &mut stray).await {
                Exchanged::Answered(_) => {}
                Exchanged::Silent => {
                    self.warm_up.store(false, Ordering::Relaxed);
                    tracing::info!(pid = child.pid(), timeout = ?WARM_UP_TIMEOUT, "a spare did not answer its warm-up ping in time; spares are started but not warmed up from now on");
                }
                Exchanged::Ended(why) => {
                    // A server that ends when pinged before initialize: start spares without.
                    self.warm_up.store(false, Ordering::Relaxed);
                    self.counters.dead_spares.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(%why, "the MCP server ended when pinged before initialize; spares are started but not warmed up from now on");
                    return Ok(Added::Died);
                }
            }
        }
        if self.closed.is_cancelled() {
            // Closed meanwhile: dropping it stops it.
            return Ok(Added::NoPlace);
        }
        slot.set(State::Idle);
        lock(&self.idle).push_back(Spare {
            child,
            stdout,
            stray,
            since: Instant::now(),
            slot,
        });
        drop(warming);
        Ok(Added::Ready)
    }

    /// Drops the spares that died and those idle past `--pool-idle-timeout` (they are
    /// replaced).
    fn retire_spares(&self) {
        let mut idle = lock(&self.idle);
        let before = idle.len();
        let expired = |spare: &Spare| {
            self.config
                .idle_timeout
                .is_some_and(|limit| spare.since.elapsed() >= limit)
        };
        let mut kept = VecDeque::with_capacity(before);
        for mut spare in idle.drain(..) {
            if expired(&spare) {
                tracing::debug!(
                    pid = spare.child.pid(),
                    "replacing a spare idle past --pool-idle-timeout"
                );
            } else if let Some(why) = spare.dead() {
                self.counters.dead_spares.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%why, "a spare MCP server process died while idle");
            } else {
                kept.push_back(spare);
            }
        }
        *idle = kept;
    }
}

impl Spare {
    /// Why this spare cannot serve a session, if it cannot: it exited, or closed its stdout.
    /// What it wrote meanwhile is kept for its session (up to [`STRAY_OUTPUT_MAX`]; the rest
    /// waits in the pipe).
    fn dead(&mut self) -> Option<String> {
        if let Some(status) = self.child.try_exited() {
            return Some(format!(
                "it exited ({})",
                crate::transport::child::describe_exit(status)
            ));
        }
        // Whatever is readable now, without waiting: end of file means its stdout is closed.
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        let mut chunk = [0u8; 8192];
        while self.stray.len() < STRAY_OUTPUT_MAX {
            let mut buf = ReadBuf::new(&mut chunk);
            match std::pin::Pin::new(&mut self.stdout).poll_read(&mut cx, &mut buf) {
                std::task::Poll::Ready(Ok(())) if buf.filled().is_empty() => {
                    return Some("its stdout is closed".into());
                }
                std::task::Poll::Ready(Ok(())) => self.stray.extend_from_slice(buf.filled()),
                std::task::Poll::Ready(Err(e)) => return Some(format!("its stdout failed: {e}")),
                std::task::Poll::Pending => break,
            }
        }
        None
    }

    /// The spare as a session's process, if it is healthy.
    fn check(mut self) -> Result<Lease, String> {
        if let Some(why) = self.dead() {
            return Err(why);
        }
        let Self {
            child,
            stdout,
            stray,
            mut slot,
            ..
        } = self;
        slot.set(State::Busy);
        Ok(Lease {
            child,
            output: Cursor::new(stray).chain(stdout),
            slot,
            cold: false,
        })
    }
}

/// Keeps `--pool-min-idle` spares started, and retires dead and stale ones, until the pool is
/// closed or dropped (it holds only a `Weak`, so it does not keep the pool alive). A spare that
/// fails to start, or dies idle (a command that exits at once), is retried after a pause that
/// doubles up to [`MAX_SPARE_BACKOFF`] and resets once spares last a whole tick.
async fn maintain(pool: Weak<PoolInner>, wake: Arc<Notify>, closed: CancellationToken) {
    let mut pause = MAINTENANCE_TICK;
    loop {
        let woken = wake.notified();
        let outcome = match pool.upgrade() {
            Some(inner) => inner.top_up().await,
            None => return,
        };
        let wait = match outcome {
            TopUp::Failed => {
                let wait = pause;
                pause = (pause * 2).min(MAX_SPARE_BACKOFF);
                tokio::select! {
                    () = closed.cancelled() => return,
                    () = tokio::time::sleep(wait) => {}
                }
                continue;
            }
            TopUp::Started => MAINTENANCE_TICK,
            TopUp::Steady => {
                pause = MAINTENANCE_TICK;
                MAINTENANCE_TICK
            }
        };
        tokio::select! {
            () = closed.cancelled() => return,
            () = woken => {}
            () = tokio::time::sleep(wait) => {}
        }
    }
}

/// What one round of maintenance did.
enum TopUp {
    /// Nothing to do: the spares there are lived.
    Steady,
    /// It started spares.
    Started,
    /// A spare failed to start, or died idle.
    Failed,
}

impl PoolInner {
    /// Retires dead and stale spares, then starts spares up to `--pool-min-idle` (as permits
    /// allow).
    async fn top_up(&self) -> TopUp {
        let dead_before = self.counters.dead_spares.load(Ordering::Relaxed);
        self.retire_spares();
        if self.counters.dead_spares.load(Ordering::Relaxed) > dead_before {
            return TopUp::Failed;
        }
        if self.closed.is_cancelled() {
            return TopUp::Steady;
        }
        let have = self.idle() + self.warming.load(Ordering::Acquire);
        let needed = self.config.min_idle.saturating_sub(have);
        // Started together: each warms up for as long as the server takes to start.
        let added = futures_util::future::join_all((0..needed).map(|_| self.add_spare())).await;
        let mut outcome = TopUp::Steady;
        for result in added {
            match result {
                Ok(Added::Ready) => outcome = TopUp::Started,
                // No place free: every process is in use.
                Ok(Added::NoPlace) => {}
                Ok(Added::Died) => return TopUp::Failed,
                Err(e) => {
                    tracing::warn!(%e, "could not start a spare MCP server process");
                    return TopUp::Failed;
                }
            }
        }
        outcome
    }
}

/// What became of a spare being added.
enum Added {
    /// It is in the queue.
    Ready,
    /// There was no place for it.
    NoPlace,
    /// It ended while warming up.
    Died,
}

/// Sends a new spare a `ping` and waits (up to [`WARM_UP_TIMEOUT`]) for its answer, which is
/// not kept; anything else it writes first is kept in `stray` for its session.
async fn warm_up(
    child: &mut ChildProcess,
    stdout: &mut ChildStdout,
    stray: &mut Vec<u8>,
) -> Exchanged {
    let ping = format!(r#"{{"jsonrpc":"2.0","id":"{WARM_UP_ID}","method":"ping"}}"#);
    let id = serde_json::Value::from(WARM_UP_ID);
    let deadline = Instant::now() + WARM_UP_TIMEOUT;
    exchange(
        child,
        stdout,
        ping.as_bytes(),
        &id,
        deadline,
        stray,
        STRAY_OUTPUT_MAX,
    )
    .await
}

/// A spare counted as warming up until this is dropped (whatever ended its warm-up), which
/// wakes the acquires that may wait for it.
struct Warming<'a> {
    warming: &'a AtomicUsize,
    changed: &'a Notify,
}

impl<'a> Warming<'a> {
    fn begin(warming: &'a AtomicUsize, changed: &'a Notify) -> Self {
        warming.fetch_add(1, Ordering::AcqRel);
        Self { warming, changed }
    }
}

impl Drop for Warming<'_> {
    fn drop(&mut self) {
        self.warming.fetch_sub(1, Ordering::AcqRel);
        self.changed.notify_waiters();
    }
}

#[cfg(test)]
mod tests;
