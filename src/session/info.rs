//! One session: who is talking, what they said about themselves, how much, and what is pending.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::declared::Declared;
use super::id::SessionId;
use super::lifecycle::{IllegalTransition, State};
use super::pending::{Pending, PendingBudget, PendingRequests};
use super::principal::Principal;
use crate::protocol::{Direction, RequestId};

/// How the client reached us.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TransportKind {
    /// Our stdin/stdout.
    Stdio,
    /// Streamable HTTP (the reverse proxy).
    Http,
    /// The 2024-11-05 HTTP+SSE transport (the reverse proxy's `/sse` endpoint).
    Sse,
}

impl TransportKind {
    /// Stable lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stdio => "stdio",
            Self::Http => "http",
            Self::Sse => "sse",
        }
    }
}

/// What the peers said about themselves in the `initialize` exchange, plus tags.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Metadata {
    /// The negotiated protocol version (from the server's answer; the client's ask until then).
    pub protocol_version: Option<String>,
    /// `clientInfo` (name, version, ...).
    pub client_info: Option<Declared>,
    /// `capabilities` the client declared.
    pub client_capabilities: Option<Declared>,
    /// `serverInfo`.
    pub server_info: Option<Declared>,
    /// `capabilities` the server declared.
    pub server_capabilities: Option<Declared>,
    /// Labels: automatic (`long-running`, `high-volume`) and, later, from rules.
    pub tags: BTreeSet<String>,
    /// The server process serving the session now (a command upstream): its pid.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_pid: Option<u32>,
    /// How many server processes the session has had (1, then one more per restart).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_generation: Option<u64>,
    /// The authenticated principal that opened the session (`<issuer>#<sub>`, `key:<name>`);
    /// never a token.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub principal: Option<String>,
    /// The traces its requests belonged to, when tracing was on: the latest
    /// [`MAX_SESSION_TRACES`] distinct ids (32 hex digits), oldest first.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub traces: Vec<String>,
}

/// How many trace ids a session's record keeps.
pub const MAX_SESSION_TRACES: usize = 32;

impl Metadata {
    /// Notes that a request of the session belonged to trace `id`.
    pub fn saw_trace(&mut self, id: &str) {
        if self.traces.last().is_some_and(|t| t == id) {
            return;
        }
        // Ids are random: their first eight digits tell two apart without a call to compare.
        let head = id.as_bytes().first_chunk::<8>();
        let seen = self
            .traces
            .iter()
            .position(|t| t.as_bytes().first_chunk::<8>() == head && t == id);
        let id = if let Some(at) = seen {
            self.traces.remove(at)
        } else {
            if self.traces.len() >= MAX_SESSION_TRACES {
                self.traces.remove(0);
            }
            id.to_owned()
        };
        self.traces.push(id);
    }
}

/// Thresholds for automatic tags.
#[derive(Debug, Clone, Copy)]
pub struct TagThresholds {
    /// `long-running` once a session is older than this.
    pub long_running_after: Duration,
    /// `high-volume` once a session carried this many messages.
    pub high_volume_frames: u64,
}

/// A running session's record is saved at least this often (and whenever its counts changed,
/// at the manager's cleanup cadence).
pub const HEARTBEAT: Duration = Duration::from_secs(60);

/// Tag for sessions older than [`TagThresholds::long_running_after`].
pub const TAG_LONG_RUNNING: &str = "long-running";
/// Tag for sessions past [`TagThresholds::high_volume_frames`].
pub const TAG_HIGH_VOLUME: &str = "high-volume";

