//! `shadowcat forward stdio -- <cmd>`: the client on our stdin/stdout, the server as our child.
//!
//! Four tasks move bytes (two relays, two writers); this front end owns them and the child, and
//! turns whatever ends first into one of two shutdowns:
//! - the client side ends (it closes our stdin, stops reading our stdout, or a SIGINT/SIGTERM
//!   arrives): close the child's stdin, give it `--shutdown-timeout` to exit, then SIGTERM, then
//!   SIGKILL (at once on a second signal); keep delivering its last answers; exit 0.
//! - the server side ends (it exits, closes its stdout, or stops reading its stdin): answer every
//!   in-flight request with an error naming the exit status and the server's last stderr lines;
//!   exit with its exit code.
//!
//! Either way the server's whole process group is killed at the end.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::io::AsyncReadExt as _;
use tracing::Instrument;

use crate::config::Config;
use crate::protocol::RequestId;
use crate::protocol::error::ProxyError;
use crate::protocol::{Direction, ErrorCode};
use crate::session::pending::Pending;
use crate::session::{EndReason, Session, SessionManager, TransportKind};
use crate::telemetry::Metrics;
use crate::telemetry::Observers;
use crate::transport::child::{ChildProcess, ChildSpec, Restart, describe_exit, exit_code_of};
use crate::transport::{stdio, writer};

use super::outbox::{DEFAULT_QUEUE_BYTES, DEFAULT_QUEUE_CAPACITY, Deliver, Outbox};
use super::pipeline::Pipeline;
use super::relay::{Relay, RelayEnd};
use super::shutdown::Shutdown;
use super::timeouts;
use super::upstream::pool::ServerOutput;
use super::upstream::stdio::{Server, StdioQueue};
use super::upstream::supervise::{ServerInbox, Supervisor, replay_handshake};
use super::upstream::{StdioLink, answer_each};
use crate::task::Task;

/// How long the server's stdout may stay open after the server exited (a grandchild can hold
/// it), before its last output is given up on.
const STDOUT_DRAIN_GRACE: Duration = Duration::from_millis(250);
/// How long the server's stderr copier may run on after it exited.
const STDERR_DRAIN_GRACE: Duration = Duration::from_millis(100);

/// What the client side of a session is started with.
struct ClientSide<'a> {
    config: &'a Config,
    session: &'a Arc<Session>,
    pipeline: &'a Arc<Pipeline>,
    to_client: &'a Arc<Outbox>,
}

impl ClientSide<'_> {
    /// Starts reading the client (`client_in`) into `to_server`, and the `--request-timeout`
    /// watchers if any.
    fn start<R: Deliver + 'static>(
        &self,
        to_server: Arc<R>,
        client_in: impl tokio::io::AsyncRead + Send + 'static,
    ) -> (Task<RelayEnd>, Vec<Task<()>>) {
        let limits = self.config.timeouts();
        let timeouts = if limits.any() {
            vec![
                Task::spawn(
                    "client-request-timeouts",
                    timeouts::enforce(
                        self.session.clone(),
                        Direction::ClientToServer,
                        limits,
                        self.to_client.clone(),
                        to_server.clone(),
                    ),
                ),
                Task::spawn(
                    "server-request-timeouts",
                    timeouts::enforce(
                        self.session.clone(),
                        Direction::ServerToClient,
                        limits,
                        to_server.clone(),
                        self.to_client.clone(),
                    ),
                ),
            ]
        } else {
            Vec::new()
        };
        let reader = Relay {
            direction: Direction::ClientToServer,
            pipeline: self.pipeline.clone(),
            session: self.session.clone(),
            to_sender: self.to_client.clone(),
            to_receiver: to_server,
            max_message_size: self.config.max_message_size,
        };
        (
            Task::spawn("client-reader", reader.run(client_in)),
            timeouts,
        )
    }
}

/// Starts the server command again and gives it the session's handshake (kept by `inbox`).
async fn respawn(spec: &ChildSpec, inbox: &ServerInbox) -> Result<Server<ServerOutput>, String> {
    let mut child = ChildProcess::spawn(spec).map_err(|e| format!("cannot start it: {e}"))?;
    let mut stdout = child
        .stdout
        .take()
        .ok_or_else(|| "its stdout was not captured".to_owned())?;
    let stray = replay_handshake(&mut child, &mut stdout, &inbox.handshake()).await?;
    Ok(Server {
        child,
        output: std::io::Cursor::new(stray).chain(stdout),
        slot: None,
    })
}

