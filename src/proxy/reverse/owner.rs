//! The middleware that sends a request for a session at another instance's process where that
//! session is served: to the instance that owns it ([`super::peer::Peers::forward`]), to the
//! one that took it over, or on here (taken over now, when its owner is gone). Anything else
//! goes on here untouched.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use http::StatusCode;

use crate::protocol::headers::MCP_SESSION_ID;
use crate::transport::http::{BodyError, read_body};

use super::gateway::Gateway;
use super::peer::{
    FORWARDED, HEARTBEAT, MEMBER_TTL, MISDIRECTED, Route, gone, meant_for_another_run,
};
use super::respond::refuse;

/// Passes a request for a session another instance owns to that instance (or, if that one is
/// gone, to whichever took the session over, perhaps this one); anything else goes on here.
pub async fn to_owner(
    State(gateway): State<Arc<Gateway>>,
    request: Request,
    next: Next,
) -> Response {
    if let (Some(peers), Some(forwarded)) = (gateway.peers(), request.headers().get(&FORWARDED))
        && meant_for_another_run(forwarded, peers.me())
    {
        return refuse(
            MISDIRECTED,
            "Misdirected Request: this instance of the cluster was started again; the run the \
             request was passed on to is gone"
                .into(),
        );
    }
    let sealed = match (gateway.peers(), request.headers().contains_key(&FORWARDED)) {
        (Some(peers), false) => request
            .headers()
            .get(&MCP_SESSION_ID)
            .and_then(|v| v.to_str().ok())
            .and_then(|text| gateway.owned_elsewhere(text, peers.me()))
            .map(|sealed| (peers, sealed)),
        _ => None,
    };
    let Some((peers, sealed)) = sealed else {
        return next.run(request).await;
    };
    let client = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| *addr);
    // Read whole (it is one message at most), so that it can still be served here if its
    // owner turns out to be gone.
    let (parts, body) = request.into_parts();
    let body = match read_body(body, gateway.config.max_message_size).await {
        Ok(body) => body,
        Err(e @ BodyError::TooLarge { .. }) => {
            return refuse(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("Payload Too Large: {e}"),
            );
        }
        Err(e) => return refuse(StatusCode::BAD_REQUEST, format!("Bad Request: {e}")),
    };
    let caller = super::checks::client_of(&gateway.reverse.trusted_proxies, client, &parts.headers);
    let owner = sealed.owner.clone().unwrap_or_default();
    // Named as this instance's but not open here: taken over while this instance was off the
    // list (or over): Redis says where it is now.
    let mine = owner == peers.me();
    let mut route = if mine {
        // Never opened here again (it ended here): only passed on, if another instance
        // took it over.
        match gateway.owner_now(&sealed.id).await {
            Some(now) if now != owner && peers.is_gone(&now) => {
                gateway.take_over(&sealed, caller).await
            }
            Some(now) if now != owner => Route::To(now),
            _ => Route::Gone,
        }
    } else if peers.is_gone(&owner) {
        gateway.take_over(&sealed, caller).await
    } else {
        Route::To(owner)
    };
    // The owner named, then whichever took the session over. An owner that cannot be reached
    // but is still on Redis's list died a moment ago: its entry lapses within `MEMBER_TTL`,
    // and then the session can be taken over; the request waits that long at most.
    let deadline = tokio::time::Instant::now() + MEMBER_TTL + HEARTBEAT;
    loop {
        match route {
            Route::To(owner) => {
                if let Ok(answer) = peers.forward(&owner, client, &parts, body.clone()).await {
                    gateway.metrics.forwarded_to_owner();
                    return answer;
                }
                peers.mark_gone(&owner);
                if tokio::time::Instant::now() >= deadline {
                    return gone();
                }
                route = gateway.take_over(&sealed, caller).await;
                if matches!(&route, Route::To(next) if *next == owner) {
                    tokio::time::sleep(HEARTBEAT / 2).await;
                }
            }
            Route::Here => return next.run(Request::from_parts(parts, Body::from(body))).await,
            // Ended here: as any session unknown here.
            Route::Gone if mine => {
                return next.run(Request::from_parts(parts, Body::from(body))).await;
            }
            Route::Gone => return gone(),
        }
    }
}
