//! `shadowcat rules check|test`: a rule file checked on its own, or tried on a recorded tape.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;

use super::session::columns;
use crate::cli::{OutputFormat, RulesCommand};
use crate::intercept::action::{Action, Effect};
use crate::intercept::matcher::Subject;
use crate::intercept::{Mode, Rule, Rules, RulesError};
use crate::protocol::{Direction, Kind, Message, RequestId};
use crate::proxy::tracker::RequestTracker;
use crate::ratelimit::LimitClock;
use crate::session::{Declared, Session, SessionConfig, SessionManager, TransportKind};
use crate::stage::{Context, Verdict};
use crate::tape::{Frame, Tape};
use crate::telemetry::Metrics;

/// Runs a `rules` subcommand; returns the exit code.
pub fn run(cmd: RulesCommand) -> anyhow::Result<u8> {
    let mut out = std::io::stdout().lock();
    match cmd {
        RulesCommand::Check { file } => match Rules::load(&file, None) {
            Ok(rules) => {
                write!(out, "{}", check_report(&file, &rules))?;
                out.flush()?;
                Ok(0)
            }
            Err(e @ RulesError::Invalid { .. }) => {
                eprintln!("shadowcat: {e}");
                Ok(1)
            }
            Err(e) => Err(e.into()),
        },
        RulesCommand::Test {
            file,
            tape,
            rules_mode,
            format,
        } => {
            // Rate limits see the tape's times, not how fast it is read.
            let clock = LimitClock::Manual(governor::clock::FakeRelativeClock::default());
            let rules = match Rules::load_on(&file, rules_mode, clock) {
                Ok(rules) => rules,
                // As `rules check` says it: an invalid file is a verdict (1), not a failure.
                Err(e @ RulesError::Invalid { .. }) => {
                    eprintln!("shadowcat: {e}");
                    return Ok(1);
                }
                Err(e) => return Err(e.into()),
            };
            let recorded = crate::tape::read(&tape)?;
            let messages = dry_run(&rules, &recorded);
            match format {
                OutputFormat::Table => write!(
                    out,
                    "{}",
                    test_report(&file, &rules, &tape, &recorded, &messages)
                )?,
                OutputFormat::Json => {
                    writeln!(out, "{}", serde_json::to_string_pretty(&messages)?)?;
                }
            }
            out.flush()?;
            Ok(0)
        }
    }
}

/// `rules check` of a valid file: its rules, in the order they run.
fn check_report(file: &Path, rules: &Rules) -> String {
    let loaded = rules.loaded();
    let mut out = format!(
        "{}: valid, {} rule{} (mode {}), in the order they run:\n",
        file.display(),
        loaded.set.rules.len(),
        if loaded.set.rules.len() == 1 { "" } else { "s" },
        mode_name(loaded.mode),
    );
    let rows: Vec<Vec<String>> = loaded
        .set
        .rules
        .iter()
        .map(|rule| {
            vec![
                rule.priority.to_string(),
                rule.name.clone(),
                rule.action.name().to_owned(),
                mode_name(rule.mode.unwrap_or(loaded.mode)).to_owned(),
                match rule.at {
                    (0, _) => "-".to_owned(),
                    (line, _) => line.to_string(),
                },
            ]
        })
        .collect();
    if !rows.is_empty() {
        out.push_str(&columns(
            &["PRIORITY", "NAME", "ACTION", "MODE", "LINE"],
            &rows,
        ));
    }
    out
}

fn mode_name(mode: Mode) -> &'static str {
    match mode {
        Mode::Enforce => "enforce",
        Mode::Audit => "audit",
    }
}

/// One message of the tape, and what the rules would do to it.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Tried {
    /// Its place in the tape, from 1.
    pub index: usize,
    /// Microseconds since recording began.
    pub t: u64,
    /// `c2s` or `s2c`.
    pub dir: &'static str,
    /// `request`, `notification`, `response`, `error`, or `invalid` (not JSON-RPC: rules do not
    /// see it).
    pub kind: &'static str,
    /// Its method (a response: its request's).
    pub method: Option<String>,
    /// What a request is about (a response: its request's): its tool, prompt or resource.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Its id.
    pub id: Option<String>,
    /// The rules that act on it, in the order they run.
    pub actions: Vec<Acted>,
    /// What the proxy itself does before the rules, if not forward it (an answer to no
    /// pending request is dropped).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proxy: Option<String>,
    /// For an answer: the rule that answered its request, so that with these rules the
    /// request would not have reached this answer's sender.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub answered_by: Option<String>,
}

/// One rule acting on a message.
#[derive(Debug, Serialize)]
pub struct Acted {
    /// The rule.
    pub rule: String,
    /// Its action.
    pub action: &'static str,
    /// `enforce`, or `audit` (it would only be logged).
    pub mode: &'static str,
    /// What it does, in words.
    pub effect: String,
}

