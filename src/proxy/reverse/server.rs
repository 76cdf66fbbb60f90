//! The downstream side: the Streamable HTTP endpoint MCP clients talk to (axum on hyper).
//!
//! `POST` carries one client message (or, in 2025-03-26, a batch): notifications and responses
//! are answered `202 Accepted`; requests with `application/json` when their answer is all there
//! is, or `text/event-stream` when the server says more first (progress, logging, its own
//! requests) or the client accepts only SSE. `DELETE` ends the session; `GET` opens the session's
//! own stream (see [`super::stream`]). Every refusal has the status the spec gives and
//! a JSON-RPC error body that says what was wrong.

use std::convert::Infallible;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use bytes::{BufMut, Bytes, BytesMut};
use futures_util::StreamExt;
use http::header::{ACCEPT, ALLOW, CONTENT_LENGTH, CONTENT_TYPE, HOST, ORIGIN};
use http::{HeaderMap, HeaderValue, StatusCode};

use crate::config::is_loopback_authority;
use crate::protocol::error::ProxyError;
use crate::protocol::{ErrorCode, Frame, Kind, Message, Method, RequestId, version};
use crate::proxy::relay::MAX_BATCH_MESSAGES;
use crate::session::{EndReason, SessionError, SessionId};
use crate::transport::http::{BodyError, MCP_PROTOCOL_VERSION, MCP_SESSION_ID, read_body};
use crate::transport::sse;

use super::answer::{Answering, Arrival, EndOnDrop, Exchange, Registration};
use super::gateway::{Gateway, OpenError, SessionLink, reply_channel};
use super::listen::sse_response;
use super::router::{Reply, progress_token};

/// The MCP endpoint's routes, with Origin/Host validation and CORS.
pub fn routes(gateway: Arc<Gateway>) -> axum::Router {
    let path = gateway.reverse.path.clone();
    let cors = cors(&gateway);
    axum::Router::new()
        .route(
            &path,
            axum::routing::post(post)
                .delete(delete)
                .get(super::listen::get)
                .fallback(not_allowed),
        )
        .route(
            super::legacy::SSE_PATH,
            axum::routing::get(super::legacy::open),
        )
        .route(
            super::legacy::MESSAGE_PATH,
            axum::routing::post(super::legacy::message),
        )
        .layer(cors)
        .layer(axum::middleware::from_fn_with_state(gateway.clone(), guard))
        .with_state(gateway)
}

fn cors(gateway: &Gateway) -> tower_http::cors::CorsLayer {
    use tower_http::cors::{AllowHeaders, AllowOrigin, CorsLayer};
    let origins = gateway.reverse.allowed_origins.clone();
    CorsLayer::new()
        .allow_origin(AllowOrigin::predicate(move |origin, _| {
            origin.to_str().is_ok_and(|o| origins.allows(o))
        }))
        .allow_methods([http::Method::GET, http::Method::POST, http::Method::DELETE])
        // MCP's request headers include `Mcp-Param-*`, which no fixed list can name.
        .allow_headers(AllowHeaders::mirror_request())
        .expose_headers([MCP_SESSION_ID.clone(), MCP_PROTOCOL_VERSION.clone()])
        .max_age(std::time::Duration::from_secs(3600))
}

/// Origin (always) and Host (when bound to loopback: DNS rebinding) validation.
async fn guard(State(gateway): State<Arc<Gateway>>, request: Request, next: Next) -> Response {
    let headers = request.headers();
    if let Some(origin) = headers.get(ORIGIN) {
        let allowed = origin
            .to_str()
            .is_ok_and(|o| gateway.reverse.allowed_origins.allows(o));
        if !allowed {
            tracing::warn!(origin = ?origin, "refused a request from a disallowed Origin");
            return refuse(
                StatusCode::FORBIDDEN,
                format!(
                    "Forbidden: Origin {} is not allowed (--allowed-origin)",
                    String::from_utf8_lossy(origin.as_bytes())
                ),
            );
        }
    }
    if gateway.reverse.listen.ip().is_loopback() {
        let host = headers
            .get(HOST)
            .map(|h| h.to_str().unwrap_or("?"))
            .or_else(|| request.uri().authority().map(http::uri::Authority::as_str));
        if let Some(host) = host {
            if !is_loopback_authority(host) {
                tracing::warn!(
                    host,
                    "refused a request for a non-local Host (DNS rebinding?)"
                );
                return refuse(
                    StatusCode::MISDIRECTED_REQUEST,
                    format!("Misdirected Request: Host {host:?} is not this loopback server"),
                );
            }
        }
    }
    next.run(request).await
}

