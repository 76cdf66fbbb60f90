//! Copies of sessions' SSE streams in Redis Streams (a cluster with `--redis-url` and an HTTP
//! upstream, docs/scale-out.md), so that a client that loses a stream can resume it with
//! `Last-Event-ID` at any instance, not only the one that wrote it.
//!
//! Each stream an instance writes ([`super::EventLog`]) is copied, event by event, to its own
//! Redis stream: the key names the session by a digest of its id (never the id, which is the
//! session's credential) and the stream by its name (`get.<run>_<link>`, `post<k>.<run>_<link>`,
//! unique in the cluster), each entry's id is `0-<n>` for the event numbered `n`, and the last
//! entry of a stream that is over says so (`end`). A copy keeps about the last
//! `--sse-replay-events` events (`XADD … MAXLEN ~`), each at most [`MAX_COPIED_EVENT`] bytes;
//! it lapses after the session's idle timeout without a write, [`KEPT_AFTER_END`] once it is
//! over, and at once when its client had all of it.
//!
//! Copying never holds the stream up: events are queued (at most [`QUEUE`] writes and
//! [`QUEUE_BYTES`] bytes, for all streams) for one writer task that sends them in pipelined
//! batches. What is not copied (too large, no room in the queue, or not taken by Redis) is
//! missing from the copy (a client resuming there is told which events are gone), never from
//! the stream itself.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use sha2::{Digest as _, Sha256};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::session::SessionId;
use crate::transport::redis::{Redis, Use};

/// Writes waiting for the writer task, for all streams together.
pub const QUEUE: usize = 4096;
/// Bytes of events waiting for the writer task, for all streams together.
pub const QUEUE_BYTES: usize = 64 * 1024 * 1024;
/// Largest event copied (larger ones are missing from the copy).
pub const MAX_COPIED_EVENT: usize = super::DEFAULT_REPLAY_BYTES;
/// How long a copy is kept once its stream is over.
pub const KEPT_AFTER_END: Duration = Duration::from_secs(10 * 60);
/// Most writes sent in one pipeline.
const BATCH: usize = 128;
/// How long a copy is kept without a write when sessions do not idle out.
const KEPT_WITHOUT_IDLE_TIMEOUT: Duration = Duration::from_secs(24 * 60 * 60);
/// The field of an event's entry.
const EVENT_FIELD: &str = "e";
/// The field of the entry that ends a stream.
const END_FIELD: &str = "end";

/// The gateway's copies of its sessions' streams in Redis.
#[derive(Debug)]
pub struct SharedStreams {
    redis: Arc<Redis>,
    queue: mpsc::Sender<Write>,
    /// Bytes of events queued now.
    queued: Arc<AtomicUsize>,
    /// Said once: events could not be queued.
    warned: AtomicBool,
    /// The connection following each copy now (one per copy: a new one takes over).
    followers: Mutex<HashMap<String, (u64, CancellationToken)>>,
    next_follower: AtomicU64,
    /// Ends with the last sender.
    _writer: crate::task::Task<()>,
}

/// One write to a copy.
#[derive(Debug)]
enum Write {
    /// Event number `number` of the stream at `key`.
    Event {
        key: Arc<str>,
        number: u64,
        event: Bytes,
    },
    /// The stream at `key` is over after event `number - 1`.
    End { key: Arc<str>, number: u64 },
    /// Nobody needs the copy at `key` any more.
    Delete { key: Arc<str> },
}

/// Where one stream is copied to.
#[derive(Debug, Clone)]
pub struct Mirror {
    streams: Arc<SharedStreams>,
    key: Arc<str>,
}

impl Mirror {
    /// Copies event `number` (`event`, as sent), unless it is too large.
    pub(super) fn event(&self, number: u64, event: &Bytes) {
        if event.len() > MAX_COPIED_EVENT {
            return;
        }
        self.streams.queue(Write::Event {
            key: self.key.clone(),
            number,
            event: event.clone(),
        });
    }

    /// Deletes the copy (its client had all of it).
    pub(super) fn delete(&self) {
        self.streams.queue(Write::Delete {
            key: self.key.clone(),
        });
    }

    /// Marks the copy over after event `last`.
    pub(super) fn end(&self, last: u64) {
        self.streams.queue(Write::End {
            key: self.key.clone(),
            number: last + 1,
        });
    }
}

