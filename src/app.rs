//! Wiring: turns a parsed command and its configuration into running parts, runs them, and
//! reports how it went as an exit code.

use std::io::Write;

use anyhow::Context as _;
use clap::CommandFactory;

use crate::cli::{Cli, Command, ForwardCommand, ReplayArgs, ReverseArgs, StdioServer};
use crate::config::recording::{Ask, Target};
use std::sync::Arc;

use crate::config::{Config, ConfigFile, ReverseConfig, StoreKind};
use crate::proxy::forward;
use crate::proxy::shutdown::Shutdown;
use crate::session::store::{SessionStore, SqliteStore};
use crate::session::{SessionManager, StoreWriter};

/// The options a command proxies with, if it proxies.
pub fn proxy_args(command: &Command) -> Option<&crate::cli::ProxyArgs> {
    match command {
        Command::Forward(ForwardCommand::Stdio(args)) => Some(&args.proxy),
        Command::Reverse(args) => Some(&args.proxy),
        Command::Record(args) => Some(&args.proxy),
        Command::Replay(_)
        | Command::Tape(_)
        | Command::Session(_)
        | Command::Rules(_)
        | Command::Completions { .. } => None,
    }
}

/// The validated configuration for a parsed command line.
pub fn configure(cli: &Cli) -> Result<Config, crate::config::ConfigError> {
    // Read once, for every part of the configuration.
    let file = ConfigFile::read(&cli.global)?;
    let mut config = Config::build_with(&cli.global, &file, proxy_args(&cli.command))?;
    let ask = match &cli.command {
        Command::Reverse(args) => {
            let mut reverse = ReverseConfig::build_with(&file, args)?;
            reverse.settle_sessions(&mut config.sessions);
            config.reverse = Some(reverse);
            Ask::from_flags(&args.recording, Target::Dir, "reverse")
        }
        Command::Forward(ForwardCommand::Stdio(args)) => {
            config.reverse = stdio_server(&file, &args.server)?;
            Ask::from_flags(&args.recording, Target::FileOrDir, "forward")
        }
        Command::Record(args) => {
            config.reverse = stdio_server(&file, &args.server)?;
            let (path, target) = match &args.output {
                Some(path) => (path.clone(), Target::FileOrDir),
                None => (config.data_dir.join(crate::config::TAPES_DIR), Target::Dir),
            };
            Some(Ask {
                path,
                target,
                name: args.name.clone(),
                redact: &args.redact,
                mode: "record",
            })
        }
        Command::Replay(args) if args.listen.is_some() => {
            config.reverse = Some(ReverseConfig::build_with(&file, &replay_gateway(args))?);
            None
        }
        _ => None,
    };
    if let Some(ask) = ask {
        config.recording = Some(crate::config::recording::build(
            ask,
            config.reverse.as_ref(),
        )?);
    }
    Ok(config)
}

/// The upstream options of a stdio client's server: for a --url, the gateway's upstream side
/// (the stdio→HTTP bridge uses it); none for a command.
fn stdio_server(
    file: &ConfigFile,
    server: &StdioServer,
) -> Result<Option<ReverseConfig>, crate::config::ConfigError> {
    if server.url.is_some() {
        return ReverseConfig::for_url(file, server).map(Some);
    }
    ReverseConfig::check_command_only(server)?;
    Ok(None)
}

/// `replay --listen`: a gateway whose server, for each session, is `shadowcat replay` of the
/// tape over stdio. The gateway's sessions, SSE streams and HTTP handling are the reverse
/// proxy's own; each HTTP session replays the tape afresh.
fn replay_gateway(args: &ReplayArgs) -> ReverseArgs {
    let exe = std::env::current_exe().unwrap_or_else(|_| "shadowcat".into());
    let tape = std::path::absolute(&args.tape).unwrap_or_else(|_| args.tape.clone());
    ReverseArgs {
        listen: args.listen.clone(),
        command: vec![
            exe.into_os_string(),
            "replay".into(),
            tape.into_os_string(),
            "--match".into(),
            args.match_mode.as_str().into(),
            "--speed".into(),
            args.speed.to_string().into(),
        ],
        ..ReverseArgs::default()
    }
}