/// Runs the rules over every message of `tape`, as the proxy would have when it was recorded:
/// the session is tracked as it was (so conditions on the client, protocol, frames, age and
/// tags see what they would have seen), each message is tried as recorded, and only tags
/// carry over from one message to the next. Nothing waits.
pub fn dry_run(rules: &Rules, tape: &Tape) -> Vec<Tried> {
    let sessions = SessionManager::new(
        SessionConfig {
            max_sessions: usize::MAX,
            ..SessionConfig::default()
        },
        None,
    );
    let mut run = DryRun {
        rules,
        tape,
        tracker: RequestTracker::new(Arc::new(Metrics::default()), sessions.clone()),
        sessions,
        open: HashMap::new(),
        answered: HashMap::new(),
        names: HashMap::new(),
        now: 0,
    };
    let tried = tape
        .frames
        .iter()
        .enumerate()
        .map(|(n, frame)| run.frame(n + 1, frame))
        .collect();
    for session in run.open.values() {
        run.sessions
            .end(session.id(), crate::session::EndReason::Closed);
    }
    tried
}

/// A dry run's state.
struct DryRun<'a> {
    rules: &'a Rules,
    tape: &'a Tape,
    sessions: Arc<SessionManager>,
    tracker: RequestTracker,
    /// The tape's sessions (one, unless it was recorded from several), by id.
    open: HashMap<&'a str, Arc<Session>>,
    /// Requests a rule answered, by direction and id: the rule.
    answered: HashMap<(Direction, RequestId), String>,
    /// What the requests awaiting answers are about, by direction and id.
    names: HashMap<(Direction, RequestId), String>,
    /// The tape time (µs) a manual limit clock has been moved to.
    now: u64,
}

impl<'a> DryRun<'a> {
    /// The session `id` of the tape, created at its first message.
    fn session(&mut self, id: &'a str) -> Arc<Session> {
        let (sessions, tape) = (&self.sessions, self.tape);
        self.open
            .entry(id)
            .or_insert_with(|| {
                let transport = match tape.header.client_transport.as_str() {
                    "http" => TransportKind::Http,
                    "sse" => TransportKind::Sse,
                    _ => TransportKind::Stdio,
                };
                let session = sessions
                    .create(transport, tape.header.upstream.clone())
                    .unwrap_or_else(|_| Arc::new(Session::standalone(transport, usize::MAX)));
                // A tape without the `initialize` exchange still says who the peers were.
                session.update_metadata(|m| {
                    m.protocol_version.clone_from(&tape.meta.protocol_version);
                    m.client_info = tape.meta.client_info.as_ref().map(Declared::from_value);
                    m.server_info = tape.meta.server_info.as_ref().map(Declared::from_value);
                });
                session
            })
            .clone()
    }

    /// Message `index` of the tape through the tracker and the rules.
    fn frame(&mut self, index: usize, frame: &'a Frame) -> Tried {
        let session = self.session(&frame.session);
        let mut entry = Tried {
            index,
            t: frame.micros,
            dir: frame.direction.short(),
            kind: "invalid",
            method: None,
            name: None,
            id: None,
            actions: Vec::new(),
            proxy: None,
            answered_by: None,
        };
        let Ok(msg) = Message::parse(frame.raw.clone()) else {
            return entry;
        };
        entry.kind = msg.kind().as_str();
        entry.id = msg.id().map(ToString::to_string);
        entry.method = msg.method().map(|m| m.as_str().to_owned());
        entry.name = msg.named();
        match (msg.kind(), msg.id()) {
            (Kind::Request, Some(id)) => {
                if let Some(name) = &entry.name {
                    self.names
                        .insert((frame.direction, id.clone()), name.clone());
                }
            }
            (Kind::Response | Kind::Error, Some(id)) => {
                let request = (frame.direction.reverse(), id.clone());
                entry.answered_by = self.answered.remove(&request);
                entry.name = self.names.remove(&request);
            }
            _ => {}
        }
        let cx = Context {
            direction: frame.direction,
            session: &session,
            transport: &frame.transport,
            client: crate::stage::Client::Local,
            header_trace: None,
            notes: None,
        };
        let (verdict, answered) = self.tracker.track(msg, cx);
        let answers = answered.map(|request| request.method);
        if let Some(answers) = &answers {
            entry.method = Some(answers.as_str().to_owned());
        }
        let msg = match verdict {
            Verdict::Forward(msg) => msg,
            Verdict::Respond(answer) => {
                entry.proxy = Some(format!("answers it itself: {}", json_text(answer.raw())));
                return entry;
            }
            Verdict::Drop => {
                entry.proxy = Some("drops it: it answers no pending request".to_owned());
                return entry;
            }
        };
        if let LimitClock::Manual(clock) = self.rules.clock() {
            if frame.micros > self.now {
                clock.advance(Duration::from_micros(frame.micros - self.now));
                self.now = frame.micros;
            }
        }
        let mut s = Subject::new(&msg, frame.direction, &session, answers.as_ref());
        s.at = Some(session.created() + Duration::from_micros(frame.micros));
        let mut last_enforced = None;
        let walk = self.rules.dry_run(&mut s, |rule, effect, audit, s| {
            if !audit {
                last_enforced = Some(rule.name.clone());
            }
            entry.actions.push(Acted {
                rule: rule.name.clone(),
                action: rule.action.name(),
                mode: if audit { "audit" } else { "enforce" },
                effect: effect_text(rule, effect, s),
            });
        });
        if let (Some(Effect::Answer(_)), Some(id), Some(rule)) =
            (&walk.end, msg.id(), last_enforced)
        {
            self.answered.insert((frame.direction, id.clone()), rule);
        }
        entry
    }
}

