//! A session's server→client SSE streams, with shadowcat's own event ids and a bounded replay
//! buffer each, so a client that loses a connection can come back with `Last-Event-ID` and get
//! exactly the events of that stream it missed, once, in order.
//!
//! A session has its standalone stream (`GET /mcp`: the server messages that belong to no open
//! request, such as logging and list-changed notifications) and one stream per POST answered
//! with SSE (the request's progress, the server's requests while handling it, and its answer).
//! Each stream's [`EventLog`] is the one source of truth for its ids and replay: ids are
//! `<stream>-<n>`, where the stream is `get` for the GET stream and `post<k>` for the
//! session's `k`th POST stream, and `n` counts from 1 in the order events were logged, so ids
//! are unique across the session's streams. In a cluster a stream's name also names its
//! writer: the instance's run and which of its links to the session wrote it
//! (`get.<run>_<link>`, `post<k>.<run>_<link>`), so that ids are unique across the instances
//! that serve a session and across a session's comings and goings at one; with Redis each
//! stream is copied there ([`shared`]) for a client that resumes it at another instance. The buffer keeps the last `--sse-replay-events` events (and at most
//! [`DEFAULT_REPLAY_BYTES`]). Messages are logged whether or not a client is connected; one
//! connection at a time takes them live (a new one takes over from the old), and events never
//! handed to any connection go to the next one. A POST stream is finished once its last answer
//! is logged; a connection to it ends after that answer.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use tokio::sync::mpsc;

/// Most bytes of events kept for replay per stream.
pub const DEFAULT_REPLAY_BYTES: usize = 1024 * 1024;
/// The reconnection delay suggested to clients (`retry:`), in milliseconds.
pub const RETRY_MS: u64 = 3000;
/// Events queued for a live connection before it counts as stalled and is dropped (its events
/// stay in the log for the client to resume from).
const LIVE_QUEUE: usize = 256;
/// Bytes of events queued for a live connection before it counts as stalled (one event is
/// always let through, whatever its size).
const LIVE_BYTES: usize = 4 * 1024 * 1024;
/// Most bytes of events queued for all live connections together. A connection whose event
/// would go past it is detached, as one too far behind is (its client resumes from the replay
/// log with `Last-Event-ID`): slow readers cannot add up to more than this.
pub const MAX_QUEUED_EVENT_BYTES: usize = 256 * 1024 * 1024;
/// Bytes of events queued for all live connections now.
static QUEUED_EVENT_BYTES: AtomicUsize = AtomicUsize::new(0);
/// The GET stream's name.
const GET_STREAM: &str = "get";
/// Finished POST streams kept per session for clients to resume (the oldest go first); a
/// stream whose every event reached its client is forgotten at once.
pub const FINISHED_POST_STREAMS_KEPT: usize = 8;

/// Why a GET could not take a stream.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConnectError {
    /// `Last-Event-ID` is not one of the session's event ids.
    #[error("Last-Event-ID {0:?} is not an event id of this session's streams")]
    UnknownId(String),
    /// `Last-Event-ID` names a stream another instance of the cluster wrote, and no copy of
    /// it can be read here.
    #[error(
        "Last-Event-ID {0:?} is from a request's stream another instance of the cluster served, and no copy of it is kept where this instance can read it (it is over; or copies are not kept: they are, in Redis, with --redis-url and an HTTP upstream)"
    )]
    Elsewhere(String),
    /// `Last-Event-ID` names a POST stream that is over and no longer kept.
    #[error(
        "Last-Event-ID {0:?} is from a request stream that is over and no longer kept (its answer was delivered, or it was one of the oldest of its session)"
    )]
    Forgotten(String),
}

/// A connection's share of the stream: what to send first, then what comes live.
#[derive(Debug)]
pub struct Connection {
    /// The priming event, a note about lost events if any, and the replayed events.
    pub first: Vec<Bytes>,
    /// Live events; closed when the stream is finished (or taken over, or stalled).
    pub live: LiveEvents,
    /// Which of the stream's connections this is.
    pub generation: u64,
}

/// One stream's event log and its live connection.
#[derive(Debug)]
pub struct EventLog {
    inner: Mutex<Inner>,
    /// Prefix of this stream's event ids (its name and `-`).
    prefix: Box<str>,
    max_events: usize,
    max_bytes: usize,
    /// Where its events are copied for other instances (a cluster with Redis).
    mirror: Option<shared::Mirror>,
}

