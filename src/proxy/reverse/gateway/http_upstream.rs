//! The HTTP upstream's side of an exchange: one POST per client message (to a Streamable HTTP
//! upstream, or a 2024-11-05 HTTP+SSE one found by the back-compat probe), what its answer
//! becomes (relayed by [`super::streams`], refused, failed), and ending the upstream session.

use std::sync::{Arc, PoisonError};

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderMap, HeaderValue};

use crate::protocol::error::ProxyError;
use crate::protocol::{Direction, ErrorCode, Kind, Message, Method, RequestId};
use crate::proxy::outbox::Deliver;
use crate::session::EndReason;
use crate::transport::http::{
    HttpUpstream, MCP_SESSION_ID, UpstreamError, media_type, read_body, read_body_within,
    sse_events,
};
use crate::transport::sse::Item;

use super::super::router::{Reply, Waiter};
use super::recovery::AbandonOnDrop;
use super::streams::StreamPosition;
use super::{Gateway, LegacyUpstream, LinkUpstream, MAX_ERROR_BODY, SessionLink};
use std::sync::atomic::Ordering;

/// Whether an upstream's refusal says it no longer knows the session: 404, unless its body is
/// the 2026-07-28 HTTP binding's answer to an unknown method (404 with `-32601`), which the
/// server gives after reading the request.
pub(in crate::proxy::reverse) fn session_lost(status: http::StatusCode, body: &[u8]) -> bool {
    status == http::StatusCode::NOT_FOUND
        && !serde_json::from_slice::<serde_json::Value>(body).is_ok_and(|v| {
            v.pointer("/error/code").and_then(serde_json::Value::as_i64)
                == Some(crate::protocol::error::peer::METHOD_NOT_FOUND)
        })
}

/// Whether `msg` may be sent twice without harm, should the first try's fate be unknown.
fn safe_to_repeat(msg: &Message) -> bool {
    msg.kind() == Kind::Request
        && msg
            .method()
            .is_some_and(|m| m == &Method::Ping || m.as_str().ends_with("/list"))
}

