//! One message's POST to the upstream, and what its answer becomes: relayed (JSON, or an SSE
//! stream by [`super::streams`]), refused (the HTTP status passed on), failed (an error for the
//! request); the back-compat probe when an initialize is refused; the session DELETEd at the end.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderMap, HeaderValue};

use crate::protocol::error::ProxyError;
use crate::protocol::headers::MCP_SESSION_ID;
use crate::protocol::{Direction, ErrorCode, Kind, Message, Method, RequestId};
use crate::proxy::outbox::Deliver;
use crate::proxy::upstream::Rejection;
use crate::transport::http::{UpstreamError, media_type, read_body, read_body_within};

use super::recovery::AbandonOnDrop;
use super::streams::StreamPosition;
use super::{Audience, HttpSession, MAX_ERROR_BODY, Reply, ReplyTo, lock};

/// Whether an upstream's refusal says it no longer knows the session: 404, unless its body is
/// the 2026-07-28 HTTP binding's answer to an unknown method (404 with `-32601`), which the
/// server gives after reading the request.
pub fn session_lost(status: http::StatusCode, body: &[u8]) -> bool {
    status == http::StatusCode::NOT_FOUND
        && !serde_json::from_slice::<serde_json::Value>(body).is_ok_and(|v| {
            v.pointer("/error/code").and_then(serde_json::Value::as_i64)
                == Some(crate::protocol::error::peer::METHOD_NOT_FOUND)
        })
}

/// What an upstream's HTTP refusal that carries no JSON-RPC error says: the status, the start
/// of the body, and what usually causes it. A 404 before the upstream gave a session is a wrong
/// URL, not a lost session; a 401 or 403 is about credentials. The whole of it is for the log
/// and for an [`Audience::Operator`]; [`Audience::Callers`] are told the status and the body's
/// start, and that the log says why (the cause names the upstream's URL and our options).
pub fn refusal(
    status: http::StatusCode,
    body: &[u8],
    client: &crate::transport::http::HttpClient,
    had_session: bool,
) -> Refusal {
    let mut said = format!("the upstream answered HTTP {status}");
    let text = String::from_utf8_lossy(body);
    let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if !text.is_empty() {
        let cut: String = text.chars().take(300).collect();
        let more = if cut.len() < text.len() { "…" } else { "" };
        let _ = write!(said, ": {cut}{more}");
    }
    let cause = match status.as_u16() {
        404 if !had_session => format!(
            "; {} has no MCP endpoint: check the URL's path (servers usually serve /mcp)",
            client.shown()
        ),
        401 | 403 if !client.has_credentials() => "; it wants credentials: give a token with \
            --bearer-token-env VAR or --bearer-token-file FILE (docs/auth.md)"
            .to_owned(),
        401 | 403 => "; it refused the credentials sent (--bearer-token-env, --bearer-token-file, \
            an Authorization --header or the token grant)"
            .to_owned(),
        _ => String::new(),
    };
    Refusal { said, cause }
}

/// An upstream's refusal in words ([`refusal`]).
#[derive(Debug)]
pub struct Refusal {
    /// The status and the body's start.
    said: String,
    /// What usually causes it (empty: nothing to add).
    cause: String,
}

impl Refusal {
    /// All of it: for the log, and for a client who runs the proxy.
    pub fn whole(&self) -> String {
        format!("{}{}", self.said, self.cause)
    }

    /// What `audience` is told.
    pub fn for_audience(self, audience: Audience) -> String {
        match audience {
            Audience::Operator => self.whole(),
            Audience::Callers if self.cause.is_empty() => self.said,
            Audience::Callers => format!(
                "{}; the gateway's log says why (its options for the upstream)",
                self.said
            ),
        }
    }
}

/// Whether `msg` may be sent twice without harm, should the first try's fate be unknown.
fn safe_to_repeat(msg: &Message) -> bool {
    msg.kind() == Kind::Request
        && msg
            .method()
            .is_some_and(|m| m == &Method::Ping || m.as_str().ends_with("/list"))
}

