//! The traffic in the terminal (`--traffic`): one log line per message, what mitmdump gives
//! HTTP. The line says the session, the direction, the kind, the method and what it is about
//! (tool, prompt or resource), the id, the size, an answer's latency and what a rule or a limit
//! did; with `--traffic bodies` the masked, pretty-printed message follows it.
//!
//! It is a watcher of the live feed ([`super::feed`]), so it costs the traffic what the feed
//! costs: an event built per message (without a body unless bodies are shown), never a wait. A
//! printer that falls behind loses the oldest lines, and says how many. The lines go through
//! the log's background writer (to stderr, or `--log-file`), a batch of them per write, looking
//! like log lines of the target `shadowcat::traffic` (in `--log-format json`, records with each
//! part a field), whatever `--log-level` says.

use std::fmt::{self, Write as _};
use std::hash::BuildHasher as _;
use std::sync::Arc;

use linked_hash_map::LinkedHashMap;
use tokio_util::sync::CancellationToken;

use super::LogFormat;
use super::feed::{Decision, Event, Feed, Next, Outcome, Watcher};
use crate::task::Task;

/// The tracing target of the lines (`--log-level` does not hide it).
pub const TARGET: &str = "shadowcat::traffic";

/// Requests whose names are remembered for their answers' lines; the oldest are forgotten.
const REMEMBERED: usize = 4096;

/// What `--traffic` shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Show {
    /// A line per message.
    Lines,
    /// A line per message, then the message pretty-printed (masked as on tapes).
    Bodies,
}

/// One message's line, without the time (the log line has it; a tape's has its own).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Line<'a> {
    /// The session as logs name it (empty: not shown, as on a tape, which is one session).
    pub session: &'a str,
    /// `->` to the server, `<-` to the client.
    pub arrow: &'static str,
    /// `request`, `notification`, `response`, `error`.
    pub kind: &'a str,
    /// Its method; an answer's request's.
    pub method: Option<&'a str>,
    /// The tool, prompt or resource.
    pub name: Option<&'a str>,
    /// Its JSON-RPC id, as JSON.
    pub id: Option<&'a str>,
    /// Its size in bytes.
    pub size: usize,
    /// An answer's time since its request, in microseconds.
    pub latency_us: Option<u64>,
    /// What became of it, when not simply passed on.
    pub did: Option<String>,
}

impl fmt::Display for Line<'_> {
    // `write_str` for the text parts: the formatter's padding path costs far more per line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.session.is_empty() {
            f.write_str(self.session)?;
            f.write_str(" ")?;
        }
        f.write_str(self.arrow)?;
        f.write_str(" ")?;
        f.write_str(self.kind)?;
        for part in [self.method, self.name].into_iter().flatten() {
            f.write_str(" ")?;
            f.write_str(part)?;
        }
        if let Some(id) = self.id {
            f.write_str(" #")?;
            f.write_str(id)?;
        }
        f.write_str(" ")?;
        fmt::Display::fmt(&Size(self.size), f)?;
        if let Some(us) = self.latency_us {
            f.write_str(" ")?;
            fmt::Display::fmt(&Latency(us), f)?;
        }
        if let Some(did) = &self.did {
            f.write_str(" [")?;
            f.write_str(did)?;
            f.write_str("]")?;
        }
        Ok(())
    }
}

/// The arrow of a direction: `->` towards the server, `<-` towards the client.
pub fn arrow(to_server: bool) -> &'static str {
    if to_server { "->" } else { "<-" }
}

/// A size for people: `312 B`, `1.2 KiB`, `3.4 MiB` (rounded to a tenth, in integers: no
/// float formatting per line).
#[derive(Debug, Clone, Copy)]
pub struct Size(pub usize);

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bytes = u64::try_from(self.0).unwrap_or(u64::MAX);
        let (unit, shift) = match bytes {
            0..1024 => return number(f, bytes, " B"),
            1024..1_048_576 => (" KiB", 10),
            _ => (" MiB", 20),
        };
        let tenths = bytes.saturating_mul(10).saturating_add(1 << (shift - 1)) >> shift;
        tenth(f, tenths, unit)
    }
}

/// A latency for people: `850 us`, `3.1 ms`, `2.40 s` (rounded, in integers).
#[derive(Debug, Clone, Copy)]
pub struct Latency(pub u64);

