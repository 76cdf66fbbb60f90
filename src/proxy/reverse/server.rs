//! The downstream side: the Streamable HTTP endpoint MCP clients talk to (axum on hyper).
//!
//! `POST` carries one client message (or, in 2025-03-26, a batch): notifications and responses
//! are answered `202 Accepted`; requests with `application/json` when their answer is all there
//! is, or `text/event-stream` when the server says more first (progress, logging, its own
//! requests) or the client accepts only SSE. `DELETE` ends the session; `GET` opens the session's
//! own stream (see [`super::get`]). The checks every request passes, and the refusals, are in
//! [`super::checks`]. A POST whose every message a rate limit refused is answered 429, with
//! `Retry-After` and the `RateLimit` headers (a batch that was only partly refused gets the
//! refusals among its answers).

use std::convert::Infallible;
use std::sync::Arc;

use axum::Extension;
use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::response::{IntoResponse, Response};
use bytes::{BufMut, Bytes, BytesMut};
use futures_util::StreamExt;
use http::{HeaderMap, HeaderValue, StatusCode};
use std::net::SocketAddr;

use crate::protocol::error::ProxyError;
use crate::protocol::{ErrorCode, Frame, Kind, Message, Method, RequestId, version};
use crate::ratelimit::Refusal;
use crate::session::EndReason;
use crate::transport::http::{MCP_PROTOCOL_VERSION, MCP_SESSION_ID};
use crate::transport::serve::ClientCounts;
use crate::transport::sse;

use super::alias::Aliases;
use super::answer::{Answering, Arrival, EndOnDrop, Exchange, Pause, Registration};
use super::checks::{accepts, check_content_type, client_of, cors, guard, read_frame, session_of};
use super::gateway::{Gateway, OpenError, SessionLink, Stateless, reply_channel};
use super::live::{keepalive_due, keepalive_timer, request_body, sse_response};
use super::respond::{json_response, method_not_allowed, refuse};
use super::router::Reply;
use super::screen::{Screened, screen};
use crate::proxy::upstream::Rejection;

