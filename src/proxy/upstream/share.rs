//! Server processes shared by many sessions (`--share always`).
//!
//! A [`SharedChildren`] keeps the command's processes that sessions share, each a
//! [`SharedChild`] with up to `--max-sessions-per-child` members. A session holds a [`Member`]:
//! its first message picks a process (one whose first `initialize` asked for the protocol
//! version this session asks for, so that the answer it gets is the one the process gives for
//! that version), started from the pool when none has room.
//!
//! What the sessions send is kept apart at the process:
//! - a request goes under an id of ours, unique there, and its progress token too; the answer
//!   and the progress come back under the session's own names, to that session only;
//! - `initialize` goes to the process once: later sessions get its answer, and
//!   `notifications/initialized` is sent once;
//! - `resources/subscribe` is counted per URI: the process sees the first subscribe and the
//!   last unsubscribe, and `notifications/resources/updated` reaches each subscriber;
//! - a cancellation names the request by our id; a session's requests still at the process
//!   when it leaves are cancelled there, and its subscriptions dropped.
//!
//! What the process sends on its own is never broadcast or guessed: list-changed
//! notifications reach every member (they concern them all); a request (sampling,
//! elicitation, roots) or a log notification goes to the one session with requests in flight
//! there (or the only member), else the request is refused with an error to the process and
//! the notification dropped, both counted. A `ping` from the process is answered here.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError, Weak};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::io::AsyncRead;
use tokio::sync::{Notify, watch};
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::protocol::error::ProxyError;
use crate::protocol::{Direction, ErrorCode, Frame, Message, Method, RequestId};
use crate::proxy::outbox::{Closed, Deliver, Outbox};
use crate::proxy::pipeline::Pipeline;
use crate::proxy::relay::RelayEnd;
use crate::session::Session;
use crate::stage::{Client, Context, Verdict};
use crate::transport::child::{ChildCounters, Restart, describe_exit};
use crate::transport::lines::{Line, LineDecoder};

use super::pool::{Pool, PoolError};

mod restart;
mod table;

use super::stdio::{StdioLink, StdioQueue};
use super::supervise::Supervisor;
use table::{Inbound, Table, To};

/// Longest a session's `initialize` waits for another session's, in flight at the process,
/// before it is sent itself.
const HANDSHAKE_WAIT: Duration = Duration::from_secs(10);

/// How long a process's last output may still be read after it exited.
const DRAIN_GRACE: Duration = Duration::from_millis(250);

/// Critical sections are map operations; a poisoned lock is still consistent.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One session as its shared process sees it: where its messages go, and how it learns that
/// it lost its process.
#[derive(Debug)]
pub struct Route<C> {
    id: u64,
    session: Arc<Session>,
    to_client: C,
    /// Cancelled when the session can no longer be served: its process exited, or none could
    /// be had for it (the error is `why`).
    ended: CancellationToken,
    why: OnceLock<ProxyError>,
}

impl<C> Route<C> {
    fn fail(&self, error: ProxyError) {
        let _ = self.why.set(error);
        self.ended.cancel();
    }
}

/// A session's place on a shared process, taken with its first message.
#[derive(Debug)]
pub struct Member<C> {
    route: Arc<Route<C>>,
    group: Arc<SharedChildren<C>>,
    /// The protocol version its `initialize` asks for (set by its first message).
    key: OnceLock<Option<Box<str>>>,
    child: OnceLock<Arc<SharedChild<C>>>,
    joined: Notify,
    /// Cancelled when the first message is on its way: the process is picked then.
    pub start: CancellationToken,
    /// What its process is given before the session's own messages (a session taken over
    /// from another gateway instance: its handshake), once.
    replay: Mutex<Vec<Message>>,
    replayed: tokio::sync::OnceCell<()>,
}