/// One client's conversation with one server.
#[derive(Debug)]
pub struct Session {
    id: SessionId,
    transport: TransportKind,
    upstream: Option<String>,
    created: Instant,
    created_at: SystemTime,
    /// Milliseconds after `created` of the last message; atomics so touching takes no lock.
    last_activity_ms: AtomicU64,
    /// Milliseconds after `created` when the manager last moved it in LRU order.
    pub(crate) lru_moved_ms: AtomicU64,
    /// Total frames when the record was last saved, and when (ms after `created`).
    saved_frames: AtomicU64,
    saved_at_ms: AtomicU64,
    frames: [AtomicU64; 2],
    high_volume: AtomicBool,
    thresholds: TagThresholds,
    state: Mutex<State>,
    meta: Mutex<Metadata>,
    to_server: PendingRequests,
    to_client: PendingRequests,
    /// Connections listening on the session's streams now (see [`Session::listen`]).
    listeners: AtomicU64,
    /// Where the session is recorded, if it is (`--record`).
    tape: std::sync::OnceLock<crate::tape::Recorder>,
    /// Its id's digest as text, made the first time it is asked for (every traced request's
    /// spans carry it).
    digest: std::sync::OnceLock<Arc<str>>,
    /// Whether its record goes to the history store (not for one stateless request).
    kept: bool,
    /// Requests still pending when the manager ended the session, kept (bounded by the pending
    /// limits) for the front end to answer: the manager has no way to reach the peers.
    abandoned: [Mutex<Vec<(RequestId, Pending)>>; 2],
    closed: CancellationToken,
    /// The authenticated principal of its latest request (what rules about the caller see in
    /// the messages towards the client).
    caller: arc_swap::ArcSwapOption<Principal>,
    /// Whether it serves the requests of several callers at once (a shared stateless child's).
    callers_mixed: AtomicBool,
    /// Whether other instances of a cluster serve it too (its client holds a sealed id).
    roams: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Critical sections are single assignments; a poisoned lock still holds consistent data.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Everything about a session as plain data, for stores and the CLI (and, as JSON, for the
/// history a cluster keeps in Redis).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionRecord {
    /// The id.
    pub id: String,
    /// `initializing`, `active`, `closing` or `closed`.
    pub state: String,
    /// Why it ended, once closed.
    pub end_reason: Option<String>,
    /// How the client reached us.
    pub transport: String,
    /// The server: a command line or URL.
    pub upstream: Option<String>,
    /// Creation time, Unix milliseconds.
    pub created_at_ms: u64,
    /// Last message, Unix milliseconds.
    pub last_activity_ms: u64,
    /// End time, Unix milliseconds, once closed.
    pub ended_at_ms: Option<u64>,
    /// When this record was taken, Unix milliseconds. A running proxy re-saves its sessions at
    /// least every [`HEARTBEAT`]; an unended record much older than that was left by a proxy
    /// that died.
    pub updated_at_ms: u64,
    /// Messages from the client.
    pub frames_from_client: u64,
    /// Messages from the server.
    pub frames_from_server: u64,
    /// Requests awaiting answers (both directions) when the record was taken.
    pub pending: u64,
    /// The tape the session is recorded to (`--record`), if it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tape: Option<String>,
    /// What the peers said about themselves, and tags.
    #[serde(flatten)]
    pub metadata: Metadata,
}

impl Session {
    /// A new session in `Initializing`.
    pub fn new(
        transport: TransportKind,
        upstream: Option<String>,
        max_pending: usize,
        budget: &Arc<PendingBudget>,
        thresholds: TagThresholds,
    ) -> Self {
        let session_budget = PendingBudget::new(max_pending);
        Self {
            id: SessionId::random(),
            transport,
            upstream,
            created: Instant::now(),
            created_at: SystemTime::now(),
            last_activity_ms: AtomicU64::new(0),
            lru_moved_ms: AtomicU64::new(0),
            saved_frames: AtomicU64::new(0),
            saved_at_ms: AtomicU64::new(0),
            frames: [AtomicU64::new(0), AtomicU64::new(0)],
            high_volume: AtomicBool::new(false),
            thresholds,
            state: Mutex::new(State::Initializing),
            meta: Mutex::new(Metadata::default()),
            to_server: PendingRequests::new(session_budget.clone(), budget.clone()),
            to_client: PendingRequests::new(session_budget, budget.clone()),
            abandoned: [Mutex::new(Vec::new()), Mutex::new(Vec::new())],
            listeners: AtomicU64::new(0),
            tape: std::sync::OnceLock::new(),
            digest: std::sync::OnceLock::new(),
            kept: true,
            closed: CancellationToken::new(),
            caller: arc_swap::ArcSwapOption::empty(),
            callers_mixed: AtomicBool::new(false),
            roams: AtomicBool::new(false),
        }
    }

    /// The same session, kept out of the history store: the session that carries one
    /// stateless (2026-07-28) request is no session to its client, and a row per request would
    /// grow the history without bound. It is counted and logged like any other.
    #[must_use]
    pub fn unkept(mut self) -> Self {
        self.kept = false;
        self
    }

