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
    /// The request whose answer this stream carries (a POST's), if any: once it is no longer
    /// pending (answered, timed out, cancelled), the stream is closed, which in the 2026-07-28
    /// era is how a request is cancelled.
    pub(super) request: Option<RequestId>,
}

use super::super::router::{Reply, Waiter};
use super::recovery::AbandonOnDrop;

/// Whether `msg` may be sent twice without harm, should the first try's fate be unknown.
fn safe_to_repeat(msg: &Message) -> bool {
    msg.kind() == Kind::Request
        && msg
            .method()
            .is_some_and(|m| m == &Method::Ping || m.as_str().ends_with("/list"))
}
use super::{
    Gateway, LegacyUpstream, LinkUpstream, MAX_ERROR_BODY, POST_STREAM_RESUMES, SessionLink,
    UPSTREAM_GET_ATTEMPTS,
};
use crate::session::EndReason;
use crate::transport::backoff::Backoff;
use std::sync::atomic::Ordering;

impl Gateway {
    /// Relays the HTTP upstream's GET stream for `link` (the watcher starts this once the
    /// upstream session exists and the client has opened its own GET stream): its messages go
    /// through the pipeline and the router (to our GET stream, or the POST they belong to).
    /// A dropped (or silent past `--read-timeout`) stream is reconnected with exponential backoff
    /// and full jitter, never sooner than the upstream's `retry:`, resuming with `Last-Event-ID`
    /// (the stream's [`StreamPosition`] is the one record of where it got to). Network errors and
    /// 5xx are retried for as long as the session lasts; the upstream offering no GET stream
    /// (405) ends this at once, and [`UPSTREAM_GET_ATTEMPTS`] other refusals in a row too.
    pub(super) async fn listen_upstream(&self, link: &Arc<SessionLink>) {
        let LinkUpstream::Http { client, .. } = &link.upstream else {
            return;
        };
        // However this ends, nobody waits for it any more.
        let _listens = link.upstream_listens.clone().drop_guard();
        if link.legacy().is_some() {
            // A 2024-11-05 upstream's one stream is already relayed; a GET would open another
            // session there.
            return;
        }
        let mut position = StreamPosition::default();
        let mut backoff = Backoff::default();
        let mut refusals = 0;
        loop {
            let session = link.upstream_session();
            let version = link.protocol_version();
            match client
                .get_stream(
                    session.as_ref(),
                    version.as_ref(),
                    position.last_event_id.as_ref(),
                )
                .await
            {
                Ok(response)
                    if response.status().is_success()
                        && media_type(response.headers()).as_deref()
                            == Some("text/event-stream") =>
                {
                    if backoff.failures() > 0 {
                        tracing::info!(last_event_id = ?position.last_event_id, "reconnected to the upstream's GET stream");
                    }
                    backoff.reset();
                    refusals = 0;
                    link.upstream_listens.cancel();
                    tracing::debug!("relaying the upstream's GET stream");
                    self.relay_stream(link, response.into_body(), None, &mut position)
                        .await;
                    tracing::debug!(last_event_id = ?position.last_event_id, "the upstream's GET stream ended; reconnecting");
                }
                Ok(response) if response.status() == http::StatusCode::METHOD_NOT_ALLOWED => {
                    tracing::debug!("the upstream offers no GET stream");
                    return;
                }
                Ok(response)
                    if response.status() == http::StatusCode::NOT_FOUND
                        && session.is_some()
                        && self.recover(link, client, session.as_ref()).await =>
                {
                    // The upstream lost the session; it is back under a new id: listen there.
                    position = StreamPosition::default();
                    continue;
                }
                Ok(response) if response.status().is_client_error() => {
                    refusals += 1;
                    tracing::debug!(status = %response.status(), "the upstream refused its GET stream");
                    if refusals >= UPSTREAM_GET_ATTEMPTS {
                        tracing::warn!(status = %response.status(), "gave up on the upstream's GET stream");
                        return;
                    }
                }
                Ok(response) => {
                    tracing::debug!(status = %response.status(), "the upstream could not open its GET stream");
                }
                Err(e) => {
                    if backoff.failures() == 0 {
                        tracing::warn!(%e, "could not reconnect to the upstream's GET stream; retrying with backoff");
                    } else {
                        tracing::debug!(%e, failures = backoff.failures(), "could not reconnect to the upstream's GET stream");
                    }
                }
            }
            tokio::time::sleep(backoff.next_delay(position.retry)).await;
        }
    }

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
        let id = (msg.kind() == Kind::Request)
            .then(|| msg.id().cloned())
            .flatten();
        let is_initialize = msg.method() == Some(&Method::Initialize);
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
            .id()
            .filter(|_| msg.kind() == Kind::Request && link.never_initialized())
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
        if status == http::StatusCode::NOT_FOUND
            && session.is_some()
            && !is_initialize
            && !retried
            && self.recover(link, client, session.as_ref()).await
        {
            // Refused, so not run: send it again on the new session.
            return Box::pin(self.post_streamable(link, client, msg, client_headers, reply, true))
                .await;
        }
        if !status.is_success() {
            let content_type = response.headers().get(CONTENT_TYPE).cloned();
            let body = read_body(response.into_body(), MAX_ERROR_BODY)
                .await
                .unwrap_or_default();
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
                    self.resume_post_stream(link, client, id, reply, &mut position)
                        .await;
                }
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

