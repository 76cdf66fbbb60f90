//! What a rule does: [`Action`]. Each action says what it would do to a [`Subject`] as an
//! [`Effect`], without doing it: the engine applies the effect (enforce) or only logs and counts
//! it (audit), so the two modes cannot drift apart.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value, json};

use super::matcher::{Glob, Missed, NameKind, Path, Subject};
use crate::protocol::error::{ErrorCode, ProxyError};
use crate::protocol::{Direction, Kind, Message, Method, RequestId};
use crate::ratelimit::{Limit, LimitClock, LimitSpec, Per, Rate, Sender};

/// What a rule does.
#[derive(Debug)]
pub enum Action {
    /// Refuse the message with a JSON-RPC error.
    Block(Block),
    /// Answer with a given result or error, without the receiver.
    Mock(Mock),
    /// Change `params` (or `result`).
    Modify(Modify),
    /// Hold the message for a while.
    Delay(Delay),
    /// Add tags to the session.
    Tag(Vec<String>),
    /// Log the message.
    Log(Log),
    /// Hide tools, prompts or resources: removed from lists, unknown when used.
    Hide(Hide),
    /// Limit the rate of the requests and notifications the rule matches.
    RateLimit(RuleLimit),
    /// Let the client's requests and notifications the rule matches through only for a
    /// caller whose token has these scopes.
    RequireScope(RequireScope),
}

impl Action {
    /// Its name in logs, metrics and `rules test`.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Block(_) => "block",
            Self::Mock(_) => "mock",
            Self::Modify(_) => "modify",
            Self::Delay(_) => "delay",
            Self::Tag(_) => "tag",
            Self::Log(_) => "log",
            Self::Hide(_) => "hide",
            Self::RateLimit(_) => "rate_limit",
            Self::RequireScope(_) => "require_scope",
        }
    }
}

/// `block:`: the JSON-RPC error the sender of a request gets (a notification is dropped; a
/// response is replaced by this error, for the requester).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Block {
    /// The error code (default -32091, `blocked_by_rule`).
    code: Option<i64>,
    /// The error message (default: `blocked by rule "<name>"`).
    message: Option<String>,
    /// Extra members for the error's `data`.
    data: Option<Map<String, Value>>,
}

/// `mock:`: the answer a request gets without reaching its receiver; exactly one of `result`
/// or `error`.
#[derive(Debug)]
pub struct Mock {
    answer: MockAnswer,
}

#[derive(Debug)]
enum MockAnswer {
    Result(Value),
    Error(Value),
}

impl<'de> Deserialize<'de> for Mock {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Spec {
            result: Option<Value>,
            error: Option<MockError>,
        }
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct MockError {
            code: i64,
            message: String,
            data: Option<Value>,
        }
        let answer = match Spec::deserialize(d)? {
            Spec {
                result: Some(result),
                error: None,
            } => MockAnswer::Result(result),
            Spec {
                result: None,
                error: Some(e),
            } => {
                let mut error = json!({"code": e.code, "message": e.message});
                if let Some(data) = e.data {
                    error["data"] = data;
                }
                MockAnswer::Error(error)
            }
            _ => {
                return Err(serde::de::Error::custom(
                    "mock needs exactly one of result or error",
                ));
            }
        };
        Ok(Self { answer })
    }
}

/// `modify:`: changes to the message's `params` (requests, notifications), `result`
/// (responses) or `error` (errors), applied in this order. JSONPaths start at that member.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Modify {
    /// Replace every value a path selects (paths select only what exists; use `merge` to add).
    #[serde(default)]
    set: Sets,
    /// Remove every value a path selects.
    #[serde(default)]
    remove: Vec<Path>,
    /// A JSON merge patch (RFC 7396): adds, replaces, and removes with `null`.
    merge: Option<Value>,
}

/// `set:` as path → value, in file order.
#[derive(Debug, Default)]
struct Sets(Vec<(Path, Value)>);

impl<'de> Deserialize<'de> for Sets {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Sets;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a map from JSONPath to value")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Sets, A::Error> {
                let mut sets = Vec::new();
                while let Some((path, value)) = map.next_entry::<Path, Value>()? {
                    sets.push((path, value));
                }
                Ok(Sets(sets))
            }
        }
        d.deserialize_map(Visitor)
    }
}

