//! The body of a connection to one of a session's SSE streams, shared by the GET stream, a
//! POST answered with SSE, a resumption at another instance and the 2024-11-05 transport's
//! stream: first the connection's opening events, then live events (coalesced into chunks) and
//! keep-alive comments until the stream is over, the session ends, shutdown begins or the
//! client goes.

use std::convert::Infallible;
use std::sync::Arc;

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::StreamExt;
use http::header::{CACHE_CONTROL, CONTENT_TYPE};
use http::{HeaderValue, StatusCode};

use super::events::{self, Connection, EventLog, LiveEvents};
use super::gateway::{Gateway, SessionLink};

/// Takes `link`'s GET stream (`events`) for a new connection, after `last` (as
/// [`EventLog::connect`]), once the upstream has somewhere to send what belongs on it.
pub(super) async fn listen(
    link: &SessionLink,
    events: &EventLog,
    last: Option<&str>,
    prime: bool,
) -> Result<Connection, events::ConnectError> {
    // The client listens: now the upstream's own GET stream is worth a connection. Waiting for
    // it (bounded) means the client is not told it listens while the upstream has nowhere yet
    // to send what belongs on this stream.
    link.listening.cancel();
    // (Only where the upstream's GET stream is about to be opened: a Streamable HTTP upstream
    // whose session exists. A 2024-11-05 upstream's one stream is relayed already.)
    let opening = link
        .http()
        .filter(|http| http.ready.is_cancelled() && http.legacy().is_none());
    if let Some(http) = opening {
        http.until_listening().await;
    }
    events.connect(last, prime)
}

/// How a connection's body ends, besides the client going away or the session ending.
pub(super) enum Ends {
    /// When its stream is taken over, or shutdown begins (a listening connection is not an
    /// in-flight request).
    Listening,
    /// With its stream (a request's, after the last answer); `drained` runs if it sent
    /// everything it was handed.
    Request { drained: Box<dyn FnOnce() + Send> },
}

/// The body of a connection to POST stream `number` of `link`'s session (the POST's own, or a
/// resumption of it): forgets the stream once this connection has delivered all of it.
pub(super) fn request_body(
    gateway: &Gateway,
    link: &Arc<SessionLink>,
    number: u64,
    log: Arc<EventLog>,
    connection: Connection,
) -> Body {
    let generation = connection.generation;
    let owner = link.clone();
    let drained = Box::new(move || {
        if log.delivered_by(generation) {
            owner.posts.forget(number);
        }
    });
    live_body(
        gateway,
        link,
        connection,
        Ends::Request { drained },
        None::<()>,
    )
}

/// The body of a connection: `connection.first`, then its live events with keep-alive comments
/// every `--sse-keepalive`, until the live channel closes, the session ends, the client goes or
/// (listening) shutdown begins. `guard` is dropped with the body. While a listening body lasts,
/// its session is busy (not idle-expired, not evicted).
pub(super) fn live_body<G: Send + 'static>(
    gateway: &Gateway,
    link: &SessionLink,
    connection: Connection,
    ends: Ends,
    guard: Option<G>,
) -> Body {
    let keepalive = keepalive_timer(gateway);
    let closed = link.session.closed_token().clone();
    let stopping = gateway.stopping.clone();
    // A client listening keeps its session from counting as idle.
    let (at_shutdown, drained, listening) = match ends {
        Ends::Listening => (true, None, Some(link.session.listen())),
        Ends::Request { drained } => (false, Some(drained), None),
    };
    let first = futures_util::stream::iter(connection.first);
    let live = futures_util::stream::unfold(
        (
            connection.live,
            keepalive,
            closed,
            stopping,
            drained,
            (guard, listening),
        ),
        move |(mut live, mut keepalive, closed, stopping, mut drained, guards)| async move {
            let event = tokio::select! {
                // Queued events go out before an ending is noticed.
                biased;
                event = live.recv() => {
                    let Some(event) = event else {
                        if let Some(drained) = drained.take() {
                            drained();
                        }
                        return None;
                    };
                    coalesce(event, &mut live)
                }
                () = keepalive_due(&mut keepalive) => events::keepalive(),
                () = closed.cancelled() => return None,
                () = stopping.cancelled(), if at_shutdown => return None,
            };
            Some((event, (live, keepalive, closed, stopping, drained, guards)))
        },
    );
    Body::from_stream(first.chain(live).map(Ok::<Bytes, Infallible>))
}
/// Most bytes of events sent as one chunk.
const CHUNK_BYTES: usize = 64 * 1024;

/// `first` and the events queued behind it (up to [`CHUNK_BYTES`]), as one chunk: a fast stream
/// is written with a write per batch rather than per event.
fn coalesce(first: Bytes, live: &mut LiveEvents) -> Bytes {
    let Some(second) = live.try_recv() else {
        return first;
    };
    let mut chunk = bytes::BytesMut::with_capacity(CHUNK_BYTES.max(first.len() + second.len()));
    chunk.extend_from_slice(&first);
    chunk.extend_from_slice(&second);
    while chunk.len() < CHUNK_BYTES {
        let Some(next) = live.try_recv() else { break };
        chunk.extend_from_slice(&next);
    }
    chunk.freeze()
}

/// The timer of a stream's keep-alive comments (`--sse-keepalive`), if they are on.
pub(super) fn keepalive_timer(gateway: &Gateway) -> Option<tokio::time::Interval> {
    gateway
        .reverse
        .sse_keepalive
        .map(|period| tokio::time::interval_at(tokio::time::Instant::now() + period, period))
}

/// Resolves when the next keep-alive comment is due (never, if they are off).
pub(super) async fn keepalive_due(timer: &mut Option<tokio::time::Interval>) {
    match timer.as_mut() {
        Some(interval) => {
            interval.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// A `text/event-stream` response that no proxy in between should buffer.
pub(super) fn sse_response(body: Body) -> Response {
    let mut response = (StatusCode::OK, body).into_response();
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queued_events_go_out_as_one_chunk_of_bounded_size() {
        let log = EventLog::new(1000, 1 << 30);
        let mut connection = log.attach(false);
        let live = &mut connection.live;
        assert_eq!(
            coalesce(Bytes::from_static(b"a"), live),
            Bytes::from_static(b"a")
        );
        log.push(b"{}");
        log.push(b"{}");
        let chunk = coalesce(Bytes::from_static(b"a"), live);
        assert_eq!(
            std::str::from_utf8(&chunk)
                .unwrap()
                .matches("data: {}")
                .count(),
            2
        );
        for _ in 0..4 {
            log.push(&vec![b'x'; CHUNK_BYTES / 2]);
        }
        let chunk = coalesce(Bytes::from_static(b"a"), live);
        assert!(chunk.len() >= CHUNK_BYTES && chunk.len() < 2 * CHUNK_BYTES);
        assert!(live.try_recv().is_some(), "the rest waits");
    }
}
