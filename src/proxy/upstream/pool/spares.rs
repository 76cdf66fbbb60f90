//! The pool's spares: started ahead of need, warmed up with a `ping`, checked before they are
//! handed out, and kept at `--pool-min-idle` (and retired when stale) by a maintenance task.

use std::collections::VecDeque;
use std::io::Cursor;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt as _, ReadBuf};
use tokio::process::ChildStdout;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::transport::child::{ChildProcess, Exchanged, exchange};

use super::{Lease, PoolError, PoolInner, Slot, State, lock};

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

/// A started process that no session has had yet.
#[derive(Debug)]
pub(super) struct Spare {
    pub(super) child: ChildProcess,
    stdout: ChildStdout,
    /// What it wrote to stdout so far (its session reads this first).
    stray: Vec<u8>,
    since: Instant,
    slot: Slot,
}

impl PoolInner {
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
    pub(super) fn check(mut self) -> Result<Lease, String> {
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
pub(super) async fn maintain(pool: Weak<PoolInner>, wake: Arc<Notify>, closed: CancellationToken) {
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
