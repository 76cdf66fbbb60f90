//! Interceptor rules (`--rules FILE`, docs/rules.md): one declarative rule engine in the
//! shared pipeline, the same in every mode.
//!
//! - [`file`]: the rule file, read and checked (line and column on any error).
//! - [`matcher`]: when a rule applies; a message's body is parsed only if a rule needs it.
//! - [`action`]: what a rule does, as an effect the engine applies or only reports.
//! - [`reload`]: the file is watched; a good new version replaces the running rules.
//!
//! Order: rules run by priority (highest first; equal priorities in file order). Every rule that
//! matches acts; `modify`, `delay`, `tag` and `log` let the walk go on (later rules see the
//! modified message), and the first `block`, `mock` or `hide` that refuses the message ends
//! it. In audit mode (`--rules-mode audit`, or `mode: audit` on the file or a rule) nothing is
//! changed: each action is logged, with a before/after diff for changes, and counted.

pub mod action;
pub mod file;
mod index;
pub mod matcher;
mod reload;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use serde_json::Value;

pub use file::{Mode, Rule, RuleSet, RulesError};

use crate::protocol::{Kind, Message, Method};
use crate::ratelimit::LimitClock;
use crate::stage::{Context, Verdict};
use crate::telemetry::Metrics;
use action::Effect;
use matcher::Subject;

/// The running rules of one proxy: swapped whole when the file changes.
#[derive(Debug)]
pub struct Rules {
    current: ArcSwap<Loaded>,
    /// `--rules-mode`: every rule's mode, whatever the file says.
    forced: Option<Mode>,
    path: PathBuf,
    /// The file's text last loaded (a reload of the same text is skipped).
    text: Mutex<String>,
    /// Watches the file while it lives.
    watcher: Mutex<Option<reload::Watcher>>,
    /// The clock `rate_limit:` rules run on.
    clock: LimitClock,
}

/// One version of the file, compiled.
#[derive(Debug, Default)]
pub(crate) struct Loaded {
    pub(crate) set: RuleSet,
    pub(crate) mode: Mode,
    /// Which of its rules can apply, by method.
    index: index::Index,
}

impl Loaded {
    fn new(set: RuleSet, mode: Mode) -> Self {
        Self {
            index: index::Index::new(&set.rules),
            set,
            mode,
        }
    }
}

impl Rules {
    /// Loads the rule file at `path`; `forced` overrides every rule's mode.
    pub fn load(path: &Path, forced: Option<Mode>) -> Result<Self, RulesError> {
        Self::load_on(path, forced, LimitClock::Monotonic)
    }

    /// [`Rules::load`], with `rate_limit:` rules on `clock` (`rules test` moves it by the
    /// tape's times).
    pub fn load_on(
        path: &Path,
        forced: Option<Mode>,
        clock: LimitClock,
    ) -> Result<Self, RulesError> {
        let (mut set, mode, text) = file::load(path)?;
        set.limits_on(&clock);
        Ok(Self {
            clock,
            current: ArcSwap::from_pointee(Loaded::new(set, mode)),
            forced,
            path: path.to_owned(),
            text: Mutex::new(text),
            watcher: Mutex::new(None),
        })
    }

    /// The clock its `rate_limit:` rules run on.
    pub fn clock(&self) -> &LimitClock {
        &self.clock
    }

    /// The rule file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// How many rules run now.
    pub fn len(&self) -> usize {
        self.current.load().set.rules.len()
    }

    /// Whether no rule runs now.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Reads the file again; a valid one replaces the running rules (`Ok(true)`), the same text
    /// changes nothing (`Ok(false)`), and an invalid one is returned as the error while the
    /// running rules stay.
    pub fn reload(&self) -> Result<bool, RulesError> {
        let (mut set, mode, text) = file::load(&self.path)?;
        let mut last = self
            .text
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if *last == text {
            return Ok(false);
        }
        *last = text;
        set.limits_on(&self.clock);
        set.adopt_limits(&self.current.load().set);
        self.current.store(Arc::new(Loaded::new(set, mode)));
        Ok(true)
    }

    /// Watches the file for as long as these rules live, reloading it when it changes.
    pub fn watch(self: &Arc<Self>) -> Result<(), RulesError> {
        let watcher = reload::Watcher::start(self)?;
        *self
            .watcher
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(watcher);
        Ok(())
    }

