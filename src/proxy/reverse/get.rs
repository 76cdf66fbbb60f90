//! Where clients listen: the session's GET stream (`GET /mcp`), or the resumption of one of
//! its POST streams; the body is `live`'s.

use std::sync::Arc;

use axum::extract::State;
use axum::response::Response;
use http::{HeaderMap, StatusCode};

use crate::transport::http::LAST_EVENT_ID;

use super::checks::{accepts, client_of, session_of};
use super::events;
use super::gateway::Gateway;
use super::live::{Ends, listen, live_body, request_body, sse_response};
use super::respond::{method_not_allowed, refuse};

/// `GET`: the session's server→client stream: the server messages that belong to no open
/// request, with event ids; `Last-Event-ID` resumes it after the last event the client got. A
/// `Last-Event-ID` from one of the session's POST streams resumes that stream instead: the rest
/// of its events, ending with the request's answer.
pub async fn get(
    State(gateway): State<Arc<Gateway>>,
    peer: Option<axum::Extension<axum::extract::ConnectInfo<std::net::SocketAddr>>>,
    headers: HeaderMap,
) -> Response {
    let peer = peer.map(|axum::Extension(axum::extract::ConnectInfo(addr))| addr);
    let client = client_of(&gateway.reverse.trusted_proxies, peer, &headers);
    let link = match session_of(&gateway, &headers, None, client).await {
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
        return method_not_allowed("this session has no GET stream", "POST, DELETE");
    };
    let last = headers
        .get(&LAST_EVENT_ID)
        .map(|v| v.to_str().unwrap_or("?"));
    let prime = link.takes_priming_events();
    // Written by another instance, or by this one before the session last came here.
    let written_elsewhere = last
        .and_then(events::EventId::parse)
        .filter(|id| id.writer.is_some() && id.writer != link.posts.writer());
    if let (Some(id), Some(last)) = (written_elsewhere, last) {
        return super::resume::elsewhere(&gateway, &link, id, last, prime).await;
    }
    if let Some(found) = last.and_then(|id| link.posts.find(id)) {
        let resumed = found.and_then(|(number, log)| {
            let connection = log.connect(last, prime)?;
            Ok((number, log, connection))
        });
        return match resumed {
            Ok((number, log, connection)) => {
                sse_response(request_body(&gateway, &link, number, log, connection))
            }
            Err(e) => refuse(StatusCode::BAD_REQUEST, format!("Bad Request: {e}")),
        };
    }
    let connection = match listen(&link, events, last, prime).await {
        Ok(connection) => connection,
        Err(e) => return refuse(StatusCode::BAD_REQUEST, format!("Bad Request: {e}")),
    };
    sse_response(live_body(
        &gateway,
        &link,
        connection,
        Ends::Listening,
        None::<()>,
    ))
}
