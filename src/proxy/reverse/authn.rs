//! The gateway's door: with `--auth-issuer` or `--api-key-file`, every request to the MCP
//! endpoints (`/mcp`, and the 2024-11-05 `/sse` and `/message`) carries a valid bearer token
//! ([`crate::auth`]) or is refused 401/403 with the RFC 6750 challenge naming our Protected
//! Resource Metadata, which is served (to anyone) at `/.well-known/oauth-protected-resource`
//! and at that path followed by the endpoint's. The principal is put in the request's
//! extensions for the handlers; a session belongs to the principal that opened it, and any
//! other gets 404, as for a session that does not exist.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use http::header::{HOST, WWW_AUTHENTICATE};
use http::{HeaderMap, StatusCode};

use crate::auth::Principal;
use crate::session::SessionId;
use crate::stage::Client;
use crate::transport::http::MCP_SESSION_ID;

use super::gateway::Gateway;
use super::respond::{json_response, refuse};

/// Where the Protected Resource Metadata is served (and, followed by the endpoint's path, for
/// that resource).
pub const METADATA_PATH: &str = "/.well-known/oauth-protected-resource";

fn host(headers: &HeaderMap) -> Option<&str> {
    headers.get(HOST).and_then(|h| h.to_str().ok())
}

/// `GET /.well-known/oauth-protected-resource[/<path>]`: the metadata (RFC 9728).
pub async fn metadata(State(gateway): State<Arc<Gateway>>, headers: HeaderMap) -> Response {
    let Some(auth) = &gateway.auth else {
        return refuse(StatusCode::NOT_FOUND, "Not Found".into());
    };
    let document = auth.metadata(host(&headers), &gateway.reverse.path);
    json_response(StatusCode::OK, document.to_string().into())
}

/// Lets a request in with its principal, or refuses it.
pub async fn authenticate(
    State(gateway): State<Arc<Gateway>>,
    mut request: Request,
    next: Next,
) -> Response {
    let Some(auth) = &gateway.auth else {
        return next.run(request).await;
    };
    let principal = match auth.authenticate(request.headers()).await {
        Ok(principal) => principal,
        Err(refusal) => {
            let (status, challenge) =
                auth.challenge(&refusal, host(request.headers()), &gateway.reverse.path);
            tracing::info!(?refusal, path = %request.uri().path(), "refused a request without a valid token");
            let message = match &refusal {
                crate::auth::Refusal::Missing => {
                    "Unauthorized: this gateway needs an `Authorization: Bearer` token (see the WWW-Authenticate header)".to_owned()
                }
                crate::auth::Refusal::Invalid(why) => format!("Unauthorized: {why}"),
                crate::auth::Refusal::Scope(scope) => {
                    format!("Forbidden: the token lacks the scope {scope:?}")
                }
            };
            let mut response = refuse(status, message);
            response.headers_mut().insert(WWW_AUTHENTICATE, challenge);
            return response;
        }
    };
    if let Some(id) = named_session(&request) {
        let foreign = gateway
            .link(&id)
            .is_some_and(|link| !link.owned_by(&principal.id));
        if foreign {
            tracing::warn!(principal = %principal.id, session = %id.digest(), "refused a session opened by another principal");
            return refuse(
                StatusCode::NOT_FOUND,
                "Not Found: no such session (it expired or was ended); start a new one with initialize"
                    .into(),
            );
        }
    }
    request.extensions_mut().insert(principal);
    next.run(request).await
}

/// The session a request names: its `Mcp-Session-Id`, or a 2024-11-05 message's `sessionId`.
fn named_session(request: &Request) -> Option<SessionId> {
    if let Some(value) = request.headers().get(&MCP_SESSION_ID) {
        return value.to_str().ok().and_then(|v| SessionId::parse(v).ok());
    }
    let query = request.uri().query()?;
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(name, _)| *name == "sessionId")
        .and_then(|(_, value)| SessionId::parse(value).ok())
}

/// The principal a request was let in with (none without authentication).
pub type Caller = Option<axum::Extension<Arc<Principal>>>;

/// Who the pipeline sees as the sender: the principal the request was let in with, else the
/// client's address (what rate limits `per=client` key on).
pub fn sender<'a>(caller: &'a Caller, address: Client<'a>) -> Client<'a> {
    caller.as_ref().map_or(address, |principal| {
        Client::Subject(principal.0.id.as_str())
    })
}
