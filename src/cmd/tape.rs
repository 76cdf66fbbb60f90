//! `shadowcat tape list|show|redact|verify`.

pub mod verify;

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde::Serialize;
use serde_json::Value;

use super::session::columns;
use crate::cli::{OutputFormat, TapeCommand};
use crate::config::Config;
use crate::protocol::{Direction, Kind, Message, RequestId};
use crate::tape::{FrameLine, Line, Redactor, Tape, TapeError, read, write_line};

/// Runs a `tape` subcommand; returns the exit code.
pub fn run(cmd: TapeCommand, config: &Config) -> anyhow::Result<u8> {
    let mut out = std::io::stdout().lock();
    match cmd {
        TapeCommand::List { dir, format } => {
            let dir = dir.unwrap_or_else(|| config.data_dir.join(crate::config::TAPES_DIR));
            let rows = list(&dir)?;
            match format {
                OutputFormat::Table if rows.is_empty() => {
                    eprintln!("shadowcat: no tapes in {}", dir.display());
                }
                OutputFormat::Table => write!(out, "{}", list_table(&rows))?,
                OutputFormat::Json => writeln!(out, "{}", serde_json::to_string_pretty(&rows)?)?,
            }
            Ok(0)
        }
        TapeCommand::Show { tape, follow, .. } if follow => {
            follow_tape(&tape, &mut out)?;
            Ok(0)
        }
        TapeCommand::Show {
            tape,
            format,
            messages,
            ..
        } => {
            let tape = read(&tape)?;
            let timeline = timeline(&tape);
            if messages {
                write!(out, "{}", header_fields(&tape, &timeline))?;
                for (entry, frame) in timeline.iter().zip(&tape.frames) {
                    writeln!(out, "\n{}", message(entry, &frame.raw))?;
                }
                return Ok(0);
            }
            match format {
                OutputFormat::Table => write!(out, "{}", show_table(&tape, &timeline))?,
                OutputFormat::Json => {
                    let json = serde_json::json!({
                        "header": tape.header,
                        "meta": tape.meta,
                        "servers": tape.servers,
                        "end": tape.end,
                        "torn": tape.torn,
                        "timeline": timeline,
                    });
                    writeln!(out, "{}", serde_json::to_string_pretty(&json)?)?;
                }
            }
            Ok(0)
        }
        TapeCommand::Redact {
            tape,
            redact,
            output,
        } => {
            let redactor = Redactor::new(&redact, Vec::new())?;
            let masked = redact_copy(&tape, &redactor, &output)?;
            eprintln!(
                "shadowcat: wrote {} ({masked} of its messages masked)",
                output.display()
            );
            Ok(0)
        }
        TapeCommand::Verify(args) => verify::run(&args),
    }
}

/// One tape in a listing.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Listed {
    /// The tape's id (`tape show`, `replay` and `tape verify` take its first characters).
    pub id: String,
    /// The file.
    pub path: PathBuf,
    /// Its name, if it has one.
    pub name: Option<String>,
    /// When recording began (RFC 3339).
    pub created: String,
    /// The session recorded.
    pub session: String,
    /// How many messages.
    pub frames: usize,
    /// From the start to the last frame or the end, in milliseconds.
    pub duration_ms: u64,
    /// The file's size, in bytes.
    pub size: u64,
    /// How it ended (`None`: no end line, e.g. a killed recorder).
    pub end: Option<String>,
}

/// The tapes (`*.jsonl`) in `dir`, newest first. Other files are not looked at; a `*.jsonl`
/// file that is not a tape is skipped with a warning.
pub fn list(dir: &Path) -> anyhow::Result<Vec<Listed>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("cannot list {}", dir.display())),
    };
    let mut rows = Vec::new();
    for entry in entries {
        let path = entry?.path();
        if path.extension().is_none_or(|e| e != "jsonl") {
            continue;
        }
        let tape = match read(&path) {
            Ok(tape) => tape,
            Err(e) => {
                eprintln!("shadowcat: skipping {e}");
                continue;
            }
        };
        let last = tape.frames.iter().map(|f| f.micros).max().unwrap_or(0);
        let end = tape.end.as_ref().map_or(0, |e| e.micros);
        rows.push(Listed {
            id: tape.header.id.clone(),
            size: std::fs::metadata(&path).map_or(0, |m| m.len()),
            path,
            name: tape.header.name.clone(),
            created: tape.header.created.clone(),
            session: tape.header.session.clone(),
            frames: tape.frames.len(),
            duration_ms: last.max(end) / 1000,
            end: tape.end.map(|e| e.reason),
        });
    }
    rows.sort_by(|a, b| b.created.cmp(&a.created).then(a.path.cmp(&b.path)));
    Ok(rows)
}

