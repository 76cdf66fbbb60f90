//! Session tracking: the first stage. Every message counts towards its session (frames, last
//! activity, LRU position), every forwarded request is remembered until its answer passes back,
//! and the `initialize` exchange is read into the session's metadata.
//!
//! Request tracking is what lets the proxy answer in-flight requests when a peer dies, drop
//! answers nobody asked for, and route server→client requests (sampling, elicitation,
//! roots/list) and their responses as faithfully as client→server ones: the logic is the same in
//! both directions. The `initialize` answer is recognised by the method of the request it
//! answers (from the pending table), never by the shape of the response.

use std::sync::Arc;

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::protocol::error::ProxyError;
use crate::protocol::message::TokenError;
use crate::protocol::{Direction, ErrorCode, Kind, Message, Method};
use crate::session::{
    Declared, Pending, PendingError, PendingScope, Session, SessionManager, State,
};
use crate::telemetry::Metrics;

use crate::stage::{Context, Verdict};

/// The session-tracking stage.
#[derive(Debug)]
pub struct RequestTracker {
    metrics: Arc<Metrics>,
    sessions: Arc<SessionManager>,
}

impl RequestTracker {
    /// A tracker that counts into `metrics` and touches sessions in `sessions`.
    pub fn new(metrics: Arc<Metrics>, sessions: Arc<SessionManager>) -> Self {
        Self { metrics, sessions }
    }

    /// Tracks `msg`; with the verdict, for a response, the request it answers (taken from the
    /// pending table).
    pub fn track(&self, msg: Message, cx: Context<'_>) -> (Verdict, Option<Pending>) {
        let mut answers = None;
        let verdict = self.track_message(msg, cx, &mut answers);
        (verdict, answers)
    }

    fn track_message(
        &self,
        msg: Message,
        cx: Context<'_>,
        answers: &mut Option<Pending>,
    ) -> Verdict {
        cx.session.record_frame(cx.direction);
        self.sessions.touch(cx.session);
        match msg.kind() {
            Kind::Request => {
                let (Some(id), Some(method)) = (msg.id(), msg.method()) else {
                    return Verdict::Forward(msg);
                };
                if matches!(cx.session.state(), State::Closing | State::Closed(_)) {
                    let error = ProxyError::new(
                        ErrorCode::ShuttingDown,
                        format!(
                            "the session is {}; no new requests are forwarded",
                            cx.session.state()
                        ),
                    );
                    return Verdict::Respond(Message::error_response(Some(id), &error));
                }
                // Progress notifications for it keep it from timing out. A token too long to
                // keep is refused; one in params that cannot be read is left to the stages that
                // read params (and refuse what they cannot read).
                let token = match msg.read_progress_token("/params/_meta/progressToken") {
                    Ok(token) => token,
                    Err(TokenError::Unreadable) => None,
                    Err(e @ TokenError::TooLong) => {
                        let error = ProxyError::new(
                            ErrorCode::InvalidRequest,
                            format!("Invalid Request: {e}"),
                        );
                        return Verdict::Respond(Message::error_response(Some(id), &error));
                    }
                };
                if cx.direction == Direction::ServerToClient && cx.session.roams() {
                    // Its answer may reach the server through another instance of the
                    // cluster, unseen here: not held here, where it would wait for ever.
                    return Verdict::Forward(msg);
                }
                match cx.session.pending(cx.direction).insert_with_token(
                    id.clone(),
                    method.clone(),
                    token,
                ) {
                    Ok(()) => {
                        if *method == Method::Initialize
                            && cx.direction == Direction::ClientToServer
                        {
                            read_initialize_request(cx.session, &msg);
                        }
                        Verdict::Forward(msg)
                    }
                    Err(e) => {
                        if matches!(e, PendingError::Full { .. }) {
                            self.sessions.refused_request();
                        }
                        Verdict::Respond(Message::error_response(
                            Some(id),
                            &refusal(e, cx.direction),
                        ))
                    }
                }
            }
            Kind::Notification => {
                if msg.method() == Some(&Method::Progress) {
                    if let Some(token) = msg.progress_token("/params/progressToken") {
                        cx.session
                            .pending(cx.direction.reverse())
                            .progressed(&token);
                    }
                }
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
                let Some(request) = cx.session.pending(cx.direction.reverse()).remove(id) else {
                    if cx.direction == Direction::ClientToServer && cx.session.roams() {
                        // The server's request may have reached the client through another
                        // instance of the cluster: the server matches the answer itself.
                        return Verdict::Forward(msg);
                    }
                    self.metrics.unmatched_response(cx.direction);
                    tracing::warn!(direction = cx.direction.as_str(), %id, "dropping a response to no pending request");
                    return Verdict::Drop;
                };
                if cx.direction == Direction::ServerToClient && msg.kind() == Kind::Response {
                    if request.method == Method::Initialize {
                        read_initialize_result(cx.session, &msg);
                    }
                    // The first successful answer makes the session active: after `initialize`,
                    // or for eras without one, after whatever came first.
                    if cx.session.state() == State::Initializing {
                        self.sessions.activate(cx.session);
                    }
                }
                *answers = Some(request);
                Verdict::Forward(msg)
            }
        }
    }
}

