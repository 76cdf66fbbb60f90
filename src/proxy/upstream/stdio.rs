//! A stdio upstream: an MCP server running as our child, speaking newline-delimited JSON-RPC on
//! its stdin and stdout. The same link serves `forward stdio` (one child for the process) and
//! `reverse -- <cmd>` (one child per session).
//!
//! Two tasks move its bytes: a writer drains [`StdioLink::to_server`] into the child's stdin, and
//! a [`Relay`] reads the child's stdout through the pipeline and hands what passes to the
//! client side, whatever that is (our stdout's outbox, or the reverse proxy's router).

use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncRead;
use tokio::time::Instant;

use crate::protocol::Direction;
use crate::session::Session;
use crate::transport::child::{ChildProcess, ChildSpec};
use crate::transport::writer;

use crate::proxy::outbox::{DEFAULT_QUEUE_BYTES, DEFAULT_QUEUE_CAPACITY, Deliver, Outbox};
use crate::proxy::pipeline::Pipeline;
use crate::proxy::relay::{Relay, RelayEnd};
use crate::task::Task;

use super::pool::{Lease, ServerOutput, Slot};

/// A running child server and the two tasks that move its bytes.
#[derive(Debug)]
pub struct StdioLink {
    /// The child.
    pub child: ChildProcess,
    /// Messages for the server: its stdin's queue.
    pub to_server: Arc<Outbox>,
    /// Reads the server's stdout through the pipeline.
    pub server_reader: Task<RelayEnd>,
    /// Writes the server's stdin.
    pub server_writer: Task<std::io::Result<()>>,
    /// Its place in a pool, if it came from one: given back when the link is dropped.
    pub slot: Option<Slot>,
}

/// The queue of a server not started yet: messages for it wait there (bounded) until
/// [`StdioQueue::spawn`] starts it, so a session can exist before its process does.
#[derive(Debug)]
pub struct StdioQueue {
    /// Messages for the server.
    pub to_server: Arc<Outbox>,
    rx: tokio::sync::mpsc::Receiver<crate::proxy::outbox::Outgoing>,
    close: tokio_util::sync::CancellationToken,
}

impl StdioQueue {
    /// An empty queue that holds at least one message of `max_message_size`.
    pub fn new(max_message_size: usize) -> Self {
        let queue_bytes = DEFAULT_QUEUE_BYTES.max(max_message_size);
        let (to_server, rx, close) = Outbox::new(DEFAULT_QUEUE_CAPACITY, queue_bytes);
        Self {
            to_server: Arc::new(to_server),
            rx,
            close,
        }
    }

    /// Spawns the server and starts moving its bytes: what is queued first, then the rest;
    /// what it says goes to `to_client`.
    pub fn spawn<R: Deliver + 'static>(
        self,
        spec: &ChildSpec,
        pipeline: Arc<Pipeline>,
        session: Arc<Session>,
        to_client: Arc<R>,
        max_message_size: usize,
    ) -> std::io::Result<StdioLink> {
        let mut child = ChildProcess::spawn(spec)?;
        let server_out = child
            .stdout
            .take()
            .ok_or_else(|| std::io::Error::other("the server's stdout was not captured"))?;
        let server = Server {
            child,
            output: server_out,
            slot: None,
        };
        self.attach(server, pipeline, session, to_client, max_message_size)
    }

    /// Starts moving the bytes of `server`, a process already running: what is queued first,
    /// then the rest; what it says goes through the pipeline to `to_client`.
    pub fn attach<O: AsyncRead + Send + 'static, R: Deliver + 'static>(
        self,
        server: Server<O>,
        pipeline: Arc<Pipeline>,
        session: Arc<Session>,
        to_client: Arc<R>,
        max_message_size: usize,
    ) -> std::io::Result<StdioLink> {
        let to_sender = self.to_server.clone();
        self.attach_reader(server, move |output| {
            let reader = Relay {
                direction: Direction::ServerToClient,
                pipeline,
                session,
                to_sender,
                to_receiver: to_client,
                max_message_size,
            };
            reader.run(output)
        })
    }

    /// Starts moving the bytes of `server`: what is queued goes to its stdin, and `read` reads
    /// its stdout (a [`Relay`], or the demultiplexer of a shared child).
    pub fn attach_reader<O, F, Fut>(self, server: Server<O>, read: F) -> std::io::Result<StdioLink>
    where
        O: AsyncRead + Send + 'static,
        F: FnOnce(O) -> Fut,
        Fut: Future<Output = RelayEnd> + Send + 'static,
    {
        let Server {
            mut child,
            output,
            slot,
        } = server;
        let server_in = child
            .stdin
            .take()
            .ok_or_else(|| std::io::Error::other("the server's stdin was not captured"))?;
        let Self {
            to_server,
            rx: server_rx,
            close: server_close,
        } = self;
        Ok(StdioLink {
            child,
            server_reader: Task::spawn("server-reader", read(output)),
            server_writer: Task::spawn(
                "server-writer",
                writer::write_lines(server_rx, server_in, server_close),
            ),
            to_server,
            slot,
        })
    }
}

/// A running server process for a link: the child (its stdin still in it), its stdout, and its
/// place in a pool if it has one.
#[derive(Debug)]
pub struct Server<O> {
    /// The process.
    pub child: ChildProcess,
    /// Its stdout.
    pub output: O,
    /// Its place in a pool.
    pub slot: Option<Slot>,
}

impl From<Lease> for Server<ServerOutput> {
    fn from(lease: Lease) -> Self {
        Self {
            child: lease.child,
            output: lease.output,
            slot: Some(lease.slot),
        }
    }
}

impl StdioLink {
    /// Spawns the server and starts moving its bytes; what it says goes to `to_client`.
    pub fn start<R: Deliver + 'static>(
        spec: &ChildSpec,
        pipeline: Arc<Pipeline>,
        session: Arc<Session>,
        to_client: Arc<R>,
        max_message_size: usize,
    ) -> std::io::Result<Self> {
        StdioQueue::new(max_message_size).spawn(
            spec,
            pipeline,
            session,
            to_client,
            max_message_size,
        )
    }

    /// Delivers what is queued for the server and closes its stdin; waits at most `timeout` for
    /// the writer. Returns how much of `timeout` is left.
    pub async fn close_stdin(&mut self, timeout: Duration) -> Duration {
        let deadline = Instant::now() + timeout;
        self.to_server.close();
        // A server that doesn't read would block the writer forever; aborting it closes the pipe.
        self.server_writer.join_within(timeout).await;
        deadline.saturating_duration_since(Instant::now())
    }

    /// The graceful stop: close stdin, wait, SIGTERM, SIGKILL; `timeout` before the SIGTERM
    /// counts from now and includes delivering what is queued.
    pub async fn shut_down(
        &mut self,
        timeout: Duration,
    ) -> std::io::Result<std::process::ExitStatus> {
        let remaining = self.close_stdin(timeout).await;
        self.child.shutdown(remaining).await
    }

    /// Stops everything at once (after a shutdown, or when giving up).
    pub fn abort(&mut self) {
        self.to_server.close();
        self.server_writer.abort();
        self.server_reader.abort();
        self.child.kill_stragglers();
    }
}
