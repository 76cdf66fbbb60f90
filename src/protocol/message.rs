//! Envelope parsing: one frame in, one message (or a batch of them) out.

use std::borrow::Cow;

use bytes::Bytes;
use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;

use super::error::{ErrorCode, ProxyError};
use super::id::{MAX_ID_BYTES, RequestId};
use super::method::Method;
use super::needle::Needle;

/// Most messages in one JSON-RPC batch. A longer batch is refused while it is parsed, before
/// its members are built: a body of `[{},{},…]` must not cost a message per member first.
pub const MAX_BATCH_MESSAGES: usize = 1024;

/// Deepest nesting of arrays and objects in a message, the message object itself counted.
/// Deeper messages are refused at the envelope (-32600): every stage that reads a message's
/// JSON (rules, redaction) can then build its tree (serde_json stops at 128 levels), so none
/// has to let through what it cannot read.
pub const MAX_NESTING: usize = 100;

/// The `_meta` member that names a 2026-07-28 notification's subscription.
pub const SUBSCRIPTION_ID: &str = "io.modelcontextprotocol/subscriptionId";

/// The searches that decide whether a frame needs reading further.
static SUBSCRIPTION_ID_NEEDLE: Needle = Needle::new(SUBSCRIPTION_ID.as_bytes());
static PROGRESS_TOKEN: Needle = Needle::new(b"progressToken");
static IS_ERROR: Needle = Needle::new(b"\"isError\"");

/// What a JSON-RPC message is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Has a `method` and an `id`: expects an answer.
    Request,
    /// Has a `method` and no `id`.
    Notification,
    /// Has an `id` and a `result`.
    Response,
    /// Has an `error` (and an `id`, which may be `null`).
    Error,
}

impl Kind {
    /// `request`, `notification`, `response` or `error`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Request => "request",
            Self::Notification => "notification",
            Self::Response => "response",
            Self::Error => "error",
        }
    }
}

/// One JSON-RPC message: its raw bytes and the envelope fields the proxy reads.
#[derive(Debug, Clone)]
pub struct Message {
    raw: Bytes,
    kind: Kind,
    id: Option<RequestId>,
    method: Option<Method>,
    /// Where `params` is in `raw` (start, end), if the message has it and was parsed (not for
    /// the cancellations the proxy writes itself, which no reader of params needs).
    params: Option<(u32, u32)>,
}

/// A frame after parsing: a single message or a JSON-RPC batch.
#[derive(Debug)]
pub enum Frame {
    /// One message.
    Single(Message),
    /// A batch (2025-03-26); members that failed to parse are kept in place as errors.
    Batch(Vec<Result<Message, ParseError>>),
}

/// Why a frame is not a usable message. Each maps to the error the sender gets.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Not JSON at all.
    #[error("parse error: {0}")]
    Json(String),
    /// A string in it is not UTF-8 (JSON text must be): parse error, answered to `id`.
    #[error("parse error: {detail}")]
    Utf8 {
        /// The id of the offending request, when it had a readable one.
        id: Option<RequestId>,
        /// Where the invalid byte is.
        detail: String,
    },
    /// JSON, but not a valid JSON-RPC message. `id` is set when one could be read, so the
    /// sender's request can be answered instead of left hanging.
    #[error("invalid request: {reason}")]
    Invalid {
        /// The id of the offending request, when it had a readable one.
        id: Option<RequestId>,
        /// What was wrong.
        reason: Cow<'static, str>,
    },
    /// A batch longer than [`MAX_BATCH_MESSAGES`] (found before its members were built).
    #[error("invalid request: a batch of more than {limit} messages")]
    BatchTooLong {
        /// [`MAX_BATCH_MESSAGES`].
        limit: usize,
    },
}

impl ParseError {
    fn invalid(id: Option<RequestId>, reason: impl Into<Cow<'static, str>>) -> Self {
        Self::Invalid {
            id,
            reason: reason.into(),
        }
    }

    /// The id to answer, if one is known.
    pub fn id(&self) -> Option<&RequestId> {
        match self {
            Self::Json(_) | Self::BatchTooLong { .. } => None,
            Self::Invalid { id, .. } | Self::Utf8 { id, .. } => id.as_ref(),
        }
    }

