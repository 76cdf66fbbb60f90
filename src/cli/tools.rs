//! The commands that work on what proxies leave behind or take in, without proxying: `session`,
//! `tape`, `replay` and `rules` (their arguments; `crate::cli` holds the proxies' own).

use std::path::PathBuf;

use clap::{Args, Subcommand};

use super::StdioServer;
use crate::tape::MatchMode;

/// `session` subcommands.
#[derive(Debug, Subcommand)]
pub enum SessionCommand {
    /// List sessions, newest first.
    List {
        /// Which sessions.
        #[arg(long, value_enum, default_value = "all")]
        state: crate::session::store::StateFilter,
        /// Output format.
        #[arg(long, value_enum, default_value = "table")]
        format: OutputFormat,
        #[command(flatten)]
        history: HistoryArgs,
    },
    /// Show one session: metadata, counts, pending requests, tags.
    Show {
        /// The session id (as `session list` prints it).
        id: String,
        /// Output format.
        #[arg(long, value_enum, default_value = "table")]
        format: OutputFormat,
        #[command(flatten)]
        history: HistoryArgs,
    },
    /// Delete ended sessions from the history (and sessions whose last message is older than
    /// --older-than, which a killed proxy left looking active).
    #[command(group(clap::ArgGroup::new("which").required(true).args(["older_than", "all"])))]
    Cleanup {
        /// Delete sessions that ended (or were last active) longer ago than this, e.g. 7d or 12h.
        #[arg(long, value_name = "DURATION", allow_hyphen_values = true)]
        older_than: Option<String>,
        /// Delete every ended session.
        #[arg(long)]
        all: bool,
        /// Print what would be deleted; delete nothing.
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        history: HistoryArgs,
    },
}

impl SessionCommand {
    /// Where the history it works on is.
    pub fn history(&self) -> &HistoryArgs {
        match self {
            Self::List { history, .. }
            | Self::Show { history, .. }
            | Self::Cleanup { history, .. } => history,
        }
    }
}

/// Which session history a `session` command works on.
#[derive(Debug, Clone, Default, Args)]
pub struct HistoryArgs {
    /// The session history of a cluster, which its instances keep in this Redis (their
    /// --redis-url), instead of sessions.db in the data dir: every instance's sessions.
    #[arg(long, env = "SHADOWCAT_REDIS_URL", value_name = "URL")]
    pub redis_url: Option<String>,
    /// Longest wait for Redis to answer one command, or to connect. [default: 1s]
    #[arg(long, env = "SHADOWCAT_REDIS_TIMEOUT", value_name = "DURATION")]
    pub redis_timeout: Option<String>,
}

/// `rules` subcommands.
#[derive(Debug, Subcommand)]
pub enum RulesCommand {
    /// Check a rule file as the proxy would load it. Prints its rules in the order they run;
    /// an invalid file is reported on stderr as FILE:LINE:COLUMN: what is wrong, and exits 1.
    ///
    /// Example: shadowcat rules check rules.yaml
    Check {
        /// The rule file (YAML, or JSON if it ends in .json).
        file: PathBuf,
    },
    /// Run a rule file over a recorded tape and print what each rule would do, message by
    /// message. Each message is tried as recorded, in a session tracked as the proxy tracked
    /// it; nothing is sent and nothing waits. An invalid rule file is reported as `rules check`
    /// reports it, and exits 1.
    ///
    /// Example: shadowcat rules test rules.yaml --tape demo.jsonl
    Test {
        /// The rule file.
        file: PathBuf,
        /// The tape (from `shadowcat record` or --record).
        #[arg(long, value_name = "FILE")]
        tape: PathBuf,
        /// Every rule's mode, whatever the file says (as the proxy's --rules-mode).
        #[arg(long, value_name = "MODE")]
        rules_mode: Option<crate::intercept::Mode>,
        /// Output format.
        #[arg(long, value_enum, default_value = "table")]
        format: OutputFormat,
    },
}

/// How `session`, `tape` and `rules` commands print.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    /// Aligned columns for people.
    Table,
    /// JSON for programs.
    Json,
}

/// `replay` options.
#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// The tape.
    pub tape: PathBuf,
    /// Serve Streamable HTTP on this address (each HTTP session replays the tape afresh)
    /// instead of stdio, e.g. 127.0.0.1:8080.
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,
    /// How live requests are matched to recorded ones.
    #[arg(long = "match", value_enum, default_value = "method-params")]
    pub match_mode: MatchMode,
    /// Replay speed: 1 keeps the recorded timing, 2 is twice as fast, 0 sends everything at
    /// once.
    #[arg(long, value_name = "FACTOR", default_value = "1", value_parser = parse_speed)]
    pub speed: f64,
    /// Trace export: a span per replayed request (docs/observability.md).
    #[command(flatten)]
    pub trace: super::TraceArgs,
}

