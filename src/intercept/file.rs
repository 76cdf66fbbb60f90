//! The rule file (docs/rules.md): YAML or JSON, `version: 1`, read into compiled [`Rule`]s.
//!
//! Everything is checked while the file is read (globs, JSONPaths, regexes, which action a rule
//! has), so an error carries the line and column where the file goes wrong, and a file that
//! loads cannot fail at run time.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde_saphyr::Spanned;

use super::action::{
    Action, Block, Delay, Hide, Log, Mock, Modify, RequireScope, RuleLimit, RuleLimitSpec,
};
use super::matcher::{Match, OneOrMany};

/// The only rule file format so far.
pub const VERSION: u32 = 1;

/// A rule file that cannot be used, with where it goes wrong.
#[derive(Debug, thiserror::Error)]
pub enum RulesError {
    /// The file cannot be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not a valid rule file.
    #[error("{path}:{line}:{column}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Where, from 1 (0 when the parser could not say).
        line: usize,
        /// Where on the line, from 1 (0 when the parser could not say).
        column: usize,
        /// What is wrong.
        message: String,
    },
}

/// Whether rules act or only say what they would do.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Rules act.
    #[default]
    Enforce,
    /// Nothing is changed: each action a rule would take is logged and counted.
    Audit,
}

/// A loaded rule file: its rules in the order they run.
#[derive(Debug, Default)]
pub struct RuleSet {
    /// By priority, highest first; equal priorities in file order.
    pub rules: Vec<Rule>,
}

impl RuleSet {
    /// Runs its rate limits on `clock` (when it is not the monotonic clock they were built on).
    pub fn limits_on(&mut self, clock: &crate::ratelimit::LimitClock) {
        if matches!(clock, crate::ratelimit::LimitClock::Monotonic) {
            return;
        }
        for rule in &mut self.rules {
            if let Action::RateLimit(limit) = &mut rule.action {
                limit.on(clock);
            }
        }
    }

    /// Keeps the state of the rate limits `old` had: a rule of the same name with the same
    /// limit carries on where it was (a reload does not hand every client a fresh burst).
    pub fn adopt_limits(&mut self, old: &RuleSet) {
        for rule in &mut self.rules {
            let Action::RateLimit(limit) = &mut rule.action else {
                continue;
            };
            let before = old.rules.iter().find_map(|r| match &r.action {
                Action::RateLimit(before) if r.name == rule.name => Some(before),
                _ => None,
            });
            if let Some(before) = before {
                limit.adopt(before);
            }
        }
    }
}

/// One rule: when it applies and what it does.
#[derive(Debug, Deserialize)]
#[serde(try_from = "RuleSpec")]
pub struct Rule {
    /// Its name, for logs, metrics and `rules test`.
    pub name: String,
    /// Where its name is in the file: line and column from 1 (0, 0 for JSON, which does not
    /// say).
    pub at: (usize, usize),
    /// Higher runs first.
    pub priority: i32,
    /// Its own mode (the file's when it names none).
    pub mode: Option<Mode>,
    /// When it applies.
    pub when: Match,
    /// What it does.
    pub action: Action,
}

/// The file as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSpec {
    version: Spanned<u32>,
    #[serde(default)]
    mode: Mode,
    #[serde(default)]
    rules: Vec<Rule>,
}

/// A rule as written: one action key among several.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleSpec {
    name: Spanned<String>,
    #[serde(default)]
    priority: i32,
    mode: Option<Mode>,
    #[serde(default, rename = "match")]
    when: Match,
    block: Option<Block>,
    mock: Option<Mock>,
    modify: Option<Modify>,
    #[serde(default, with = "humantime_serde")]
    delay: Option<Duration>,
    delay_between: Option<Delay>,
    tag: Option<OneOrMany>,
    log: Option<Log>,
    hide: Option<bool>,
    rate_limit: Option<RuleLimitSpec>,
    require_scope: Option<OneOrMany>,
}

impl TryFrom<RuleSpec> for Rule {
    type Error = String;

