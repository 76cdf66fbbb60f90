//! One session's link to its upstream (its own child, or its session at the HTTP upstream),
//! with the session's router and streams.

use std::sync::{Arc, Mutex, PoisonError};

use http::HeaderValue;
use tokio_util::sync::CancellationToken;

use crate::protocol::Message;
use crate::proxy::outbox::{Closed, Deliver};
use crate::proxy::upstream::Upstream;
use crate::proxy::upstream::http::{HttpSession, version_header};
use crate::session::Session;

use super::super::events::PostStreams;
use super::super::router::Router;

/// The session's end of the HTTP upstream: its server→client messages go to its router.
pub type HttpLink = HttpSession<Arc<Router>>;

/// A session and its upstream.
#[derive(Debug)]
pub struct SessionLink {
    /// The session.
    pub(in crate::proxy::reverse) session: Arc<Session>,
    /// Where its server→client messages go.
    pub(in crate::proxy::reverse) router: Arc<Router>,
    /// Its upstream.
    pub(in crate::proxy::reverse) upstream: Upstream<Arc<Router>>,
    /// Cancelled once the upstream side has been torn down.
    pub(in crate::proxy::reverse) torn_down: CancellationToken,
    /// Cancelled when the client first opens the session's GET stream: only then is the
    /// upstream's opened (as the client would have done itself), so idle sessions hold no
    /// upstream connection.
    pub(in crate::proxy::reverse) listening: CancellationToken,
    /// The session's POST streams, while they may be resumed.
    pub(in crate::proxy::reverse) posts: PostStreams,
    /// The shared child's tools that mirror parameters into `Mcp-Param-*` headers (from its
    /// `tools/list` answers), to check the headers stateless clients send (the gateway is that
    /// child's HTTP server). An HTTP upstream's are the gateway's (`Gateway::mirrored`).
    pub(in crate::proxy::reverse) tool_params: crate::protocol::headers::MirroredTools,
    /// The session's place under its client's `--max-sessions-per-client`, given back as the
    /// session ends.
    pub(in crate::proxy::reverse) client: Mutex<Option<crate::transport::serve::ClientSlot>>,
    /// A digest of the principal that opened it (with authentication): no other may use it.
    /// Set from the seal when another instance of a cluster opened it.
    owner: std::sync::OnceLock<[u8; 16]>,
    /// Its client ended it through another instance of the cluster, which ended it at the
    /// upstream too.
    ended_elsewhere: std::sync::atomic::AtomicBool,
    /// Its client was given a sealed id: only that names it (its plain id, which Redis and
    /// the history keep, is no credential).
    sealed: std::sync::atomic::AtomicBool,
    /// The handshake its process is given before anything else (a session taken over from an
    /// instance that is gone).
    replay: Mutex<Option<crate::proxy::upstream::supervise::Handshake>>,
}

impl SessionLink {
    /// `session`, whose messages from the server go to `router`, linked to `upstream`; `client`
    /// holds its place under its client's `--max-sessions-per-client`; `posts` will hold its
    /// POST streams.
    pub fn new(
        session: Arc<Session>,
        router: Arc<Router>,
        upstream: Upstream<Arc<Router>>,
        client: Option<crate::transport::serve::ClientSlot>,
        posts: PostStreams,
    ) -> Self {
        Self {
            session,
            router,
            upstream,
            torn_down: CancellationToken::new(),
            listening: CancellationToken::new(),
            posts,
            tool_params: crate::protocol::headers::MirroredTools::default(),
            client: Mutex::new(client),
            owner: std::sync::OnceLock::new(),
            ended_elsewhere: std::sync::atomic::AtomicBool::new(false),
            sealed: std::sync::atomic::AtomicBool::new(false),
            replay: Mutex::new(None),
        }
    }

    /// Gives its process `handshake` before anything else.
    pub(in crate::proxy::reverse) fn replay_first(
        &self,
        handshake: crate::proxy::upstream::supervise::Handshake,
    ) {
        *self.replay.lock().unwrap_or_else(PoisonError::into_inner) = Some(handshake);
    }

    /// The handshake to give its process first, if there is one (taken: given once).
    pub(in crate::proxy::reverse) fn take_replay(
        &self,
    ) -> Option<crate::proxy::upstream::supervise::Handshake> {
        self.replay
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }

    /// Whether its client ended it through another instance of the cluster.
    pub(in crate::proxy::reverse) fn ended_elsewhere(&self) -> bool {
        self.ended_elsewhere
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether its client was given a sealed id.
    pub(in crate::proxy::reverse) fn is_sealed(&self) -> bool {
        self.sealed.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Notes that its client was given a sealed id.
    pub(in crate::proxy::reverse) fn set_sealed(&self) {
        self.sealed
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Notes that its client ended it through another instance of the cluster.
    pub(in crate::proxy::reverse) fn set_ended_elsewhere(&self) {
        self.ended_elsewhere
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Notes the principal of a request in the session (`caller`, with authentication): the
    /// first binds the session to it; each is the caller rules see from then on.
    pub fn bind(&self, caller: &super::super::authn::Caller) {
        if let Some(principal) = caller {
            let digest = crate::session::seal::principal_digest(&principal.id);
            if self.owner.set(digest).is_ok() {
                tracing::info!(session = %self.session.id().digest(), principal = %principal.id, "the session belongs to its principal");
            }
            self.session.set_caller(&principal.0);
        }
    }

    /// Whether `principal` may use the session: it opened it (or nobody is bound to it).
    pub fn owned_by(&self, principal: &str) -> bool {
        self.owner
            .get()
            .is_none_or(|owner| *owner == crate::session::seal::principal_digest(principal))
    }

    /// The digest of the principal the session is bound to, if it is.
    pub fn owner_digest(&self) -> Option<[u8; 16]> {
        self.owner.get().copied()
    }

    /// Binds the session to the principal whose digest its seal carries (a session another
    /// instance opened).
    pub(in crate::proxy::reverse) fn bind_digest(&self, digest: [u8; 16]) {
        let _ = self.owner.set(digest);
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

    /// The session at the HTTP upstream, if that is where it goes.
    pub fn http(&self) -> Option<&Arc<HttpLink>> {
        self.upstream.http()
    }

    /// Whether the session is at a 2024-11-05 HTTP+SSE upstream.
    pub fn at_legacy_upstream(&self) -> bool {
        self.http().is_some_and(|http| http.legacy().is_some())
    }

    /// The protocol version the session negotiated, as a header value.
    pub fn protocol_version(&self) -> Option<HeaderValue> {
        version_header(&self.session)
    }

    /// Whether the session never initialized at an HTTP upstream (the stateless 2026-07-28 era).
    pub fn never_initialized(&self) -> bool {
        self.http().is_some_and(|http| http.never_initialized())
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
/// the server): to the session's upstream.
impl Deliver for SessionLink {
    fn deliver(&self, msg: Message) -> impl Future<Output = Result<(), Closed>> + Send {
        self.upstream.deliver(msg)
    }
}