    /// A POST's SSE stream that ended before the answer to request `id`: resumed with a GET and
    /// `Last-Event-ID` (the upstream replays what came after), with backoff, at most
    /// [`POST_STREAM_RESUMES`] times, while the request is pending and its client listens. Not
    /// possible if the upstream gave the stream no event ids.
    async fn resume_post_stream(
        &self,
        link: &Arc<SessionLink>,
        client: &HttpUpstream,
        id: &RequestId,
        reply: &Waiter,
        position: &mut StreamPosition,
    ) {
        let pending = || link.session.pending(Direction::ClientToServer).contains(id);
        let mut backoff = Backoff::default();
        while pending() && !reply.is_closed() && backoff.failures() < POST_STREAM_RESUMES {
            let Some(last) = position.last_event_id.clone() else {
                return;
            };
            tokio::time::sleep(backoff.next_delay(position.retry)).await;
            tracing::info!(last_event_id = ?last, "a request's stream from the upstream broke before its answer; resuming it");
            let session = link.upstream_session();
            let version = link.protocol_version();
            match client
                .get_stream(session.as_ref(), version.as_ref(), Some(&last))
                .await
            {
                Ok(response)
                    if response.status().is_success()
                        && media_type(response.headers()).as_deref()
                            == Some("text/event-stream") =>
                {
                    self.relay_stream(link, response.into_body(), Some(reply), position)
                        .await;
                }
                Ok(response) => {
                    tracing::debug!(status = %response.status(), "the upstream would not resume the stream");
                }
                Err(e) => tracing::debug!(%e, "could not resume the stream"),
            }
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
        let id = (msg.kind() == Kind::Request)
            .then(|| msg.id().cloned())
            .flatten();
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
        let events = std::pin::pin!(sse_events(body, self.config.max_message_size));
        self.relay_events(link, events, reply, position).await;
    }

    /// [`Self::relay_stream`] for an event stream already being read.
    pub(super) async fn relay_events<S>(
        &self,
        link: &Arc<SessionLink>,
        mut events: S,
        reply: Option<&Waiter>,
        position: &mut StreamPosition,
    ) where
        S: futures_util::Stream<Item = std::io::Result<Item>> + Unpin,
    {
        use futures_util::StreamExt;
        loop {
            let next = match self.reverse.read_timeout {
                Some(limit) => {
                    let Ok(next) = tokio::time::timeout(limit, events.next()).await else {
                        tracing::warn!(timeout = ?limit, "the upstream's event stream was silent for --read-timeout; treating it as dropped");
                        break;
                    };
                    next
                }
                None => events.next().await,
            };
            let Some(item) = next else { break };
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
            if position
                .request
                .as_ref()
                .is_some_and(|id| !link.session.pending(Direction::ClientToServer).contains(id))
            {
                // Answered, or given up on (timed out, cancelled): nothing more to wait for.
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
                    if msg.is_response()
                        && memchr::memmem::find(msg.raw(), b"x-mcp-header").is_some()
                    {
                        // A tools/list answer naming mirrored parameters: kept for clients
                        // that send no headers of their own.
                        let found = super::super::mirror::tool_param_headers(msg.raw());
                        link.tool_params
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .extend(found);
                    }
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