fn parse_speed(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(speed) if speed.is_finite() && speed >= 0.0 => Ok(speed),
        _ => Err(format!(
            "{text:?}: expected a factor of 0 or more, e.g. 1, 2.5 or 0"
        )),
    }
}

/// `tape` subcommands.
#[derive(Debug, Subcommand)]
#[allow(clippy::large_enum_variant)] // Parsed once per process.
pub enum TapeCommand {
    /// Check a server against a tape: replay the tape's client side to it and compare its
    /// answers with the recorded ones (ids ignored, lists matched by name). Prints a diff per
    /// mismatch and a summary; exits 1 if any answer differed or did not come, so it can gate
    /// CI. A failed handshake or a server that exits stops the run at once.
    ///
    /// Examples:
    ///   shadowcat tape verify demo.jsonl -- python server.py
    ///   shadowcat tape verify demo.jsonl --ignore 'tools/call:now=$.result' --url http://127.0.0.1:9000/mcp
    #[command(verbatim_doc_comment)]
    Verify(VerifyArgs),
    /// List tapes: name, date, session, frames, duration, size.
    List {
        /// The directory. [default: the data dir's tapes/]
        dir: Option<PathBuf>,
        /// Output format.
        #[arg(long, value_enum, default_value = "table")]
        format: OutputFormat,
    },
    /// Show a tape: its header and a timeline of its messages (direction, method, tool,
    /// latency); with --messages or --follow, each message as a line and its body.
    ///
    /// Examples:
    ///   shadowcat tape show demo.jsonl
    ///   shadowcat tape show demo.jsonl --messages
    ///   shadowcat tape show "$(ls -t ~/.local/share/shadowcat/tapes/*.jsonl | head -1)" --follow
    #[command(verbatim_doc_comment)]
    Show {
        /// The tape.
        tape: PathBuf,
        /// Output format.
        #[arg(long, value_enum, default_value = "table")]
        format: OutputFormat,
        /// Instead of the timeline, each message: a line (time, direction, kind, method, tool,
        /// id, size, latency) and the message pretty-printed.
        #[arg(long, conflicts_with = "format")]
        messages: bool,
        /// Show the messages as the tape is written (a recording in progress), until its end
        /// line; implies --messages.
        #[arg(long, conflicts_with = "format")]
        follow: bool,
    },
    /// Write a copy of a tape with the values at JSONPaths masked.
    Redact {
        /// The tape.
        tape: PathBuf,
        /// Mask the values at this RFC 9535 JSONPath in every message (repeatable).
        #[arg(long, value_name = "JSONPATH", required = true)]
        redact: Vec<String>,
        /// The new tape (never the original; an existing file is not overwritten).
        #[arg(short, long, value_name = "FILE")]
        output: PathBuf,
    },
}

/// `tape verify` options.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The tape.
    pub tape: PathBuf,
    /// Ignore the values at this RFC 9535 JSONPath when comparing answers (repeatable):
    /// '$.result.content[0].text' in every answer; 'tools/call:echo=$.result.content' only in
    /// the answers to calls of the tool echo; 'resources/read=$.result' in every answer to
    /// that method. A NAME is a tool's or prompt's name or a resource's URI.
    #[arg(long, value_name = "[METHOD[:NAME]=]JSONPATH")]
    pub ignore: Vec<String>,
    /// Also print a line for each answer that matched (by default only the mismatches and the
    /// summary).
    #[arg(long, short)]
    pub verbose: bool,
    /// Send the tape's client messages even where they hold values masked as "[REDACTED]"
    /// (by default such a tape is refused: the live server would get the mask, not the value).
    #[arg(long)]
    pub send_redacted: bool,
    /// Longest wait for each answer.
    #[arg(long, value_name = "DURATION", default_value = "30s")]
    pub timeout: String,
    /// Also record the live run as a tape in this new file (the server runs behind `shadowcat
    /// forward stdio --record`), to compare with the recorded one side by side in the live
    /// view's Tapes tab (docs/ui.md).
    #[arg(long, value_name = "FILE")]
    pub record: Option<PathBuf>,
    /// The server to verify.
    #[command(flatten)]
    pub server: StdioServer,
}
