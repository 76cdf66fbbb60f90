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
    // The traffic lines show whatever the level (`--traffic` asked for them).
    let filter = match &config.traffic {
        Some(_) => format!("{},{}=info", config.log_level, telemetry::traffic::TARGET),
        None => config.log_level.clone(),
    };
    let _log_guard =
        match telemetry::init_tracing(&filter, config.log_format, config.log_file.as_deref()) {
            Ok(guard) => guard,
            Err(e) => return fail(&e),
        };
    // A misspelt variable would otherwise be ignored without a word.
    let args: Vec<String> = std::env::args_os()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let vars = std::env::vars_os().filter_map(|(name, value)| {
        Some((
            name.into_string().ok()?,
            value.to_string_lossy().into_owned(),
        ))
    });
    for name in shadowcat::cli::unknown_env_vars(vars, &args) {
        tracing::warn!("{name} is set, but no option reads it (see docs/cli.md)");
    }
    match app::run(mode, &config) {
        Ok(code) => ExitCode::from(code),
        Err(e) if closed_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            // Said once: on stderr, and in the log file if there is one (which stderr is not).
            if config.log_file.is_some() {
                tracing::error!("{}", said(&e));
            }
            fail(&e)
        }
    }
}

/// Reports a fatal error on stderr (never stdout: it may carry MCP).
fn fail(e: &anyhow::Error) -> ExitCode {
    eprintln!("shadowcat: error: {}", said(e));
    ExitCode::from(2)
}

/// `e` and its causes, each said once: a cause whose words the message before already carries
/// (`cannot read x: No such file or directory`) is not said again.
fn said(e: &anyhow::Error) -> String {
    let mut text = e.to_string();
    for cause in e.chain().skip(1) {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
    }
    text
}

/// Whether `e` is stdout closed by its reader (`shadowcat session list | head`): what was
/// wanted was read, so that is no failure.
fn closed_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}
