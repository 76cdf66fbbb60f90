//! One session at an HTTP upstream ([`HttpSession`]), and what all of a front end's sessions
//! there share ([`HttpBackend`]): the pooled client, the limits, whether the server turned out
//! to speak the 2024-11-05 HTTP+SSE transport, the tools it mirrors into headers.
//!
//! A session holds the upstream's `Mcp-Session-Id` (never shown to the client), the client's
//! handshake (to get a lost session back), the stateless requests it may abandon, and, at a
//! 2024-11-05 server, its stream there. Each client message is one POST
//! ([`HttpSession::exchange`]); what comes back (JSON, or an SSE stream resumed if it breaks)
//! runs through the pipeline to the request's waiter or to the session's client. The reverse
//! proxy's sessions and the bridge's one session are both this.
//!
//! - `post`: one message's POST, and what its answer becomes.
//! - `streams`: the upstream's GET stream, POST streams resumed, each frame through the pipeline.
//! - `recovery`: a lost session re-established; stateless requests abandoned.
//! - `legacy`: the 2024-11-05 HTTP+SSE transport, found by the spec's back-compat probe.

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use http::{HeaderMap, HeaderValue};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::protocol::headers::{MCP_PROTOCOL_VERSION, MirroredTools};
use crate::protocol::{Message, Method, RequestId};
use crate::proxy::outbox::{Closed, Deliver};
use crate::proxy::pipeline::Pipeline;
use crate::session::{EndReason, Session, SessionManager};
use crate::telemetry::UpstreamErrors;
use crate::transport::credentials::{Credentials, Exchanger, Source};
use crate::transport::http::{HttpClient, UpstreamError, read_body};

use super::{Reply, ReplyTo, reply_channel};

mod legacy;
mod post;
mod recovery;
mod streams;

pub use legacy::LegacyStream;
pub use post::{refusal, session_lost};
pub use recovery::{Handshake, Recovery};

/// How long a message shadowcat itself sends the upstream (a cancellation, an error for one of
/// its requests) may take.
const DELIVER_TIMEOUT: Duration = Duration::from_secs(10);
/// Refusals (4xx) in a row after which the upstream's GET stream is given up on.
const UPSTREAM_GET_ATTEMPTS: u32 = 3;
/// Attempts to resume a POST's SSE stream that broke before its answer.
const POST_STREAM_RESUMES: u32 = 5;
/// Most bytes of an upstream error body passed on to the client.
const MAX_ERROR_BODY: usize = 64 * 1024;

/// The limits an HTTP upstream's sessions keep.
#[derive(Debug, Clone)]
pub struct HttpLimits {
    /// `--max-message-size`: the most one answer or event may be.
    pub max_message_size: usize,
    /// `--connect-timeout`: also the wait for a 2024-11-05 server's `endpoint` event.
    pub connect_timeout: Duration,
    /// `--read-timeout`: an answer or stream silent this long is taken as dropped.
    pub read_timeout: Option<Duration>,
    /// `--resume-timeout`: the longest a broken POST stream is tried again.
    pub resume_timeout: Duration,
    /// `--shutdown-timeout`: the longest the upstream may take to end a session (DELETE).
    pub shutdown_timeout: Duration,
}

impl HttpLimits {
    /// The limits `config` and `upstream`'s options set.
    pub fn of(config: &crate::config::Config, upstream: &crate::config::UpstreamConfig) -> Self {
        Self {
            max_message_size: config.max_message_size,
            connect_timeout: upstream.connect_timeout,
            read_timeout: upstream.read_timeout,
            resume_timeout: upstream.resume_timeout,
            shutdown_timeout: config.shutdown_timeout,
        }
    }
}

/// The pooled client for `upstream`: its URL, headers, credentials (started with
/// [`start_credentials`]), CA and timeouts.
pub fn client_for(
    upstream: &crate::config::UpstreamConfig,
    credentials: Option<Arc<Credentials>>,
) -> HttpClient {
    HttpClient::new(
        upstream.url.clone(),
        upstream.headers.clone(),
        upstream.connect_timeout,
        crate::transport::http::tls_config(&upstream.upstream_ca),
    )
    .with_response_timeout(upstream.read_timeout)
    .with_credentials(credentials.map(|c| c as Arc<dyn crate::transport::http::Authorizer>))
}

/// The token exchange `upstream` asks for (`--upstream-token-exchange`), if it does.
pub fn exchanger_for(upstream: &crate::config::UpstreamConfig) -> Option<Arc<Exchanger>> {
    match upstream.credentials.as_deref() {
        Some(Source::Exchange(grant)) => Some(Exchanger::new(
            grant.clone(),
            crate::transport::http::tls_config(&upstream.upstream_ca),
            upstream.connect_timeout,
        )),
        _ => None,
    }
}