/// How a session's streams are named, and where they are copied (in a cluster).
#[derive(Debug, Clone, Default)]
pub struct Naming {
    /// The writer (`<run>_<link>`: the instance's run, and this link of it to the session), in
    /// every stream's name.
    writer: Option<Arc<str>>,
    /// Where the streams are copied, for the session with this id.
    shared: Option<(Arc<shared::SharedStreams>, crate::session::SessionId)>,
}

impl Naming {
    /// Names for a session served by run `run` of an instance of a cluster, as the instance's
    /// `link`th link to a session, its streams copied to `shared` if given.
    pub fn cluster(
        run: &str,
        link: u64,
        shared: Option<(Arc<shared::SharedStreams>, crate::session::SessionId)>,
    ) -> Self {
        Self {
            writer: Some(format!("{run}_{link}").into()),
            shared,
        }
    }

    /// The writer its stream names carry (in a cluster).
    pub fn writer(&self) -> Option<&str> {
        self.writer.as_deref()
    }

    /// The name of stream `base` (`get`, `post<k>`).
    fn name(&self, base: &str) -> String {
        match &self.writer {
            Some(writer) => format!("{base}.{writer}"),
            None => base.to_owned(),
        }
    }

    fn mirror(&self, name: &str) -> Option<shared::Mirror> {
        self.shared
            .as_ref()
            .map(|(streams, session)| streams.mirror(session, name))
    }

    /// The GET stream's log, keeping at most `max_events` events and `max_bytes` bytes.
    pub fn get_log(&self, max_events: usize, max_bytes: usize) -> EventLog {
        let name = self.name(GET_STREAM);
        EventLog::named(&name, max_events, max_bytes, self.mirror(&name))
    }
}

/// A `Last-Event-ID`, read: `<stream>-<n>`, the stream `get` or `post<k>`, in a cluster with
/// `.<writer>` after it (`<run>_<link>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventId<'a> {
    /// The stream's whole name.
    pub stream: &'a str,
    /// The POST stream's number, if it is one.
    pub post: Option<u64>,
    /// Who wrote it, in a cluster: `<run>_<link>`.
    pub writer: Option<&'a str>,
    /// The event's number.
    pub number: u64,
}

impl<'a> EventId<'a> {
    /// Reads `id`; `None` if it is not of this form.
    pub fn parse(id: &'a str) -> Option<Self> {
        let (stream, number) = id.rsplit_once('-')?;
        let number = number.parse().ok()?;
        let (base, writer) = match stream.split_once('.') {
            Some((base, writer)) if !writer.is_empty() => (base, Some(writer)),
            Some(_) => return None,
            None => (stream, None),
        };
        let post = match base {
            GET_STREAM => None,
            _ => Some(base.strip_prefix("post")?.parse().ok()?),
        };
        Some(Self {
            stream,
            post,
            writer,
            number,
        })
    }

    /// The run of the instance that wrote it, in a cluster.
    pub fn run(&self) -> Option<&'a str> {
        self.writer.map(|w| w.split('_').next().unwrap_or(w))
    }
}

#[derive(Debug, Default)]
struct Inner {
    /// The number of the last event logged (0: none yet).
    last: u64,
    /// The number of the last event handed to a live connection: events after it were never
    /// sent to anyone, and go to the next connection even without `Last-Event-ID`.
    handed: u64,
    /// The last events, oldest first, with their numbers.
    buffer: VecDeque<(u64, Bytes)>,
    bytes: usize,
    live: Option<Live>,
    /// Connections made so far.
    generation: u64,
    /// Whether the stream is finished.
    finished: bool,
    /// Whether its copy was marked over (nothing more is copied).
    copy_ended: bool,
    /// Once it is: the connection that then had every event, if one did.
    complete: Option<u64>,
}

