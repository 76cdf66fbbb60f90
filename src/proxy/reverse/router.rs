//! Where a session's server→client messages go: each HTTP request (POST) that is waiting for
//! answers registers the ids of its requests here, and the router hands every answer to the POST
//! that carried its request. A message that answers nothing (a notification, a server request)
//! goes to the POST that registered last and is still open; with none open it is dropped and
//! counted (a session GET stream to hold them is the streams issue's work).
//!
//! One router per session, so two sessions can never see each other's messages.

use std::future::Future;
use std::sync::{Mutex, MutexGuard, PoisonError};

use bytes::Bytes;
use http::{HeaderValue, StatusCode};
use linked_hash_map::LinkedHashMap;
use tokio::sync::mpsc;

use crate::protocol::{Message, RequestId};
use crate::proxy::outbox::{Closed, Deliver};

/// What a waiting POST receives.
#[derive(Debug)]
pub enum Reply {
    /// A message for the client.
    Message(Message),
    /// The upstream refused one of the POST's messages at the HTTP level.
    Rejected {
        /// The refused request's id (none for a notification or response).
        id: Option<RequestId>,
        /// The upstream's status.
        status: StatusCode,
        /// Its `Content-Type`.
        content_type: Option<HeaderValue>,
        /// Its body (bounded).
        body: Bytes,
    },
}

/// The sending end a POST registers.
pub type Waiter = mpsc::Sender<Reply>;

/// Routes one session's server→client messages to the POSTs waiting for them.
#[derive(Debug, Default)]
pub struct Router {
    /// Request id → the POST waiting for its answer, in registration order.
    waiters: Mutex<LinkedHashMap<RequestId, Waiter>>,
    /// Messages dropped because no POST was open to take them.
    undeliverable: std::sync::atomic::AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Critical sections are single map operations; a poisoned lock is still consistent.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Router {
    /// Registers `waiter` for the answers to `ids`. An id already waited for is left to its
    /// first POST (the pipeline refuses the duplicate request).
    pub fn register(&self, ids: &[RequestId], waiter: &Waiter) {
        let mut waiters = lock(&self.waiters);
        for id in ids {
            if !waiters.contains_key(id) {
                waiters.insert(id.clone(), waiter.clone());
            }
        }
    }

    /// Forgets `ids` if `waiter` still holds them (the POST has finished or gone).
    pub fn unregister(&self, ids: &[RequestId], waiter: &Waiter) {
        let mut waiters = lock(&self.waiters);
        for id in ids {
            if waiters.get(id).is_some_and(|w| w.same_channel(waiter)) {
                waiters.remove(id);
            }
        }
    }

    /// Drops every waiter: their POSTs see their channels close and answer what is left with
    /// errors.
    pub fn close(&self) {
        lock(&self.waiters).clear();
    }

    /// Messages dropped so far because no POST was open to take them.
    pub fn undeliverable(&self) -> u64 {
        self.undeliverable
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    fn waiter_for(&self, msg: &Message) -> Option<Waiter> {
        let mut waiters = lock(&self.waiters);
        if msg.is_response() {
            return msg.id().and_then(|id| waiters.remove(id));
        }
        // Not an answer: the most recent POST still open.
        while let Some((_, waiter)) = waiters.iter().next_back() {
            if !waiter.is_closed() {
                return Some(waiter.clone());
            }
            waiters.pop_back();
        }
        None
    }
}

impl Deliver for Router {
    fn deliver(&self, msg: Message) -> impl Future<Output = Result<(), Closed>> + Send {
        let waiter = self.waiter_for(&msg);
        async move {
            let delivered = match waiter {
                Some(waiter) => waiter.send(Reply::Message(msg)).await.is_ok(),
                None => false,
            };
            if !delivered {
                self.undeliverable
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::debug!("no open request to deliver a server message to; dropped");
            }
            // The session goes on even if this one POST has gone.
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(s: &str) -> Message {
        Message::parse(Bytes::copy_from_slice(s.as_bytes())).unwrap()
    }

    fn text(reply: Reply) -> String {
        let Reply::Message(m) = reply else { panic!() };
        String::from_utf8(m.raw().to_vec()).unwrap()
    }

    #[tokio::test]
    async fn answers_go_to_the_post_that_asked_and_others_to_the_latest_open_one() {
        let router = Router::default();
        let (a, mut a_rx) = mpsc::channel(8);
        let (b, mut b_rx) = mpsc::channel(8);
        router.register(&[RequestId::Number(1)], &a);
        router.register(&[RequestId::Number(2), RequestId::Number(1)], &b);
        router
            .deliver(msg(r#"{"jsonrpc":"2.0","id":2,"result":{}}"#))
            .await
            .unwrap();
        router
            .deliver(msg(r#"{"jsonrpc":"2.0","id":1,"result":{}}"#))
            .await
            .unwrap();
        assert!(text(b_rx.recv().await.unwrap()).contains("\"id\":2"));
        assert!(text(a_rx.recv().await.unwrap()).contains("\"id\":1"));
        // A second answer to 1 has nobody waiting.
        router
            .deliver(msg(r#"{"jsonrpc":"2.0","id":1,"result":{}}"#))
            .await
            .unwrap();
        assert_eq!(router.undeliverable(), 1);
        router.register(&[RequestId::Number(3)], &a);
        router.register(&[RequestId::Number(4)], &b);
        drop(b_rx);
        router
            .deliver(msg(
                r#"{"jsonrpc":"2.0","method":"notifications/progress"}"#,
            ))
            .await
            .unwrap();
        assert!(text(a_rx.recv().await.unwrap()).contains("progress"));
        router.unregister(&[RequestId::Number(3)], &b);
        assert!(
            router
                .waiter_for(&msg(r#"{"jsonrpc":"2.0","id":3,"result":{}}"#))
                .is_some()
        );
    }
}
