//! The HTTP upstream's event streams: its GET stream, relayed for as long as the session lasts
//! (reconnected with backoff, resumed with `Last-Event-ID`), a POST's SSE answer (resumed the
//! same way if it breaks before the answer), and each frame they carry, through the pipeline to
//! the request's waiter or the session's client.

use std::time::Duration;

use bytes::Bytes;
use http::HeaderValue;
use hyper::body::Incoming;
use tokio::sync::mpsc;

use crate::protocol::error::ProxyError;
use crate::protocol::{Direction, ErrorCode, Frame, Kind, Message, RequestId};
use crate::proxy::outbox::Deliver;
use crate::proxy::tracker::receiver_gone;
use crate::stage::{Context, Verdict};
use crate::tape::Wire;
use crate::transport::backoff::Backoff;
use crate::transport::http::{UpstreamError, media_type, sse_events};
use crate::transport::sse::Item;

use super::{HttpSession, POST_STREAM_RESUMES, Reply, ReplyTo, UPSTREAM_GET_ATTEMPTS};

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
    /// Whether the upstream ended the stream itself (rather than it breaking or going silent).
    pub(super) ended: bool,
}

impl<C: Deliver + 'static> HttpSession<C> {
    /// Relays the HTTP upstream's GET stream for this session (the gateway starts this once the
    /// upstream session exists and the client has opened its own GET stream): its messages go
    /// through the pipeline and the router (to our GET stream, or the POST they belong to).
    /// A dropped (or silent past `--read-timeout`) stream is reconnected with exponential backoff
    /// and full jitter, never sooner than the upstream's `retry:`, resuming with `Last-Event-ID`
    /// (the stream's [`StreamPosition`] is the one record of where it got to). Network errors and
    /// 5xx are retried for as long as the session lasts; the upstream offering no GET stream
    /// (405) ends this at once, and [`UPSTREAM_GET_ATTEMPTS`] other refusals in a row too.
    pub(super) async fn listen(&self) {
        // However this ends, nobody waits for it any more.
        let _listens = self.listens.clone().drop_guard();
        if self.legacy().is_some() {
            // A 2024-11-05 upstream's one stream is already relayed; a GET would open another
            // session there.
            return;
        }
        let mut position = StreamPosition::default();
        let mut backoff = Backoff::default();
        let mut refusals = 0;
        loop {
            let session = self.upstream_session();
            let version = self.protocol_version();
            match self
                .client()
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
                        tracing::info!(
                            last_event_id = position
                                .last_event_id
                                .as_ref()
                                .and_then(|v| v.to_str().ok()),
                            "reconnected to the upstream's GET stream"
                        );
                    }
                    backoff.reset();
                    refusals = 0;
                    self.listens.cancel();
                    tracing::debug!("relaying the upstream's GET stream");
                    self.relay_stream(response.into_body(), None, &mut position)
                        .await;
                    tracing::debug!(
                        last_event_id = position
                            .last_event_id
                            .as_ref()
                            .and_then(|v| v.to_str().ok()),
                        "the upstream's GET stream ended; reconnecting"
                    );
                }
                Ok(response) if response.status() == http::StatusCode::METHOD_NOT_ALLOWED => {
                    tracing::debug!("the upstream offers no GET stream");
                    return;
                }
                Ok(response)
                    if response.status() == http::StatusCode::NOT_FOUND
                        && session.is_some()
                        && self.recover(session.as_ref()).await =>
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

    /// A POST's SSE stream that ended before the answer to request `id`: resumed with a GET and
    /// `Last-Event-ID` (the upstream replays what came after), with backoff, at most
    /// [`POST_STREAM_RESUMES`] times and for at most `--resume-timeout`, while the request is
    /// pending and its client listens. Not possible if the upstream gave the stream no event
    /// ids. A refused connection ends it at once: the server is down, not the stream dropped.
    /// Returns the error for the request if it is still pending when this gives up, naming the
    /// last failure.
    pub(super) async fn resume_post_stream(
        &self,
        id: &RequestId,
        reply: &ReplyTo,
        position: &mut StreamPosition,
    ) -> Option<ProxyError> {
        let pending = || self.session.pending(Direction::ClientToServer).contains(id);
        let deadline = tokio::time::Instant::now() + self.backend.limits.resume_timeout;
        let mut backoff = Backoff::default();
        let mut cause = String::from("the stream ended before the answer");
        while pending() && !reply.is_closed() {
            if backoff.failures() >= POST_STREAM_RESUMES {
                return Some(resume_failed(
                    &cause,
                    &format!("after {POST_STREAM_RESUMES} tries"),
                ));
            }
            let last = position.last_event_id.clone()?;
            let attempt = async {
                tokio::time::sleep(backoff.next_delay(position.retry)).await;
                tracing::info!(
                    last_event_id = last.to_str().unwrap_or("(not text)"),
                    "a request's stream from the upstream broke before its answer; resuming it"
                );
                let session = self.upstream_session();
                let version = self.protocol_version();
                self.client()
                    .get_stream(session.as_ref(), version.as_ref(), Some(&last))
                    .await
            };
            let Ok(resumed) = tokio::time::timeout_at(deadline, attempt).await else {
                return pending().then(|| resume_failed(&cause, "within --resume-timeout"));
            };
            match resumed {
                Ok(response)
                    if response.status().is_success()
                        && media_type(response.headers()).as_deref()
                            == Some("text/event-stream") =>
                {
                    self.relay_stream(response.into_body(), Some(reply), position)
                        .await;
                    cause = String::from("the resumed stream ended before the answer");
                }
                Ok(response) => {
                    tracing::debug!(status = %response.status(), "the upstream would not resume the stream");
                    cause = format!(
                        "the upstream answered HTTP {} to resuming it",
                        response.status()
                    );
                }
                Err(
                    e @ UpstreamError::Unreachable {
                        connected: false,
                        kind: "connection_refused",
                        ..
                    },
                ) => {
                    tracing::warn!(%e, "the upstream refuses connections; not resuming the stream");
                    return pending().then(|| {
                        ProxyError::new(
                            ErrorCode::UpstreamUnreachable,
                            format!("the upstream's stream for this request broke, and {e}"),
                        )
                        .with("kind", "connection_refused")
                    });
                }
                Err(e) => {
                    tracing::debug!(%e, "could not resume the stream");
                    cause = e.to_string();
                }
            }
        }
        None
    }

    /// Relays an upstream SSE stream: a POST's answer (`reply`: its messages stay on that POST's
    /// stream), or the upstream's GET stream (`None`: everything goes through the router).
    /// `position` keeps the last event id and the server's `retry:` for reconnecting.
    pub(super) async fn relay_stream(
        &self,
        body: Incoming,
        reply: Option<&ReplyTo>,
        position: &mut StreamPosition,
    ) {
        let events = std::pin::pin!(sse_events(body, self.backend.limits.max_message_size));
        self.relay_events(events, reply, position).await;
    }

    /// [`Self::relay_stream`] for an event stream already being read.
    pub(super) async fn relay_events<S>(
        &self,
        mut events: S,
        reply: Option<&ReplyTo>,
        position: &mut StreamPosition,
    ) where
        S: futures_util::Stream<Item = std::io::Result<Item>> + Unpin,
    {
        use futures_util::StreamExt;
        loop {
            let next = match self.backend.limits.read_timeout {
                Some(limit) => {
                    let Ok(next) = tokio::time::timeout(limit, events.next()).await else {
                        tracing::warn!(timeout = ?limit, "the upstream's event stream was silent for --read-timeout; treating it as dropped");
                        break;
                    };
                    next
                }
                None => events.next().await,
            };
            let Some(item) = next else {
                position.ended = true;
                break;
            };
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
                    // Which stream carried it, for the tape (only worked out when recording).
                    let transport = if self.session.tape().is_some() {
                        let stream = if position.request.is_some() {
                            "post"
                        } else if self.legacy().is_some() {
                            "sse"
                        } else {
                            "get"
                        };
                        Wire {
                            status: Some(200),
                            event_id: event.id.clone(),
                            stream: Some(stream.into()),
                        }
                    } else {
                        Wire::NONE
                    };
                    self.relay_frame(event.data, reply, &transport).await;
                }
                Ok(Item::Event(_)) => {}
                Ok(Item::TooLarge { len }) => {
                    self.backend
                        .pipeline
                        .metrics()
                        .oversized(Direction::ServerToClient);
                    tracing::warn!(
                        len,
                        limit = self.backend.limits.max_message_size,
                        "discarded an over-long event from the upstream"
                    );
                }
                Err(e) => {
                    tracing::warn!(%e, "the upstream's event stream broke");
                    break;
                }
            }
            if reply.is_some_and(ReplyTo::is_closed) {
                // The client has gone; dropping the stream disconnects (it does not cancel).
                break;
            }
            if position
                .request
                .as_ref()
                .is_some_and(|id| !self.session.pending(Direction::ClientToServer).contains(id))
            {
                // Answered, or given up on (timed out, cancelled): nothing more to wait for.
                break;
            }
        }
    }

    /// One frame (a message or a batch) from the HTTP upstream, through the pipeline;
    /// `transport` says how it came (for the session's tape).
    pub(super) async fn relay_frame(&self, body: Bytes, reply: Option<&ReplyTo>, transport: &Wire) {
        let members = match Message::parse_frame(body.clone()) {
            Ok(Frame::Single(msg)) => vec![Ok(msg)],
            Ok(Frame::Batch(members)) => members,
            Err(e) => vec![Err(e)],
        };
        for member in members {
            let msg = match member {
                Ok(msg) => msg,
                Err(e) => {
                    self.backend
                        .pipeline
                        .metrics()
                        .malformed(Direction::ServerToClient);
                    self.backend.errors.count("invalid_response");
                    let preview =
                        String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
                    tracing::warn!(%e, %preview, "malformed message from the upstream; not forwarded");
                    if let Some(id) = e.id() {
                        let error = ProxyError::new(
                            ErrorCode::InvalidUpstreamResponse,
                            format!("the MCP server's response was not valid JSON-RPC: {e}"),
                        );
                        self.fail(Some(id), &error, reply).await;
                    }
                    continue;
                }
            };
            let cx = Context {
                direction: Direction::ServerToClient,
                session: &self.session,
                transport,
                client: crate::stage::Client::Local,
                header_trace: None,
                notes: None,
            };
            match self.backend.pipeline.process(msg, cx).await {
                Verdict::Forward(msg) => {
                    self.backend
                        .pipeline
                        .metrics()
                        .forwarded(Direction::ServerToClient);
                    if msg.is_response() {
                        self.backend.mirrored.learn(msg.raw());
                    }
                    let Some(reply) = reply.filter(|_| !msg.is_response()) else {
                        let _ = self.to_client.deliver(msg).await;
                        continue;
                    };
                    if let Err(mpsc::error::SendError(Reply::Message(msg))) =
                        reply.send(Reply::Message(msg)).await
                    {
                        // The client has gone: a request from the server is answered, so it
                        // doesn't wait for it.
                        if let (Some(id), Kind::Request) = (msg.id(), msg.kind()) {
                            self.session.pending(Direction::ServerToClient).remove(id);
                            let error = receiver_gone(Direction::ServerToClient);
                            let _ = self
                                .deliver(Message::error_response(Some(id), &error))
                                .await;
                        }
                    }
                }
                Verdict::Respond(answer) => {
                    self.backend
                        .pipeline
                        .metrics()
                        .answered_by_proxy(Direction::ServerToClient);
                    let _ = self.deliver(answer).await;
                }
                Verdict::Drop => {}
            }
        }
    }
}

/// The error for a request whose broken stream could not be resumed (`within`: the limit that
/// ran out), naming the last failure.
fn resume_failed(cause: &str, within: &str) -> ProxyError {
    ProxyError::new(
        ErrorCode::UpstreamUnreachable,
        format!(
            "the upstream's stream for this request broke and could not be resumed {within}: {cause}"
        ),
    )
}