/// An HTTP refusal with a JSON-RPC error body (`id: null`).
pub(super) fn refuse(status: StatusCode, message: String) -> Response {
    let code = match status {
        StatusCode::PAYLOAD_TOO_LARGE => ErrorCode::MessageTooLarge,
        StatusCode::SERVICE_UNAVAILABLE => ErrorCode::TooManySessions,
        _ => ErrorCode::InvalidRequest,
    };
    let error = ProxyError::new(code, message).with("httpStatus", status.as_u16());
    json_response(status, error.to_response(None))
}

pub(super) fn json_response(status: StatusCode, body: Bytes) -> Response {
    let mut response = (status, body).into_response();
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

async fn not_allowed() -> Response {
    let mut response = refuse(
        StatusCode::METHOD_NOT_ALLOWED,
        "Method Not Allowed: use POST for messages and DELETE to end a session".into(),
    );
    response
        .headers_mut()
        .insert(ALLOW, HeaderValue::from_static("GET, POST, DELETE"));
    response
}

/// What the client's `Accept` allows.
#[derive(Debug, Clone, Copy)]
pub(super) struct Accepts {
    pub(super) json: bool,
    pub(super) sse: bool,
}

pub(super) fn accepts(headers: &HeaderMap) -> Accepts {
    let mut accepts = Accepts {
        json: false,
        sse: false,
    };
    let values: Vec<_> = headers.get_all(ACCEPT).iter().collect();
    if values.is_empty() {
        return Accepts {
            json: true,
            sse: true,
        };
    }
    for value in values {
        for item in value.to_str().unwrap_or("").split(',') {
            let media = item
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            match media.as_str() {
                "*/*" => {
                    accepts.json = true;
                    accepts.sse = true;
                }
                "application/json" | "application/*" => accepts.json = true,
                "text/event-stream" | "text/*" => accepts.sse = true,
                _ => {}
            }
        }
    }
    accepts
}

/// The session a request names, or the refusal for a missing or unknown one.
#[allow(clippy::result_large_err)] // The error is the response itself, returned at once.
pub(super) fn session_of(
    gateway: &Gateway,
    headers: &HeaderMap,
) -> Result<Arc<SessionLink>, Response> {
    let Some(value) = headers.get(&MCP_SESSION_ID) else {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            "Bad Request: missing Mcp-Session-Id header; start a session with initialize".into(),
        ));
    };
    let link = value
        .to_str()
        .ok()
        .and_then(|v| SessionId::parse(v).ok())
        .and_then(|id| gateway.link(&id));
    match link {
        Some(link) if !link.session.closed_token().is_cancelled() => Ok(link),
        _ => Err(refuse(
            StatusCode::NOT_FOUND,
            "Not Found: no such session (it expired or was ended); start a new one with initialize"
                .into(),
        )),
    }
}

/// `DELETE`: ends the session, and its upstream session or child.
async fn delete(State(gateway): State<Arc<Gateway>>, headers: HeaderMap) -> Response {
    let link = match session_of(&gateway, &headers) {
        Ok(link) => link,
        Err(response) => return response,
    };
    gateway.close_session(link.session.id()).await;
    StatusCode::OK.into_response()
}

