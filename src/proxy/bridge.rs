//! `shadowcat forward stdio --url <URL>`: a stdio client bridged to a remote MCP server over
//! Streamable HTTP (or the 2024-11-05 HTTP+SSE transport, found by the spec's back-compat probe).
//!
//! The client's messages run through the pipeline and then one [`HttpSession`], the same code
//! the reverse proxy's sessions use: the upstream's session id kept and never shown, JSON or SSE
//! answers (bounded), the upstream's own GET stream relayed, configured headers on every request.
//! Everything the server sends comes back through the pipeline to our stdout, in order and with
//! backpressure.
//!
//! Requests are exchanged concurrently (each waits for its own answer); notifications and
//! responses are handed to the upstream before the next client message is read, so nothing
//! overtakes them. When the client closes stdin, the in-flight requests get
//! `--shutdown-timeout` to finish, then the upstream session is DELETEd (any 2xx will do) and we
//! exit 0.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::config::{Config, UpstreamConfig};
use crate::protocol::headers::{headers_for, param_headers_for};
use crate::protocol::{Direction, Kind, Message};
use crate::session::{EndReason, Session, SessionManager, TransportKind};
use crate::telemetry::{Metrics, UpstreamErrors};
use crate::transport::{stdio, writer};

use super::outbox::{Closed, DEFAULT_QUEUE_BYTES, DEFAULT_QUEUE_CAPACITY, Deliver, Outbox};
use super::pipeline::Pipeline;
use super::relay::{Relay, RelayEnd};
use super::shutdown::Shutdown;
use super::upstream::http::{
    Audience, HttpBackend, HttpLimits, HttpSession, client_for, start_credentials, version_header,
};
use crate::task::Task;