impl fmt::Display for Latency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let us = self.0;
        if us < 1000 {
            number(f, us, " us")
        } else if us < 1_000_000 {
            tenth(f, us.saturating_add(50) / 100, " ms")
        } else {
            let hundredths = us.saturating_add(5000) / 10_000;
            number(f, hundredths / 100, ".")?;
            let cents = hundredths % 100;
            f.write_str(if cents < 10 { "0" } else { "" })?;
            number(f, cents, " s")
        }
    }
}

/// `n` then `unit`, without the formatter's machinery (these run for every line).
fn number(f: &mut fmt::Formatter<'_>, n: impl itoa::Integer, unit: &str) -> fmt::Result {
    f.write_str(itoa::Buffer::new().format(n))?;
    f.write_str(unit)
}

/// `tenths` as a number with one decimal, then `unit`.
fn tenth(f: &mut fmt::Formatter<'_>, tenths: u64, unit: &str) -> fmt::Result {
    number(f, tenths / 10, ".")?;
    number(f, tenths % 10, unit)
}

/// What the stages did and what became of the message, or `None` when it simply went on.
fn did(event: &Event) -> Option<String> {
    let decisions: Vec<String> = event.decisions.iter().map(decision).collect();
    let outcome = match event.outcome {
        Outcome::Forwarded => None,
        Outcome::Modified => Some("modified"),
        Outcome::Answered => Some("answered by the proxy"),
        Outcome::Dropped => Some("dropped"),
    };
    match (outcome, decisions.is_empty()) {
        (None, true) => None,
        (None, false) => Some(decisions.join("; ")),
        (Some(outcome), true) => Some(outcome.to_owned()),
        (Some(outcome), false) => Some(format!("{outcome}: {}", decisions.join("; "))),
    }
}

/// A stage's note for people: `rule no-delete: block`, `rate limit client`, `delayed 200 ms`.
fn decision(decision: &Decision) -> String {
    let detail = |name: &str| {
        decision
            .details
            .iter()
            .find(|(n, _)| *n == name)
            .map_or("?", |(_, v)| v.as_str())
    };
    match decision.what {
        "rule" => {
            let audit = if detail("shadowcat.mode") == "audit" {
                " (audit)"
            } else {
                ""
            };
            format!(
                "rule {}: {}{audit}",
                detail("shadowcat.rule"),
                detail("shadowcat.action")
            )
        }
        "rate_limited" => format!("rate limit {}", detail("shadowcat.limit")),
        "delayed" => format!("delayed {} ms", detail("shadowcat.delay_ms")),
        other => other.to_owned(),
    }
}

/// `text` (a message's JSON) pretty-printed, each line indented; cut text as it is, marked.
pub fn pretty(text: &str, truncated: bool, size: usize) -> String {
    let body = match serde_json::from_str::<serde_json::Value>(text) {
        Ok(value) if !truncated => {
            serde_json::to_string_pretty(&value).unwrap_or_else(|_| text.to_owned())
        }
        _ => text.to_owned(),
    };
    let mut out = String::with_capacity(body.len() + 64);
    for line in body.lines() {
        out.push_str("    ");
        out.push_str(line);
        out.push('\n');
    }
    if truncated {
        let _ = writeln!(out, "    … (cut; the message is {})", Size(size));
    }
    out.pop();
    out
}

/// Most events written in one batch.
const BATCH: usize = 1024;

/// How long the printer lets a batch gather after its first message: lines show at most this
/// late, and the feed's ring (512 events) holds what comes meanwhile up to 250,000 messages a
/// second.
const GATHER: std::time::Duration = std::time::Duration::from_millis(2);

