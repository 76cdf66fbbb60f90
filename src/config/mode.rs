//! What a command line asks to run: [`configure`] turns the parsed command into the validated
//! [`Config`] and a [`Mode`], reading the config file once; `app` runs the mode.

use crate::cli::{
    Cli, Command, ForwardCommand, ReplayArgs, ReverseArgs, RulesCommand, SessionCommand,
    StdioServer, TapeCommand,
};
use crate::transport::child::{ChildSpec, Restart};

use super::recording::{Ask, Server, Target, secrets};
use super::{Config, ConfigFile, ReverseConfig, UpstreamConfig};

/// The options the config file gives that its parts read from the parsed command line:
/// `record`, `redact` and `cwd` (for a server command: a URL server has no directory), where
/// the command line (flag or variable) gives none.
fn fill_from_file(command: &mut Command, file: &super::FileConfig) {
    let (recording, redact, child, server_command) = match command {
        Command::Forward(ForwardCommand::Stdio(args)) => (
            Some(&mut args.recording.record),
            &mut args.recording.redact,
            &mut args.server.child,
            &args.server.command,
        ),
        Command::Reverse(args) => (
            Some(&mut args.recording.record),
            &mut args.recording.redact,
            &mut args.child,
            &args.command,
        ),
        Command::Record(args) => (
            None,
            &mut args.redact,
            &mut args.server.child,
            &args.server.command,
        ),
        _ => return,
    };
    if let Some(record) = recording.filter(|r| r.is_none()) {
        record.clone_from(&file.record);
    }
    if redact.is_empty() {
        redact.clone_from(file.redact.as_ref().unwrap_or(&Vec::new()));
    }
    if child.cwd.is_none() && !server_command.is_empty() {
        child.cwd.clone_from(&file.cwd);
    }
}

/// The tape a command reads, if it reads one.
fn tape_arg(command: &mut Command) -> Option<&mut std::path::PathBuf> {
    match command {
        Command::Replay(args) => Some(&mut args.tape),
        Command::Tape(cmd) => match cmd {
            TapeCommand::Show { tape, .. } | TapeCommand::Redact { tape, .. } => Some(tape),
            TapeCommand::Verify(args) => Some(&mut args.tape),
            TapeCommand::List { .. } => None,
        },
        Command::Rules(RulesCommand::Test { tape, .. }) => Some(tape),
        _ => None,
    }
}

/// The options a command proxies with, if it proxies.
fn proxy_args(command: &Command) -> Option<&crate::cli::ProxyArgs> {
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
    /// `forward stdio -- <cmd>` and `record`: a child server of our own, restarted as asked.
    Forward(ChildSpec, Restart),
    /// `forward stdio --url`: our stdio bridged to an HTTP server.
    Bridge(UpstreamConfig),
    /// `reverse`, and `replay --listen` (whose server, per session, is `replay` of the tape).
    Reverse(Box<ReverseConfig>),
    /// `replay` on stdio.
    Replay(ReplayArgs),
    /// `tape …` (boxed: `tape verify` carries a server's options).
    Tape(Box<TapeCommand>),
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
    let args: Vec<String> = std::env::args_os()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    configure_with(cli, &file).map_err(|e| match e.downcast::<super::ConfigError>() {
        Ok(e) => super::name_source(e, &file, &args).into(),
        Err(e) => e,
    })
}

/// [`configure`], with the config file read.
fn configure_with(mut cli: Cli, file: &ConfigFile) -> anyhow::Result<(Config, Mode)> {
    let mut config = Config::build_with(&cli.global, file, proxy_args(&cli.command))?;
    fill_from_file(&mut cli.command, file.inner());
    if let Some(tape) = tape_arg(&mut cli.command) {
        // A tape may be named by its id's (or session's) first characters, as `tape list`
        // shows them.
        *tape = crate::tape::find(tape, &config.data_dir.join(super::TAPES_DIR))?;
    }
    if let Command::Tape(TapeCommand::Verify(args)) = &cli.command {
        // Checked here too, where a refusal names the flag or the variable the URL came from.
        server_url(&args.server, None)?;
    }
    if let Command::Replay(args) = &cli.command {
        // Replay's spans: the gateway's with --listen, else the stdio server's own.
        config.traces = super::traces::options(&args.trace, file.inner())?;
    }
    let mode = match cli.command {
        Command::Reverse(args) => {
            let mut reverse = ReverseConfig::build_with(file, &args)?;
            reverse.settle_sessions(&mut config.sessions);
            let ask = Ask::from_flags(&args.recording, Target::Dir, "reverse");
            let server = Some(reverse.server());
            config.recording = recording(ask, server)?;
            masks(&mut config, &args.recording.redact, server)?;
            Mode::Reverse(Box::new(reverse))
        }
        Command::Forward(ForwardCommand::Stdio(args)) => {
            let mode = stdio_server(file, &args.server)?;
            let ask = Ask::from_flags(&args.recording, Target::FileOrDir, "forward");
            config.recording = recording(ask, mode.server())?;
            masks(&mut config, &args.recording.redact, mode.server())?;
            mode
        }
        Command::Record(args) => {
            let mode = stdio_server(file, &args.server)?;
            let (path, target) = match &args.output {
                Some(path) => (path.clone(), Target::FileOrDir),
                None => (config.data_dir.join(super::TAPES_DIR), Target::Dir),
            };
            let ask = Ask {
                path,
                target,
                name: args.name.clone(),
                redact: &args.redact,
                mode: "record",
            };
            config.recording = recording(Some(ask), mode.server())?;
            masks(&mut config, &args.redact, mode.server())?;
            mode
        }
        Command::Replay(args) if args.listen.is_some() => Mode::Reverse(Box::new(
            ReverseConfig::build_with(file, &replay_gateway(&args))?,
        )),
        Command::Replay(args) => Mode::Replay(args),
        Command::Tape(cmd) => Mode::Tape(Box::new(cmd)),
        Command::Session(cmd) => Mode::Session(cmd),
        Command::Rules(cmd) => Mode::Rules(cmd),
        Command::Completions { shell } => Mode::Completions(shell),
    };
    Ok((config, mode))
}