/// `POST`: one message or batch from the client.
#[allow(clippy::too_many_lines)] // One pass over the spec's checks, in the order it lists them.
async fn post(State(gateway): State<Arc<Gateway>>, headers: HeaderMap, body: Body) -> Response {
    if let Err(response) = check_content_type(&headers) {
        return response;
    }
    let accepts = accepts(&headers);
    if !accepts.json && !accepts.sse {
        return refuse(
            StatusCode::NOT_ACCEPTABLE,
            "Not Acceptable: the client must accept application/json and text/event-stream".into(),
        );
    }
    let header_version = match headers.get(&MCP_PROTOCOL_VERSION).map(HeaderValue::to_str) {
        None => None,
        Some(Ok(v)) if version::is_known(v) => Some(v.to_owned()),
        Some(v) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                format!(
                    "Bad Request: unsupported MCP-Protocol-Version {:?} (known: {})",
                    v.unwrap_or("?"),
                    version::KNOWN.join(", ")
                ),
            );
        }
    };
    let frame = match read_frame(&gateway, &headers, body).await {
        Ok(frame) => frame,
        Err(response) => return response,
    };
    let (members, batch) = match frame {
        Frame::Single(msg) => (vec![Ok(msg)], false),
        Frame::Batch(members) => (members, true),
    };
    let initialize = !batch
        && matches!(&members[..], [Ok(m)] if m.kind() == Kind::Request && m.method() == Some(&Method::Initialize));
    let contains_initialize = members
        .iter()
        .any(|m| matches!(m, Ok(m) if m.method() == Some(&Method::Initialize)));
    if batch && contains_initialize {
        return refuse(
            StatusCode::BAD_REQUEST,
            "Bad Request: initialize must not be part of a batch".into(),
        );
    }
    let stateless = !headers.contains_key(&MCP_SESSION_ID)
        && !initialize
        && header_version.as_deref().is_some_and(version::is_stateless);
    let opened = if stateless {
        Some(gateway.open_stateless())
    } else if initialize && !headers.contains_key(&MCP_SESSION_ID) {
        Some(gateway.open_session(crate::session::TransportKind::Http))
    } else {
        None
    };
    let (link, new_session) = if let Some(opened) = opened {
        match opened {
            Ok(link) => (link, true),
            Err(OpenError::Sessions(SessionError::TooManySessions { limit })) => {
                let mut response = refuse(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!(
                        "Service Unavailable: {limit} sessions are open and none is idle (--max-sessions)"
                    ),
                );
                response
                    .headers_mut()
                    .insert(http::header::RETRY_AFTER, HeaderValue::from_static("1"));
                return response;
            }
            Err(e @ OpenError::StatelessUnsupported) => {
                return refuse(StatusCode::BAD_REQUEST, format!("Bad Request: {e}"));
            }
            Err(e @ OpenError::ShuttingDown) => {
                let error =
                    ProxyError::new(ErrorCode::ShuttingDown, e.to_string()).with("httpStatus", 503);
                return json_response(StatusCode::SERVICE_UNAVAILABLE, error.to_response(None));
            }
            Err(e) => {
                tracing::error!(%e, "cannot open a session");
                let error = ProxyError::new(ErrorCode::UpstreamExited, e.to_string())
                    .with("httpStatus", 502);
                return json_response(StatusCode::BAD_GATEWAY, error.to_response(None));
            }
        }
    } else {
        match session_of(&gateway, &headers) {
            Ok(link) => (link, false),
            Err(response) => return response,
        }
    };
    // A stateless request's session ends with its POST, whichever way that goes.
    let ephemeral = stateless.then(|| EndOnDrop {
        gateway: gateway.clone(),
        session: link.session.id().clone(),
    });
    if batch && members.len() > MAX_BATCH_MESSAGES {
        let error = ProxyError::new(
            ErrorCode::InvalidRequest,
            format!(
                "Bad Request: a batch of {} messages exceeds the limit of {MAX_BATCH_MESSAGES}",
                members.len()
            ),
        )
        .with("limit", MAX_BATCH_MESSAGES)
        .with("httpStatus", 400);
        if new_session {
            gateway.sessions.end(link.session.id(), EndReason::Error);
        }
        return json_response(StatusCode::BAD_REQUEST, error.to_response(None));
    }
    if batch {
        let negotiated = link.session.metadata().protocol_version;
        let version = header_version
            .as_deref()
            .or(negotiated.as_deref())
            .unwrap_or(version::ASSUMED_WITHOUT_HEADER);
        if !version::allows_batches(version) {
            return refuse(
                StatusCode::BAD_REQUEST,
                format!("Bad Request: JSON-RPC batches are not part of protocol version {version}"),
            );
        }
    }

    // Through the pipeline, in order.
    let mut forwarded = Vec::with_capacity(members.len());
    let mut expected = Vec::new();
    let mut tokens = Vec::new();
    let mut answers = Vec::new();
    for member in members {
        match member {
            Err(e) => {
                gateway
                    .pipeline
                    .metrics()
                    .malformed(crate::protocol::Direction::ClientToServer);
                answers.push(e.to_response().raw().clone());
            }
            Ok(msg) => {
                let request = (msg.kind() == Kind::Request)
                    .then(|| msg.id().cloned().zip(msg.method().cloned()))
                    .flatten();
                let token = request
                    .as_ref()
                    .and_then(|_| progress_token(&msg, "/params/_meta/progressToken"));
                match gateway.inbound(&link.session, msg).await {
                    crate::proxy::Verdict::Forward(msg) => {
                        gateway
                            .pipeline
                            .metrics()
                            .forwarded(crate::protocol::Direction::ClientToServer);
                        if msg.method() == Some(&Method::Cancelled) {
                            // The request is over for the client: the POST waiting for it must
                            // not wait for an answer the server won't send.
                            if let Some(id) = msg.cancelled_request_id() {
                                link.router.cancel(&id).await;
                            }
                        }
                        if request.is_some() {
                            tokens.extend(token);
                        }
                        expected.extend(request);
                        forwarded.push(msg);
                    }
                    crate::proxy::Verdict::Respond(answer) => {
                        gateway
                            .pipeline
                            .metrics()
                            .answered_by_proxy(crate::protocol::Direction::ClientToServer);
                        answers.push(answer.raw().clone());
                    }
                    crate::proxy::Verdict::Drop => {}
                }
            }
        }
    }

    let (reply, mut replies) = reply_channel(expected.len());
    if expected.is_empty() {
        if new_session && !stateless {
            // The pipeline answered the initialize itself (refused it): no session.
            gateway.sessions.end(link.session.id(), EndReason::Error);
        }
        // Notifications and responses: the upstream has taken them when we answer 202, so a
        // client's next message can't overtake them.
        let mut rejected = None;
        {
            let mut exchange = std::pin::pin!(gateway.exchange(&link, forwarded, &headers, &reply));
            // Drained as the exchange goes, so a large batch can't fill the channel and stall it.
            loop {
                tokio::select! {
                    () = &mut exchange => break,
                    Some(item) = replies.recv() => {
                        if let Reply::Rejected { status, content_type, body, .. } = item {
                            rejected.get_or_insert((status, content_type, body));
                        }
                    }
                }
            }
        }
        drop(reply);
        while let Ok(item) = replies.try_recv() {
            if let Reply::Rejected {
                status,
                content_type,
                body,
                ..
            } = item
            {
                rejected.get_or_insert((status, content_type, body));
            }
        }
        if let (Some((status, content_type, body)), true) = (rejected, answers.is_empty()) {
            return passthrough(&gateway, &link, false, status, content_type.as_ref(), body);
        }
        if answers.is_empty() {
            return StatusCode::ACCEPTED.into_response();
        }
        return json_response(StatusCode::OK, join(&answers, batch));
    }

    let ids: Vec<RequestId> = expected.iter().map(|(id, _)| id.clone()).collect();
    let guard = Registration::new(link.router.clone(), ids, tokens, &reply);
    let started = tokio::time::Instant::now();
    // Driven by this POST's own task (no spawn, no cross-task wake-up per request), alongside
    // the wait for its answers; dropped, and so cancelled, if the client goes away.
    let exchange: Exchange = {
        let (gateway, link, reply) = (gateway.clone(), link.clone(), reply.clone());
        Box::pin(async move {
            gateway.exchange(&link, forwarded, &headers, &reply).await;
        })
    };
    drop(reply);
    let mut state = Answering {
        gateway: gateway.clone(),
        link: link.clone(),
        replies,
        expected: expected.into_iter().collect(),
        started,
        new_session,
        ephemeral,
        batch,
        exchange: Some(exchange),
        _registration: guard,
    };

    // Collect answers while that is all that comes; switch to SSE when something else does (or
    // at once, for a client that accepts only SSE).
    let mut out = answers;
    let mut streaming = !accepts.json;
    while !state.expected.is_empty() && (!streaming || out.is_empty()) {
        match state.next().await {
            Arrival::Answer(raw) => out.push(raw),
            Arrival::Other(raw) => {
                if accepts.sse {
                    out.push(raw);
                    streaming = true;
                } else {
                    Answering::refuse_json_only(&state.link, raw).await;
                }
            }
            Arrival::Rejected {
                status,
                content_type,
                body,
            } if !batch && out.is_empty() => {
                return passthrough(
                    &gateway,
                    &link,
                    new_session,
                    status,
                    content_type.as_ref(),
                    body,
                );
            }
            Arrival::Rejected { .. } | Arrival::Cancelled => {}
        }
    }
    // A stateless request's session is ours alone: the client never sees its id.
    let session_header = (new_session && !stateless)
        .then(|| HeaderValue::from_str(link.session.id().as_str()).ok())
        .flatten();
    if !streaming {
        // The rest of a batch (notifications, responses) still reaches the upstream.
        state.finish_exchange().await;
        if out.is_empty() {
            // Every request was cancelled by the client: nothing to answer.
            return StatusCode::ACCEPTED.into_response();
        }
        if new_session && !out.first().is_some_and(is_success) {
            // The upstream refused to initialize: no session.
            gateway.sessions.end(link.session.id(), EndReason::Error);
            return json_response(StatusCode::OK, join(&out, batch));
        }
        let mut response = json_response(StatusCode::OK, join(&out, batch));
        if let Some(id) = session_header {
            response.headers_mut().insert(MCP_SESSION_ID.clone(), id);
        }
        return response;
    }
    let first = futures_util::stream::iter(out.into_iter().map(|raw| sse::message_event(&raw)));
    let rest = futures_util::stream::unfold(state, |mut state| async move {
        loop {
            if state.expected.is_empty() {
                state.finish_exchange().await;
                return None;
            }
            match state.next().await {
                Arrival::Answer(raw) | Arrival::Other(raw) => {
                    return Some((sse::message_event(&raw), state));
                }
                Arrival::Rejected { .. } | Arrival::Cancelled => {}
            }
        }
    });
    let body = Body::from_stream(first.chain(rest).map(Ok::<Bytes, Infallible>));
    let mut response = sse_response(body);
    if let Some(id) = session_header {
        response.headers_mut().insert(MCP_SESSION_ID.clone(), id);
    }
    response
}