/// `delay_between:`: a random delay in `[min, max]` (`delay: 200ms` is a fixed one).
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Delay {
    /// Shortest.
    #[serde(with = "humantime_serde")]
    pub min: Duration,
    /// Longest.
    #[serde(with = "humantime_serde")]
    pub max: Duration,
}

impl Delay {
    /// How long this time.
    pub fn pick(self) -> Duration {
        if self.min >= self.max {
            return self.min;
        }
        let span = u64::try_from(self.max.saturating_sub(self.min).as_micros()).unwrap_or(u64::MAX);
        self.min + Duration::from_micros(rand::random_range(0..=span))
    }
}

/// `log:`: a level (`info`), or a level and a message.
#[derive(Debug, Clone)]
pub struct Log {
    /// How loud.
    pub level: tracing::Level,
    /// What to say besides the message's method and id.
    pub message: Option<String>,
}

impl<'de> Deserialize<'de> for Log {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Spec {
            Level(String),
            Full {
                level: Option<String>,
                message: Option<String>,
            },
        }
        let (level, message) = match Spec::deserialize(d)? {
            Spec::Level(level) => (Some(level), None),
            Spec::Full { level, message } => (level, message),
        };
        let level = match level.as_deref().unwrap_or("info") {
            "error" => tracing::Level::ERROR,
            "warn" => tracing::Level::WARN,
            "info" => tracing::Level::INFO,
            "debug" => tracing::Level::DEBUG,
            "trace" => tracing::Level::TRACE,
            other => {
                return Err(serde::de::Error::custom(format!(
                    "log level {other:?}: use error, warn, info, debug or trace"
                )));
            }
        };
        Ok(Self { level, message })
    }
}

/// `hide: true`: the tools (prompts, resources) the match's `tool` (`prompt`, `resource`) names.
#[derive(Debug)]
pub struct Hide {
    /// What is hidden.
    pub kind: NameKind,
    /// Which ones.
    pub names: Glob,
}

/// What an action would do to a message.
#[derive(Debug)]
pub enum Effect {
    /// Nothing (the action does not apply to this message).
    None,
    /// The message's JSON becomes this.
    Change(Value),
    /// The message's JSON becomes `body`: a list answer without the `hidden` entries.
    Filter {
        /// The list answer, filtered.
        body: Value,
        /// The names of the entries taken out.
        hidden: Vec<String>,
    },
    /// The sender gets this answer; the message goes no further.
    Answer(Message),
    /// The receiver gets this instead (a response replaced).
    Replace(Message),
    /// The message goes no further, unanswered (a notification).
    Drop,
    /// Hold the message this long.
    Wait(Duration),
    /// Tag the session.
    Tag(Vec<String>),
    /// Log.
    Log(Log),
}

impl Action {
    /// Whether the action can do anything to a message of `kind` with `method` (the rule index
    /// leaves out rules that cannot).
    pub fn may_apply(&self, kind: Kind, method: Option<&Method>) -> bool {
        let hide = match self {
            Self::Hide(hide) => hide,
            Self::RateLimit(_) | Self::RequireScope(_) => {
                return matches!(kind, Kind::Request | Kind::Notification);
            }
            _ => return true,
        };
        let Some(method) = method else {
            return false;
        };
        match kind {
            Kind::Request => hide.kind.is_use(method),
            Kind::Response => hide.lists().iter().any(|(m, _, _)| *m == method.as_str()),
            Kind::Notification | Kind::Error => false,
        }
    }

    /// What this action, of rule `rule`, would do to `s`.
    pub fn effect(&self, rule: &str, s: &mut Subject<'_>) -> Effect {
        match self {
            Self::Block(block) => block.effect(rule, s),
            Self::Mock(mock) => mock.effect(s),
            Self::Modify(modify) => modify.effect(s),
            Self::Delay(delay) => Effect::Wait(delay.pick()),
            Self::Tag(tags) => Effect::Tag(tags.clone()),
            Self::Log(log) => Effect::Log(log.clone()),
            Self::Hide(hide) => hide.effect(s),
            Self::RateLimit(limit) => limit.effect(s),
            Self::RequireScope(require) => require.effect(rule, s),
        }
    }
}