/// Prints the feed's events until `stop`, then what is left of them.
pub fn spawn(
    feed: &Arc<Feed>,
    show: Show,
    format: LogFormat,
    stop: CancellationToken,
) -> Option<Task<()>> {
    let watcher = match show {
        Show::Lines => feed.watch_without_bodies(),
        Show::Bodies => feed.watch(),
    }?;
    let mut printer = Printer {
        watcher,
        show,
        format,
        names: Names::default(),
        out: super::log_out(),
        batch: String::new(),
        stamp: String::new(),
    };
    Some(Task::spawn("traffic", async move {
        loop {
            let next = tokio::select! {
                biased;
                next = printer.watcher.next() => next,
                () = stop.cancelled() => break,
            };
            // Woken by the first message, the printer lets the others gather for a moment:
            // under load it runs, and wakes the log's writer, once per GATHER rather than once
            // per message (the feed's ring holds what comes meanwhile). The batch's lines are
            // then stamped with one time, when they are written.
            if !matches!(next, Next::Closed) {
                tokio::select! {
                    biased;
                    () = stop.cancelled() => {}
                    () = tokio::time::sleep(GATHER) => {}
                }
            }
            let mut open = printer.add(next);
            for _ in 1..BATCH {
                let Some(next) = printer.watcher.try_next().filter(|_| open) else {
                    break;
                };
                open = printer.add(next);
            }
            printer.flush();
            if !open {
                return;
            }
        }
        // The proxy is done: what was published before is printed, nothing waited for.
        while let Some(next) = printer.watcher.try_next() {
            if !printer.add(next) {
                break;
            }
        }
        printer.flush();
    }))
}

struct Printer {
    watcher: Watcher,
    show: Show,
    format: LogFormat,
    names: Names,
    /// The log's writer (stderr or `--log-file`, off the proxy's thread).
    out: Option<tracing_appender::non_blocking::NonBlocking>,
    /// Lines not yet written.
    batch: String,
    /// The time the batch's lines carry, formatted once per batch (empty: not yet).
    stamp: String,
}

impl Printer {
    /// Adds one thing the feed said to the batch; `false` once the feed is closed.
    fn add(&mut self, next: Next) -> bool {
        match next {
            Next::Event(event) => self.line(&event),
            Next::Missed(n) => self.record(
                " WARN",
                format_args!("{n} messages not shown: the traffic view fell behind"),
                None,
            ),
            Next::Closed => return false,
        }
        true
    }

    /// Writes the batch: one write to the log's writer.
    fn flush(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        match &mut self.out {
            Some(out) => {
                // The writer never blocks: when its queue is full it drops, as logs do.
                let _ = std::io::Write::write_all(out, self.batch.as_bytes());
            }
            // No log writer (logging not set up): through tracing, line by line.
            None => {
                for line in self.batch.lines() {
                    tracing::info!(target: TARGET, parent: None, "{line}");
                }
            }
        }
        self.batch.clear();
        self.stamp.clear();
        if self.batch.capacity() > 1 << 20 {
            self.batch.shrink_to(64 * 1024);
        }
    }

    /// Adds a log record as the log writes them: text, or a JSON object with `fields`. `level`
    /// is padded to five characters, as the log pads it.
    fn record(
        &mut self,
        level: &str,
        message: impl fmt::Display,
        fields: Option<serde_json::Value>,
    ) {
        if self.stamp.is_empty() {
            let now = humantime::format_rfc3339_micros(std::time::SystemTime::now());
            let _ = write!(self.stamp, "{now}");
        }
        match self.format {
            LogFormat::Text => {
                // Pieces pushed, not a format string: this runs for every message.
                self.batch.push_str(&self.stamp);
                self.batch.push(' ');
                self.batch.push_str(level);
                self.batch.push(' ');
                self.batch.push_str(TARGET);
                self.batch.push_str(": ");
                let _ = writeln!(self.batch, "{message}");
            }
            LogFormat::Json => {
                let mut fields = fields.unwrap_or_else(|| serde_json::json!({}));
                if let serde_json::Value::Object(map) = &mut fields {
                    // As the log writes fields: those without a value are left out.
                    map.retain(|_, v| !v.is_null());
                }
                fields["message"] = serde_json::Value::String(message.to_string());
                let record = serde_json::json!({
                    "timestamp": self.stamp,
                    "level": level.trim_start(),
                    "fields": fields,
                    "target": TARGET,
                });
                let _ = writeln!(self.batch, "{record}");
            }
        }
    }