/// What `rule`'s `effect` does to `s`, in words; a random delay is given as its range.
fn effect_text(rule: &Rule, effect: &Effect, s: &mut Subject<'_>) -> String {
    match (effect, &rule.action) {
        (Effect::Wait(_), Action::Delay(delay)) if delay.min < delay.max => format!(
            "delay it between {} and {}",
            humantime::format_duration(delay.min),
            humantime::format_duration(delay.max)
        ),
        (Effect::Log(log), _) => format!(
            "log at {}: {:?}",
            log.level.as_str().to_ascii_lowercase(),
            log.message.as_deref().unwrap_or("")
        ),
        _ => crate::intercept::describe(effect, s.body()),
    }
}

fn json_text(raw: &[u8]) -> String {
    crate::tape::diff::short(&serde_json::from_slice(raw).unwrap_or(Value::Null), 200)
}

/// `rules test` as text: each message on a line, the rules acting on it under it, and a
/// summary.
fn test_report(
    file: &Path,
    rules: &Rules,
    tape_path: &Path,
    tape: &Tape,
    tried: &[Tried],
) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "rules  {} ({} rules)", file.display(), rules.len());
    let _ = writeln!(
        out,
        "tape   {} (session {}, {} messages)",
        tape_path.display(),
        tape.header.session,
        tape.frames.len()
    );
    out.push('\n');
    let mut counts: BTreeMap<(&str, &str), usize> = BTreeMap::new();
    let mut acted_on = 0;
    for m in tried {
        let mut line = format!(
            "#{:<4} {:>9}  {}  {:<12}  {}",
            m.index,
            format!("{:.1}ms", m.t as f64 / 1000.0),
            if m.dir == "c2s" {
                "client → server"
            } else {
                "server → client"
            },
            m.kind,
            m.method.as_deref().unwrap_or("-"),
        );
        if let Some(name) = &m.name {
            let _ = write!(line, " {name}");
        }
        if let Some(id) = &m.id {
            let _ = write!(line, "  id {id}");
        }
        out.push_str(line.trim_end());
        out.push('\n');
        if let Some(rule) = &m.answered_by {
            let _ = writeln!(
                out,
                "       (rule {rule} answered the request: with these rules, this answer would not be sent)"
            );
        }
        if let Some(proxy) = &m.proxy {
            let _ = writeln!(out, "       the proxy {proxy}; no rule sees it");
        }
        if m.kind == "invalid" {
            let _ = writeln!(out, "       not JSON-RPC; no rule sees it");
        }
        if !m.actions.is_empty() {
            acted_on += 1;
        }
        for a in &m.actions {
            let audit = if a.mode == "audit" {
                " (audit: only logged)"
            } else {
                ""
            };
            let _ = writeln!(out, "       {} [{}]{audit}: {}", a.rule, a.action, a.effect);
            *counts.entry((a.rule.as_str(), a.mode)).or_default() += 1;
        }
    }
    out.push('\n');
    let _ = write!(out, "{acted_on} of {} messages acted on", tried.len());
    if counts.is_empty() {
        out.push('\n');
    } else {
        let fired: Vec<String> = counts
            .iter()
            .map(|((rule, mode), n)| {
                let audit = if *mode == "audit" { " (audit)" } else { "" };
                format!("{rule}{audit} {n}")
            })
            .collect();
        let _ = writeln!(out, ": {}", fired.join(", "));
    }
    let loaded = rules.loaded();
    let idle: Vec<&str> = loaded
        .set
        .rules
        .iter()
        .filter(|r| !counts.keys().any(|(name, _)| *name == r.name))
        .map(|r| r.name.as_str())
        .collect();
    if !idle.is_empty() {
        let _ = writeln!(out, "never acted: {}", idle.join(", "));
    }
    out
}