/// Why the bridge is stopping.
#[derive(Debug)]
enum Event {
    /// The client closed our stdin (or reading it failed).
    ClientClosed(RelayEnd),
    /// The client stopped reading our stdout.
    ClientGone,
    /// SIGINT or SIGTERM.
    Signal(&'static str),
    /// The session ended under us (the upstream lost it, or the manager expired it).
    SessionEnded,
}

/// The session at the upstream; what the server sends goes to our stdout.
type Link = HttpSession<Arc<Outbox>>;

/// The upstream side as the client's relay sees it: each message is exchanged with the HTTP
/// upstream, and what comes back goes to the client.
struct ToServer {
    http: Arc<Link>,
    to_client: Arc<Outbox>,
    /// Requests being exchanged.
    in_flight: TaskTracker,
}

impl Deliver for ToServer {
    async fn deliver(&self, msg: Message) -> Result<(), Closed> {
        let request = msg.kind() == Kind::Request;
        let (http, to_client) = (self.http.clone(), self.to_client.clone());
        // The headers an HTTP client would send: the negotiated protocol version, or the
        // stateless era's mirrored headers, `Mcp-Param-*` too for the tools the upstream's
        // `tools/list` answers say mirror parameters.
        let mut headers = headers_for(&msg, version_header(&self.http.session));
        if headers.contains_key("mcp-method") {
            if let Ok(Some(params)) = self.http.backend().mirrored().of(&msg) {
                for (header, value) in param_headers_for(&msg, &params) {
                    headers.insert(header, value);
                }
            }
        }
        let exchange = async move {
            http.exchange_to(
                vec![msg],
                &headers,
                to_client.as_ref(),
                usize::from(request),
            )
            .await;
        };
        if request {
            // A request waits for its own answer; the client may send more meanwhile.
            self.in_flight.spawn(exchange.in_current_span());
        } else {
            // Notifications and responses reach the upstream before the next message is read.
            exchange.await;
        }
        Ok(())
    }
}

/// Runs the bridge until the client or the session ends; returns our exit code.
pub async fn run(
    config: &Config,
    upstream: &UpstreamConfig,
    sessions: &Arc<SessionManager>,
    observers: &crate::telemetry::Observers,
    shutdown: Shutdown,
) -> anyhow::Result<u8> {
    let pipeline = Pipeline::for_mode(
        config,
        Arc::new(Metrics::default()),
        sessions.clone(),
        observers,
        None,
    );
    let credentials = start_credentials(upstream).await?;
    let backend = HttpBackend::new(
        client_for(upstream, credentials),
        HttpLimits::of(config, upstream),
        pipeline.clone(),
        sessions.clone(),
        UpstreamErrors::default(),
        Audience::Operator,
    );
    let result = bridge(config, &backend, sessions, shutdown).await;
    tracing::info!(totals = %pipeline.metrics().snapshot(), "shadowcat exiting");
    result
}

async fn bridge(
    config: &Config,
    backend: &Arc<HttpBackend>,
    sessions: &Arc<SessionManager>,
    mut signals: Shutdown,
) -> anyhow::Result<u8> {
    let (client_in, _) = stdio::stdin().context("cannot open stdin")?;
    let (client_out, _) = stdio::stdout().context("cannot open stdout")?;
    let queue_bytes = DEFAULT_QUEUE_BYTES.max(config.max_message_size);
    let (to_client, client_rx, client_close) = Outbox::new(DEFAULT_QUEUE_CAPACITY, queue_bytes);
    let to_client = Arc::new(to_client);
    let shown = backend.client().shown().to_owned();
    let session = sessions
        .create(TransportKind::Stdio, Some(shown.clone()))
        .context("cannot open the session")?;
    if let Some(recording) = &config.recording {
        if let Err(e) = super::pipeline::start_recording(recording, &session) {
            tracing::error!(session = %session.id().digest(), "{e:#}; the session goes on unrecorded");
        }
    }
    let http = backend.session(session.clone(), to_client.clone());
    let span = tracing::info_span!("session", id = %session.id().digest());
    async {
        tracing::info!(upstream = %shown, "bridging stdio to the MCP server");
        // The client always listens: the upstream's GET stream is relayed once its session
        // exists.
        let listening = tokio_util::sync::CancellationToken::new();
        listening.cancel();
        let mut listener = Task::spawn("upstream-listener", {
            let http = http.clone();
            async move { http.serve(&listening).await }
        });
        let mut timeouts = spawn_timeouts(config, &session, &http, &to_client);
        let upstream = Arc::new(ToServer {
            http: http.clone(),
            to_client: to_client.clone(),
            in_flight: TaskTracker::new(),
        });
        let relay = Relay {
            direction: Direction::ClientToServer,
            pipeline: backend.pipeline().clone(),
            session: session.clone(),
            to_sender: to_client.clone(),
            to_receiver: upstream.clone(),
            max_message_size: config.max_message_size,
        };
        let mut client_reader = Task::spawn("client-reader", relay.run(client_in));
        let mut client_writer = Task::spawn(
            "client-writer",
            writer::write_lines(client_rx, client_out, client_close),
        );
        let event = tokio::select! {
            end = client_reader.join() => Event::ClientClosed(end.unwrap_or(RelayEnd::Eof)),
            _ = client_writer.join() => Event::ClientGone,
            () = session.closed_token().cancelled() => Event::SessionEnded,
            name = signals.recv() => Event::Signal(name),
        };
        tracing::debug!(?event, "shutting down");
        let code = wind_down(config, &event, &mut signals, &upstream.in_flight).await;
        if let Event::SessionEnded = event {
            tracing::error!(
                state = %session.state(),
                "the session ended; the client must start again"
            );
        }
        // Ends the upstream session (DELETE) and answers whatever is still in flight.
        sessions.begin_closing(&session);
        sessions.end(session.id(), EndReason::Closed);
        listener.join_within(Duration::from_secs(1)).await;
        for watcher in &mut timeouts {
            watcher.abort();
        }
        let _ = tokio::time::timeout(config.shutdown_timeout + Duration::from_secs(1), http.end())
            .await;
        let error = super::upstream::session_ended(&session);
        super::upstream::answer_in_flight(&session, &error, to_client.as_ref()).await;
        super::pipeline::end_recording(&session).await;
        client_reader.abort();
        to_client.close();
        if client_writer
            .join_within(config.shutdown_timeout)
            .await
            .is_none()
        {
            tracing::debug!("the client writer ended without flushing everything");
        }
        Ok(code)
    }
    .instrument(span)
    .await
}

/// Logs why the bridge stops and, unless the client or the session is gone, lets the requests
/// in flight finish within `--shutdown-timeout` (a second signal stops the wait). The exit code.
async fn wind_down(
    config: &Config,
    event: &Event,
    signals: &mut Shutdown,
    in_flight: &TaskTracker,
) -> u8 {
    match event {
        Event::Signal(name) => tracing::info!(signal = name, "received a signal; shutting down"),
        Event::ClientClosed(RelayEnd::ReadError(e)) => {
            tracing::warn!(%e, "reading from the client failed");
        }
        _ => {}
    }
    match event {
        Event::ClientClosed(_) | Event::Signal(_) => {
            in_flight.close();
            tokio::select! {
                finished = tokio::time::timeout(config.shutdown_timeout, in_flight.wait()) => {
                    if finished.is_err() {
                        tracing::warn!("in-flight requests did not finish within --shutdown-timeout");
                    }
                }
                name = signals.recv() => {
                    tracing::warn!(signal = name, "second signal: not waiting for in-flight requests");
                }
            }
            0
        }
        Event::ClientGone => 0,
        Event::SessionEnded => 1,
    }
}

/// `--request-timeout` watchers for both directions of the session.
fn spawn_timeouts(
    config: &Config,
    session: &Arc<Session>,
    http: &Arc<Link>,
    to_client: &Arc<Outbox>,
) -> Vec<Task<()>> {
    let timeout = config.timeouts();
    if !timeout.any() {
        return Vec::new();
    }
    vec![
        Task::spawn(
            "request-timeouts",
            super::timeouts::enforce(
                session.clone(),
                Direction::ClientToServer,
                timeout,
                to_client.clone(),
                http.clone(),
            ),
        ),
        Task::spawn(
            "server-request-timeouts",
            super::timeouts::enforce(
                session.clone(),
                Direction::ServerToClient,
                timeout,
                http.clone(),
                to_client.clone(),
            ),
        ),
    ]
}
