//! Stateless (2026-07-28) requests to a command upstream: they have no session, so they share
//! one child, and requests of different clients may carry the same ids and progress tokens.
//! Each request goes to the child under an id (and progress token) of our own, unique there,
//! and what comes back for it (answers, progress, a subscription's notifications) is turned back
//! into the names its client chose.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};

use bytes::Bytes;

use crate::protocol::{Kind, Message, Method, RequestId};

const REQUEST_TOKEN: [&str; 3] = ["params", "_meta", "progressToken"];
const PROGRESS_TOKEN: [&str; 2] = ["params", "progressToken"];
const SUBSCRIPTION: [&str; 3] = ["params", "_meta", crate::protocol::message::SUBSCRIPTION_ID];

/// One POST's aliases: ours → the client's, for its request ids and progress tokens.
#[derive(Debug, Default)]
pub(super) struct Aliases {
    ids: HashMap<RequestId, RequestId>,
    /// JSON texts of progress tokens.
    tokens: HashMap<String, String>,
}

impl Aliases {
    /// A client request under an id (and progress token) from `next`, unique at the child.
    /// Other messages pass as they are.
    pub(super) fn inbound(&mut self, msg: Message, next: &AtomicI64) -> Message {
        let (Kind::Request, Some(original)) = (msg.kind(), msg.id().cloned()) else {
            return msg;
        };
        let number = next.fetch_add(1, Ordering::Relaxed);
        let alias = RequestId::Number(number);
        let Some(mut renamed) = msg.with_id(&alias) else {
            return msg;
        };
        if let Some(token) = renamed.progress_token("/params/_meta/progressToken") {
            let ours = format!("\"shadowcat-{number}\"");
            if let Some(with_token) = renamed.with_member(&REQUEST_TOKEN, &ours) {
                renamed = with_token;
                self.tokens.insert(ours, token);
            }
        }
        self.ids.insert(alias, original);
        renamed
    }

    /// A message for the client, under the id or progress token its client chose.
    pub(super) fn outbound(&self, raw: Bytes) -> Bytes {
        let Ok(msg) = Message::parse(raw.clone()) else {
            return raw;
        };
        let renamed = if msg.is_response() {
            msg.id()
                .and_then(|id| self.ids.get(id))
                .and_then(|original| msg.with_id(original))
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

    #[test]
    fn two_clients_with_the_same_ids_are_told_apart_and_answered_under_their_own() {
        let next = AtomicI64::new(1);
        let request = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"work","_meta":{"progressToken":1}}}"#;
        let (mut a, mut b) = (Aliases::default(), Aliases::default());
        let to_child_a = a.inbound(msg(request), &next);
        let to_child_b = b.inbound(msg(request), &next);
        assert_eq!(to_child_a.id(), Some(&RequestId::Number(1)));
        assert_eq!(to_child_b.id(), Some(&RequestId::Number(2)));
        assert!(
            String::from_utf8_lossy(to_child_b.raw()).contains(r#""progressToken":"shadowcat-2""#)
        );
        let progress = msg(
            r#"{"jsonrpc":"2.0","method":"notifications/progress","params":{"progressToken":"shadowcat-2","progress":1}}"#,
        );
        assert_eq!(
            &b.outbound(progress.raw().clone())[..],
            br#"{"jsonrpc":"2.0","method":"notifications/progress","params":{"progressToken":1,"progress":1}}"#
        );
        let answer = msg(r#"{"jsonrpc":"2.0","id":2,"result":{}}"#);
        assert_eq!(
            &b.outbound(answer.raw().clone())[..],
            br#"{"jsonrpc":"2.0","id":1,"result":{}}"#
        );
        // Not one of a's: left alone.
        assert_eq!(a.outbound(answer.raw().clone()), answer.raw().clone());
        // A subscription's notifications name its listen request by the client's id again.
        let changed = msg(
            r#"{"jsonrpc":"2.0","method":"notifications/tools/list_changed","params":{"_meta":{"io.modelcontextprotocol/subscriptionId":2}}}"#,
        );
        assert_eq!(
            &b.outbound(changed.raw().clone())[..],
            br#"{"jsonrpc":"2.0","method":"notifications/tools/list_changed","params":{"_meta":{"io.modelcontextprotocol/subscriptionId":1}}}"#
        );
        // Notifications pass as they are.
        let note = msg(r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#);
        assert_eq!(a.inbound(note.clone(), &next).raw(), note.raw());
    }
}