/// The MCP endpoint's routes, with Origin/Host validation and CORS.
pub fn routes(gateway: Arc<Gateway>) -> axum::Router {
    let path = gateway.reverse.path.clone();
    let cors = cors(&gateway);
    let metadata = format!("{}{path}", super::authn::METADATA_PATH);
    axum::Router::new()
        .route(
            &path,
            axum::routing::post(post)
                .delete(delete)
                .get(super::get::get)
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
        .route_layer(axum::middleware::from_fn_with_state(
            gateway.clone(),
            super::authn::authenticate,
        ))
        // Before the door: the owner checks the request's token itself.
        .route_layer(axum::middleware::from_fn_with_state(
            gateway.clone(),
            super::owner::to_owner,
        ))
        .route(
            super::authn::METADATA_PATH,
            axum::routing::get(super::authn::metadata),
        )
        .route(&metadata, axum::routing::get(super::authn::metadata))
        .layer(cors)
        .layer(axum::middleware::from_fn_with_state(gateway.clone(), guard))
        .with_state(gateway)
}

async fn not_allowed() -> Response {
    method_not_allowed(
        "use POST for messages and DELETE to end a session",
        "GET, POST, DELETE",
    )
}

/// `DELETE`: ends the session, and its upstream session or child.
async fn delete(
    State(gateway): State<Arc<Gateway>>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
) -> Response {
    let peer = peer.map(|Extension(ConnectInfo(addr))| addr);
    let client = client_of(&gateway.reverse.trusted_proxies, peer, &headers);
    let link = match session_of(&gateway, &headers, None, client).await {
        Ok(link) => link,
        Err(response) => return response,
    };
    gateway.close_session(link.session.id()).await;
    StatusCode::OK.into_response()
}

/// What a POST is, read before any session is touched: who sent it, what it accepts, its
/// messages, and which era and kind of exchange it starts.
struct Intake {
    client: crate::stage::Client<'static>,
    accepts: super::checks::Accepts,
    /// The `MCP-Protocol-Version` header, trimmed.
    header_version: Option<String>,
    members: Vec<Result<Message, crate::protocol::ParseError>>,
    batch: bool,
    /// The id of the POST's one request, for refusals.
    only_id: Option<RequestId>,
    /// A handshake (`initialize` alone, not in the stateless era).
    initialize: bool,
    /// The header puts the request in the stateless era (2026-07-28, or a version unknown).
    stateless_era: bool,
}

impl Intake {
    /// The id of the server request the POST answers, if it answers one (which goes to the
    /// process that asked).
    fn answering(&self) -> Option<&RequestId> {
        self.members.iter().find_map(|m| match m {
            Ok(msg) if msg.is_response() => msg.id(),
            _ => None,
        })
    }
}

/// The first step of a POST: its headers, its body read and parsed, and the checks that need
/// nothing else (Content-Type, Accept, the version header, `initialize` in a batch, the
/// 2026-07-28 headers against the body).
#[allow(clippy::result_large_err)] // The error is the response itself, returned at once.
async fn intake(
    gateway: &Gateway,
    peer: Option<SocketAddr>,
    headers: &HeaderMap,
    body: Body,
) -> Result<Intake, Response> {
    let client = client_of(&gateway.reverse.trusted_proxies, peer, headers);
    check_content_type(headers)?;
    let accepts = accepts(headers);
    if !accepts.json && !accepts.sse {
        return Err(refuse(
            StatusCode::NOT_ACCEPTABLE,
            "Not Acceptable: the client must accept application/json and text/event-stream".into(),
        ));
    }
    let header_version = match headers.get(&MCP_PROTOCOL_VERSION).map(HeaderValue::to_str) {
        None => None,
        Some(Ok(v)) => Some(v.trim().to_owned()),
        Some(Err(_)) => {
            return Err(refuse(
                StatusCode::BAD_REQUEST,
                "Bad Request: the MCP-Protocol-Version header has invalid characters".into(),
            ));
        }
    };
    let frame = read_frame(gateway, headers, body).await?;
    let (members, batch) = match frame {
        Frame::Single(msg) => (vec![Ok(msg)], false),
        Frame::Batch(members) => (members, true),
    };
    // The id of the POST's one request, for the refusals below.
    let only_id = match (&members[..], batch) {
        ([Ok(msg)], false) => msg.request_id().cloned(),
        _ => None,
    };
    // A version of the stateless era, or one we do not know (a later one, perhaps): not ours
    // to refuse without a session; the server answers it (-32022 if it does not know it either).
    let modern_header = header_version
        .as_deref()
        .is_some_and(|v| version::is_stateless(v) || !version::is_known(v));
    if let (Some(v), true) = (
        header_version.as_deref(),
        headers.contains_key(&MCP_SESSION_ID),
    ) {
        if !version::is_known(v) {
            let error = ProxyError::new(
                ErrorCode::InvalidRequest,
                format!(
                    "Bad Request: unsupported MCP-Protocol-Version {v:?} (known: {})",
                    version::KNOWN.join(", ")
                ),
            )
            .with("httpStatus", 400);
            return Err(json_response(
                StatusCode::BAD_REQUEST,
                error.to_response(only_id.as_ref()),
            ));
        }
    }
    // The handshake, unless the header puts the request in the stateless era (where
    // `initialize` is a method that no longer exists).
    let initialize = !batch
        && !modern_header
        && matches!(&members[..], [Ok(m)] if m.kind() == Kind::Request && m.method() == Some(&Method::Initialize));
    let contains_initialize = members
        .iter()
        .any(|m| matches!(m, Ok(m) if m.method() == Some(&Method::Initialize)));
    if batch && contains_initialize {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            "Bad Request: initialize must not be part of a batch".into(),
        ));
    }
    let stateless_era = !initialize && modern_header;
    if let ([Ok(msg)], true) = (&members[..], stateless_era) {
        // The headers that mirror the body must match it (2026-07-28).
        super::mirror::check(headers, msg)?;
    }
    Ok(Intake {
        client,
        accepts,
        header_version,
        members,
        batch,
        only_id,
        initialize,
        stateless_era,
    })
}

