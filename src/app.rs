//! Wiring: turns a parsed command and its configuration into running parts, runs them, and
//! reports how it went as an exit code.

use std::io::Write;

use anyhow::Context as _;
use clap::CommandFactory;

use crate::cli::{Cli, Command, ForwardCommand, StdioArgs};
use crate::config::Config;
use crate::proxy::forward;
use crate::transport::child::ChildSpec;

/// The options a command proxies with, if it proxies.
pub fn proxy_args(command: &Command) -> Option<&crate::cli::ProxyArgs> {
    match command {
        Command::Forward(ForwardCommand::Stdio(args)) => Some(&args.proxy),
        Command::Completions { .. } => None,
    }
}

/// Runs `command`; returns the process exit code.
pub fn run(command: Command, config: &Config) -> anyhow::Result<u8> {
    match command {
        Command::Forward(ForwardCommand::Stdio(args)) => run_forward_stdio(args, config),
        Command::Completions { shell } => {
            let mut out = std::io::stdout().lock();
            clap_complete::generate(shell, &mut Cli::command(), "shadowcat", &mut out);
            out.flush().context("cannot write the completion script")?;
            Ok(0)
        }
    }
}

fn run_forward_stdio(args: StdioArgs, config: &Config) -> anyhow::Result<u8> {
    let mut command = args.command.into_iter();
    let program = command.next().context("no server command given after --")?;
    let spec = ChildSpec {
        program,
        args: command.collect(),
        env: args.env,
        cwd: args.cwd,
    };
    // One thread: a stdio proxy does little work per message, and keeping both directions on one
    // thread avoids cross-thread wake-ups on every hop (see docs/performance.md).
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let code = runtime.block_on(forward::run(config, &spec));
    // A terminal stdin is read on a blocking thread that never returns; don't wait for it.
    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
    code
}