/// What a read of a copy found.
#[derive(Debug, Default)]
pub struct Batch {
    /// The number of the oldest event kept; `None` if the copy does not exist (never written,
    /// or lapsed).
    pub oldest: Option<u64>,
    /// The events after the one asked for, in order, with their numbers.
    pub events: Vec<(u64, Bytes)>,
    /// Whether the stream is over (its last event is among `events`, or was before).
    pub ended: bool,
}

impl SharedStreams {
    /// Copies kept in `redis`: about the last `max_events` events of each, for `idle_timeout`
    /// (the sessions') after their last write.
    pub fn new(redis: Arc<Redis>, max_events: usize, idle_timeout: Option<Duration>) -> Self {
        let (queue, pending) = mpsc::channel(QUEUE);
        let queued = Arc::new(AtomicUsize::new(0));
        let kept = idle_timeout.unwrap_or(KEPT_WITHOUT_IDLE_TIMEOUT);
        let task = crate::task::Task::spawn(
            "stream copies",
            write(
                redis.clone(),
                pending,
                queued.clone(),
                max_events.max(1),
                kept,
            ),
        );
        Self {
            redis,
            queue,
            queued,
            warned: AtomicBool::new(false),
            followers: Mutex::new(HashMap::new()),
            next_follower: AtomicU64::new(1),
            _writer: task,
        }
    }

    /// Where stream `stream` of session `session` is copied.
    pub fn mirror(self: &Arc<Self>, session: &SessionId, stream: &str) -> Mirror {
        Mirror {
            streams: self.clone(),
            key: key(session, stream).into(),
        }
    }

    /// Reads up to `count` events after event `after` of the copy of stream `stream` of
    /// session `session`; `None` if Redis does not answer.
    pub async fn read(
        &self,
        session: &SessionId,
        stream: &str,
        after: u64,
        count: usize,
    ) -> Option<Batch> {
        let key = key(session, stream);
        let mut pipeline = redis::pipe();
        pipeline
            .cmd("XRANGE")
            .arg(&key)
            .arg("-")
            .arg("+")
            .arg("COUNT")
            .arg(1)
            .cmd("XRANGE")
            .arg(&key)
            .arg(format!("(0-{after}"))
            .arg("+")
            .arg("COUNT")
            .arg(count.max(1));
        let (oldest, entries): (Vec<Entry>, Vec<Entry>) =
            self.redis.pipeline(Use::Stream, &pipeline).await?;
        let mut batch = Batch {
            oldest: oldest.first().and_then(|(id, _)| number(id)),
            ..Batch::default()
        };
        for (id, fields) in entries {
            let Some(n) = number(&id) else { continue };
            match fields.first().map(Vec::as_slice) {
                Some(field) if field == END_FIELD.as_bytes() => {
                    batch.ended = true;
                    break;
                }
                Some(field) if field == EVENT_FIELD.as_bytes() => {
                    if let Some(event) = fields.get(1) {
                        batch.events.push((n, Bytes::copy_from_slice(event)));
                    }
                }
                _ => {}
            }
        }
        Some(batch)
    }

    /// A connection that follows the copy of stream `stream` of session `session` from now
    /// on: the one that did is told to stop (`cancelled`), as a new connection to a stream
    /// takes over from the old one.
    pub fn follow(self: &Arc<Self>, session: &SessionId, stream: &str) -> Follower {
        let key = key(session, stream);
        let number = self.next_follower.fetch_add(1, Ordering::Relaxed);
        let token = CancellationToken::new();
        let old = lock(&self.followers).insert(key.clone(), (number, token.clone()));
        if let Some((_, old)) = old {
            old.cancel();
        }
        Follower {
            streams: self.clone(),
            key,
            number,
            cancelled: token,
        }
    }

    fn queue(&self, write: Write) {
        let len = match &write {
            Write::Event { event, .. } => event.len(),
            _ => 0,
        };
        let room = self
            .queued
            .fetch_add(len, Ordering::Relaxed)
            .saturating_add(len)
            <= QUEUE_BYTES;
        if room && self.queue.try_send(write).is_ok() {
            return;
        }
        self.queued.fetch_sub(len, Ordering::Relaxed);
        if !self.warned.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                queued = QUEUE,
                queued_bytes = QUEUE_BYTES,
                "events are being written faster than Redis takes their copies: some are missing from the copies (a client resuming at another instance is told which)"
            );
        }
    }
}