/// The credentials `upstream` gets from a token file or an OAuth grant, fetched now; an error
/// is a source that refuses (a missing file, a grant the server refuses), which keeps us from
/// starting.
pub async fn start_credentials(
    upstream: &crate::config::UpstreamConfig,
) -> anyhow::Result<Option<Arc<Credentials>>> {
    let Some(source) = &upstream.credentials else {
        return Ok(None);
    };
    if let Source::Exchange(_) = **source {
        // Each caller's token is exchanged as it comes (the gateway's `Exchanger`).
        return Ok(None);
    }
    let tls = crate::transport::http::tls_config(&upstream.upstream_ca);
    let credentials = Credentials::start((**source).clone(), tls, upstream.connect_timeout)
        .await
        .map_err(|why| anyhow::anyhow!("the upstream's credentials: {why}"))?;
    Ok(Some(credentials))
}

/// What every session at one HTTP upstream shares.
#[derive(Debug)]
pub struct HttpBackend {
    client: HttpClient,
    limits: HttpLimits,
    /// Each message from the upstream runs through it.
    pipeline: Arc<Pipeline>,
    /// To end a session the upstream lost for good.
    sessions: Arc<SessionManager>,
    errors: UpstreamErrors,
    /// The upstream turned out to speak the 2024-11-05 HTTP+SSE transport (learnt from the first
    /// session's probe, then used for every session).
    legacy: AtomicBool,
    /// The upstream's tools that mirror parameters into `Mcp-Param-*` headers, learnt from every
    /// session's `tools/list` answers (a stateless request's session lasts one request).
    mirrored: MirroredTools,
    /// The 2024-11-05 streams' relays.
    tasks: TaskTracker,
    /// Who the clients are: what they are told of an upstream's refusal.
    audience: Audience,
}

/// Who a backend's clients are, which decides what they are told of an upstream's HTTP
/// refusal ([`post::refusal`]); the proxy's log always says all of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Audience {
    /// Whoever runs the proxy (`forward stdio --url`): the likely cause, with the URL and the
    /// options to fix it.
    Operator,
    /// A gateway's callers, who cannot change its options: the status and the body's start,
    /// and that the gateway's log says why; never the upstream's URL.
    Callers,
}

impl HttpBackend {
    /// The upstream `client` serves, for sessions of `sessions` whose messages run through
    /// `pipeline`; its failures are counted in `errors`; its clients are `audience`.
    pub fn new(
        client: HttpClient,
        limits: HttpLimits,
        pipeline: Arc<Pipeline>,
        sessions: Arc<SessionManager>,
        errors: UpstreamErrors,
        audience: Audience,
    ) -> Arc<Self> {
        Arc::new(Self {
            audience,
            client,
            limits,
            pipeline,
            sessions,
            errors,
            legacy: AtomicBool::new(false),
            mirrored: MirroredTools::default(),
            tasks: TaskTracker::new(),
        })
    }

    /// The client (its URL, for showing).
    pub fn client(&self) -> &HttpClient {
        &self.client
    }

    /// The pipeline its messages run through.
    pub fn pipeline(&self) -> &Arc<Pipeline> {
        &self.pipeline
    }

    /// The upstream's tools that mirror parameters into headers.
    pub fn mirrored(&self) -> &MirroredTools {
        &self.mirrored
    }

    /// `session` at this upstream (not yet initialized there); what the server sends it that
    /// no request waits for goes to `to_client`.
    pub fn session<C: Deliver + 'static>(
        self: &Arc<Self>,
        session: Arc<Session>,
        to_client: C,
    ) -> Arc<HttpSession<C>> {
        Arc::new(HttpSession {
            backend: self.clone(),
            session,
            to_client,
            session_id: Mutex::new(None),
            legacy: Mutex::new(None),
            recovery: Recovery::default(),
            abandon: Arc::default(),
            ready: CancellationToken::new(),
            listens: CancellationToken::new(),
            own_client: arc_swap::ArcSwapOption::empty(),
        })
    }
}

/// Stateless-era requests in flight, each with the token that abandons it.
type Abandon = Arc<Mutex<HashMap<RequestId, CancellationToken>>>;

