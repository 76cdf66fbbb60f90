//! When a rule applies: [`Match`], compiled once when the file is read, tested against a
//! [`Subject`] (one message in its session) that parses the message only if a condition needs
//! its body.

use std::time::Duration;

use tokio::time::Instant;

use serde::Deserialize;
use serde_json::Value;

use crate::pattern::Pattern;
pub use crate::pattern::{Glob, Path};
use crate::protocol::{Direction, Kind, Message, Method};
use crate::session::{Principal, Session, TransportKind};
use std::sync::Arc;

/// A rule's conditions; every one given must hold. An empty match holds for every message.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Match {
    /// Which way the message travels.
    direction: Option<DirectionSpec>,
    /// What the message is.
    kind: Option<KindSpec>,
    /// The method (of a response: of the request it answers).
    method: Option<Glob>,
    /// A `tools/call` of a tool so named.
    tool: Option<Glob>,
    /// A `prompts/get` of a prompt so named.
    prompt: Option<Glob>,
    /// A `resources/read`, `subscribe` or `unsubscribe` of a resource with this URI.
    resource: Option<Glob>,
    /// Conditions on `params`.
    #[serde(default)]
    params: Vec<Predicate>,
    /// Conditions on `result`.
    #[serde(default)]
    result: Vec<Predicate>,
    /// Conditions on the session.
    session: Option<SessionMatch>,
    /// The caller's subject (a token's `sub`, an API key's name) matches.
    subject: Option<Glob>,
    /// The caller's token has every one of these scopes.
    scope: Option<OneOrMany>,
    /// The caller's token claims (`--auth-claim`), by name: each has a value this matches (a
    /// string; a number or boolean as JSON writes it; a string of an array).
    #[serde(default)]
    claim: std::collections::BTreeMap<String, Glob>,
    /// Every one of these holds.
    #[serde(default)]
    all: Vec<Match>,
    /// At least one of these holds.
    #[serde(default)]
    any: Vec<Match>,
    /// This does not hold.
    not: Option<Box<Match>>,
}

/// One string or a list of them, as written.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    /// One.
    One(String),
    /// A list.
    Many(Vec<String>),
}

impl OneOrMany {
    /// The strings.
    pub fn as_slice(&self) -> &[String] {
        match self {
            Self::One(one) => std::slice::from_ref(one),
            Self::Many(many) => many,
        }
    }

    /// The strings, owned.
    pub fn into_vec(self) -> Vec<String> {
        match self {
            Self::One(one) => vec![one],
            Self::Many(many) => many,
        }
    }
}

/// `direction:` as written.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
enum DirectionSpec {
    #[serde(alias = "c2s")]
    ClientToServer,
    #[serde(alias = "s2c")]
    ServerToClient,
}

impl DirectionSpec {
    fn direction(self) -> Direction {
        match self {
            Self::ClientToServer => Direction::ClientToServer,
            Self::ServerToClient => Direction::ServerToClient,
        }
    }
}

/// `kind:` as written.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
enum KindSpec {
    Request,
    Notification,
    Response,
    Error,
}

impl KindSpec {
    fn kind(self) -> Kind {
        match self {
            Self::Request => Kind::Request,
            Self::Notification => Kind::Notification,
            Self::Response => Kind::Response,
            Self::Error => Kind::Error,
        }
    }
}

/// What a name condition (and `hide`) is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameKind {
    /// Tools: `tools/call` by `params.name`, `tools/list` entries by `name`.
    Tool,
    /// Prompts: `prompts/get` by `params.name`, `prompts/list` entries by `name`.
    Prompt,
    /// Resources: `resources/read|subscribe|unsubscribe` by `params.uri`, `resources/list`
    /// entries by `uri` and `resources/templates/list` entries by `uriTemplate`.
    Resource,
}

