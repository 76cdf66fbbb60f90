//! Stateless (2026-07-28) requests to a command upstream: they have no session, so they share
//! the children that serve them, and requests of different clients may carry the same ids and
//! progress tokens.
//! Each request goes to the child under an id (and progress token) of our own, unique there,
//! and what comes back for it (answers, progress, a subscription's notifications) is turned back
//! into the names its client chose.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use bytes::Bytes;
use linked_hash_map::LinkedHashMap;

use crate::protocol::error::ProxyError;
use crate::protocol::{ErrorCode, Kind, Message, Method, RequestId};
use crate::session::SessionId;

const REQUEST_TOKEN: [&str; 3] = ["params", "_meta", "progressToken"];
const PROGRESS_TOKEN: [&str; 2] = ["params", "progressToken"];
const SUBSCRIPTION: [&str; 3] = ["params", "_meta", crate::protocol::message::SUBSCRIPTION_ID];

/// Most server→client requests of the shared child awaiting a stateless client's answer; the
/// oldest is forgotten past it (its answer is then refused, and the child's own timeout ends
/// it).
pub(super) const MAX_SERVER_REQUESTS: usize = 10_000;

/// A fresh name nobody can guess: `sc-` and 128 random bits (a session id's).
fn fresh() -> String {
    format!("sc-{}", SessionId::random())
}

/// A server→client request sent to a stateless client: the child's id for it, and which child
/// asked (the session that carries it).
#[derive(Debug)]
struct Asked {
    theirs: RequestId,
    by: SessionId,
}

/// What all stateless requests at the shared children share: the server→client requests sent
/// to their clients, each under an unguessable id of ours, so that only the client it was sent
/// to can answer it, and the answer reaches the child that asked.
#[derive(Debug, Default)]
pub(super) struct Shared {
    /// Our id → the child's, and the child.
    server_requests: Mutex<LinkedHashMap<RequestId, Asked>>,
}

impl Shared {
    fn remember(&self, ours: RequestId, asked: Asked) {
        let mut map = self
            .server_requests
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        map.insert(ours, asked);
        while map.len() > MAX_SERVER_REQUESTS {
            map.pop_front();
        }
    }

    /// The child (its session) that sent the server request the client names `ours`, if any.
    pub(super) fn asker(&self, ours: &RequestId) -> Option<SessionId> {
        self.server_requests
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(ours)
            .map(|asked| asked.by.clone())
    }

    /// The child's id for `ours`, if the child served by session `by` asked it (then it is
    /// forgotten: it is answered once).
    fn take(&self, ours: &RequestId, by: &SessionId) -> Option<RequestId> {
        let mut map = self
            .server_requests
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if map.get(ours).is_some_and(|asked| &asked.by == by) {
            map.remove(ours).map(|asked| asked.theirs)
        } else {
            None
        }
    }
}

/// One POST's aliases: ours → the client's, for its request ids and progress tokens, at the
/// child served by session `child`.
#[derive(Debug)]
pub(super) struct Aliases {
    shared: std::sync::Arc<Shared>,
    child: SessionId,
    ids: HashMap<RequestId, RequestId>,
    /// JSON texts of progress tokens.
    tokens: HashMap<String, String>,
}

impl Aliases {
    pub(super) fn new(shared: std::sync::Arc<Shared>, child: SessionId) -> Self {
        Self {
            shared,
            child,
            ids: HashMap::new(),
            tokens: HashMap::new(),
        }
    }

