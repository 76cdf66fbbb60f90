//! Who is who at a shared server process: the ids, progress tokens, subscriptions and
//! server requests of the sessions on it, and where each message goes. Pure bookkeeping, under
//! one lock; [`super::SharedChild`] does the sending.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use bytes::Bytes;

use crate::protocol::error::ProxyError;
use crate::protocol::{ErrorCode, Kind, Message, Method, RequestId};

use super::Route;
use crate::proxy::upstream::supervise::Handshake as Replay;

/// Most requests of the process awaiting an answer from a member; past it the process's
/// requests are refused (it cannot make us hold more).
const MAX_SERVER_REQUESTS: usize = 10_000;

/// Most resources subscribed at one shared process (by all its sessions), and by one session:
/// what a client can make us keep is bounded before it is kept.
pub(super) const MAX_SUBSCRIPTIONS: usize = 10_000;
pub(super) const MAX_SUBSCRIPTIONS_PER_SESSION: usize = 1_000;

const REQUEST_TOKEN: [&str; 3] = ["params", "_meta", "progressToken"];
const PROGRESS_TOKEN: [&str; 2] = ["params", "progressToken"];
const CANCELLED_ID: [&str; 2] = ["params", "requestId"];

/// A request sent to the process under an id of ours.
#[derive(Debug)]
struct Forwarded {
    /// Whose it is (`None`: the proxy's own, whose answer nobody needs).
    member: Option<u64>,
    /// The id the session gave it.
    original: RequestId,
    /// Our progress token for it (JSON text), if it carried one.
    token: Option<String>,
    /// What its answer settles.
    then: Then,
}

#[derive(Debug)]
enum Then {
    Nothing,
    /// The process's `initialize` answer, kept for later sessions.
    Handshake,
    /// A subscribe to this URI: on an error the session is not subscribed.
    Subscribed(Box<str>),
}

#[derive(Debug, Default)]
enum Handshake {
    #[default]
    Idle,
    InFlight,
    /// The `result` of the process's answer.
    Done(Bytes),
}

#[derive(Debug)]
struct Entry<C> {
    route: Arc<Route<C>>,
    in_flight: usize,
    /// URIs it is subscribed to.
    subscribed: usize,
}

/// What the process and its members have between them.
#[derive(Debug)]
pub(super) struct Table<C> {
    members: HashMap<u64, Entry<C>>,
    /// Our id → the request.
    requests: HashMap<i64, Forwarded>,
    /// (member, its id) → our id, for cancellations.
    by_member: HashMap<(u64, RequestId), i64>,
    /// Our progress token (JSON text) → (member, its token).
    tokens: HashMap<String, (u64, String)>,
    /// The process's requests → the member they were sent to (ids left as they are).
    server_requests: HashMap<RequestId, u64>,
    /// URI → the members subscribed to it.
    subscriptions: HashMap<Box<str>, HashSet<u64>>,
    handshake: Handshake,
    initialized_sent: bool,
    /// The `initialize` the process was sent (under our id) and its `notifications/initialized`,
    /// for a process started in its place.
    sent: Replay,
    /// No member may join any more (the process is stopping).
    pub(super) retired: bool,
    /// The handshake's answer came (or its session left): whoever waits for it is to be woken.
    pub(super) handshake_settled: bool,
    /// The last id of ours given out.
    next_alias: i64,
}

impl<C> Default for Table<C> {
    fn default() -> Self {
        Self {
            members: HashMap::new(),
            requests: HashMap::new(),
            by_member: HashMap::new(),
            tokens: HashMap::new(),
            server_requests: HashMap::new(),
            subscriptions: HashMap::new(),
            handshake: Handshake::Idle,
            initialized_sent: false,
            sent: Replay::default(),
            retired: false,
            handshake_settled: false,
            next_alias: 0,
        }
    }
}

