//! Requests for a session another instance of the cluster owns (its server is a process that
//! instance started: `reverse -- <cmd>` with `--cluster-key-file`), passed to that instance as
//! they came, and its answer (JSON or an SSE stream) passed back as it comes.
//!
//! The owner is named in the session's sealed id ([`crate::session::Unsealed::owner`]: the
//! instance's id for this run, and the URL the others reach it at). A request passed on carries
//! `Shadowcat-Forwarded`, so it is never passed on again (an instance that restarted at the
//! same URL answers 404 for a session it does not hold), and `X-Forwarded-For` with the client's
//! address (the owner reads it if the instances are each other's `--trusted-proxy`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse as _, Response};
use http::{HeaderName, HeaderValue, StatusCode, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::protocol::headers::MCP_SESSION_ID;

use super::gateway::Gateway;
use super::respond::refuse;

/// Marks a request one instance passed to another.
pub static FORWARDED: HeaderName = HeaderName::from_static("shadowcat-forwarded");

/// How long reaching the owner may take before it counts as gone.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// This instance as the others reach it, and the client it reaches them with.
#[derive(Debug)]
pub struct Peers {
    /// `<id> <url>`, as sealed ids name their owner: a random id for this run (so an instance
    /// started again at the same URL is another owner) and the base URL.
    me: String,
    client: Client<HttpConnector, Body>,
}

impl Peers {
    /// This instance, reached at `url` (`http://HOST:PORT`).
    pub fn new(url: &str) -> Self {
        let mut id = [0u8; 8];
        // Without the OS's randomness the id is still this run's: the time it started.
        if getrandom::fill(&mut id).is_err() {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos());
            id.copy_from_slice(&now.to_le_bytes()[..8]);
        }
        let id = format!("{:016x}", u64::from_le_bytes(id));
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
        connector.set_nodelay(true);
        Self {
            me: format!("{id} {}", url.trim_end_matches('/')),
            client: Client::builder(TokioExecutor::new()).build(connector),
        }
    }

    /// How sealed ids name this instance.
    pub fn me(&self) -> &str {
        &self.me
    }

    /// Passes `request` to `owner` (as sealed ids name it) and its answer back; 404 if the
    /// owner cannot be reached (it is gone, and the session with it).
    async fn forward(&self, owner: &str, client: Option<SocketAddr>, request: Request) -> Response {
        let Some((_, base)) = owner.split_once(' ') else {
            return gone();
        };
        let (mut parts, body) = request.into_parts();
        let path = parts
            .uri
            .path_and_query()
            .map_or("/", http::uri::PathAndQuery::as_str);
        let Ok(uri) = format!("{base}{path}").parse::<Uri>() else {
            return gone();
        };
        parts.uri = uri;
        parts
            .headers
            .insert(FORWARDED.clone(), HeaderValue::from_static("1"));
        if let Some(client) = client {
            let forwarded_for = match parts
                .headers
                .get("x-forwarded-for")
                .map(HeaderValue::to_str)
            {
                Some(Ok(earlier)) => format!("{earlier}, {}", client.ip()),
                _ => client.ip().to_string(),
            };
            if let Ok(value) = HeaderValue::from_str(&forwarded_for) {
                parts.headers.insert("x-forwarded-for", value);
            }
        }
        match self.client.request(Request::from_parts(parts, body)).await {
            Ok(answer) => answer.map(Body::new),
            Err(e) => {
                tracing::warn!(owner = base, %e, "the instance that owns the session cannot be reached");
                gone()
            }
        }
    }
}

/// The answer for a session whose owner is gone.
fn gone() -> Response {
    refuse(
        StatusCode::NOT_FOUND,
        "Not Found: the session's server ran at an instance of the cluster that is gone; start a new session with initialize"
            .into(),
    )
    .into_response()
}

/// Passes a request for a session another instance owns to that instance; anything else goes
/// on here.
pub async fn to_owner(
    State(gateway): State<Arc<Gateway>>,
    request: Request,
    next: Next,
) -> Response {
    let owner = match (gateway.peers(), request.headers().contains_key(&FORWARDED)) {
        (Some(peers), false) => request
            .headers()
            .get(&MCP_SESSION_ID)
            .and_then(|v| v.to_str().ok())
            .and_then(|text| gateway.foreign_owner(text, peers.me()))
            .map(|owner| (peers, owner)),
        _ => None,
    };
    let Some((peers, owner)) = owner else {
        return next.run(request).await;
    };
    let client = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| *addr);
    gateway.metrics.forwarded_to_owner();
    peers.forward(&owner, client, request).await
}
