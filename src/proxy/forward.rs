//! `shadowcat forward stdio -- <cmd>`: the client on our stdin/stdout, the server as our child.
//!
//! Four tasks move bytes (two relays, two writers); this front end owns them and the child, and
//! turns whatever ends first into one of three shutdowns:
//! - the client closes our stdin (or a signal arrives): close the child's stdin, give it
//!   `--shutdown-timeout` to exit, then SIGTERM, then SIGKILL; keep delivering its last answers;
//!   exit 0.
//! - the server exits (or closes its stdout) by itself: answer every in-flight request with an
//!   error naming the exit status and the server's last stderr lines; exit with its exit code.
//! - the client stops reading our stdout: as if it had closed stdin.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::signal::unix::{SignalKind, signal};
use tokio::task::JoinHandle;
use tracing::Instrument;

use crate::config::Config;
use crate::protocol::error::ProxyError;
use crate::protocol::{Direction, ErrorCode, Message};
use crate::session::{Session, TransportKind};
use crate::telemetry::Metrics;
use crate::transport::child::{ChildProcess, ChildSpec, describe_exit, exit_code_of};
use crate::transport::{stdio, writer};

use super::outbox::{DEFAULT_QUEUE_BYTES, DEFAULT_QUEUE_CAPACITY, Outbox};
use super::pipeline::Pipeline;
use super::relay::{Relay, RelayEnd};

/// How long the server's stdout may stay open after the server exited (a grandchild can hold
/// it), before its last output is given up on.
const STDOUT_DRAIN_GRACE: Duration = Duration::from_millis(250);
/// How long the server's stderr copier may run on after it exited.
const STDERR_DRAIN_GRACE: Duration = Duration::from_millis(100);

/// Why the proxy is stopping.
#[derive(Debug)]
enum Event {
    ClientClosed(RelayEnd),
    ClientGone,
    Signal(&'static str),
    ServerExited(std::io::Result<std::process::ExitStatus>),
    ServerStdoutClosed(RelayEnd),
}

/// Runs the forward stdio proxy until one side ends; returns our exit code.
pub async fn run(config: &Config, spec: &ChildSpec) -> anyhow::Result<u8> {
    let session = Arc::new(Session::new(
        TransportKind::Stdio,
        config.max_pending_requests,
    ));
    let span = tracing::info_span!("session", id = %session.id());
    async {
        // Listen before starting anything, so a signal never finds the default (fatal) handler.
        let mut signals = Signals::listen()?;
        let mut proxy = ForwardStdio::start(config, spec, session)?;
        let event = proxy.next_event(&mut signals).await;
        let code = proxy.stop(event).await;
        proxy.finish().await;
        code
    }
    .instrument(span)
    .await
}

/// The signals that ask us to shut down.
struct Signals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
}

impl Signals {
    fn listen() -> anyhow::Result<Self> {
        Ok(Self {
            interrupt: signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?,
            terminate: signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?,
        })
    }
}

/// The running parts of one forward stdio session.
struct ForwardStdio<'a> {
    config: &'a Config,
    session: Arc<Session>,
    metrics: Arc<Metrics>,
    child: ChildProcess,
    to_client: Arc<Outbox>,
    to_server: Arc<Outbox>,
    client_reader: JoinHandle<RelayEnd>,
    server_reader: JoinHandle<RelayEnd>,
    client_writer: JoinHandle<std::io::Result<()>>,
    server_writer: JoinHandle<std::io::Result<()>>,
}