/// Why the proxy is stopping.
#[derive(Debug)]
enum Event {
    /// The client closed our stdin (or reading it failed).
    ClientClosed(RelayEnd),
    /// The client stopped reading our stdout.
    ClientGone,
    /// SIGINT or SIGTERM.
    Signal(&'static str),
    /// The server process exited.
    ServerExited(std::io::Result<std::process::ExitStatus>),
    /// The server closed its stdout or stopped reading its stdin, without (yet) exiting.
    ServerGone(&'static str),
    /// The session manager ended the session (expired, evicted).
    SessionEnded,
}

impl Event {
    /// How the session is recorded as having ended.
    fn end_reason(&self) -> EndReason {
        match self {
            Self::ClientClosed(_) | Self::ClientGone => EndReason::Closed,
            Self::Signal(_) => EndReason::Killed,
            Self::ServerExited(_) | Self::ServerGone(_) => EndReason::Error,
            // Already ended by the manager; this is not used.
            Self::SessionEnded => EndReason::Expired,
        }
    }
}

/// Runs the forward stdio proxy until one side ends; returns our exit code.
pub async fn run(
    config: &Config,
    spec: &ChildSpec,
    restart: Restart,
    sessions: &Arc<SessionManager>,
    record: Option<&crate::tape::Recording>,
    observers: &Observers,
    mut shutdown: Shutdown,
) -> anyhow::Result<u8> {
    // Written down (session records, tapes, traces): secret-looking arguments masked.
    let upstream =
        crate::tape::redact::command::command(&spec.program, &spec.args, &spec.env).shown;
    let session = sessions.create(TransportKind::Stdio, Some(upstream))?;
    let tape = record
        .map(|r| super::pipeline::start_recording(r, &session))
        .transpose()?;
    let span = tracing::info_span!("session", id = %session.id().digest());
    let result = async {
        let mut proxy =
            ForwardStdio::start(config, spec, restart, sessions, session.clone(), observers)?;
        crate::proxy::pipeline::server_started(&session, proxy.server.child.pid(), 1).await;
        let event = loop {
            let event = proxy.next_event(&mut shutdown).await;
            match proxy.restart_after(event, &mut shutdown).await {
                Ok(()) => {}
                Err(event) => break event,
            }
        };
        let reason = event.end_reason();
        tracing::debug!(reason = reason.as_str(), "shutting down");
        sessions.begin_closing(&session);
        let code = proxy.stop(event, &mut shutdown).await;
        proxy.finish().await;
        sessions.end(session.id(), reason);
        if let Some(tape) = &tape {
            if let Err(e) = tape.end(reason.as_str()).await {
                tape.failed(&e);
            }
        }
        code
    }
    .instrument(span)
    .await;
    if result.is_err() {
        sessions.end(session.id(), EndReason::Error);
    }
    result
}

/// The running parts of one forward stdio session.
struct ForwardStdio<'a> {
    config: &'a Config,
    spec: &'a ChildSpec,
    session: Arc<Session>,
    metrics: Arc<Metrics>,
    pipeline: Arc<Pipeline>,
    /// The server and the tasks that move its bytes.
    server: StdioLink,
    /// With restarts: the client's way to the server, whichever process is current.
    inbox: Option<Arc<ServerInbox>>,
    /// With `--restart on-failure`: when to start the server again.
    supervisor: Option<Supervisor>,
    to_client: Arc<Outbox>,
    client_reader: Task<RelayEnd>,
    client_writer: Task<std::io::Result<()>>,
    /// Request-timeout watchers, one per direction, when `--request-timeout` is set.
    timeouts: Vec<Task<()>>,
}

impl<'a> ForwardStdio<'a> {
    /// Opens our stdio, spawns the server, and starts the four tasks that move bytes.
    fn start(
        config: &'a Config,
        spec: &'a ChildSpec,
        restart: Restart,
        sessions: &Arc<SessionManager>,
        session: Arc<Session>,
        observers: &Observers,
    ) -> anyhow::Result<Self> {
        // Our stdio first: if it fails, no child has been started that would need stopping.
        let (client_in, in_kind) = stdio::stdin().context("cannot open stdin")?;
        let (client_out, out_kind) = stdio::stdout().context("cannot open stdout")?;
        tracing::debug!(
            input = in_kind.as_str(),
            output = out_kind.as_str(),
            "stdio opened"
        );
        let metrics = Arc::new(Metrics::default());
        let pipeline =
            Pipeline::for_mode(config, metrics.clone(), sessions.clone(), observers, None);
        // A queue must hold at least one largest message.
        let queue_bytes = DEFAULT_QUEUE_BYTES.max(config.max_message_size);
        let (to_client, client_rx, client_close) = Outbox::new(DEFAULT_QUEUE_CAPACITY, queue_bytes);
        let to_client = Arc::new(to_client);
        let server = StdioLink::start(
            spec,
            pipeline.clone(),
            session.clone(),
            to_client.clone(),
            config.max_message_size,
        )
        .with_context(|| format!("cannot start the MCP server {:?}", spec.program))?;
        tracing::info!(pid = server.child.pid(), command = %spec.program.to_string_lossy(), "started the MCP server");
        let supervisor = (restart == Restart::OnFailure).then(Supervisor::new);
        // With restarts the client's way to the server goes through an inbox that outlives
        // each process; without, straight to the one process's queue.
        let inbox = supervisor
            .as_ref()
            .map(|_| Arc::new(ServerInbox::new(server.to_server.clone(), session.clone())));
        let client = ClientSide {
            config,
            session: &session,
            pipeline: &pipeline,
            to_client: &to_client,
        };
        let (client_reader, timeouts) = match &inbox {
            Some(inbox) => client.start(inbox.clone(), client_in),
            None => client.start(server.to_server.clone(), client_in),
        };
        Ok(Self {
            timeouts,
            client_reader,
            client_writer: Task::spawn(
                "client-writer",
                writer::write_lines(client_rx, client_out, client_close),
            ),
            config,
            spec,
            session,
            metrics,
            pipeline,
            server,
            inbox,
            supervisor,
            to_client,
        })
    }