    fn try_from(spec: RuleSpec) -> Result<Self, String> {
        let at = position(&spec.name.referenced);
        let name = spec.name.value;
        let mut actions = Vec::new();
        if let Some(block) = spec.block {
            actions.push(Action::Block(block));
        }
        if let Some(mock) = spec.mock {
            actions.push(Action::Mock(mock));
        }
        if let Some(modify) = spec.modify {
            actions.push(Action::Modify(modify));
        }
        if let Some(fixed) = spec.delay {
            actions.push(Action::Delay(Delay {
                min: fixed,
                max: fixed,
            }));
        }
        if let Some(between) = spec.delay_between {
            if between.min > between.max {
                return Err(format!("rule {name:?}: delay_between needs min <= max"));
            }
            actions.push(Action::Delay(between));
        }
        if let Some(tags) = spec.tag {
            let tags = tags.into_vec();
            if tags.is_empty() || tags.iter().any(String::is_empty) {
                return Err(format!(
                    "rule {name:?}: tag needs one or more non-empty tags"
                ));
            }
            actions.push(Action::Tag(tags));
        }
        if let Some(log) = spec.log {
            actions.push(Action::Log(log));
        }
        let mut when = spec.when;
        if spec.hide == Some(true) {
            let Some((kind, names)) = when.take_name() else {
                return Err(format!(
                    "rule {name:?}: hide needs one of match.tool, match.prompt or match.resource (what to hide)"
                ));
            };
            if when.mentions_names() {
                return Err(format!(
                    "rule {name:?}: hide takes one of match.tool, match.prompt or match.resource, not several"
                ));
            }
            actions.push(Action::Hide(Hide { kind, names }));
        }
        if let Some(limit) = spec.rate_limit {
            actions.push(Action::RateLimit(RuleLimit::new(&name, &limit)?));
        }
        if let Some(scopes) = spec.require_scope {
            actions.push(Action::RequireScope(RequireScope::new(
                &name,
                scopes.into_vec(),
            )?));
        }
        let action = match actions.len() {
            1 => actions.remove(0),
            0 => {
                return Err(format!(
                    "rule {name:?} has no action: give one of block, mock, modify, delay, delay_between, tag, log, hide, rate_limit, require_scope"
                ));
            }
            _ => {
                return Err(format!(
                    "rule {name:?} has {} actions: give exactly one (write more rules for more)",
                    actions.len()
                ));
            }
        };
        Ok(Self {
            name,
            at,
            priority: spec.priority,
            mode: spec.mode,
            when,
            action,
        })
    }
}

impl RuleSet {
    /// Reads rules from `text` (JSON if `json`, else YAML, of which JSON is a subset anyway).
    /// The error is the line, column and what is wrong.
    pub fn parse(text: &str, json: bool) -> Result<(Self, Mode), (usize, usize, String)> {
        let spec: FileSpec = if json {
            serde_json::from_str(text).map_err(|e| {
                let message = e.to_string();
                let message = message
                    .rsplit_once(" at line ")
                    .map_or(message.as_str(), |(m, _)| m)
                    .to_owned();
                (e.line(), e.column(), message)
            })?
        } else {
            serde_saphyr::from_str(text).map_err(|e| yaml_error(&e))?
        };
        if spec.version.value != VERSION {
            let (line, column) = position(&spec.version.referenced);
            return Err((
                line.max(1),
                column.max(1),
                format!(
                    "version {} is not supported: this shadowcat reads version {VERSION}",
                    spec.version.value
                ),
            ));
        }
        let mut rules = spec.rules;
        let mut names = std::collections::HashSet::new();
        for rule in &rules {
            if !names.insert(rule.name.as_str()) {
                let (line, column) = rule.at;
                return Err((
                    line.max(1),
                    column.max(1),
                    format!("two rules are named {:?}", rule.name),
                ));
            }
        }
        // Stable: equal priorities keep their order in the file.
        rules.sort_by_key(|rule| std::cmp::Reverse(rule.priority));
        Ok((Self { rules }, spec.mode))
    }
}

/// Reads and checks the rule file at `path` (JSON when it ends in `.json`, else YAML): its
/// rules, its mode, and its text.
pub fn load(path: &Path) -> Result<(RuleSet, Mode, String), RulesError> {
    let text = std::fs::read_to_string(path).map_err(|source| RulesError::Io {
        path: path.to_owned(),
        source,
    })?;
    let json = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("json"));
    let (set, mode) =
        RuleSet::parse(&text, json).map_err(|(line, column, message)| RulesError::Invalid {
            path: path.to_owned(),
            line,
            column,
            message,
        })?;
    Ok((set, mode, text))
}

/// A YAML error as line, column and message.
fn yaml_error(e: &serde_saphyr::Error) -> (usize, usize, String) {
    let (line, column) = e
        .location()
        .map_or((0, 0), |l| (to_usize(l.line()), to_usize(l.column())));
    let mut message = e.without_snippet().to_string();
    // The location is given apart; the message need not repeat it.
    let suffix = format!(" at line {line}, column {column}");
    if message.ends_with(&suffix) {
        message.truncate(message.len() - suffix.len());
    }
    (line, column, message)
}

/// A location as line and column (0, 0 when unknown).
fn position(location: &serde_saphyr::Location) -> (usize, usize) {
    (to_usize(location.line()), to_usize(location.column()))
}

fn to_usize(n: impl TryInto<usize>) -> usize {
    n.try_into().unwrap_or(usize::MAX)
}