impl Gateway {
    /// DELETEs the session at the HTTP upstream, if it gave one.
    pub(super) async fn end_upstream_session(&self, link: &SessionLink) {
        if let Some(legacy) = link.legacy() {
            // Closing its stream ends a 2024-11-05 upstream session.
            legacy.relay.abort();
            return;
        }
        let (LinkUpstream::Http { client, .. }, Some(upstream_session)) =
            (&link.upstream, link.upstream_session())
        else {
            return;
        };
        let version = link.protocol_version();
        let deleted = tokio::time::timeout(
            self.config.shutdown_timeout,
            client.delete(&upstream_session, version.as_ref()),
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
        link: &Arc<SessionLink>,
        client: &HttpUpstream,
        msg: Message,
        client_headers: &HeaderMap,
        reply: &Waiter,
    ) {
        let id = msg.request_id().cloned();
        let is_initialize = msg.method() == Some(&Method::Initialize);
        let headers = crate::protocol::headers::upstream_headers(client_headers, &msg);
        let client_headers = &headers;
        // A 2024-11-05 upstream (known from an earlier session's probe): this session gets its
        // own stream there before its initialize.
        if is_initialize && link.legacy().is_none() && self.legacy_upstream.load(Ordering::Relaxed)
        {
            if let Err(e) = self.open_legacy(link, client).await {
                tracing::warn!(%e, "cannot open the upstream's HTTP+SSE stream");
                self.metrics.upstream_error("unreachable");
                let error = ProxyError::new(
                    ErrorCode::UpstreamUnreachable,
                    format!("cannot open the upstream's HTTP+SSE stream: {e}"),
                );
                self.fail(link, id.as_ref(), &error, Some(reply)).await;
                return;
            }
        }
        if let Some(legacy) = link.legacy() {
            return self
                .post_legacy(link, client, &legacy, msg, client_headers, reply)
                .await;
        }
        self.post_streamable(link, client, msg, client_headers, reply, false)
            .await;
    }

    /// One message to a Streamable HTTP upstream (trying the back-compat probe when it refuses
    /// an initialize). If the upstream no longer knows the session (404), the session is
    /// re-established with the client's handshake and the message sent again (the upstream
    /// refused it, so it did not run); a request whose connection broke mid-way is sent again
    /// only if it is safe to repeat (`ping`, `*/list`). `retried`: this is that second try.
    async fn post_streamable(
        self: &Arc<Self>,
        link: &Arc<SessionLink>,
        client: &HttpUpstream,
        msg: Message,
        client_headers: &HeaderMap,
        reply: &Waiter,
        retried: bool,
    ) {
        // A stateless-era request (its session never initialized) can be abandoned: dropping
        // its connection is that era's cancellation (see `SessionLink::deliver`).
        let abandon = msg
            .request_id()
            .filter(|_| link.never_initialized())
            .map(|id| AbandonOnDrop::register(link, id));
        let exchange = self.post_streamable_once(link, client, msg, client_headers, reply, retried);
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
    #[allow(clippy::too_many_lines)] // One exchange, in the order things can go wrong.
    async fn post_streamable_once(
        self: &Arc<Self>,
        link: &Arc<SessionLink>,
        client: &HttpUpstream,
        msg: Message,
        client_headers: &HeaderMap,
        reply: &Waiter,
        retried: bool,
    ) {
        let id = msg.request_id().cloned();
        let is_initialize = msg.method() == Some(&Method::Initialize);
        let session = link.upstream_session();
        let response = match client
            .post(msg.raw().clone(), session.as_ref(), client_headers)
            .await
        {
            Ok(response) => response,
            Err(UpstreamError::Unreachable {
                connected: true, ..
            }) if !retried && safe_to_repeat(&msg) => {
                tracing::debug!(
                    "the connection broke mid-request; sending it again (safe to repeat)"
                );
                return Box::pin(self.post_streamable(
                    link,
                    client,
                    msg,
                    client_headers,
                    reply,
                    true,
                ))
                .await;
            }
            Err(e) => {
                let UpstreamError::Unreachable { detail, kind, .. } = &e;
                tracing::warn!(%e, kind, "upstream request failed");
                self.metrics.upstream_error("unreachable");
                let error = ProxyError::new(ErrorCode::UpstreamUnreachable, e.to_string())
                    .with("detail", detail.as_str())
                    .with("kind", *kind);
                self.fail(link, id.as_ref(), &error, Some(reply)).await;
                return;
            }
        };
        let status = response.status();
        if status.is_success() {
            if let LinkUpstream::Http {
                session_id,
                recovery,
                ..
            } = &link.upstream
            {
                if is_initialize {
                    if let Some(value) = response.headers().get(&MCP_SESSION_ID) {
                        *session_id.lock().unwrap_or_else(PoisonError::into_inner) =
                            Some(value.clone());
                    }
                    recovery
                        .handshake
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        // A copy of its own: the message's bytes may be a slice of a whole
                        // read buffer, which the session would otherwise keep alive.
                        .initialize = Message::parse(Bytes::copy_from_slice(msg.raw())).ok();
                } else if msg.method() == Some(&Method::Initialized) {
                    recovery
                        .handshake
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .initialized = true;
                }
            }
            if is_initialize {
                link.upstream_ready.cancel();
            }
        }
        if !status.is_success() {
            let content_type = response.headers().get(CONTENT_TYPE).cloned();
            let body = read_body(response.into_body(), MAX_ERROR_BODY)
                .await
                .unwrap_or_default();
            if session_lost(status, &body)
                && session.is_some()
                && !is_initialize
                && !retried
                && self.recover(link, client, session.as_ref()).await
            {
                // Refused, so not run: send it again on the new session.
                return Box::pin(self.post_streamable(
                    link,
                    client,
                    msg,
                    client_headers,
                    reply,
                    true,
                ))
                .await;
            }
            if is_initialize
                && matches!(status.as_u16(), 400 | 404 | 405)
                && self
                    .probe_legacy(link, client, &msg, client_headers, reply)
                    .await
            {
                return;
            }
            tracing::debug!(%status, "the upstream refused a message");
            self.rejected(link, id, status, content_type, body, reply)
                .await;
            return;
        }
        match media_type(response.headers()).as_deref() {
            Some("text/event-stream") => {
                let mut position = StreamPosition {
                    request: id.clone(),
                    ..StreamPosition::default()
                };
                self.relay_stream(link, response.into_body(), Some(reply), &mut position)
                    .await;
                if let Some(id) = &id {
                    self.pass_on_pause(link, id, reply, &position).await;
                    if let Some(error) = self
                        .resume_post_stream(link, client, id, reply, &mut position)
                        .await
                    {
                        self.metrics.upstream_error("unreachable");
                        self.fail(link, Some(id), &error, Some(reply)).await;
                    }
                }
            }
            Some("application/json") => {
                let body = read_body_within(
                    response.into_body(),
                    self.config.max_message_size,
                    self.reverse.read_timeout,
                );
                match body.await {
                    Ok(body) if !body.iter().all(u8::is_ascii_whitespace) => {
                        let transport = crate::tape::Transport {
                            status: Some(status.as_u16()),
                            stream: Some("post".into()),
                            event_id: None,
                        };
                        self.relay_frame(link, body, Some(reply), &transport).await;
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(%e, "the upstream's answer could not be read");
                        self.metrics.upstream_error("invalid_response");
                        let error = ProxyError::new(
                            ErrorCode::InvalidUpstreamResponse,
                            format!("the upstream's answer could not be read: {e}"),
                        );
                        self.fail(link, id.as_ref(), &error, Some(reply)).await;
                    }
                }
            }
            // 202 Accepted or another body-less success.
            _ => {}
        }
        // A request the upstream finished with without answering must not hang.
        if let Some(id) = id {
            if link
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
                self.fail(link, Some(&id), &error, Some(reply)).await;
            }
        }
    }

    /// The upstream ended request `id`'s resumable stream before the answer (a 2025-11-25
    /// server that wants its client to poll: a priming event, `retry:`, then the close): the
    /// POST is told, so the client's stream closes the same way (the gateway resumes the
    /// upstream's meanwhile). A stream that broke, or that could not be resumed (no event ids;
    /// the stateless era), is not passed on.
    async fn pass_on_pause(
        &self,
        link: &SessionLink,
        id: &RequestId,
        reply: &Waiter,
        position: &StreamPosition,
    ) {
        let resumable = position.ended
            && position.last_event_id.is_some()
            && !link.never_initialized()
            && link.session.pending(Direction::ClientToServer).contains(id);
        if resumable {
            let _ = reply
                .send(Reply::Paused {
                    retry: position.retry,
                })
                .await;
        }
    }

    /// The spec's back-compat probe, after the upstream refused an initialize with 400, 404 or
    /// 405: perhaps it is a 2024-11-05 HTTP+SSE server. If so (remembered for every later
    /// session), the initialize goes there; false if not.
    async fn probe_legacy(
        self: &Arc<Self>,
        link: &Arc<SessionLink>,
        client: &HttpUpstream,
        msg: &Message,
        client_headers: &HeaderMap,
        reply: &Waiter,
    ) -> bool {
        match self.open_legacy(link, client).await {
            Ok(legacy) => {
                self.legacy_upstream.store(true, Ordering::Relaxed);
                tracing::info!("the upstream speaks the 2024-11-05 HTTP+SSE transport");
                self.post_legacy(link, client, &legacy, msg.clone(), client_headers, reply)
                    .await;
                true
            }
            Err(e) => {
                tracing::debug!(%e, "not an HTTP+SSE upstream either");
                false
            }
        }
    }

    /// Opens this session's stream at a 2024-11-05 HTTP+SSE upstream: GET the upstream URL, wait
    /// for the `endpoint` event (within `--connect-timeout`), and relay the rest of the stream
    /// through the pipeline and the router until it ends, which ends the session.
    async fn open_legacy(
        self: &Arc<Self>,
        link: &Arc<SessionLink>,
        client: &HttpUpstream,
    ) -> Result<Arc<LegacyUpstream>, String> {
        use futures_util::StreamExt;
        let response = tokio::time::timeout(
            self.reverse.connect_timeout,
            client.get_stream(None, None, None),
        )
        .await
        .map_err(|_| "no answer to GET within --connect-timeout".to_owned())?
        .map_err(|e| e.to_string())?;
        let status = response.status();
        if !status.is_success()
            || media_type(response.headers()).as_deref() != Some("text/event-stream")
        {
            return Err(format!("GET answered HTTP {status}"));
        }
        let mut events = Box::pin(sse_events(
            response.into_body(),
            self.config.max_message_size,
        ));
        let endpoint = tokio::time::timeout(self.reverse.connect_timeout, async {
            while let Some(item) = events.next().await {
                if let Ok(Item::Event(event)) = item {
                    if event.event.as_deref() == Some("endpoint") {
                        return Some(String::from_utf8_lossy(&event.data).into_owned());
                    }
                }
            }
            None
        })
        .await
        .ok()
        .flatten()
        .ok_or("no endpoint event")?;
        let endpoint = client
            .resolve(&endpoint)
            .ok_or_else(|| format!("the endpoint {endpoint:?} is not on the upstream's origin"))?;
        let (gateway, relay_link) = (self.clone(), link.clone());
        let relay = self.tasks.spawn(async move {
            let mut position = StreamPosition::default();
            gateway
                .relay_events(&relay_link, events, None, &mut position)
                .await;
            // The stream is the upstream session: without it, the session is over.
            if gateway
                .sessions
                .end(relay_link.session.id(), EndReason::Error)
                .is_some()
            {
                tracing::warn!("the upstream closed its HTTP+SSE stream; session ended");
            }
        });
        let legacy = Arc::new(LegacyUpstream {
            endpoint,
            relay: tokio_util::task::AbortOnDropHandle::new(relay),
        });
        if let LinkUpstream::Http { legacy: slot, .. } = &link.upstream {
            *slot.lock().unwrap_or_else(PoisonError::into_inner) = Some(legacy.clone());
        }
        if link.session.closed_token().is_cancelled() {
            // The session ended while the stream was being opened, perhaps after its teardown
            // looked for it: close it here, or nothing would.
            legacy.relay.abort();
            if let LinkUpstream::Http { legacy: slot, .. } = &link.upstream {
                slot.lock().unwrap_or_else(PoisonError::into_inner).take();
            }
            return Err("the session ended".into());
        }
        Ok(legacy)
    }

    /// One message to a 2024-11-05 upstream: POSTed to its endpoint; the answer comes on the
    /// session's stream.
    async fn post_legacy(
        &self,
        link: &Arc<SessionLink>,
        client: &HttpUpstream,
        legacy: &LegacyUpstream,
        msg: Message,
        client_headers: &HeaderMap,
        reply: &Waiter,
    ) {
        let id = msg.request_id().cloned();
        match client
            .post_to(&legacy.endpoint, msg.raw().clone(), None, client_headers)
            .await
        {
            Ok(response) if response.status().is_success() => {
                let _ = read_body(response.into_body(), MAX_ERROR_BODY).await;
            }
            Ok(response) => {
                let status = response.status();
                let content_type = response.headers().get(CONTENT_TYPE).cloned();
                let body = read_body(response.into_body(), MAX_ERROR_BODY)
                    .await
                    .unwrap_or_default();
                self.rejected(link, id, status, content_type, body, reply)
                    .await;
            }
            Err(e) => {
                self.metrics.upstream_error("unreachable");
                let error = ProxyError::new(ErrorCode::UpstreamUnreachable, e.to_string());
                self.fail(link, id.as_ref(), &error, Some(reply)).await;
            }
        }
    }

    /// The upstream refused a message at the HTTP level: its request (if any) is forgotten, and
    /// the POST waiting for it gets the refusal to pass on.
    async fn rejected(
        &self,
        link: &SessionLink,
        id: Option<RequestId>,
        status: http::StatusCode,
        content_type: Option<HeaderValue>,
        body: Bytes,
        reply: &Waiter,
    ) {
        self.metrics.upstream_error("http_status");
        if let Some(id) = &id {
            link.session.pending(Direction::ClientToServer).remove(id);
        }
        let _ = reply
            .send(Reply::Rejected {
                id,
                status,
                content_type,
                body,
            })
            .await;
    }

    /// Answers request `id` (if any) with `error`, forgetting it.
    pub(super) async fn fail(
        &self,
        link: &SessionLink,
        id: Option<&RequestId>,
        error: &ProxyError,
        reply: Option<&Waiter>,
    ) {
        let Some(id) = id else { return };
        if link
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
                let _ = link.router.deliver(answer).await;
            }
        }
    }
}
