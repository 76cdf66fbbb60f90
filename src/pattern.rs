//! The patterns rules are written with, compiled when the file is read: name globs, RFC 9535
//! JSONPaths (plain ones walked without a query), and regular expressions.

use serde::{Deserialize, Deserializer};
use serde_json::Value;
use serde_json_path::JsonPath;

/// A name pattern: exact unless it has glob characters (`*`, `?`, `[...]`, `{a,b}`).
#[derive(Debug, Clone)]
pub enum Glob {
    /// Matches only itself.
    Exact(String),
    /// `prefix*`: names that start with it.
    Prefix(String),
    /// `*suffix`: names that end with it.
    Suffix(String),
    /// Matches the glob.
    Pattern(globset::GlobMatcher),
}

impl Glob {
    /// Compiles `text`.
    pub fn new(text: &str) -> Result<Self, String> {
        const META: [char; 6] = ['*', '?', '[', '{', '\\', ']'];
        if !text.contains(['*', '?', '[', '{']) {
            return Ok(Self::Exact(text.to_owned()));
        }
        // The common forms, without a regex.
        if let Some(prefix) = text.strip_suffix('*').filter(|p| !p.contains(META)) {
            return Ok(Self::Prefix(prefix.to_owned()));
        }
        if let Some(suffix) = text.strip_prefix('*').filter(|s| !s.contains(META)) {
            return Ok(Self::Suffix(suffix.to_owned()));
        }
        globset::GlobBuilder::new(text)
            .literal_separator(false)
            .build()
            .map(|glob| Self::Pattern(glob.compile_matcher()))
            .map_err(|e| format!("{text:?} is not a valid glob: {e}"))
    }

    /// The same pattern for a `globset::GlobSet` (the rule index matches many at once).
    pub fn to_globset(&self) -> Option<globset::Glob> {
        let text = match self {
            Self::Exact(exact) => globset::escape(exact),
            Self::Prefix(prefix) => format!("{}*", globset::escape(prefix)),
            Self::Suffix(suffix) => format!("*{}", globset::escape(suffix)),
            Self::Pattern(glob) => return Some(glob.glob().clone()),
        };
        globset::GlobBuilder::new(&text)
            .literal_separator(false)
            .build()
            .ok()
    }

    /// Whether `text` matches.
    pub fn is_match(&self, text: &str) -> bool {
        match self {
            Self::Exact(exact) => exact == text,
            Self::Prefix(prefix) => text.starts_with(prefix.as_str()),
            Self::Suffix(suffix) => text.ends_with(suffix.as_str()),
            Self::Pattern(glob) => glob.is_match(text),
        }
    }
}

impl<'de> Deserialize<'de> for Glob {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Self::new(&text).map_err(serde::de::Error::custom)
    }
}

/// An RFC 9535 JSONPath, checked when read.
#[derive(Debug, Clone)]
pub struct Path {
    /// As written.
    pub text: String,
    /// Compiled.
    pub path: JsonPath,
    /// For a path of plain names and indexes (`$.arguments.limit`, `$.items[0]`, the usual
    /// kind), its steps: such a path selects at most one value, found without a query.
    steps: Option<Vec<Step>>,
}

/// One step of a plain path.
#[derive(Debug, Clone, PartialEq)]
enum Step {
    /// An object's member.
    Name(String),
    /// An array's element.
    Index(usize),
}

impl Path {
    /// Compiles `text`.
    pub fn new(text: &str) -> Result<Self, String> {
        let path = parse_path(text).map_err(|e| e.to_string())?;
        Ok(Self {
            text: text.to_owned(),
            path,
            steps: plain_steps(text),
        })
    }

    /// Whether the path is plain (selects without a query).
    pub fn is_plain(&self) -> bool {
        self.steps.is_some()
    }

    /// Calls `f` with the values the path selects in `value`.
    pub fn select<R>(&self, value: &Value, f: impl FnOnce(&[&Value]) -> R) -> R {
        match &self.steps {
            Some(steps) => {
                let mut at = Some(value);
                for step in steps {
                    at = at.and_then(|v| match (step, v) {
                        (Step::Name(name), Value::Object(map)) => map.get(name),
                        (Step::Index(i), Value::Array(items)) => items.get(*i),
                        _ => None,
                    });
                }
                match at {
                    Some(found) => f(&[found]),
                    None => f(&[]),
                }
            }
            None => f(&self.path.query(value).all()),
        }
    }
}

/// The steps of `text` if it is `$` followed only by `.name`, `['name']` (no escapes) and
/// `[N]` selectors; `None` for anything else (which the full query handles).
fn plain_steps(text: &str) -> Option<Vec<Step>> {
    let mut rest = text.strip_prefix('$')?;
    let mut steps = Vec::new();
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix('.') {
            let end = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(after.len());
            let name = &after[..end];
            if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
                return None;
            }
            steps.push(Step::Name(name.to_owned()));
            rest = &after[end..];
        } else if let Some(after) = rest.strip_prefix("['") {
            let (name, tail) = after.split_once("']")?;
            if name.contains(['\\', '\'']) {
                return None;
            }
            steps.push(Step::Name(name.to_owned()));
            rest = tail;
        } else if let Some(after) = rest.strip_prefix('[') {
            let (digits, tail) = after.split_once(']')?;
            if digits.is_empty()
                || !digits.bytes().all(|b| b.is_ascii_digit())
                || (digits.len() > 1 && digits.starts_with('0'))
            {
                return None;
            }
            steps.push(Step::Index(digits.parse().ok()?));
            rest = tail;
        } else {
            return None;
        }
    }
    Some(steps)
}

impl<'de> Deserialize<'de> for Path {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Self::new(&text).map_err(serde::de::Error::custom)
    }
}

/// A regular expression, checked when read.
#[derive(Debug, Clone)]
pub struct Pattern(pub(super) regex::Regex);

impl<'de> Deserialize<'de> for Pattern {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        regex::Regex::new(&text).map(Self).map_err(|e| {
            // The regex crate's message draws the pattern over several lines; its last
            // line says what is wrong.
            let e = e.to_string();
            let why = e.lines().last().unwrap_or_default();
            let why = why.strip_prefix("error: ").unwrap_or(why);
            serde::de::Error::custom(format!("{text:?} is not a valid regex: {why}"))
        })
    }
}

/// A JSONPath (`--redact`, a rule's `path`) that is not RFC 9535.
#[derive(Debug, thiserror::Error)]
#[error("{path:?} is not a JSONPath (RFC 9535), at character {position}: {reason}")]
pub struct BadPath {
    /// The path as given.
    pub path: String,
    /// Where it goes wrong, from 0.
    pub position: usize,
    /// What is wrong.
    pub reason: String,
}

/// Parses one RFC 9535 JSONPath, with an error naming where it goes wrong.
pub fn parse_path(path: &str) -> Result<JsonPath, BadPath> {
    JsonPath::parse(path).map_err(|e| BadPath {
        path: path.to_owned(),
        position: e.position(),
        reason: e.message().to_owned(),
    })
}

/// The JSON pointers of every value `path` selects in `value`.
pub fn pointers(path: &JsonPath, value: &Value) -> Vec<String> {
    path.query_located(value)
        .locations()
        .map(serde_json_path::NormalizedPath::to_json_pointer)
        .collect()
}
