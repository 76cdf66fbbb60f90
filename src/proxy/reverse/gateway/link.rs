//! One session's link to its upstream: its own child, or its session at an HTTP upstream (the
//! upstream's session id, the 2024-11-05 stream if that is what it speaks, what it takes to get
//! a lost session back), with the session's router and streams.

use std::sync::{Arc, Mutex, PoisonError};

use http::{HeaderMap, HeaderValue};
use tokio_util::sync::CancellationToken;

use crate::protocol::Message;
use crate::proxy::outbox::{Closed, Deliver, Outbox};
use crate::session::Session;
use crate::transport::http::{HttpUpstream, MCP_PROTOCOL_VERSION, UpstreamError, read_body};

use super::super::events::PostStreams;
use super::super::router::Router;
use super::{DELIVER_TIMEOUT, MAX_ERROR_BODY};

/// One session's end of its upstream.
#[derive(Debug)]
pub enum LinkUpstream {
    /// Its own child's stdin.
    Stdio {
        /// The child's stdin queue.
        to_server: Arc<Outbox>,
        /// Cancelled when the first message is on its way: the child is started then.
        start: CancellationToken,
    },
    /// Its session at the HTTP upstream.
    Http {
        /// The shared client.
        client: Arc<HttpUpstream>,
        /// The upstream's `Mcp-Session-Id`, once its initialize answer gave one.
        session_id: Mutex<Option<HeaderValue>>,
        /// When the upstream speaks the 2024-11-05 HTTP+SSE transport: its stream for this
        /// session and where to POST.
        legacy: Mutex<Option<Arc<LegacyUpstream>>>,
        /// What it takes to get the session back if the upstream loses it.
        recovery: Box<Recovery>,
    },
}

impl LinkUpstream {
    /// A session at the HTTP upstream `client`, not yet initialized there.
    pub fn http(client: Arc<HttpUpstream>) -> Self {
        Self::Http {
            client,
            session_id: Mutex::new(None),
            legacy: Mutex::new(None),
            recovery: Box::default(),
        }
    }
}

/// What re-establishing a lost upstream session takes.
#[derive(Debug, Default)]
pub struct Recovery {
    /// The client's handshake, to replay.
    pub handshake: Mutex<Handshake>,
    /// Held while the session is re-established, so that is done once.
    pub running: tokio::sync::Mutex<()>,
}

/// What re-establishing a lost upstream session takes: the client's `initialize`, and whether
/// it went on to send `notifications/initialized`.
#[derive(Debug, Default)]
pub struct Handshake {
    /// The client's `initialize` request, as the upstream accepted it.
    pub initialize: Option<Message>,
    /// Whether the client's `notifications/initialized` reached the upstream.
    pub initialized: bool,
}

/// A session's connection to a 2024-11-05 HTTP+SSE upstream: the stream (read by a relay task)
/// is the upstream session; messages are POSTed to the endpoint its first event named.
#[derive(Debug)]
pub struct LegacyUpstream {
    /// Where to POST.
    pub endpoint: http::Uri,
    /// The task relaying the stream; aborting it closes the upstream session.
    pub relay: tokio_util::task::AbortOnDropHandle<()>,
}

/// A session and its upstream.
#[derive(Debug)]
pub struct SessionLink {
    /// The session.
    pub session: Arc<Session>,
    /// Where its server→client messages go.
    pub router: Arc<Router>,
    /// Its upstream.
    pub upstream: LinkUpstream,
    /// Cancelled once the upstream side has been torn down.
    pub torn_down: CancellationToken,
    /// Cancelled once an HTTP upstream has accepted the session's `initialize`: its GET stream
    /// can be opened.
    pub upstream_ready: CancellationToken,
    /// Cancelled when the client first opens the session's GET stream: only then is the
    /// upstream's opened (as the client would have done itself), so idle sessions hold no
    /// upstream connection.
    pub listening: CancellationToken,
    /// Cancelled once the upstream's GET stream is open, or it is known there will be none: a
    /// client's first GET waits for it (bounded by `--connect-timeout`), so that a message the
    /// upstream sends on it right after is not lost for want of a listener there.
    pub upstream_listens: CancellationToken,
    /// The session's POST streams, while they may be resumed.
    pub posts: PostStreams,
    /// Stateless-era requests in flight at an HTTP upstream, each with the token that abandons
    /// it: in that era closing a request's connection is its cancellation.
    pub abandon: Mutex<std::collections::HashMap<crate::protocol::RequestId, CancellationToken>>,
    /// The shared child's tools that mirror parameters into `Mcp-Param-*` headers (from its
    /// `tools/list` answers), to check the headers stateless clients send (the gateway is that
    /// child's HTTP server). An HTTP upstream's are the gateway's (`Gateway::mirrored`).
    pub tool_params: crate::protocol::headers::MirroredTools,
    /// The session's place under its client's `--max-sessions-per-client`, given back as the
    /// session ends.
    pub(in crate::proxy::reverse) client: Mutex<Option<crate::transport::serve::ClientSlot>>,
}