    /// The same session under `id`: a session another instance of a cluster opened, served
    /// here too ([`super::seal`]).
    #[must_use]
    pub fn with_id(mut self, id: SessionId) -> Self {
        self.id = id;
        self
    }

    /// Notes that other instances of a cluster serve it too: its client may answer, through
    /// one of them, what the server asked through another, and its end at one instance is no
    /// end of its upstream session.
    pub fn set_roaming(&self) {
        self.roams.store(true, Ordering::Relaxed);
    }

    /// Whether other instances of a cluster serve it too ([`Self::set_roaming`]).
    pub fn roams(&self) -> bool {
        self.roams.load(Ordering::Relaxed)
    }

    /// Whether its record goes to the history store.
    pub fn is_kept(&self) -> bool {
        self.kept
    }

    /// A session outside any manager, with its own pending budget (tests, tools).
    pub fn standalone(transport: TransportKind, max_pending: usize) -> Self {
        let thresholds = TagThresholds {
            long_running_after: Duration::MAX,
            high_volume_frames: u64::MAX,
        };
        Self::new(
            transport,
            None,
            max_pending,
            &PendingBudget::new(usize::MAX),
            thresholds,
        )
    }

    /// The session id.
    pub fn id(&self) -> &SessionId {
        &self.id
    }

    /// Its id's digest as logs show it (`s-` and 12 hex digits), shared.
    pub fn digest_text(&self) -> &Arc<str> {
        self.digest
            .get_or_init(|| Arc::from(self.id.digest().to_string()))
    }

    /// How the client reached us.
    pub fn transport(&self) -> TransportKind {
        self.transport
    }

    /// Where the server is.
    pub fn upstream(&self) -> Option<&str> {
        self.upstream.as_deref()
    }

    /// Cancelled when the session ends, whoever ends it (the front end, expiry, eviction, an
    /// operator): front ends wait on it to stop their transports.
    pub fn closed_token(&self) -> &CancellationToken {
        &self.closed
    }

    /// The lifecycle state.
    pub fn state(&self) -> State {
        *lock(&self.state)
    }

    /// Moves the lifecycle on; returns the previous state.
    pub(crate) fn advance(&self, to: State) -> Result<State, IllegalTransition> {
        let mut state = lock(&self.state);
        let previous = *state;
        *state = previous.advance(to)?;
        Ok(previous)
    }

    /// A copy of the metadata, with time-based tags brought up to date.
    pub fn metadata(&self) -> Metadata {
        self.refresh_tags(Instant::now());
        lock(&self.meta).clone()
    }

    /// Reads the metadata without copying it (time-based tags as last brought up to date).
    pub fn read_metadata<R>(&self, f: impl FnOnce(&Metadata) -> R) -> R {
        f(&lock(&self.meta))
    }

    /// Updates the metadata.
    pub fn update_metadata(&self, f: impl FnOnce(&mut Metadata)) {
        f(&mut lock(&self.meta));
    }

    /// The authenticated principal of its latest request, if the client authenticated.
    pub fn caller(&self) -> Option<Arc<Principal>> {
        self.caller.load_full()
    }

    /// Notes who sent its latest request: the first principal is recorded in the metadata
    /// (the session is bound to it); a later one (the same identity, perhaps with a token of
    /// other scopes) replaces it as the caller.
    pub fn set_caller(&self, principal: &Arc<Principal>) {
        if self
            .caller
            .load()
            .as_ref()
            .is_some_and(|now| Arc::ptr_eq(now, principal))
        {
            return;
        }
        self.caller.store(Some(principal.clone()));
        let mut meta = lock(&self.meta);
        if meta.principal.is_none() {
            meta.principal = Some(principal.id.clone());
        }
    }

    /// Notes that it serves the requests of several authenticated callers at once: a
    /// message from its server is no one caller's.
    pub fn mix_callers(&self) {
        self.callers_mixed.store(true, Ordering::Relaxed);
    }

    /// Whether it serves several callers at once ([`Session::mix_callers`]).
    pub fn callers_mixed(&self) -> bool {
        self.callers_mixed.load(Ordering::Relaxed)
    }

    /// Adds a tag.
    pub fn tag(&self, tag: &str) {
        let mut meta = lock(&self.meta);
        if !meta.tags.contains(tag) {
            meta.tags.insert(tag.to_owned());
        }
    }

