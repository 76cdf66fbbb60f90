//! A client resuming here a stream another instance of the cluster wrote (its `Last-Event-ID`
//! names that instance's run): the events it missed, read from the stream's copy in Redis
//! ([`super::events::shared`]), then what that instance goes on writing, followed in the copy
//! until the stream is over, the session ends here, the client goes, or that instance is gone
//! (off the cluster's list). A GET stream whose writer is gone goes on as this instance's own
//! once the client has what the copy kept; a request's stream whose writer is gone ends (its
//! answer will not come).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::response::Response;
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt as _;
use http::StatusCode;

use super::events::shared::{Batch, SharedStreams};
use super::events::{self, ConnectError, EventId};
use super::gateway::{Gateway, SessionLink};
use super::get::{Ends, keepalive_due, keepalive_timer, listen, live_body, sse_response};
use super::peer::Members;
use super::respond::refuse;

/// Events read from a copy at a time.
const BATCH: usize = 64;
/// How often a copy is read for what its writer added.
const POLL: Duration = Duration::from_millis(100);

/// The answer to a GET whose `Last-Event-ID` (`last`, read as `id`) names a stream another
/// instance wrote. `prime`: the client takes priming events.
pub(super) async fn elsewhere(
    gateway: &Arc<Gateway>,
    link: &Arc<SessionLink>,
    id: EventId<'_>,
    last: &str,
    prime: bool,
) -> Response {
    let bad = |e: ConnectError| refuse(StatusCode::BAD_REQUEST, format!("Bad Request: {e}"));
    let Some(shared) = gateway.shared_streams() else {
        return bad(ConnectError::Elsewhere(last.to_owned()));
    };
    let Some(batch) = shared
        .read(link.session.id(), id.stream, id.number, BATCH)
        .await
    else {
        return refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "Service Unavailable: the stream was served by another instance of the cluster, and Redis, which keeps its copy, does not answer; try again".into(),
        );
    };
    let Some(oldest) = batch.oldest else {
        return bad(ConnectError::Elsewhere(last.to_owned()));
    };
    let run = id.run.unwrap_or_default();
    let writer_gone = gateway.members().is_some_and(|m| m.is_gone(run));
    let caught_up = batch.events.len() < BATCH;
    let mut first = Vec::new();
    if prime {
        first.push(events::priming(&format!("{}-", id.stream), id.number));
    }
    if oldest > id.number + 1 {
        first.push(Bytes::from(format!(
            ": events {stream}-{} to {stream}-{} are no longer kept (--sse-replay-events)\n\n",
            id.number + 1,
            oldest - 1,
            stream = id.stream,
        )));
    }
    let cursor = batch.events.last().map_or(id.number, |(n, _)| *n);
    first.extend(batch.events.into_iter().map(|(_, event)| event));
    tracing::debug!(session = %link.session.id().digest(), stream = id.stream, after = id.number, "a client resumes a stream another instance wrote");
    if batch.ended {
        return finite(first);
    }
    match (id.post, writer_gone && caught_up) {
        (Some(_), true) => {
            first.push(Bytes::from_static(
                b": the instance of the cluster that relayed this request is gone: its answer will not come\n\n",
            ));
            finite(first)
        }
        (None, true) => {
            // Nobody writes that stream any more: this instance's own goes on from here.
            let Some(events) = link.router.events() else {
                return finite(first);
            };
            match listen(link, events, None, prime).await {
                Ok(mut connection) => {
                    first.append(&mut connection.first);
                    connection.first = first;
                    sse_response(live_body(
                        gateway,
                        link,
                        connection,
                        Ends::Listening,
                        None::<()>,
                    ))
                }
                Err(e) => bad(e),
            }
        }
        (_, false) => {
            let follow = Follow {
                shared: shared.clone(),
                members: gateway.members().cloned(),
                stream: id.stream.to_owned(),
                run: run.to_owned(),
                cursor,
                poll_now: !caught_up,
                done: false,
            };
            sse_response(follow_body(gateway, link, first, follow, id.post.is_none()))
        }
    }
}

/// A body of `events` and nothing more.
fn finite(events: Vec<Bytes>) -> Response {
    sse_response(Body::from_stream(
        futures_util::stream::iter(events).map(Ok::<Bytes, Infallible>),
    ))
}

/// A copy being followed.
struct Follow {
    shared: Arc<SharedStreams>,
    members: Option<Arc<Members>>,
    /// The stream's name, and the run that writes it.
    stream: String,
    run: String,
    /// The number of the last event sent.
    cursor: u64,
    /// Read at once (the last read was a full batch).
    poll_now: bool,
    /// The last chunk was sent.
    done: bool,
}

impl Follow {
    /// The next chunk: the events the copy has after the cursor (and a note if the stream
    /// ended without its writer), waiting for them; `None` once there is nothing more.
    async fn next(&mut self, session: &crate::session::SessionId) -> Option<Bytes> {
        if self.done {
            return None;
        }
        loop {
            if !std::mem::take(&mut self.poll_now) {
                tokio::time::sleep(POLL).await;
            }
            // Redis not answering: the client resumes (here or elsewhere) when it answers.
            let batch: Batch = self
                .shared
                .read(session, &self.stream, self.cursor, BATCH)
                .await?;
            self.poll_now = batch.events.len() == BATCH;
            if let Some((n, _)) = batch.events.last() {
                self.cursor = *n;
                self.done = batch.ended;
                let mut chunk = BytesMut::new();
                for (_, event) in batch.events {
                    chunk.extend_from_slice(&event);
                }
                return Some(chunk.freeze());
            }
            if batch.ended {
                return None;
            }
            let gone = self.members.as_ref().is_some_and(|m| m.is_gone(&self.run));
            if gone && !self.poll_now {
                self.done = true;
                return Some(Bytes::from_static(
                    b": the instance of the cluster that wrote this stream is gone; resume with Last-Event-ID\n\n",
                ));
            }
        }
    }
}

/// The body of a connection following a copy: `first`, then the copy's new events with
/// keep-alive comments, until the stream is over, the session ends here, the client goes or
/// (`listening`: the GET stream) shutdown begins. While a listening body lasts, its session is
/// busy (not idle-expired, not evicted).
fn follow_body(
    gateway: &Gateway,
    link: &SessionLink,
    first: Vec<Bytes>,
    follow: Follow,
    listening: bool,
) -> Body {
    let keepalive = keepalive_timer(gateway);
    let closed = link.session.closed_token().clone();
    let stopping = gateway.stopping.clone();
    let session = link.session.id().clone();
    let guard = listening.then(|| link.session.listen());
    let live = futures_util::stream::unfold(
        (follow, keepalive, closed, stopping, session, guard),
        move |(mut follow, mut keepalive, closed, stopping, session, guard)| async move {
            let chunk = tokio::select! {
                biased;
                () = closed.cancelled() => return None,
                () = stopping.cancelled(), if listening => return None,
                chunk = follow.next(&session) => chunk?,
                () = keepalive_due(&mut keepalive) => events::keepalive(),
            };
            Some((chunk, (follow, keepalive, closed, stopping, session, guard)))
        },
    );
    Body::from_stream(
        futures_util::stream::iter(first)
            .chain(live)
            .map(Ok::<Bytes, Infallible>),
    )
}