impl<C> Table<C> {
    /// Takes `route` in unless retired or at `max` members.
    pub(super) fn admit(&mut self, route: &Arc<Route<C>>, max: usize) -> bool {
        if self.retired || self.members.len() >= max {
            return false;
        }
        self.members.insert(
            route.id,
            Entry {
                route: route.clone(),
                in_flight: 0,
                subscribed: 0,
            },
        );
        true
    }

    fn alias(&mut self) -> i64 {
        self.next_alias += 1;
        self.next_alias
    }

    /// The member a message of the process tied to no request belongs to: the one with
    /// requests in flight, or the only member; `None` when that is not exactly one.
    fn attribute(&self) -> Option<Arc<Route<C>>> {
        let mut busy = self.members.values().filter(|m| m.in_flight > 0);
        let sole = |mut it: std::collections::hash_map::Values<'_, u64, Entry<C>>| match (
            it.next(),
            it.next(),
        ) {
            (Some(one), None) => Some(one.route.clone()),
            _ => None,
        };
        match (busy.next(), busy.next()) {
            (Some(one), None) => Some(one.route.clone()),
            (Some(_), Some(_)) => None,
            (None, _) => sole(self.members.values()),
        }
    }

    fn route(&self, member: u64) -> Option<Arc<Route<C>>> {
        self.members.get(&member).map(|m| m.route.clone())
    }

    /// Why `member` may not subscribe to `uri` (a new subscription past a bound), if so.
    fn no_room_to_subscribe(&self, member: u64, uri: &str) -> Option<String> {
        let subscribers = self.subscriptions.get(uri);
        if subscribers.is_some_and(|s| s.contains(&member)) {
            return None;
        }
        if subscribers.is_none() && self.subscriptions.len() >= MAX_SUBSCRIPTIONS {
            return Some(format!(
                "the shared server has {MAX_SUBSCRIPTIONS} resources subscribed, the most shadowcat keeps"
            ));
        }
        let mine = self.members.get(&member).map_or(0, |m| m.subscribed);
        (mine >= MAX_SUBSCRIPTIONS_PER_SESSION).then(|| {
            format!("this session has {MAX_SUBSCRIPTIONS_PER_SESSION} resources subscribed, the most one session may")
        })
    }

    fn count_subscription(&mut self, member: u64, added: bool) {
        if let Some(entry) = self.members.get_mut(&member) {
            entry.subscribed = if added {
                entry.subscribed + 1
            } else {
                entry.subscribed.saturating_sub(1)
            };
        }
    }

    /// Sessions on the process now.
    pub(super) fn member_count(&self) -> usize {
        self.members.len()
    }

    pub(super) fn all(&self) -> Vec<Arc<Route<C>>> {
        self.members.values().map(|m| m.route.clone()).collect()
    }

    pub(super) fn inbound(&mut self, member: u64, msg: &Message, waited: bool) -> Inbound {
        let table = self;
        match (msg.kind(), msg.method()) {
            (Kind::Request, Some(Method::Initialize)) => match &table.handshake {
                Handshake::Done(result) => {
                    let answer = msg
                        .id()
                        .and_then(|id| response(id, std::str::from_utf8(result).unwrap_or("{}")));
                    answer.map_or(Inbound::Drop, Inbound::Answer)
                }
                Handshake::InFlight if !waited => Inbound::Wait,
                Handshake::InFlight | Handshake::Idle => {
                    table.handshake = Handshake::InFlight;
                    let forwarded = table.forward(member, msg, Then::Handshake);
                    if let Inbound::Forward(sent) = &forwarded {
                        table.sent.initialize = Some(sent.clone());
                    }
                    forwarded
                }
            },
            (Kind::Request, Some(Method::ResourcesSubscribe)) => {
                let Ok(Some(uri)) = msg.param_str("uri") else {
                    return table.forward(member, msg, Then::Nothing);
                };
                if let Some(why) = table.no_room_to_subscribe(member, &uri) {
                    return refuse(msg, &why).map_or(Inbound::Drop, Inbound::Answer);
                }
                let subscribers = table.subscriptions.entry(uri.clone().into()).or_default();
                let first = subscribers.is_empty();
                if subscribers.insert(member) {
                    table.count_subscription(member, true);
                }
                if first {
                    table.forward(member, msg, Then::Subscribed(uri.into()))
                } else {
                    empty_answer(msg)
                }
            }
            (Kind::Request, Some(Method::ResourcesUnsubscribe)) => {
                let Ok(Some(uri)) = msg.param_str("uri") else {
                    return table.forward(member, msg, Then::Nothing);
                };
                let was = table
                    .subscriptions
                    .get_mut(uri.as_str())
                    .map(|subscribers| (subscribers.remove(&member), subscribers.is_empty()));
                let Some((true, last)) = was else {
                    // Not subscribed: the process says what it says to that.
                    return table.forward(member, msg, Then::Nothing);
                };
                table.count_subscription(member, false);
                if last {
                    table.subscriptions.remove(uri.as_str());
                    table.forward(member, msg, Then::Nothing)
                } else {
                    empty_answer(msg)
                }
            }
            (Kind::Request, _) => table.forward(member, msg, Then::Nothing),
            (Kind::Notification, Some(Method::Initialized)) => {
                if std::mem::replace(&mut table.initialized_sent, true) {
                    Inbound::Drop
                } else {
                    table.sent.initialized = Some(msg.clone());
                    Inbound::Forward(msg.clone())
                }
            }
            (Kind::Notification, Some(Method::Cancelled)) => {
                let ours = msg
                    .cancelled_request_id()
                    .and_then(|id| table.by_member.get(&(member, id)).copied());
                ours.and_then(|ours| msg.with_member(&CANCELLED_ID, &ours.to_string()))
                    .map_or(Inbound::Drop, Inbound::Forward)
            }
            (Kind::Notification, _) => Inbound::Forward(msg.clone()),
            (Kind::Response | Kind::Error, _) => {
                // An answer to the process's request: only from the member it was sent to.
                let theirs = msg
                    .id()
                    .filter(|id| table.server_requests.get(*id) == Some(&member))
                    .cloned();
                if let Some(id) = theirs {
                    table.server_requests.remove(&id);
                    Inbound::Forward(msg.clone())
                } else {
                    tracing::debug!(
                        "a session answered a request the shared server did not send it; dropped"
                    );
                    Inbound::Drop
                }
            }
        }
    }

    /// `msg` under an id (and progress token) of ours, remembered as `member`'s.
    fn forward(&mut self, member: u64, msg: &Message, then: Then) -> Inbound {
        let table = self;
        let Some(original) = msg.id().cloned() else {
            return Inbound::Drop;
        };
        let ours = table.alias();
        let Some(mut renamed) = msg.with_id(&RequestId::Number(ours)) else {
            return refuse(msg, "the request's id cannot be read to be renamed")
                .map_or(Inbound::Drop, Inbound::Answer);
        };
        let token = match renamed.read_progress_token("/params/_meta/progressToken") {
            Ok(token) => token,
            Err(e) => {
                return refuse(msg, &e.to_string()).map_or(Inbound::Drop, Inbound::Answer);
            }
        };
        let token = match token {
            Some(theirs) => {
                let alias = ours.to_string();
                let Some(with_token) = renamed.with_member(&REQUEST_TOKEN, &alias) else {
                    return refuse(
                        msg,
                        "the request's progress token cannot be read to be renamed",
                    )
                    .map_or(Inbound::Drop, Inbound::Answer);
                };
                renamed = with_token;
                table.tokens.insert(alias.clone(), (member, theirs));
                Some(alias)
            }
            None => None,
        };
        table.by_member.insert((member, original.clone()), ours);
        table.requests.insert(
            ours,
            Forwarded {
                member: Some(member),
                original,
                token,
                then,
            },
        );
        if let Some(entry) = table.members.get_mut(&member) {
            entry.in_flight += 1;
        }
        Inbound::Forward(renamed)
    }

    /// Where a message of the process goes.
    pub(super) fn outbound(&mut self, msg: Message) -> To<C> {
        let table = self;
        match msg.kind() {
            Kind::Response | Kind::Error => table.answer(&msg),
            Kind::Request => {
                if msg.method() == Some(&Method::Ping) {
                    return msg.id().and_then(|id| response(id, "{}")).map_or(
                        To::Nowhere {
                            why: "a ping without an id",
                            counted: false,
                        },
                        To::Child,
                    );
                }
                let (Some(id), Some(route)) = (msg.id().cloned(), table.attribute()) else {
                    return refuse_request(&msg, table.members.len());
                };
                if table.server_requests.len() >= MAX_SERVER_REQUESTS {
                    return refuse_request(&msg, table.members.len());
                }
                table.server_requests.insert(id, route.id);
                To::One(route, msg)
            }
            Kind::Notification => match msg.method() {
                Some(Method::Progress) => {
                    let Some(token) = msg.progress_token("/params/progressToken") else {
                        return To::Nowhere {
                            why: "progress without a token",
                            counted: true,
                        };
                    };
                    let Some((member, theirs)) = table.tokens.get(&token).cloned() else {
                        return To::Nowhere {
                            why: "progress for no request in flight",
                            counted: true,
                        };
                    };
                    match (
                        table.route(member),
                        msg.with_member(&PROGRESS_TOKEN, &theirs),
                    ) {
                        (Some(route), Some(msg)) => To::One(route, msg),
                        _ => To::Nowhere {
                            why: "progress for a session that left",
                            counted: true,
                        },
                    }
                }
                Some(Method::Cancelled) => {
                    let member = msg
                        .cancelled_request_id()
                        .and_then(|id| table.server_requests.remove(&id));
                    match member.and_then(|m| table.route(m)) {
                        Some(route) => To::One(route, msg),
                        None => To::Nowhere {
                            why: "a cancellation of nothing sent",
                            counted: false,
                        },
                    }
                }
                Some(Method::ResourcesUpdated) => {
                    let uri = msg.param_str("uri").ok().flatten().unwrap_or_default();
                    let routes: Vec<_> = table
                        .subscriptions
                        .get(uri.as_str())
                        .into_iter()
                        .flatten()
                        .filter_map(|m| table.route(*m))
                        .collect();
                    To::Each(routes, msg)
                }
                Some(
                    Method::ToolsListChanged
                    | Method::ResourcesListChanged
                    | Method::PromptsListChanged,
                ) => To::Each(table.all(), msg),
                _ => match table.attribute() {
                    Some(route) => To::One(route, msg),
                    None => To::Nowhere {
                        why: "a notification of the shared server that belongs to no one session",
                        counted: true,
                    },
                },
            },
        }
    }

    /// The answer to one of our requests, under its member's id again.
    fn answer(&mut self, msg: &Message) -> To<C> {
        let table = self;
        let Some(RequestId::Number(ours)) = msg.id() else {
            return To::Nowhere {
                why: "an answer to no request of ours",
                counted: true,
            };
        };
        let Some(forwarded) = table.requests.remove(ours) else {
            return To::Nowhere {
                why: "an answer to no request in flight",
                counted: true,
            };
        };
        if let Some(token) = &forwarded.token {
            table.tokens.remove(token);
        }
        match forwarded.then {
            Then::Handshake => {
                table.handshake =
                    if let (Kind::Response, Some(result)) = (msg.kind(), result_of(msg)) {
                        Handshake::Done(result)
                    } else {
                        table.sent.initialize = None;
                        Handshake::Idle
                    };
                table.handshake_settled = true;
            }
            Then::Subscribed(uri) if msg.kind() == Kind::Error => {
                if let (Some(member), Some(subscribers)) =
                    (forwarded.member, table.subscriptions.get_mut(&uri))
                {
                    let removed = subscribers.remove(&member);
                    if subscribers.is_empty() {
                        table.subscriptions.remove(&uri);
                    }
                    if removed {
                        table.count_subscription(member, false);
                    }
                }
            }
            Then::Subscribed(_) | Then::Nothing => {}
        }
        let Some(member) = forwarded.member else {
            return To::Nowhere {
                why: "the answer to the proxy's own request",
                counted: false,
            };
        };
        table
            .by_member
            .remove(&(member, forwarded.original.clone()));
        if let Some(entry) = table.members.get_mut(&member) {
            entry.in_flight = entry.in_flight.saturating_sub(1);
        }
        match (table.route(member), msg.with_id(&forwarded.original)) {
            (Some(route), Some(msg)) => To::One(route, msg),
            _ => To::Nowhere {
                why: "an answer for a session that left",
                counted: false,
            },
        }
    }

    /// Forgets `member`: what the process is to be sent for that (cancellations of its
    /// requests there, errors for the process's requests to it, unsubscribes where it was the
    /// last subscriber).
    pub(super) fn leave(&mut self, member: u64) -> Vec<Message> {
        let table = self;
        let mut to_child = Vec::new();
        table.members.remove(&member);
        let mine: Vec<(RequestId, i64)> = table
            .by_member
            .iter()
            .filter(|((m, _), _)| *m == member)
            .map(|((_, id), ours)| (id.clone(), *ours))
            .collect();
        for (id, ours) in mine {
            table.by_member.remove(&(member, id));
            if let Some(forwarded) = table.requests.remove(&ours) {
                if let Some(token) = forwarded.token {
                    table.tokens.remove(&token);
                }
                if matches!(forwarded.then, Then::Handshake) {
                    table.handshake = Handshake::Idle;
                    table.sent.initialize = None;
                    table.handshake_settled = true;
                }
            }
            to_child.push(Message::cancelled(
                &RequestId::Number(ours),
                "the session ended",
            ));
        }
        let asked: Vec<RequestId> = table
            .server_requests
            .iter()
            .filter(|(_, m)| **m == member)
            .map(|(id, _)| id.clone())
            .collect();
        let gone = ProxyError::new(
            ErrorCode::ShuttingDown,
            "the session this request was for has ended",
        );
        for id in asked {
            table.server_requests.remove(&id);
            to_child.push(Message::error_response(Some(&id), &gone));
        }
        let mut unsubscribe = Vec::new();
        table.subscriptions.retain(|uri, subscribers| {
            if subscribers.remove(&member) && subscribers.is_empty() {
                unsubscribe.push(uri.clone());
                return false;
            }
            true
        });
        for uri in unsubscribe {
            to_child.extend(table.own_request("resources/unsubscribe", &uri));
        }
        to_child
    }

    /// A request of the proxy's own about resource `uri`, under an id of ours (its answer is
    /// nobody's).
    fn own_request(&mut self, method: &str, uri: &str) -> Option<Message> {
        let ours = self.alias();
        let text = serde_json::json!({
            "jsonrpc": "2.0",
            "id": ours,
            "method": method,
            "params": {"uri": uri},
        });
        let msg = Message::parse(Bytes::from(text.to_string())).ok()?;
        self.requests.insert(
            ours,
            Forwarded {
                member: None,
                original: RequestId::Number(ours),
                token: None,
                then: Then::Nothing,
            },
        );
        Some(msg)
    }

    /// The process failed and another is to take its place: each request in flight there is
    /// answered with `error` (the process's own requests to members are forgotten; an answer
    /// to one is dropped). What stays is the members, the handshake's answer and the
    /// subscriptions: the new process is to be given the handshake the old one got and
    /// subscribed again to what the members are subscribed to.
    pub(super) fn crashed(&mut self, error: &ProxyError) -> Crashed<C> {
        let table = self;
        let forwarded: Vec<Forwarded> = table.requests.drain().map(|(_, f)| f).collect();
        let mut owed = Vec::new();
        for forwarded in forwarded {
            if matches!(forwarded.then, Then::Handshake) {
                table.handshake = Handshake::Idle;
                table.sent.initialize = None;
                table.handshake_settled = true;
            }
            if let Some(route) = forwarded.member.and_then(|m| table.route(m)) {
                owed.push((
                    route,
                    Message::error_response(Some(&forwarded.original), error),
                ));
            }
        }
        table.by_member.clear();
        table.tokens.clear();
        table.server_requests.clear();
        for entry in table.members.values_mut() {
            entry.in_flight = 0;
        }
        let handshake = if matches!(table.handshake, Handshake::Done(_)) {
            table.sent.clone()
        } else {
            // No handshake to give: the next member's own goes to the new process.
            table.initialized_sent = false;
            table.sent = Replay::default();
            Replay::default()
        };
        let uris: Vec<Box<str>> = table.subscriptions.keys().cloned().collect();
        let resubscribe = uris
            .iter()
            .filter_map(|uri| table.own_request("resources/subscribe", uri))
            .collect();
        Crashed {
            owed,
            handshake,
            resubscribe,
        }
    }
}