    /// A client message as the child gets it: a request under an id (and progress token) of
    /// ours, unguessable and unique there; an answer to a server request under the child's
    /// id, if that request was sent to this client (whoever else answers it is refused). What
    /// cannot be renamed is refused rather than passed on under a name another client may use:
    /// the error for the client is the `Err`.
    pub(super) fn inbound(&mut self, msg: Message) -> Result<Message, Bytes> {
        let refuse = |msg: &Message, why: &str| {
            let error =
                ProxyError::new(ErrorCode::InvalidRequest, format!("Invalid Request: {why}"));
            Message::error_response(msg.id(), &error).raw().clone()
        };
        match (msg.kind(), msg.id().cloned()) {
            (Kind::Request, Some(original)) => {
                let name = fresh();
                let alias = RequestId::String(name.as_str().into());
                let Some(mut renamed) = msg.with_id(&alias) else {
                    return Err(refuse(
                        &msg,
                        "the request's id cannot be read to be renamed",
                    ));
                };
                let token = renamed
                    .read_progress_token("/params/_meta/progressToken")
                    .map_err(|e| refuse(&msg, &e.to_string()))?;
                if let Some(token) = token {
                    let ours = format!("\"{name}\"");
                    let Some(with_token) = renamed.with_member(&REQUEST_TOKEN, &ours) else {
                        return Err(refuse(
                            &msg,
                            "the request's progress token cannot be read to be renamed",
                        ));
                    };
                    renamed = with_token;
                    self.tokens.insert(ours, token);
                }
                self.ids.insert(alias, original);
                Ok(renamed)
            }
            (Kind::Response | Kind::Error, Some(ours)) => {
                let Some(theirs) = self.shared.take(&ours, &self.child) else {
                    return Err(refuse(
                        &msg,
                        "this answers no request the server sent to this client",
                    ));
                };
                msg.with_id(&theirs)
                    .ok_or_else(|| refuse(&msg, "the answer's id cannot be read to be renamed"))
            }
            (Kind::Response | Kind::Error, None) => Err(refuse(
                &msg,
                "an answer without an id reaches no server request",
            )),
            _ => Ok(msg),
        }
    }