fn list_table(rows: &[Listed]) -> String {
    let header = [
        "ID", "NAME", "CREATED", "SESSION", "FRAMES", "DURATION", "SIZE", "END", "FILE",
    ];
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                // Enough to name it (`tape show 880662a7b8b8`); the JSON has it whole.
                r.id.chars().take(12).collect(),
                r.name.clone().unwrap_or_else(|| "-".into()),
                r.created.clone(),
                r.session.clone(),
                r.frames.to_string(),
                millis(r.duration_ms * 1000),
                bytesize::ByteSize(r.size).to_string(),
                r.end.clone().unwrap_or_else(|| "-".into()),
                r.path.display().to_string(),
            ]
        })
        .collect();
    columns(&header, &cells)
}

/// One message in a tape's timeline.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Entry {
    /// Microseconds since recording began.
    pub t: u64,
    /// `c2s` or `s2c`.
    pub dir: &'static str,
    /// `request`, `notification`, `response`, `error`, or `invalid` (not JSON-RPC).
    pub kind: &'static str,
    /// Its method (a response: its request's).
    pub method: Option<String>,
    /// What a request is about (a response: its request's): its tool, prompt or resource.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Its id.
    pub id: Option<String>,
    /// A response's time since its request, in microseconds.
    pub latency: Option<u64>,
    /// Its size in bytes.
    pub bytes: usize,
    /// The trace its spans belong to, when it was recorded with tracing on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace: Option<String>,
}

/// The tape's messages, with each answer's latency.
pub fn timeline(tape: &Tape) -> Vec<Entry> {
    let mut timeline = Timeline::default();
    tape.frames
        .iter()
        .map(|frame| timeline.entry(frame))
        .collect()
}

/// Reads a tape's frames into [`Entry`]s one by one, pairing answers with their requests.
#[derive(Debug, Default)]
pub struct Timeline {
    /// Requests awaiting answers, by direction and id: method, name, when.
    open: std::collections::HashMap<(Direction, RequestId), (String, Option<String>, u64)>,
}

impl Timeline {
    /// The next frame's entry.
    pub fn entry(&mut self, frame: &crate::tape::Frame) -> Entry {
        let mut entry = Entry {
            t: frame.micros,
            dir: frame.direction.short(),
            kind: "invalid",
            method: None,
            name: None,
            id: None,
            latency: None,
            bytes: frame.raw.len(),
            trace: frame.trace.clone(),
        };
        let Ok(msg) = Message::parse(frame.raw.clone()) else {
            return entry;
        };
        entry.id = msg.id().map(ToString::to_string);
        entry.method = msg.method().map(|m| m.as_str().to_owned());
        entry.name = msg.named();
        entry.kind = msg.kind().as_str();
        match (msg.kind(), msg.id()) {
            (Kind::Request, Some(id)) => {
                self.open.insert(
                    (frame.direction, id.clone()),
                    (
                        entry.method.clone().unwrap_or_default(),
                        entry.name.clone(),
                        frame.micros,
                    ),
                );
            }
            (Kind::Response | Kind::Error, Some(id)) => {
                if let Some((method, name, at)) =
                    self.open.remove(&(frame.direction.reverse(), id.clone()))
                {
                    entry.method = Some(method);
                    entry.name = name;
                    entry.latency = Some(frame.micros.saturating_sub(at));
                }
            }
            _ => {}
        }
        entry
    }
}