impl<C: Deliver + 'static> Member<C> {
    /// Gives its process `messages` before the session's own: a handshake (whose
    /// `initialize` also picks the process, by the protocol version it asks for; its answer
    /// goes to the session under the id it carries, so give it one no client request has).
    pub fn replay_first(&self, messages: Vec<Message>) {
        if let Some(initialize) = messages
            .iter()
            .find(|m| m.method() == Some(&Method::Initialize))
        {
            let version = initialize.param_str("protocolVersion").ok().flatten();
            let _ = self.key.set(version.map(String::into_boxed_str));
        }
        *lock(&self.replay) = messages;
    }

    /// Takes a process for the session (the gateway calls this once `start` is cancelled); on
    /// failure the session's messages are refused from then on.
    pub async fn join(&self) -> Result<Arc<SharedChild<C>>, PoolError> {
        let key = self.key.get().cloned().flatten();
        let child = self.group.join(key, &self.route).await?;
        let _ = self.child.set(child.clone());
        self.joined.notify_waiters();
        Ok(child)
    }

    /// The session cannot be served: `error` ends it.
    pub fn fail(&self, error: ProxyError) {
        self.route.fail(error);
    }

    /// Resolves when the session lost its process, with the error for what it had in flight.
    pub async fn lost(&self) -> ProxyError {
        self.route.ended.cancelled().await;
        self.route.why.get().cloned().unwrap_or_else(|| {
            ProxyError::new(ErrorCode::ShuttingDown, "the shared MCP server stopped")
        })
    }

    /// The process the session is on, once it has one.
    pub fn child(&self) -> Option<&Arc<SharedChild<C>>> {
        self.child.get()
    }

    /// The session has ended: it leaves its process (its requests there are cancelled, its
    /// subscriptions dropped).
    pub async fn leave(&self) {
        if let Some(child) = self.child.get() {
            child.leave(self.route.id).await;
        }
        // Anyone still waiting for a process gives up.
        self.route.ended.cancel();
    }
}

/// A client message for the session's process (a proxy-made one too: cancellations, answers
/// the pipeline gives the server). The first picks the process.
impl<C: Deliver + 'static> Deliver for Member<C> {
    async fn deliver(&self, msg: Message) -> Result<(), Closed> {
        let child = if let Some(child) = self.child.get() {
            child.clone()
        } else {
            if msg.method() == Some(&Method::Initialize) {
                let version = msg.param_str("protocolVersion").ok().flatten();
                let _ = self.key.set(version.map(String::into_boxed_str));
            }
            self.start.cancel();
            loop {
                let joined = self.joined.notified();
                if let Some(child) = self.child.get() {
                    break child.clone();
                }
                tokio::select! {
                    () = joined => {}
                    () = self.route.ended.cancelled() => return Err(Closed),
                }
            }
        };
        // Whoever comes first gives the process what is replayed; the others wait for it.
        self.replayed
            .get_or_init(|| async {
                // Cleared only once all of it is sent: if this is cut short (its caller went),
                // the next caller sends it again.
                let replay = lock(&self.replay).clone();
                for message in replay {
                    if child.send(&self.route, message).await.is_err() {
                        break;
                    }
                }
                lock(&self.replay).clear();
            })
            .await;
        child.send(&self.route, msg).await
    }
}

/// The processes sessions share, taken from the pool as needed.
#[derive(Debug)]
pub struct SharedChildren<C> {
    pool: Pool,
    pipeline: Arc<Pipeline>,
    counters: Arc<ChildCounters>,
    max_members: usize,
    max_message_size: usize,
    shutdown_timeout: Duration,
    /// How long a process without members is kept for the next session.
    linger: Duration,
    /// Whether a process that fails is started again, its members kept.
    restart: Restart,
    children: Mutex<Vec<Arc<SharedChild<C>>>>,
    /// One process is started at a time, so that a burst of sessions fills one before the next
    /// is started.
    starting: tokio::sync::Mutex<()>,
    tasks: TaskTracker,
    closing: CancellationToken,
    next_member: AtomicU64,
}