/// The parts of `initialize` (params or result) the session keeps. Parsed only for this message.
#[derive(Deserialize)]
struct InitializeParts<'a> {
    #[serde(rename = "protocolVersion")]
    protocol_version: Option<String>,
    #[serde(rename = "clientInfo")]
    #[serde(borrow)]
    client_info: Option<&'a RawValue>,
    #[serde(rename = "serverInfo")]
    #[serde(borrow)]
    server_info: Option<&'a RawValue>,
    #[serde(borrow)]
    capabilities: Option<&'a RawValue>,
    #[serde(borrow, rename = "_meta", default)]
    _meta: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow)]
    params: Option<InitializeParts<'a>>,
    #[serde(borrow)]
    result: Option<InitializeParts<'a>>,
}

fn initialize_parts(msg: &Message) -> Option<InitializeParts<'_>> {
    let env: Envelope<'_> = serde_json::from_slice(msg.raw()).ok()?;
    env.params.or(env.result)
}

fn read_initialize_request(session: &Session, msg: &Message) {
    if let Some(parts) = initialize_parts(msg) {
        session.update_metadata(|m| {
            m.protocol_version = parts.protocol_version.or(m.protocol_version.take());
            m.client_info = parts.client_info.map(Declared::bounded);
            m.client_capabilities = parts.capabilities.map(Declared::bounded);
        });
    }
}

fn read_initialize_result(session: &Session, msg: &Message) {
    if let Some(parts) = initialize_parts(msg) {
        session.update_metadata(|m| {
            m.protocol_version = parts.protocol_version.or(m.protocol_version.take());
            m.server_info = parts.server_info.map(Declared::bounded);
            m.server_capabilities = parts.capabilities.map(Declared::bounded);
        });
    }
}