    /// The error to send back to whoever sent the bad frame.
    pub fn to_proxy_error(&self) -> ProxyError {
        match self {
            Self::Json(detail) => ProxyError::new(
                ErrorCode::ParseError,
                "Parse error: the message is not valid JSON",
            )
            .with("detail", detail.as_str()),
            Self::Utf8 { detail, .. } => ProxyError::new(
                ErrorCode::ParseError,
                "Parse error: the message is not valid UTF-8",
            )
            .with("detail", detail.as_str()),
            Self::Invalid { reason, .. } => ProxyError::new(
                ErrorCode::InvalidRequest,
                format!("Invalid Request: {reason}"),
            ),
            Self::BatchTooLong { limit } => ProxyError::new(
                ErrorCode::InvalidRequest,
                format!("Invalid Request: a batch of more than {limit} messages exceeds the limit"),
            )
            .with("limit", *limit),
        }
    }

    /// The complete error response for the sender.
    pub fn to_response(&self) -> Message {
        Message::error_response(self.id(), &self.to_proxy_error())
    }
}

/// Why a request's progress token cannot be kept ([`Message::read_progress_token`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Its `params` cannot be read for it (a member twice, say).
    #[error("the request's params cannot be read for its progress token")]
    Unreadable,
    /// Its normal JSON text is longer than [`MAX_ID_BYTES`].
    #[error("its progressToken is longer than {MAX_ID_BYTES} bytes")]
    TooLong,
}

/// The members the proxy reads; everything else is skipped without being parsed into values.
#[derive(Default)]
struct Envelope<'a> {
    jsonrpc: Option<&'a RawValue>,
    id: Option<&'a RawValue>,
    method: Option<&'a RawValue>,
    params: Option<&'a RawValue>,
    result: Option<&'a RawValue>,
    error: Option<&'a RawValue>,
    /// Whether there were other members (skipped, so their strings were not checked as UTF-8).
    others: bool,
}

/// An envelope member's name.
#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "lowercase")]
enum Member {
    Jsonrpc,
    Id,
    Method,
    Params,
    Result,
    Error,
    #[serde(other)]
    Other,
}

impl<'de> Deserialize<'de> for Envelope<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Envelope<'de>;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON-RPC message object")
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Envelope<'de>, A::Error> {
                let mut env = Envelope::default();
                while let Some(member) = map.next_key::<Member>()? {
                    let (slot, name) = match member {
                        Member::Jsonrpc => (&mut env.jsonrpc, "jsonrpc"),
                        Member::Id => (&mut env.id, "id"),
                        Member::Method => (&mut env.method, "method"),
                        Member::Params => (&mut env.params, "params"),
                        Member::Result => (&mut env.result, "result"),
                        Member::Error => (&mut env.error, "error"),
                        Member::Other => {
                            env.others = true;
                            map.next_value::<serde::de::IgnoredAny>()?;
                            continue;
                        }
                    };
                    if slot.is_some() {
                        return Err(serde::de::Error::duplicate_field(name));
                    }
                    *slot = Some(map.next_value()?);
                }
                Ok(env)
            }
        }
        d.deserialize_map(Visitor)
    }
}

impl Message {
    /// Parses one frame (a line from stdio, an HTTP body). Leading/trailing whitespace is allowed.
    pub fn parse_frame(raw: Bytes) -> Result<Frame, ParseError> {
        let first = raw.iter().position(|b| !b.is_ascii_whitespace());
        if first.is_some_and(|i| raw[i] == b'[') {
            let members = batch_members(&raw)?;
            if members.is_empty() {
                return Err(ParseError::invalid(None, "empty batch"));
            }
            let parsed = members
                .iter()
                .map(|member| {
                    let text = member.get();
                    if text.starts_with('[') {
                        Err(ParseError::invalid(
                            None,
                            "a batch must not contain a batch",
                        ))
                    } else {
                        Self::parse(raw.slice_ref(text.as_bytes()))
                    }
                })
                .collect();
            return Ok(Frame::Batch(parsed));
        }
        Self::parse(raw).map(Frame::Single)
    }