    fn line(&mut self, event: &Event) {
        let name = self.names.of(event);
        let did = did(event);
        let line = Line {
            session: &event.session,
            arrow: arrow(event.direction == "to_server"),
            kind: event.kind,
            method: event.method.as_deref(),
            name: name.as_deref(),
            id: event.id.as_deref(),
            size: event.body.size,
            latency_us: event.latency_us,
            did: did.clone(),
        };
        let bodies = self.show == Show::Bodies;
        match self.format {
            LogFormat::Text if bodies => {
                let mut text = line.to_string();
                text.push('\n');
                text.push_str(&pretty(
                    &event.body.text,
                    event.body.truncated,
                    event.body.size,
                ));
                if let Some(answer) = &event.answer {
                    text.push_str("\n  the proxy answered:\n");
                    text.push_str(&pretty(&answer.text, answer.truncated, answer.size));
                }
                self.record(" INFO", text, None);
            }
            LogFormat::Text => self.record(" INFO", line, None),
            LogFormat::Json => {
                let fields = serde_json::json!({
                    "session": &*event.session,
                    "direction": event.direction,
                    "kind": event.kind,
                    "method": event.method,
                    "name": name.as_deref(),
                    "id": event.id,
                    "size": event.body.size,
                    "latency_us": event.latency_us,
                    "did": did,
                    "body": bodies.then_some(event.body.text.as_str()),
                    "answer": event.answer.as_ref().filter(|_| bodies).map(|a| a.text.as_str()),
                });
                self.record(" INFO", line, Some(fields));
            }
        }
    }
}

/// The names of requests seen, for their answers' lines: at most [`REMEMBERED`], the oldest
/// forgotten first (an answer to one of those is shown without its name). A request is known
/// by a keyed 64-bit hash of its session, direction and id, hashed once per message (a
/// collision among 4096 is as likely as 2^-40, and would only show another request's name).
#[derive(Debug, Default)]
struct Names {
    hasher: std::hash::RandomState,
    by_request: LinkedHashMap<u64, Arc<str>>,
}

impl Names {
    /// The event's name: a request's own (remembered), an answer's request's (forgotten).
    fn of(&mut self, event: &Event) -> Option<Arc<str>> {
        let id = event.id.as_deref()?;
        let to_server = event.direction == "to_server";
        if event.kind == "request" {
            let name: Arc<str> = Arc::from(event.name.as_deref()?);
            if self.by_request.len() == REMEMBERED {
                self.by_request.pop_front();
            }
            let key = self.hasher.hash_one((&*event.session, to_server, id));
            self.by_request.insert(key, name.clone());
            return Some(name);
        }
        // An answer travels the other way from its request.
        let key = self.hasher.hash_one((&*event.session, !to_server, id));
        self.by_request.remove(&key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_names_everything_it_knows() {
        let line = Line {
            session: "s-1a2b3c4d",
            arrow: arrow(false),
            kind: "response",
            method: Some("tools/call"),
            name: Some("echo"),
            id: Some("7"),
            size: 1300,
            latency_us: Some(3140),
            did: Some("modified: rule shout: modify".into()),
        };
        assert_eq!(
            line.to_string(),
            "s-1a2b3c4d <- response tools/call echo #7 1.3 KiB 3.1 ms [modified: rule shout: modify]"
        );
        let bare = Line {
            session: "s-1",
            arrow: arrow(true),
            kind: "notification",
            method: Some("notifications/initialized"),
            size: 54,
            ..Line::default()
        };
        assert_eq!(
            bare.to_string(),
            "s-1 -> notification notifications/initialized 54 B"
        );
        let shown = |us| Latency(us).to_string();
        assert_eq!(
            [
                850, 999, 1000, 3150, 999_949, 2_400_000, 2_404_999, 2_405_000
            ]
            .map(shown),
            [
                "850 us", "999 us", "1.0 ms", "3.2 ms", "999.9 ms", "2.40 s", "2.40 s", "2.41 s"
            ]
        );
        let shown = |bytes| Size(bytes).to_string();
        assert_eq!(
            [0, 1023, 1024, 1300, 1075, 3 * 1024 * 1024, 1_100_000].map(shown),
            [
                "0 B", "1023 B", "1.0 KiB", "1.3 KiB", "1.0 KiB", "3.0 MiB", "1.0 MiB"
            ]
        );
    }

    #[test]
    fn bodies_are_pretty_and_cut_ones_say_so() {
        assert_eq!(
            pretty(r#"{"a":1}"#, false, 7),
            "    {\n      \"a\": 1\n    }"
        );
        assert_eq!(
            pretty(r#"{"a":"xx"#, true, 5000),
            "    {\"a\":\"xx\n    … (cut; the message is 4.9 KiB)"
        );
    }
}