/// What a failed process leaves to do ([`Table::crashed`]).
#[derive(Debug)]
pub(super) struct Crashed<C> {
    /// The error answer for each member request it had in flight.
    pub(super) owed: Vec<(Arc<Route<C>>, Message)>,
    /// The handshake to give the process started in its place.
    pub(super) handshake: Replay,
    /// The subscribes to send it.
    pub(super) resubscribe: Vec<Message>,
}

/// Where a message goes.
#[derive(Debug)]
pub(super) enum To<C> {
    /// To one member.
    One(Arc<Route<C>>, Message),
    /// To each of these members.
    Each(Vec<Arc<Route<C>>>, Message),
    /// To the process (the proxy's answer).
    Child(Message),
    /// To the process: its request refused, as no one session can be told apart for it.
    Refused(Message),
    /// Nowhere: dropped (and counted if `counted`).
    Nowhere { why: &'static str, counted: bool },
}

/// A JSON text of `id`.
fn json_of(id: &RequestId) -> String {
    let mut json = Vec::new();
    id.write_json(&mut json);
    String::from_utf8_lossy(&json).into_owned()
}

/// `{"jsonrpc":"2.0","id":…,"result":…}`.
fn response(id: &RequestId, result: &str) -> Option<Message> {
    let text = format!(
        r#"{{"jsonrpc":"2.0","id":{},"result":{result}}}"#,
        json_of(id)
    );
    Message::parse(Bytes::from(text)).ok()
}

/// The raw `result` of a response.
fn result_of(msg: &Message) -> Option<Bytes> {
    #[derive(serde::Deserialize)]
    struct Answer<'a> {
        #[serde(borrow)]
        result: &'a serde_json::value::RawValue,
    }
    let answer: Answer<'_> = serde_json::from_slice(msg.raw()).ok()?;
    Some(Bytes::copy_from_slice(answer.result.get().as_bytes()))
}