/// `require_scope:`: the scopes a caller's token must have for the client's requests and
/// notifications the rule matches (per-tool scopes). A request of a caller without them (or of
/// one who did not authenticate) is answered `insufficient_scope` naming the scopes to ask
/// for, which the gateway turns into a 403 challenge so that the client can step up; such a
/// notification is dropped.
#[derive(Debug)]
pub struct RequireScope {
    scopes: Vec<String>,
}

/// Most scopes one `require_scope:` names.
const MAX_REQUIRED_SCOPES: usize = 32;

impl RequireScope {
    /// Rule `rule`'s requirement of `scopes`, each a valid scope token (RFC 6749 §3.3, and no
    /// quote or backslash, to go in a challenge as it is).
    pub fn new(rule: &str, scopes: Vec<String>) -> Result<Self, String> {
        if scopes.is_empty() {
            return Err(format!(
                "rule {rule:?}: require_scope needs one or more scopes"
            ));
        }
        crate::session::principal::check_scopes(&scopes, MAX_REQUIRED_SCOPES)
            .map_err(|why| format!("rule {rule:?}: require_scope {why}"))?;
        Ok(Self { scopes })
    }

    fn effect(&self, rule: &str, s: &mut Subject<'_>) -> Effect {
        if s.direction != Direction::ClientToServer {
            return Effect::None;
        }
        let held: &[String] = s.caller().map_or(&[], |caller| &caller.scopes);
        if self.scopes.iter().all(|scope| held.contains(scope)) {
            return Effect::None;
        }
        let held = held.to_vec();
        let missing: Vec<&String> = self
            .scopes
            .iter()
            .filter(|scope| !held.contains(scope))
            .collect();
        // What to ask for: what the token has, and what it lacks (a new token replaces it).
        let mut wanted: Vec<&str> = held.iter().map(String::as_str).collect();
        wanted.extend(missing.iter().map(|m| m.as_str()));
        let what = s
            .name(NameKind::Tool)
            .map(|tool| format!("the tool {tool:?}"))
            .or_else(|| s.method.map(|m| format!("{:?}", m.as_str())))
            .unwrap_or_else(|| "this message".into());
        let list = missing
            .iter()
            .map(|m| format!("{m:?}"))
            .collect::<Vec<_>>()
            .join(", ");
        let error = ProxyError::new(
            ErrorCode::InsufficientScope,
            format!("Forbidden: {what} needs the scope {list}, which the caller's token lacks"),
        )
        .with("rule", rule)
        .with("scope", wanted.join(" "))
        .with(
            "missing",
            missing.iter().map(|m| m.as_str()).collect::<Vec<_>>(),
        );
        match s.msg.kind() {
            Kind::Request => Effect::Answer(Message::error_response(s.msg.id(), &error)),
            Kind::Notification => Effect::Drop,
            Kind::Response | Kind::Error => Effect::None,
        }
    }
}

/// `rate_limit:`: a limit over the requests and notifications the rule matches (in either
/// direction), named after the rule. A request over it is answered with the `rate_limited`
/// error, a notification over it is dropped; responses never count. Its state lives as long as
/// the rule: a reload that keeps the rule's name and limit keeps the state.
#[derive(Debug)]
pub struct RuleLimit {
    limit: Arc<Limit>,
}

/// `rate_limit:` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleLimitSpec {
    /// What it counts separately. [default: global]
    #[serde(default = "global")]
    per: Per,
    /// The rate, e.g. `10/s`.
    rate: Rate,
    /// How many at once. [default: the rate's count]
    burst: Option<u32>,
    /// Most keys remembered.
    keys: Option<usize>,
}

fn global() -> Per {
    Per::Global
}

impl RuleLimit {
    /// Rule `rule`'s limit.
    pub fn new(rule: &str, written: &RuleLimitSpec) -> Result<Self, String> {
        let mut spec = LimitSpec::new(written.per, written.rate);
        rule.clone_into(&mut spec.name);
        if let Some(burst) = written.burst {
            spec.burst = std::num::NonZeroU32::new(burst)
                .ok_or_else(|| format!("rule {rule:?}: rate_limit.burst must be at least 1"))?;
        }
        if let Some(keys) = written.keys {
            if !(1..=100_000_000).contains(&keys) {
                return Err(format!(
                    "rule {rule:?}: rate_limit.keys must be from 1 to 100000000"
                ));
            }
            spec.max_keys = keys;
        }
        Ok(Self {
            limit: Arc::new(Limit::standalone(spec)),
        })
    }