/// The session a POST's exchange belongs to, and what the POST holds for it.
struct Opened {
    link: Arc<SessionLink>,
    /// This POST opened the session (its `initialize`, or a stateless request's own session).
    new_session: bool,
    /// The stateless requests' shared child.
    shared: bool,
    /// A stateless (2026-07-28) request: no session id from the client.
    stateless: bool,
    /// The request's place under its client's bound at the shared child.
    in_flight: Option<crate::transport::serve::ClientSlot>,
    /// Ends a stateless request's own session when the POST is over.
    ephemeral: Option<EndOnDrop>,
}

impl Opened {
    /// A stateless request to a command's process (shared or its own): the gateway is the
    /// process's HTTP server, so the binding's checks and statuses are the gateway's to apply.
    fn served_here(&self) -> bool {
        self.stateless && self.link.upstream.is_process()
    }
}

/// The second step of a POST: the session it opens (`initialize`, a stateless request) or
/// names, refused if it cannot have one; at the shared child the checks of the HTTP binding
/// and the client's bound; a batch where the protocol version has none.
#[allow(clippy::result_large_err)] // The error is the response itself, returned at once.
async fn open(
    gateway: &Arc<Gateway>,
    headers: &HeaderMap,
    intake: &Intake,
) -> Result<Opened, Response> {
    let stateless = !headers.contains_key(&MCP_SESSION_ID) && intake.stateless_era;
    let mut shared = false;
    let opened = if stateless {
        Some(
            gateway
                .open_stateless(intake.client, intake.answering())
                .map(|to| match to {
                    Stateless::Own(link) => link,
                    Stateless::Shared(link) => {
                        shared = true;
                        link
                    }
                }),
        )
    } else if intake.initialize && !headers.contains_key(&MCP_SESSION_ID) {
        Some(gateway.open_session(
            crate::session::TransportKind::Http,
            intake.client,
            super::router::Delivery::Streamable,
        ))
    } else {
        None
    };
    let (link, new_session) = if let Some(opened) = opened {
        match opened {
            // The shared child's session is not this request's to end.
            Ok(link) => (link, !shared),
            Err(e) => {
                if let OpenError::Sessions(_) = e {
                    tracing::warn!(%e, "cannot open a session");
                }
                return Err(super::checks::refuse_open(&e, intake.only_id.as_ref()));
            }
        }
    } else {
        (
            session_of(gateway, headers, intake.only_id.as_ref(), intake.client).await?,
            false,
        )
    };
    let served_here = stateless && link.upstream.is_process();
    if let ([Ok(msg)], true) = (&intake.members[..], served_here) {
        // The gateway is the HTTP server of a stdio child: it checks what the child cannot see.
        super::binding::check_request(&link, headers, msg)?;
    }
    // At the shared child, one client's requests in flight are bounded, so that it cannot take
    // the room every other stateless client needs there.
    let in_flight = match (shared, intake.client) {
        (true, crate::stage::Client::Address(address)) => {
            let limit = (gateway.config.sessions.max_pending_requests / 4).max(1);
            let slot = ClientCounts::take(&gateway.stateless_in_flight, address, limit);
            if slot.is_none() {
                let error = ProxyError::new(
                    ErrorCode::TooManyPendingRequests,
                    format!("Service Unavailable: this client has {limit} requests in flight at the server (a quarter of --max-pending-requests)"),
                )
                .with("limit", limit)
                .with("httpStatus", 503);
                let mut response = json_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    error.to_response(intake.only_id.as_ref()),
                );
                response
                    .headers_mut()
                    .insert(http::header::RETRY_AFTER, HeaderValue::from_static("1"));
                return Err(response);
            }
            slot
        }
        _ => None,
    };
    // A stateless request's own session ends with its POST, whichever way that goes.
    let ephemeral = (stateless && !shared).then(|| EndOnDrop {
        gateway: gateway.clone(),
        session: link.session.id().clone(),
        tape: link.session.tape().cloned(),
    });
    if intake.batch {
        let negotiated = link.session.read_metadata(|m| m.protocol_version.clone());
        let version = intake
            .header_version
            .as_deref()
            .or(negotiated.as_deref())
            .unwrap_or(version::ASSUMED_WITHOUT_HEADER);
        if !version::allows_batches(version) {
            return Err(refuse(
                StatusCode::BAD_REQUEST,
                format!("Bad Request: JSON-RPC batches are not part of protocol version {version}"),
            ));
        }
    }
    Ok(Opened {
        link,
        new_session,
        shared,
        stateless,
        in_flight,
        ephemeral,
    })
}

