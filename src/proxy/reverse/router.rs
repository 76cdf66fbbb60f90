//! Where a session's server→client messages go: each HTTP request (POST) that is waiting for
//! answers registers the ids (and progress tokens) of its requests here, and the router hands
//! every answer to the POST that carried its request, and progress to the POST whose request
//! carried its token. A server request goes to the most recent open POST (it is being handled
//! for one), else to the session's GET stream if a client has it open. Every other notification
//! (logging, list-changed) goes to the GET stream, kept for replay while none is open. What
//! nothing can take is dropped and counted, and a server request is answered with an error.
//!
//! One router per session, so two sessions can never see each other's messages.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use linked_hash_map::LinkedHashMap;

use crate::protocol::error::ProxyError;
use crate::protocol::{Direction, ErrorCode, Kind, Message, RequestId};
use crate::proxy::outbox::{Closed, Deliver, Outbox};
use crate::session::Session;

use super::events::EventLog;
pub use crate::proxy::upstream::{Reply, ReplyTo, STREAM_SLACK};

/// A registered POST: its channel, and how many slots of it are kept for answers (one per
/// request it waits for), so that notifications can never take the room an answer needs and
/// delivering an answer never waits on a client that stopped reading.
#[derive(Debug, Clone)]
struct Slot {
    waiter: ReplyTo,
    reserve: usize,
}

/// How a session's client takes the server's messages: what a [`Router`] is made for.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// A Streamable HTTP client: answers on the POST that asked, the rest on a POST stream
    /// or the session's GET stream.
    #[default]
    Streamable,
    /// A 2024-11-05 HTTP+SSE client: every message, answers included, on its one stream.
    Legacy,
    /// The child shared by stateless requests of many clients (see [`Router::deliver`]).
    Shared,
}

/// Routes one session's server→client messages to the POSTs waiting for them.
#[derive(Debug, Default)]
pub struct Router {
    /// Request id → the POST waiting for its answer, in registration order.
    waiters: Mutex<LinkedHashMap<RequestId, Slot>>,
    /// The session, to forget server requests nobody can take.
    session: Option<Arc<Session>>,
    /// The current process's stdin, to answer such requests (stdio upstreams; replaced when
    /// the process is).
    to_server: Mutex<Option<Arc<Outbox>>>,
    /// Progress token (its JSON text) → the POST whose request carried it.
    progress: Mutex<HashMap<String, Slot>>,
    /// The session's GET stream, for messages that belong to no open request.
    events: Option<Arc<EventLog>>,
    /// A 2024-11-05 HTTP+SSE session: every message, answers included, goes on its one stream.
    legacy: std::sync::atomic::AtomicBool,
    /// The child shared by stateless requests of many clients: a message tied to no request
    /// goes to the open request only when there is exactly one (else it could reach the wrong
    /// client), and never to a GET stream (that era has none).
    shared: std::sync::atomic::AtomicBool,
    /// Messages dropped because no POST was open to take them.
    undeliverable: std::sync::atomic::AtomicU64,
}

