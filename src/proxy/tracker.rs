//! Request tracking: every forwarded request is remembered until its answer passes back.
//!
//! This is what lets the proxy answer in-flight requests when a peer dies, drop answers nobody
//! asked for, and route server→client requests (sampling, elicitation, roots/list) and their
//! responses as faithfully as client→server ones: the logic is the same in both directions.

use std::future::Future;
use std::sync::Arc;

use crate::protocol::error::ProxyError;
use crate::protocol::{Direction, ErrorCode, Kind, Message, Method};
use crate::session::PendingError;
use crate::telemetry::Metrics;

use super::pipeline::{Context, Stage, Verdict};

/// The request-tracking stage.
#[derive(Debug)]
pub struct RequestTracker {
    metrics: Arc<Metrics>,
}

impl RequestTracker {
    /// A tracker that counts into `metrics`.
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self { metrics }
    }

    fn track(&self, msg: Message, cx: Context<'_>) -> Verdict {
        match msg.kind() {
            Kind::Request => {
                let (Some(id), Some(method)) = (msg.id(), msg.method()) else {
                    return Verdict::Forward(msg);
                };
                match cx
                    .session
                    .pending(cx.direction)
                    .insert(id.clone(), method.clone())
                {
                    Ok(()) => Verdict::Forward(msg),
                    Err(e) => Verdict::Respond(Message::error_response(
                        Some(id),
                        &refusal(e, cx.direction),
                    )),
                }
            }
            Kind::Notification => {
                if msg.method() == Some(&Method::Cancelled) {
                    // The request is over for its sender; its late answer will be dropped.
                    if let Some(id) = msg.cancelled_request_id() {
                        cx.session.pending(cx.direction).remove(&id);
                    }
                }
                Verdict::Forward(msg)
            }
            Kind::Response | Kind::Error => {
                let Some(id) = msg.id() else {
                    // An error with `id: null` answers a message that could not be parsed.
                    return Verdict::Forward(msg);
                };
                if cx
                    .session
                    .pending(cx.direction.reverse())
                    .remove(id)
                    .is_some()
                {
                    Verdict::Forward(msg)
                } else {
                    self.metrics.unmatched_response(cx.direction);
                    tracing::warn!(direction = cx.direction.as_str(), %id, "dropping a response to no pending request");
                    Verdict::Drop
                }
            }
        }
    }
}

impl Stage for RequestTracker {
    fn process(&self, msg: Message, cx: Context<'_>) -> impl Future<Output = Verdict> + Send {
        std::future::ready(self.track(msg, cx))
    }
}

/// The error a sender gets when its request cannot be tracked.
fn refusal(e: PendingError, direction: Direction) -> ProxyError {
    match e {
        PendingError::Duplicate => ProxyError::new(
            ErrorCode::DuplicateRequestId,
            "a request with this id is already awaiting its answer; ids must be unique among outstanding requests",
        ),
        PendingError::Full(limit) => ProxyError::new(
            ErrorCode::TooManyPendingRequests,
            format!("too many requests awaiting an answer (limit {limit})"),
        )
        .with("limit", limit),
        PendingError::Closed => receiver_gone(direction),
    }
}

/// The error a request travelling in `direction` gets when its receiver is gone.
pub fn receiver_gone(direction: Direction) -> ProxyError {
    match direction {
        Direction::ClientToServer => ProxyError::new(
            ErrorCode::UpstreamExited,
            "the MCP server is no longer running",
        ),
        Direction::ServerToClient => {
            ProxyError::new(ErrorCode::ShuttingDown, "the MCP client has disconnected")
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::protocol::RequestId;
    use crate::session::{Session, TransportKind};

    fn msg(s: &str) -> Message {
        Message::parse(Bytes::copy_from_slice(s.as_bytes())).unwrap()
    }

    fn run(tracker: &RequestTracker, session: &Session, direction: Direction, m: &str) -> Verdict {
        tracker.track(msg(m), Context { direction, session })
    }

    #[test]
    fn correlates_in_both_directions() {
        let tracker = RequestTracker::new(Arc::default());
        let session = Session::new(TransportKind::Stdio, 8);
        let c2s = Direction::ClientToServer;
        let s2c = Direction::ServerToClient;
        assert!(matches!(
            run(
                &tracker,
                &session,
                c2s,
                r#"{"jsonrpc":"2.0","id":1,"method":"tools/call"}"#
            ),
            Verdict::Forward(_)
        ));
        assert!(matches!(
            run(
                &tracker,
                &session,
                s2c,
                r#"{"jsonrpc":"2.0","id":1,"method":"sampling/createMessage"}"#
            ),
            Verdict::Forward(_)
        ));
        assert_eq!(session.pending(c2s).len(), 1);
        assert_eq!(session.pending(s2c).len(), 1);
        // The client answers the server's request 1; the server answers the client's request 1.
        assert!(matches!(
            run(
                &tracker,
                &session,
                c2s,
                r#"{"jsonrpc":"2.0","id":1,"result":{}}"#
            ),
            Verdict::Forward(_)
        ));
        assert!(session.pending(s2c).is_empty());
        assert!(matches!(
            run(
                &tracker,
                &session,
                s2c,
                r#"{"jsonrpc":"2.0","id":1,"result":{}}"#
            ),
            Verdict::Forward(_)
        ));
        assert!(session.pending(c2s).is_empty());
        // A second answer has nobody waiting for it.
        assert!(matches!(
            run(
                &tracker,
                &session,
                s2c,
                r#"{"jsonrpc":"2.0","id":1,"result":{}}"#
            ),
            Verdict::Drop
        ));
        assert_eq!(tracker.metrics.snapshot().unmatched_responses, 1);
    }

    #[test]
    fn refuses_duplicates_and_overflow_with_errors_to_the_sender() {
        let tracker = RequestTracker::new(Arc::default());
        let session = Session::new(TransportKind::Stdio, 1);
        let c2s = Direction::ClientToServer;
        run(
            &tracker,
            &session,
            c2s,
            r#"{"jsonrpc":"2.0","id":"a","method":"ping"}"#,
        );
        let Verdict::Respond(dup) = run(
            &tracker,
            &session,
            c2s,
            r#"{"jsonrpc":"2.0","id":"a","method":"ping"}"#,
        ) else {
            panic!()
        };
        assert!(std::str::from_utf8(dup.raw()).unwrap().contains("-32084"));
        let Verdict::Respond(full) = run(
            &tracker,
            &session,
            c2s,
            r#"{"jsonrpc":"2.0","id":"b","method":"ping"}"#,
        ) else {
            panic!()
        };
        assert!(std::str::from_utf8(full.raw()).unwrap().contains("-32083"));
        assert_eq!(full.id(), Some(&RequestId::from("b")));
    }

    #[test]
    fn cancellation_forgets_the_request() {
        let tracker = RequestTracker::new(Arc::default());
        let session = Session::new(TransportKind::Stdio, 8);
        let c2s = Direction::ClientToServer;
        run(
            &tracker,
            &session,
            c2s,
            r#"{"jsonrpc":"2.0","id":5,"method":"tools/call"}"#,
        );
        run(
            &tracker,
            &session,
            c2s,
            r#"{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":5}}"#,
        );
        assert!(session.pending(c2s).is_empty());
        assert!(matches!(
            run(
                &tracker,
                &session,
                Direction::ServerToClient,
                r#"{"jsonrpc":"2.0","id":5,"result":{}}"#
            ),
            Verdict::Drop
        ));
    }
}