/// The connection following one copy, until it is dropped or `cancelled` (another took over).
#[derive(Debug)]
pub struct Follower {
    streams: Arc<SharedStreams>,
    key: String,
    number: u64,
    /// Cancelled when another connection follows the copy.
    pub cancelled: CancellationToken,
}

impl Drop for Follower {
    fn drop(&mut self) {
        let mut followers = lock(&self.streams.followers);
        if followers
            .get(&self.key)
            .is_some_and(|(n, _)| *n == self.number)
        {
            followers.remove(&self.key);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Critical sections are single map operations; a poisoned lock is still consistent.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// An entry as `XRANGE` gives it: its id, and its fields and values in turn.
type Entry = (String, Vec<Vec<u8>>);

/// The event number of entry id `0-<n>`.
fn number(id: &str) -> Option<u64> {
    id.strip_prefix("0-")?.parse().ok()
}

/// The key of the copy of stream `stream` of session `session`: the session by a digest.
fn key(session: &SessionId, stream: &str) -> String {
    let digest = Sha256::new()
        .chain_update(b"shadowcat sse\0")
        .chain_update(session.as_str().as_bytes())
        .finalize();
    let mut key = String::with_capacity(48 + stream.len());
    key.push_str("shadowcat:sse:");
    for b in &digest[..16] {
        use std::fmt::Write as _;
        // Writing to a String cannot fail.
        let _ = write!(key, "{b:02x}");
    }
    key.push(':');
    key.push_str(stream);
    key
}

/// The writer task: sends what is queued, in batches, until every sender is gone.
async fn write(
    redis: Arc<Redis>,
    mut writes: mpsc::Receiver<Write>,
    queued: Arc<AtomicUsize>,
    max: usize,
    kept: Duration,
) {
    let millis = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1);
    let kept_ms = millis(kept);
    let after_end_ms = millis(kept.min(KEPT_AFTER_END));
    let mut batch = Vec::with_capacity(BATCH);
    while writes.recv_many(&mut batch, BATCH).await > 0 {
        let mut pipeline = redis::pipe();
        for write in batch.drain(..) {
            let (key, number, field, value, ttl) = match write {
                Write::Event { key, number, event } => {
                    queued.fetch_sub(event.len(), Ordering::Relaxed);
                    (key, number, EVENT_FIELD, event, kept_ms)
                }
                Write::End { key, number } => (key, number, END_FIELD, Bytes::new(), after_end_ms),
                Write::Delete { key } => {
                    pipeline.cmd("DEL").arg(&*key).ignore();
                    continue;
                }
            };
            pipeline
                .cmd("XADD")
                .arg(&*key)
                .arg("MAXLEN")
                .arg("~")
                .arg(max)
                .arg(format!("0-{number}"))
                .arg(field)
                .arg(&value[..])
                .ignore()
                .cmd("PEXPIRE")
                .arg(&*key)
                .arg(ttl)
                .ignore();
        }
        // Redis not answering is logged and counted by `Redis`; the copies have a gap.
        let _: Option<()> = redis.pipeline(Use::Stream, &pipeline).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_name_sessions_by_a_digest_and_differ_by_stream() {
        let a = SessionId::parse("0123456789abcdef0123456789abcdef").unwrap();
        let b = SessionId::parse("0123456789abcdef0123456789abcdee").unwrap();
        let key_a = key(&a, "get.1");
        assert!(key_a.starts_with("shadowcat:sse:"), "{key_a}");
        assert!(key_a.ends_with(":get.1"), "{key_a}");
        assert!(
            !key_a.contains(a.as_str()),
            "the id is the session's credential"
        );
        assert_ne!(key_a, key(&b, "get.1"));
        assert_ne!(key_a, key(&a, "post1.1"));
        assert_eq!(key_a, key(&a, "get.1"));
    }

    #[test]
    fn entry_ids_are_event_numbers() {
        assert_eq!(number("0-7"), Some(7));
        assert_eq!(number("1-7"), None);
        assert_eq!(number("0-x"), None);
    }
}