    /// Runs `msg` through the rules. `answers` is the method of the request a response answers.
    pub async fn process(
        &self,
        msg: Message,
        cx: Context<'_>,
        answers: Option<&Method>,
        metrics: &Metrics,
    ) -> Verdict {
        let (walk, changed) = {
            // The guard is dropped before any wait.
            let loaded = self.current.load();
            if loaded.set.rules.is_empty() {
                return Verdict::Forward(msg);
            }
            let mut s = Subject::new(&msg, cx.direction, cx.session, answers);
            s.client = cx.client;
            let walk = self.walk(&loaded, &mut s, |rule, effect, audit, s| {
                metrics.rule_fired(&rule.name, rule.action.name(), audit);
                cx.note("rule", || {
                    vec![
                        ("shadowcat.rule", rule.name.clone()),
                        ("shadowcat.action", rule.action.name().to_owned()),
                        (
                            "shadowcat.mode",
                            if audit { "audit" } else { "enforce" }.to_owned(),
                        ),
                    ]
                });
                match effect {
                    // Logging changes nothing: it happens in audit mode too.
                    Effect::Log(log) => log_message(rule, log, s),
                    _ if audit => report(rule, s, effect),
                    _ => {}
                }
            });
            (walk, s.into_changed())
        };
        if !walk.wait.is_zero() {
            cx.note("delayed", || {
                vec![("shadowcat.delay_ms", walk.wait.as_millis().to_string())]
            });
            tokio::time::sleep(walk.wait).await;
        }
        match walk.end {
            Some(Effect::Answer(answer)) => {
                // The request goes no further: it no longer awaits an answer from there.
                if let (Kind::Request, Some(id)) = (msg.kind(), msg.id()) {
                    cx.session.pending(cx.direction).remove(id);
                }
                return Verdict::Respond(answer);
            }
            Some(Effect::Replace(replacement)) => return Verdict::Forward(replacement),
            Some(Effect::Drop) => return Verdict::Drop,
            _ => {}
        }
        let Some(body) = changed else {
            return Verdict::Forward(msg);
        };
        match Message::parse(body.to_string().into()) {
            Ok(changed) => Verdict::Forward(changed),
            Err(e) => {
                // Rules change members inside the message; its envelope stays valid.
                tracing::error!(%e, "a rule left the message invalid; forwarding it unchanged");
                Verdict::Forward(msg)
            }
        }
    }

    /// The rules as they run now (`rules check` lists them).
    pub(crate) fn loaded(&self) -> arc_swap::Guard<Arc<Loaded>> {
        self.current.load()
    }