impl NameKind {
    /// Whether `method` names one item of this kind in `params`.
    pub fn is_use(self, method: &Method) -> bool {
        match self {
            Self::Tool => *method == Method::ToolsCall,
            Self::Prompt => method.as_str() == "prompts/get",
            Self::Resource => matches!(
                method.as_str(),
                "resources/read" | "resources/subscribe" | "resources/unsubscribe"
            ),
        }
    }

    /// The member of `params` that names the item.
    pub fn param(self) -> &'static str {
        match self {
            Self::Tool | Self::Prompt => "name",
            Self::Resource => "uri",
        }
    }

    /// What the kind is called in messages.
    pub fn noun(self) -> &'static str {
        match self {
            Self::Tool => "tool",
            Self::Prompt => "prompt",
            Self::Resource => "resource",
        }
    }
}

/// A condition on `params` or `result`: what a JSONPath (with `$` the member itself) selects.
/// With only `path`, it holds when the path selects something.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Predicate {
    path: Path,
    /// Some selected value equals this.
    equals: Option<Value>,
    /// Some selected value is a string this regex finds a match in.
    matches: Option<Pattern>,
    /// `false`: holds when the path selects nothing.
    exists: Option<bool>,
}

impl Predicate {
    fn holds(&self, member: Option<&Value>) -> bool {
        let Some(member) = member else {
            return self.exists == Some(false);
        };
        self.path.select(member, |nodes| {
            if self.exists == Some(false) {
                return nodes.is_empty();
            }
            !nodes.is_empty()
                && self
                    .equals
                    .as_ref()
                    .is_none_or(|want| nodes.contains(&want))
                && self.matches.as_ref().is_none_or(|re| {
                    nodes
                        .iter()
                        .any(|n| n.as_str().is_some_and(|s| re.0.is_match(s)))
                })
        })
    }
}

/// Conditions on the session a message belongs to.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SessionMatch {
    /// `clientInfo.name` from `initialize`.
    client: Option<Glob>,
    /// The negotiated protocol version.
    protocol: Option<Glob>,
    /// How the client reached the proxy: `stdio` or `http`.
    transport: Option<TransportSpec>,
    /// The session has every one of these tags.
    #[serde(default)]
    tags: Vec<String>,
    /// At least this many messages, both ways, this one included.
    min_frames: Option<u64>,
    /// At most this many.
    max_frames: Option<u64>,
    /// The session is at least this old.
    #[serde(default, with = "humantime_serde")]
    older_than: Option<Duration>,
    /// The session is younger than this.
    #[serde(default, with = "humantime_serde")]
    younger_than: Option<Duration>,
}

/// `transport:` as written.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
enum TransportSpec {
    Stdio,
    Http,
}

impl SessionMatch {
    fn holds(&self, session: &Session, at: Option<Instant>) -> bool {
        if let Some(transport) = self.transport {
            let want = match transport {
                TransportSpec::Stdio => TransportKind::Stdio,
                TransportSpec::Http => TransportKind::Http,
            };
            if session.transport() != want {
                return false;
            }
        }
        let frames = session.total_frames();
        if self.min_frames.is_some_and(|min| frames < min)
            || self.max_frames.is_some_and(|max| frames > max)
        {
            return false;
        }
        if self.older_than.is_some() || self.younger_than.is_some() {
            let age = session.age(at.unwrap_or_else(Instant::now));
            if self.older_than.is_some_and(|d| age < d)
                || self.younger_than.is_some_and(|d| age >= d)
            {
                return false;
            }
        }
        if self.client.is_none() && self.protocol.is_none() && self.tags.is_empty() {
            return true;
        }
        session.read_metadata(|m| {
            let client = m.client_info.as_ref().and_then(|c| c.str_member("name"));
            let client = client.as_deref();
            self.client
                .as_ref()
                .is_none_or(|glob| client.is_some_and(|c| glob.is_match(c)))
                && self.protocol.as_ref().is_none_or(|glob| {
                    m.protocol_version
                        .as_deref()
                        .is_some_and(|v| glob.is_match(v))
                })
                && self.tags.iter().all(|t| m.tags.contains(t))
        })
    }
}

