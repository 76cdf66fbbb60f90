//! Copies of sessions' SSE streams in Redis Streams (a cluster with `--redis-url` and an HTTP
//! upstream, docs/scale-out.md), so that a client that loses a stream can resume it with
//! `Last-Event-ID` at any instance, not only the one that wrote it.
//!
//! Each stream an instance writes ([`super::EventLog`]) is copied, event by event, to its own
//! Redis stream: the key names the session by a digest of its id (never the id, which is the
//! session's credential) and the stream by its name (`get.<run>`, `post<k>.<run>`, unique in
//! the cluster), each entry's id is `0-<n>` for the event numbered `n`, and the last entry of a
//! stream that is over says so (`end`). A copy keeps about the last `--sse-replay-events`
//! events (`XADD … MAXLEN ~`) and lapses after the session's idle timeout without a write.
//!
//! Copying never holds the stream up: events are queued (at most [`QUEUE`]) for one writer task
//! that sends them in pipelined batches. What cannot be queued, or what Redis does not take, is
//! missing from the copy (a client resuming there is told which events are gone), never from
//! the stream itself.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use sha2::{Digest as _, Sha256};
use tokio::sync::mpsc;

use crate::session::SessionId;
use crate::transport::redis::{Redis, Use};

/// Events waiting for the writer task, for all streams together.
pub const QUEUE: usize = 4096;
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
    /// Said once: events could not be queued.
    warned: AtomicBool,
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
}

/// Where one stream is copied to.
#[derive(Debug, Clone)]
pub struct Mirror {
    streams: Arc<SharedStreams>,
    key: Arc<str>,
}

impl Mirror {
    /// Copies event `number` (`event`, as sent).
    pub(super) fn event(&self, number: u64, event: &Bytes) {
        self.streams.queue(Write::Event {
            key: self.key.clone(),
            number,
            event: event.clone(),
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
        let kept = idle_timeout.unwrap_or(KEPT_WITHOUT_IDLE_TIMEOUT);
        let task = crate::task::Task::spawn(
            "stream copies",
            write(redis.clone(), pending, max_events.max(1), kept),
        );
        Self {
            redis,
            queue,
            warned: AtomicBool::new(false),
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

    fn queue(&self, write: Write) {
        if self.queue.try_send(write).is_err() && !self.warned.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                queued = QUEUE,
                "events are being written faster than Redis takes their copies: some are missing from the copies (a client resuming at another instance is told which)"
            );
        }
    }
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
async fn write(redis: Arc<Redis>, mut writes: mpsc::Receiver<Write>, max: usize, kept: Duration) {
    let kept_ms = u64::try_from(kept.as_millis()).unwrap_or(u64::MAX).max(1);
    let mut batch = Vec::with_capacity(BATCH);
    while writes.recv_many(&mut batch, BATCH).await > 0 {
        let mut pipeline = redis::pipe();
        for write in batch.drain(..) {
            let (key, number, field, value) = match write {
                Write::Event { key, number, event } => (key, number, EVENT_FIELD, event),
                Write::End { key, number } => (key, number, END_FIELD, Bytes::new()),
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
                .arg(kept_ms)
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
