//! Supervision of a server process that fails (`--restart on-failure`): when to start it
//! again ([`Supervisor`]: exponential backoff with full jitter, crash-loop detection, a streak
//! that resets only after sustained uptime), the client's way to whichever process is current
//! ([`ServerInbox`], which also keeps the session's handshake), and giving a new process that
//! handshake again ([`replay_handshake`]) so the client keeps its session.

use std::collections::VecDeque;
use std::io::Cursor;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::io::AsyncReadExt as _;
use tokio::process::ChildStdout;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::protocol::{Direction, Kind, Message, Method};
use crate::proxy::outbox::{Closed, Deliver, Outbox};
use crate::session::Session;

use super::pool::{Lease, ServerOutput};
use super::stdio::Server as Process;
use crate::transport::backoff::Backoff;
use crate::transport::child::ChildProcess;

use crate::transport::child::{Exchanged, exchange};

/// The first restart's delay ceiling.
pub const RESTART_BASE: Duration = Duration::from_millis(100);
/// The highest delay between restarts (and the delay in a crash loop).
pub const RESTART_CAP: Duration = Duration::from_secs(30);
/// Crashes within [`CRASH_LOOP_WINDOW`] that make a crash loop.
pub const CRASH_LOOP_CRASHES: usize = 5;
/// The window in which [`CRASH_LOOP_CRASHES`] crashes make a crash loop.
pub const CRASH_LOOP_WINDOW: Duration = Duration::from_secs(60);
/// Uptime after which a crash starts a new streak (the backoff starts small again).
pub const SUSTAINED_UPTIME: Duration = Duration::from_secs(30);
/// Longest a new process is given to answer the replayed `initialize`.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);
/// Output a new process may write before its `initialize` answer (kept for the session).
const HANDSHAKE_STRAY_MAX: usize = 1024 * 1024;

/// When a failed server process is started again.
#[derive(Debug)]
pub struct Supervisor {
    backoff: Backoff,
    /// Since when the current process has run (none while starting one again).
    running_since: Option<Instant>,
    /// Crashes within the last [`CRASH_LOOP_WINDOW`].
    crashes: VecDeque<Instant>,
    crash_loop: bool,
    generation: u64,
}

impl Default for Supervisor {
    fn default() -> Self {
        Self::new()
    }
}

impl Supervisor {
    /// Supervision of a process started now (generation 1).
    pub fn new() -> Self {
        Self {
            backoff: Backoff::new(RESTART_BASE, RESTART_CAP),
            running_since: Some(Instant::now()),
            crashes: VecDeque::new(),
            crash_loop: false,
            generation: 1,
        }
    }

    /// Which process this is: 1 for the first, one more for each restart.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Whether the process is crashing in a loop (unhealthy).
    pub fn in_crash_loop(&self) -> bool {
        self.crash_loop
    }

    /// A new process started now.
    pub fn started(&mut self) {
        self.running_since = Some(Instant::now());
        self.generation += 1;
    }

    /// [`Self::crashed`], logged: the restart coming, or the crash loop.
    pub fn crashed_and_logged(&mut self) -> Duration {
        let delay = self.crashed();
        if self.crash_loop {
            tracing::error!(
                ?delay,
                generation = self.generation,
                "the MCP server is crashing in a loop; retrying at the longest interval"
            );
        } else {
            tracing::warn!(
                ?delay,
                generation = self.generation,
                "restarting the MCP server"
            );
        }
        delay
    }

    /// The process crashed (or a new one failed to start) now: how long to wait before the next
    /// start. A crash after [`SUSTAINED_UPTIME`] starts a new streak; [`CRASH_LOOP_CRASHES`]
    /// within [`CRASH_LOOP_WINDOW`] is a crash loop, retried at [`RESTART_CAP`] until a process
    /// lasts.
    pub fn crashed(&mut self) -> Duration {
        let now = Instant::now();
        // Only a process that ran counts: waiting and failed starts are no uptime.
        let ran = self.running_since.take();
        if ran.is_some_and(|since| now.duration_since(since) >= SUSTAINED_UPTIME) {
            self.backoff.reset();
            self.crashes.clear();
            self.crash_loop = false;
        }
        self.crashes.push_back(now);
        while self
            .crashes
            .front()
            .is_some_and(|t| now.duration_since(*t) > CRASH_LOOP_WINDOW)
        {
            self.crashes.pop_front();
        }
        if self.crashes.len() >= CRASH_LOOP_CRASHES {
            self.crash_loop = true;
        }
        if self.crash_loop {
            RESTART_CAP
        } else {
            self.backoff.next_delay(None)
        }
    }
}