/// A POST's members as the pipeline left them, for [`refused_whole`].
struct Refused<'a> {
    forwarded: usize,
    answers: &'a [Bytes],
    limited: Option<&'a (Refusal, usize)>,
    busy: usize,
    /// With authentication: how many answers are refusals for want of a scope, and the
    /// challenge that asks for it.
    forbidden: Option<(usize, HeaderValue)>,
    batch: bool,
}

/// The answer to a POST refused whole: every member over a rate limit (429, with when to come
/// back), every request without room even after `--pending-wait` (503, `Retry-After: 1`), or
/// every member refused by a rule for want of a scope (403 `insufficient_scope`, with the
/// challenge that asks for it).
fn refused_whole(r: &Refused<'_>) -> Option<Response> {
    if r.forwarded > 0 {
        return None;
    }
    if let Some((count, challenge)) = &r.forbidden {
        if *count == r.answers.len() {
            let mut response = json_response(StatusCode::FORBIDDEN, join(r.answers, r.batch));
            response
                .headers_mut()
                .insert(http::header::WWW_AUTHENTICATE, challenge.clone());
            return Some(response);
        }
    }
    if let Some((refusal, count)) = r.limited {
        if *count == r.answers.len() {
            let mut response =
                json_response(StatusCode::TOO_MANY_REQUESTS, join(r.answers, r.batch));
            response.headers_mut().extend(refusal.headers());
            return Some(response);
        }
    }
    if r.busy > 0 && r.busy == r.answers.len() {
        let mut response = json_response(StatusCode::SERVICE_UNAVAILABLE, join(r.answers, r.batch));
        response
            .headers_mut()
            .insert(http::header::RETRY_AFTER, HeaderValue::from_static("1"));
        return Some(response);
    }
    None
}

/// What the proxy answered of a POST itself, and how the POST is to be answered.
struct Answered<'a> {
    answers: &'a [Bytes],
    /// The id of the POST's one request.
    only_id: Option<&'a RequestId>,
    /// At a command's process in the stateless era (whose answers take the binding's statuses).
    shared: bool,
    batch: bool,
}

/// The last step of a POST without requests (notifications and responses): handed to the
/// upstream before the answer, so a client's next message cannot overtake them; then 202, or
/// the upstream's refusal passed on, or what the proxy answered itself.
async fn accept(
    gateway: &Arc<Gateway>,
    link: &Arc<SessionLink>,
    forwarded: Vec<Message>,
    headers: &HeaderMap,
    post: &Answered<'_>,
) -> Response {
    let (reply, mut replies) = reply_channel(0);
    let mut rejected = None;
    {
        let mut exchange = std::pin::pin!(gateway.exchange(link, forwarded, headers, &reply));
        // Drained as the exchange goes, so a large batch can't fill the channel and stall it.
        loop {
            tokio::select! {
                () = &mut exchange => break,
                Some(item) = replies.recv() => {
                    if let Some(refused) = upstream_refusal(item) {
                        rejected.get_or_insert(refused);
                    }
                }
            }
        }
    }
    drop(reply);
    while let Ok(item) = replies.try_recv() {
        if let Some(refused) = upstream_refusal(item) {
            rejected.get_or_insert(refused);
        }
    }
    if let (Some(refused), true) = (rejected, post.answers.is_empty()) {
        return passthrough(gateway, link, false, refused, post.only_id);
    }
    if post.answers.is_empty() {
        return StatusCode::ACCEPTED.into_response();
    }
    let status = super::binding::answer_status(post.shared, post.batch, post.answers);
    json_response(status, join(post.answers, post.batch))
}