impl SessionLink {
    /// `session`, whose messages from the server go to `router`, linked to `upstream`; `client`
    /// holds its place under its client's `--max-sessions-per-client`. `replay_events`: how
    /// many events each POST stream keeps for resumption (`--sse-replay-events`).
    pub fn new(
        session: Arc<Session>,
        router: Arc<Router>,
        upstream: LinkUpstream,
        client: Option<crate::transport::serve::ClientSlot>,
        replay_events: usize,
    ) -> Self {
        Self {
            session,
            router,
            upstream,
            torn_down: CancellationToken::new(),
            upstream_ready: CancellationToken::new(),
            listening: CancellationToken::new(),
            upstream_listens: CancellationToken::new(),
            posts: PostStreams::new(replay_events, super::super::events::DEFAULT_REPLAY_BYTES),
            abandon: Mutex::default(),
            tool_params: crate::protocol::headers::MirroredTools::default(),
            client: Mutex::new(client),
        }
    }

    /// The client address whose session this is (while it holds its place).
    pub fn client(&self) -> Option<std::net::IpAddr> {
        self.client
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map(crate::transport::serve::ClientSlot::client)
    }

    /// Gives the session's place under its client's cap back (the session has ended).
    pub fn release_client(&self) {
        self.client
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
    }

    /// The upstream's session id for this session, once it gave one.
    pub(super) fn upstream_session(&self) -> Option<HeaderValue> {
        match &self.upstream {
            LinkUpstream::Http { session_id, .. } => session_id
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
            LinkUpstream::Stdio { .. } => None,
        }
    }

    /// The 2024-11-05 upstream connection, if this session has one.
    pub fn legacy(&self) -> Option<Arc<LegacyUpstream>> {
        match &self.upstream {
            LinkUpstream::Http { legacy, .. } => legacy
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
            LinkUpstream::Stdio { .. } => None,
        }
    }

    /// The protocol version the session negotiated, as a header value.
    pub fn protocol_version(&self) -> Option<HeaderValue> {
        self.session.read_metadata(|m| {
            m.protocol_version
                .as_deref()
                .and_then(|v| HeaderValue::from_str(v).ok())
        })
    }

    /// Whether the session never initialized (the stateless 2026-07-28 era).
    pub fn never_initialized(&self) -> bool {
        match &self.upstream {
            LinkUpstream::Http { recovery, .. } => recovery
                .handshake
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .initialize
                .is_none(),
            LinkUpstream::Stdio { .. } => false,
        }
    }

    /// Whether the client takes SSE priming events (its protocol version is 2025-11-25 or later).
    pub fn takes_priming_events(&self) -> bool {
        self.session.read_metadata(|m| {
            m.protocol_version
                .as_deref()
                .is_some_and(crate::protocol::version::takes_priming_events)
        })
    }
}

/// Client→server delivery for proxy-made messages (cancellations, answers the pipeline gives
/// the server): onto the child's stdin, or POSTed to the upstream with the answer discarded.
impl Deliver for SessionLink {
    async fn deliver(&self, msg: Message) -> Result<(), Closed> {
        match &self.upstream {
            LinkUpstream::Stdio { to_server, start } => {
                start.cancel();
                to_server.send(msg).await
            }
            LinkUpstream::Http { .. }
                if msg.method() == Some(&crate::protocol::Method::Cancelled)
                    && self.never_initialized() =>
            {
                // A session that never initialized is in the stateless (2026-07-28) era, where
                // closing the request's connection is the cancellation; there is no
                // notification to send.
                if let Some(token) = msg.cancelled_request_id().and_then(|id| {
                    self.abandon
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .remove(&id)
                }) {
                    token.cancel();
                }
                Ok(())
            }
            LinkUpstream::Http { client, .. } => {
                let mut headers = HeaderMap::new();
                if let Some(version) = self.protocol_version() {
                    headers.insert(MCP_PROTOCOL_VERSION.clone(), version);
                }
                let session = self.upstream_session();
                // A 2024-11-05 upstream takes messages at its endpoint, not its stream's URL.
                let legacy = self.legacy();
                let post = async {
                    let response = match &legacy {
                        Some(legacy) => {
                            client
                                .post_to(&legacy.endpoint, msg.raw().clone(), None, &headers)
                                .await?
                        }
                        None => {
                            client
                                .post(msg.raw().clone(), session.as_ref(), &headers)
                                .await?
                        }
                    };
                    // Read (and discard) the answer so the connection can be reused.
                    let _ = read_body(response.into_body(), MAX_ERROR_BODY).await;
                    Ok::<_, UpstreamError>(())
                };
                match tokio::time::timeout(DELIVER_TIMEOUT, post).await {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(e)) => {
                        tracing::warn!(%e, "could not deliver a message to the upstream");
                        Err(Closed)
                    }
                    Err(_) => {
                        tracing::warn!(method = ?msg.method(), "the upstream did not take a message in time");
                        Err(Closed)
                    }
                }
            }
        }
    }
}