impl Mode {
    /// The server a proxying mode reaches.
    fn server(&self) -> Option<Server<'_>> {
        match self {
            Self::Forward(spec, _) => Some(Server::Command(spec)),
            Self::Bridge(upstream) => Some(Server::Http(upstream)),
            Self::Reverse(reverse) => Some(reverse.server()),
            _ => None,
        }
    }
}

impl ReverseConfig {
    /// The gateway's server.
    fn server(&self) -> Server<'_> {
        match &self.upstream {
            super::ReverseUpstream::Http(upstream) => Server::Http(upstream),
            super::ReverseUpstream::Stdio(spec) => Server::Command(spec),
        }
    }
}

/// The masks for traced payloads (`--trace-payloads`), the live view (`--ui-listen`) and the
/// traffic view (`--traffic`):
/// `--redact`'s paths and the server's credentials. `--redact` with nothing to mask is refused.
fn masks(
    config: &mut Config,
    redact: &[String],
    server: Option<Server<'_>>,
) -> Result<(), super::ConfigError> {
    let secrets = server.map(secrets).unwrap_or_default();
    if let Some(ui) = config.ui.as_mut() {
        ui.masks = std::sync::Arc::new(super::recording::redactor(redact, &secrets)?);
    }
    if let Some(traffic) = config.traffic.as_mut() {
        traffic.masks = std::sync::Arc::new(super::recording::redactor(redact, &secrets)?);
    }
    let payloads = config.traces.as_mut().and_then(|t| t.payloads.as_mut());
    match payloads {
        Some(payloads) => {
            *payloads = std::sync::Arc::new(super::recording::redactor(redact, &secrets)?);
            Ok(())
        }
        None if !redact.is_empty()
            && config.recording.is_none()
            && config.ui.is_none()
            && config.traffic.is_none() =>
        {
            Err(super::invalid(
                "--redact",
                "masks what is recorded (--record), traced (--trace-payloads) or shown \
                 (--ui-listen, --traffic); none of them is on"
                    .to_owned(),
            ))
        }
        None => Ok(()),
    }
}

/// The recording `ask` asks for (with the server's credentials to mask), if any.
fn recording(
    ask: Option<Ask<'_>>,
    server: Option<Server<'_>>,
) -> Result<Option<crate::tape::Recording>, super::ConfigError> {
    let http = matches!(server, Some(Server::Http(_)));
    let secrets = server.map(secrets).unwrap_or_default();
    ask.map(|ask| super::recording::build(ask, &secrets, http))
        .transpose()
}

/// A stdio client's server: for a URL, the bridge to it (the gateway's upstream options); else
/// the command, run as our child.
fn stdio_server(file: &ConfigFile, server: &StdioServer) -> anyhow::Result<Mode> {
    if let Some(url) = server_url(server, file.inner().url.as_ref())? {
        if server.restart.is_some() {
            return Err(super::invalid(
                "--restart",
                "applies to a server command, not to a --url server".into(),
            )
            .into());
        }
        return Ok(Mode::Bridge(ReverseConfig::for_url(file, server, &url)?));
    }
    let restart = server.restart.or(file.inner().restart).unwrap_or_default();
    Ok(Mode::Forward(super::child_spec(server)?, restart))
}

/// The URL of a stdio client's server (`--url`, `SHADOWCAT_URL`, or else `file_url` when no
/// command is given), or `None` for a server command given with no option that only a URL
/// server takes. Exactly one server must be given.
pub fn server_url(
    server: &StdioServer,
    file_url: Option<&String>,
) -> anyhow::Result<Option<String>> {
    let url = match (&server.url, server.command.is_empty()) {
        (Some(_), false) => return Err(super::invalid("--url", ONE_SERVER.into()).into()),
        (Some(url), true) => Some(url.clone()),
        (None, true) => file_url.cloned(),
        (None, false) => None,
    };
    if url.is_none() {
        if server.command.is_empty() {
            anyhow::bail!("no server to proxy: give its command after --, or its URL with --url");
        }
        ReverseConfig::check_command_only(server)?;
    }
    Ok(url)
}

/// Why a server command and a URL given together are refused: which one was meant is unknown.
pub(super) const ONE_SERVER: &str =
    "a server command was also given (after --): give one server, a command or a URL";

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