impl<'a> ForwardStdio<'a> {
    /// Spawns the server and the four tasks that move bytes.
    fn start(config: &'a Config, spec: &ChildSpec, session: Arc<Session>) -> anyhow::Result<Self> {
        let metrics = Arc::new(Metrics::default());
        let pipeline = Arc::new(Pipeline::new(metrics.clone()));
        let mut child = ChildProcess::spawn(spec)
            .with_context(|| format!("cannot start the MCP server {:?}", spec.program))?;
        tracing::info!(pid = child.pid(), command = ?spec.program, "started the MCP server");
        let (client_in, in_kind) = stdio::stdin().context("cannot open stdin")?;
        let (client_out, out_kind) = stdio::stdout().context("cannot open stdout")?;
        tracing::debug!(?in_kind, ?out_kind, "stdio opened");
        let server_in = child
            .stdin
            .take()
            .context("the server's stdin was not captured")?;
        let server_out = child
            .stdout
            .take()
            .context("the server's stdout was not captured")?;

        // A queue must hold at least one largest message.
        let queue_bytes = DEFAULT_QUEUE_BYTES.max(config.max_message_size);
        let (to_client, client_rx, client_close) = Outbox::new(DEFAULT_QUEUE_CAPACITY, queue_bytes);
        let (to_server, server_rx, server_close) = Outbox::new(DEFAULT_QUEUE_CAPACITY, queue_bytes);
        let (to_client, to_server) = (Arc::new(to_client), Arc::new(to_server));
        let relay = |direction, to_sender: &Arc<Outbox>, to_receiver: &Arc<Outbox>| Relay {
            direction,
            pipeline: pipeline.clone(),
            session: session.clone(),
            to_sender: to_sender.clone(),
            to_receiver: to_receiver.clone(),
            max_message_size: config.max_message_size,
        };
        let client_reader = relay(Direction::ClientToServer, &to_client, &to_server);
        let server_reader = relay(Direction::ServerToClient, &to_server, &to_client);
        Ok(Self {
            client_reader: spawn("client-reader", client_reader.run(client_in)),
            server_reader: spawn("server-reader", server_reader.run(server_out)),
            client_writer: spawn(
                "client-writer",
                writer::write_lines(client_rx, client_out, client_close),
            ),
            server_writer: spawn(
                "server-writer",
                writer::write_lines(server_rx, server_in, server_close),
            ),
            config,
            session,
            metrics,
            child,
            to_client,
            to_server,
        })
    }

    /// Waits for whatever ends the session first.
    async fn next_event(&mut self, signals: &mut Signals) -> Event {
        let event = tokio::select! {
            end = &mut self.client_reader => Event::ClientClosed(end.unwrap_or(RelayEnd::Eof)),
            _ = &mut self.client_writer => Event::ClientGone,
            _ = signals.interrupt.recv() => Event::Signal("SIGINT"),
            _ = signals.terminate.recv() => Event::Signal("SIGTERM"),
            status = self.child.wait() => Event::ServerExited(status),
            end = &mut self.server_reader => Event::ServerStdoutClosed(end.unwrap_or(RelayEnd::Eof)),
        };
        tracing::debug!(?event, "shutting down");
        event
    }

    /// Stops the server as `event` requires; returns our exit code.
    async fn stop(&mut self, event: Event) -> anyhow::Result<u8> {
        match event {
            Event::ClientClosed(_) | Event::ClientGone | Event::Signal(_) => {
                match &event {
                    Event::Signal(name) => {
                        tracing::info!(signal = name, "received a signal; shutting down");
                    }
                    Event::ClientClosed(RelayEnd::ReadError(e)) => {
                        tracing::warn!(%e, "reading from the client failed; shutting down");
                    }
                    _ => tracing::info!("the client closed the connection; shutting down"),
                }
                self.client_reader.abort();
                let status = self.shut_down_server().await?;
                tracing::info!(status = %describe_exit(status), "the MCP server exited");
                finish_reading(&mut self.server_reader).await;
                self.child.finish_stderr(STDERR_DRAIN_GRACE).await;
                let reason = format!("the MCP server exited ({})", describe_exit(status));
                fail_in_flight(&self.session, &self.to_client, &self.child, &reason, status).await;
                Ok(0)
            }
            Event::ServerExited(status) => {
                let status = status.context("waiting for the MCP server")?;
                finish_reading(&mut self.server_reader).await;
                Ok(server_crashed(&self.session, &self.to_client, &mut self.child, status).await)
            }
            Event::ServerStdoutClosed(end) => {
                if let RelayEnd::ReadError(e) = &end {
                    tracing::warn!(%e, "reading from the MCP server failed");
                }
                // It closed stdout without exiting: shut it down properly before reporting.
                let status = self.shut_down_server().await?;
                Ok(server_crashed(&self.session, &self.to_client, &mut self.child, status).await)
            }
        }
    }

