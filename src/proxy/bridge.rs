//! `shadowcat forward stdio --url <URL>`: a stdio client bridged to a remote MCP server over
//! Streamable HTTP (or the 2024-11-05 HTTP+SSE transport, found by the spec's back-compat probe).
//!
//! The client's messages run through the pipeline and then the gateway's HTTP upstream side, the
//! same code the reverse proxy uses: the upstream's session id kept and never shown, JSON or SSE
//! answers (bounded), the upstream's own GET stream relayed, configured headers on every request.
//! Everything the server sends comes back through the pipeline, and the session's router hands
//! all of it to our stdout, in order and with backpressure.
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

use crate::config::{Config, ReverseConfig};
use crate::protocol::{Direction, Kind, Message};
use crate::session::{EndReason, SessionManager, StoreWriter, TransportKind};
use crate::transport::{stdio, writer};

use super::forward::{STORE_CLOSE_GRACE, Signals};
use super::outbox::{Closed, DEFAULT_QUEUE_BYTES, DEFAULT_QUEUE_CAPACITY, Deliver, Outbox};
use super::relay::{Relay, RelayEnd};
use super::reverse::gateway::{Gateway, SessionLink};
use crate::protocol::headers::headers_for;
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

/// The upstream side as the client's relay sees it: each message is exchanged with the HTTP
/// upstream, and what comes back goes to the client.
struct Upstream {
    gateway: Arc<Gateway>,
    link: Arc<SessionLink>,
    to_client: Arc<Outbox>,
    /// Requests being exchanged.
    in_flight: TaskTracker,
}

impl Deliver for Upstream {
    async fn deliver(&self, msg: Message) -> Result<(), Closed> {
        let request = msg.kind() == Kind::Request;
        let (gateway, link, to_client) = (
            self.gateway.clone(),
            self.link.clone(),
            self.to_client.clone(),
        );
        // The headers an HTTP client would send: the negotiated protocol version, or the
        // stateless era's mirrored headers, `Mcp-Param-*` too for the tools the upstream's
        // `tools/list` answers say mirror parameters.
        let mut headers = headers_for(&msg, self.link.protocol_version());
        if headers.contains_key("mcp-method") {
            if let Ok(Some(params)) = self.gateway.mirrored.of(&msg) {
                for (header, value) in crate::protocol::headers::param_headers_for(&msg, &params) {
                    headers.insert(header, value);
                }
            }
        }
        let exchange = async move {
            gateway
                .exchange_to(
                    &link,
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
    upstream: &ReverseConfig,
    store: Option<StoreWriter>,
) -> anyhow::Result<u8> {
    let sessions = SessionManager::new(config.sessions.clone(), store);
    let gateway = Gateway::new(config.clone(), upstream.clone(), sessions.clone());
    let stop_cleanup = tokio_util::sync::CancellationToken::new();
    let mut cleanup = sessions.spawn_cleanup(config.cleanup_interval, stop_cleanup.clone());
    let result = bridge(config, &gateway).await;
    gateway
        .close_all(config.shutdown_timeout + Duration::from_secs(1))
        .await;
    stop_cleanup.cancel();
    cleanup.join_within(Duration::from_secs(1)).await;
    tracing::info!(totals = ?gateway.pipeline.metrics().snapshot(), "shadowcat exiting");
    let closing = sessions.clone();
    let _ = tokio::task::spawn_blocking(move || closing.close_store(STORE_CLOSE_GRACE)).await;
    result
}

async fn bridge(config: &Config, gateway: &Arc<Gateway>) -> anyhow::Result<u8> {
    // Listen before starting anything, so a signal never finds the default (fatal) handler.
    let mut signals = Signals::listen()?;
    let (client_in, _) = stdio::stdin().context("cannot open stdin")?;
    let (client_out, _) = stdio::stdout().context("cannot open stdout")?;
    let queue_bytes = DEFAULT_QUEUE_BYTES.max(config.max_message_size);
    let (to_client, client_rx, client_close) = Outbox::new(DEFAULT_QUEUE_CAPACITY, queue_bytes);
    let to_client = Arc::new(to_client);
    let link = gateway
        .open_session(
            TransportKind::Stdio,
            crate::stage::Client::Local,
            crate::proxy::reverse::router::Delivery::Sink(to_client.clone()),
        )
        .context("cannot open the session")?;
    let span = tracing::info_span!("session", id = %link.session.id().digest());
    async {
        tracing::info!(upstream = %upstream_label(gateway), "bridging stdio to the MCP server");
        // The client always listens: the upstream's GET stream is relayed once its session
        // exists.
        link.listening.cancel();
        let upstream = Arc::new(Upstream {
            gateway: gateway.clone(),
            link: link.clone(),
            to_client: to_client.clone(),
            in_flight: TaskTracker::new(),
        });
        let relay = Relay {
            direction: Direction::ClientToServer,
            pipeline: gateway.pipeline.clone(),
            session: link.session.clone(),
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
            () = link.session.closed_token().cancelled() => Event::SessionEnded,
            name = signals.recv() => Event::Signal(name),
        };
        tracing::debug!(?event, "shutting down");
        match &event {
            Event::Signal(name) => tracing::info!(signal = name, "received a signal; shutting down"),
            Event::ClientClosed(RelayEnd::ReadError(e)) => {
                tracing::warn!(%e, "reading from the client failed");
            }
            _ => {}
        }
        let code = match event {
            Event::ClientClosed(_) | Event::Signal(_) => {
                // In-flight requests may finish (a second signal stops the wait).
                upstream.in_flight.close();
                tokio::select! {
                    finished = tokio::time::timeout(config.shutdown_timeout, upstream.in_flight.wait()) => {
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
            Event::SessionEnded => {
                tracing::error!(
                    state = %link.session.state(),
                    "the session ended; the client must start again"
                );
                1
            }
        };
        // Ends the upstream session (DELETE) and answers whatever is still in flight.
        gateway.sessions.begin_closing(&link.session);
        gateway.close_session(link.session.id()).await;
        gateway.sessions.end(link.session.id(), EndReason::Closed);
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

fn upstream_label(gateway: &Gateway) -> String {
    match &gateway.reverse.upstream {
        crate::config::ReverseUpstream::Http(url) => crate::transport::http::shown_url(url),
        crate::config::ReverseUpstream::Stdio(spec) => spec.program.to_string_lossy().into_owned(),
    }
}
