//! A session's standalone server→client stream (`GET /mcp`): the server messages that belong to
//! no open request (logging, list-changed notifications, ...), with shadowcat's own event ids
//! and a bounded replay buffer, so a client that loses the connection can come back with
//! `Last-Event-ID` and get exactly the events it missed, once, in order.
//!
//! The [`EventLog`] is the one source of truth for the stream's ids and replay: ids are
//! `get-<n>`, `n` counting from 1 in the order events were logged; the buffer keeps the last
//! `--sse-replay-events` events (and at most [`DEFAULT_REPLAY_BYTES`]). Messages are logged
//! whether or not a client is connected; one connection at a time takes them live (a new one
//! takes over from the old), and events never handed to any connection go to the next one.

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use tokio::sync::mpsc;

/// Default number of events kept for replay per stream (`--sse-replay-events`).
pub const DEFAULT_REPLAY_EVENTS: usize = 256;
/// Most bytes of events kept for replay per stream.
pub const DEFAULT_REPLAY_BYTES: usize = 1024 * 1024;
/// Default interval of keep-alive comments (`--sse-keepalive`).
pub const DEFAULT_KEEPALIVE: Duration = Duration::from_secs(15);
/// The reconnection delay suggested to clients (`retry:`), in milliseconds.
pub const RETRY_MS: u64 = 3000;
/// Events queued for a live connection before it counts as stalled and is dropped (its events
/// stay in the log for the client to resume from).
const LIVE_QUEUE: usize = 256;
/// Prefix of this stream's event ids.
const ID_PREFIX: &str = "get-";

/// Why a GET could not take the stream.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConnectError {
    /// `Last-Event-ID` is not one of this stream's ids.
    #[error("Last-Event-ID {0:?} is not an event id of this session's GET stream")]
    UnknownId(String),
}

/// A connection's share of the stream: what to send first, then what comes live.
#[derive(Debug)]
pub struct Connection {
    /// The priming event, a note about lost events if any, and the replayed events.
    pub first: Vec<Bytes>,
    /// Live events.
    pub live: mpsc::Receiver<Bytes>,
}

/// The stream's event log and its live connection.
#[derive(Debug)]
pub struct EventLog {
    inner: Mutex<Inner>,
    max_events: usize,
    max_bytes: usize,
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
    live: Option<mpsc::Sender<Bytes>>,
}