    /// Runs on `clock` from now on (`rules test` replays a tape's times), starting over.
    pub fn on(&mut self, clock: &LimitClock) {
        self.limit = Arc::new(Limit::with_clock(
            self.limit.spec().clone(),
            None,
            clock.clone(),
        ));
    }

    /// Takes over `old`'s state if it is the same limit (a reload that left it alone).
    pub fn adopt(&mut self, old: &Self) {
        let (a, b) = (self.limit.spec(), old.limit.spec());
        if (a.per, a.rate, a.burst, a.max_keys) == (b.per, b.rate, b.burst, b.max_keys) {
            self.limit = old.limit.clone();
        }
    }

    fn effect(&self, s: &Subject<'_>) -> Effect {
        let mut sender = Sender {
            session: s.session,
            client: s.client,
            tool: None,
        };
        let Err(refusal) = self.limit.check(s.msg, &mut sender) else {
            return Effect::None;
        };
        match (s.msg.kind(), s.msg.id()) {
            (Kind::Request, Some(id)) => {
                Effect::Answer(Message::error_response(Some(id), &refusal.error()))
            }
            _ => Effect::Drop,
        }
    }
}

impl Block {
    fn effect(&self, rule: &str, s: &Subject<'_>) -> Effect {
        let message = self
            .message
            .clone()
            .unwrap_or_else(|| format!("blocked by rule {rule:?}"));
        let mut error = ProxyError::new(ErrorCode::BlockedByRule, message).with("rule", rule);
        if let Some(code) = self.code {
            error = error.with_code(code);
        }
        for (key, value) in self.data.iter().flatten() {
            error = error.with(key, value.clone());
        }
        match s.msg.kind() {
            Kind::Notification => Effect::Drop,
            Kind::Request => Effect::Answer(Message::error_response(s.msg.id(), &error)),
            Kind::Response | Kind::Error => {
                Effect::Replace(Message::error_response(s.msg.id(), &error))
            }
        }
    }
}

/// What happens to a message a rule could not be decided for (see [`Subject::take_missed`]):
/// it is refused. One it could not read is refused as a malformed message would be: a
/// request's sender gets -32600; a response becomes an error for its requester (-32082 when
/// the server sent it). One whose caller it could not tell apart is blocked (-32091). A
/// notification is dropped.
pub fn unreadable(rule: &str, missed: &Missed, s: &Subject<'_>) -> Effect {
    let why = missed.why();
    let (message, code) = match missed {
        Missed::Body(_) => (
            format!("rule {rule:?} cannot read the message: {why}"),
            match (s.msg.kind(), s.direction) {
                (Kind::Response | Kind::Error, Direction::ServerToClient) => {
                    ErrorCode::InvalidUpstreamResponse
                }
                _ => ErrorCode::InvalidRequest,
            },
        ),
        Missed::Caller(_) => (
            format!("rule {rule:?} cannot be decided for this caller: {why}"),
            ErrorCode::BlockedByRule,
        ),
    };
    let error = ProxyError::new(code, message)
        .with("rule", rule)
        .with("detail", why);
    match s.msg.kind() {
        Kind::Notification => Effect::Drop,
        Kind::Request => Effect::Answer(Message::error_response(s.msg.id(), &error)),
        Kind::Response | Kind::Error => {
            Effect::Replace(Message::error_response(s.msg.id(), &error))
        }
    }
}

impl Mock {
    fn effect(&self, s: &Subject<'_>) -> Effect {
        let Some(id) = s.msg.id() else {
            return Effect::None;
        };
        let answer = answer(id, &self.answer);
        match s.msg.kind() {
            Kind::Request => Effect::Answer(answer),
            Kind::Response | Kind::Error => Effect::Replace(answer),
            Kind::Notification => Effect::None,
        }
    }
}

/// A response to `id` built from a mock.
fn answer(id: &RequestId, mock: &MockAnswer) -> Message {
    let body = match mock {
        MockAnswer::Result(result) => json!({"jsonrpc": "2.0", "id": id, "result": result}),
        MockAnswer::Error(error) => json!({"jsonrpc": "2.0", "id": id, "error": error}),
    };
    // A JSON-RPC response built here always parses; the fallback cannot be reached.
    Message::parse(body.to_string().into()).unwrap_or_else(|_| {
        Message::error_response(
            Some(id),
            &ProxyError::new(ErrorCode::InternalError, "a mock could not be built"),
        )
    })
}

