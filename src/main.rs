//! The `shadowcat` binary: parse the command line, set up logging, run, exit.

use std::process::ExitCode;

use clap::Parser;
use shadowcat::cli::Cli;
use shadowcat::transport::reaper;
use shadowcat::{app, config, telemetry};

fn main() -> ExitCode {
    if let Some(code) = reaper::run_if_asked() {
        return ExitCode::from(code);
    }
    reaper::enable();
    let cli = Cli::parse();
    let (config, mode) = match config::configure(cli) {
        Ok(configured) => configured,
        Err(e) => return fail(&e),
    };
    // Held to the end: dropping it flushes the log writer.
    let _log_guard = match telemetry::init_tracing(
        &config.log_level,
        config.log_format,
        config.log_file.as_deref(),
    ) {
        Ok(guard) => guard,
        Err(e) => return fail(&e),
    };
    match app::run(mode, &config) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            tracing::error!("{e:#}");
            fail(&e)
        }
    }
}

/// Reports a fatal error on stderr (never stdout: it may carry MCP).
fn fail(e: &anyhow::Error) -> ExitCode {
    eprintln!("shadowcat: error: {e:#}");
    ExitCode::from(2)
}