    /// Counts a message travelling in `direction` and marks the session active now. Lock-free
    /// except when a tag threshold is crossed (once per session).
    pub fn record_frame(&self, direction: Direction) {
        let n = self.frames[slot(direction)].fetch_add(1, Ordering::Relaxed) + 1;
        self.last_activity_ms
            .store(self.elapsed_ms(Instant::now()), Ordering::Relaxed);
        if n + self.frames(direction.reverse()) >= self.thresholds.high_volume_frames
            && !self.high_volume.swap(true, Ordering::Relaxed)
        {
            self.tag(TAG_HIGH_VOLUME);
        }
    }

    /// Messages seen travelling in `direction`.
    pub fn frames(&self, direction: Direction) -> u64 {
        self.frames[slot(direction)].load(Ordering::Relaxed)
    }

    /// Messages in both directions.
    pub fn total_frames(&self) -> u64 {
        self.frames(Direction::ClientToServer) + self.frames(Direction::ServerToClient)
    }

    /// When it was created.
    pub fn created(&self) -> Instant {
        self.created
    }

    /// How long it has existed.
    pub fn age(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.created)
    }

    /// When its last message passed.
    pub fn last_activity(&self) -> Instant {
        self.created + Duration::from_millis(self.last_activity_ms.load(Ordering::Relaxed))
    }

    /// Milliseconds after creation of the last message.
    pub(crate) fn activity_ms(&self) -> u64 {
        self.last_activity_ms.load(Ordering::Relaxed)
    }

    pub(crate) fn elapsed_ms(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.created).as_millis()).unwrap_or(u64::MAX)
    }

    /// Applies time-based automatic tags.
    pub fn refresh_tags(&self, now: Instant) {
        if self.age(now) >= self.thresholds.long_running_after {
            self.tag(TAG_LONG_RUNNING);
        }
    }

    /// Requests travelling in `direction` that still await their answer.
    pub fn pending(&self, direction: Direction) -> &PendingRequests {
        match direction {
            Direction::ClientToServer => &self.to_server,
            Direction::ServerToClient => &self.to_client,
        }
    }

    /// Closes both pending tables, keeping what was still waiting for the front end.
    pub(crate) fn abandon_pending(&self) {
        for direction in [Direction::ClientToServer, Direction::ServerToClient] {
            let drained = self.pending(direction).close();
            lock(&self.abandoned[slot(direction)]).extend(drained);
        }
    }

    /// Closes the pending table for `direction` and returns every request that will now never be
    /// answered (including those set aside when the manager ended the session), oldest first.
    pub fn close_pending(&self, direction: Direction) -> Vec<(RequestId, Pending)> {
        let mut all = std::mem::take(&mut *lock(&self.abandoned[slot(direction)]));
        all.extend(self.pending(direction).close());
        all
    }

    /// Takes every request waiting in `direction`, oldest first, leaving the table open (their
    /// answerer was replaced by another that owes them nothing).
    pub fn take_pending(&self, direction: Direction) -> Vec<(RequestId, Pending)> {
        self.pending(direction).take_all()
    }

    /// Requests awaiting answers in both directions.
    pub fn pending_count(&self) -> usize {
        self.to_server.len() + self.to_client.len()
    }

    /// Records the session on `recorder` from now on (once; later calls are ignored).
    pub fn record_to(&self, recorder: crate::tape::Recorder) {
        let _ = self.tape.set(recorder);
    }

    /// The session's tape, if it is recorded.
    pub fn tape(&self) -> Option<&crate::tape::Recorder> {
        self.tape.get()
    }

    /// Whether the session is in use: requests in flight, or a client listening on one of its
    /// streams. A busy session is neither idle-expired nor evicted (its maximum age still holds).
    pub fn is_busy(&self) -> bool {
        self.pending_count() > 0 || self.listeners.load(Ordering::Relaxed) > 0
    }

    /// Marks a client listening on one of the session's streams until the guard is dropped.
    pub fn listen(self: &Arc<Self>) -> Listening {
        self.listeners.fetch_add(1, Ordering::Relaxed);
        Listening(self.clone())
    }

    /// Whether the stored record is behind: counts changed, or not saved for [`HEARTBEAT`].
    pub(crate) fn needs_save(&self, now: Instant) -> bool {
        let heartbeat_ms = u64::try_from(HEARTBEAT.as_millis()).unwrap_or(u64::MAX);
        self.kept
            && (self.total_frames() != self.saved_frames.load(Ordering::Relaxed)
                || self
                    .elapsed_ms(now)
                    .saturating_sub(self.saved_at_ms.load(Ordering::Relaxed))
                    >= heartbeat_ms)
    }

    /// Notes that the record was just taken for saving.
    pub(crate) fn mark_saved(&self, now: Instant) {
        self.saved_frames
            .store(self.total_frames(), Ordering::Relaxed);
        self.saved_at_ms
            .store(self.elapsed_ms(now), Ordering::Relaxed);
    }

    /// Everything about the session as plain data.
    pub fn record(&self) -> SessionRecord {
        self.refresh_tags(Instant::now());
        let unix_ms = |t: SystemTime| {
            u64::try_from(
                t.duration_since(SystemTime::UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_millis(),
            )
            .unwrap_or(0)
        };
        let state = self.state();
        let created_ms = unix_ms(self.created_at);
        let last = created_ms + self.last_activity_ms.load(Ordering::Relaxed);
        let (end_reason, ended_at_ms) = match state {
            State::Closed(reason) => (
                Some(reason.as_str().to_owned()),
                Some(unix_ms(SystemTime::now())),
            ),
            _ => (None, None),
        };
        SessionRecord {
            id: self.id.to_string(),
            state: state.as_str().to_owned(),
            end_reason,
            transport: self.transport.as_str().to_owned(),
            upstream: self.upstream.clone(),
            created_at_ms: created_ms,
            last_activity_ms: last,
            ended_at_ms,
            updated_at_ms: unix_ms(SystemTime::now()),
            frames_from_client: self.frames(Direction::ClientToServer),
            frames_from_server: self.frames(Direction::ServerToClient),
            pending: self.pending_count() as u64,
            tape: self.tape().map(|t| t.path().display().to_string()),
            metadata: self.metadata(),
        }
    }
}