/// The session's handshake as the server received it.
#[derive(Debug, Default, Clone)]
pub struct Handshake {
    /// The client's `initialize` request.
    pub initialize: Option<Message>,
    /// Its `notifications/initialized`.
    pub initialized: Option<Message>,
}

/// The client's way to the server's stdin, whichever process is current; it keeps the
/// handshake that passes through it, for a new process.
#[derive(Debug)]
pub struct ServerInbox {
    current: Mutex<Arc<Outbox>>,
    replaced: Notify,
    handshake: Mutex<Handshake>,
    /// The session (whose requests a crash answered are not sent on).
    session: Arc<Session>,
}

/// Critical sections are single reads or writes; a poisoned lock is still consistent.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl ServerInbox {
    /// The way to `to_server`, for `session`: a message that finds its process's queue closed
    /// waits for the next one rather than fail.
    pub fn new(to_server: Arc<Outbox>, session: Arc<Session>) -> Self {
        Self {
            current: Mutex::new(to_server),
            replaced: Notify::new(),
            handshake: Mutex::default(),
            session,
        }
    }

    /// The current process's queue.
    pub fn current(&self) -> Arc<Outbox> {
        lock(&self.current).clone()
    }

    /// Makes `to_server` (a new process's queue) current; returns the old one.
    pub fn replace(&self, to_server: Arc<Outbox>) -> Arc<Outbox> {
        let old = std::mem::replace(&mut *lock(&self.current), to_server);
        self.replaced.notify_waiters();
        old
    }

    /// The handshake to give a new process: the client's, once the server answered its
    /// `initialize` (one still in flight at a crash got an error, and the client will send
    /// its own again); else none.
    pub fn handshake(&self) -> Handshake {
        let negotiated = self.session.read_metadata(|m| m.protocol_version.is_some());
        if negotiated {
            lock(&self.handshake).clone()
        } else {
            Handshake::default()
        }
    }

    /// Keeps `handshake` as the session's (a session taken over from another instance, whose
    /// handshake never passed through here).
    pub fn remember(&self, handshake: &Handshake) {
        *lock(&self.handshake) = handshake.clone();
    }

    fn keep_handshake(&self, msg: &Message) {
        match (msg.kind(), msg.method()) {
            (Kind::Request, Some(Method::Initialize)) => {
                lock(&self.handshake).initialize = Some(msg.clone());
            }
            (Kind::Notification, Some(Method::Initialized)) => {
                lock(&self.handshake).initialized = Some(msg.clone());
            }
            _ => {}
        }
    }
}

impl Deliver for ServerInbox {
    async fn deliver(&self, msg: Message) -> Result<(), Closed> {
        self.keep_handshake(&msg);
        // A process that died closed its queue (perhaps under a send waiting for room): the
        // message waits for the next process's. Never `Closed`: the front end ends the client
        // side itself when there will be no next process.
        let mut waited = false;
        loop {
            let replaced = self.replaced.notified();
            let to_server = self.current();
            if to_server.is_closed() {
                waited = true;
                replaced.await;
                continue;
            }
            if waited {
                // A request the crash answered (it was in flight) is not sent to the next
                // process.
                if let (Kind::Request, Some(id)) = (msg.kind(), msg.id()) {
                    if !self.session.pending(Direction::ClientToServer).contains(id) {
                        return Ok(());
                    }
                }
            }
            match to_server.send(msg.clone()).await {
                Ok(()) => return Ok(()),
                Err(Closed) => waited = true,
            }
        }
    }
}

/// A process from the pool, given `handshake`; what it wrote besides the answer stays first in
/// its output, for its session(s) to read.
pub async fn with_handshake(
    lease: Lease,
    handshake: &Handshake,
) -> Result<Process<ServerOutput>, String> {
    let Lease {
        mut child,
        output,
        slot,
        ..
    } = lease;
    let (before, mut stdout) = output.into_inner();
    let stray = replay_handshake(&mut child, &mut stdout, handshake).await?;
    let mut bytes = before.into_inner();
    bytes.extend(stray);
    Ok(Process {
        child,
        output: Cursor::new(bytes).chain(stdout),
        slot: Some(slot),
    })
}