    /// Parses a single (non-batch) message.
    pub fn parse(raw: Bytes) -> Result<Self, ParseError> {
        let env: Envelope<'_> = serde_json::from_slice(&raw)
            .map_err(|e| classify(&e, "a message must be a JSON object"))?;

        let id = match env.id {
            None => None,
            Some(raw_id) => match RequestId::from_raw(raw_id) {
                Ok(id) => Some(id),
                // `"id": null` is how error responses answer unparseable requests.
                Err(_) if env.error.is_some() && env.method.is_none() && raw_id.get() == "null" => {
                    None
                }
                Err(e) => return Err(ParseError::invalid(None, format!("bad id: {e}"))),
            },
        };
        // Decided here, once, for every stage after: the message is UTF-8 (the members read
        // above were checked as they were parsed; skipped ones were not) and not nested too
        // deeply to become a tree.
        if env.others {
            if let Err(e) = std::str::from_utf8(&raw) {
                return Err(ParseError::Utf8 {
                    id,
                    detail: format!("invalid UTF-8 at byte {}", e.valid_up_to()),
                });
            }
        }
        if nesting_exceeds(&raw, MAX_NESTING) {
            return Err(ParseError::invalid(
                id,
                format!("the message is nested deeper than {MAX_NESTING} levels"),
            ));
        }
        if env.jsonrpc.map(RawValue::get) != Some("\"2.0\"") {
            return Err(ParseError::invalid(id, "\"jsonrpc\" must be \"2.0\""));
        }

        let (kind, method) = if let Some(raw_method) = env.method {
            let name: Cow<'_, str> = serde_json::from_str(raw_method.get())
                .map_err(|_| ParseError::invalid(id.clone(), "\"method\" must be a string"))?;
            if env.result.is_some() || env.error.is_some() {
                return Err(ParseError::invalid(
                    id,
                    "a request must not carry \"result\" or \"error\"",
                ));
            }
            if let Some(params) = env.params {
                if !matches!(params.get().as_bytes().first(), Some(b'{' | b'[')) {
                    return Err(ParseError::invalid(
                        id,
                        "\"params\" must be an object or an array",
                    ));
                }
            }
            let kind = if env.id.is_some() {
                Kind::Request
            } else {
                Kind::Notification
            };
            (kind, Some(Method::from_name(&name)))
        } else {
            match (env.result.is_some(), env.error.is_some()) {
                (true, false) if id.is_some() => (Kind::Response, None),
                (true, false) => {
                    return Err(ParseError::invalid(None, "a response must have an \"id\""));
                }
                (false, true) if env.error.is_some_and(|e| e.get().starts_with('{')) => {
                    (Kind::Error, None)
                }
                (false, true) => {
                    return Err(ParseError::invalid(id, "\"error\" must be an object"));
                }
                (true, true) => {
                    return Err(ParseError::invalid(
                        id,
                        "a response must not carry both \"result\" and \"error\"",
                    ));
                }
                (false, false) => {
                    return Err(ParseError::invalid(
                        id,
                        "a message needs \"method\", \"result\" or \"error\"",
                    ));
                }
            }
        };
        // Where `params` lies, for readers of one member of it (rules reading a tool's name).
        let params = env.params.and_then(|p| {
            let start = (p.get().as_ptr() as usize).checked_sub(raw.as_ptr() as usize)?;
            let end = start.checked_add(p.get().len())?;
            Some((u32::try_from(start).ok()?, u32::try_from(end).ok()?))
        });
        Ok(Self {
            raw,
            kind,
            id,
            method,
            params,
        })
    }

    /// Builds a proxy-generated error response.
    pub fn error_response(id: Option<&RequestId>, error: &ProxyError) -> Self {
        Self {
            raw: error.to_response(id),
            kind: Kind::Error,
            id: id.cloned(),
            method: None,
            params: None,
        }
    }

    /// A `notifications/cancelled` for request `id`, as the proxy sends it when it gives up on a
    /// request on its sender's behalf.
    pub fn cancelled(id: &RequestId, reason: &str) -> Self {
        let body = serde_json::json!({
            "jsonrpc": "2.0",
            "method": "notifications/cancelled",
            "params": {"requestId": id, "reason": reason},
        });
        Self {
            raw: Bytes::from(body.to_string()),
            kind: Kind::Notification,
            id: None,
            method: Some(Method::Cancelled),
            params: None,
        }
    }

    /// The exact bytes of this message: always UTF-8 JSON, nested at most [`MAX_NESTING`]
    /// deep (parsing refuses anything else).
    pub fn raw(&self) -> &Bytes {
        &self.raw
    }

    /// Its bytes, taken (no copy, no shared count where the message was the only holder).
    pub fn into_raw(self) -> Bytes {
        self.raw
    }