impl<C: Deliver + 'static> HttpSession<C> {
    /// Ends the session at the upstream: DELETE (if it gave a session id), or, at a 2024-11-05
    /// upstream, closing its stream.
    pub async fn end(&self) {
        if let Some(legacy) = self.legacy() {
            // Closing its stream ends a 2024-11-05 upstream session.
            legacy.relay.abort();
            return;
        }
        let Some(upstream_session) = self.upstream_session() else {
            return;
        };
        let version = self.protocol_version();
        let deleted = tokio::time::timeout(
            self.backend.limits.shutdown_timeout,
            self.client().delete(&upstream_session, version.as_ref()),
        )
        .await;
        match deleted {
            Ok(Ok(status)) if status.is_success() => {
                tracing::debug!(%status, "ended the upstream session");
            }
            Ok(Ok(status)) => {
                tracing::debug!(%status, "the upstream did not end its session (it may not support DELETE)");
            }
            Ok(Err(e)) => tracing::warn!(%e, "could not end the upstream session"),
            Err(_) => tracing::warn!("the upstream did not answer DELETE in time"),
        }
    }

    /// One message to the HTTP upstream, and its answer back through the pipeline: to a
    /// Streamable HTTP upstream, or to a 2024-11-05 HTTP+SSE one (known from an earlier session's
    /// probe, or found by this initialize's).
    pub(super) async fn post_one(
        self: &Arc<Self>,
        msg: Message,
        client_headers: &HeaderMap,
        reply: &ReplyTo,
    ) {
        let id = msg.request_id().cloned();
        let is_initialize = msg.method() == Some(&Method::Initialize);
        let headers = crate::protocol::headers::upstream_headers(client_headers, &msg);
        let client_headers = &headers;
        // A 2024-11-05 upstream (known from an earlier session's probe): this session gets its
        // own stream there before its initialize.
        if is_initialize && self.legacy().is_none() && self.backend.legacy.load(Ordering::Relaxed) {
            if let Err(e) = self.open_legacy().await {
                tracing::warn!(%e, "cannot open the upstream's HTTP+SSE stream");
                self.backend.errors.count("unreachable");
                let error = ProxyError::new(
                    ErrorCode::UpstreamUnreachable,
                    format!("cannot open the upstream's HTTP+SSE stream: {e}"),
                );
                self.fail(id.as_ref(), &error, Some(reply)).await;
                return;
            }
        }
        if let Some(legacy) = self.legacy() {
            return self.post_legacy(&legacy, msg, client_headers, reply).await;
        }
        self.post_streamable(msg, client_headers, reply, false)
            .await;
    }

    /// One message to a Streamable HTTP upstream (trying the back-compat probe when it refuses
    /// an initialize). If the upstream no longer knows the session (404), the session is
    /// re-established with the client's handshake and the message sent again (the upstream
    /// refused it, so it did not run); a request whose connection broke mid-way is sent again
    /// only if it is safe to repeat (`ping`, `*/list`). `retried`: this is that second try.
    pub(super) async fn post_streamable(
        self: &Arc<Self>,
        msg: Message,
        client_headers: &HeaderMap,
        reply: &ReplyTo,
        retried: bool,
    ) {
        // A stateless-era request (its session never initialized) can be abandoned: dropping
        // its connection is that era's cancellation (see `HttpSession::deliver`).
        let abandon = msg
            .request_id()
            .filter(|_| self.never_initialized())
            .map(|id| AbandonOnDrop::register(self, id));
        let exchange = self.post_streamable_once(msg, client_headers, reply, retried);
        match &abandon {
            Some(abandon) => {
                tokio::select! {
                    () = exchange => {}
                    () = abandon.token.cancelled() => {
                        tracing::debug!("abandoned a stateless request: its connection is closed");
                    }
                }
            }
            None => exchange.await,
        }
    }

    /// [`Self::post_streamable`], without the means to abandon it.
    pub(super) async fn post_streamable_once(
        self: &Arc<Self>,
        msg: Message,
        client_headers: &HeaderMap,
        reply: &ReplyTo,
        retried: bool,
    ) {
        let id = msg.request_id().cloned();
        let is_initialize = msg.method() == Some(&Method::Initialize);
        let session = self.upstream_session();
        // With tracing on, the header says what `_meta` says: our span is the parent.
        let traced = (id.is_some() && self.backend().pipeline().is_traced())
            .then(|| crate::protocol::headers::with_trace_context(client_headers, &msg));
        let response = match self
            .client()
            .post(
                msg.raw().clone(),
                session.as_ref(),
                traced.as_ref().unwrap_or(client_headers),
            )
            .await
        {
            Ok(response) => response,
            Err(UpstreamError::Unreachable {
                connected: true, ..
            }) if !retried && safe_to_repeat(&msg) => {
                tracing::debug!(
                    "the connection broke mid-request; sending it again (safe to repeat)"
                );
                return Box::pin(self.post_streamable(msg, client_headers, reply, true)).await;
            }
            Err(e) => {
                let UpstreamError::Unreachable { detail, kind, .. } = &e;
                tracing::warn!(%e, kind, "upstream request failed");
                self.backend.errors.count("unreachable");
                let error = ProxyError::new(ErrorCode::UpstreamUnreachable, e.to_string())
                    .with("detail", detail.as_str())
                    .with("kind", *kind);
                self.fail(id.as_ref(), &error, Some(reply)).await;
                return;
            }
        };
        let status = response.status();
        if status.is_success() {
            self.accepted(&msg, response.headers());
            return self.relay_answer(id, response, reply).await;
        }
        let content_type = response.headers().get(CONTENT_TYPE).cloned();
        let body = read_body(response.into_body(), MAX_ERROR_BODY)
            .await
            .unwrap_or_default();
        if session_lost(status, &body)
            && session.is_some()
            && !is_initialize
            && !retried
            && self.recover(session.as_ref()).await
        {
            if let Some(id) = &id {
                crate::proxy::pipeline::request_event(
                    &self.session,
                    Direction::ClientToServer,
                    id,
                    "session_recovered",
                );
            }
            // Refused, so not run: send it again on the new session.
            return Box::pin(self.post_streamable(msg, client_headers, reply, true)).await;
        }
        if is_initialize
            && matches!(status.as_u16(), 400 | 404 | 405)
            && self.probe_legacy(&msg, client_headers, reply).await
        {
            return;
        }
        tracing::debug!(%status, "the upstream refused a message");
        self.rejected(id, status, content_type, body, reply).await;
    }

    /// The upstream took `msg`: an `initialize` gives the session its upstream id (from
    /// `headers`) and is kept to replay should the upstream lose the session, as is whether
    /// `notifications/initialized` followed; the GET stream may be opened from then on.
    fn accepted(&self, msg: &Message, headers: &HeaderMap) {
        match msg.method() {
            Some(Method::Initialize) => {
                if let Some(value) = headers.get(&MCP_SESSION_ID) {
                    *lock(&self.session_id) = Some(value.clone());
                }
                // A copy of its own: the message's bytes may be a slice of a whole read
                // buffer, which the session would otherwise keep alive.
                lock(&self.recovery.handshake).initialize =
                    Message::parse(Bytes::copy_from_slice(msg.raw())).ok();
                self.ready.cancel();
            }
            Some(Method::Initialized) => lock(&self.recovery.handshake).initialized = true,
            _ => {}
        }
    }

    /// The upstream's successful answer to request `id` (if any) through the pipeline: an SSE
    /// stream (resumed if it breaks before the answer), a JSON body (bounded), or nothing
    /// (202). A request it finished with without answering gets an error, so it cannot hang.
    async fn relay_answer(
        self: &Arc<Self>,
        id: Option<RequestId>,
        response: http::Response<hyper::body::Incoming>,
        reply: &ReplyTo,
    ) {
        let status = response.status();
        match media_type(response.headers()).as_deref() {
            Some("text/event-stream") => {
                let mut position = StreamPosition {
                    request: id.clone(),
                    ..StreamPosition::default()
                };
                self.relay_stream(response.into_body(), Some(reply), &mut position)
                    .await;
                if let Some(id) = &id {
                    self.pass_on_pause(id, reply, &position).await;
                    if let Some(error) = self.resume_post_stream(id, reply, &mut position).await {
                        self.backend.errors.count("unreachable");
                        self.fail(Some(id), &error, Some(reply)).await;
                    }
                }
            }
            Some("application/json") => {
                let body = read_body_within(
                    response.into_body(),
                    self.backend.limits.max_message_size,
                    self.backend.limits.read_timeout,
                );
                match body.await {
                    Ok(body) if !body.iter().all(u8::is_ascii_whitespace) => {
                        let wire = crate::tape::Wire {
                            status: Some(status.as_u16()),
                            stream: Some("post".into()),
                            event_id: None,
                        };
                        self.relay_frame(body, Some(reply), &wire).await;
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(%e, "the upstream's answer could not be read");
                        self.backend.errors.count("invalid_response");
                        let error = ProxyError::new(
                            ErrorCode::InvalidUpstreamResponse,
                            format!("the upstream's answer could not be read: {e}"),
                        );
                        self.fail(id.as_ref(), &error, Some(reply)).await;
                    }
                }
            }
            // 202 Accepted or another body-less success.
            _ => {}
        }
        let Some(id) = id else { return };
        if self
            .session
            .pending(Direction::ClientToServer)
            .contains(&id)
        {
            let error = ProxyError::new(
                ErrorCode::InvalidUpstreamResponse,
                format!(
                    "the upstream answered HTTP {status} without a JSON-RPC response to the request"
                ),
            );
            self.fail(Some(&id), &error, Some(reply)).await;
        }
    }

    /// The upstream ended request `id`'s resumable stream before the answer (a 2025-11-25
    /// server that wants its client to poll: a priming event, `retry:`, then the close): the
    /// POST is told, so the client's stream closes the same way (the gateway resumes the
    /// upstream's meanwhile). A stream that broke, or that could not be resumed (no event ids;
    /// the stateless era), is not passed on.
    pub(super) async fn pass_on_pause(
        &self,
        id: &RequestId,
        reply: &ReplyTo,
        position: &StreamPosition,
    ) {
        let resumable = position.ended
            && position.last_event_id.is_some()
            && !self.never_initialized()
            && self.session.pending(Direction::ClientToServer).contains(id);
        if resumable {
            let _ = reply
                .send(Reply::Paused {
                    retry: position.retry,
                })
                .await;
        }
    }

    /// The upstream refused a message at the HTTP level: its request (if any) is forgotten, and
    /// the POST waiting for it gets the refusal to pass on.
    pub(super) async fn rejected(
        &self,
        id: Option<RequestId>,
        status: http::StatusCode,
        content_type: Option<HeaderValue>,
        body: Bytes,
        reply: &ReplyTo,
    ) {
        self.backend.errors.count("http_status");
        if let Some(id) = &id {
            self.session.pending(Direction::ClientToServer).remove(id);
        }
        let had_session = self.upstream_session().is_some();
        let refused = refusal(status, &body, self.backend.client(), had_session);
        if matches!(status.as_u16(), 401 | 403 | 404) {
            tracing::warn!(session = %self.session.id().digest(), "{}", refused.whole());
        }
        let lost = session_lost(status, &body);
        let rejection = Rejection {
            status,
            content_type,
            body,
            said: refused.for_audience(self.backend.audience),
        };
        let _ = reply
            .send(Reply::Rejected {
                id,
                rejection,
                lost,
            })
            .await;
    }

    /// Answers request `id` (if any) with `error`, forgetting it.
    pub(super) async fn fail(
        &self,
        id: Option<&RequestId>,
        error: &ProxyError,
        reply: Option<&ReplyTo>,
    ) {
        let Some(id) = id else { return };
        if self
            .session
            .pending(Direction::ClientToServer)
            .remove(id)
            .is_none()
        {
            return;
        }
        let answer = Message::error_response(Some(id), error);
        match reply {
            Some(reply) => {
                let _ = reply.send(Reply::Message(answer)).await;
            }
            None => {
                let _ = self.to_client.deliver(answer).await;
            }
        }
    }
}
