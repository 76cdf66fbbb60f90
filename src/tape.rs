//! Tapes: recordings of MCP sessions, one JSON Lines file per session (docs/tapes.md is the
//! format's reference).
//!
//! A tape is append-only: a `header` line, then a `meta` line once the session's `initialize`
//! exchange is known, one `frame` line per message as it was carried, and an `end` line. Every
//! line is written whole and flushed as the writer catches up, so a tape whose writer was
//! killed is still readable up to its last complete line.
//!
//! - [`Recorder`]: the handle a session records through. Lines go to a writer task over a bounded
//!   channel: recording never drops a frame, and a writer that falls behind slows the session
//!   down instead of growing memory. [`Recording`] starts one per session.
//! - [`Redactor`]: what is masked before anything is written.
//! - [`read`]: loads a tape, tolerating a torn last line.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::protocol::Direction;

pub mod diff;
mod recorder;
pub mod redact;
pub mod script;

pub use recorder::{Recorded, Recorder, Recording};
pub use redact::{MASK, Redactor};
pub use script::MatchMode;

/// The tape format's version, written in every header.
pub const FORMAT_VERSION: u32 = 1;

/// The first line of a tape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Header {
    /// The format's version ([`FORMAT_VERSION`]).
    pub format: u32,
    /// The tape's own id.
    pub id: String,
    /// A name for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// When recording began, RFC 3339 (UTC).
    pub created: String,
    /// The mode that recorded it: `forward`, `reverse`, `record`.
    pub mode: String,
    /// The client's transport: `stdio`, `http`, `sse`.
    pub client_transport: String,
    /// The server's transport: `stdio`, `http`.
    pub server_transport: String,
    /// The server: its command line or URL (no credentials).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<String>,
    /// The session recorded.
    pub session: String,
}

/// What the `initialize` exchange told, once known.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Meta {
    /// The negotiated protocol version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol_version: Option<String>,
    /// The client's `clientInfo`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_info: Option<serde_json::Value>,
    /// The server's `serverInfo`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_info: Option<serde_json::Value>,
    /// The authenticated principal whose session it is (never a token).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub principal: Option<String>,
}

/// How a frame was on the wire, for transports that have more to say than the message (the
/// tape line's `transport` member).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Wire {
    /// The HTTP status the frame came with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// Its SSE event id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
    /// Which stream carried it (`post`, `get`, `sse`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<String>,
}

impl Wire {
    /// Nothing to say beyond the message.
    pub const NONE: Self = Self {
        status: None,
        event_id: None,
        stream: None,
    };

    fn is_empty(&self) -> bool {
        self == &Self::NONE
    }
}

/// One message as it was carried.
#[derive(Debug, Clone, PartialEq)]
pub struct Frame {
    /// Microseconds since recording began.
    pub micros: u64,
    /// Which way it travelled.
    pub direction: Direction,
    /// Its session.
    pub session: String,
    /// The message's bytes, exactly as carried.
    pub raw: Bytes,
    /// Wire details.
    pub transport: Wire,
    /// The trace its spans belong to (32 hex digits), when tracing was on.
    pub trace: Option<String>,
}

/// How a tape ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct End {
    /// Microseconds since recording began.
    #[serde(rename = "t")]
    pub micros: u64,
    /// Why the session ended.
    pub reason: String,
}

/// A server process that took the session over: its first, or one started again after a
/// crash (`generation` counts from 1), or a shared one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Server {
    /// Microseconds since recording began.
    #[serde(rename = "t")]
    pub micros: u64,
    /// Its process id.
    pub pid: u32,
    /// How many processes the session has had, this one included.
    pub generation: u64,
}

/// A tape's lines, as written (each with a `type` member naming its kind).
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub(crate) enum Line<'a> {
    Header(Header),
    Meta(Meta),
    Frame(FrameLine<'a>),
    Server(Server),
    End(End),
}

/// A `frame` line's members.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct FrameLine<'a> {
    pub(crate) t: u64,
    pub(crate) dir: Dir,
    #[serde(borrow)]
    pub(crate) session: std::borrow::Cow<'a, str>,
    /// The message verbatim, when it is one line of JSON.
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub(crate) msg: Option<&'a RawValue>,
    /// Otherwise its text, when it is UTF-8.
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub(crate) text: Option<std::borrow::Cow<'a, str>>,
    /// Otherwise its bytes, Base64 (standard alphabet, padded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) base64: Option<String>,
    #[serde(default, skip_serializing_if = "Wire::is_empty")]
    pub(crate) transport: Wire,
    /// The trace its spans belong to, when tracing was on.
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub(crate) trace: Option<std::borrow::Cow<'a, str>>,
}

