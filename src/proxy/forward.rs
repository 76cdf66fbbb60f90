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

use super::outbox::{DEFAULT_QUEUE_CAPACITY, Outbox};
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
    serve(config, spec, session).instrument(span).await
}

async fn serve(config: &Config, spec: &ChildSpec, session: Arc<Session>) -> anyhow::Result<u8> {
    let metrics = Arc::new(Metrics::default());
    let pipeline = Arc::new(Pipeline::new(metrics.clone()));
    let mut child = ChildProcess::spawn(spec)
        .with_context(|| format!("cannot start the MCP server {:?}", spec.program))?;
    tracing::info!(pid = child.pid(), command = ?spec.program, "started the MCP server");
    let (client_in, in_kind) = stdio::stdin().context("cannot open stdin")?;
    let (client_out_io, out_kind) = stdio::stdout().context("cannot open stdout")?;
    tracing::debug!(?in_kind, ?out_kind, "stdio opened");
    let server_in = child
        .stdin
        .take()
        .context("the server's stdin was not captured")?;
    let server_out = child
        .stdout
        .take()
        .context("the server's stdout was not captured")?;

    let (to_client, client_rx, client_close) = Outbox::new(DEFAULT_QUEUE_CAPACITY);
    let (to_server, server_rx, server_close) = Outbox::new(DEFAULT_QUEUE_CAPACITY);
    let (to_client, to_server) = (Arc::new(to_client), Arc::new(to_server));

    let mut client_writer = spawn(
        "client-writer",
        writer::write_lines(client_rx, client_out_io, client_close),
    );
    let mut server_writer = spawn(
        "server-writer",
        writer::write_lines(server_rx, server_in, server_close),
    );
    let relay = |direction, to_sender: &Arc<Outbox>, to_receiver: &Arc<Outbox>| Relay {
        direction,
        pipeline: pipeline.clone(),
        session: session.clone(),
        to_sender: to_sender.clone(),
        to_receiver: to_receiver.clone(),
        max_message_size: config.max_message_size,
    };
    let mut c2s = spawn(
        "client-reader",
        relay(Direction::ClientToServer, &to_client, &to_server).run(client_in),
    );
    let mut s2c = spawn(
        "server-reader",
        relay(Direction::ServerToClient, &to_server, &to_client).run(server_out),
    );

    let mut sigint = signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?;
    let mut sigterm = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;

    let event = tokio::select! {
        end = &mut c2s => Event::ClientClosed(end.unwrap_or(RelayEnd::Eof)),
        _ = &mut client_writer => Event::ClientGone,
        _ = sigint.recv() => Event::Signal("SIGINT"),
        _ = sigterm.recv() => Event::Signal("SIGTERM"),
        status = child.wait() => Event::ServerExited(status),
        end = &mut s2c => Event::ServerStdoutClosed(end.unwrap_or(RelayEnd::Eof)),
    };
    tracing::debug!(?event, "shutting down");

    let code = match event {
        Event::ClientClosed(_) | Event::ClientGone | Event::Signal(_) => {
            if let Event::Signal(name) = event {
                tracing::info!(signal = name, "received a signal; shutting down");
            } else if let Event::ClientClosed(RelayEnd::ReadError(e)) = &event {
                tracing::warn!(%e, "reading from the client failed; shutting down");
            } else {
                tracing::info!("the client closed the connection; shutting down");
            }
            c2s.abort();
            to_server.close();
            let _ = (&mut server_writer).await;
            let status = child
                .shutdown(config.shutdown_timeout)
                .await
                .context("waiting for the MCP server")?;
            tracing::info!(status = %describe_exit(status), "the MCP server exited");
            finish_reading(&mut s2c).await;
            child.finish_stderr(STDERR_DRAIN_GRACE).await;
            fail_in_flight(
                &session,
                &to_client,
                &child,
                &format!("the MCP server exited ({})", describe_exit(status)),
                status,
            )
            .await;
            0
        }
        Event::ServerExited(status) => {
            let status = status.context("waiting for the MCP server")?;
            finish_reading(&mut s2c).await;
            server_crashed(&session, &to_client, &mut child, status).await
        }
        Event::ServerStdoutClosed(end) => {
            if let RelayEnd::ReadError(e) = &end {
                tracing::warn!(%e, "reading from the MCP server failed");
            }
            // It closed stdout without exiting: shut it down properly before reporting.
            to_server.close();
            let _ = (&mut server_writer).await;
            let status = child
                .shutdown(config.shutdown_timeout)
                .await
                .context("waiting for the MCP server")?;
            server_crashed(&session, &to_client, &mut child, status).await
        }
    };

    c2s.abort();
    to_server.close();
    server_writer.abort();
    to_client.close();
    // The client may have stopped reading; don't wait for it forever.
    if tokio::time::timeout(config.shutdown_timeout, &mut client_writer)
        .await
        .is_err()
    {
        tracing::warn!("the client did not read our last messages; giving up on them");
        client_writer.abort();
    }
    child.kill_stragglers();
    let totals = metrics.snapshot();
    tracing::info!(?totals, exit_code = code, "shadowcat exiting");
    Ok(code)
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
