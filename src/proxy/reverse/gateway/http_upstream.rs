//! The HTTP upstream's side of an exchange: one POST per client message, and its answer (a JSON
//! body or an SSE stream, bounded by `--max-message-size`) back through the pipeline to the
//! session's router or the POST's own stream.

use std::sync::{Arc, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderMap, HeaderValue};
use hyper::body::Incoming;
use tokio::sync::mpsc;

use crate::protocol::error::ProxyError;
use crate::protocol::{Direction, ErrorCode, Frame, Kind, Message, Method, RequestId};
use crate::proxy::outbox::Deliver;
use crate::proxy::pipeline::{Context, Verdict};
use crate::proxy::tracker::receiver_gone;
use crate::transport::http::{
    HttpUpstream, MCP_SESSION_ID, UpstreamError, media_type, read_body, sse_events,
};
use crate::transport::sse::Item;

/// Where an upstream SSE stream got to, for reconnecting to it.
#[derive(Debug, Default)]
pub(super) struct StreamPosition {
    /// The last event id the upstream sent.
    pub(super) last_event_id: Option<HeaderValue>,
    /// The reconnection delay the upstream asked for.
    pub(super) retry: Option<Duration>,
}

use super::super::router::{Reply, Waiter};
use super::{Gateway, LinkUpstream, MAX_ERROR_BODY, SessionLink};

impl Gateway {
    /// One message to the HTTP upstream, and its answer back through the pipeline.
    pub(super) async fn post_one(
        &self,
        link: &Arc<SessionLink>,
        client: &HttpUpstream,
        msg: Message,
        client_headers: &HeaderMap,
        reply: &Waiter,
    ) {
        let id = (msg.kind() == Kind::Request)
            .then(|| msg.id().cloned())
            .flatten();
        let is_initialize = msg.method() == Some(&Method::Initialize);
        let session = link.upstream_session();
        let response = match client
            .post(msg.raw().clone(), session.as_ref(), client_headers)
            .await
        {
            Ok(response) => response,
            Err(e) => {
                let UpstreamError::Unreachable { detail, .. } = &e;
                tracing::warn!(%e, "upstream request failed");
                self.metrics.upstream_error("unreachable");
                let error = ProxyError::new(ErrorCode::UpstreamUnreachable, e.to_string())
                    .with("detail", detail.as_str());
                self.fail(link, id.as_ref(), &error, Some(reply)).await;
                return;
            }
        };
        let status = response.status();
        if is_initialize && status.is_success() {
            if let (Some(value), LinkUpstream::Http { session_id, .. }) =
                (response.headers().get(&MCP_SESSION_ID), &link.upstream)
            {
                *session_id.lock().unwrap_or_else(PoisonError::into_inner) = Some(value.clone());
            }
            link.upstream_ready.cancel();
        }
        if !status.is_success() {
            let content_type = response.headers().get(CONTENT_TYPE).cloned();
            let body = read_body(response.into_body(), MAX_ERROR_BODY)
                .await
                .unwrap_or_default();
            tracing::debug!(%status, "the upstream refused a message");
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
            return;
        }
        match media_type(response.headers()).as_deref() {
            Some("text/event-stream") => {
                let mut position = StreamPosition::default();
                self.relay_stream(link, response.into_body(), Some(reply), &mut position)
                    .await;
            }
            Some("application/json") => {
                match read_body(response.into_body(), self.config.max_message_size).await {
                    Ok(body) if !body.iter().all(u8::is_ascii_whitespace) => {
                        self.relay_frame(link, body, Some(reply)).await;
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

    /// Answers request `id` (if any) with `error`, forgetting it.
    async fn fail(
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

    /// Relays an upstream SSE stream: a POST's answer (`reply`: its messages stay on that POST's
    /// stream), or the upstream's GET stream (`None`: everything goes through the router).
    /// `position` keeps the last event id and the server's `retry:` for reconnecting.
    pub(super) async fn relay_stream(
        &self,
        link: &Arc<SessionLink>,
        body: Incoming,
        reply: Option<&Waiter>,
        position: &mut StreamPosition,
    ) {
        use futures_util::StreamExt;
        let mut events = std::pin::pin!(sse_events(body, self.config.max_message_size));
        while let Some(item) = events.next().await {
            if let Ok(Item::Event(event)) = &item {
                if let Some(id) = &event.id {
                    position.last_event_id = HeaderValue::from_str(id).ok();
                }
                if let Some(ms) = event.retry {
                    position.retry = Some(Duration::from_millis(ms));
                }
            }
            match item {
                Ok(Item::Event(event)) if event.is_message() => {
                    self.relay_frame(link, event.data, reply).await;
                }
                Ok(Item::Event(_)) => {}
                Ok(Item::TooLarge { len }) => {
                    self.pipeline.metrics().oversized(Direction::ServerToClient);
                    tracing::warn!(
                        len,
                        limit = self.config.max_message_size,
                        "discarded an over-long event from the upstream"
                    );
                }
                Err(e) => {
                    tracing::warn!(%e, "the upstream's event stream broke");
                    break;
                }
            }
            if reply.is_some_and(Waiter::is_closed) {
                // The client has gone; dropping the stream disconnects (it does not cancel).
                break;
            }
        }
    }

    /// One frame (a message or a batch) from the HTTP upstream, through the pipeline.
    async fn relay_frame(&self, link: &Arc<SessionLink>, body: Bytes, reply: Option<&Waiter>) {
        let members = match Message::parse_frame(body.clone()) {
            Ok(Frame::Single(msg)) => vec![Ok(msg)],
            Ok(Frame::Batch(members)) => members,
            Err(e) => vec![Err(e)],
        };
        for member in members {
            let msg = match member {
                Ok(msg) => msg,
                Err(e) => {
                    self.pipeline.metrics().malformed(Direction::ServerToClient);
                    self.metrics.upstream_error("invalid_response");
                    let preview =
                        String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
                    tracing::warn!(%e, %preview, "malformed message from the upstream; not forwarded");
                    if let Some(id) = e.id() {
                        let error = ProxyError::new(
                            ErrorCode::InvalidUpstreamResponse,
                            format!("the MCP server's response was not valid JSON-RPC: {e}"),
                        );
                        self.fail(link, Some(id), &error, reply).await;
                    }
                    continue;
                }
            };
            let cx = Context {
                direction: Direction::ServerToClient,
                session: &link.session,
            };
            match self.pipeline.process(msg, cx).await {
                Verdict::Forward(msg) => {
                    self.pipeline.metrics().forwarded(Direction::ServerToClient);
                    let Some(reply) = reply.filter(|_| !msg.is_response()) else {
                        let _ = link.router.deliver(msg).await;
                        continue;
                    };
                    if let Err(mpsc::error::SendError(Reply::Message(msg))) =
                        reply.send(Reply::Message(msg)).await
                    {
                        // The client has gone: a request from the server is answered, so it
                        // doesn't wait for it.
                        if let (Some(id), Kind::Request) = (msg.id(), msg.kind()) {
                            link.session.pending(Direction::ServerToClient).remove(id);
                            let error = receiver_gone(Direction::ServerToClient);
                            let _ = link
                                .deliver(Message::error_response(Some(id), &error))
                                .await;
                        }
                    }
                }
                Verdict::Respond(answer) => {
                    self.pipeline
                        .metrics()
                        .answered_by_proxy(Direction::ServerToClient);
                    let _ = link.deliver(answer).await;
                }
                Verdict::Drop => {}
            }
        }
    }
}