/// One session at the HTTP upstream.
#[derive(Debug)]
pub struct HttpSession<C> {
    backend: Arc<HttpBackend>,
    /// The session.
    pub session: Arc<Session>,
    /// Where the server's messages go that no request waits for (and answers, to be routed).
    to_client: C,
    /// The upstream's `Mcp-Session-Id`, once its initialize answer gave one.
    session_id: Mutex<Option<HeaderValue>>,
    /// At a 2024-11-05 HTTP+SSE upstream: its stream for this session and where to POST.
    legacy: Mutex<Option<Arc<LegacyStream>>>,
    /// What it takes to get the session back if the upstream loses it.
    recovery: Recovery,
    /// Stateless-era requests in flight: in that era closing a request's connection is its
    /// cancellation.
    abandon: Abandon,
    /// Cancelled once the upstream has accepted the session's `initialize`: its GET stream can
    /// be opened.
    pub ready: CancellationToken,
    /// Cancelled once the upstream's GET stream is open, or it is known there will be none: a
    /// client's first GET waits for it ([`Self::until_listening`]), so that a message the
    /// upstream sends on it right after is not lost for want of a listener there.
    listens: CancellationToken,
    /// The backend's client with this session's own `Authorization` (a token exchanged for
    /// its caller's), once it has one.
    own_client: arc_swap::ArcSwapOption<HttpClient>,
}

/// The client a session's requests go through: the backend's, or its own.
enum SessionClient<'a> {
    Shared(&'a HttpClient),
    Own(Arc<HttpClient>),
}

impl std::ops::Deref for SessionClient<'_> {
    type Target = HttpClient;

    fn deref(&self) -> &HttpClient {
        match self {
            Self::Shared(client) => client,
            Self::Own(client) => client,
        }
    }
}

/// Critical sections are single reads or writes; a poisoned lock is still consistent.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// `session`'s negotiated protocol version, as a header value.
pub fn version_header(session: &Session) -> Option<HeaderValue> {
    session.read_metadata(|m| {
        m.protocol_version
            .as_deref()
            .and_then(|v| HeaderValue::from_str(v).ok())
    })
}

impl<C: Deliver + 'static> HttpSession<C> {
    /// What the session's upstream shares with the others.
    pub fn backend(&self) -> &Arc<HttpBackend> {
        &self.backend
    }

    /// The client its requests go through.
    fn client(&self) -> SessionClient<'_> {
        match self.own_client.load_full() {
            Some(own) => SessionClient::Own(own),
            None => SessionClient::Shared(&self.backend.client),
        }
    }

    /// Sends `authorization` with the session's requests from now on, instead of the
    /// backend's (a token exchanged for the session's caller).
    pub fn authorize(&self, authorization: &HeaderValue) {
        let current = self.own_client.load();
        if current
            .as_ref()
            .is_some_and(|own| own.authorization() == Some(authorization))
        {
            return;
        }
        self.own_client.store(Some(Arc::new(
            self.backend
                .client
                .with_authorization(authorization.clone()),
        )));
    }

    /// The upstream's session id for this session, once it gave one.
    fn upstream_session(&self) -> Option<HeaderValue> {
        lock(&self.session_id).clone()
    }

    /// Waits until the upstream's GET stream is open, or known not to come, for at most
    /// `--connect-timeout`.
    pub async fn until_listening(&self) {
        let connect = self.backend.limits.connect_timeout;
        let _ = tokio::time::timeout(connect, self.listens.cancelled()).await;
    }

    /// The 2024-11-05 upstream stream, if this session has one.
    pub fn legacy(&self) -> Option<Arc<LegacyStream>> {
        lock(&self.legacy).clone()
    }

    /// The protocol version the session negotiated, as a header value.
    fn protocol_version(&self) -> Option<HeaderValue> {
        version_header(&self.session)
    }

    /// Whether the session never initialized (the stateless 2026-07-28 era).
    pub fn never_initialized(&self) -> bool {
        !self.ready.is_cancelled()
    }

    /// The upstream's session id for this session, as text (what a seal carries).
    pub fn upstream_id(&self) -> Option<String> {
        lock(&self.session_id)
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    }

    /// Serves a session another instance of a cluster opened: its upstream session id
    /// (`upstream`, from the seal), initialized there. Its handshake stays where it was made,
    /// so should the upstream lose the session it cannot be re-established here.
    pub fn adopt(&self, upstream: Option<&str>) {
        if let Some(value) = upstream.and_then(|u| HeaderValue::from_str(u).ok()) {
            *lock(&self.session_id) = Some(value);
        }
        self.ready.cancel();
    }

    /// Sends forwarded client messages to the upstream, one POST each, concurrently. Answers
    /// arrive at `reply` (and, for requests, through the session's router, where the caller
    /// registered their ids). Returns once the upstream has answered every message (for a
    /// request that streams, once the stream is over).
    pub async fn exchange(
        self: &Arc<Self>,
        messages: Vec<Message>,
        client_headers: &HeaderMap,
        reply: &ReplyTo,
    ) {
        let posts = messages
            .into_iter()
            .map(|msg| self.post_one(msg, client_headers, reply));
        futures_util::future::join_all(posts).await;
    }

    /// [`Self::exchange`] for a client with one way in for everything (a 2024-11-05 stream,
    /// `forward stdio --url`'s stdout): what comes back goes to `sink` ([`pass_replies`]). An
    /// upstream that no longer knows the session (404) ends it too, which closes what the
    /// client listens on (after what is queued there), so it starts afresh.
    pub async fn exchange_to<D: Deliver>(
        self: &Arc<Self>,
        messages: Vec<Message>,
        client_headers: &HeaderMap,
        sink: &D,
        requests: usize,
    ) {
        let (reply, replies) = reply_channel(requests);
        // `reply` is dropped when the exchange is over, which ends the drain.
        let exchange = async {
            self.exchange(messages, client_headers, &reply).await;
            drop(reply);
        };
        let ((), lost) = tokio::join!(exchange, pass_replies(replies, sink));
        if lost {
            if self.upstream_session().is_some() {
                tracing::warn!(session = %self.session.id().digest(), "the upstream no longer knows this session; ending it");
            } else {
                // A wrong URL, said already (`post::refusal`).
                tracing::debug!(session = %self.session.id().digest(), "the upstream gave no session; ending it");
            }
            self.backend
                .sessions
                .end(self.session.id(), EndReason::Error);
        }
    }

    /// Until the session ends: once the upstream has the session and `listening` is cancelled
    /// (the client opened its own GET stream, as it would have to the server directly), relays
    /// the upstream's GET stream, if it offers one. An idle session holds only this wait.
    pub async fn serve(&self, listening: &CancellationToken) {
        let closed = self.session.closed_token();
        let wanted = async {
            self.ready.cancelled().await;
            listening.cancelled().await;
        };
        tokio::select! {
            () = closed.cancelled() => {}
            () = wanted => {
                let listen = Box::pin(self.listen());
                tokio::select! {
                    () = closed.cancelled() => {}
                    () = listen => closed.cancelled().await,
                }
            }
        }
    }
}