/// How [`SharedChildren`] runs its processes.
#[derive(Debug, Clone, Copy)]
pub struct ShareLimits {
    /// Most sessions on one process.
    pub max_members: usize,
    /// Longest message.
    pub max_message_size: usize,
    /// Time a process has to exit when stopped.
    pub shutdown_timeout: Duration,
    /// How long a process without members is kept.
    pub linger: Duration,
    /// Whether a process that fails is started again (its members kept) or ends them.
    pub restart: Restart,
}

impl<C: Deliver + 'static> SharedChildren<C> {
    /// Shared processes from `pool`, whose messages go through `pipeline`.
    pub fn new(
        pool: Pool,
        pipeline: Arc<Pipeline>,
        counters: Arc<ChildCounters>,
        limits: ShareLimits,
    ) -> Arc<Self> {
        Arc::new(Self {
            pool,
            pipeline,
            counters,
            max_members: limits.max_members.max(1),
            max_message_size: limits.max_message_size,
            shutdown_timeout: limits.shutdown_timeout,
            linger: limits.linger,
            restart: limits.restart,
            children: Mutex::new(Vec::new()),
            starting: tokio::sync::Mutex::new(()),
            tasks: TaskTracker::new(),
            closing: CancellationToken::new(),
            next_member: AtomicU64::new(1),
        })
    }

    /// The pool the processes come from.
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// Processes running now.
    pub fn running(&self) -> usize {
        lock(&self.children).len()
    }

    /// A member for `session`, whose messages from its process go to `to_client`; it takes a
    /// process with its first message.
    pub fn member(self: &Arc<Self>, session: Arc<Session>, to_client: C) -> Member<C> {
        Member {
            route: Arc::new(Route {
                id: self.next_member.fetch_add(1, Ordering::Relaxed),
                session,
                to_client,
                ended: CancellationToken::new(),
                why: OnceLock::new(),
            }),
            group: self.clone(),
            key: OnceLock::new(),
            child: OnceLock::new(),
            joined: Notify::new(),
            start: CancellationToken::new(),
            replay: Mutex::new(Vec::new()),
            replayed: tokio::sync::OnceCell::new(),
        }
    }

    fn admit(&self, key: Option<&str>, route: &Arc<Route<C>>) -> Option<Arc<SharedChild<C>>> {
        let children = lock(&self.children);
        children
            .iter()
            .find(|child| child.key.as_deref() == key && child.admit(route, self.max_members))
            .cloned()
    }

    /// A process with room for `route` whose first `initialize` asked for `key`; one is
    /// started if none has room.
    async fn join(
        self: &Arc<Self>,
        key: Option<Box<str>>,
        route: &Arc<Route<C>>,
    ) -> Result<Arc<SharedChild<C>>, PoolError> {
        if let Some(child) = self.admit(key.as_deref(), route) {
            return Ok(child);
        }
        let _one_at_a_time = self.starting.lock().await;
        if let Some(child) = self.admit(key.as_deref(), route) {
            return Ok(child);
        }
        if self.closing.is_cancelled() {
            return Err(PoolError::Closed);
        }
        let lease = self.pool.acquire().await?;
        let program = self.pool.spec().program.to_string_lossy().into_owned();
        let queue = StdioQueue::new(self.max_message_size);
        let child = Arc::new(SharedChild {
            key,
            pid: AtomicU32::new(lease.child.pid().unwrap_or(0)),
            generation: watch::Sender::new(1),
            to_server: Mutex::new(queue.to_server.clone()),
            table: Mutex::new(Table::default()),
            handshake_changed: Notify::new(),
            emptied: Notify::new(),
            crash_looping: AtomicBool::new(false),
            pipeline: self.pipeline.clone(),
            counters: self.counters.clone(),
        });
        let reader = child.clone();
        let max = self.max_message_size;
        let link = queue
            .attach_reader(lease.into(), move |output| reader.read(output, max))
            .map_err(|error| PoolError::Spawn { program, error })?;
        tracing::info!(
            pid = child.pid(),
            version = child.key.as_deref().unwrap_or("-"),
            "started a shared MCP server"
        );
        child.admit(route, self.max_members);
        lock(&self.children).push(child.clone());
        self.tasks.spawn(
            child
                .clone()
                .run(link, Arc::downgrade(self), self.closing.clone()),
        );
        Ok(child)
    }

    /// Stops every process (their members are ending) and waits up to `limit`.
    pub async fn close(&self, limit: Duration) {
        self.closing.cancel();
        self.tasks.close();
        let _ = tokio::time::timeout(limit, self.tasks.wait()).await;
        self.pool.close(limit).await;
    }

    fn forget(&self, child: &Arc<SharedChild<C>>) {
        lock(&self.children).retain(|c| !Arc::ptr_eq(c, child));
    }
}