    /// A message for the client, under the id or progress token its client chose; a server
    /// request under an unguessable id of ours, which only this client learns.
    pub(super) fn outbound(&self, raw: Bytes) -> Bytes {
        let Ok(msg) = Message::parse(raw.clone()) else {
            return raw;
        };
        let renamed = if msg.is_response() {
            msg.id()
                .and_then(|id| self.ids.get(id))
                .and_then(|original| msg.with_id(original))
        } else if msg.kind() == Kind::Request {
            let theirs = msg.id().cloned();
            let ours = RequestId::String(fresh().into());
            msg.with_id(&ours).inspect(|_| {
                if let Some(theirs) = theirs {
                    let by = self.child.clone();
                    self.shared.remember(ours.clone(), Asked { theirs, by });
                }
            })
        } else if msg.method() == Some(&Method::Progress) {
            msg.progress_token("/params/progressToken")
                .and_then(|token| self.tokens.get(&token))
                .and_then(|original| msg.with_member(&PROGRESS_TOKEN, original))
        } else {
            // A subscription's notification names the listen request by our id.
            msg.subscription_id()
                .and_then(|id| self.ids.get(&id))
                .and_then(|original| {
                    let mut json = Vec::new();
                    original.write_json(&mut json);
                    msg.with_member(&SUBSCRIPTION, std::str::from_utf8(&json).ok()?)
                })
        };
        renamed.map_or(raw, |m| m.raw().clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(s: &str) -> Message {
        Message::parse(Bytes::copy_from_slice(s.as_bytes())).unwrap()
    }

    fn text(raw: &[u8]) -> serde_json::Value {
        serde_json::from_slice(raw).unwrap()
    }

    #[test]
    fn two_clients_with_the_same_ids_are_told_apart_and_answered_under_their_own() {
        let shared = std::sync::Arc::new(Shared::default());
        let request = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"work","_meta":{"progressToken":1}}}"#;
        let child = SessionId::random();
        let (mut a, mut b) = (
            Aliases::new(shared.clone(), child.clone()),
            Aliases::new(shared, child),
        );
        let to_child_a = a.inbound(msg(request)).unwrap();
        let to_child_b = b.inbound(msg(request)).unwrap();
        let (id_a, id_b) = (to_child_a.id().unwrap(), to_child_b.id().unwrap());
        assert_ne!(id_a, id_b);
        let RequestId::String(name_b) = id_b else {
            panic!("{id_b:?}")
        };
        assert!(name_b.starts_with("sc-") && name_b.len() == 35, "{name_b}");
        let body_b = text(to_child_b.raw());
        assert_eq!(body_b["params"]["_meta"]["progressToken"], name_b.as_ref());
        let progress = msg(&format!(
            r#"{{"jsonrpc":"2.0","method":"notifications/progress","params":{{"progressToken":"{name_b}","progress":1}}}}"#
        ));
        assert_eq!(
            &b.outbound(progress.raw().clone())[..],
            br#"{"jsonrpc":"2.0","method":"notifications/progress","params":{"progressToken":1,"progress":1}}"#
        );
        let answer = msg(&format!(
            r#"{{"jsonrpc":"2.0","id":"{name_b}","result":{{}}}}"#
        ));
        assert_eq!(
            &b.outbound(answer.raw().clone())[..],
            br#"{"jsonrpc":"2.0","id":1,"result":{}}"#
        );
        // Not one of a's: left alone.
        assert_eq!(a.outbound(answer.raw().clone()), answer.raw().clone());
        // A subscription's notifications name its listen request by the client's id again.
        let changed = msg(&format!(
            r#"{{"jsonrpc":"2.0","method":"notifications/tools/list_changed","params":{{"_meta":{{"io.modelcontextprotocol/subscriptionId":"{name_b}"}}}}}}"#
        ));
        assert_eq!(
            text(&b.outbound(changed.raw().clone()))["params"]["_meta"]["io.modelcontextprotocol/subscriptionId"],
            1
        );
        // Notifications pass as they are.
        let note = msg(r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#);
        assert_eq!(a.inbound(note.clone()).unwrap().raw(), note.raw());
    }

    #[test]
    fn only_the_client_a_server_request_was_sent_to_can_answer_it() {
        let shared = std::sync::Arc::new(Shared::default());
        let child = SessionId::random();
        let (mut victim, mut other) = (
            Aliases::new(shared.clone(), child.clone()),
            Aliases::new(shared.clone(), child.clone()),
        );
        let ask = msg(
            r#"{"jsonrpc":"2.0","id":"sample-1","method":"sampling/createMessage","params":{}}"#,
        );
        let sent = text(&victim.outbound(ask.raw().clone()));
        let ours = sent["id"].as_str().unwrap().to_owned();
        assert!(ours.starts_with("sc-"), "{sent}");
        // Its child's own id is refused, from anyone.
        let guess = msg(r#"{"jsonrpc":"2.0","id":"sample-1","result":{"content":"forged"}}"#);
        assert!(other.inbound(guess).is_err());
        // The id the victim got answers it, once.
        let answer = msg(&format!(
            r#"{{"jsonrpc":"2.0","id":"{ours}","result":{{}}}}"#
        ));
        // It names the child that asked; at another child it answers nothing.
        let named = RequestId::String(ours.as_str().into());
        assert_eq!(shared.asker(&named), Some(child.clone()));
        let mut elsewhere = Aliases::new(shared.clone(), SessionId::random());
        assert!(elsewhere.inbound(answer.clone()).is_err());
        let to_child = victim.inbound(answer.clone()).unwrap();
        assert_eq!(to_child.id(), Some(&RequestId::String("sample-1".into())));
        let refused = other.inbound(answer).unwrap_err();
        assert_eq!(text(&refused)["error"]["code"], -32600);
    }

    #[test]
    fn what_cannot_be_renamed_is_refused_not_passed_on() {
        let mut aliases = Aliases::new(std::sync::Arc::default(), SessionId::random());
        // Two `_meta` members: the token cannot be renamed with certainty.
        let twice = msg(
            r#"{"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"_meta":{"progressToken":1},"_meta":{"progressToken":2}}}"#,
        );
        let refused = aliases.inbound(twice).unwrap_err();
        assert_eq!(text(&refused)["id"], 4);
        assert_eq!(text(&refused)["error"]["code"], -32600);
    }
}