impl<'a> FrameLine<'a> {
    /// The line for one message: verbatim when it is one line of JSON, else as text (e.g. a
    /// pretty-printed HTTP body), so every tape line stays one line.
    pub(crate) fn new(
        t: u64,
        direction: Direction,
        session: &'a str,
        raw: &'a [u8],
        transport: Wire,
    ) -> Self {
        use base64::Engine as _;
        let one_line = !raw.iter().any(|b| matches!(b, b'\n' | b'\r'));
        let utf8 = std::str::from_utf8(raw).ok();
        // Verbatim only if the JSON value is the whole of it (no whitespace around it).
        let msg = utf8
            .filter(|_| one_line)
            .and_then(|text| serde_json::from_str::<&RawValue>(text).ok())
            .filter(|value| value.get().len() == raw.len());
        Self {
            t,
            dir: direction.into(),
            session: session.into(),
            msg,
            text: utf8.filter(|_| msg.is_none()).map(Into::into),
            base64: utf8
                .is_none()
                .then(|| base64::engine::general_purpose::STANDARD.encode(raw)),
            transport,
            trace: None,
        }
    }
}

impl FrameLine<'_> {
    /// The frame this line records.
    fn into_frame(self) -> Result<Frame, String> {
        use base64::Engine as _;
        let raw = match (self.msg, self.text, self.base64) {
            (Some(msg), ..) => Bytes::copy_from_slice(msg.get().as_bytes()),
            (None, Some(text), _) => Bytes::from(text.into_owned()),
            (None, None, Some(encoded)) => base64::engine::general_purpose::STANDARD
                .decode(encoded)
                .map(Bytes::from)
                .map_err(|e| format!("base64: {e}"))?,
            (None, None, None) => Bytes::new(),
        };
        Ok(Frame {
            micros: self.t,
            direction: self.dir.into(),
            session: self.session.into_owned(),
            raw,
            transport: self.transport,
            trace: self.trace.map(std::borrow::Cow::into_owned),
        })
    }
}

/// A line's kind, read first (a line's raw message can't pass through serde's tagged enums).
#[derive(Deserialize)]
struct Kind<'a> {
    #[serde(rename = "type", borrow)]
    kind: std::borrow::Cow<'a, str>,
}

/// A line read back.
enum Parsed<'a> {
    Header(Header),
    Meta(Meta),
    Frame(FrameLine<'a>),
    Server(Server),
    End(End),
}

fn parse_line(line: &[u8]) -> Result<Parsed<'_>, String> {
    let kind: Kind<'_> = serde_json::from_slice(line).map_err(|e| e.to_string())?;
    let parsed = match &*kind.kind {
        "header" => serde_json::from_slice(line).map(Parsed::Header),
        "meta" => serde_json::from_slice(line).map(Parsed::Meta),
        "frame" => serde_json::from_slice(line).map(Parsed::Frame),
        "end" => serde_json::from_slice(line).map(Parsed::End),
        "server" => serde_json::from_slice(line).map(Parsed::Server),
        other => return Err(format!("unknown line type {other:?}")),
    };
    parsed.map_err(|e| e.to_string())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Dir {
    #[serde(rename = "c2s")]
    ClientToServer,
    #[serde(rename = "s2c")]
    ServerToClient,
}

impl From<Direction> for Dir {
    fn from(d: Direction) -> Self {
        match d {
            Direction::ClientToServer => Self::ClientToServer,
            Direction::ServerToClient => Self::ServerToClient,
        }
    }
}

impl From<Dir> for Direction {
    fn from(d: Dir) -> Self {
        match d {
            Dir::ClientToServer => Self::ClientToServer,
            Dir::ServerToClient => Self::ServerToClient,
        }
    }
}