/// One message, in its session, as rules see it. The body is parsed the first time a condition
/// or an action needs it, and rules that change the message change it here.
#[derive(Debug)]
pub struct Subject<'a> {
    /// The message as it arrived.
    pub msg: &'a Message,
    /// Which way it travels.
    pub direction: Direction,
    /// Its session.
    pub session: &'a Session,
    /// Its method; for a response, the method of the request it answers.
    pub method: Option<&'a Method>,
    /// When it passes: `None` for now (`rules test` gives the tape's time).
    pub at: Option<Instant>,
    /// Who sent it (what a per-client `rate_limit:` keys on); the local client unless set.
    pub client: crate::stage::Client<'a>,
    /// The parsed message, once needed.
    body: Body,
    /// The name of the item used (`params.name` or `params.uri`), read on its own.
    #[allow(clippy::option_option)] // Not read yet; read, and there is none; read.
    name: Option<Option<String>>,
    /// Whether a rule changed the body.
    pub changed: bool,
    /// What a condition or action asked for since [`Subject::take_missed`] and could not
    /// have: the body, unreadable (a number beyond a double's range, an escaped lone
    /// surrogate: JSON the envelope forwards as it came, but no tree holds), or what is known
    /// of the caller. A rule that needed it cannot be decided.
    missed: Option<Missed>,
    /// The session's caller, once looked up (for messages towards the client).
    #[allow(clippy::option_option)] // Not looked up yet; looked up, and there is none; found.
    session_caller: Option<Option<Arc<Principal>>>,
}

/// What a rule needed and could not have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Missed {
    /// The message's JSON, and why it cannot be read.
    Body(String),
    /// Something about the caller, and why it is not known.
    Caller(String),
}

impl Missed {
    /// Why, in words.
    pub fn why(&self) -> &str {
        match self {
            Self::Body(why) | Self::Caller(why) => why,
        }
    }
}

impl<'a> Subject<'a> {
    /// `msg` travelling `direction` in `session`; `answers` is the method of the request a
    /// response answers.
    pub fn new(
        msg: &'a Message,
        direction: Direction,
        session: &'a Session,
        answers: Option<&'a Method>,
    ) -> Self {
        Self {
            msg,
            direction,
            session,
            method: msg.method().or(answers),
            at: None,
            client: crate::stage::Client::Local,
            body: Body::Unparsed,
            name: None,
            changed: false,
            missed: None,
            session_caller: None,
        }
    }

    /// The message as JSON.
    pub fn body(&mut self) -> Option<&Value> {
        if let Body::Unparsed = self.body {
            self.body = match serde_json::from_slice::<Value>(self.msg.raw()) {
                Ok(value) if value.is_object() => Body::Parsed(value),
                Ok(_) => Body::Unusable("not a JSON object".to_owned()),
                Err(e) => Body::Unusable(e.to_string()),
            };
        }
        match &self.body {
            Body::Parsed(value) => Some(value),
            Body::Unusable(why) => {
                self.missed = Some(Missed::Body(why.clone()));
                None
            }
            Body::Unparsed => None,
        }
    }

    /// Top-level member `member` of the message. One the envelope found absent (`result` of a
    /// request, `params` of a message without them) is absent without reading the body.
    pub fn member(&mut self, member: &str) -> Option<&Value> {
        let present = match member {
            "params" => self.msg.params_bytes().is_some(),
            "result" => self.msg.kind() == Kind::Response,
            _ => true,
        };
        if !present && !matches!(self.body, Body::Parsed(_)) {
            return None;
        }
        self.body()?.get(member)
    }

    /// What a rule asked for since the last call and could not have; starts over.
    pub fn take_missed(&mut self) -> Option<Missed> {
        self.missed.take()
    }

