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

use super::events::shared::{Batch, Follower, SharedStreams};
use super::events::{self, ConnectError, EventId};
use super::gateway::{Gateway, SessionLink};
use super::live::{Ends, keepalive_due, keepalive_timer, listen, live_body, sse_response};
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
    let get_stream = id.post.is_none();
    let Some(shared) = gateway.shared_streams() else {
        // Nothing to resume from: the GET stream goes on here (what was sent meanwhile is
        // lost with the instance that had it); a request's stream cannot.
        return if get_stream {
            own_stream(gateway, link, Vec::new(), prime).await
        } else {
            bad(ConnectError::Elsewhere(last.to_owned()))
        };
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
    let run = id.run().unwrap_or_default();
    let writer_gone = gateway.members().is_some_and(|m| m.is_gone(run));
    let caught_up = batch.events.len() < BATCH;
    let mut first = Vec::new();
    if prime {
        first.push(events::priming(&format!("{}-", id.stream), id.number));
    }
    if batch.oldest.is_none() {
        // No copy (lapsed, or never kept).
        return if get_stream {
            own_stream(gateway, link, first, prime).await
        } else {
            bad(ConnectError::Elsewhere(last.to_owned()))
        };
    }
    let cursor = replay(id.stream, id.number, batch.events, &mut first);
    tracing::debug!(session = %link.session.id().digest(), stream = id.stream, after = id.number, "a client resumes a stream another instance wrote");
    let over = batch.ended || (writer_gone && caught_up);
    match (get_stream, over) {
        // Nobody writes that stream any more: this instance's own goes on from here.
        (true, true) => own_stream(gateway, link, first, prime).await,
        (false, true) => {
            if !batch.ended {
                first.push(Bytes::from_static(
                    b": the instance of the cluster that relayed this request is gone: its answer will not come\n\n",
                ));
            }
            finite(first)
        }
        (_, false) => {
            let follow = Follow {
                shared: shared.clone(),
                follower: shared.follow(link.session.id(), id.stream),
                members: gateway.members().cloned(),
                stream: id.stream.to_owned(),
                run: run.to_owned(),
                cursor,
                poll_now: !caught_up,
                done: false,
            };
            sse_response(follow_body(gateway, link, first, follow, get_stream))
        }
    }
}

/// `first`, then `link`'s own GET stream (this instance opens the upstream's).
async fn own_stream(
    gateway: &Arc<Gateway>,
    link: &Arc<SessionLink>,
    mut first: Vec<Bytes>,
    prime: bool,
) -> Response {
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
        Err(e) => refuse(StatusCode::BAD_REQUEST, format!("Bad Request: {e}")),
    }
}

/// Appends `events` (numbered, in order, after event `after` of `stream`) to `out`, with a
/// comment wherever some are missing from the copy; the number of the last.
fn replay(stream: &str, after: u64, events: Vec<(u64, Bytes)>, out: &mut Vec<Bytes>) -> u64 {
    let mut cursor = after;
    for (n, event) in events {
        if n > cursor + 1 {
            out.push(missing(stream, cursor + 1, n - 1));
        }
        cursor = n;
        out.push(event);
    }
    cursor
}

/// The comment saying events `from` to `to` of `stream` are not in its copy.
fn missing(stream: &str, from: u64, to: u64) -> Bytes {
    Bytes::from(format!(
        ": events {stream}-{from} to {stream}-{to} are not kept (--sse-replay-events, or too large to copy)\n\n"
    ))
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
    /// This connection's claim on the copy (another connection following it ends this one).
    follower: Follower,
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
            // The copy lapsed: nothing more will come.
            batch.oldest?;
            self.poll_now = batch.events.len() == BATCH;
            if !batch.events.is_empty() {
                let mut out = Vec::new();
                self.cursor = replay(&self.stream, self.cursor, batch.events, &mut out);
                self.done = batch.ended;
                let mut chunk = BytesMut::new();
                for event in out {
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
            let taken = follow.follower.cancelled.clone();
            let chunk = tokio::select! {
                biased;
                () = closed.cancelled() => return None,
                () = taken.cancelled() => return None,
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