    /// The message kind.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// The request id (requests and responses; `None` for notifications and `id: null` errors).
    pub fn id(&self) -> Option<&RequestId> {
        self.id.as_ref()
    }

    /// The method (requests and notifications).
    pub fn method(&self) -> Option<&Method> {
        self.method.as_ref()
    }

    /// For a `notifications/cancelled`, the id of the request it cancels. Parses `params`, so
    /// call it only for that method.
    pub fn cancelled_request_id(&self) -> Option<RequestId> {
        #[derive(Deserialize)]
        struct Cancelled<'a> {
            #[serde(borrow)]
            params: Option<Params<'a>>,
        }
        #[derive(Deserialize)]
        struct Params<'a> {
            #[serde(borrow, rename = "requestId")]
            request_id: Option<&'a RawValue>,
        }
        if self.method.as_ref() != Some(&Method::Cancelled) {
            return None;
        }
        let parsed: Cancelled<'_> = serde_json::from_slice(&self.raw).ok()?;
        RequestId::from_raw(parsed.params?.request_id?).ok()
    }

    /// The JSON text of the progress token at `pointer` (`/params/_meta/progressToken` of a
    /// request, `/params/progressToken` of a progress notification), if there is one. Parses
    /// the message only when its bytes mention a progress token at all.
    pub fn progress_token(&self, pointer: &str) -> Option<String> {
        self.read_progress_token(pointer).ok().flatten()
    }

    /// [`Message::progress_token`], telling a message without one (`Ok(None)`) from one whose
    /// `params` cannot be read for it (a member twice, say) or whose token is longer than
    /// [`MAX_ID_BYTES`] (a token is kept while its request is pending, as an id is): a reader
    /// that must keep or rename the token refuses those rather than pass them on.
    pub fn read_progress_token(&self, pointer: &str) -> Result<Option<String>, TokenError> {
        #[derive(Deserialize)]
        struct Body<'a> {
            #[serde(borrow)]
            params: Option<Params<'a>>,
        }
        #[derive(Deserialize)]
        struct Params<'a> {
            #[serde(borrow, rename = "progressToken")]
            token: Option<&'a RawValue>,
            #[serde(borrow, rename = "_meta")]
            meta: Option<Meta<'a>>,
        }
        #[derive(Deserialize)]
        struct Meta<'a> {
            #[serde(borrow, rename = "progressToken")]
            token: Option<&'a RawValue>,
        }
        if !PROGRESS_TOKEN.is_in(&self.raw) {
            return Ok(None);
        }
        // Only the envelope and the token are read, borrowed: no tree of the whole message.
        let body =
            serde_json::from_slice::<Body<'_>>(&self.raw).map_err(|_| TokenError::Unreadable)?;
        let Some(params) = body.params else {
            return Ok(None);
        };
        let raw = match pointer {
            "/params/progressToken" => params.token,
            "/params/_meta/progressToken" => params.meta.and_then(|m| m.token),
            _ => None,
        };
        let Some(raw) = raw else {
            return Ok(None);
        };
        // The token's normal JSON text, so that equal tokens compare equal however they were
        // written (escapes, number forms).
        let normal = match raw.get().as_bytes().first() {
            Some(b'"') => serde_json::from_str::<String>(raw.get())
                .ok()
                .and_then(|s| serde_json::to_string(&s).ok()),
            Some(b'-' | b'0'..=b'9') => serde_json::from_str::<serde_json::Number>(raw.get())
                .ok()
                .map(|n| n.to_string()),
            _ => None,
        };
        // A token that is neither a string nor a number is not one.
        match normal {
            Some(token) if token.len() > MAX_ID_BYTES => Err(TokenError::TooLong),
            normal => Ok(normal),
        }
    }

    /// The subscription a 2026-07-28 notification belongs to: its
    /// `params._meta["io.modelcontextprotocol/subscriptionId"]`, which is the id of the
    /// `subscriptions/listen` request that opened it. Read only when the frame mentions one.
    pub fn subscription_id(&self) -> Option<RequestId> {
        #[derive(Deserialize)]
        struct Body<'a> {
            #[serde(borrow)]
            params: Option<Params<'a>>,
        }
        #[derive(Deserialize)]
        struct Params<'a> {
            #[serde(borrow, rename = "_meta")]
            meta: Option<Meta<'a>>,
        }
        #[derive(Deserialize)]
        struct Meta<'a> {
            #[serde(borrow, rename = "io.modelcontextprotocol/subscriptionId")]
            id: Option<&'a RawValue>,
        }
        SUBSCRIPTION_ID_NEEDLE.find(&self.raw)?;
        let raw = serde_json::from_slice::<Body<'_>>(&self.raw)
            .ok()?
            .params?
            .meta?
            .id?;
        RequestId::from_raw(raw).ok()
    }

    /// The string member `member` of `params` (a tool's `name`, a resource's `uri`), read
    /// without building a tree of the message. `Ok(None)`: there is none, or it is not a
    /// string. `Err(())`: the message could not be read this way (a member given twice, which
    /// JSON readers settle differently); read the whole message instead.
    #[allow(clippy::result_unit_err)]
    pub fn param_str(&self, member: &str) -> Result<Option<String>, ()> {
        match self.params_bytes().filter(|p| p.starts_with(b"{")) {
            Some(params) => params::member_str(params, member),
            None => Ok(None),
        }
    }

    /// What a request is about, for people (logs, the traffic view, reports): a `tools/call`'s
    /// tool, a `prompts/get`'s prompt, or the resource a `resources/read`, `subscribe` or
    /// `unsubscribe` names; `None` for other messages or when it cannot be read cheaply.
    pub fn named(&self) -> Option<String> {
        if self.kind != Kind::Request {
            return None;
        }
        let member = match self.method.as_ref()? {
            Method::ToolsCall | Method::PromptsGet => "name",
            Method::ResourcesRead | Method::ResourcesSubscribe | Method::ResourcesUnsubscribe => {
                "uri"
            }
            _ => return None,
        };
        self.param_str(member).ok().flatten()
    }

    /// The tool a `tools/call` request names, as its server will read it (a name given twice:
    /// the last). `Ok(None)`: not a `tools/call`, or no name (or not a string). `Err(())`: the
    /// name cannot be read (given twice, in a message that no JSON tree holds); a stage that
    /// acts on the name must not pass such a call by.
    #[allow(clippy::result_unit_err)]
    pub fn called_tool(&self) -> Result<Option<String>, ()> {
        if self.kind != Kind::Request || self.method != Some(Method::ToolsCall) {
            return Ok(None);
        }
        if let Ok(name) = self.param_str("name") {
            return Ok(name);
        }
        let params = self.params_bytes().ok_or(())?;
        let tree = serde_json::from_slice::<serde_json::Value>(params).map_err(|_| ())?;
        Ok(tree.get("name").and_then(|n| n.as_str()).map(str::to_owned))
    }

    /// This message with the `pieces` put into its bytes, one after another, at `at`, which is
    /// inside `params` (past its first byte): the envelope stays as read, `params` grows by
    /// them. Not checked: the caller keeps the JSON valid and the envelope unchanged (a member
    /// added to `params`).
    pub(super) fn spliced_into_params(&self, at: usize, pieces: &[&[u8]]) -> Option<Message> {
        let (start, end) = self.params?;
        if at <= start as usize || at >= end as usize {
            return None;
        }
        let added: usize = pieces.iter().map(|p| p.len()).sum();
        let grown = u32::try_from(added).ok()?;
        let mut raw = Vec::with_capacity(self.raw.len() + added);
        raw.extend_from_slice(&self.raw[..at]);
        for piece in pieces {
            raw.extend_from_slice(piece);
        }
        raw.extend_from_slice(&self.raw[at..]);
        Some(Message {
            raw: Bytes::from(raw),
            kind: self.kind,
            id: self.id.clone(),
            method: self.method.clone(),
            params: Some((start, end.checked_add(grown)?)),
        })
    }

    /// The bytes of `params`, if the message has it.
    pub fn params_bytes(&self) -> Option<&[u8]> {
        let (start, end) = self.params?;
        self.raw.get(start as usize..end as usize)
    }

    /// The `error.code` of an error response, read without building a tree; `None` for other
    /// messages or an error without an integer code.
    pub fn error_code(&self) -> Option<i64> {
        #[derive(Deserialize)]
        struct Body {
            error: Code,
        }
        #[derive(Deserialize)]
        struct Code {
            code: i64,
        }
        if self.kind != Kind::Error {
            return None;
        }
        serde_json::from_slice::<Body>(&self.raw)
            .ok()
            .map(|b| b.error.code)
    }

    /// Whether this is a tool result that reports a failure (`result.isError: true`). Read only
    /// when the frame mentions `isError`.
    pub fn is_tool_error(&self) -> bool {
        #[derive(Deserialize)]
        struct Body {
            result: Option<ToolResult>,
        }
        #[derive(Deserialize)]
        struct ToolResult {
            #[serde(rename = "isError", default)]
            is_error: bool,
        }
        self.kind == Kind::Response
            && IS_ERROR.is_in(&self.raw)
            && serde_json::from_slice::<Body>(&self.raw)
                .ok()
                .and_then(|b| b.result)
                .is_some_and(|r| r.is_error)
    }

    /// The id of a request (`None` for notifications and responses).
    pub fn request_id(&self) -> Option<&RequestId> {
        self.id.as_ref().filter(|_| self.kind == Kind::Request)
    }

    /// A response or an error response.
    pub fn is_response(&self) -> bool {
        matches!(self.kind, Kind::Response | Kind::Error)
    }
}