/// The error a sender gets when its request cannot be tracked.
fn refusal(e: PendingError, direction: Direction) -> ProxyError {
    match e {
        PendingError::Duplicate => ProxyError::new(
            ErrorCode::DuplicateRequestId,
            "a request with this id is already awaiting its answer; ids must be unique among outstanding requests",
        ),
        PendingError::Full { limit, scope } => {
            let (scope, flag) = match scope {
                PendingScope::Session => ("session", "--max-pending-requests"),
                PendingScope::Total => ("total", "--max-pending-total"),
            };
            ProxyError::new(
                ErrorCode::TooManyPendingRequests,
                format!("too many requests awaiting an answer (limit {limit} per {scope}, {flag})"),
            )
            .with("limit", limit)
            .with("scope", scope)
        }
        PendingError::TokenInUse => ProxyError::new(
            ErrorCode::InvalidRequest,
            "Invalid Request: its progressToken is already used by an outstanding request; tokens must be unique among active requests",
        ),
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
    use crate::session::{Session, SessionConfig, TransportKind};

    fn msg(s: &str) -> Message {
        Message::parse(Bytes::copy_from_slice(s.as_bytes())).unwrap()
    }

    fn run(tracker: &RequestTracker, session: &Session, direction: Direction, m: &str) -> Verdict {
        tracker
            .track(
                msg(m),
                Context {
                    direction,
                    session,
                    transport: &crate::tape::Wire::NONE,
                    client: crate::stage::Client::Local,
                    header_trace: None,
                    notes: None,
                },
            )
            .0
    }

    #[test]
    fn correlates_in_both_directions() {
        let tracker = RequestTracker::new(
            Arc::default(),
            SessionManager::new(SessionConfig::default(), None),
        );
        let session = Session::standalone(TransportKind::Stdio, 8);
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
        let tracker = RequestTracker::new(
            Arc::default(),
            SessionManager::new(SessionConfig::default(), None),
        );
        let session = Session::standalone(TransportKind::Stdio, 1);
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
        let tracker = RequestTracker::new(
            Arc::default(),
            SessionManager::new(SessionConfig::default(), None),
        );
        let session = Session::standalone(TransportKind::Stdio, 8);
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

    #[test]
    fn reads_the_initialize_exchange_and_activates_the_session() {
        let tracker = RequestTracker::new(
            Arc::default(),
            SessionManager::new(SessionConfig::default(), None),
        );
        let session = Session::standalone(TransportKind::Stdio, 8);
        run(
            &tracker,
            &session,
            Direction::ClientToServer,
            r#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{"sampling":{}},"clientInfo":{"name":"ide","version":"9"}}}"#,
        );
        assert_eq!(session.state(), State::Initializing);
        // A response shaped like an initialize result, to another request, is not read as one.
        run(
            &tracker,
            &session,
            Direction::ClientToServer,
            r#"{"jsonrpc":"2.0","id":5,"method":"x/y"}"#,
        );
        run(
            &tracker,
            &session,
            Direction::ServerToClient,
            r#"{"jsonrpc":"2.0","id":5,"result":{"protocolVersion":"bogus","serverInfo":{"name":"liar"}}}"#,
        );
        assert_eq!(session.metadata().server_info, None);
        run(
            &tracker,
            &session,
            Direction::ServerToClient,
            r#"{"jsonrpc":"2.0","id":0,"result":{"protocolVersion":"2025-03-26","capabilities":{"tools":{}},"serverInfo":{"name":"srv","version":"1"}}}"#,
        );
        let meta = session.metadata();
        assert_eq!(meta.protocol_version.as_deref(), Some("2025-03-26"));
        let tree = |d: Option<Declared>| d.map(|d| d.to_value());
        assert_eq!(
            tree(meta.client_info),
            Some(serde_json::json!({"name":"ide","version":"9"}))
        );
        assert_eq!(
            tree(meta.server_info),
            Some(serde_json::json!({"name":"srv","version":"1"}))
        );
        assert_eq!(
            tree(meta.client_capabilities),
            Some(serde_json::json!({"sampling":{}}))
        );
        assert_eq!(session.frames(Direction::ClientToServer), 2);
        assert_eq!(session.frames(Direction::ServerToClient), 2);
    }

    #[test]
    fn a_closing_session_forwards_no_new_requests() {
        let sessions = SessionManager::new(SessionConfig::default(), None);
        let tracker = RequestTracker::new(Arc::default(), sessions.clone());
        let session = sessions.create(TransportKind::Stdio, None).unwrap();
        // A call in flight when the session starts closing.
        assert!(matches!(
            run(
                &tracker,
                &session,
                Direction::ClientToServer,
                r#"{"jsonrpc":"2.0","id":4,"method":"tools/call"}"#
            ),
            Verdict::Forward(_)
        ));
        sessions.begin_closing(&session);
        let Verdict::Respond(answer) = run(
            &tracker,
            &session,
            Direction::ServerToClient,
            r#"{"jsonrpc":"2.0","id":9,"method":"roots/list"}"#,
        ) else {
            panic!("a request was forwarded while closing")
        };
        assert!(
            std::str::from_utf8(answer.raw())
                .unwrap()
                .contains("-32085")
        );
        // Answers to what is already in flight still pass.
        assert!(session.pending(Direction::ServerToClient).is_empty());
        assert!(matches!(
            run(
                &tracker,
                &session,
                Direction::ServerToClient,
                r#"{"jsonrpc":"2.0","id":4,"result":{}}"#
            ),
            Verdict::Forward(_)
        ));
        assert!(session.pending(Direction::ClientToServer).is_empty());
    }
}