impl Modify {
    fn effect(&self, s: &mut Subject<'_>) -> Effect {
        let member = s.target();
        let Some(mut body) = s.body().cloned() else {
            return Effect::None;
        };
        let Some(target) = body.get_mut(member) else {
            return Effect::None;
        };
        for (path, value) in &self.set.0 {
            for pointer in crate::pattern::pointers(&path.path, target) {
                if let Some(slot) = target.pointer_mut(&pointer) {
                    *slot = value.clone();
                }
            }
        }
        for path in &self.remove {
            remove_all(target, &crate::pattern::pointers(&path.path, target));
        }
        if let Some(patch) = &self.merge {
            json_patch::merge(target, patch);
        }
        if s.body() == Some(&body) {
            // Nothing to change here (e.g. no value at the paths): the rule does not act.
            return Effect::None;
        }
        Effect::Change(body)
    }
}

/// Removes the values at `pointers` (the later array elements first, so indexes hold).
fn remove_all(target: &mut Value, pointers: &[String]) {
    for pointer in pointers.iter().rev() {
        let Some((parent, key)) = pointer.rsplit_once('/') else {
            continue;
        };
        let key = key.replace("~1", "/").replace("~0", "~");
        match target.pointer_mut(parent) {
            Some(Value::Object(map)) => {
                map.remove(&key);
            }
            Some(Value::Array(items)) => {
                if let Ok(i) = key.parse::<usize>() {
                    if i < items.len() {
                        items.remove(i);
                    }
                }
            }
            _ => {}
        }
    }
}

impl Hide {
    fn effect(&self, s: &mut Subject<'_>) -> Effect {
        match s.msg.kind() {
            Kind::Request => {
                let Some(name) = s.name(self.kind).map(str::to_owned) else {
                    return Effect::None;
                };
                if !self.names.is_match(&name) {
                    return Effect::None;
                }
                Effect::Answer(Message::error_response(s.msg.id(), &self.unknown(&name)))
            }
            Kind::Response => self.filter(s),
            _ => Effect::None,
        }
    }

    /// The error a use of a hidden item gets: what a server says of one it does not have.
    fn unknown(&self, name: &str) -> ProxyError {
        match self.kind {
            NameKind::Tool => {
                ProxyError::new(ErrorCode::InvalidParams, format!("Unknown tool: {name}"))
            }
            NameKind::Prompt => {
                ProxyError::new(ErrorCode::InvalidParams, format!("Unknown prompt: {name}"))
            }
            NameKind::Resource => {
                ProxyError::new(ErrorCode::ResourceNotFound, "Resource not found").with("uri", name)
            }
        }
    }

    /// The list methods it filters: method, list member, and the entries' name member.
    fn lists(&self) -> &'static [(&'static str, &'static str, &'static str)] {
        match self.kind {
            NameKind::Tool => &[("tools/list", "tools", "name")],
            NameKind::Prompt => &[("prompts/list", "prompts", "name")],
            NameKind::Resource => &[
                ("resources/list", "resources", "uri"),
                (
                    "resources/templates/list",
                    "resourceTemplates",
                    "uriTemplate",
                ),
            ],
        }
    }

    /// A list answer without the hidden entries.
    fn filter(&self, s: &mut Subject<'_>) -> Effect {
        let Some(&(_, list, key)) = self
            .lists()
            .iter()
            .find(|(method, _, _)| s.method.is_some_and(|m| m.as_str() == *method))
        else {
            return Effect::None;
        };
        let Some(mut body) = s.body().cloned() else {
            return Effect::None;
        };
        let Some(Value::Array(entries)) = body.pointer_mut(&format!("/result/{list}")) else {
            return Effect::None;
        };
        let mut hidden = Vec::new();
        entries.retain(|entry| match entry.get(key).and_then(Value::as_str) {
            Some(name) if self.names.is_match(name) => {
                hidden.push(name.to_owned());
                false
            }
            _ => true,
        });
        if hidden.is_empty() {
            return Effect::None;
        }
        Effect::Filter { body, hidden }
    }
}
