//! The way out to one peer.
//!
//! An [`Outbox`] is the sending end of a queue drained by that peer's writer task, bounded both
//! in messages and in bytes (backpressure: a full queue makes the sender wait, which stops its
//! reader, which lets the pipe fill, which slows the peer that is sending too fast). Without the
//! byte bound, a stalled peer and 32 MiB messages could queue gigabytes. It also re-assembles the answers to a
//! JSON-RPC batch: the pipeline sees a batch's members one by one, and the peer that sent the
//! batch gets their answers back as one array, once the last one is in.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use bytes::{BufMut, Bytes, BytesMut};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use crate::protocol::{Message, RequestId};

/// Default capacity of each outgoing queue, in messages.
pub const DEFAULT_QUEUE_CAPACITY: usize = 1024;
/// Default byte budget of each outgoing queue. A larger message takes the whole budget, so at
/// most one of those is queued at a time.
pub const DEFAULT_QUEUE_BYTES: usize = 1024 * 1024;

/// One queued frame, holding its share of the queue's byte budget until it is written.
#[derive(Debug)]
pub struct Outgoing {
    frame: Bytes,
    _budget: OwnedSemaphorePermit,
}

impl AsRef<[u8]> for Outgoing {
    fn as_ref(&self) -> &[u8] {
        &self.frame
    }
}

/// The peer's writer has stopped; nothing more can be sent to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the peer's connection is closed")]
pub struct Closed;

/// Somewhere a message travelling one way can be handed: a peer's [`Outbox`], or something that
/// picks the right one (the reverse proxy's router, which finds the HTTP request waiting for an
/// answer). Relays and timeout watchers deliver through this, so they work with either.
pub trait Deliver: Send + Sync {
    /// Hands `msg` on; fails when its receiver is gone for good.
    fn deliver(&self, msg: Message) -> impl Future<Output = Result<(), Closed>> + Send;
}

impl<T: Deliver> Deliver for std::sync::Arc<T> {
    fn deliver(&self, msg: Message) -> impl Future<Output = Result<(), Closed>> + Send {
        (**self).deliver(msg)
    }
}

/// A [`Deliver`] for tests: keeps the texts of what it is handed.
#[cfg(test)]
#[derive(Debug, Default)]
pub(crate) struct Collect(Mutex<Vec<String>>);

#[cfg(test)]
impl Deliver for Collect {
    async fn deliver(&self, msg: Message) -> Result<(), Closed> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(String::from_utf8_lossy(msg.raw()).into_owned());
        Ok(())
    }
}

