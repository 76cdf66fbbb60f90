//! The gateway's state: the sessions it carries, the upstream each is linked to, and the
//! exchange of one POST's messages with that upstream.
//!
//! Each session holds a [`SessionLink`]: a [`Router`] for its server→client messages and its
//! upstream, either a child process of its own (`reverse -- <cmd>`) or its session at the HTTP
//! upstream (the upstream's `Mcp-Session-Id`, which never reaches the client). A watcher task per
//! session tears the upstream down when the session ends, however it ends (DELETE, idle expiry,
//! eviction, shutdown, a crashed child), and answers whatever was still in flight.

use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use dashmap::DashMap;
use http::HeaderMap;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::config::{Config, ReverseConfig, ReverseUpstream};
use crate::protocol::error::ProxyError;
use crate::protocol::{Direction, ErrorCode, Kind, Message};
use crate::proxy::outbox::Deliver;
use crate::proxy::pipeline::Pipeline;
use crate::proxy::timeouts;
use crate::proxy::tracker::receiver_gone;
use crate::proxy::upstream::Pool;
use crate::proxy::upstream::http::{
    Audience, HttpBackend, HttpLimits, client_for, exchanger_for, pass_replies,
};
use crate::proxy::upstream::share::{ShareLimits, SharedChildren};
use crate::proxy::upstream::stdio::{StdioLink, StdioQueue};
use crate::proxy::upstream::supervise::ServerInbox;
use crate::session::{
    EndReason, Sealer, Session, SessionError, SessionId, SessionManager, TransportKind,
};
use crate::stage::{Client, Context, Verdict};
use crate::telemetry::{GatewayMetrics, Metrics};
use crate::transport::child::describe_exit;
use crate::transport::child::{Restart, Share};
use crate::transport::redis::Redis;
use crate::transport::serve::{ClientCounts, ClientSlot};

use super::events::shared::SharedStreams;
use super::events::{DEFAULT_REPLAY_BYTES, EventLog, Naming, PostStreams};
use super::router::{Delivery, Reply, ReplyTo, Router};

mod cluster;
mod link;
mod process;
mod readiness;

pub use crate::proxy::upstream::Upstream;
pub use crate::proxy::upstream::http::session_lost;
pub use crate::proxy::upstream::reply_channel;
pub use cluster::Named;
pub use link::{HttpLink, SessionLink};

/// How long a shared process without sessions is kept when `--pool-idle-timeout` is off.
const SHARED_LINGER: Duration = Duration::from_secs(10 * 60);

/// How long a crashed child's stdout may still be read for its last answers.
const STDOUT_DRAIN_GRACE: Duration = Duration::from_millis(250);

/// The server behind the gateway.
#[derive(Debug)]
pub enum Server {
    /// A Streamable HTTP endpoint, through one shared pooled client.
    Http(Arc<HttpBackend>),
    /// A command: a process per session, from its pool.
    Command(Pool),
}

/// Why a session could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The session manager is full.
    #[error(transparent)]
    Sessions(#[from] SessionError),
    /// The gateway is shutting down.
    #[error("shadowcat is shutting down")]
    ShuttingDown,
    /// The client already has its `--max-sessions-per-client` open.
    #[error(
        "this client already has {limit} sessions open and none is idle (--max-sessions-per-client)"
    )]
    ClientSessions {
        /// The bound.
        limit: usize,
    },
}

/// How a session's upstream came to be torn down.
#[derive(Debug)]
enum Ending {
    /// The session ended (or its child was never needed).
    Closed,
    /// Its child exited by itself.
    Exited(std::io::Result<std::process::ExitStatus>),
    /// Its server failed (its child could not be started, or the process it shared exited):
    /// the error its pending requests get.
    Failed(ProxyError),
}