    /// Waits for whatever ends the session first.
    async fn next_event(&mut self, signals: &mut Shutdown) -> Event {
        tokio::select! {
            end = self.client_reader.join() => match end {
                // Our writes to the server fail: it stopped reading (it is probably dying).
                Some(RelayEnd::ReceiverClosed) => Event::ServerGone("the MCP server stopped reading its stdin"),
                Some(end) => Event::ClientClosed(end),
                None => Event::ClientClosed(RelayEnd::Eof),
            },
            _ = self.client_writer.join() => Event::ClientGone,
            () = self.session.closed_token().cancelled() => Event::SessionEnded,
            name = signals.recv() => Event::Signal(name),
            status = self.server.child.wait() => Event::ServerExited(status),
            end = self.server.server_reader.join() => match end {
                Some(RelayEnd::ReceiverClosed) => Event::ClientGone,
                Some(RelayEnd::ReadError(e)) => {
                    tracing::warn!(%e, "reading from the MCP server failed");
                    Event::ServerGone("reading the MCP server's stdout failed")
                }
                _ => Event::ServerGone("the MCP server closed its stdout"),
            },
        }
    }

    /// Stops the server as `event` requires; returns our exit code.
    async fn stop(&mut self, event: Event, signals: &mut Shutdown) -> anyhow::Result<u8> {
        match event {
            Event::ClientClosed(_) | Event::ClientGone | Event::Signal(_) | Event::SessionEnded => {
                match &event {
                    Event::Signal(name) => {
                        tracing::info!(signal = name, "received a signal; shutting down");
                    }
                    Event::ClientClosed(RelayEnd::ReadError(e)) => {
                        tracing::warn!(%e, "reading from the client failed; shutting down");
                    }
                    Event::SessionEnded => {
                        tracing::info!(state = %self.session.state(), "the session was ended; shutting down");
                    }
                    Event::ClientGone => {
                        tracing::info!("the client stopped reading our stdout; shutting down");
                    }
                    _ => tracing::info!("the client closed the connection; shutting down"),
                }
                self.client_reader.abort();
                let status = self.shut_down_server(signals).await?;
                tracing::info!(status = %describe_exit(status), "the MCP server exited");
                self.server
                    .server_reader
                    .join_within(STDOUT_DRAIN_GRACE)
                    .await;
                self.server.child.finish_stderr(STDERR_DRAIN_GRACE).await;
                let error = if matches!(event, Event::SessionEnded) {
                    ProxyError::new(
                        ErrorCode::ShuttingDown,
                        format!(
                            "the session was ended ({}) before the request was answered",
                            self.session.state()
                        ),
                    )
                } else {
                    self.exit_error(
                        &format!("the MCP server exited ({})", describe_exit(status)),
                        status,
                    )
                };
                self.fail_in_flight(&error).await;
                Ok(0)
            }
            Event::ServerExited(status) => {
                let status = status.context("waiting for the MCP server")?;
                // Deliver what it wrote before it died.
                self.server
                    .server_reader
                    .join_within(STDOUT_DRAIN_GRACE)
                    .await;
                Ok(self.server_crashed(status).await)
            }
            Event::ServerGone(why) => {
                tracing::warn!("{why}; stopping it");
                let status = self.shut_down_server(signals).await?;
                self.server
                    .server_reader
                    .join_within(STDOUT_DRAIN_GRACE)
                    .await;
                Ok(self.server_crashed(status).await)
            }
        }
    }