/// A message as `--messages` shows it: its line (the traffic view's, its time on the tape
/// first), then its body pretty-printed.
fn message(entry: &Entry, raw: &[u8]) -> String {
    let line = crate::telemetry::traffic::Line {
        session: "",
        arrow: crate::telemetry::traffic::arrow(entry.dir == "c2s"),
        kind: entry.kind,
        method: entry.method.as_deref(),
        name: entry.name.as_deref(),
        id: entry.id.as_deref(),
        size: entry.bytes,
        latency_us: entry.latency,
        did: None,
    };
    let body = crate::telemetry::traffic::pretty(&String::from_utf8_lossy(raw), false, raw.len());
    format!("{} {line}\n{body}", millis(entry.t))
}

/// How often `--follow` looks for more of the tape.
const FOLLOW_POLL: std::time::Duration = std::time::Duration::from_millis(100);

/// `tape show --follow`: prints the tape's messages as they are written, until its end line.
fn follow_tape(path: &Path, out: &mut impl std::io::Write) -> anyhow::Result<()> {
    use std::io::Read as _;
    let io = |source| TapeError::Io {
        path: path.to_owned(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(io)?;
    let mut timeline = Timeline::default();
    let mut pending: Vec<u8> = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    let mut number = 0usize;
    loop {
        let n = file.read(&mut chunk).map_err(io)?;
        if n == 0 {
            out.flush()?;
            std::thread::sleep(FOLLOW_POLL);
            continue;
        }
        pending.extend_from_slice(&chunk[..n]);
        // Whole lines only: the writer may be mid-line.
        let Some(last) = pending.iter().rposition(|b| *b == b'\n') else {
            continue;
        };
        let whole: Vec<u8> = pending.drain(..=last).collect();
        for line in whole.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            number += 1;
            let read = crate::tape::read_line(line).map_err(|reason| TapeError::Malformed {
                path: path.to_owned(),
                line: number,
                reason,
            })?;
            match read {
                crate::tape::TapeLine::Header(h) if number == 1 => {
                    let name = h
                        .name
                        .as_deref()
                        .map_or_else(String::new, |n| format!(" {n:?}"));
                    writeln!(
                        out,
                        "tape {}{name}: {} ({} client, {} server), created {}",
                        h.id, h.mode, h.client_transport, h.server_transport, h.created
                    )?;
                }
                _ if number == 1 => {
                    return Err(TapeError::NotATape {
                        path: path.to_owned(),
                        reason: "the first line is not a tape header".into(),
                    }
                    .into());
                }
                crate::tape::TapeLine::Frame(frame) => {
                    let entry = timeline.entry(&frame);
                    writeln!(out, "\n{}", message(&entry, &frame.raw))?;
                }
                crate::tape::TapeLine::End(end) => {
                    writeln!(out, "\nend: {} at {}", end.reason, millis(end.micros))?;
                    out.flush()?;
                    return Ok(());
                }
                crate::tape::TapeLine::Header(_)
                | crate::tape::TapeLine::Meta(_)
                | crate::tape::TapeLine::Server(_) => {}
            }
        }
        out.flush()?;
    }
}

/// Microseconds as milliseconds for people.
fn millis(micros: u64) -> String {
    format!("{:.1}ms", micros as f64 / 1000.0)
}

fn show_table(tape: &Tape, timeline: &[Entry]) -> String {
    let mut out = header_fields(tape, timeline);
    out.push('\n');
    out.push_str(&timeline_table(timeline));
    out
}

/// What a tape says of itself: header, meta, server processes, end, frames.
fn header_fields(tape: &Tape, timeline: &[Entry]) -> String {
    let h = &tape.header;
    let mut out = String::new();
    let mut field = |name: &str, value: &str| {
        let _ = writeln!(out, "{name:<18}{value}");
    };
    field("tape", &h.id);
    field("name", h.name.as_deref().unwrap_or("-"));
    field("created", &h.created);
    field(
        "mode",
        &format!(
            "{} ({} client, {} server)",
            h.mode, h.client_transport, h.server_transport
        ),
    );
    field("upstream", h.upstream.as_deref().unwrap_or("-"));
    field("session", &h.session);
    field(
        "protocol version",
        tape.meta.protocol_version.as_deref().unwrap_or("-"),
    );
    let info = |v: &Option<Value>| {
        v.as_ref()
            .map_or_else(|| "-".to_owned(), ToString::to_string)
    };
    field("client", &info(&tape.meta.client_info));
    if let Some(principal) = &tape.meta.principal {
        field("principal", principal);
    }
    field("server", &info(&tape.meta.server_info));
    let end = match (&tape.end, tape.torn) {
        (Some(end), _) => format!("{} at {}", end.reason, millis(end.micros)),
        (None, true) => "none (the recorder was killed mid-line; the torn line is ignored)".into(),
        (None, false) => "none (the recorder did not finish)".into(),
    };
    let servers: Vec<String> = tape
        .servers
        .iter()
        .map(|s| {
            format!(
                "pid {} (generation {}) at {}",
                s.pid,
                s.generation,
                millis(s.micros)
            )
        })
        .collect();
    field(
        "server processes",
        &if servers.is_empty() {
            "-".to_owned()
        } else {
            servers.join(", ")
        },
    );
    field("end", &end);
    field("frames", &timeline.len().to_string());
    out
}

/// The timeline as a table.
fn timeline_table(timeline: &[Entry]) -> String {
    // The trace column only for a tape recorded with tracing on.
    let traced = timeline.iter().any(|e| e.trace.is_some());
    let rows: Vec<Vec<String>> = timeline
        .iter()
        .map(|e| {
            let mut row = vec![
                millis(e.t),
                if e.dir == "c2s" {
                    "client → server"
                } else {
                    "server → client"
                }
                .to_owned(),
                e.kind.to_owned(),
                e.method.clone().unwrap_or_else(|| "-".into()),
                e.name.clone().unwrap_or_else(|| "-".into()),
                e.id.clone().unwrap_or_else(|| "-".into()),
                e.latency.map_or_else(|| "-".into(), millis),
                e.bytes.to_string(),
            ];
            if traced {
                row.push(e.trace.clone().unwrap_or_else(|| "-".into()));
            }
            row
        })
        .collect();
    let mut header = vec![
        "TIME",
        "DIRECTION",
        "KIND",
        "METHOD",
        "NAME",
        "ID",
        "LATENCY",
        "BYTES",
    ];
    if traced {
        header.push("TRACE");
    }
    columns(&header, &rows)
}

/// Writes a copy of `source` to `output` (never overwriting) with `redactor`'s masks applied
/// to its messages, its `meta` line and its server's command line; returns how many of those
/// changed.
pub fn redact_copy(source: &Path, redactor: &Redactor, output: &Path) -> anyhow::Result<usize> {
    let tape = read(source)?;
    let io = |source| TapeError::Io {
        path: output.to_owned(),
        source,
    };
    let file = crate::transport::files::create_private_new(output).map_err(io)?;
    let mut out = std::io::BufWriter::new(file);
    let mut masked = 0;
    let mut header = tape.header.clone();
    if let Some(upstream) = &header.upstream {
        // Tapes from before their server's command line was masked, too.
        let shown = redactor.mask_text(&crate::tape::redact::command::shown_line(upstream));
        masked += usize::from(&shown != upstream);
        header.upstream = Some(shown);
    }
    write_line(&mut out, &Line::Header(header)).map_err(io)?;
    if tape.meta != crate::tape::Meta::default() {
        let meta = redactor.mask_meta(&tape.meta);
        masked += usize::from(meta != tape.meta);
        write_line(&mut out, &Line::Meta(meta)).map_err(io)?;
    }
    for frame in &tape.frames {
        let raw = redactor.apply(&frame.raw);
        if raw.as_ref() != frame.raw.as_ref() {
            masked += 1;
        }
        let mut line = FrameLine::new(
            frame.micros,
            frame.direction,
            &frame.session,
            &raw,
            frame.transport.clone(),
        );
        line.trace = frame.trace.as_deref().map(Into::into);
        write_line(&mut out, &Line::Frame(line)).map_err(io)?;
    }
    for server in &tape.servers {
        write_line(&mut out, &Line::Server(server.clone())).map_err(io)?;
    }
    if let Some(end) = tape.end {
        write_line(&mut out, &Line::End(end)).map_err(io)?;
    }
    out.flush().map_err(io)?;
    Ok(masked)
}