/// The gateway.
#[derive(Debug)]
pub struct Gateway {
    /// Limits and timeouts.
    pub(in crate::proxy::reverse) config: Config,
    /// The gateway's own options.
    pub(in crate::proxy::reverse) reverse: ReverseConfig,
    /// The session manager.
    pub(in crate::proxy::reverse) sessions: Arc<SessionManager>,
    /// The pipeline.
    pub(in crate::proxy::reverse) pipeline: Arc<Pipeline>,
    /// The server behind us.
    pub(in crate::proxy::reverse) server: Server,
    /// What `/metrics` reports.
    pub(in crate::proxy::reverse) metrics: GatewayMetrics,
    links: DashMap<SessionId, Arc<SessionLink>>,
    /// Per-session watcher tasks.
    tasks: TaskTracker,
    /// Cancelled when shutdown begins: no new sessions.
    pub(in crate::proxy::reverse) stopping: CancellationToken,
    /// A command upstream's children for stateless (2026-07-28) requests, shared by them all
    /// (up to `--max-stateless-children`).
    stateless_children: Mutex<Vec<Arc<SessionLink>>>,
    /// The server requests of those children sent to stateless clients, under names of ours.
    pub(super) shared_aliases: Arc<super::alias::Shared>,
    /// Requests each client address has in flight at those children (a quarter of
    /// `--max-pending-requests` each, so that one client cannot take all the room).
    pub(super) stateless_in_flight: Arc<ClientCounts>,
    /// Sessions each client address has open (`--max-sessions-per-client`).
    client_sessions: Arc<ClientCounts>,
    /// The latest failure of a command upstream's server, for `/readyz`.
    child_failures: readiness::ChildFailures,
    /// The server processes sessions share (`--share always`).
    shared: Option<Arc<SharedChildren<Arc<Router>>>>,
    /// The checks of clients' tokens (`--auth-issuer`, `--api-key-file`).
    pub(in crate::proxy::reverse) auth: Option<Arc<crate::auth::Authenticator>>,
    /// The exchange of callers' tokens for the upstream's (`--upstream-token-exchange`).
    pub(in crate::proxy::reverse) exchange: Option<Arc<crate::transport::credentials::Exchanger>>,
    /// The cluster's keys, which seal the session ids clients are given (`--cluster-key-file`).
    sealer: Option<Arc<Sealer>>,
    /// Held while a session another instance opened is set up here, so that is done once.
    reopening: Mutex<()>,
    /// The Redis the cluster's instances share state through (`--redis-url`).
    redis: Option<Arc<Redis>>,
    /// Hears which sessions their clients ended through other instances.
    subscriber: Mutex<Option<crate::task::Task<()>>>,
    /// This instance as the others of the cluster reach it, once it listens (for sessions at
    /// a process, which other instances pass to it).
    peers: std::sync::OnceLock<Arc<super::peer::Peers>>,
    /// This run among the cluster's instances, and who else is up (in a cluster).
    members: Option<Arc<super::peer::Members>>,
    /// Keeps this instance on the cluster's list of those up (with Redis).
    heartbeat: Mutex<Option<crate::task::Task<()>>>,
    /// Copies of the sessions' SSE streams in Redis, for clients that resume them at another
    /// instance (a cluster with Redis and an HTTP upstream).
    shared_streams: Option<Arc<SharedStreams>>,
    /// Links to sessions opened so far (each names its streams apart, in a cluster).
    links_opened: std::sync::atomic::AtomicU64,
}

/// The Redis the cluster's instances share (`--redis-url`), if one is configured.
fn redis_of(reverse: &ReverseConfig) -> Option<Arc<Redis>> {
    let config = reverse.cluster.as_ref()?.redis.as_ref()?;
    match Redis::new(&config.url, config.timeout) {
        Ok(redis) => Some(Arc::new(redis)),
        Err(e) => {
            // The URL was checked with the configuration: not expected.
            tracing::error!(%e, "Redis cannot be used; this instance goes on without it");
            None
        }
    }
}

/// Where a stateless (2026-07-28) request goes.
#[derive(Debug)]
pub enum Stateless {
    /// A session of its own, ended with its POST (an HTTP upstream: the request is passed on
    /// as it is).
    Own(Arc<SessionLink>),
    /// The shared child of a command upstream (its ids and progress tokens are aliased there).
    Shared(Arc<SessionLink>),
}

