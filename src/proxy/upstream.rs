//! A session's upstream: the server, as the session holds it: a stdio child ([`StdioLink`]) or
//! its session at an HTTP server ([`HttpSession`]), and what an exchange with it sends back to
//! the request waiting for it ([`Reply`]).
//!
//! - [`stdio`]: a child server and the two tasks that move its bytes.
//! - [`pool`]: the server processes of a command upstream: spares started ahead of need,
//!   starts bounded in number, rate and concurrency.
//! - [`share`]: server processes shared by many sessions, their ids, progress tokens and
//!   subscriptions kept apart.
//! - [`supervise`]: a failed server process started again, with backoff, crash-loop detection
//!   and the session's handshake replayed.
//! - [`http`]: one session at a Streamable HTTP (or 2024-11-05 HTTP+SSE) server: its POSTs,
//!   event streams, recovery of a lost session; [`HttpBackend`] is what its sessions share.

use ::http::{HeaderValue, StatusCode};
use bytes::Bytes;
use tokio::sync::mpsc;

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::protocol::error::ProxyError;
use crate::protocol::{Direction, ErrorCode, Message, RequestId};
use crate::proxy::outbox::{Closed, Deliver, Outbox};
use crate::session::Session;

pub mod http;
pub mod pool;
pub mod share;
pub mod stdio;
pub mod supervise;

pub use self::http::{HttpBackend, HttpLimits, HttpSession};
pub use pool::{Pool, PoolError};
pub use stdio::{StdioLink, StdioQueue};

/// The server as one session holds it: its own child, or its session at an HTTP server (whose
/// messages for the client go to `C`).
#[derive(Debug)]
pub enum Upstream<C> {
    /// Its own child's stdin.
    Stdio {
        /// The child's stdin queue.
        to_server: Arc<Outbox>,
        /// Cancelled when the first message is on its way: the child is started then.
        start: CancellationToken,
        /// With restarts: the way to whichever process is current (it keeps the handshake).
        inbox: Option<Arc<supervise::ServerInbox>>,
    },
    /// Its session at the HTTP upstream.
    Http(Arc<HttpSession<C>>),
    /// Its place on a server process shared with other sessions (`--share always`).
    Shared(Arc<share::Member<C>>),
}

impl<C> Upstream<C> {
    /// The session at the HTTP upstream, if that is where it goes.
    pub fn http(&self) -> Option<&Arc<HttpSession<C>>> {
        match self {
            Self::Http(http) => Some(http),
            Self::Stdio { .. } | Self::Shared(_) => None,
        }
    }

    /// Whether the server is a process (of its own or shared), which takes messages at once.
    pub fn is_process(&self) -> bool {
        !matches!(self, Self::Http(_))
    }
}

/// Client→server delivery for proxy-made messages (cancellations, answers the pipeline gives
/// the server): onto the child's stdin (starting it), or to the HTTP upstream.
impl<C: Deliver + 'static> Deliver for Upstream<C> {
    async fn deliver(&self, msg: Message) -> Result<(), Closed> {
        match self {
            Self::Stdio {
                to_server,
                start,
                inbox,
            } => {
                start.cancel();
                match inbox {
                    Some(inbox) => inbox.deliver(msg).await,
                    None => to_server.send(msg).await,
                }
            }
            Self::Http(http) => http.deliver(msg).await,
            Self::Shared(member) => member.deliver(msg).await,
        }
    }
}

/// What a waiting POST receives.
#[derive(Debug)]
pub enum Reply {
    /// The client cancelled one of the POST's requests: no answer will come for it.
    Cancelled(RequestId),
    /// A message for the client.
    Message(Message),
    /// The upstream closed the stream carrying the POST's answer before the answer, as a
    /// server that wants the client to poll does (2025-11-25: after a priming event, with
    /// `retry:`); the gateway resumes it upstream, and the client's stream is closed the same
    /// way, for it to resume with `Last-Event-ID`.
    Paused {
        /// The reconnection delay the upstream asked for.
        retry: Option<std::time::Duration>,
    },
    /// The upstream refused one of the POST's messages at the HTTP level.
    Rejected {
        /// The refused request's id (none for a notification or response).
        id: Option<RequestId>,
        /// The refusal, as it came.
        rejection: Rejection,
        /// Whether it said the upstream does not know the session (a 404; before it gave a
        /// session id, a URL with no MCP endpoint): the session ends.
        lost: bool,
    },
}

/// An upstream's refusal of a message at the HTTP level: what it answered, and what to tell a
/// client of it.
#[derive(Debug)]
pub struct Rejection {
    /// The upstream's status.
    pub status: StatusCode,
    /// Its `Content-Type`.
    pub content_type: Option<HeaderValue>,
    /// Its body (bounded).
    pub body: Bytes,
    /// What to tell a client when the body carries no JSON-RPC error of its own: the status,
    /// the body's start, and the likely cause as far as the backend's [`http::Audience`] may
    /// be told it ([`http::refusal`]).
    pub said: String,
}

impl Rejection {
    /// The -32088 error that says it, for a body that carries no JSON-RPC error of its own.
    pub fn error(&self) -> ProxyError {
        ProxyError::new(ErrorCode::UpstreamHttpError, self.said.clone())
            .with("httpStatus", self.status.as_u16())
    }
}

/// Where an exchange sends its replies: the sending end of the channel a waiting POST reads.
pub type ReplyTo = mpsc::Sender<Reply>;

/// Room kept in every POST's channel beyond one slot per request it waits for.
pub const STREAM_SLACK: usize = 64;

/// A channel for one exchange's replies, with room for the answers to its `requests` requests
/// plus [`STREAM_SLACK`] other messages.
pub fn reply_channel(requests: usize) -> (ReplyTo, mpsc::Receiver<Reply>) {
    mpsc::channel(requests + STREAM_SLACK)
}

/// The error a request gets when its session ended before the server answered it.
pub fn session_ended(session: &Session) -> ProxyError {
    ProxyError::new(
        ErrorCode::ShuttingDown,
        format!(
            "the session ended ({}) before the request was answered",
            session.state()
        ),
    )
}

/// Answers each client request of `session` still waiting for the server with `error`, through
/// `to_client` until it is gone, and forgets the server's requests to the client: the session's
/// upstream has ended, so no answer can arrive for either. Returns how many requests it answered.
pub async fn answer_in_flight<D: Deliver>(
    session: &Session,
    error: &ProxyError,
    to_client: &D,
) -> usize {
    session.close_pending(Direction::ServerToClient);
    answer_each(
        session.close_pending(Direction::ClientToServer),
        error,
        to_client,
    )
    .await
}

/// Answers each of `requests` with `error` through `to_client`, until it is gone; returns how
/// many it answered.
pub async fn answer_each<D: Deliver>(
    requests: Vec<(RequestId, crate::session::pending::Pending)>,
    error: &ProxyError,
    to_client: &D,
) -> usize {
    let mut answered = 0;
    for (id, _) in requests {
        if to_client
            .deliver(Message::error_response(Some(&id), error))
            .await
            .is_err()
        {
            break;
        }
        answered += 1;
    }
    answered
}