fn lock(m: &Mutex<Inner>) -> MutexGuard<'_, Inner> {
    // Critical sections are single collection operations; a poisoned lock is still consistent.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl EventLog {
    /// A log keeping at most `max_events` events and `max_bytes` bytes for replay.
    pub fn new(max_events: usize, max_bytes: usize) -> Self {
        Self {
            inner: Mutex::default(),
            max_events,
            max_bytes,
        }
    }

    /// Logs one message as the stream's next event and hands it to the live connection, if any.
    pub fn push(&self, data: &[u8]) {
        let mut inner = lock(&self.inner);
        inner.last += 1;
        let event = event(inner.last, data);
        if let Some(live) = &inner.live {
            if live.try_send(event.clone()).is_ok() {
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
            .is_some_and(|l| !l.is_closed())
    }

    /// Logs `data` only if a connection can take it live now; false otherwise, and nothing is
    /// logged. If the connection goes in the meantime, the event stays logged for its return.
    pub fn push_if_connected(&self, data: &[u8]) -> bool {
        let connected = lock(&self.inner)
            .live
            .as_ref()
            .is_some_and(|l| !l.is_closed() && l.capacity() > 0);
        if connected {
            self.push(data);
        }
        connected
    }

    /// Takes the stream for a new connection: after `last_event_id` (the events since are
    /// replayed), or after the last event handed to any connection (so events logged while
    /// none was open are not lost). A connection already open is ended: the newest one has the
    /// stream (the old one may be half-open, its client gone without a word).
    pub fn connect(&self, last_event_id: Option<&str>) -> Result<Connection, ConnectError> {
        self.connect_with_queue(last_event_id, LIVE_QUEUE)
    }

    /// [`Self::connect`] with room for `queue` events not yet sent before the connection counts
    /// as stalled (and is dropped; its events stay logged for a resume).
    pub fn connect_with_queue(
        &self,
        last_event_id: Option<&str>,
        queue: usize,
    ) -> Result<Connection, ConnectError> {
        let after = match last_event_id {
            None => None,
            Some(id) => Some(
                id.strip_prefix(ID_PREFIX)
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
        let after = after.unwrap_or(inner.handed);
        // The priming event carries the id the replay starts after, so a connection lost before
        // the replay is through resumes with all of it.
        let mut first = vec![priming(after)];
        let oldest = inner.buffer.front().map_or(inner.last + 1, |(n, _)| *n);
        if after + 1 < oldest {
            // Older than the buffer: what fell out of it is gone. Say so, then replay the rest.
            first.push(Bytes::from(format!(
                ": events get-{} to get-{} are no longer kept (--sse-replay-events)\n\n",
                after + 1,
                oldest - 1
            )));
        }
        first.extend(
            inner
                .buffer
                .iter()
                .filter(|(n, _)| *n > after)
                .map(|(_, e)| e.clone()),
        );
        let (tx, live) = mpsc::channel(queue.max(1));
        inner.live = Some(tx);
        inner.handed = inner.last;
        Ok(Connection { first, live })
    }

    /// Ends the live connection (the session is over).
    pub fn close(&self) {
        lock(&self.inner).live = None;
    }
}

/// One event: `id`, `event: message`, the message as `data:` lines.
fn event(number: u64, data: &[u8]) -> Bytes {
    let body = crate::transport::sse::message_event(data);
    let mut out = BytesMut::with_capacity(body.len() + 24);
    out.put_slice(format!("id: {ID_PREFIX}{number}\n").as_bytes());
    out.put_slice(&body);
    out.freeze()
}

/// The priming event (2025-11-25): the current id with empty data, and the reconnection delay,
/// so that a client that loses the stream at once can still resume it.
fn priming(last: u64) -> Bytes {
    Bytes::from(format!(
        "id: {ID_PREFIX}{last}\nretry: {RETRY_MS}\ndata:\n\n"
    ))
}

/// A keep-alive comment.
pub fn keepalive() -> Bytes {
    Bytes::from_static(b": keep-alive\n\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(events: &[Bytes]) -> Vec<String> {
        events
            .iter()
            .filter_map(|e| {
                let text = std::str::from_utf8(e).unwrap();
                let id = text.strip_prefix("id: ")?.lines().next()?.to_owned();
                text.contains("data: ").then_some(id)
            })
            .collect()
    }

    #[tokio::test]
    async fn events_are_numbered_replayed_after_an_id_and_bounded() {
        let log = EventLog::new(3, 1 << 20);
        // Logged before anyone connected: the first connection gets it.
        log.push(br#"{"n":1}"#);
        let early = log.connect(None).unwrap();
        assert_eq!(early.first[0], priming(0));
        assert_eq!(ids(&early.first), ["get-1"]);
        drop(early);
        let mut first = log.connect(None).unwrap();
        assert_eq!(first.first, vec![priming(1)], "nothing left undelivered");
        for i in 2..=3 {
            log.push(format!("{{\"n\":{i}}}").as_bytes());
        }
        assert_eq!(
            ids(&[
                first.live.recv().await.unwrap(),
                first.live.recv().await.unwrap()
            ]),
            ["get-2", "get-3"]
        );
        // A new connection takes over; the old one ends.
        let takeover = log.connect(None).unwrap();
        assert!(first.live.recv().await.is_none());
        drop(takeover);
        // While nobody is connected, events are kept (the last 3).
        for i in 4..=7 {
            log.push(format!("{{\"n\":{i}}}").as_bytes());
        }
        let resumed = log.connect(Some("get-5")).unwrap();
        assert_eq!(ids(&resumed.first), ["get-6", "get-7"]);
        assert!(
            std::str::from_utf8(&resumed.first[0])
                .unwrap()
                .starts_with("id: get-5\nretry: 3000"),
            "primed with the id the replay starts after"
        );
        drop(resumed);
        // An id older than the buffer: a note, then everything still kept.
        let late = log.connect(Some("get-1")).unwrap();
        assert!(
            std::str::from_utf8(&late.first[1])
                .unwrap()
                .contains("get-2 to get-4")
        );
        assert_eq!(ids(&late.first), ["get-5", "get-6", "get-7"]);
        drop(late);
        for bad in ["get-99", "8", "post-1", ""] {
            assert!(
                matches!(log.connect(Some(bad)), Err(ConnectError::UnknownId(_))),
                "{bad}"
            );
        }
        // push_if_connected logs nothing without a connection.
        assert!(!log.push_if_connected(b"{}"));
        let _live = log.connect(None).unwrap();
        assert!(log.push_if_connected(b"{}"));
    }

    #[tokio::test]
    async fn a_stalled_connection_is_dropped_and_can_resume() {
        let log = EventLog::new(10_000, 1 << 30);
        let connection = log.connect(None).unwrap();
        for _ in 0..(LIVE_QUEUE + 5) {
            log.push(b"{}");
        }
        assert!(!log.is_connected());
        let mut live = connection.live;
        let mut got = 0;
        while live.recv().await.is_some() {
            got += 1;
        }
        assert_eq!(got, LIVE_QUEUE);
        let resumed = log.connect(Some(&format!("get-{got}"))).unwrap();
        assert_eq!(ids(&resumed.first).len(), 5);
    }

    #[test]
    fn the_byte_bound_holds() {
        let log = EventLog::new(1000, 200);
        for _ in 0..50 {
            log.push(&[b'x'; 40]);
        }
        let inner = lock(&log.inner);
        assert!(inner.bytes <= 200 && !inner.buffer.is_empty());
    }
}