/// `POST`: one message or batch from the client, in named steps: [`intake`], [`open`] its
/// session, [`screen`] its members through the pipeline; then refused whole
/// ([`refused_whole`]), or without requests [`accept`]ed, or [`answer`]ed.
async fn post(
    State(gateway): State<Arc<Gateway>>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    caller: super::authn::Caller,
    mut headers: HeaderMap,
    body: Body,
) -> Response {
    let peer = peer.map(|Extension(ConnectInfo(addr))| addr);
    let intake = match intake(&gateway, peer, &headers, body).await {
        Ok(intake) => intake,
        Err(response) => return response,
    };
    let opened = match open(&gateway, &headers, &intake).await {
        Ok(opened) => opened,
        Err(response) => return response,
    };
    if !opened.shared {
        opened.link.bind(&caller);
    } else if caller.is_some() {
        opened.link.session.mix_callers();
    }
    if let Err(refused) = super::authn::exchange(&gateway, &opened.link, &headers).await {
        if opened.new_session && !opened.stateless {
            gateway
                .sessions
                .end(opened.link.session.id(), EndReason::Error);
        }
        return refused;
    }
    let Intake {
        client,
        accepts,
        members,
        batch,
        only_id,
        ..
    } = intake;
    // Through the pipeline, in order.
    let mut aliases = opened.shared.then(|| {
        Aliases::new(
            gateway.shared_aliases.clone(),
            opened.link.session.id().clone(),
        )
    });
    let mut screened = screen(
        &gateway,
        &opened.link,
        super::authn::sender(&caller, client),
        members,
        aliases.as_mut(),
        &mut headers,
    )
    .await;
    let refused = refused_whole(&Refused {
        forwarded: screened.forwarded.len(),
        answers: &screened.answers,
        limited: screened.limited.as_ref(),
        busy: screened.busy,
        forbidden: super::authn::step_up(&gateway, &headers, screened.forbidden.take()),
        batch,
    });
    if refused.is_some() || screened.expected.is_empty() {
        if opened.new_session && !opened.stateless {
            // Refused, or the pipeline answered the initialize itself: no session.
            gateway
                .sessions
                .end(opened.link.session.id(), EndReason::Error);
        }
        if let Some(response) = refused {
            return response;
        }
        let answered = Answered {
            answers: &screened.answers,
            only_id: only_id.as_ref(),
            shared: opened.served_here(),
            batch,
        };
        return accept(
            &gateway,
            &opened.link,
            screened.forwarded,
            &headers,
            &answered,
        )
        .await;
    }
    let shape = Shape {
        accepts,
        batch,
        only_id,
    };
    answer(&gateway, headers, &shape, opened, screened, aliases).await
}

/// How a POST's client takes its answers.
struct Shape {
    accepts: super::checks::Accepts,
    batch: bool,
    /// The id of the POST's one request.
    only_id: Option<RequestId>,
}

/// What [`collect`] gathered for a POST.
enum Collected {
    /// Every answer, for one JSON body.
    Json(Vec<Bytes>),
    /// The first events of an SSE stream (`paused`: the upstream closed the request's stream for
    /// its client to resume, so the client's closes the same way after these).
    Stream {
        first: Vec<Bytes>,
        paused: Option<Pause>,
    },
    /// The upstream refused the POST's only message: passed on as it is.
    Rejected(Rejection),
}