    /// Who the rules about the caller (`subject`, `scope`, `claim`, `require_scope`) are
    /// about: the authenticated sender of a client's message; for a message towards the
    /// client, the session's caller. `None` without authentication. When the session serves
    /// several callers (a shared stateless child), a message towards the client is nobody's
    /// in particular: asking is a miss, and the rule cannot be decided.
    pub fn caller(&mut self) -> Option<&Principal> {
        if let Some(principal) = self.client.principal() {
            return Some(principal);
        }
        if self.direction == Direction::ClientToServer {
            return None;
        }
        if self.session.callers_mixed() {
            self.missed = Some(Missed::Caller(
                "the session's server serves several callers, so a message from it is no one caller's"
                    .into(),
            ));
            return None;
        }
        self.session_caller
            .get_or_insert_with(|| self.session.caller())
            .as_deref()
    }

    /// Notes that a rule needed `claim` of the caller, which the gateway does not keep.
    pub fn missed_claim(&mut self, claim: &str) {
        self.missed = Some(Missed::Caller(format!(
            "the gateway does not keep the token claim {claim:?} (add --auth-claim {claim})"
        )));
    }

    /// The message's JSON as rules left it, if a rule changed it.
    pub fn into_changed(self) -> Option<Value> {
        match self.body {
            Body::Parsed(value) if self.changed => Some(value),
            _ => None,
        }
    }

    /// Replaces the message's JSON (a rule changed it).
    pub fn set_body(&mut self, body: Value) {
        self.body = Body::Parsed(body);
        self.changed = true;
    }

    /// The member rules act on: `params` of requests and notifications, `result` of
    /// responses, `error` of errors.
    pub fn target(&self) -> &'static str {
        match self.msg.kind() {
            Kind::Request | Kind::Notification => "params",
            Kind::Response => "result",
            Kind::Error => "error",
        }
    }

    /// Whether the message uses an item of `kind` (a `tools/call` request for tools, ...).
    pub fn uses(&self, kind: NameKind) -> bool {
        self.msg.kind() == Kind::Request && self.msg.method().is_some_and(|m| kind.is_use(m))
    }

    /// The name the message uses an item of `kind` by (a tool called, a resource read).
    pub fn name(&mut self, kind: NameKind) -> Option<&str> {
        if !self.uses(kind) {
            return None;
        }
        if matches!(self.body, Body::Unparsed) {
            // Read alone, the name costs far less than the whole message's tree.
            if self.name.is_none() {
                self.name = self.msg.param_str(kind.param()).ok();
            }
            if self.name.is_some() {
                return self.name.as_ref().and_then(Option::as_deref);
            }
        }
        self.body()?.get("params")?.get(kind.param())?.as_str()
    }
}

/// A [`Subject`]'s message as JSON.
#[derive(Debug)]
enum Body {
    /// Not parsed yet.
    Unparsed,
    /// Parsed (or changed by a rule).
    Parsed(Value),
    /// Not readable as a tree, and why: valid JSON that `serde_json::Value` cannot hold (a
    /// number beyond a double's range, an escaped lone surrogate). A rule that needs it is
    /// undecided, and the stage refuses the message (fails closed).
    Unusable(String),
}

impl Match {
    /// Whether the conditions on the envelope alone hold: direction, kind, method, and the
    /// method and kind a name condition implies. Necessary for [`Match::matches`]; the rule
    /// index sorts rules by it.
    pub fn may_match(&self, direction: Direction, kind: Kind, method: Option<&Method>) -> bool {
        if self.direction.is_some_and(|d| d.direction() != direction)
            || self.kind.is_some_and(|k| k.kind() != kind)
        {
            return false;
        }
        if let Some(glob) = &self.method {
            if !method.is_some_and(|m| glob.is_match(m.as_str())) {
                return false;
            }
        }
        for (glob, name) in [
            (&self.tool, NameKind::Tool),
            (&self.prompt, NameKind::Prompt),
            (&self.resource, NameKind::Resource),
        ] {
            if glob.is_some() && !(kind == Kind::Request && method.is_some_and(|m| name.is_use(m)))
            {
                return false;
            }
        }
        self.all
            .iter()
            .all(|m| m.may_match(direction, kind, method))
            && (self.any.is_empty()
                || self
                    .any
                    .iter()
                    .any(|m| m.may_match(direction, kind, method)))
    }