    /// Delivers what is queued for the server, closes its stdin, and waits for it to exit
    /// (escalating to SIGTERM and SIGKILL).
    async fn shut_down_server(&mut self) -> anyhow::Result<std::process::ExitStatus> {
        self.to_server.close();
        let _ = (&mut self.server_writer).await;
        self.child
            .shutdown(self.config.shutdown_timeout)
            .await
            .context("waiting for the MCP server")
    }

    /// Flushes what is left for the client and releases everything.
    async fn finish(mut self) {
        self.client_reader.abort();
        self.to_server.close();
        self.server_writer.abort();
        self.to_client.close();
        // The client may have stopped reading; don't wait for it forever.
        if tokio::time::timeout(self.config.shutdown_timeout, &mut self.client_writer)
            .await
            .is_err()
        {
            tracing::warn!("the client did not read our last messages; giving up on them");
            self.client_writer.abort();
        }
        self.child.kill_stragglers();
        tracing::info!(totals = ?self.metrics.snapshot(), "shadowcat exiting");
    }
}

/// The server went away by itself: every request it still owed gets an error; returns its exit
/// code for us to exit with.
async fn server_crashed(
    session: &Session,
    to_client: &Outbox,
    child: &mut ChildProcess,
    status: std::process::ExitStatus,
) -> u8 {
    child.finish_stderr(STDERR_DRAIN_GRACE).await;
    tracing::error!(status = %describe_exit(status), "the MCP server exited unexpectedly");
    let reason = format!(
        "the MCP server exited unexpectedly ({})",
        describe_exit(status)
    );
    fail_in_flight(session, to_client, child, &reason, status).await;
    exit_code_of(status)
}

/// Answers every request still awaiting the server with an `upstream_exited` error.
async fn fail_in_flight(
    session: &Session,
    to_client: &Outbox,
    child: &ChildProcess,
    reason: &str,
    status: std::process::ExitStatus,
) {
    use std::os::unix::process::ExitStatusExt;
    // Requests the server sent the client can no longer be answered; forget them.
    session.pending(Direction::ServerToClient).close();
    let in_flight = session.pending(Direction::ClientToServer).close();
    if in_flight.is_empty() {
        return;
    }
    tracing::warn!(
        count = in_flight.len(),
        "answering in-flight requests with errors"
    );
    let error = ProxyError::new(ErrorCode::UpstreamExited, reason)
        .with("exitCode", status.code())
        .with("signal", status.signal())
        .with("stderr", child.stderr_tail().lines());
    for (id, _) in in_flight {
        if to_client
            .send(Message::error_response(Some(&id), &error))
            .await
            .is_err()
        {
            break;
        }
    }
}

/// Lets the server-reader deliver what the server wrote before exiting, briefly.
async fn finish_reading(s2c: &mut JoinHandle<RelayEnd>) {
    if tokio::time::timeout(STDOUT_DRAIN_GRACE, &mut *s2c)
        .await
        .is_err()
    {
        tracing::debug!("the server's stdout stayed open after it exited; stopped reading it");
        s2c.abort();
    }
}

/// Spawns a named task inside the current span.
fn spawn<F>(name: &'static str, future: F) -> JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    tokio::spawn(future.instrument(tracing::debug_span!("task", name)))
}
