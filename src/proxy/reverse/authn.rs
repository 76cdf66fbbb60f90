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
use http::{HeaderMap, HeaderValue, StatusCode};

use crate::auth::Principal;
use crate::protocol::{Kind, Message};
use crate::session::SessionId;
use crate::stage::Client;
use crate::transport::http::MCP_SESSION_ID;

use super::gateway::{Gateway, Named};
use super::respond::{json_response, refuse};

/// A scope refusal, searched for in answers.
static INSUFFICIENT_SCOPE: crate::protocol::needle::Needle =
    crate::protocol::needle::Needle::new(b"\"insufficient_scope\"");

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
            gateway.metrics.auth_refused(match &refusal {
                crate::auth::Refusal::Missing => "missing",
                crate::auth::Refusal::Invalid(_) => "invalid_token",
                crate::auth::Refusal::Scope { .. } => "insufficient_scope",
            });
            let message = match &refusal {
                crate::auth::Refusal::Missing => {
                    "Unauthorized: this gateway needs an `Authorization: Bearer` token (see the WWW-Authenticate header)".to_owned()
                }
                crate::auth::Refusal::Invalid(why) => format!("Unauthorized: {why}"),
                crate::auth::Refusal::Scope { missing, .. } => {
                    format!("Forbidden: the token lacks the scope {missing:?}")
                }
            };
            let mut response = refuse(status, message);
            response.headers_mut().insert(WWW_AUTHENTICATE, challenge);
            return response;
        }
    };
    if let Some(named) = named_session(&gateway, &request) {
        let foreign = match named {
            Named::Here(link) => !link.owned_by(&principal.id),
            Named::Sealed(sealed) => sealed.principal.is_some_and(|bound| {
                bound != crate::session::seal::principal_digest(&principal.id)
            }),
            Named::Unknown => false,
        };
        if foreign {
            tracing::warn!(principal = %principal.id, "refused a session opened by another principal");
            gateway.metrics.auth_refused("foreign_session");
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

/// What an answer refuses for, if it is a rule's `insufficient_scope` refusal
/// (`require_scope:`): the scopes missing, and those to ask for.
pub fn wanted_scope(answer: &Message) -> Option<(String, String)> {
    if answer.kind() != Kind::Error || !INSUFFICIENT_SCOPE.is_in(answer.raw()) {
        return None;
    }
    let body: serde_json::Value = serde_json::from_slice(answer.raw()).ok()?;
    let data = body.get("error")?.get("data")?;
    if data.get("shadowcat")? != "insufficient_scope" {
        return None;
    }
    let missing = data
        .get("missing")?
        .as_array()?
        .iter()
        .filter_map(serde_json::Value::as_str)
        .collect::<Vec<_>>()
        .join(" ");
    Some((missing, data.get("scope")?.as_str()?.to_owned()))
}

/// With authentication, the refusals for want of a scope a POST got (how many, and the scopes
/// the first asks for) with the challenge that asks for them (RFC 6750 §3.1), so that the
/// client can get a token with them and try again.
pub fn step_up(
    gateway: &Gateway,
    headers: &HeaderMap,
    forbidden: Option<((String, String), usize)>,
) -> Option<(usize, HeaderValue)> {
    let auth = gateway.auth.as_ref()?;
    let ((missing, wanted), count) = forbidden?;
    let (_, challenge) = auth.challenge(
        &crate::auth::Refusal::Scope { missing, wanted },
        host(headers),
        &gateway.reverse.path,
    );
    tracing::info!(
        count,
        "refused requests for want of a scope: asking the client to step up"
    );
    gateway.metrics.auth_refused("step_up");
    Some((count, challenge))
}

/// With `--upstream-token-exchange`: the session's requests to the upstream carry, from now on,
/// the token the authorization server exchanged for the one this request carried (remembered
/// while it is good); or the response refusing the request: 403 when the server will not
/// exchange it, 503 when it cannot be reached.
pub async fn exchange(
    gateway: &Gateway,
    link: &super::gateway::SessionLink,
    headers: &HeaderMap,
) -> Result<(), Response> {
    let (Some(exchanger), Some(http)) = (&gateway.exchange, link.upstream.http()) else {
        return Ok(());
    };
    let Ok(token) = crate::auth::bearer(headers) else {
        return Ok(());
    };
    match exchanger.exchange(token).await {
        Ok(authorization) => {
            http.authorize(&authorization);
            Ok(())
        }
        Err(crate::transport::credentials::Failure::Refused(why)) => {
            tracing::warn!(%why, "the authorization server would not exchange a caller's token");
            gateway.metrics.auth_refused("exchange");
            Err(refuse(
                StatusCode::FORBIDDEN,
                format!(
                    "Forbidden: the authorization server would not exchange this token for one for the upstream: {why}"
                ),
            ))
        }
        Err(crate::transport::credentials::Failure::Unavailable(why)) => {
            tracing::warn!(%why, "cannot exchange a caller's token");
            let mut response = refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("Service Unavailable: the token for the upstream cannot be had now: {why}"),
            );
            response
                .headers_mut()
                .insert(http::header::RETRY_AFTER, HeaderValue::from_static("1"));
            Err(response)
        }
    }
}

/// The session a request names: its `Mcp-Session-Id`, or a 2024-11-05 message's `sessionId`.
fn named_session(gateway: &Gateway, request: &Request) -> Option<Named> {
    if let Some(value) = request.headers().get(&MCP_SESSION_ID) {
        return value.to_str().ok().map(|v| gateway.named(v));
    }
    let query = request.uri().query()?;
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(name, _)| *name == "sessionId")
        .and_then(|(_, value)| SessionId::parse(value).ok())
        .map(|id| gateway.link(&id).map_or(Named::Unknown, Named::Here))
}

/// The principal a request was let in with (none without authentication).
pub type Caller = Option<axum::Extension<Arc<Principal>>>;

/// Who the pipeline sees as the sender: the principal the request was let in with, else the
/// client's address (what rate limits `per=client` key on).
pub fn sender<'a>(caller: &'a Caller, address: Client<'a>) -> Client<'a> {
    caller
        .as_ref()
        .map_or(address, |principal| Client::Subject(&principal.0))
}