/// The last step of a POST with requests: its exchange, driven by this POST's own task (no
/// spawn, no cross-task wake-up per request) alongside the wait for its answers, and dropped
/// (so cancelled) if the client goes away; then the answers as JSON, or an SSE stream for what
/// is still to come.
async fn answer(
    gateway: &Arc<Gateway>,
    headers: HeaderMap,
    shape: &Shape,
    opened: Opened,
    screened: Screened,
    aliases: Option<Aliases>,
) -> Response {
    let served_here = opened.served_here();
    let Opened {
        link,
        new_session,
        shared,
        stateless,
        in_flight,
        ephemeral,
    } = opened;
    // A new session's `initialize`, kept for an instance that takes the session over.
    let initialize = new_session
        .then(|| {
            screened
                .forwarded
                .iter()
                .find(|m| m.method() == Some(&Method::Initialize))
                .cloned()
        })
        .flatten();
    let (reply, replies) = reply_channel(screened.expected.len());
    let ids: Vec<RequestId> = screened.expected.iter().map(|(id, _)| id.clone()).collect();
    let registration = Registration::new(link.router.clone(), ids, screened.tokens, &reply);
    let exchange: Exchange = {
        let (gateway, link, reply, forwarded) = (
            gateway.clone(),
            link.clone(),
            reply.clone(),
            screened.forwarded,
        );
        Box::pin(async move {
            gateway.exchange(&link, forwarded, &headers, &reply).await;
        })
    };
    drop(reply);
    let mut state = Answering {
        gateway: gateway.clone(),
        link: link.clone(),
        replies,
        expected: screened.expected.into_iter().collect(),
        started: tokio::time::Instant::now(),
        new_session,
        ephemeral,
        aliases,
        batch: shape.batch,
        exchange: Some(exchange),
        _registration: registration,
        _in_flight: in_flight,
    };
    // Only a client that resumes (it gets priming events) can be made to.
    let resumes = shape.accepts.sse && !stateless && link.takes_priming_events();
    let mut response = match collect(&mut state, screened.answers, shape, resumes).await {
        Collected::Rejected(refused) => {
            return passthrough(gateway, &link, new_session, refused, shape.only_id.as_ref());
        }
        Collected::Json(out) => {
            // The rest of a batch (notifications, responses) still reaches the upstream.
            state.finish_exchange().await;
            if out.is_empty() {
                // Every request was cancelled by the client: nothing to answer.
                return StatusCode::ACCEPTED.into_response();
            }
            if new_session && !out.first().is_some_and(is_success) {
                // The upstream refused to initialize: no session.
                gateway.sessions.end(link.session.id(), EndReason::Error);
                return json_response(StatusCode::OK, join(&out, shape.batch));
            }
            if shared {
                for raw in &out {
                    link.tool_params.learn(raw);
                }
            }
            let status = super::binding::answer_status(served_here, shape.batch, &out);
            json_response(status, join(&out, shape.batch))
        }
        Collected::Stream { first, paused } => sse_response(if stateless {
            stateless_stream(gateway, state, first)
        } else {
            resumable_stream(gateway, &link, state, &first, paused)
        }),
    };
    // A stateless request's session is ours alone: the client never sees its id.
    if new_session && !stateless {
        if let Some(id) = gateway.client_id(&link) {
            response.headers_mut().insert(MCP_SESSION_ID.clone(), id);
        }
        if let Some(initialize) = &initialize {
            gateway.remember_handshake(&link, initialize).await;
        }
    }
    response
}

/// Collects a POST's answers (after the proxy's own, `answers`) while that is all that comes;
/// switches to SSE when something else does (or at once, for a client that accepts only SSE),
/// or when the upstream pauses a request's stream for a client that `resumes`.
async fn collect(
    state: &mut Answering,
    answers: Vec<Bytes>,
    shape: &Shape,
    resumes: bool,
) -> Collected {
    let mut out = answers;
    let mut streaming = !shape.accepts.json;
    let mut paused = None;
    while !state.expected.is_empty() && (!streaming || (out.is_empty() && paused.is_none())) {
        match state.next().await {
            Arrival::Answer(raw) => out.push(raw),
            Arrival::Paused(pause) => {
                if resumes {
                    streaming = true;
                    paused = Some(pause);
                }
            }
            Arrival::Other(raw) => {
                if shape.accepts.sse {
                    out.push(raw);
                    streaming = true;
                } else {
                    Answering::refuse_json_only(&state.link, raw).await;
                }
            }
            Arrival::Rejected(refused) if !shape.batch && out.is_empty() => {
                return Collected::Rejected(refused);
            }
            Arrival::Rejected(_) | Arrival::Cancelled => {}
        }
    }
    if streaming {
        Collected::Stream { first: out, paused }
    } else {
        Collected::Json(out)
    }
}