fn slot(direction: Direction) -> usize {
    match direction {
        Direction::ClientToServer => 0,
        Direction::ServerToClient => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_keeps_the_latest_distinct_traces() {
        let mut m = Metadata::default();
        m.saw_trace("a");
        m.saw_trace("a");
        m.saw_trace("b");
        m.saw_trace("a");
        assert_eq!(m.traces, ["b", "a"]);
        for i in 0..100 {
            m.saw_trace(&format!("t{i}"));
        }
        assert_eq!(m.traces.len(), MAX_SESSION_TRACES);
        assert_eq!(m.traces.first().map(String::as_str), Some("t68"));
        assert_eq!(m.traces.last().map(String::as_str), Some("t99"));
    }

    #[tokio::test(start_paused = true)]
    async fn counts_frames_tracks_activity_and_tags() {
        let thresholds = TagThresholds {
            long_running_after: Duration::from_secs(60),
            high_volume_frames: 3,
        };
        let session = Session::new(
            TransportKind::Stdio,
            None,
            10,
            &PendingBudget::new(100),
            thresholds,
        );
        tokio::time::advance(Duration::from_secs(5)).await;
        session.record_frame(Direction::ClientToServer);
        session.record_frame(Direction::ServerToClient);
        assert_eq!(
            session.last_activity(),
            session.created() + Duration::from_secs(5)
        );
        assert!(session.metadata().tags.is_empty());
        session.record_frame(Direction::ClientToServer);
        assert!(session.metadata().tags.contains(TAG_HIGH_VOLUME));
        tokio::time::advance(Duration::from_secs(60)).await;
        session.refresh_tags(Instant::now());
        assert!(session.metadata().tags.contains(TAG_LONG_RUNNING));
        let record = session.record();
        assert_eq!(
            (record.frames_from_client, record.frames_from_server),
            (2, 1)
        );
        assert_eq!(record.state, "initializing");
    }
}

/// A client listening on one of a session's streams (from [`Session::listen`]).
#[derive(Debug)]
pub struct Listening(Arc<Session>);

impl Drop for Listening {
    fn drop(&mut self) {
        self.0.listeners.fetch_sub(1, Ordering::Relaxed);
    }
}
