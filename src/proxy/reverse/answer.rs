//! A POST waiting for the answers to its requests: its registration with the session's router,
//! the exchange with the upstream it drives meanwhile, and what it makes of each reply (an
//! answer, another server message, a refusal, a cancellation). When it is dropped (the client
//! went away), nothing it waited for is left pending.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;

use tokio::sync::mpsc;

use crate::protocol::error::ProxyError;
use crate::protocol::{ErrorCode, Kind, Message, Method, RequestId};
use crate::proxy::outbox::Deliver as _;
use crate::session::EndReason;

use super::alias::Aliases;
use super::gateway::{Gateway, SessionLink};
use super::router::{Reply, ReplyTo, Router};
use crate::proxy::upstream::Rejection;

/// A POST's registration with its session's router, undone when the POST ends (answered, or the
/// client went away).
pub(super) struct Registration {
    router: Arc<Router>,
    ids: Vec<RequestId>,
    tokens: Vec<String>,
    /// Weak, so that the POST sees its channel close once nothing else can answer it.
    waiter: mpsc::WeakSender<Reply>,
}

impl Registration {
    /// Registers `waiter` for the answers to `ids` and the progress of `tokens`.
    pub(super) fn new(
        router: Arc<Router>,
        ids: Vec<RequestId>,
        tokens: Vec<String>,
        waiter: &ReplyTo,
    ) -> Self {
        router.register(&ids, waiter);
        router.register_progress(&tokens, waiter, ids.len());
        Self {
            router,
            ids,
            tokens,
            waiter: waiter.downgrade(),
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Some(waiter) = self.waiter.upgrade() {
            self.router.unregister(&self.ids, &waiter);
            self.router.unregister_progress(&self.tokens, &waiter);
        }
    }
}

/// A POST waiting for the answers to its requests.
pub(super) struct Answering {
    pub(super) gateway: Arc<Gateway>,
    pub(super) link: Arc<SessionLink>,
    pub(super) replies: mpsc::Receiver<Reply>,
    /// The POST's requests still unanswered, with their methods.
    pub(super) expected: HashMap<RequestId, Method>,
    pub(super) started: tokio::time::Instant,
    pub(super) new_session: bool,
    /// Ends a stateless request's session when the POST is over.
    pub(super) ephemeral: Option<EndOnDrop>,
    /// A stateless request at the shared child: the names its client chose for what we renamed.
    pub(super) aliases: Option<Aliases>,
    pub(super) batch: bool,
    /// The exchange with the upstream, until it is over.
    pub(super) exchange: Option<Exchange>,
    pub(super) _registration: Registration,
    /// A stateless request's place under its client's bound at the shared child.
    pub(super) _in_flight: Option<crate::transport::serve::ClientSlot>,
}

/// Ends a session when dropped: the session of one stateless (2026-07-28) request, which lasts as
/// long as its POST, however that ends.
pub(super) struct EndOnDrop {
    pub(super) gateway: Arc<Gateway>,
    pub(super) session: crate::session::SessionId,
    /// The session's tape, if it is recorded: its `end` line is written.
    pub(super) tape: Option<crate::tape::Recorder>,
}

impl Drop for EndOnDrop {
    fn drop(&mut self) {
        self.gateway.sessions.end(&self.session, EndReason::Closed);
        // Dropped where the request was served, on the runtime.
        if let (Some(tape), Ok(_)) = (self.tape.take(), tokio::runtime::Handle::try_current()) {
            self.gateway.spawn(async move {
                if let Err(e) = tape.end(EndReason::Closed.as_str()).await {
                    tape.failed(&e);
                }
            });
        }
    }
}

/// A POST's exchange with the upstream.
pub(super) type Exchange = std::pin::Pin<Box<dyn Future<Output = ()> + Send>>;

/// The upstream's close of a request's stream, for its client to resume (polling).
#[derive(Debug, Clone, Copy)]
pub(super) struct Pause {
    /// The reconnection delay the upstream asked for (`retry:`).
    pub(super) retry: Option<std::time::Duration>,
}

/// What arrived for a waiting POST.
pub(super) enum Arrival {
    /// The client cancelled one of its requests; nothing to send for it.
    Cancelled,
    /// The answer to one of its requests.
    Answer(Bytes),
    /// Something else for the client (a notification or server request).
    Other(Bytes),
    /// The upstream closed the stream of one of its requests before the answer, for the client
    /// to resume it (see [`Reply::Paused`]).
    Paused(Pause),
    /// The upstream refused one of its messages at the HTTP level.
    Rejected(Rejection),
}

impl Drop for Answering {
    fn drop(&mut self) {
        if self.expected.is_empty() {
            return;
        }
        let pending = self
            .link
            .session
            .pending(crate::protocol::Direction::ClientToServer);
        // The client went away before every answer came, and no stream of this POST is kept
        // for it to resume: the requests it left are forgotten, or they would hold pending
        // slots (and keep the session busy) until the server answers, which may be never.
        let forgotten: Vec<&RequestId> = self
            .expected
            .keys()
            .filter(|id| pending.remove(id).is_some())
            .collect();
        // An HTTP upstream's exchange is dropped with this POST: the upstream sees its request's
        // connection close. A child is told, as MCP cancels a request (at the shared child, a
        // stateless request's closed stream is how that era cancels one).
        if let (true, false, Ok(runtime)) = (
            self.link.upstream.is_process(),
            forgotten.is_empty(),
            tokio::runtime::Handle::try_current(),
        ) {
            let cancelled: Vec<Message> = forgotten
                .into_iter()
                .map(|id| Message::cancelled(id, "the client went away before the answer"))
                .collect();
            let link = self.link.clone();
            runtime.spawn(async move {
                for msg in cancelled {
                    let _ = link.deliver(msg).await;
                }
            });
        }
        if self.aliases.is_some() {
            // The shared child's session is not this request's.
            return;
        }
        if self.new_session {
            // Nobody will ever learn this session's id.
            self.gateway
                .sessions
                .end(self.link.session.id(), EndReason::Closed);
        }
    }
}

impl Answering {
    /// Lets the rest of the exchange (a batch's notifications and responses) reach the upstream
    /// once every answer is in.
    pub(super) async fn finish_exchange(&mut self) {
        if let Some(exchange) = self.exchange.take() {
            exchange.await;
        }
    }