/// Hands a message that is not an answer to `slot`'s POST if it is open and has room beyond
/// what it keeps for answers; gives it back otherwise.
fn hand_to(slot: Option<Slot>, msg: Message) -> Result<(), Message> {
    match slot {
        Some(slot) if !slot.waiter.is_closed() && slot.waiter.capacity() > slot.reserve => {
            match slot.waiter.try_send(Reply::Message(msg)) {
                Ok(()) => Ok(()),
                Err(e) => match e.into_inner() {
                    Reply::Message(msg) => Err(msg),
                    _ => Ok(()),
                },
            }
        }
        _ => Err(msg),
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Critical sections are single map operations; a poisoned lock is still consistent.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Router {
    /// A router for `session`, whose GET stream (if it has one) is `events`, delivering as
    /// `delivery` says. `to_server`: where requests from the server that no POST can carry are
    /// answered (a stdio child's stdin).
    pub fn new(
        session: Arc<Session>,
        events: Option<Arc<EventLog>>,
        delivery: Delivery,
        to_server: Option<Arc<Outbox>>,
    ) -> Self {
        Self {
            session: Some(session),
            to_server: Mutex::new(to_server),
            events,
            legacy: std::sync::atomic::AtomicBool::new(matches!(delivery, Delivery::Legacy)),
            shared: std::sync::atomic::AtomicBool::new(matches!(delivery, Delivery::Shared)),
            ..Self::default()
        }
    }

    /// Answers the server's requests that no POST can carry on `to_server` from now on: a
    /// shared process's stdin, known once the session is on one, or a restarted process's.
    pub fn answer_server_via(&self, to_server: Arc<Outbox>) {
        *lock(&self.to_server) = Some(to_server);
    }

    /// The session's GET stream.
    pub fn events(&self) -> Option<&Arc<EventLog>> {
        self.events.as_ref()
    }

    /// Registers `waiter` for progress notifications carrying `tokens` (the JSON text of the
    /// `progressToken`s of its requests).
    pub fn register_progress(&self, tokens: &[String], waiter: &ReplyTo, reserve: usize) {
        if tokens.is_empty() {
            return;
        }
        let mut progress = lock(&self.progress);
        for token in tokens {
            progress.insert(
                token.clone(),
                Slot {
                    waiter: waiter.clone(),
                    reserve,
                },
            );
        }
    }

    /// Forgets `tokens` if `waiter` still holds them.
    pub fn unregister_progress(&self, tokens: &[String], waiter: &ReplyTo) {
        if tokens.is_empty() {
            return;
        }
        let mut progress = lock(&self.progress);
        for token in tokens {
            if progress
                .get(token)
                .is_some_and(|slot| slot.waiter.same_channel(waiter))
            {
                progress.remove(token);
            }
        }
    }

    /// Registers `waiter` for the answers to `ids`. An id already waited for is left to its
    /// first POST (the pipeline refuses the duplicate request). The waiter's channel must have
    /// room for `ids.len()` + [`STREAM_SLACK`] messages.
    pub fn register(&self, ids: &[RequestId], waiter: &ReplyTo) {
        let mut waiters = lock(&self.waiters);
        let slot = Slot {
            waiter: waiter.clone(),
            reserve: ids.len(),
        };
        for id in ids {
            if !waiters.contains_key(id) {
                waiters.insert(id.clone(), slot.clone());
            }
        }
    }

    /// The client cancelled request `id`: the POST waiting for it stops waiting.
    pub async fn cancel(&self, id: &RequestId) {
        let slot = lock(&self.waiters).remove(id);
        if let Some(slot) = slot {
            // A reserved slot: this never waits.
            let _ = slot.waiter.send(Reply::Cancelled(id.clone())).await;
        }
    }

    /// Forgets `ids` if `waiter` still holds them (the POST has finished or gone).
    pub fn unregister(&self, ids: &[RequestId], waiter: &ReplyTo) {
        let mut waiters = lock(&self.waiters);
        for id in ids {
            if waiters
                .get(id)
                .is_some_and(|slot| slot.waiter.same_channel(waiter))
            {
                waiters.remove(id);
            }
        }
    }

    /// Drops every waiter: their POSTs see their channels close and answer what is left with
    /// errors.
    pub fn close(&self) {
        lock(&self.waiters).clear();
        lock(&self.progress).clear();
        if let Some(events) = &self.events {
            events.close();
        }
    }

    /// A progress notification for a request whose POST is still open goes on that POST's
    /// stream; gives the message back otherwise.
    fn offer_progress(&self, msg: Message) -> Result<(), Message> {
        let Some(token) = msg.progress_token("/params/progressToken") else {
            return Err(msg);
        };
        let slot = lock(&self.progress).get(&token).cloned();
        hand_to(slot, msg)
    }

    /// A notification of a subscription (2026-07-28: `_meta` names the `subscriptions/listen`
    /// request that opened it) goes on that request's stream while it is open; gives the
    /// message back otherwise.
    fn offer_subscription(&self, msg: Message) -> Result<(), Message> {
        if msg.kind() != Kind::Notification {
            return Err(msg);
        }
        let Some(id) = msg.subscription_id() else {
            return Err(msg);
        };
        let slot = lock(&self.waiters).get(&id).cloned();
        hand_to(slot, msg)
    }

    /// Messages dropped so far because no POST was open to take them.
    pub fn undeliverable(&self) -> u64 {
        self.undeliverable
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// An answer's POST (taken out: one answer per request).
    fn answer_slot(&self, msg: &Message) -> Option<Slot> {
        msg.id().and_then(|id| lock(&self.waiters).remove(id))
    }

    /// Hands a message that is not an answer to the most recent open POST with room to spare
    /// beyond what it keeps for answers; gives it back if there is none.
    fn offer(&self, msg: Message) -> Result<(), Message> {
        let mut waiters = lock(&self.waiters);
        let mut left = Some(msg);
        let mut closed = Vec::new();
        for (id, slot) in waiters.iter().rev() {
            if slot.waiter.is_closed() {
                closed.push(id.clone());
                continue;
            }
            if slot.waiter.capacity() <= slot.reserve {
                continue;
            }
            let Some(msg) = left.take() else { break };
            match slot.waiter.try_send(Reply::Message(msg)) {
                Ok(()) => break,
                Err(e) => {
                    if let Reply::Message(back) = e.into_inner() {
                        left = Some(back);
                    }
                }
            }
        }
        for id in closed {
            waiters.remove(&id);
        }
        match left {
            None => Ok(()),
            Some(msg) => Err(msg),
        }
    }

    /// Hands a message tied to no request to the one open POST, if exactly one is open.
    fn offer_sole(&self, msg: Message) -> Result<(), Message> {
        let waiters = lock(&self.waiters);
        let mut open = waiters.values().filter(|slot| !slot.waiter.is_closed());
        let (Some(slot), None) = (open.next(), open.next()) else {
            return Err(msg);
        };
        hand_to(Some(slot.clone()), msg)
    }

    /// A server message nobody can take: counted, and a request is answered with an error so
    /// the server doesn't wait for it.
    async fn drop_undeliverable(&self, msg: &Message) {
        self.undeliverable
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::debug!(
            method = msg.method().map(crate::protocol::Method::as_str),
            "no open request to deliver a server message to; dropped"
        );
        let (Some(id), Kind::Request) = (msg.id(), msg.kind()) else {
            return;
        };
        if let Some(session) = &self.session {
            session.pending(Direction::ServerToClient).remove(id);
        }
        let to_server = lock(&self.to_server).clone();
        if let Some(to_server) = to_server {
            let error = ProxyError::new(
                ErrorCode::ShuttingDown,
                "the client has no open request or stream to carry this request",
            );
            let _ = to_server
                .send(Message::error_response(Some(id), &error))
                .await;
        }
    }
}

impl Deliver for Router {
    /// Answers go to the POST that asked. Progress goes to the POST whose request carried its
    /// token, and a subscription's notification to the POST of the `subscriptions/listen` that
    /// opened it. A server request goes to the most recent open POST (it is being handled for one),
    /// else to the GET stream if a client is connected to it. Every other notification goes to
    /// the GET stream, buffered for replay whether or not anyone is connected. At the child
    /// shared by stateless requests, what is tied to no request goes to the open one only if it
    /// is the only one. What nothing can take is dropped, and a server request is answered with
    /// an error.
    async fn deliver(&self, msg: Message) -> Result<(), Closed> {
        if let (true, Some(events)) = (
            self.legacy.load(std::sync::atomic::Ordering::Relaxed),
            &self.events,
        ) {
            events.push(msg.raw());
            return Ok(());
        }
        if msg.is_response() {
            match self.answer_slot(&msg) {
                // A reserved slot: this never waits on a client that stopped reading.
                Some(slot) => {
                    if slot.waiter.send(Reply::Message(msg)).await.is_err() {
                        self.undeliverable
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
                None => self.drop_undeliverable(&msg).await,
            }
            return Ok(());
        }
        let msg = match self.offer_progress(msg) {
            Ok(()) => return Ok(()),
            Err(msg) => msg,
        };
        let msg = match self.offer_subscription(msg) {
            Ok(()) => return Ok(()),
            Err(msg) => msg,
        };
        let left = if self.shared.load(std::sync::atomic::Ordering::Relaxed) {
            self.offer_sole(msg).err()
        } else if msg.kind() == Kind::Request {
            match self.offer(msg) {
                Ok(()) => None,
                Err(msg) => match &self.events {
                    Some(events) if events.push_if_connected(msg.raw()) => None,
                    _ => Some(msg),
                },
            }
        } else {
            match &self.events {
                Some(events) => {
                    events.push(msg.raw());
                    None
                }
                None => self.offer(msg).err(),
            }
        };
        if let Some(msg) = left {
            self.drop_undeliverable(&msg).await;
        }
        // The session goes on even if one POST has gone.
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use tokio::sync::mpsc;

    fn msg(s: &str) -> Message {
        Message::parse(Bytes::copy_from_slice(s.as_bytes())).unwrap()
    }

    fn text(reply: Reply) -> String {
        let Reply::Message(m) = reply else { panic!() };
        String::from_utf8(m.raw().to_vec()).unwrap()
    }

    #[tokio::test]
    async fn a_server_request_nobody_can_take_is_answered_and_forgotten() {
        use crate::session::TransportKind;
        let session = Arc::new(Session::standalone(TransportKind::Http, 8));
        let (to_server, mut server_rx, _) = Outbox::new(8, 1 << 20);
        let router = Router::new(
            session.clone(),
            None,
            Delivery::Streamable,
            Some(Arc::new(to_server)),
        );
        session
            .pending(Direction::ServerToClient)
            .insert(RequestId::from("r1"), crate::protocol::Method::RootsList)
            .unwrap();
        router
            .deliver(msg(r#"{"jsonrpc":"2.0","id":"r1","method":"roots/list"}"#))
            .await
            .unwrap();
        assert!(session.pending(Direction::ServerToClient).is_empty());
        let answer: serde_json::Value =
            serde_json::from_slice(server_rx.recv().await.unwrap().as_ref()).unwrap();
        assert_eq!(answer["id"], "r1");
        assert_eq!(answer["error"]["code"], -32085);
        // A POST that stopped reading never blocks delivery: notifications beyond its spare room
        // are dropped, and its answer still has its reserved slot.
        let (post, mut post_rx) = mpsc::channel(1 + STREAM_SLACK);
        router.register(&[RequestId::Number(7)], &post);
        for _ in 0..(STREAM_SLACK * 3) {
            router
                .deliver(msg(
                    r#"{"jsonrpc":"2.0","method":"notifications/progress"}"#,
                ))
                .await
                .unwrap();
        }
        router
            .deliver(msg(r#"{"jsonrpc":"2.0","id":7,"result":{}}"#))
            .await
            .unwrap();
        let mut received = Vec::new();
        while let Ok(reply) = post_rx.try_recv() {
            received.push(text(reply));
        }
        assert_eq!(received.len(), STREAM_SLACK + 1);
        assert!(received.last().unwrap().contains("\"id\":7"));
    }

    #[tokio::test]
    async fn at_a_shared_child_untied_messages_go_only_to_a_sole_open_request() {
        let router = Router {
            shared: std::sync::atomic::AtomicBool::new(true),
            ..Router::default()
        };
        let log = r#"{"jsonrpc":"2.0","method":"notifications/message","params":{"data":"x"}}"#;
        let (a, mut a_rx) = mpsc::channel(8);
        let (b, mut b_rx) = mpsc::channel(8);
        router.register(&[RequestId::Number(1)], &a);
        router.deliver(msg(log)).await.unwrap();
        assert!(text(a_rx.try_recv().unwrap()).contains("notifications/message"));
        // Two clients' requests open: it could be either's, so it is neither's.
        router.register(&[RequestId::Number(2)], &b);
        router.deliver(msg(log)).await.unwrap();
        assert!(a_rx.try_recv().is_err() && b_rx.try_recv().is_err());
        assert_eq!(router.undeliverable(), 1);
        // Answers still find their POSTs.
        router
            .deliver(msg(r#"{"jsonrpc":"2.0","id":2,"result":{}}"#))
            .await
            .unwrap();
        assert!(text(b_rx.try_recv().unwrap()).contains("\"id\":2"));
        // A subscription's notification names the listen request that opened it: it goes
        // there, however many requests are open.
        let changed = r#"{"jsonrpc":"2.0","method":"notifications/tools/list_changed","params":{"_meta":{"io.modelcontextprotocol/subscriptionId":1}}}"#;
        router.deliver(msg(changed)).await.unwrap();
        assert!(text(a_rx.try_recv().unwrap()).contains("list_changed"));
        assert!(b_rx.try_recv().is_err());
        assert_eq!(router.undeliverable(), 1);
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
                .answer_slot(&msg(r#"{"jsonrpc":"2.0","id":3,"result":{}}"#))
                .is_some()
        );
    }
}