/// 415 unless the body is `application/json`.
#[allow(clippy::result_large_err)] // The error is the response itself, returned at once.
pub(super) fn check_content_type(headers: &HeaderMap) -> Result<(), Response> {
    let is_json = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"));
    if is_json {
        return Ok(());
    }
    Err(refuse(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "Unsupported Media Type: POST bodies must be application/json".into(),
    ))
}

/// Reads a POST body of at most `--max-message-size` (413 beyond) and parses its envelope
/// (400 with the parse error when it is not JSON-RPC).
#[allow(clippy::result_large_err)] // The error is the response itself, returned at once.
pub(super) async fn read_frame(
    gateway: &Gateway,
    headers: &HeaderMap,
    body: Body,
) -> Result<Frame, Response> {
    let limit = gateway.config.max_message_size;
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let too_large = |size: Option<u64>| {
        let mut error = ProxyError::new(
            ErrorCode::MessageTooLarge,
            format!("Payload Too Large: the body exceeds the limit of {limit} bytes (--max-message-size)"),
        )
        .with("limit", limit)
        .with("httpStatus", 413);
        if let Some(size) = size {
            error = error.with("size", size);
        }
        json_response(StatusCode::PAYLOAD_TOO_LARGE, error.to_response(None))
    };
    if declared.is_some_and(|len| len > limit as u64) {
        return Err(too_large(declared));
    }
    let body = match read_body(body, limit).await {
        Ok(body) => body,
        Err(BodyError::TooLarge { .. }) => return Err(too_large(None)),
        Err(BodyError::Read(e)) => {
            return Err(refuse(
                StatusCode::BAD_REQUEST,
                format!("Bad Request: reading the body failed: {e}"),
            ));
        }
    };
    let frame = match Message::parse_frame(body) {
        Ok(frame) => frame,
        Err(e) => {
            gateway
                .pipeline
                .metrics()
                .malformed(crate::protocol::Direction::ClientToServer);
            return Err(json_response(
                StatusCode::BAD_REQUEST,
                e.to_response().raw().clone(),
            ));
        }
    };
    Ok(frame)
}