    /// Delivers what is queued for the server, closes its stdin, and waits for it to exit,
    /// escalating to SIGTERM and SIGKILL; all within `--shutdown-timeout` plus the kill grace.
    /// A signal meanwhile means "now": the server is killed at once.
    async fn shut_down_server(
        &mut self,
        signals: &mut Shutdown,
    ) -> anyhow::Result<std::process::ExitStatus> {
        let remaining = self.server.close_stdin(self.config.shutdown_timeout).await;
        let graceful = tokio::select! {
            status = self.server.child.shutdown(remaining) => Some(status),
            name = signals.recv() => {
                tracing::warn!(signal = name, "second signal: killing the MCP server now");
                None
            }
        };
        let status = match graceful {
            Some(status) => status,
            None => self.server.child.kill().await,
        };
        status.context("waiting for the MCP server")
    }

    /// With `--restart on-failure`, a server that failed (`event`) is started again: what it owed
    /// gets errors at once, then, after the supervisor's delay, a new process gets the client's
    /// handshake and takes over; messages the client sends meanwhile wait for it. `Err` gives
    /// back the event that ends the session instead (no restart asked, a clean exit, or the
    /// client or a signal while waiting).
    async fn restart_after(&mut self, event: Event, signals: &mut Shutdown) -> Result<(), Event> {
        if self.supervisor.is_none() {
            return Err(event);
        }
        let status = match event {
            Event::ServerExited(Ok(status)) if !status.success() => status,
            Event::ServerGone(why) => {
                tracing::warn!("{why}; stopping it");
                match self.shut_down_server(signals).await {
                    Ok(status) => status,
                    Err(_) => return Err(Event::ServerGone(why)),
                }
            }
            other => return Err(other),
        };
        self.server
            .server_reader
            .join_within(STDOUT_DRAIN_GRACE)
            .await;
        self.server.child.finish_stderr(STDERR_DRAIN_GRACE).await;
        let reason = format!(
            "the MCP server exited unexpectedly ({})",
            describe_exit(status)
        );
        let error = self.exit_error(&reason, status);
        tracing::error!(status = %describe_exit(status), "the MCP server exited unexpectedly; it will be restarted");
        // What the client sends from now on waits in the next process's queue. The swap and
        // the taking of what is in flight happen with no await between them (this runtime has
        // one thread), so every request is either failed here or sent to the next process
        // (one caught on its way is dropped by the inbox if it was failed here).
        let Some(inbox) = &self.inbox else {
            return Err(Event::ServerGone("no inbox to restart into"));
        };
        let queue = StdioQueue::new(self.config.max_message_size);
        inbox.replace(queue.to_server.clone()).close();
        let owed = self.session.take_pending(Direction::ClientToServer);
        // The client's answers to the dead process's requests have nowhere to go.
        self.session.take_pending(Direction::ServerToClient);
        self.server.abort();
        self.answer_owed(owed, &error).await;
        self.start_again(queue, signals).await
    }