    /// Whether every condition holds for `s`.
    pub fn matches(&self, s: &mut Subject<'_>) -> bool {
        if self.direction.is_some_and(|d| d.direction() != s.direction)
            || self.kind.is_some_and(|k| k.kind() != s.msg.kind())
        {
            return false;
        }
        if let Some(glob) = &self.method {
            if !s.method.is_some_and(|m| glob.is_match(m.as_str())) {
                return false;
            }
        }
        if let Some(session) = &self.session {
            if !session.holds(s.session, s.at) {
                return false;
            }
        }
        if !self.caller_holds(s) {
            return false;
        }
        for (glob, kind) in [
            (&self.tool, NameKind::Tool),
            (&self.prompt, NameKind::Prompt),
            (&self.resource, NameKind::Resource),
        ] {
            if let Some(glob) = glob {
                if !s.name(kind).is_some_and(|name| glob.is_match(name)) {
                    return false;
                }
            }
        }
        for (predicates, member) in [(&self.params, "params"), (&self.result, "result")] {
            if !predicates.is_empty() {
                let value = s.member(member);
                if !predicates.iter().all(|p| p.holds(value)) {
                    return false;
                }
            }
        }
        self.all.iter().all(|m| m.matches(s))
            && (self.any.is_empty() || self.any.iter().any(|m| m.matches(s)))
            && self.not.as_ref().is_none_or(|m| !m.matches(s))
    }

    /// Whether the conditions on the caller hold: none without an authenticated caller; a
    /// claim the gateway does not keep is a miss (the rule cannot be decided).
    fn caller_holds(&self, s: &mut Subject<'_>) -> bool {
        if self.subject.is_none() && self.scope.is_none() && self.claim.is_empty() {
            return true;
        }
        let Some(caller) = s.caller() else {
            return false;
        };
        if self
            .subject
            .as_ref()
            .is_some_and(|glob| !glob.is_match(&caller.subject))
            || self
                .scope
                .as_ref()
                .is_some_and(|scopes| !scopes.as_slice().iter().all(|s| caller.has_scope(s)))
        {
            return false;
        }
        let mut not_kept = None;
        for (name, glob) in &self.claim {
            match caller.claim_texts(name) {
                Some(texts) if texts.iter().any(|t| glob.is_match(t)) => {}
                Some(_) => return false,
                None => {
                    not_kept = Some(name);
                    break;
                }
            }
        }
        if let Some(name) = not_kept {
            s.missed_claim(name);
            return false;
        }
        true
    }

    /// Its top-level name condition (the first, if it has several: each must hold).
    pub fn name_condition(&self) -> Option<(NameKind, &Glob)> {
        [
            (&self.tool, NameKind::Tool),
            (&self.prompt, NameKind::Prompt),
            (&self.resource, NameKind::Resource),
        ]
        .into_iter()
        .find_map(|(glob, kind)| glob.as_ref().map(|g| (kind, g)))
    }

    /// Takes the one name condition out (for `hide`, whose names say what is hidden).
    pub fn take_name(&mut self) -> Option<(NameKind, Glob)> {
        if let Some(glob) = self.tool.take() {
            return Some((NameKind::Tool, glob));
        }
        if let Some(glob) = self.prompt.take() {
            return Some((NameKind::Prompt, glob));
        }
        self.resource.take().map(|glob| (NameKind::Resource, glob))
    }

    /// Whether it has a name condition at the top level.
    pub fn mentions_names(&self) -> bool {
        self.tool.is_some() || self.prompt.is_some() || self.resource.is_some()
    }
}