/// A server process shared by sessions (with `--restart on-failure`, whichever process is
/// current: one that fails is replaced, and its members stay).
#[derive(Debug)]
pub struct SharedChild<C> {
    /// The protocol version its first `initialize` asked for.
    key: Option<Box<str>>,
    /// The current process's id (0: unknown).
    pid: AtomicU32,
    /// Which process it is: 1, then one more per restart.
    generation: watch::Sender<u64>,
    /// The current process's stdin queue. Read under the table's lock where a message's
    /// names are given, so a message renamed before a restart never reaches the next process.
    to_server: Mutex<Arc<Outbox>>,
    table: Mutex<Table<C>>,
    handshake_changed: Notify,
    /// Notified when its last member leaves.
    emptied: Notify,
    /// Counted in `crash_looping` now.
    crash_looping: AtomicBool,
    pipeline: Arc<Pipeline>,
    counters: Arc<ChildCounters>,
}

impl<C: Deliver + 'static> SharedChild<C> {
    /// The current process's stdin.
    pub fn to_server(&self) -> Arc<Outbox> {
        lock(&self.to_server).clone()
    }

    /// The current process's id.
    pub fn pid(&self) -> Option<u32> {
        Some(self.pid.load(Ordering::Relaxed)).filter(|pid| *pid != 0)
    }

    /// Which process is current (1, then one more per restart); changes when one is replaced.
    pub fn generations(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// Sessions on it now.
    pub fn members(&self) -> usize {
        lock(&self.table).member_count()
    }

    fn admit(&self, route: &Arc<Route<C>>, max: usize) -> bool {
        lock(&self.table).admit(route, max)
    }

    /// A member's message, as the process gets it (or answered here).
    async fn send(&self, route: &Arc<Route<C>>, msg: Message) -> Result<(), Closed> {
        let mut waited = false;
        loop {
            let changed = self.handshake_changed.notified();
            let (inbound, to_server) = {
                let mut table = lock(&self.table);
                (table.inbound(route.id, &msg, waited), self.to_server())
            };
            match inbound {
                Inbound::Forward(msg) => return to_server.send(msg).await,
                Inbound::Answer(answer) => {
                    self.pass(route, answer).await;
                    return Ok(());
                }
                Inbound::Drop => return Ok(()),
                Inbound::Wait => {
                    tokio::select! {
                        () = changed => {}
                        () = tokio::time::sleep(HANDSHAKE_WAIT) => waited = true,
                        () = route.ended.cancelled() => return Err(Closed),
                    }
                }
            }
        }
    }

    /// A message for `route`'s client, through the pipeline as that session's.
    async fn pass(&self, route: &Route<C>, msg: Message) {
        let cx = Context {
            direction: Direction::ServerToClient,
            session: &route.session,
            transport: &crate::tape::Wire::NONE,
            client: Client::Local,
            header_trace: None,
            notes: None,
        };
        let metrics = self.pipeline.metrics();
        match self.pipeline.process(msg, cx).await {
            Verdict::Forward(msg) => {
                if route.to_client.deliver(msg).await.is_ok() {
                    metrics.forwarded(Direction::ServerToClient);
                }
            }
            Verdict::Respond(answer) => {
                metrics.answered_by_proxy(Direction::ServerToClient);
                let _ = self.to_server().send(answer).await;
            }
            Verdict::Drop => {}
        }
    }

    /// Delivers a message of the process where it belongs.
    async fn dispatch(&self, msg: Message) {
        // A process that speaks after its handshake is serving: no longer a crash loop.
        if self.crash_looping.swap(false, Ordering::Relaxed) {
            self.counters.crash_looping.fetch_sub(1, Ordering::Relaxed);
        }
        let (to, settled) = {
            let mut table = lock(&self.table);
            let to = table.outbound(msg);
            (to, std::mem::take(&mut table.handshake_settled))
        };
        if settled {
            self.handshake_changed.notify_waiters();
        }
        match to {
            To::One(route, msg) => self.pass(&route, msg).await,
            To::Each(routes, msg) => {
                for route in routes {
                    self.pass(&route, msg.clone()).await;
                }
            }
            To::Child(msg) => {
                let _ = self.to_server().send(msg).await;
            }
            To::Refused(msg) => {
                self.counters.unattributed.fetch_add(1, Ordering::Relaxed);
                let _ = self.to_server().send(msg).await;
            }
            To::Nowhere { why, counted } => {
                tracing::debug!(pid = self.pid(), "{why}; dropped");
                if counted {
                    self.counters.unattributed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    /// Reads the process's stdout and hands each message to its member.
    async fn read<O: AsyncRead>(self: Arc<Self>, output: O, max_message_size: usize) -> RelayEnd {
        let mut frames =
            std::pin::pin!(FramedRead::new(output, LineDecoder::new(max_message_size)));
        while let Some(line) = frames.next().await {
            match line {
                Ok(Line::Frame(bytes)) => {
                    if bytes.iter().all(u8::is_ascii_whitespace) {
                        continue;
                    }
                    match Message::parse_frame(bytes) {
                        Ok(Frame::Single(msg)) => self.dispatch(msg).await,
                        Ok(Frame::Batch(members)) => {
                            for msg in members.into_iter().flatten() {
                                self.dispatch(msg).await;
                            }
                        }
                        Err(e) => self.bad_frame(&e.to_string(), None).await,
                    }
                }
                Ok(Line::TooLong { len, head, tail }) => {
                    let id = crate::protocol::salvage::find_id(&head, &tail);
                    self.bad_frame(&format!("a message of {len} bytes"), id)
                        .await;
                }
                Err(e) => return RelayEnd::ReadError(e),
            }
        }
        RelayEnd::Eof
    }

    /// A frame of the process that cannot be passed on: logged, counted, and if it answers a
    /// request of ours, that request is answered with an error instead.
    async fn bad_frame(&self, what: &str, id: Option<RequestId>) {
        self.pipeline.metrics().malformed(Direction::ServerToClient);
        tracing::warn!(
            pid = self.pid(),
            "the shared MCP server sent {what} that cannot be passed on"
        );
        let error = ProxyError::new(
            ErrorCode::InvalidUpstreamResponse,
            "the MCP server's answer could not be passed on (malformed or too long)",
        );
        if let Some(id) = id {
            self.dispatch(Message::error_response(Some(&id), &error))
                .await;
        }
    }

    /// A member leaves: its requests still at the process are cancelled there, its
    /// subscriptions dropped (the last subscriber's unsubscribed), and the process's requests
    /// to it answered with an error.
    async fn leave(&self, member: u64) {
        let (to_child, empty, settled) = {
            let mut table = lock(&self.table);
            let to_child = table.leave(member);
            let settled = std::mem::take(&mut table.handshake_settled);
            (to_child, table.member_count() == 0, settled)
        };
        if settled {
            self.handshake_changed.notify_waiters();
        }
        let to_server = self.to_server();
        for msg in to_child {
            if to_server.send(msg).await.is_err() {
                break;
            }
        }
        if empty {
            self.emptied.notify_one();
        }
    }

    /// No member may join any more if it has none now; true if so.
    fn retire_if_empty(&self) -> bool {
        let mut table = lock(&self.table);
        if table.member_count() == 0 {
            table.retired = true;
        }
        table.retired
    }

    /// Runs the process until it exits, the gateway stops, or it has had no member for the
    /// linger time; with `--restart on-failure` a process that fails is replaced and its
    /// members go on. Then its members (if any) lose it, with the reason.
    async fn run(
        self: Arc<Self>,
        mut link: StdioLink,
        group: Weak<SharedChildren<C>>,
        closing: CancellationToken,
    ) {
        let Some((linger, shutdown_timeout, restart, max_message_size)) = group
            .upgrade()
            .map(|g| (g.linger, g.shutdown_timeout, g.restart, g.max_message_size))
        else {
            link.abort();
            return;
        };
        let mut supervisor = Supervisor::new();
        let error = loop {
            let exited = loop {
                let idle = async {
                    self.emptied.notified().await;
                    tokio::time::sleep(linger).await;
                };
                tokio::select! {
                    status = link.child.wait() => {
                        let failed = !matches!(&status, Ok(s) if s.success());
                        break Some((status, failed));
                    }
                    _ = link.server_reader.join() => {
                        // Its stdout closed: stopped, and taken for a failure.
                        break Some((Box::pin(link.shut_down(shutdown_timeout)).await, true));
                    }
                    () = closing.cancelled() => break None,
                    () = idle => if self.retire_if_empty() { break None },
                }
            };
            let Some((status, failed)) = exited else {
                match link.shut_down(shutdown_timeout).await {
                    Ok(status) => {
                        tracing::info!(pid = self.pid(), status = %describe_exit(status), "the shared MCP server stopped");
                    }
                    Err(e) => {
                        tracing::warn!(pid = self.pid(), %e, "waiting for the shared MCP server failed");
                    }
                }
                link.abort();
                break ProxyError::new(
                    ErrorCode::ShuttingDown,
                    "the shared MCP server was stopped",
                );
            };
            link.server_reader.join_within(DRAIN_GRACE).await;
            link.child.finish_stderr(DRAIN_GRACE).await;
            let status = status.map_or_else(|e| e.to_string(), describe_exit);
            let error = ProxyError::new(
                ErrorCode::UpstreamExited,
                format!("the MCP server exited unexpectedly ({status})"),
            )
            .with("stderr", link.child.stderr_tail().lines());
            link.abort();
            if !(failed && restart == Restart::OnFailure) || closing.is_cancelled() {
                tracing::warn!(pid = self.pid(), %status, "the shared MCP server exited; ending its sessions");
                break error;
            }
            tracing::error!(pid = self.pid(), %status, "the shared MCP server exited unexpectedly; it will be restarted");
            let restarted = self
                .restart(&error, &mut supervisor, &group, &closing, max_message_size)
                .await;
            match restarted {
                Some(next) => link = next,
                None => {
                    break ProxyError::new(
                        ErrorCode::ShuttingDown,
                        "the shared MCP server was stopped while it was being restarted",
                    );
                }
            }
        };
        lock(&self.table).retired = true;
        if let Some(group) = group.upgrade() {
            group.forget(&self);
        }
        if self.crash_looping.swap(false, Ordering::Relaxed) {
            self.counters.crash_looping.fetch_sub(1, Ordering::Relaxed);
        }
        let routes = lock(&self.table).all();
        for route in routes {
            route.fail(error.clone());
        }
    }
}

#[cfg(test)]
mod tests;