fn lock(m: &Mutex<Inner>) -> MutexGuard<'_, Inner> {
    // Critical sections are single collection operations; a poisoned lock is still consistent.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl EventLog {
    /// The GET stream's log, keeping at most `max_events` events and `max_bytes` bytes for
    /// replay.
    pub fn new(max_events: usize, max_bytes: usize) -> Self {
        Self::named(GET_STREAM, max_events, max_bytes, None)
    }

    fn named(
        name: &str,
        max_events: usize,
        max_bytes: usize,
        mirror: Option<shared::Mirror>,
    ) -> Self {
        Self {
            inner: Mutex::default(),
            prefix: format!("{name}-").into(),
            max_events,
            max_bytes,
            mirror,
        }
    }

    /// Logs one message as the stream's next event and hands it to the live connection, if any.
    pub fn push(&self, data: &[u8]) {
        let mut inner = lock(&self.inner);
        inner.last += 1;
        let event = event(&self.prefix, inner.last, data);
        if let Some(mirror) = self.mirror.as_ref().filter(|_| !inner.copy_ended) {
            // Under the lock: copies are queued in the order of their numbers.
            mirror.event(inner.last, &event);
        }
        if let Some(live) = &inner.live {
            if live.offer(&event) {
                inner.handed = inner.last;
            } else {
                // Gone, or not reading: it can resume from the log.
                inner.live = None;
            }
        }
        inner.bytes += event.len();
        let number = inner.last;
        inner.buffer.push_back((number, event));
        while inner.buffer.len() > self.max_events || inner.bytes > self.max_bytes {
            let Some((_, old)) = inner.buffer.pop_front() else {
                break;
            };
            inner.bytes -= old.len();
        }
    }

    /// Whether a connection is taking events live now.
    pub fn is_connected(&self) -> bool {
        lock(&self.inner)
            .live
            .as_ref()
            .is_some_and(|l| !l.tx.is_closed())
    }

    /// Logs `data` only if a connection can take it live now; false otherwise, and nothing is
    /// logged. If the connection goes in the meantime, the event stays logged for its return.
    pub fn push_if_connected(&self, data: &[u8]) -> bool {
        let connected = lock(&self.inner).live.as_ref().is_some_and(Live::has_room);
        if connected {
            self.push(data);
        }
        connected
    }

    /// Takes the stream for a new connection: after `last_event_id` (the events since are
    /// replayed), or after the last event handed to any connection (so events logged while
    /// none was open are not lost). A connection already open is ended: the newest one has the
    /// stream (the old one may be half-open, its client gone without a word).
    /// `prime`: begin with a priming event (clients of 2025-11-25 and later).
    pub fn connect(
        &self,
        last_event_id: Option<&str>,
        prime: bool,
    ) -> Result<Connection, ConnectError> {
        self.connect_with_queue(last_event_id, LIVE_QUEUE, prime)
    }

    /// [`Self::connect`] with room for `queue` events not yet sent before the connection counts
    /// as stalled (and is dropped; its events stay logged for a resume).
    pub fn connect_with_queue(
        &self,
        last_event_id: Option<&str>,
        queue: usize,
        prime: bool,
    ) -> Result<Connection, ConnectError> {
        let after = match last_event_id {
            None => None,
            Some(id) => Some(
                id.strip_prefix(&*self.prefix)
                    .and_then(|n| n.parse::<u64>().ok())
                    .ok_or_else(|| ConnectError::UnknownId(id.to_owned()))?,
            ),
        };
        let mut inner = lock(&self.inner);
        if after.is_some_and(|n| n > inner.last) {
            return Err(ConnectError::UnknownId(
                last_event_id.unwrap_or("").to_owned(),
            ));
        }
        Ok(self.take(&mut inner, after, queue, prime))
    }

    /// Takes the stream for a new connection, after the last event handed to any connection.
    pub fn attach(&self, prime: bool) -> Connection {
        self.take(&mut lock(&self.inner), None, LIVE_QUEUE, prime)
    }

    fn take(&self, inner: &mut Inner, after: Option<u64>, queue: usize, prime: bool) -> Connection {
        let after = after.unwrap_or(inner.handed);
        // The priming event carries the id the replay starts after, so a connection lost before
        // the replay is through resumes with all of it.
        let mut first = Vec::new();
        if prime {
            first.push(priming(&self.prefix, after));
        }
        let oldest = inner.buffer.front().map_or(inner.last + 1, |(n, _)| *n);
        if after + 1 < oldest {
            // Older than the buffer: what fell out of it is gone. Say so, then replay the rest.
            first.push(Bytes::from(format!(
                ": events {prefix}{} to {prefix}{} are no longer kept (--sse-replay-events)\n\n",
                after + 1,
                oldest - 1,
                prefix = self.prefix,
            )));
        }
        first.extend(
            inner
                .buffer
                .iter()
                .filter(|(n, _)| *n > after)
                .map(|(_, e)| e.clone()),
        );
        let (tx, rx) = mpsc::channel(queue.max(1));
        let queued = Arc::new(AtomicUsize::new(0));
        let live = LiveEvents {
            rx,
            queued: queued.clone(),
        };
        inner.generation += 1;
        let generation = inner.generation;
        inner.handed = inner.last;
        if inner.finished {
            // This connection gets the rest in `first`, and its live channel is closed.
            inner.complete = Some(generation);
        } else {
            inner.live = Some(Live { tx, queued });
        }
        Connection {
            first,
            live,
            generation,
        }
    }

    /// Ends the live connection once it has sent what it was handed, telling its client to
    /// come back after `retry` (an SSE `retry:` field): the stream goes on, for the client to
    /// resume with `Last-Event-ID` (a server's polling, passed on).
    pub fn pause(&self, retry: Option<Duration>) {
        let mut inner = lock(&self.inner);
        if let Some(live) = inner.live.take() {
            if let Some(retry) = retry {
                let _ = live.offer(&Bytes::from(format!("retry: {}\n\n", retry.as_millis())));
            }
        }
    }

    /// Ends the live connection (the session is over here).
    pub fn close(&self) {
        let mut inner = lock(&self.inner);
        inner.live = None;
        self.end_copy(&mut inner);
    }

    /// Marks the copy over: nothing more comes from here.
    fn end_copy(&self, inner: &mut Inner) {
        if let Some(mirror) = self.mirror.as_ref().filter(|_| !inner.copy_ended) {
            inner.copy_ended = true;
            mirror.end(inner.last);
        }
    }

    /// Marks the stream finished (a POST's last answer is logged): its live connection ends
    /// once it has sent what it was handed, and later connections get only the replay.
    pub fn finish(&self) {
        let mut inner = lock(&self.inner);
        let holder = inner
            .live
            .take()
            .filter(|live| !live.tx.is_closed() && inner.handed == inner.last)
            .map(|_| inner.generation);
        inner.finished = true;
        inner.complete = holder;
        self.end_copy(&mut inner);
    }

    /// Whether connection `generation`, having sent everything it was handed, delivered the
    /// whole finished stream (so nobody needs to resume it).
    pub fn delivered_by(&self, generation: u64) -> bool {
        lock(&self.inner).complete == Some(generation)
    }

    fn is_finished(&self) -> bool {
        lock(&self.inner).finished
    }
}