/// A POST's SSE stream in a session: its events are logged (with ids, for the client to resume
/// with `Last-Event-ID` if it loses the connection), and the request goes on without the client
/// (a disconnection is not a cancellation) until its answers are in.
/// `paused`: the upstream has already closed the request's stream for its client to resume, so
/// this connection ends after its first events.
fn resumable_stream(
    gateway: &Arc<Gateway>,
    link: &Arc<SessionLink>,
    mut state: Answering,
    first: &[Bytes],
    paused: Option<Pause>,
) -> Body {
    let (number, log) = link.posts.open();
    // Attached before the first events are logged, so they are handed to this connection
    // live: an event larger than the replay buffer's bound would otherwise be gone before
    // anyone took it.
    let connection = log.attach(link.takes_priming_events());
    for raw in first {
        log.push(raw);
    }
    if let Some(pause) = paused {
        log.pause(pause.retry);
    }
    let writer = log.clone();
    gateway.spawn(async move {
        while !state.expected.is_empty() {
            match state.next().await {
                Arrival::Answer(raw) | Arrival::Other(raw) => writer.push(&raw),
                // The client's connection closes as the upstream's did; it resumes by GET.
                Arrival::Paused(pause) => writer.pause(pause.retry),
                Arrival::Rejected(_) | Arrival::Cancelled => {}
            }
        }
        state.finish_exchange().await;
        writer.finish();
    });
    request_body(gateway, link, number, log, connection)
}

/// A stateless (2026-07-28) request's SSE stream: no ids (that era has no resumability), and
/// closing it cancels the request (the exchange is driven by this body and dropped with it).
fn stateless_stream(gateway: &Gateway, state: Answering, first: Vec<Bytes>) -> Body {
    let keepalive = keepalive_timer(gateway);
    let first = futures_util::stream::iter(first.into_iter().map(|raw| sse::message_event(&raw)));
    let rest = futures_util::stream::unfold(
        (state, keepalive),
        |(mut state, mut keepalive)| async move {
            loop {
                if state.expected.is_empty() {
                    state.finish_exchange().await;
                    return None;
                }
                let arrival = tokio::select! {
                    arrival = state.next() => arrival,
                    () = keepalive_due(&mut keepalive) => return Some((super::events::keepalive(), (state, keepalive))),
                };
                match arrival {
                    Arrival::Answer(raw) | Arrival::Other(raw) => {
                        return Some((sse::message_event(&raw), (state, keepalive)));
                    }
                    // That era has no resumption: the gateway's own is all there is.
                    Arrival::Paused(_) | Arrival::Rejected(_) | Arrival::Cancelled => {}
                }
            }
        },
    );
    Body::from_stream(first.chain(rest).map(Ok::<Bytes, Infallible>))
}

/// The upstream refused the POST's only message: its status and body go to the client as they
/// are (a body that is no JSON-RPC error becomes -32088 answering `id`, saying what the
/// refusal likely means). A 404 means the upstream lost the session, so ours ends too and the
/// client starts over.
fn passthrough(
    gateway: &Gateway,
    link: &SessionLink,
    new_session: bool,
    refused: Rejection,
    id: Option<&RequestId>,
) -> Response {
    let Rejection {
        status,
        content_type,
        body,
        said,
    } = refused;
    if new_session {
        // The upstream refused to initialize: no session.
        gateway.sessions.end(link.session.id(), EndReason::Error);
    } else if super::gateway::session_lost(status, &body) {
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
    let error = ProxyError::new(ErrorCode::UpstreamHttpError, said)
        .with("httpStatus", status.as_u16())
        .with(
            "body",
            String::from_utf8_lossy(&body[..body.len().min(1024)]).into_owned(),
        );
    json_response(status, error.to_response(id))
}

/// The refusal a reply carries, if it is one.
fn upstream_refusal(reply: Reply) -> Option<Rejection> {
    match reply {
        Reply::Rejected { rejection, .. } => Some(rejection),
        _ => None,
    }
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
mod tests;