/// Gives a new process the session's handshake: the client's `initialize` (the answer must
/// be a result; it is not passed on) and its `notifications/initialized`. Returns what the
/// process wrote besides the answer, which is its session's to read.
pub async fn replay_handshake(
    child: &mut ChildProcess,
    stdout: &mut ChildStdout,
    handshake: &Handshake,
) -> Result<Vec<u8>, String> {
    let mut stray = Vec::new();
    let Some(initialize) = &handshake.initialize else {
        return Ok(stray);
    };
    let id = match initialize.id() {
        Some(crate::protocol::RequestId::Number(n)) => serde_json::Value::from(*n),
        Some(crate::protocol::RequestId::String(s)) => serde_json::Value::from(&**s),
        None => serde_json::Value::Null,
    };
    let deadline = Instant::now() + HANDSHAKE_TIMEOUT;
    let answer = exchange(
        child,
        stdout,
        initialize.raw(),
        &id,
        deadline,
        &mut stray,
        HANDSHAKE_STRAY_MAX,
    )
    .await;
    match answer {
        Exchanged::Answered(answer) if answer.get("result").is_some() => {}
        Exchanged::Answered(answer) => {
            return Err(format!(
                "it refused the replayed initialize: {}",
                answer["error"]
            ));
        }
        Exchanged::Silent => {
            return Err(format!(
                "it did not answer the replayed initialize within {HANDSHAKE_TIMEOUT:?}"
            ));
        }
        Exchanged::Ended(why) => return Err(why),
    }
    if let Some(initialized) = &handshake.initialized {
        use tokio::io::AsyncWriteExt as _;
        let Some(stdin) = child.stdin.as_mut() else {
            return Err("its stdin is not ours".into());
        };
        let written = async {
            stdin.write_all(initialized.raw()).await?;
            stdin.write_all(b"\n").await?;
            stdin.flush().await
        };
        written
            .await
            .map_err(|e| format!("writing notifications/initialized failed: {e}"))?;
    }
    Ok(stray)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn restarts_back_off_detect_a_crash_loop_and_reset_after_sustained_uptime() {
        let mut supervisor = Supervisor::new();
        for crash in 0..CRASH_LOOP_CRASHES - 1 {
            let delay = supervisor.crashed();
            let ceiling = RESTART_BASE * 2u32.pow(u32::try_from(crash).unwrap());
            assert!(delay <= ceiling, "{delay:?} > {ceiling:?}");
            assert!(!supervisor.in_crash_loop());
            tokio::time::advance(delay).await;
            supervisor.started();
        }
        // The fifth crash within the window: a loop, retried at the cap from now on.
        assert_eq!(supervisor.crashed(), RESTART_CAP);
        assert!(supervisor.in_crash_loop());
        supervisor.started();
        assert_eq!(supervisor.crashed(), RESTART_CAP);
        assert_eq!(supervisor.generation(), 1 + CRASH_LOOP_CRASHES as u64);
        // Starts that fail after the long wait are no uptime: still a loop.
        tokio::time::advance(RESTART_CAP).await;
        assert_eq!(supervisor.crashed(), RESTART_CAP);
        assert!(supervisor.in_crash_loop());
        // A process that lasts ends the loop and the streak.
        supervisor.started();
        tokio::time::advance(SUSTAINED_UPTIME).await;
        let delay = supervisor.crashed();
        assert!(!supervisor.in_crash_loop());
        assert!(delay <= RESTART_BASE, "{delay:?}");
    }

    fn message(text: &str) -> Message {
        let raw = format!(
            r#"{{"jsonrpc":"2.0","method":"notifications/message","params":{{"data":"{text}"}}}}"#
        );
        Message::parse(raw.into()).unwrap()
    }

    /// A message waiting for room in a process's queue when that process dies (its queue
    /// closes under the send) is not lost, nor an error: it goes to the next process's queue.
    #[tokio::test]
    async fn a_message_caught_by_a_crash_goes_to_the_next_process() {
        let session = Arc::new(Session::standalone(
            crate::session::TransportKind::Stdio,
            100,
        ));
        let (old, old_rx, _) = Outbox::new(1, 1 << 20);
        let old = Arc::new(old);
        let inbox = Arc::new(ServerInbox::new(old.clone(), session));
        inbox.deliver(message("first")).await.unwrap();
        let waiting = tokio::spawn({
            let inbox = inbox.clone();
            async move { inbox.deliver(message("second")).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "the queue had no room");
        // The process dies: its writer, and the receiver, are gone.
        drop(old_rx);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "it must wait for the next process");
        let (next, mut next_rx, _) = Outbox::new(8, 1 << 20);
        inbox.replace(Arc::new(next));
        waiting.await.unwrap().unwrap();
        let delivered = next_rx.recv().await.unwrap();
        let text = String::from_utf8_lossy(delivered.as_ref()).into_owned();
        assert!(text.contains("second"), "{text}");
    }

    #[tokio::test(start_paused = true)]
    async fn crashes_spread_wider_than_the_window_are_no_loop() {
        let mut supervisor = Supervisor::new();
        for _ in 0..2 * CRASH_LOOP_CRASHES {
            supervisor.crashed();
            // Each process lasts a little under the sustained uptime: the streak goes on,
            // but never five crashes within the window.
            tokio::time::advance(CRASH_LOOP_WINDOW / 4 + Duration::from_secs(1)).await;
            assert!(!supervisor.in_crash_loop());
        }
    }
}