/// The answer for a client message that cannot be renamed: refused, never passed on under a
/// name another session may use.
fn refuse(msg: &Message, why: &str) -> Option<Message> {
    let error = ProxyError::new(ErrorCode::InvalidRequest, format!("Invalid Request: {why}"));
    msg.id().map(|id| Message::error_response(Some(id), &error))
}

/// What becomes of a member's message.
pub(super) enum Inbound {
    /// To the process.
    Forward(Message),
    /// Answered here, to the member.
    Answer(Message),
    /// Another member's `initialize` is in flight: wait for its answer.
    Wait,
    Drop,
}

fn empty_answer(msg: &Message) -> Inbound {
    msg.id()
        .and_then(|id| response(id, "{}"))
        .map_or(Inbound::Drop, Inbound::Answer)
}

/// A request of the process no one session can be told apart for: refused.
fn refuse_request<C>(msg: &Message, members: usize) -> To<C> {
    let error = ProxyError::new(
        ErrorCode::Unattributable,
        format!(
            "shadowcat shares this server among {members} sessions and cannot tell which one this request is for (exactly one must have a request in flight)"
        ),
    );
    match msg.id() {
        Some(id) => To::Refused(Message::error_response(Some(id), &error)),
        None => To::Nowhere {
            why: "a request without an id",
            counted: false,
        },
    }
}
