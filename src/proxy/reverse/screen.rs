//! A POST's members through the pipeline, in order: what goes on to the upstream, the requests
//! whose answers the POST waits for, and what the proxy answered itself (counted by kind, so a
//! POST refused whole gets the status that says why). `POST /mcp` and a 2024-11-05 session's
//! `POST /message` share it.

use std::sync::Arc;

use bytes::Bytes;
use http::HeaderMap;

use crate::protocol::{Kind, Message, Method, RequestId};
use crate::ratelimit::Refusal;

use super::alias::Aliases;
use super::gateway::{Gateway, SessionLink};

/// The refusal for too many pending requests, searched for in answers.
static TOO_MANY_PENDING: crate::protocol::needle::Needle =
    crate::protocol::needle::Needle::new(b"\"too_many_pending_requests\"");

/// What the pipeline made of a POST's members.
pub(super) struct Screened {
    /// What goes on to the upstream.
    pub(super) forwarded: Vec<Message>,
    /// The requests among them, with their methods: the answers the POST waits for.
    pub(super) expected: Vec<(RequestId, Method)>,
    /// Their progress tokens.
    pub(super) tokens: Vec<String>,
    /// What the proxy answered itself.
    pub(super) answers: Vec<Bytes>,
    /// The first rate-limit refusal, and how many answers are refusals.
    pub(super) limited: Option<(Refusal, usize)>,
    /// How many answers are refusals for want of room in the pending table (after
    /// `--pending-wait`).
    pub(super) busy: usize,
    /// The scopes the first refusal for want of a scope (`require_scope:`) misses and asks
    /// for, and how many answers are such refusals.
    pub(super) forbidden: Option<((String, String), usize)>,
}

/// Each member of a POST (to `/mcp`, or to a 2024-11-05 session's `/message`) through the pipeline, in order (at the shared child
/// under names of the gateway's own first). A call's `Mcp-Param-*` `headers` follow what a
/// rule changes in it.
pub(super) async fn screen(
    gateway: &Arc<Gateway>,
    link: &Arc<SessionLink>,
    client: crate::stage::Client<'_>,
    members: Vec<Result<Message, crate::protocol::ParseError>>,
    mut aliases: Option<&mut Aliases>,
    headers: &mut HeaderMap,
) -> Screened {
    let mut forwarded = Vec::with_capacity(members.len());
    let mut expected = Vec::new();
    let mut tokens = Vec::new();
    let mut answers = Vec::new();
    // The first rate-limit refusal, and how many answers are refusals.
    let mut limited: Option<(Refusal, usize)> = None;
    // How many answers are refusals for want of room in the pending table (after --pending-wait).
    let mut busy = 0;
    let mut forbidden: Option<((String, String), usize)> = None;
    // The trace context the HTTP request carried beside the messages (W3C `traceparent`).
    let header_trace = headers
        .get(crate::protocol::headers::TRACEPARENT)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    for member in members {
        let member = match (member, aliases.as_deref_mut()) {
            (Ok(msg), Some(_)) if msg.method() == Some(&Method::Cancelled) => {
                // Its request id is another POST's (in this era, closing that POST's stream is
                // what cancels it).
                tracing::debug!("a stateless notifications/cancelled was dropped");
                continue;
            }
            (Ok(msg), Some(_)) if msg.method() == Some(&Method::Initialize) => {
                // The stateless era has no initialize. The child would take it for the
                // handshake of the other era, so it is answered here, as that era's HTTP
                // server answers a method it does not have.
                answers.push(super::binding::no_initialize(msg.id()));
                continue;
            }
            (Ok(msg), Some(aliases)) => match aliases.inbound(msg) {
                Ok(msg) => Ok(msg),
                Err(refusal) => {
                    answers.push(refusal);
                    continue;
                }
            },
            (member, _) => member,
        };
        match member {
            Err(e) => answers.push(gateway.malformed(&e)),
            Ok(msg) => {
                let request = (msg.kind() == Kind::Request)
                    .then(|| msg.id().cloned().zip(msg.method().cloned()))
                    .flatten();
                let token = request
                    .as_ref()
                    .and_then(|_| msg.progress_token("/params/_meta/progressToken"));
                // A call of a tool that mirrors arguments into headers, as it came.
                let before = gateway.mirrored().and_then(|m| m.before(&msg));
                match gateway
                    .inbound(&link.session, msg, client, header_trace.as_deref())
                    .await
                {
                    crate::stage::Verdict::Forward(msg) => {
                        if let Some(before) = before {
                            before.follow(headers, &msg);
                        }
                        if msg.method() == Some(&Method::Cancelled) {
                            // The request is over for the client: the POST waiting for it must
                            // not wait for an answer the server won't send.
                            if let Some(id) = msg.cancelled_request_id() {
                                link.router.cancel(&id).await;
                            }
                        }
                        if request.is_some() {
                            tokens.extend(token);
                        }
                        expected.extend(request);
                        forwarded.push(msg);
                    }
                    crate::stage::Verdict::Respond(answer) => {
                        if let Some(refusal) = Refusal::from_answer(&answer) {
                            limited.get_or_insert((refusal, 0)).1 += 1;
                        } else if is_too_many_pending(&answer) {
                            busy += 1;
                        } else if let Some(scope) = super::authn::wanted_scope(&answer) {
                            forbidden.get_or_insert((scope, 0)).1 += 1;
                        }
                        let answer = answer.raw().clone();
                        answers.push(match &aliases {
                            Some(aliases) => aliases.outbound(answer),
                            None => answer,
                        });
                    }
                    crate::stage::Verdict::Drop => {}
                }
            }
        }
    }
    Screened {
        forwarded,
        expected,
        tokens,
        answers,
        limited,
        busy,
        forbidden,
    }
}

/// Whether `answer` is the proxy's refusal for want of room in the pending table (-32083).
fn is_too_many_pending(answer: &Message) -> bool {
    answer.kind() == Kind::Error && TOO_MANY_PENDING.is_in(answer.raw())
}
