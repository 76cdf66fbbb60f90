//! Wiring: runs a [`Mode`] (from [`crate::config::configure`]) on the scaffold every front end
//! stands on, and reports how it went as an exit code.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::CommandFactory;

use crate::cli::Cli;
use crate::config::cluster::RedisConfig;
use crate::config::{Config, Mode, StoreKind};
use crate::proxy::forward;
use crate::proxy::shutdown::Shutdown;
use crate::session::store::redis::{ClusterHistory, RedisStore};
use crate::session::store::{SessionStore, SqliteStore};
use crate::session::{SessionManager, StoreWriter};
use crate::telemetry::Observers;
use crate::telemetry::feed::Feed;

/// Runs `mode`; returns the process exit code.
pub fn run(mode: Mode, config: &Config) -> anyhow::Result<u8> {
    match mode {
        // A terminal stdin is read on a blocking thread that never returns; don't wait for it
        // long.
        Mode::Forward(spec, restart) => on_one_thread(
            config,
            None,
            Duration::from_millis(100),
            |sessions, observers, shutdown| async move {
                forward::run(
                    config,
                    &spec,
                    restart,
                    &sessions,
                    config.recording.as_ref(),
                    &observers,
                    shutdown,
                )
                .await
            },
        ),
        Mode::Bridge(upstream) => on_one_thread(
            config,
            None,
            Duration::from_millis(100),
            |sessions, observers, shutdown| async move {
                crate::proxy::bridge::run(config, &upstream, &sessions, &observers, shutdown).await
            },
        ),
        Mode::Reverse(reverse) => {
            // A cluster's instances keep the history in its Redis too.
            let redis = reverse.cluster.as_ref().and_then(|c| c.redis.clone());
            on_one_thread(
                config,
                redis.as_ref(),
                Duration::from_secs(1),
                |sessions, observers, shutdown| async move {
                    crate::proxy::reverse::run(config, &reverse, &sessions, &observers, shutdown)
                        .await
                },
            )
        }
        Mode::Replay(args) => crate::cmd::replay::run_stdio(&args, config.traces.as_ref()),
        Mode::Tape(cmd) => crate::cmd::tape::run(*cmd, config),
        Mode::Session(cmd) => crate::cmd::session::run(cmd, config),
        Mode::Rules(cmd) => crate::cmd::rules::run(cmd),
        Mode::Completions(shell) => {
            // Made whole first: the generator panics if it cannot write (a closed pipe).
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "shadowcat", &mut script);
            let mut out = std::io::stdout().lock();
            out.write_all(&script)
                .and_then(|()| out.flush())
                .context("cannot write the completion script")?;
            Ok(0)
        }
    }
}

/// How long the session history writer gets to save the last records at exit.
const STORE_CLOSE_GRACE: Duration = Duration::from_secs(2);
/// How long the spans still queued get to reach the collector at exit.
const TRACE_FLUSH_GRACE: Duration = Duration::from_secs(2);

/// Runs `proxy` on a one-thread runtime (cross-thread wake-ups cost more here than a second
/// worker gains; see docs/performance.md), with what every front end stands on: the session
/// manager (its history store opened, its expiry task running, the store closed at the end,
/// within [`STORE_CLOSE_GRACE`]), the trace exporter (`--otlp-endpoint`; what it holds sent at
/// the end, within [`TRACE_FLUSH_GRACE`]), the live view (`--ui-listen`) and SIGINT and SIGTERM
/// as its shutdown requests, listened for before it starts. The runtime gets `grace` to wind
/// down.
fn on_one_thread<F: Future<Output = anyhow::Result<u8>>>(
    config: &Config,
    redis: Option<&RedisConfig>,
    grace: Duration,
    proxy: impl FnOnce(Arc<SessionManager>, Observers, Shutdown) -> F,
) -> anyhow::Result<u8> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    // Opened before the runtime starts: SQLite calls block, and the runtime must not.
    let store = open_store(config, redis);
    let code = runtime.block_on(async {
        // Before anything starts, so a signal never finds the default (fatal) handler.
        let shutdown = Shutdown::on_signals()?;
        let tracer = crate::telemetry::traces::start(config.traces.as_ref())?;
        let sessions = SessionManager::new(config.sessions.clone(), store);
        // One feed for the live view and the traffic lines (their masks are the same).
        let masks = config.ui.as_ref().map(|ui| ui.masks.clone());
        let masks = masks.or_else(|| config.traffic.as_ref().map(|t| t.masks.clone()));
        let feed = masks.map(Feed::new);
        let stop_traffic = tokio_util::sync::CancellationToken::new();
        let mut traffic = match (&config.traffic, &feed) {
            (Some(traffic), Some(feed)) => crate::telemetry::traffic::spawn(
                feed,
                traffic.show,
                config.log_format,
                stop_traffic.clone(),
            ),
            _ => None,
        };
        let ui = match (&config.ui, &feed) {
            (Some(ui), Some(feed)) => {
                Some(crate::ui::start(ui, config, sessions.clone(), feed.clone()).await?)
            }
            _ => None,
        };
        let stop_cleanup = tokio_util::sync::CancellationToken::new();
        let mut cleanup = sessions.spawn_cleanup(config.cleanup_interval, stop_cleanup.clone());
        let observers = Observers {
            tracer: tracer.clone(),
            feed,
        };
        let code = proxy(sessions.clone(), observers, shutdown).await;
        stop_traffic.cancel();
        if let Some(traffic) = traffic.as_mut() {
            traffic.join_within(Duration::from_secs(1)).await;
        }
        if let Some(ui) = ui {
            ui.stop().await;
        }
        if let Some(tracer) = tracer {
            tracer.shutdown(TRACE_FLUSH_GRACE).await;
        }
        stop_cleanup.cancel();
        cleanup.join_within(Duration::from_secs(1)).await;
        tracing::debug!(sessions = %sessions.metrics(), "session totals");
        let _ = tokio::task::spawn_blocking(move || sessions.close_store(STORE_CLOSE_GRACE)).await;
        code
    });
    runtime.shutdown_timeout(grace);
    code
}

/// The session history writer `config` asks for (in a cluster with `redis`, the cluster's
/// history there too). History is a convenience: if the store can't be opened, the proxy runs
/// without it and says so.
fn open_store(config: &Config, redis: Option<&RedisConfig>) -> Option<StoreWriter> {
    let local: Option<Arc<dyn SessionStore>> = match config.session_store {
        // No history kept: not in Redis either.
        StoreKind::Memory => return None,
        StoreKind::Sqlite => match SqliteStore::open_in(&config.data_dir) {
            Ok(store) => Some(Arc::new(store)),
            Err(e) => {
                tracing::warn!(%e, "session history is off (use --data-dir to choose another place)");
                None
            }
        },
    };
    let shared = redis.and_then(|r| match RedisStore::new(&r.url, r.timeout) {
        Ok(store) => Some(store),
        Err(e) => {
            tracing::warn!(%e, "the cluster's session history is off");
            None
        }
    });
    let store: Arc<dyn SessionStore> = match (local, shared) {
        (local, Some(shared)) => Arc::new(ClusterHistory::new(local, shared)),
        (Some(local), None) => local,
        (None, None) => return None,
    };
    match StoreWriter::start(store, 2 * config.sessions.max_sessions) {
        Ok(writer) => Some(writer),
        Err(e) => {
            tracing::warn!(%e, "session history is off: cannot start its writer thread");
            None
        }
    }
}