/// What a client with one way in gets of an exchange's `replies`: each message, and for a
/// message the upstream refused at the HTTP level its JSON-RPC error (or -32088 naming the
/// status). True if a refusal said the upstream no longer knows the session.
pub async fn pass_replies<D: Deliver>(
    mut replies: tokio::sync::mpsc::Receiver<Reply>,
    sink: &D,
) -> bool {
    let mut lost = false;
    while let Some(item) = replies.recv().await {
        match item {
            Reply::Message(msg) => {
                let _ = sink.deliver(msg).await;
            }
            Reply::Rejected {
                id,
                rejection,
                lost: gone,
            } => {
                lost |= gone;
                let Some(id) = id else { continue };
                // The upstream's own JSON-RPC error, if its refusal carried one.
                let answer = Message::parse(rejection.body.clone())
                    .ok()
                    .and_then(|m| m.error_for(&id))
                    .unwrap_or_else(|| Message::error_response(Some(&id), &rejection.error()));
                let _ = sink.deliver(answer).await;
            }
            // Such a client cannot resume a stream: the proxy's resumption is all.
            Reply::Cancelled(_) | Reply::Paused { .. } => {}
        }
    }
    lost
}

/// Client→server delivery for proxy-made messages (cancellations, answers the pipeline gives
/// the server): POSTed to the upstream with the answer discarded.
impl<C: Deliver + 'static> Deliver for HttpSession<C> {
    async fn deliver(&self, msg: Message) -> Result<(), Closed> {
        if msg.method() == Some(&Method::Cancelled) && self.never_initialized() {
            // A session that never initialized is in the stateless (2026-07-28) era, where
            // closing the request's connection is the cancellation; there is no notification
            // to send.
            if let Some(token) = msg
                .cancelled_request_id()
                .and_then(|id| lock(&self.abandon).remove(&id))
            {
                token.cancel();
            }
            return Ok(());
        }
        let mut headers = HeaderMap::new();
        if let Some(version) = self.protocol_version() {
            headers.insert(MCP_PROTOCOL_VERSION.clone(), version);
        }
        let session = self.upstream_session();
        // A 2024-11-05 upstream takes messages at its endpoint, not its stream's URL.
        let legacy = self.legacy();
        let client = self.client();
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
                tracing::warn!(
                    method = msg.method().map(Method::as_str),
                    "the upstream did not take a message in time"
                );
                Err(Closed)
            }
        }
    }
}

#[cfg(test)]
mod tests;
