//! The 2024-11-05 HTTP+SSE transport, downstream: `GET /sse` opens a session and its one stream,
//! whose first event (`endpoint`) names where to POST (`/message?sessionId=…`); every message
//! for the client, answers included, goes out on that stream as `event: message`; each POST is
//! answered `202 Accepted` at once. The session ends when the stream's connection closes.
//!
//! Behind it is any upstream the gateway has: the messages take the same pipeline, session
//! manager and upstream exchange as Streamable HTTP clients'.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Extension;
use axum::body::Body;
use axum::extract::{ConnectInfo, Query, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use serde::Deserialize;

use crate::protocol::Frame;
use crate::session::{EndReason, SessionId, TransportKind};

use super::checks::{check_content_type, client_of, read_frame};
use super::events;
use super::gateway::Gateway;
use super::live::{Ends, live_body, sse_response};
use super::respond::refuse;
use super::router::Delivery;

/// Where 2024-11-05 clients open their stream.
pub const SSE_PATH: &str = "/sse";
/// Where they POST their messages.
pub const MESSAGE_PATH: &str = "/message";
/// Events queued for an old client's stream before it counts as stalled.
const LEGACY_QUEUE: usize = 4096;

/// `GET /sse`: a new session and its stream.
pub async fn open(
    State(gateway): State<Arc<Gateway>>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    caller: super::authn::Caller,
    headers: HeaderMap,
) -> Response {
    let client = client_of(
        &gateway.reverse.trusted_proxies,
        peer.map(|Extension(ConnectInfo(addr))| addr),
        &headers,
    );
    let link = match gateway.open_session(TransportKind::Sse, client, Delivery::Legacy) {
        Ok(link) => link,
        Err(e) => return super::checks::refuse_open(&e, None),
    };
    link.bind(&caller);
    let Some(events) = link.router.events().cloned() else {
        return refuse(
            StatusCode::INTERNAL_SERVER_ERROR,
            "no session stream".into(),
        );
    };
    // Listening from the start: the upstream's own GET stream (if any) is relayed too.
    link.listening.cancel();
    // An old client can't resume a dropped stream (and its session ends with it): give it more
    // room than a resumable GET stream gets before counting it as stalled.
    let connection = match events.connect_with_queue(None, LEGACY_QUEUE, false) {
        Ok(connection) => connection,
        Err(e) => return refuse(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    let endpoint = Bytes::from(format!(
        "event: endpoint\ndata: {MESSAGE_PATH}?sessionId={}\n\n",
        link.session.id()
    ));
    tracing::info!(session = %link.session.id().digest(), "a 2024-11-05 HTTP+SSE client connected");
    // The session lasts as long as this stream: when the client goes, so does the session.
    let guard = EndWithStream {
        gateway: gateway.clone(),
        session: link.session.id().clone(),
    };
    // The endpoint event first (no priming event: an old client would take its empty data for
    // a message), then every message for the client.
    let connection = events::Connection {
        first: vec![endpoint],
        ..connection
    };
    sse_response(live_body(
        &gateway,
        &link,
        connection,
        Ends::Listening,
        Some(guard),
    ))
}

/// Ends a 2024-11-05 session when its stream is dropped (the client disconnected).
struct EndWithStream {
    gateway: Arc<Gateway>,
    session: SessionId,
}

impl Drop for EndWithStream {
    fn drop(&mut self) {
        if self
            .gateway
            .sessions
            .end(&self.session, EndReason::Closed)
            .is_some()
        {
            tracing::info!(session = %self.session.digest(), "the HTTP+SSE client disconnected; session ended");
        }
    }
}

/// `?sessionId=` of a message POST.
#[derive(Debug, Deserialize)]
pub struct Target {
    #[serde(rename = "sessionId")]
    session_id: Option<String>,
}

/// `POST /message?sessionId=…`: one client message (or batch); accepted at once, answered on
/// the session's stream.
pub async fn message(
    State(gateway): State<Arc<Gateway>>,
    Query(target): Query<Target>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    caller: super::authn::Caller,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let client = client_of(
        &gateway.reverse.trusted_proxies,
        peer.map(|Extension(ConnectInfo(addr))| addr),
        &headers,
    );
    if let Err(response) = check_content_type(&headers) {
        return response;
    }
    let Some(id) = target.session_id else {
        return refuse(
            StatusCode::BAD_REQUEST,
            "Bad Request: missing sessionId; open the stream at /sse first".into(),
        );
    };
    let link = SessionId::parse(&id)
        .ok()
        .and_then(|id| gateway.link(&id))
        // A Streamable HTTP session's id opens nothing here: its POSTs are checked on /mcp.
        .filter(|link| link.session.transport() == TransportKind::Sse)
        .filter(|link| !link.session.closed_token().is_cancelled());
    let Some(link) = link else {
        return refuse(
            StatusCode::NOT_FOUND,
            "Not Found: no such session (its stream closed); open a new one at /sse".into(),
        );
    };
    let frame = match read_frame(&gateway, &headers, body).await {
        Ok(frame) => frame,
        Err(response) => return response,
    };
    let Some(events) = link.router.events().cloned() else {
        return refuse(
            StatusCode::NOT_FOUND,
            "Not Found: not an HTTP+SSE session".into(),
        );
    };
    let members = match frame {
        Frame::Single(msg) => vec![Ok(msg)],
        Frame::Batch(members) => members,
    };
    // Through the pipeline as a POST to /mcp goes; what the proxy answers goes on the stream.
    link.bind(&caller);
    if let Err(refused) = super::authn::exchange(&gateway, &link, &headers).await {
        return refused;
    }
    let mut headers = headers;
    let screened = super::screen::screen(
        &gateway,
        &link,
        super::authn::sender(&caller, client),
        members,
        None,
        &mut headers,
    )
    .await;
    for answer in &screened.answers {
        events.push(answer);
    }
    let (forwarded, requests) = (screened.forwarded, screened.expected.len());
    // The client gets its answers on the stream, not here. The exchange is awaited before the
    // 202 whenever it is quick (notifications and responses only, or an upstream that just takes
    // the messages: a child, or an HTTP+SSE server), so the client's next message can't
    // overtake this one; a request to a Streamable HTTP upstream, which answers only when done,
    // runs on its own (bounded by the pending-request limits).
    let quick = requests == 0 || link.upstream.is_process() || link.at_legacy_upstream();
    let exchange_gateway = gateway.clone();
    let work = async move {
        exchange_gateway
            .exchange_to(&link, forwarded, &headers, events.as_ref(), requests)
            .await;
    };
    if quick {
        work.await;
    } else {
        gateway.spawn(work);
    }
    StatusCode::ACCEPTED.into_response()
}
