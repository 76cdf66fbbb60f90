//! Wiring: turns a parsed command and its configuration into running parts, runs them, and
//! reports how it went as an exit code.

use std::io::Write;

use anyhow::Context as _;
use clap::CommandFactory;

use std::time::Duration;

use crate::cli::{
    Cli, Command, ForwardCommand, ReplayArgs, ReverseArgs, RulesCommand, SessionCommand,
    StdioServer, TapeCommand,
};
use crate::config::recording::{Ask, Target};
use crate::transport::child::ChildSpec;
use std::sync::Arc;

use crate::config::{Config, ConfigFile, ReverseConfig, StoreKind, UpstreamConfig};
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

/// What a command runs, validated from the command line: [`run`] matches on this, never on
/// the command line's types. (The commands that do not proxy keep their arguments: `cmd` reads
/// them.)
#[derive(Debug)]
pub enum Mode {
    /// `forward stdio -- <cmd>` and `record`: a child server of our own.
    Forward(ChildSpec),
    /// `forward stdio --url`: our stdio bridged to an HTTP server.
    Bridge(UpstreamConfig),
    /// `reverse`, and `replay --listen` (whose server, per session, is `replay` of the tape).
    Reverse(Box<ReverseConfig>),
    /// `replay` on stdio.
    Replay(ReplayArgs),
    /// `tape …`.
    Tape(TapeCommand),
    /// `session …`.
    Session(SessionCommand),
    /// `rules …`.
    Rules(RulesCommand),
    /// `completions SHELL`.
    Completions(clap_complete::Shell),
}

/// The validated configuration and mode for a parsed command line, which it consumes. The
/// config file is read once, here.
pub fn configure(cli: Cli) -> anyhow::Result<(Config, Mode)> {
    let file = ConfigFile::read(&cli.global)?;
    let mut config = Config::build_with(&cli.global, &file, proxy_args(&cli.command))?;
    let mode = match cli.command {
        Command::Reverse(args) => {
            let mut reverse = ReverseConfig::build_with(&file, &args)?;
            reverse.settle_sessions(&mut config.sessions);
            let ask = Ask::from_flags(&args.recording, Target::Dir, "reverse");
            config.recording = recording(ask, reverse.http_upstream().as_ref())?;
            Mode::Reverse(Box::new(reverse))
        }
        Command::Forward(ForwardCommand::Stdio(args)) => {
            let mode = stdio_server(&file, &args.server)?;
            let ask = Ask::from_flags(&args.recording, Target::FileOrDir, "forward");
            config.recording = recording(ask, mode.upstream().as_ref())?;
            mode
        }
        Command::Record(args) => {
            let mode = stdio_server(&file, &args.server)?;
            let (path, target) = match &args.output {
                Some(path) => (path.clone(), Target::FileOrDir),
                None => (config.data_dir.join(crate::config::TAPES_DIR), Target::Dir),
            };
            let ask = Ask {
                path,
                target,
                name: args.name.clone(),
                redact: &args.redact,
                mode: "record",
            };
            config.recording = recording(Some(ask), mode.upstream().as_ref())?;
            mode
        }
        Command::Replay(args) if args.listen.is_some() => Mode::Reverse(Box::new(
            ReverseConfig::build_with(&file, &replay_gateway(&args))?,
        )),
        Command::Replay(args) => Mode::Replay(args),
        Command::Tape(cmd) => Mode::Tape(cmd),
        Command::Session(cmd) => Mode::Session(cmd),
        Command::Rules(cmd) => Mode::Rules(cmd),
        Command::Completions { shell } => Mode::Completions(shell),
    };
    Ok((config, mode))
}

impl Mode {
    /// The HTTP server's options, for a mode that has one.
    fn upstream(&self) -> Option<UpstreamConfig> {
        match self {
            Self::Bridge(upstream) => Some(upstream.clone()),
            Self::Reverse(reverse) => reverse.http_upstream(),
            _ => None,
        }
    }
}

/// The recording `ask` asks for (with `upstream`'s credentials to mask), if any.
fn recording(
    ask: Option<Ask<'_>>,
    upstream: Option<&UpstreamConfig>,
) -> Result<Option<crate::tape::Recording>, crate::config::ConfigError> {
    ask.map(|ask| crate::config::recording::build(ask, upstream))
        .transpose()
}

/// A stdio client's server: for a --url, the bridge to it (the gateway's upstream options);
/// else the command, run as our child.
fn stdio_server(file: &ConfigFile, server: &StdioServer) -> anyhow::Result<Mode> {
    if server.url.is_some() {
        return Ok(Mode::Bridge(ReverseConfig::for_url(file, server)?));
    }
    ReverseConfig::check_command_only(server)?;
    Ok(Mode::Forward(crate::config::child_spec(server)?))
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

/// Runs `mode`; returns the process exit code.
pub fn run(mode: Mode, config: &Config) -> anyhow::Result<u8> {
    match mode {
        // A terminal stdin is read on a blocking thread that never returns; don't wait for it
        // long.
        Mode::Forward(spec) => on_one_thread(
            config,
            Duration::from_millis(100),
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
        ),
        Mode::Bridge(upstream) => on_one_thread(
            config,
            Duration::from_millis(100),
            |sessions, shutdown| async move {
                crate::proxy::bridge::run(config, &upstream, &sessions, shutdown).await
            },
        ),
        Mode::Reverse(reverse) => on_one_thread(
            config,
            Duration::from_secs(1),
            |sessions, shutdown| async move {
                crate::proxy::reverse::run(config, &reverse, &sessions, shutdown).await
            },
        ),
        Mode::Replay(args) => crate::cmd::replay::run_stdio(&args),
        Mode::Tape(cmd) => crate::cmd::tape::run(cmd, config),
        Mode::Session(cmd) => crate::cmd::session::run(cmd, config),
        Mode::Rules(cmd) => crate::cmd::rules::run(cmd),
        Mode::Completions(shell) => {
            let mut out = std::io::stdout().lock();
            clap_complete::generate(shell, &mut Cli::command(), "shadowcat", &mut out);
            out.flush().context("cannot write the completion script")?;
            Ok(0)
        }
    }
}

/// How long the session history writer gets to save the last records at exit.
const STORE_CLOSE_GRACE: Duration = Duration::from_secs(2);

/// Runs `proxy` on a one-thread runtime (cross-thread wake-ups cost more here than a second
/// worker gains; see docs/performance.md), with what every front end stands on: the session
/// manager (its history store opened, its expiry task running, the store closed at the end,
/// within [`STORE_CLOSE_GRACE`]) and SIGINT and SIGTERM as its shutdown requests, listened for
/// before it starts. The runtime gets `grace` to wind down.
fn on_one_thread<F: Future<Output = anyhow::Result<u8>>>(
    config: &Config,
    grace: Duration,
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
        cleanup.join_within(Duration::from_secs(1)).await;
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