    /// Runs the rules over `s` without acting on anything but `s` (`rules test`): each rule
    /// that acts is passed to `observe`, with whether it only audits.
    pub fn dry_run(
        &self,
        s: &mut Subject<'_>,
        observe: impl FnMut(&Rule, &Effect, bool, &mut Subject<'_>),
    ) -> Walk {
        self.walk(&self.current.load(), s, observe)
    }

    /// The walk through the rules, by priority: each rule that matches and acts is passed to
    /// `observe` (before its effect is applied; `true` if it only audits), then changes, tags
    /// and delays are applied to `s`, its session and the walk, and the first terminal effect
    /// ends it.
    fn walk(
        &self,
        loaded: &Loaded,
        s: &mut Subject<'_>,
        mut observe: impl FnMut(&Rule, &Effect, bool, &mut Subject<'_>),
    ) -> Walk {
        let mut wait = Duration::ZERO;
        let candidates =
            loaded
                .index
                .candidates(&loaded.set.rules, s.direction, s.msg.kind(), s.method);
        let names = loaded.index.names(s, &candidates);
        for &i in candidates.iter() {
            // The name filter holds for the message as it came; once a rule has changed it
            // (perhaps its name), every candidate is checked in full.
            if !s.changed && names.excludes(i) {
                continue;
            }
            let Some(rule) = loaded.set.rules.get(i as usize) else {
                continue;
            };
            // What was asked of the body before this rule is not this rule's to answer for.
            s.take_missed();
            let matched = rule.when.matches(s);
            let effect = if matched {
                rule.action.effect(&rule.name, s)
            } else {
                Effect::None
            };
            let audit = self.forced.or(rule.mode).unwrap_or(loaded.mode) == Mode::Audit;
            if let Some(missed) = s.take_missed() {
                // The rule needed the message's JSON (or something about its caller) and could
                // not have it: it cannot be decided, so the message is refused rather than let
                // through undecided.
                tracing::warn!(
                    rule = %rule.name,
                    reason = %missed.why(),
                    audit,
                    "a rule cannot be decided for a message: the message is refused"
                );
                let effect = action::unreadable(&rule.name, &missed, s);
                observe(rule, &effect, audit, s);
                if audit {
                    continue;
                }
                return Walk {
                    end: Some(effect),
                    wait,
                };
            }
            if matches!(effect, Effect::None) {
                continue;
            }
            observe(rule, &effect, audit, s);
            if audit {
                continue;
            }
            match effect {
                Effect::None | Effect::Log(_) => {}
                Effect::Change(body) | Effect::Filter { body, .. } => s.set_body(body),
                Effect::Wait(delay) => wait = wait.saturating_add(delay),
                Effect::Tag(tags) => {
                    for tag in &tags {
                        s.session.tag(tag);
                    }
                }
                Effect::Answer(_) | Effect::Replace(_) | Effect::Drop => {
                    return Walk {
                        end: Some(effect),
                        wait,
                    };
                }
            }
        }
        Walk { end: None, wait }
    }
}

/// What the rules decided for one message, besides changing it.
#[derive(Debug)]
pub struct Walk {
    /// The terminal effect that ended the walk (an answer, a replacement, a drop), if any.
    pub end: Option<Effect>,
    /// How long to hold the message first: the delays of the rules that acted, added up.
    pub wait: Duration,
}

/// The rules a pipeline runs, watched from now on. A watch that cannot start is logged: the
/// rules still run, without reloading.
pub fn start(rules: Option<&Arc<Rules>>) -> Option<Arc<Rules>> {
    let rules = rules?;
    if let Err(e) = rules.watch() {
        tracing::warn!("{e}; the rules run but will not be reloaded when the file changes");
    }
    tracing::info!(file = %rules.path().display(), rules = rules.len(), "interceptor rules loaded");
    Some(rules.clone())
}

/// What an effect does, in words (audit logs, `rules test`).
pub fn describe(effect: &Effect, before: Option<&Value>) -> String {
    match effect {
        Effect::None => "nothing".to_owned(),
        Effect::Change(after) => {
            let changes: Vec<String> = match before {
                Some(before) => crate::tape::diff::differences(before, after)
                    .iter()
                    .map(|d| {
                        let show = |v: &Option<Value>| {
                            v.as_ref()
                                .map_or("(absent)".to_owned(), |v| crate::tape::diff::short(v, 120))
                        };
                        format!("{}: {} -> {}", d.path, show(&d.recorded), show(&d.live))
                    })
                    .collect(),
                None => Vec::new(),
            };
            format!("change {}", changes.join("; "))
        }
        Effect::Filter { hidden, .. } => format!("hide {} from the list", hidden.join(", ")),
        Effect::Answer(answer) => format!(
            "answer the sender {}",
            crate::tape::diff::short(
                &serde_json::from_slice(answer.raw()).unwrap_or(Value::Null),
                200
            )
        ),
        Effect::Replace(replacement) => format!(
            "replace it with {}",
            crate::tape::diff::short(
                &serde_json::from_slice(replacement.raw()).unwrap_or(Value::Null),
                200
            )
        ),
        Effect::Drop => "drop it".to_owned(),
        Effect::Wait(delay) => format!("delay it {}", humantime::format_duration(*delay)),
        Effect::Tag(tags) => format!("tag the session {}", tags.join(", ")),
        Effect::Log(_) => "log it".to_owned(),
    }
}

/// Audit mode: what `rule` would have done, logged.
fn report(rule: &Rule, s: &mut Subject<'_>, effect: &Effect) {
    if let Effect::Log(log) = effect {
        // Logging changes nothing: it happens in audit mode too.
        log_message(rule, log, s);
        return;
    }
    let what = describe(effect, s.body());
    tracing::info!(
        rule = %rule.name,
        action = rule.action.name(),
        direction = s.direction.as_str(),
        method = s.method.map_or("", |m| m.as_str()),
        id = %s.msg.id().map(ToString::to_string).unwrap_or_default(),
        session = %s.session.id().digest(),
        caller = s.client.principal().map_or("", |p| p.id.as_str()),
        "audit: rule {:?} would {what}",
        rule.name
    );
}

/// The `log` action.
fn log_message(rule: &Rule, log: &action::Log, s: &Subject<'_>) {
    let message = log.message.as_deref().unwrap_or("");
    let caller = s.client.principal().map_or("", |p| p.id.as_str());
    let method = s.method.map_or("", |m| m.as_str());
    let id = s.msg.id().map(ToString::to_string).unwrap_or_default();
    let direction = s.direction.as_str();
    let session = s.session.id().digest();
    macro_rules! emit {
        ($level:expr) => {
            tracing::event!($level, rule = %rule.name, direction, method, id = %id, session = %session, caller, "rule {:?}: {message}", rule.name)
        };
    }
    match log.level {
        tracing::Level::ERROR => emit!(tracing::Level::ERROR),
        tracing::Level::WARN => emit!(tracing::Level::WARN),
        tracing::Level::DEBUG => emit!(tracing::Level::DEBUG),
        tracing::Level::TRACE => emit!(tracing::Level::TRACE),
        _ => emit!(tracing::Level::INFO),
    }
}

#[cfg(test)]
mod tests;
