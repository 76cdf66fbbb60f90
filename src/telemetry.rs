//! Observability: tracing setup and the proxy's counters.
//!
//! Logs go to stderr or a file, never to stdout (which carries MCP in stdio mode), through a
//! background writer thread: a client that doesn't drain our stderr must not stall the proxy, so
//! when that writer's buffer is full, log lines are dropped rather than waited for. Counters are
//! atomics, each changed in exactly one place per event, so they cannot drift.

use std::fs::OpenOptions;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;
use crate::protocol::Direction;

/// Log lines buffered for the background writer before new ones are dropped. The buffer is
/// allocated up front: tracing-appender's default (128,000 lines) costs about 4 MiB of RSS.
pub const LOG_BUFFER_LINES: usize = 4096;

fn log_writer() -> tracing_appender::non_blocking::NonBlockingBuilder {
    tracing_appender::non_blocking::NonBlockingBuilder::default()
        .buffered_lines_limit(LOG_BUFFER_LINES)
        .lossy(true)
        .thread_name("shadowcat-log")
}

/// Keeps the background log writer running; dropping it flushes what is buffered.
pub type LogGuard = tracing_appender::non_blocking::WorkerGuard;

/// Installs the global tracing subscriber. Keep the guard until the program ends.
pub fn init_tracing(
    filter: &str,
    format: LogFormat,
    file: Option<&Path>,
) -> anyhow::Result<LogGuard> {
    let filter = EnvFilter::try_new(filter)
        .map_err(|e| anyhow::anyhow!("invalid --log-level {filter:?}: {e}"))?;
    let (writer, guard) = match file {
        Some(path) => {
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| anyhow::anyhow!("cannot open log file {}: {e}", path.display()))?;
            log_writer().finish(file)
        }
        None => log_writer().finish(std::io::stderr()),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    let result = match format {
        LogFormat::Text => builder
            .with_ansi(file.is_none() && std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    result.map_err(|e| anyhow::anyhow!("cannot install the logger: {e}"))?;
    Ok(guard)
}

/// Counters for one proxy process.
#[derive(Debug, Default)]
pub struct Metrics {
    forwarded: [AtomicU64; 2],
    answered_by_proxy: [AtomicU64; 2],
    malformed: [AtomicU64; 2],
    oversized: [AtomicU64; 2],
    unmatched_responses: [AtomicU64; 2],
}

/// A point-in-time copy of [`Metrics`], summed over both directions where that reads better.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Messages forwarded client→server.
    pub forwarded_to_server: u64,
    /// Messages forwarded server→client.
    pub forwarded_to_client: u64,
    /// Messages the proxy answered itself (errors), both directions.
    pub answered_by_proxy: u64,
    /// Frames that were not valid JSON-RPC, both directions.
    pub malformed: u64,
    /// Frames over the size limit, both directions.
    pub oversized: u64,
    /// Responses that matched no pending request, both directions.
    pub unmatched_responses: u64,
}

fn slot(direction: Direction) -> usize {
    match direction {
        Direction::ClientToServer => 0,
        Direction::ServerToClient => 1,
    }
}

fn bump(counters: &[AtomicU64; 2], direction: Direction) {
    counters[slot(direction)].fetch_add(1, Ordering::Relaxed);
}

impl Metrics {
    /// A message was forwarded in `direction`.
    pub fn forwarded(&self, direction: Direction) {
        bump(&self.forwarded, direction);
    }

    /// The proxy answered a message travelling in `direction` itself.
    pub fn answered_by_proxy(&self, direction: Direction) {
        bump(&self.answered_by_proxy, direction);
    }

    /// A malformed frame arrived travelling in `direction`.
    pub fn malformed(&self, direction: Direction) {
        bump(&self.malformed, direction);
    }

    /// An over-long frame arrived travelling in `direction`.
    pub fn oversized(&self, direction: Direction) {
        bump(&self.oversized, direction);
    }

    /// A response travelling in `direction` matched no pending request.
    pub fn unmatched_response(&self, direction: Direction) {
        bump(&self.unmatched_responses, direction);
    }

    /// Reads every counter.
    pub fn snapshot(&self) -> Snapshot {
        let sum = |c: &[AtomicU64; 2]| c[0].load(Ordering::Relaxed) + c[1].load(Ordering::Relaxed);
        Snapshot {
            forwarded_to_server: self.forwarded[0].load(Ordering::Relaxed),
            forwarded_to_client: self.forwarded[1].load(Ordering::Relaxed),
            answered_by_proxy: sum(&self.answered_by_proxy),
            malformed: sum(&self.malformed),
            oversized: sum(&self.oversized),
            unmatched_responses: sum(&self.unmatched_responses),
        }
    }
}

/// The gateway's metrics in Prometheus' text format.
pub fn prometheus_text(gateway: &crate::proxy::reverse::gateway::Gateway) -> String {
    format!("shadowcat_sessions_open {}\n", gateway.open_sessions())
}