/// Why a tape could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum TapeError {
    /// The file could not be created, written or read.
    #[error("{path}: {source}")]
    Io {
        /// The tape.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// A line is not a tape line.
    #[error("{path}:{line}: not a tape line: {reason}")]
    Malformed {
        /// The tape.
        path: PathBuf,
        /// The line's number, from 1.
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// The first line is not a header, or of a format this build doesn't read.
    #[error("{path}: {reason}")]
    NotATape {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The writer is gone (it failed, or the tape was ended).
    #[error("the tape's writer has stopped")]
    Closed,
}

pub(crate) fn write_line(out: &mut impl std::io::Write, line: &Line<'_>) -> std::io::Result<()> {
    serde_json::to_writer(&mut *out, line)?;
    out.write_all(b"\n")
}

/// A tape, read back.
#[derive(Debug)]
pub struct Tape {
    /// Its header.
    pub header: Header,
    /// The `initialize` outcome, if it was recorded.
    pub meta: Meta,
    /// Every frame, in the order they were recorded.
    pub frames: Vec<Frame>,
    /// The server processes that served the session, in order.
    pub servers: Vec<Server>,
    /// How it ended, if it says.
    pub end: Option<End>,
    /// Whether its last line was torn (a writer killed mid-line): ignored.
    pub torn: bool,
}

/// Reads the tape at `path`. A torn last line (its writer was killed) is ignored; any other bad
/// line is an error naming it.
pub fn read(path: &Path) -> Result<Tape, TapeError> {
    let bytes = std::fs::read(path).map_err(|source| TapeError::Io {
        path: path.to_owned(),
        source,
    })?;
    let complete = bytes.last() == Some(&b'\n');
    let lines: Vec<&[u8]> = bytes.split(|b| *b == b'\n').collect();
    let count = lines.len();
    let mut header = None;
    let mut tape_meta = Meta::default();
    let mut frames = Vec::new();
    let mut servers = Vec::new();
    let mut end = None;
    let mut torn = false;
    for (i, line) in lines.into_iter().enumerate() {
        if line.is_empty() {
            continue;
        }
        let last = i + 1 == count;
        let parsed = match parse_line(line) {
            Ok(parsed) => parsed,
            Err(_) if last && !complete => {
                torn = true;
                break;
            }
            Err(reason) => {
                return Err(TapeError::Malformed {
                    path: path.to_owned(),
                    line: i + 1,
                    reason,
                });
            }
        };
        match parsed {
            Parsed::Header(h) if i == 0 => {
                if h.format != FORMAT_VERSION {
                    return Err(TapeError::NotATape {
                        path: path.to_owned(),
                        reason: format!(
                            "tape format {} (this build reads {FORMAT_VERSION})",
                            h.format
                        ),
                    });
                }
                header = Some(h);
            }
            _ if i == 0 => {
                return Err(TapeError::NotATape {
                    path: path.to_owned(),
                    reason: "the first line is not a tape header".into(),
                });
            }
            Parsed::Header(_) => {
                return Err(TapeError::Malformed {
                    path: path.to_owned(),
                    line: i + 1,
                    reason: "a second header".into(),
                });
            }
            Parsed::Meta(m) => tape_meta = m,
            Parsed::Frame(line) => {
                frames.push(line.into_frame().map_err(|reason| TapeError::Malformed {
                    path: path.to_owned(),
                    line: i + 1,
                    reason,
                })?);
            }
            Parsed::Server(server) => servers.push(server),
            Parsed::End(e) => end = Some(e),
        }
    }
    let header = header.ok_or_else(|| TapeError::NotATape {
        path: path.to_owned(),
        reason: "empty file".into(),
    })?;
    Ok(Tape {
        header,
        meta: tape_meta,
        frames,
        servers,
        end,
        torn,
    })
}

/// One line of a tape, read on its own (`tape show --follow` reads a tape as it is written).
#[derive(Debug)]
pub enum TapeLine {
    /// The header.
    Header(Header),
    /// The `initialize` outcome.
    Meta(Meta),
    /// A message.
    Frame(Frame),
    /// A server process.
    Server(Server),
    /// The end.
    End(End),
}

/// Reads one complete line of a tape (without its newline).
pub fn read_line(line: &[u8]) -> Result<TapeLine, String> {
    Ok(match parse_line(line)? {
        Parsed::Header(h) => TapeLine::Header(h),
        Parsed::Meta(m) => TapeLine::Meta(m),
        Parsed::Frame(f) => TapeLine::Frame(f.into_frame()?),
        Parsed::Server(s) => TapeLine::Server(s),
        Parsed::End(e) => TapeLine::End(e),
    })
}

/// The header of the tape at `path`, read from its first line alone.
pub fn read_header(path: &Path) -> Result<Header, TapeError> {
    use std::io::BufRead as _;
    let io = |source| TapeError::Io {
        path: path.to_owned(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let mut first = Vec::new();
    // A header is a few hundred bytes; a file whose first line is longer is not a tape.
    std::io::Read::take(std::io::BufReader::new(file), 64 * 1024)
        .read_until(b'\n', &mut first)
        .map_err(io)?;
    let not_a_tape = |reason: &str| TapeError::NotATape {
        path: path.to_owned(),
        reason: reason.to_owned(),
    };
    match parse_line(first.strip_suffix(b"\n").unwrap_or(&first)) {
        Ok(Parsed::Header(header)) => Ok(header),
        _ => Err(not_a_tape("the first line is not a tape header")),
    }
}

/// The tape `arg` names: a file, or else the one tape in `dir` whose id or session id starts
/// with `arg` (`tape show 880662`, as `tape list` shows ids).
pub fn find(arg: &Path, dir: &Path) -> Result<PathBuf, TapeError> {
    let prefix = arg.to_string_lossy();
    let plain = !prefix.is_empty()
        && prefix
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if arg.exists() || !plain {
        return Ok(arg.to_owned());
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(arg.to_owned());
    };
    let mut found: Vec<(PathBuf, Header)> = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().is_none_or(|e| e != "jsonl") {
            continue;
        }
        if let Ok(header) = read_header(&path)
            && (header.id.starts_with(&*prefix) || header.session.starts_with(&*prefix))
        {
            found.push((path, header));
        }
    }
    match found.len() {
        // Not a prefix of any: the error is the file's own (no such file).
        0 => Ok(arg.to_owned()),
        1 => Ok(found.swap_remove(0).0),
        n => {
            found.sort_by(|a, b| a.0.cmp(&b.0));
            let names: Vec<String> = found.iter().map(|(p, _)| p.display().to_string()).collect();
            Err(TapeError::NotATape {
                path: arg.to_owned(),
                reason: format!(
                    "{n} tapes in {} have an id or session starting with it: {}",
                    dir.display(),
                    names.join(", ")
                ),
            })
        }
    }
}

/// The current time as RFC 3339 (UTC), for headers.
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

#[cfg(test)]
mod tests;