/// A message for a client whose every message goes on this stream (a 2024-11-05 session's):
/// logged as the stream's next event.
impl crate::proxy::outbox::Deliver for EventLog {
    async fn deliver(
        &self,
        msg: crate::protocol::Message,
    ) -> Result<(), crate::proxy::outbox::Closed> {
        self.push(msg.raw());
        Ok(())
    }
}

/// The sending side of a live connection: a bounded channel, and the bytes queued in it.
#[derive(Debug)]
struct Live {
    tx: mpsc::Sender<Bytes>,
    queued: Arc<AtomicUsize>,
}

impl Live {
    /// Queues `event`; false if the connection is gone or too far behind (by count or bytes),
    /// or all connections together have [`MAX_QUEUED_EVENT_BYTES`] queued.
    fn offer(&self, event: &Bytes) -> bool {
        self.offer_within(event, &QUEUED_EVENT_BYTES, MAX_QUEUED_EVENT_BYTES)
    }

    fn offer_within(&self, event: &Bytes, all: &AtomicUsize, max_all: usize) -> bool {
        let queued = self.queued.load(Ordering::Relaxed);
        if queued > 0 && queued + event.len() > LIVE_BYTES {
            return false;
        }
        let len = event.len();
        if all.fetch_add(len, Ordering::Relaxed).saturating_add(len) > max_all {
            all.fetch_sub(len, Ordering::Relaxed);
            return false;
        }
        self.queued.fetch_add(len, Ordering::Relaxed);
        if self.tx.try_send(event.clone()).is_ok() {
            return true;
        }
        self.queued.fetch_sub(len, Ordering::Relaxed);
        all.fetch_sub(len, Ordering::Relaxed);
        false
    }

    fn has_room(&self) -> bool {
        !self.tx.is_closed()
            && self.tx.capacity() > 0
            && self.queued.load(Ordering::Relaxed) < LIVE_BYTES
    }
}

/// A connection's live events, bounded in count and bytes.
#[derive(Debug)]
pub struct LiveEvents {
    rx: mpsc::Receiver<Bytes>,
    queued: Arc<AtomicUsize>,
}

impl LiveEvents {
    /// The next event; `None` once the stream is finished, taken over or dropped as stalled.
    pub async fn recv(&mut self) -> Option<Bytes> {
        let event = self.rx.recv().await?;
        self.taken(event.len());
        Some(event)
    }

    /// The next event if one is queued.
    pub fn try_recv(&mut self) -> Option<Bytes> {
        let event = self.rx.try_recv().ok()?;
        self.taken(event.len());
        Some(event)
    }