impl Gateway {
    /// A gateway for `reverse`'s upstream, letting clients in as `auth` says (everyone without).
    pub fn new(
        config: Config,
        reverse: ReverseConfig,
        sessions: Arc<SessionManager>,
        auth: Option<Arc<crate::auth::Authenticator>>,
        credentials: Option<Arc<crate::transport::credentials::Credentials>>,
        observers: &crate::telemetry::Observers,
    ) -> Arc<Self> {
        let metrics = Arc::new(Metrics::default());
        let redis = redis_of(&reverse);
        let pipeline = Pipeline::for_mode(
            &config,
            metrics.clone(),
            sessions.clone(),
            observers,
            redis.clone(),
        );
        let mut gateway_metrics = GatewayMetrics::new(sessions.clone(), metrics);
        if let Some(redis) = &redis {
            gateway_metrics.redis(redis.clone());
        }
        if let Some(tracer) = &observers.tracer {
            gateway_metrics.trace_export(tracer.clone());
        }
        if let Some(feed) = &observers.feed {
            gateway_metrics.live_feed(feed.clone());
        }
        let upstream = match &reverse.upstream {
            ReverseUpstream::Http(upstream) => Server::Http(HttpBackend::new(
                client_for(upstream, credentials),
                HttpLimits::of(&config, upstream),
                pipeline.clone(),
                sessions.clone(),
                gateway_metrics.upstream_errors(),
                Audience::Callers,
            )),
            ReverseUpstream::Stdio(spec) => Server::Command(Pool::new(
                spec.clone(),
                reverse.pool,
                // Every session's process, the spares, and the stateless requests' shared ones.
                config.sessions.max_sessions
                    + reverse.pool.min_idle
                    + reverse.pool.max_stateless_children,
                gateway_metrics.children(),
            )),
        };
        let shared = match (&upstream, reverse.pool.share) {
            (Server::Command(pool), Share::Always) => Some(SharedChildren::new(
                pool.clone(),
                pipeline.clone(),
                gateway_metrics.children(),
                ShareLimits {
                    max_members: reverse.pool.max_sessions_per_child,
                    max_message_size: config.max_message_size,
                    shutdown_timeout: config.shutdown_timeout,
                    linger: reverse.pool.idle_timeout.unwrap_or(SHARED_LINGER),
                    restart: reverse.pool.restart,
                },
            )),
            _ => None,
        };
        let sealer = reverse.cluster.as_ref().and_then(|c| c.sealer.clone());
        let members = sealer
            .as_ref()
            .map(|_| Arc::new(super::peer::Members::new()));
        let shared_streams = match (&redis, &members, &upstream) {
            (Some(redis), Some(_), Server::Http(_)) => Some(Arc::new(SharedStreams::new(
                redis.clone(),
                reverse.sse_replay_events,
                config.sessions.idle_timeout,
            ))),
            _ => None,
        };
        let gateway = Arc::new(Self {
            redis,
            subscriber: Mutex::new(None),
            peers: std::sync::OnceLock::new(),
            members,
            heartbeat: Mutex::new(None),
            shared_streams,
            links_opened: std::sync::atomic::AtomicU64::new(1),
            auth,
            sealer,
            exchange: reverse.http_upstream().and_then(exchanger_for),
            shared,
            pipeline,
            metrics: gateway_metrics,
            config,
            reverse,
            sessions,
            server: upstream,
            links: DashMap::new(),
            tasks: TaskTracker::new(),
            stopping: CancellationToken::new(),
            stateless_children: Mutex::new(Vec::new()),
            shared_aliases: Arc::default(),
            stateless_in_flight: Arc::default(),
            client_sessions: Arc::default(),
            child_failures: readiness::ChildFailures::default(),
            reopening: Mutex::new(()),
        });
        gateway.listen_for_ends();
        gateway.keep_listed();
        gateway
    }

    /// The upstream, as sessions record it (secret-looking arguments masked).
    fn upstream_label(&self) -> String {
        match &self.server {
            Server::Http(backend) => backend.client().shown().to_owned(),
            Server::Command(pool) => {
                let spec = pool.spec();
                crate::tape::redact::command::command(&spec.program, &spec.args, &spec.env).shown
            }
        }
    }

    /// The HTTP upstream's tools that mirror parameters into `Mcp-Param-*` headers (none for a
    /// command upstream: the shared child's are its link's).
    pub fn mirrored(&self) -> Option<&crate::protocol::headers::MirroredTools> {
        match &self.server {
            Server::Http(backend) => Some(backend.mirrored()),
            Server::Command(_) => None,
        }
    }