/// The upstream refused the POST's only message: its status and body go to the client as they
/// are. A 404 means the upstream lost the session, so ours ends too and the client starts over.
fn passthrough(
    gateway: &Gateway,
    link: &SessionLink,
    new_session: bool,
    status: StatusCode,
    content_type: Option<&HeaderValue>,
    body: Bytes,
) -> Response {
    if new_session {
        // The upstream refused to initialize: no session.
        gateway.sessions.end(link.session.id(), EndReason::Error);
    } else if status == StatusCode::NOT_FOUND {
        tracing::warn!("the upstream no longer knows this session; ending it");
        gateway.sessions.end(link.session.id(), EndReason::Error);
    }
    let is_json = content_type
        .as_ref()
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().starts_with("application/json"));
    if is_json && !body.is_empty() {
        return json_response(status, body);
    }
    let error = ProxyError::new(
        ErrorCode::UpstreamHttpError,
        format!("the upstream answered HTTP {status}"),
    )
    .with("httpStatus", status.as_u16())
    .with(
        "body",
        String::from_utf8_lossy(&body[..body.len().min(1024)]).into_owned(),
    );
    json_response(status, error.to_response(None))
}

/// Whether a raw answer is a successful response (not an error).
fn is_success(raw: &Bytes) -> bool {
    Message::parse(raw.clone()).is_ok_and(|m| m.kind() == Kind::Response)
}