/// A syntax error is a parse error (-32700); valid JSON of the wrong shape is invalid (-32600).
/// The members of a batch, read without being parsed; refused once there are more than
/// [`MAX_BATCH_MESSAGES`].
fn batch_members(raw: &[u8]) -> Result<Vec<&RawValue>, ParseError> {
    struct Members;
    impl<'de> serde::de::Visitor<'de> for Members {
        type Value = Vec<&'de RawValue>;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a batch: an array of messages")
        }

        fn visit_seq<A: serde::de::SeqAccess<'de>>(
            self,
            mut seq: A,
        ) -> Result<Self::Value, A::Error> {
            let mut members = Vec::new();
            while let Some(member) = seq.next_element::<&RawValue>()? {
                if members.len() == MAX_BATCH_MESSAGES {
                    return Err(serde::de::Error::custom(TOO_LONG));
                }
                members.push(member);
            }
            Ok(members)
        }
    }
    const TOO_LONG: &str = "batch too long";
    let mut de = serde_json::Deserializer::from_slice(raw);
    let members = de
        .deserialize_seq(Members)
        .and_then(|members| de.end().map(|()| members));
    members.map_err(|e| {
        if e.is_data() && e.to_string().starts_with(TOO_LONG) {
            ParseError::BatchTooLong {
                limit: MAX_BATCH_MESSAGES,
            }
        } else {
            classify(&e, "a batch must be an array of messages")
        }
    })
}