    /// The open session `id`, with its upstream.
    pub fn link(&self, id: &SessionId) -> Option<Arc<SessionLink>> {
        self.links.get(id).map(|l| l.value().clone())
    }

    /// Runs `task` as one of the gateway's own (awaited at shutdown, within its limit).
    pub fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        self.tasks.spawn(task);
    }

    /// Sessions open now.
    pub fn open_sessions(&self) -> usize {
        self.links.len()
    }

    /// A place for one more session of `client` under `--max-sessions-per-client` (the local
    /// client of a bridge, and the gateway's own shared child, are not counted). A client at
    /// its cap makes way with its own least recently used idle session, as `--max-sessions`
    /// does with anyone's; with none idle, it is refused.
    fn client_slot(&self, client: Client<'_>) -> Result<Option<ClientSlot>, OpenError> {
        let Client::Address(address) = client else {
            return Ok(None);
        };
        let limit = self.reverse.max_sessions_per_client;
        let address = address.to_canonical();
        if let Some(slot) = ClientCounts::take(&self.client_sessions, address, limit) {
            return Ok(Some(slot));
        }
        let idle = self
            .links
            .iter()
            .filter(|l| l.client() == Some(address) && !l.session.is_busy())
            .min_by_key(|l| l.session.last_activity())
            .map(|l| l.value().clone());
        if let Some(victim) = idle {
            if self
                .sessions
                .end(victim.session.id(), EndReason::Evicted)
                .is_some()
            {
                tracing::info!(session = %victim.session.id().digest(), "evicted the client's least recently used idle session (--max-sessions-per-client)");
                victim.release_client();
                if let Some(slot) = ClientCounts::take(&self.client_sessions, address, limit) {
                    return Ok(Some(slot));
                }
            }
        }
        self.sessions.count_refused();
        Err(OpenError::ClientSessions { limit })
    }

    /// Opens a session for `client` on `transport`, whose messages from the server reach it as
    /// `delivery` says: a manager session, and for a stdio upstream its own child (started by
    /// the session's watcher when the first message is on its way). The client's own cap is
    /// checked before anything is created.
    pub fn open_session(
        self: &Arc<Self>,
        transport: TransportKind,
        client: Client<'_>,
        delivery: Delivery,
    ) -> Result<Arc<SessionLink>, OpenError> {
        self.open_link(transport, client, delivery, true)
    }

    /// [`Self::open_session`], kept in the history or not (a stateless request's own).
    fn open_link(
        self: &Arc<Self>,
        transport: TransportKind,
        client: Client<'_>,
        delivery: Delivery,
        kept: bool,
    ) -> Result<Arc<SessionLink>, OpenError> {
        if self.stopping.is_cancelled() {
            return Err(OpenError::ShuttingDown);
        }
        let client_slot = self.client_slot(client)?;
        let label = Some(self.upstream_label());
        let session = if kept {
            self.sessions.create(transport, label)?
        } else {
            self.sessions.create_unkept(transport, label)?
        };
        self.record(&session);
        let naming = self.naming(session.id());
        let events = Some(self.event_log(&naming));
        let (upstream, router, child) = match &self.server {
            Server::Http(backend) => {
                let router = Arc::new(Router::new(session.clone(), events, delivery, None));
                let http = backend.session(session.clone(), router.clone());
                (Upstream::Http(http), router, None)
            }
            Server::Command(_) if self.shared.is_some() => {
                let router = Arc::new(Router::new(session.clone(), events, delivery, None));
                let upstream = match &self.shared {
                    Some(shared) => {
                        Upstream::Shared(Arc::new(shared.member(session.clone(), router.clone())))
                    }
                    None => return Err(OpenError::ShuttingDown),
                };
                (upstream, router, None)
            }
            Server::Command(_) => {
                let (upstream, router, queue) = self.own_process(&session, events, delivery);
                (upstream, router, Some(queue))
            }
        };
        let link = Arc::new(SessionLink::new(
            session,
            router,
            upstream,
            client_slot,
            self.post_streams(&naming),
        ));
        self.install(&link, child);
        Ok(link)
    }

    /// A session's way to a process of its own. The server is started when the session's
    /// first message is on its way (so a session whose initialize a rate limit or rule
    /// refuses, or a /sse stream that sends nothing, costs no process); until then what is
    /// sent waits in the queue.
    fn own_process(
        &self,
        session: &Arc<Session>,
        events: Option<Arc<EventLog>>,
        delivery: Delivery,
    ) -> (Upstream<Arc<Router>>, Arc<Router>, StdioQueue) {
        let queue = StdioQueue::new(self.config.max_message_size);
        let router = Arc::new(Router::new(
            session.clone(),
            events,
            delivery,
            Some(queue.to_server.clone()),
        ));
        let inbox = (self.reverse.pool.restart == Restart::OnFailure)
            .then(|| Arc::new(ServerInbox::new(queue.to_server.clone(), session.clone())));
        let upstream = Upstream::Stdio {
            to_server: queue.to_server.clone(),
            start: CancellationToken::new(),
            inbox,
        };
        (upstream, router, queue)
    }

    /// How session `id`'s streams are named, and where they are copied: in a cluster, named
    /// for this run (and with Redis and an HTTP upstream, copied for the other instances).
    fn naming(&self, id: &SessionId) -> Naming {
        match &self.members {
            Some(members) => Naming::cluster(
                members.run(),
                self.links_opened
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed),
                self.shared_streams.clone().map(|s| (s, id.clone())),
            ),
            None => Naming::default(),
        }
    }

    /// A new session's log of its GET stream's events, for clients that resume it.
    fn event_log(&self, naming: &Naming) -> Arc<EventLog> {
        Arc::new(naming.get_log(self.reverse.sse_replay_events, DEFAULT_REPLAY_BYTES))
    }

    /// A new session's POST streams.
    fn post_streams(&self, naming: &Naming) -> PostStreams {
        PostStreams::new(
            self.reverse.sse_replay_events,
            DEFAULT_REPLAY_BYTES,
            naming.clone(),
        )
    }

    /// The copies of sessions' streams in Redis (a cluster with Redis and an HTTP upstream).
    pub(in crate::proxy::reverse) fn shared_streams(&self) -> Option<&Arc<SharedStreams>> {
        self.shared_streams.as_ref()
    }

    /// Makes `link` the open session of its id, watched until it ends.
    fn install(self: &Arc<Self>, link: &Arc<SessionLink>, child: Option<StdioQueue>) {
        self.links.insert(link.session.id().clone(), link.clone());
        let span = tracing::info_span!("session", id = %link.session.id().digest());
        self.tasks
            .spawn(self.clone().watch(link.clone(), child).instrument(span));
    }

    /// Where one stateless (2026-07-28) request goes. To an HTTP upstream: a session of its
    /// own, tracked by the manager and the pipeline like any other, never addressable by the
    /// client, ended as soon as the request is over. To a command upstream: with `--share
    /// never` a process of its own; else one of the children that serve every stateless
    /// request, never sent `initialize` ([`Self::stateless_child`]). `answering`: the id of
    /// a server request the POST answers, which goes to the child that asked.
    pub fn open_stateless(
        self: &Arc<Self>,
        caller: Client<'_>,
        answering: Option<&crate::protocol::RequestId>,
    ) -> Result<Stateless, OpenError> {
        if self.stopping.is_cancelled() {
            return Err(OpenError::ShuttingDown);
        }
        let backend = match &self.server {
            Server::Http(backend) => backend,
            Server::Command(_) if self.reverse.pool.share == Share::Never => {
                // A process of its own, stopped when the request is over.
                let link =
                    self.open_link(TransportKind::Http, caller, Delivery::Streamable, false)?;
                return Ok(Stateless::Own(link));
            }
            Server::Command(_) => return self.stateless_child(answering).map(Stateless::Shared),
        };
        let client_slot = self.client_slot(caller)?;
        let session = self
            .sessions
            .create_unkept(TransportKind::Http, Some(self.upstream_label()))?;
        self.record(&session);
        let naming = self.naming(session.id());
        let router = Arc::new(Router::new(
            session.clone(),
            None,
            Delivery::Streamable,
            None,
        ));
        let http = backend.session(session.clone(), router.clone());
        Ok(Stateless::Own(Arc::new(SessionLink::new(
            session,
            router,
            Upstream::Http(http),
            client_slot,
            self.post_streams(&naming),
        ))))
    }

    /// The child for a stateless request: the one that asked, for an answer to its request;
    /// else the running one with the fewest requests in flight, unless every one has some and
    /// fewer than `--max-stateless-children` run: then another is started (its process from the
    /// pool with the request). Each is a session of the gateway's own (ended like any other:
    /// crashed, idle expired, evicted), and one that ended is replaced.
    fn stateless_child(
        self: &Arc<Self>,
        answering: Option<&crate::protocol::RequestId>,
    ) -> Result<Arc<SessionLink>, OpenError> {
        let mut children = self
            .stateless_children
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        children.retain(|link| !link.session.closed_token().is_cancelled());
        let asker = answering.and_then(|id| self.shared_aliases.asker(id));
        if let Some(asker) = asker {
            if let Some(link) = children.iter().find(|l| l.session.id() == &asker) {
                return Ok(link.clone());
            }
        }
        let least_busy = children
            .iter()
            .min_by_key(|link| link.session.pending(Direction::ClientToServer).len());
        if let Some(link) = least_busy {
            let idle = link.session.pending(Direction::ClientToServer).is_empty();
            if idle || children.len() >= self.reverse.pool.max_stateless_children {
                return Ok(link.clone());
            }
        }
        // Opening is synchronous: no await while the list is locked.
        let link = self.open_session(TransportKind::Http, Client::Local, Delivery::Shared)?;
        tracing::info!(
            session = %link.session.id().digest(),
            running = children.len() + 1,
            "started an MCP server for stateless (2026-07-28) requests"
        );
        children.push(link.clone());
        Ok(link)
    }

    /// Starts recording `session` if `--record` asks for it.
    fn record(&self, session: &Session) {
        if let Some(recording) = &self.config.recording {
            if let Err(e) = crate::proxy::pipeline::start_recording(recording, session) {
                tracing::error!(session = %session.id().digest(), "{e:#}; the session goes on unrecorded");
            }
        }
    }

    /// Ends session `id` (a client's DELETE) and waits, up to the shutdown timeout, for its
    /// upstream side to be torn down. False if there was no such session.
    pub async fn close_session(&self, id: &SessionId) -> bool {
        let Some(link) = self.link(id) else {
            return false;
        };
        self.sessions.begin_closing(&link.session);
        self.sessions.end(id, EndReason::Closed);
        self.announce_end(id).await;
        let limit = self.config.shutdown_timeout + Duration::from_secs(2);
        let _ = tokio::time::timeout(limit, link.torn_down.cancelled()).await;
        true
    }

    /// Ends every session and waits (bounded) for their upstreams to be torn down.
    pub async fn close_all(&self, limit: Duration) {
        self.stopping.cancel();
        self.sessions.end_all(EndReason::Killed);
        self.tasks.close();
        // The spares, never used, are stopped alongside (and the shared processes).
        let grace = self.config.shutdown_timeout.min(limit);
        let spares = async {
            match (&self.server, &self.shared) {
                (_, Some(shared)) => shared.close(grace).await,
                (Server::Command(pool), None) => pool.close(grace).await,
                (Server::Http(_), None) => {}
            }
        };
        let torn_down = async { tokio::join!(self.tasks.wait(), spares) };
        if tokio::time::timeout(limit, torn_down).await.is_err() {
            tracing::warn!("some sessions' upstreams were not torn down in time");
        }
        // They stop with `stopping`.
        for task in [&self.subscriber, &self.heartbeat] {
            let task = task.lock().unwrap_or_else(PoisonError::into_inner).take();
            if let Some(mut task) = task {
                task.join_within(Duration::from_secs(1)).await;
            }
        }
    }

    /// Watches one session until it ends, then tears its upstream down and answers what was
    /// still in flight.
    async fn watch(self: Arc<Self>, link: Arc<SessionLink>, child: Option<StdioQueue>) {
        let watchers = self.spawn_timeouts(&link);
        let (child, ending) = if let Upstream::Shared(member) = &link.upstream {
            (None, self.join_shared(&link, member).await)
        } else if let Some(queue) = child {
            match self.start_child(&link, queue).await {
                Ok(Some(child)) => Box::pin(self.serve_child(&link, child)).await,
                Ok(None) => (None, Ending::Closed),
                Err(error) => (None, Ending::Failed(error)),
            }
        } else {
            // An HTTP upstream: its GET stream relayed once the client listens.
            if let Upstream::Http(http) = &link.upstream {
                http.serve(&link.listening).await;
            }
            (None, Ending::Closed)
        };
        for watcher in &watchers {
            watcher.abort();
        }
        // Boxed: the waiting above is what stays resident per session; this part is bigger
        // and only exists for a moment.
        Box::pin(self.tear_down(link, child, ending)).await;
    }

    /// Tears a session's upstream down and answers whatever was still in flight.
    async fn tear_down(
        &self,
        link: Arc<SessionLink>,
        mut child: Option<StdioLink>,
        ending: Ending,
    ) {
        let session = link.session.clone();
        let crashed = matches!(ending, Ending::Exited(_));
        let error = match (ending, child.as_mut()) {
            (Ending::Exited(status), Some(child)) => {
                child.server_reader.join_within(STDOUT_DRAIN_GRACE).await;
                child.child.finish_stderr(STDOUT_DRAIN_GRACE).await;
                let status = match status {
                    Ok(status) => describe_exit(status),
                    Err(e) => e.to_string(),
                };
                tracing::warn!(%status, "the MCP server exited; ending its session");
                self.metrics.upstream_error("exited");
                if session.frames(Direction::ServerToClient) == 0 {
                    let stderr = child.child.stderr_tail().lines();
                    let last = stderr
                        .last()
                        .map_or(String::new(), |l| format!("; stderr: {l}"));
                    self.child_failures.record(format!(
                        "the MCP server exited before it said anything ({status}){last}"
                    ));
                }
                self.sessions.end(session.id(), EndReason::Error);
                ProxyError::new(
                    ErrorCode::UpstreamExited,
                    format!("the MCP server exited unexpectedly ({status})"),
                )
                .with("stderr", child.child.stderr_tail().lines())
            }
            (Ending::Failed(error), _) => error,
            (Ending::Closed | Ending::Exited(_), _) => {
                tracing::info!(state = %session.state(), "session ended; closing its upstream");
                crate::proxy::upstream::session_ended(&session)
            }
        };
        self.links.remove(session.id());
        link.release_client();
        match child.as_mut() {
            Some(child) => {
                if !crashed {
                    match child.shut_down(self.config.shutdown_timeout).await {
                        Ok(status) => {
                            tracing::info!(status = %describe_exit(status), "the MCP server exited");
                        }
                        Err(e) => tracing::warn!(%e, "waiting for the MCP server failed"),
                    }
                    child.server_reader.join_within(STDOUT_DRAIN_GRACE).await;
                }
                child.abort();
            }
            None => match &link.upstream {
                // Other instances serve a roaming session too: only its client's DELETE
                // ends it at the upstream (else the upstream's own expiry does).
                Upstream::Http(_)
                    if session.roams()
                        && (session.state()
                            != crate::session::State::Closed(EndReason::Closed)
                            || link.ended_elsewhere()) => {}
                Upstream::Http(http) => http.end().await,
                Upstream::Shared(member) => member.leave().await,
                Upstream::Stdio { .. } => {}
            },
        }
        // Whatever is still in flight gets an answer; then nothing more can arrive.
        crate::proxy::upstream::answer_in_flight(&session, &error, link.router.as_ref()).await;
        link.router.close();
        crate::proxy::pipeline::end_recording(&session).await;
        // Over for good (not this instance's shutdown, after which another takes it over).
        if session.state() != crate::session::State::Closed(EndReason::Killed) {
            self.forget_handshake(&link).await;
        }
        link.torn_down.cancel();
    }

    /// `--request-timeout` watchers for both directions of a session.
    fn spawn_timeouts(&self, link: &Arc<SessionLink>) -> Vec<tokio::task::JoinHandle<()>> {
        let timeout = self.config.timeouts();
        if !timeout.any() {
            return Vec::new();
        }
        let session = &link.session;
        vec![
            tokio::spawn(timeouts::enforce(
                session.clone(),
                Direction::ClientToServer,
                timeout,
                link.router.clone(),
                link.clone(),
            )),
            tokio::spawn(timeouts::enforce(
                session.clone(),
                Direction::ServerToClient,
                timeout,
                link.clone(),
                link.router.clone(),
            )),
        ]
    }

    /// Sends a client's messages upstream for a client with one way in for everything (a
    /// 2024-11-05 stream): what comes back (answers, the server's own messages, errors for what
    /// the upstream refused) goes to `sink`. An HTTP upstream that no longer knows the session
    /// (404) ends it too ([`HttpSession::exchange_to`](crate::proxy::upstream::HttpSession::exchange_to)).
    pub async fn exchange_to<D: Deliver>(
        self: &Arc<Self>,
        link: &Arc<SessionLink>,
        messages: Vec<Message>,
        client_headers: &HeaderMap,
        sink: &D,
        requests: usize,
    ) {
        if let Upstream::Http(http) = &link.upstream {
            return http
                .exchange_to(messages, client_headers, sink, requests)
                .await;
        }
        let (reply, replies) = reply_channel(requests);
        // `reply` is dropped when the exchange is over, which ends the drain.
        let exchange = async {
            self.exchange(link, messages, client_headers, &reply).await;
            drop(reply);
        };
        tokio::join!(exchange, pass_replies(replies, sink));
    }

    /// Runs one message from `client` through the pipeline (client→server), and counts what
    /// became of it (forwarded, or answered by the proxy): every endpoint that takes client
    /// messages goes through here. A request that finds its session's pending table full is
    /// held up to `--pending-wait` for an answer to free room (the client is slowed down
    /// first); if none does, the tracker refuses it (-32083).
    pub async fn inbound(
        &self,
        session: &Session,
        msg: Message,
        client: Client<'_>,
        header_trace: Option<&str>,
    ) -> Verdict {
        let verdict = self.screen(session, msg, client, header_trace).await;
        let metrics = self.pipeline.metrics();
        match &verdict {
            Verdict::Forward(_) => metrics.forwarded(Direction::ClientToServer),
            Verdict::Respond(_) => metrics.answered_by_proxy(Direction::ClientToServer),
            Verdict::Drop => {}
        }
        verdict
    }

    /// The answer to a client's member that is not a valid message, counted.
    pub fn malformed(&self, e: &crate::protocol::ParseError) -> bytes::Bytes {
        self.pipeline.metrics().malformed(Direction::ClientToServer);
        e.to_response().raw().clone()
    }

    async fn screen(
        &self,
        session: &Session,
        msg: Message,
        client: Client<'_>,
        header_trace: Option<&str>,
    ) -> Verdict {
        let pending = session.pending(Direction::ClientToServer);
        if msg.kind() == Kind::Request && !pending.has_room() {
            let room = pending.room();
            if tokio::time::timeout(self.reverse.pending_wait, room)
                .await
                .is_err()
            {
                tracing::debug!(session = %session.id().digest(), "no room for a request within --pending-wait");
            }
        }
        let cx = Context {
            direction: Direction::ClientToServer,
            session,
            transport: &crate::tape::Wire::NONE,
            client,
            header_trace,
            notes: None,
        };
        self.pipeline.process(msg, cx).await
    }

    /// Sends forwarded client messages upstream. Answers arrive at `reply` (and, for requests,
    /// through the session's router, where the caller registered their ids). For an HTTP
    /// upstream this returns once the upstream has answered every message (for a request that
    /// streams, once the stream is over).
    pub async fn exchange(
        self: &Arc<Self>,
        link: &Arc<SessionLink>,
        messages: Vec<Message>,
        client_headers: &HeaderMap,
        reply: &ReplyTo,
    ) {
        match &link.upstream {
            Upstream::Stdio { .. } | Upstream::Shared(_) => {
                // The session's process is started (or picked) with its first message.
                for msg in messages {
                    let (is_request, id) = (msg.kind() == Kind::Request, msg.id().cloned());
                    if link.upstream.deliver(msg).await.is_err() {
                        if let (true, Some(id)) = (is_request, id) {
                            link.session.pending(Direction::ClientToServer).remove(&id);
                            let error = receiver_gone(Direction::ClientToServer);
                            let _ = reply
                                .send(Reply::Message(Message::error_response(Some(&id), &error)))
                                .await;
                        }
                    }
                }
            }
            Upstream::Http(http) => {
                http.exchange(messages, client_headers, reply).await;
            }
        }
    }
}