    fn taken(&self, len: usize) {
        self.queued.fetch_sub(len, Ordering::Relaxed);
        QUEUED_EVENT_BYTES.fetch_sub(len, Ordering::Relaxed);
    }
}

impl Drop for LiveEvents {
    /// What was queued for a connection that went is no longer queued.
    fn drop(&mut self) {
        self.rx.close();
        while let Ok(event) = self.rx.try_recv() {
            self.taken(event.len());
        }
    }
}

/// A session's POST streams, by number, while they may be resumed: until every event reached
/// the client, or the session ends, or (finished) more than [`FINISHED_POST_STREAMS_KEPT`]
/// newer finished ones are kept.
#[derive(Debug)]
pub struct PostStreams {
    logs: Mutex<std::collections::BTreeMap<u64, Arc<EventLog>>>,
    next: std::sync::atomic::AtomicU64,
    max_events: usize,
    max_bytes: usize,
    naming: Naming,
}

impl PostStreams {
    /// No streams yet; each will keep at most `max_events` events and `max_bytes` bytes, and
    /// be named (and copied) as `naming` says.
    pub fn new(max_events: usize, max_bytes: usize, naming: Naming) -> Self {
        Self {
            logs: Mutex::default(),
            next: std::sync::atomic::AtomicU64::new(1),
            max_events,
            max_bytes,
            naming,
        }
    }

    /// A new stream, with its number.
    pub fn open(&self) -> (u64, Arc<EventLog>) {
        let number = self.next.fetch_add(1, Ordering::Relaxed);
        let name = self.naming.name(&format!("post{number}"));
        let log = Arc::new(EventLog::named(
            &name,
            self.max_events,
            self.max_bytes,
            self.naming.mirror(&name),
        ));
        let mut logs = self.logs.lock().unwrap_or_else(PoisonError::into_inner);
        logs.insert(number, log.clone());
        let finished: Vec<u64> = logs
            .iter()
            .filter(|(_, log)| log.is_finished())
            .map(|(n, _)| *n)
            .collect();
        for n in finished
            .iter()
            .take(finished.len().saturating_sub(FINISHED_POST_STREAMS_KEPT))
        {
            logs.remove(n);
        }
        (number, log)
    }

    /// Forgets stream `number` (its client has all of it), and its copy.
    pub fn forget(&self, number: u64) {
        let log = self
            .logs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&number);
        if let Some(mirror) = log.as_ref().and_then(|log| log.mirror.as_ref()) {
            mirror.delete();
        }
    }

    /// The writer its streams' names carry (in a cluster).
    pub fn writer(&self) -> Option<&str> {
        self.naming.writer()
    }

    /// The stream of this instance a POST stream's `Last-Event-ID` belongs to; `None` if the
    /// id is not a POST stream's.
    pub fn find(&self, last_event_id: &str) -> Option<Result<(u64, Arc<EventLog>), ConnectError>> {
        let id = EventId::parse(last_event_id)?;
        let number = id.post?;
        if id.writer != self.naming.writer() {
            return Some(Err(ConnectError::UnknownId(last_event_id.to_owned())));
        }
        let logs = self.logs.lock().unwrap_or_else(PoisonError::into_inner);
        Some(match logs.get(&number) {
            Some(log) => Ok((number, log.clone())),
            None if number < self.next.load(Ordering::Relaxed) => {
                Err(ConnectError::Forgotten(last_event_id.to_owned()))
            }
            None => Err(ConnectError::UnknownId(last_event_id.to_owned())),
        })
    }
}

/// One event: `id`, `event: message`, the message as `data:` lines.
fn event(prefix: &str, number: u64, data: &[u8]) -> Bytes {
    let body = crate::transport::sse::message_event(data);
    let mut out = BytesMut::with_capacity(body.len() + 24);
    out.put_slice(format!("id: {prefix}{number}\n").as_bytes());
    out.put_slice(&body);
    out.freeze()
}

/// The priming event (2025-11-25): the current id with empty data, and the reconnection delay,
/// so that a client that loses the stream at once can still resume it. Sent only to clients of
/// 2025-11-25 and later: older ones may take its empty data for a message and fail to parse it.
pub(super) fn priming(prefix: &str, last: u64) -> Bytes {
    Bytes::from(format!("id: {prefix}{last}\nretry: {RETRY_MS}\ndata:\n\n"))
}

/// A keep-alive comment.
pub fn keepalive() -> Bytes {
    Bytes::from_static(b": keep-alive\n\n")
}

pub mod shared;

#[cfg(test)]
mod tests;
