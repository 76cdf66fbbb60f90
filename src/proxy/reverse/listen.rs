//! Where clients listen: the session's GET stream (`GET /mcp`), and the live body it shares with
//! the 2024-11-05 transport's stream: first the connection's opening events, then live events
//! and keep-alive comments until the session ends, shutdown begins or the client goes.

use std::convert::Infallible;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::StreamExt;
use http::header::{ALLOW, CACHE_CONTROL, CONTENT_TYPE};
use http::{HeaderMap, HeaderValue, StatusCode};

use crate::transport::http::LAST_EVENT_ID;

use super::checks::{accepts, refuse, session_of};
use super::gateway::{Gateway, SessionLink};
use super::stream::{self, ConnectError, Connection};

/// `GET`: the session's server→client stream: the server messages that belong to no open
/// request, with event ids; `Last-Event-ID` resumes it after the last event the client got.
pub async fn get(State(gateway): State<Arc<Gateway>>, headers: HeaderMap) -> Response {
    let link = match session_of(&gateway, &headers) {
        Ok(link) => link,
        Err(response) => return response,
    };
    if !accepts(&headers).sse {
        return refuse(
            StatusCode::NOT_ACCEPTABLE,
            "Not Acceptable: the GET stream is text/event-stream".into(),
        );
    }
    let Some(events) = link.router.events() else {
        let mut response = refuse(
            StatusCode::METHOD_NOT_ALLOWED,
            "Method Not Allowed: this session has no GET stream".into(),
        );
        response
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static("POST, DELETE"));
        return response;
    };
    // The client listens: now the upstream's own GET stream is worth a connection.
    link.listening.cancel();
    let last = headers
        .get(&LAST_EVENT_ID)
        .map(|v| v.to_str().unwrap_or("?"));
    let connection = match events.connect(last) {
        Ok(connection) => connection,
        Err(e @ ConnectError::UnknownId(_)) => {
            return refuse(StatusCode::BAD_REQUEST, format!("Bad Request: {e}"));
        }
    };
    sse_response(live_body(&gateway, &link, connection, None::<()>))
}

/// The body of a listening connection: `connection.first`, then its live events with keep-alive
/// comments every `--sse-keepalive`, until the session ends, shutdown begins (a listening
/// connection is not an in-flight request) or the client goes. `guard` is dropped with the body.
pub(super) fn live_body<G: Send + 'static>(
    gateway: &Gateway,
    link: &SessionLink,
    connection: Connection,
    guard: Option<G>,
) -> Body {
    let keepalive = gateway
        .reverse
        .sse_keepalive
        .map(|period| tokio::time::interval_at(tokio::time::Instant::now() + period, period));
    let closed = link.session.closed_token().clone();
    let stopping = gateway.stopping.clone();
    let first = futures_util::stream::iter(connection.first);
    let live = futures_util::stream::unfold(
        (connection.live, keepalive, closed, stopping, guard),
        |(mut live, mut keepalive, closed, stopping, guard)| async move {
            let tick = async {
                match keepalive.as_mut() {
                    Some(interval) => {
                        interval.tick().await;
                    }
                    None => std::future::pending().await,
                }
            };
            let event = tokio::select! {
                event = live.recv() => event?,
                () = tick => stream::keepalive(),
                () = closed.cancelled() => return None,
                () = stopping.cancelled() => return None,
            };
            Some((event, (live, keepalive, closed, stopping, guard)))
        },
    );
    Body::from_stream(first.chain(live).map(Ok::<Bytes, Infallible>))
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