/// One answer, or a batch's answers as one array.
fn join(answers: &[Bytes], batch: bool) -> Bytes {
    if !batch {
        if let [only] = answers {
            return only.clone();
        }
    }
    let mut out = BytesMut::with_capacity(answers.iter().map(|a| a.len() + 1).sum::<usize>() + 2);
    out.put_u8(b'[');
    for (i, answer) in answers.iter().enumerate() {
        if i > 0 {
            out.put_u8(b',');
        }
        out.put_slice(answer);
    }
    out.put_u8(b']');
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_headers() {
        let mut h = HeaderMap::new();
        let a = accepts(&h);
        assert!(a.json && a.sse);
        h.insert(
            ACCEPT,
            HeaderValue::from_static("application/json, text/event-stream"),
        );
        let a = accepts(&h);
        assert!(a.json && a.sse);
        h.insert(ACCEPT, HeaderValue::from_static("text/event-stream;q=1"));
        let a = accepts(&h);
        assert!(!a.json && a.sse);
        h.insert(ACCEPT, HeaderValue::from_static("text/html"));
        let a = accepts(&h);
        assert!(!a.json && !a.sse);
    }

    #[test]
    fn batches_join_into_one_array() {
        let a = Bytes::from_static(b"{\"id\":1}");
        assert_eq!(join(std::slice::from_ref(&a), false), a);
        assert_eq!(
            join(&[a.clone(), a.clone()], true),
            Bytes::from_static(b"[{\"id\":1},{\"id\":1}]")
        );
        assert_eq!(join(&[a], true), Bytes::from_static(b"[{\"id\":1}]"));
    }
}