    /// Starts the server again (after the supervisor's delay, as many times as it takes) and
    /// links it to `queue`; `Err` if the client, a signal or the session ends it first.
    async fn start_again(
        &mut self,
        queue: StdioQueue,
        signals: &mut Shutdown,
    ) -> Result<(), Event> {
        let (Some(supervisor), Some(inbox)) = (self.supervisor.as_mut(), &self.inbox) else {
            return Err(Event::ServerGone("no supervisor"));
        };
        loop {
            let delay = supervisor.crashed_and_logged();
            // Waiting, and starting the new process (its handshake may take a while), both
            // give way to the client leaving, a signal or the session's end.
            let restarted = async {
                tokio::time::sleep(delay).await;
                respawn(self.spec, inbox).await
            };
            let restarted = tokio::select! {
                restarted = restarted => restarted,
                end = self.client_reader.join() => {
                    return Err(Event::ClientClosed(end.unwrap_or(RelayEnd::Eof)));
                }
                _ = self.client_writer.join() => return Err(Event::ClientGone),
                () = self.session.closed_token().cancelled() => return Err(Event::SessionEnded),
                name = signals.recv() => return Err(Event::Signal(name)),
            };
            match restarted {
                Ok(server) => {
                    supervisor.started();
                    let generation = supervisor.generation();
                    let link = queue.attach(
                        server,
                        self.pipeline.clone(),
                        self.session.clone(),
                        self.to_client.clone(),
                        self.config.max_message_size,
                    );
                    match link {
                        Ok(link) => {
                            tracing::info!(
                                pid = link.child.pid(),
                                generation,
                                "restarted the MCP server; the session goes on"
                            );
                            crate::proxy::pipeline::server_started(
                                &self.session,
                                link.child.pid(),
                                generation,
                            )
                            .await;
                            self.server = link;
                            return Ok(());
                        }
                        Err(e) => {
                            tracing::error!(%e, "cannot link the restarted MCP server");
                            return Err(Event::ServerGone(
                                "the restarted MCP server could not be linked",
                            ));
                        }
                    }
                }
                Err(why) => tracing::warn!(%why, "the restarted MCP server failed"),
            }
        }
    }

    /// The server went away by itself: every request it still owed gets an error; returns its
    /// exit code for us to exit with.
    async fn server_crashed(&mut self, status: std::process::ExitStatus) -> u8 {
        self.server.child.finish_stderr(STDERR_DRAIN_GRACE).await;
        tracing::error!(status = %describe_exit(status), "the MCP server exited unexpectedly");
        let reason = format!(
            "the MCP server exited unexpectedly ({})",
            describe_exit(status)
        );
        let error = self.exit_error(&reason, status);
        self.fail_in_flight(&error).await;
        exit_code_of(status)
    }

    /// The `upstream_exited` error naming how the server ended and its last stderr lines.
    fn exit_error(&self, reason: &str, status: std::process::ExitStatus) -> ProxyError {
        use std::os::unix::process::ExitStatusExt;
        let error = ProxyError::new(ErrorCode::UpstreamExited, reason);
        let error = match (status.code(), status.signal()) {
            (Some(code), _) => error.with("exitCode", code),
            (None, Some(signal)) => error.with("signal", signal),
            (None, None) => error,
        };
        error.with("stderr", self.server.child.stderr_tail().lines())
    }

    /// Answers every request still awaiting the server with `error`. Bounded by
    /// `--shutdown-timeout`: a client that no longer reads must not keep us alive.
    async fn fail_in_flight(&self, error: &ProxyError) {
        self.session.close_pending(Direction::ServerToClient);
        let owed = self.session.close_pending(Direction::ClientToServer);
        self.answer_owed(owed, error).await;
    }

    /// Answers `owed` with `error`, within `--shutdown-timeout`.
    async fn answer_owed(&self, owed: Vec<(RequestId, Pending)>, error: &ProxyError) {
        let answer = answer_each(owed, error, self.to_client.as_ref());
        match tokio::time::timeout(self.config.shutdown_timeout, answer).await {
            Ok(0) => {}
            Ok(count) => tracing::warn!(count, "answered in-flight requests with errors"),
            Err(_) => {
                tracing::warn!(
                    "the client is not reading; gave up answering its in-flight requests"
                );
            }
        }
    }

    /// Flushes what is left for the client and releases everything.
    async fn finish(mut self) {
        for task in &mut self.timeouts {
            task.abort();
        }
        self.client_reader.abort();
        self.server.abort();
        self.to_client.close();
        // The client may have stopped reading; don't wait for it forever.
        if self
            .client_writer
            .join_within(self.config.shutdown_timeout)
            .await
            .is_none()
        {
            tracing::debug!("the client writer ended without flushing everything");
        }
        tracing::info!(totals = %self.metrics.snapshot(), "shadowcat exiting");
    }
}