#[cfg(test)]
impl Collect {
    /// What it was handed since last asked.
    pub(crate) fn taken(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

impl Deliver for Outbox {
    fn deliver(&self, msg: Message) -> impl Future<Output = Result<(), Closed>> + Send {
        self.send(msg)
    }
}

/// The sending side of one peer's outgoing queue.
#[derive(Debug)]
pub struct Outbox {
    tx: mpsc::Sender<Outgoing>,
    budget: std::sync::Arc<Semaphore>,
    budget_max: u32,
    close: CancellationToken,
    /// Number of open batches; lets the common case skip the lock.
    open_batches: AtomicUsize,
    batches: Mutex<Batches>,
}

#[derive(Debug, Default)]
struct Batches {
    next: u64,
    open: HashMap<u64, OpenBatch>,
    by_id: HashMap<RequestId, u64>,
}

#[derive(Debug)]
struct OpenBatch {
    waiting: usize,
    parts: Vec<Bytes>,
}

impl Outbox {
    /// An outbox holding at most `capacity` messages and `bytes` bytes, and the receiver its
    /// writer drains. `close` is cancelled by [`Outbox::close`]: the writer should then stop
    /// accepting, drain what is queued, and close the link.
    pub fn new(
        capacity: usize,
        bytes: usize,
    ) -> (Self, mpsc::Receiver<Outgoing>, CancellationToken) {
        let (tx, rx) = mpsc::channel(capacity);
        let close = CancellationToken::new();
        let budget_max = u32::try_from(bytes.min(Semaphore::MAX_PERMITS)).unwrap_or(u32::MAX);
        let outbox = Self {
            tx,
            budget: std::sync::Arc::new(Semaphore::new(budget_max as usize)),
            budget_max,
            close: close.clone(),
            open_batches: AtomicUsize::new(0),
            batches: Mutex::default(),
        };
        (outbox, rx, close)
    }

    /// Sends one message (or holds it, if it answers part of an open batch).
    pub async fn send(&self, msg: Message) -> Result<(), Closed> {
        if msg.is_response() && self.open_batches.load(Ordering::Acquire) > 0 {
            if let Some(id) = msg.id() {
                match self.collect(id, msg.raw()) {
                    Collected::NotInBatch => {}
                    Collected::Held => return Ok(()),
                    Collected::Complete(array) => return self.send_raw(array).await,
                }
            }
        }
        self.send_raw(msg.into_raw()).await
    }

    /// Sends raw bytes as one frame.
    pub async fn send_raw(&self, frame: Bytes) -> Result<(), Closed> {
        let cost = u32::try_from(frame.len())
            .unwrap_or(u32::MAX)
            .clamp(1, self.budget_max);
        // The semaphore is never closed; permits come back as the writer writes (or drops) frames.
        let budget = self
            .budget
            .clone()
            .acquire_many_owned(cost)
            .await
            .map_err(|_| Closed)?;
        self.tx
            .send(Outgoing {
                frame,
                _budget: budget,
            })
            .await
            .map_err(|_| Closed)
    }

    /// Opens a batch: answers to `expect` are held until all are in, then sent as one array
    /// together with `ready` (answers already known, e.g. errors for invalid members).
    pub async fn open_batch(
        &self,
        expect: Vec<RequestId>,
        ready: Vec<Bytes>,
    ) -> Result<(), Closed> {
        if expect.is_empty() {
            return if ready.is_empty() {
                Ok(())
            } else {
                self.send_raw(join_array(&ready)).await
            };
        }
        let mut batches = self.lock();
        let key = batches.next;
        batches.next += 1;
        let waiting = expect.len();
        for id in expect {
            batches.by_id.insert(id, key);
        }
        batches.open.insert(
            key,
            OpenBatch {
                waiting,
                parts: ready,
            },
        );
        self.open_batches.fetch_add(1, Ordering::Release);
        Ok(())
    }

    /// Whether any batch is waiting for answers.
    pub fn has_open_batches(&self) -> bool {
        self.open_batches.load(Ordering::Acquire) > 0
    }

    /// Whether an answer to `id` is awaited by an open batch.
    pub fn awaits(&self, id: &RequestId) -> bool {
        self.open_batches.load(Ordering::Acquire) > 0 && self.lock().by_id.contains_key(id)
    }

    /// Stops waiting for an answer to `id` (its request was cancelled, so none may come); sends
    /// the batch if that was the last answer it waited for.
    pub async fn forget(&self, id: &RequestId) -> Result<(), Closed> {
        if self.open_batches.load(Ordering::Acquire) == 0 {
            return Ok(());
        }
        let done = {
            let mut batches = self.lock();
            let Some(key) = batches.by_id.remove(id) else {
                return Ok(());
            };
            let Some(batch) = batches.open.get_mut(&key) else {
                return Ok(());
            };
            batch.waiting -= 1;
            if batch.waiting > 0 {
                return Ok(());
            }
            let parts = batches
                .open
                .remove(&key)
                .map(|b| b.parts)
                .unwrap_or_default();
            self.open_batches.fetch_sub(1, Ordering::Release);
            parts
        };
        if done.is_empty() {
            Ok(())
        } else {
            self.send_raw(join_array(&done)).await
        }
    }

    /// Stops the queue: the writer drains what is queued and closes the link.
    pub fn close(&self) {
        self.close.cancel();
    }

    /// Whether the writer has stopped.
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }

    fn lock(&self) -> MutexGuard<'_, Batches> {
        // Each critical section leaves the maps consistent, so poisoning is harmless.
        self.batches.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn collect(&self, id: &RequestId, raw: &Bytes) -> Collected {
        let mut batches = self.lock();
        let Some(key) = batches.by_id.remove(id) else {
            return Collected::NotInBatch;
        };
        let Some(batch) = batches.open.get_mut(&key) else {
            return Collected::NotInBatch;
        };
        batch.parts.push(raw.clone());
        batch.waiting -= 1;
        if batch.waiting > 0 {
            return Collected::Held;
        }
        let done = batches
            .open
            .remove(&key)
            .map(|b| join_array(&b.parts))
            .unwrap_or_default();
        self.open_batches.fetch_sub(1, Ordering::Release);
        Collected::Complete(done)
    }
}

enum Collected {
    NotInBatch,
    Held,
    Complete(Bytes),
}

/// `[a,b,c]` from already-serialised messages.
fn join_array(parts: &[Bytes]) -> Bytes {
    let len = parts.iter().map(|p| p.len() + 1).sum::<usize>() + 2;
    let mut out = BytesMut::with_capacity(len);
    out.put_u8(b'[');
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            out.put_u8(b',');
        }
        out.put_slice(part);
    }
    out.put_u8(b']');
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(id: i64) -> Message {
        Message::parse(Bytes::from(format!(
            r#"{{"jsonrpc":"2.0","id":{id},"result":{{}}}}"#
        )))
        .unwrap()
    }

    #[tokio::test]
    async fn batch_answers_come_back_as_one_array() {
        let (outbox, mut rx, _) = Outbox::new(8, 1 << 20);
        let ready = vec![Bytes::from_static(b"{\"e\":0}")];
        outbox
            .open_batch(vec![RequestId::Number(1), RequestId::Number(2)], ready)
            .await
            .unwrap();
        outbox.send(response(2)).await.unwrap();
        outbox.send(response(3)).await.unwrap();
        assert_eq!(
            rx.recv().await.unwrap().as_ref(),
            br#"{"jsonrpc":"2.0","id":3,"result":{}}"#
        );
        outbox.send(response(1)).await.unwrap();
        let array = rx.recv().await.unwrap();
        let parsed: Vec<serde_json::Value> = serde_json::from_slice(array.as_ref()).unwrap();
        assert_eq!(parsed.len(), 3);
        assert_eq!(parsed[1]["id"], 2);
        assert_eq!(outbox.open_batches.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn a_cancelled_member_no_longer_holds_its_batch_back() {
        let (outbox, mut rx, _) = Outbox::new(8, 1 << 20);
        outbox
            .open_batch(vec![RequestId::Number(1), RequestId::Number(2)], vec![])
            .await
            .unwrap();
        assert!(outbox.awaits(&RequestId::Number(2)));
        outbox.send(response(1)).await.unwrap();
        outbox.forget(&RequestId::Number(2)).await.unwrap();
        let array = rx.recv().await.unwrap();
        assert_eq!(array.as_ref(), br#"[{"jsonrpc":"2.0","id":1,"result":{}}]"#);
        assert!(!outbox.awaits(&RequestId::Number(2)));
    }

    #[tokio::test]
    async fn a_batch_with_nothing_to_wait_for_is_sent_at_once() {
        let (outbox, mut rx, _) = Outbox::new(8, 1 << 20);
        outbox.open_batch(vec![], vec![]).await.unwrap();
        outbox
            .open_batch(vec![], vec![Bytes::from_static(b"{}")])
            .await
            .unwrap();
        assert_eq!(rx.recv().await.unwrap().as_ref(), b"[{}]");
    }

    #[tokio::test(start_paused = true)]
    async fn the_byte_budget_holds_senders_back_until_frames_are_written() {
        let (outbox, mut rx, _) = Outbox::new(100, 10);
        outbox
            .send_raw(Bytes::from_static(b"123456"))
            .await
            .unwrap();
        // 6 + 6 > 10: the second frame waits for the first to leave the queue.
        let second = outbox.send_raw(Bytes::from_static(b"abcdef"));
        assert!(
            tokio::time::timeout(std::time::Duration::from_secs(1), second)
                .await
                .is_err()
        );
        drop(rx.recv().await.unwrap());
        outbox
            .send_raw(Bytes::from_static(b"abcdef"))
            .await
            .unwrap();
        drop(rx.recv().await.unwrap());
        // A frame over the whole budget still goes, alone.
        outbox.send_raw(Bytes::from(vec![b'x'; 50])).await.unwrap();
        assert_eq!(rx.recv().await.unwrap().as_ref().len(), 50);
    }

    #[tokio::test]
    async fn a_stopped_writer_makes_sends_fail_instead_of_hang() {
        let (outbox, rx, _) = Outbox::new(1, 10);
        outbox
            .send_raw(Bytes::from_static(b"0123456789"))
            .await
            .unwrap();
        drop(rx);
        assert_eq!(
            outbox.send_raw(Bytes::from_static(b"more")).await,
            Err(Closed)
        );
    }
}