/// Runs `command`; returns the process exit code.
pub fn run(command: Command, config: &Config) -> anyhow::Result<u8> {
    match command {
        Command::Forward(ForwardCommand::Stdio(args)) => run_forward_stdio(&args.server, config),
        Command::Record(args) => run_forward_stdio(&args.server, config),
        Command::Reverse(_) => run_reverse(config),
        Command::Replay(args) if args.listen.is_some() => run_reverse(config),
        Command::Replay(args) => crate::cmd::replay::run_stdio(&args),
        Command::Tape(cmd) => crate::cmd::tape::run(cmd, config),
        Command::Session(cmd) => crate::cmd::session::run(cmd, config),
        Command::Rules(cmd) => crate::cmd::rules::run(cmd),
        Command::Completions { shell } => {
            let mut out = std::io::stdout().lock();
            clap_complete::generate(shell, &mut Cli::command(), "shadowcat", &mut out);
            out.flush().context("cannot write the completion script")?;
            Ok(0)
        }
    }
}

fn run_forward_stdio(args: &StdioServer, config: &Config) -> anyhow::Result<u8> {
    if args.url.is_some() {
        return run_bridge(config);
    }
    let spec = crate::config::child_spec(args)?;
    // A terminal stdin is read on a blocking thread that never returns; don't wait for it long.
    on_one_thread(
        config,
        std::time::Duration::from_millis(100),
        |sessions, shutdown| async move {
            forward::run(
                config,
                &spec,
                &sessions,
                config.recording.as_ref(),
                shutdown,
            )
            .await
        },
    )
}

/// `forward stdio --url`.
fn run_bridge(config: &Config) -> anyhow::Result<u8> {
    let upstream = config
        .reverse
        .as_ref()
        .context("the --url server's options were not configured")?;
    on_one_thread(
        config,
        std::time::Duration::from_millis(100),
        |sessions, shutdown| async move {
            crate::proxy::bridge::run(config, upstream, &sessions, shutdown).await
        },
    )
}

fn run_reverse(config: &Config) -> anyhow::Result<u8> {
    let reverse = config
        .reverse
        .as_ref()
        .context("the reverse proxy's options were not configured")?;
    on_one_thread(
        config,
        std::time::Duration::from_secs(1),
        |sessions, shutdown| async move {
            crate::proxy::reverse::run(config, reverse, &sessions, shutdown).await
        },
    )
}

/// How long the session history writer gets to save the last records at exit.
const STORE_CLOSE_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// Runs `proxy` on a one-thread runtime (cross-thread wake-ups cost more here than a second
/// worker gains; see docs/performance.md), with what every front end stands on: the session
/// manager (its history store opened, its expiry task running, the store closed at the end,
/// within [`STORE_CLOSE_GRACE`]) and SIGINT and SIGTERM as its shutdown requests, listened for
/// before it starts. The runtime gets `grace` to wind down.
fn on_one_thread<F: Future<Output = anyhow::Result<u8>>>(
    config: &Config,
    grace: std::time::Duration,
    proxy: impl FnOnce(Arc<SessionManager>, Shutdown) -> F,
) -> anyhow::Result<u8> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    // Opened before the runtime starts: SQLite calls block, and the runtime must not.
    let store = open_store(config);
    let code = runtime.block_on(async {
        // Before anything starts, so a signal never finds the default (fatal) handler.
        let shutdown = Shutdown::on_signals()?;
        let sessions = SessionManager::new(config.sessions.clone(), store);
        let stop_cleanup = tokio_util::sync::CancellationToken::new();
        let mut cleanup = sessions.spawn_cleanup(config.cleanup_interval, stop_cleanup.clone());
        let code = proxy(sessions.clone(), shutdown).await;
        stop_cleanup.cancel();
        cleanup.join_within(std::time::Duration::from_secs(1)).await;
        tracing::debug!(sessions = ?sessions.metrics(), "session totals");
        let _ = tokio::task::spawn_blocking(move || sessions.close_store(STORE_CLOSE_GRACE)).await;
        code
    });
    runtime.shutdown_timeout(grace);
    code
}

/// The session history writer `config` asks for. History is a convenience: if the store can't
/// be opened, the proxy runs without it and says so.
fn open_store(config: &Config) -> Option<StoreWriter> {
    let store: Arc<dyn SessionStore> = match config.session_store {
        StoreKind::Memory => return None,
        StoreKind::Sqlite => match SqliteStore::open_in(&config.data_dir) {
            Ok(store) => Arc::new(store),
            Err(e) => {
                tracing::warn!(%e, "session history is off (use --data-dir to choose another place)");
                return None;
            }
        },
    };
    match StoreWriter::start(store, 2 * config.sessions.max_sessions) {
        Ok(writer) => Some(writer),
        Err(e) => {
            tracing::warn!(%e, "session history is off: cannot start its writer thread");
            None
        }
    }
}