    /// A server message for a client that accepts only JSON can't be delivered: dropped, and a
    /// server request is answered with an error so the server doesn't wait for it.
    pub(super) async fn refuse_json_only(link: &SessionLink, raw: Bytes) {
        tracing::warn!(
            "the client accepts only application/json; a server message for it was dropped"
        );
        let Ok(msg) = Message::parse(raw) else { return };
        let (Some(id), Kind::Request) = (msg.id(), msg.kind()) else {
            return;
        };
        let direction = crate::protocol::Direction::ServerToClient;
        if link.session.pending(direction).remove(id).is_some() {
            let error = ProxyError::new(
                ErrorCode::InvalidRequest,
                format!(
                    "the client accepts only application/json, so it cannot receive this {} request",
                    msg.method().map_or("server", Method::as_str)
                ),
            );
            let _ = link
                .deliver(Message::error_response(Some(id), &error))
                .await;
        }
    }

    /// Marks request `id` answered (and counts it); false if it was not one of ours.
    fn answered(&mut self, id: &RequestId, error: bool) -> bool {
        let Some(method) = self.expected.remove(id) else {
            return false;
        };
        self.gateway
            .metrics
            .request(&method, error, self.started.elapsed());
        true
    }

    /// The next reply, driving the exchange meanwhile.
    async fn recv(&mut self) -> Option<Reply> {
        loop {
            let Some(exchange) = self.exchange.as_mut() else {
                return self.replies.recv().await;
            };
            tokio::select! {
                biased;
                reply = self.replies.recv() => return reply,
                () = exchange => self.exchange = None,
            }
        }
    }

    /// What arrives next for the client (under the names it chose).
    pub(super) async fn next(&mut self) -> Arrival {
        let arrival = self.arrive().await;
        match (&self.aliases, arrival) {
            (Some(aliases), Arrival::Answer(raw)) => Arrival::Answer(aliases.outbound(raw)),
            (Some(aliases), Arrival::Other(raw)) => Arrival::Other(aliases.outbound(raw)),
            (_, arrival) => arrival,
        }
    }

    async fn arrive(&mut self) -> Arrival {
        let Some(reply) = self.recv().await else {
            // Every sender is gone: the session ended (or its upstream died) with requests
            // unanswered. The watcher answers what it knows about; this covers the rest.
            let id = self.expected.keys().next().cloned();
            if let Some(id) = &id {
                self.answered(id, true);
            }
            let error = ProxyError::new(
                ErrorCode::ShuttingDown,
                format!(
                    "the session ended ({}) before the request was answered",
                    self.link.session.state()
                ),
            );
            return Arrival::Answer(error.to_response(id.as_ref()));
        };
        match reply {
            Reply::Cancelled(id) => {
                self.answered(&id, true);
                Arrival::Cancelled
            }
            Reply::Paused { retry } => Arrival::Paused(Pause { retry }),
            Reply::Message(msg) => {
                let answers_ours = msg.is_response()
                    && msg
                        .id()
                        .is_some_and(|id| self.answered(id, msg.kind() == Kind::Error));
                if answers_ours {
                    if self.new_session
                        && self.ephemeral.is_none()
                        && msg.kind() == Kind::Error
                        && !self.batch
                    {
                        // The upstream refused to initialize: the session goes.
                        self.gateway
                            .sessions
                            .end(self.link.session.id(), EndReason::Error);
                    }
                    Arrival::Answer(msg.raw().clone())
                } else {
                    Arrival::Other(msg.raw().clone())
                }
            }
            Reply::Rejected { id, rejection, .. } => {
                let id = id.filter(|id| self.answered(id, true));
                match id {
                    Some(_) if self.expected.is_empty() && !self.batch => {
                        Arrival::Rejected(rejection)
                    }
                    Some(id) => Arrival::Answer(rejection.error().to_response(Some(&id))),
                    None => Arrival::Rejected(rejection),
                }
            }
        }
    }
}