/// Whether `raw` (JSON) nests arrays and objects deeper than `limit`. Most messages have fewer
/// brackets than that in all, which one vectorised count tells; the rest are walked.
fn nesting_exceeds(raw: &[u8], limit: usize) -> bool {
    // Deeper than `limit` takes more than `limit` openings and as many closings.
    if raw.len() < 2 * (limit + 1) || memchr::memchr2_iter(b'{', b'[', raw).nth(limit).is_none() {
        return false;
    }
    let mut depth = 0usize;
    let mut rest = raw;
    while let Some(at) = memchr::memchr3(b'"', b'{', b'[', rest) {
        // Outside strings: the brackets closed before this one.
        depth = depth.saturating_sub(memchr::memchr2_iter(b'}', b']', &rest[..at]).count());
        if rest[at] == b'"' {
            let Some(end) = string_end(&rest[at + 1..]) else {
                return false;
            };
            rest = &rest[at + 1 + end..];
        } else {
            depth += 1;
            if depth > limit {
                return true;
            }
            rest = &rest[at + 1..];
        }
    }
    false
}

/// Where the JSON string whose contents begin `text` ends: just past its closing quote.
fn string_end(text: &[u8]) -> Option<usize> {
    let mut i = 0;
    loop {
        let n = memchr::memchr2(b'"', b'\\', text.get(i..)?)?;
        if text[i + n] == b'"' {
            return Some(i + n + 1);
        }
        // An escape: skip the escaped character too.
        i += n + 2;
    }
}

fn classify(e: &serde_json::Error, shape: &'static str) -> ParseError {
    match e.classify() {
        serde_json::error::Category::Data => ParseError::invalid(None, shape),
        _ => ParseError::Json(e.to_string()),
    }
}

mod params;

#[cfg(test)]
mod tests;
