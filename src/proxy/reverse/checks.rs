//! What every request to the gateway is checked against, and how it is refused: Origin and
//! Host (DNS rebinding), CORS, `Accept`, `Content-Type`, the body's size and envelope, the
//! session it names. Each refusal has the status the Streamable HTTP spec gives and a JSON-RPC
//! error body (`data.httpStatus`) that says what was wrong.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use http::header::{ACCEPT, CONTENT_LENGTH, CONTENT_TYPE, HOST, ORIGIN};
use http::{HeaderMap, HeaderValue, StatusCode};

use crate::config::{TrustedProxies, is_loopback_authority};
use crate::protocol::error::ProxyError;
use crate::protocol::{ErrorCode, Frame, Message, RequestId, version};
use crate::stage::Client;
use crate::transport::http::{BodyError, MCP_PROTOCOL_VERSION, MCP_SESSION_ID, read_body};

use super::gateway::{Gateway, Named, SessionLink};
use super::respond::{json_response, method_not_allowed, refuse, refuse_to};

pub(super) fn cors(gateway: &Gateway) -> tower_http::cors::CorsLayer {
    use tower_http::cors::{AllowHeaders, AllowOrigin, CorsLayer};
    let origins = gateway.reverse.allowed_origins.clone();
    CorsLayer::new()
        .allow_origin(AllowOrigin::predicate(move |origin, _| {
            origin.to_str().is_ok_and(|o| origins.allows(o))
        }))
        .allow_methods([http::Method::GET, http::Method::POST, http::Method::DELETE])
        // MCP's request headers include `Mcp-Param-*`, which no fixed list can name.
        .allow_headers(AllowHeaders::mirror_request())
        .expose_headers([
            MCP_SESSION_ID.clone(),
            MCP_PROTOCOL_VERSION.clone(),
            http::header::RETRY_AFTER,
            http::HeaderName::from_static("ratelimit"),
            http::HeaderName::from_static("ratelimit-policy"),
        ])
        .max_age(std::time::Duration::from_secs(3600))
}

/// Who a request comes from: the socket's peer address, or, when that peer is a trusted proxy,
/// the nearest address in `X-Forwarded-For` that is not one (read right to left, each trusted
/// hop vouching for the one before it). Without a socket address (a request handed in by a
/// test), the local client.
pub(super) fn client_of(
    trusted: &TrustedProxies,
    peer: Option<std::net::SocketAddr>,
    headers: &HeaderMap,
) -> Client<'static> {
    let Some(peer) = peer else {
        return Client::Local;
    };
    let mut ip = peer.ip().to_canonical();
    if trusted.is_empty() || !trusted.contains(ip) {
        return Client::Address(ip);
    }
    let hops: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .collect();
    for hop in hops.iter().rev() {
        // Something unreadable: nothing before it can be believed; the last trusted hop stands.
        let Some(hop) = parse_hop(hop) else {
            break;
        };
        ip = hop;
        if !trusted.contains(ip) {
            break;
        }
    }
    Client::Address(ip)
}

/// One `X-Forwarded-For` entry: an address, perhaps with a port (`1.2.3.4:80`, `[::1]:80`).
fn parse_hop(hop: &str) -> Option<std::net::IpAddr> {
    let hop = hop.trim();
    hop.parse::<std::net::IpAddr>()
        .or_else(|_| hop.parse::<std::net::SocketAddr>().map(|a| a.ip()))
        .or_else(|_| {
            hop.trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<std::net::IpAddr>()
        })
        .ok()
        .map(|ip| ip.to_canonical())
}

/// Origin (always) and Host (when bound to loopback: DNS rebinding) validation.
pub(super) async fn guard(
    State(gateway): State<Arc<Gateway>>,
    request: Request,
    next: Next,
) -> Response {
    let headers = request.headers();
    if let Some(origin) = headers.get(ORIGIN) {
        let allowed = origin
            .to_str()
            .is_ok_and(|o| gateway.reverse.allowed_origins.allows(o));
        if !allowed {
            tracing::warn!(origin = %String::from_utf8_lossy(origin.as_bytes()), "refused a request from a disallowed Origin");
            return refuse(
                StatusCode::FORBIDDEN,
                format!(
                    "Forbidden: Origin {} is not allowed (--allowed-origin)",
                    String::from_utf8_lossy(origin.as_bytes())
                ),
            );
        }
    }
    // A browser says where a request comes from even when it sends no Origin (a plain GET,
    // such as an EventSource's `/sse`): another site's page is refused as its Origin would be.
    if !headers.contains_key(ORIGIN)
        && headers
            .get("sec-fetch-site")
            .is_some_and(|site| site.as_bytes().eq_ignore_ascii_case(b"cross-site"))
        && !matches!(
            gateway.reverse.allowed_origins,
            crate::config::AllowedOrigins::Any
        )
    {
        tracing::warn!("refused a cross-site browser request without an Origin");
        return refuse(
            StatusCode::FORBIDDEN,
            "Forbidden: a cross-site browser request (Sec-Fetch-Site) without an Origin".into(),
        );
    }
    if let Err(response) = check_host(gateway.reverse.listen, &request) {
        return response;
    }
    next.run(request).await
}

/// A server bound to a loopback address answers only requests for a loopback host: a web page
/// that rebinds its own name to 127.0.0.1 (DNS rebinding) is refused with 421.
#[allow(clippy::result_large_err)] // The error is the response itself, returned at once.
pub(super) fn check_host(bound: std::net::SocketAddr, request: &Request) -> Result<(), Response> {
    if !bound.ip().is_loopback() {
        return Ok(());
    }
    let host = request
        .headers()
        .get(HOST)
        .map(|h| h.to_str().unwrap_or("?"))
        .or_else(|| request.uri().authority().map(http::uri::Authority::as_str));
    match host {
        Some(host) if !is_loopback_authority(host) => {
            tracing::warn!(
                host,
                "refused a request for a non-local Host (DNS rebinding?)"
            );
            Err(refuse(
                StatusCode::MISDIRECTED_REQUEST,
                format!("Misdirected Request: Host {host:?} is not this loopback server"),
            ))
        }
        _ => Ok(()),
    }
}

/// How a request that needed a new session is refused when it cannot have one: 503 with
/// `Retry-After` at `--max-sessions`, 429 at the client's own cap, 503 while shutting down
/// (the JSON-RPC error says which, and carries `httpStatus`). One answer for every endpoint
/// that opens sessions (`POST /mcp`, `GET /sse`).
pub(super) fn refuse_open(e: &super::gateway::OpenError, id: Option<&RequestId>) -> Response {
    use super::gateway::OpenError;
    let (status, code, message) = match e {
        OpenError::Sessions(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::TooManySessions,
            format!("Service Unavailable: {e}"),
        ),
        OpenError::ClientSessions { .. } => (
            StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::TooManySessions,
            format!("Too Many Requests: {e}"),
        ),
        OpenError::ShuttingDown => (
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::ShuttingDown,
            format!("Service Unavailable: {e}"),
        ),
    };
    let mut error = ProxyError::new(code, message).with("httpStatus", status.as_u16());
    if let OpenError::Sessions(crate::session::SessionError::TooManySessions { limit })
    | OpenError::ClientSessions { limit } = e
    {
        error = error.with("limit", *limit);
    }
    let mut response = json_response(status, error.to_response(id));
    if matches!(e, OpenError::Sessions(_)) {
        response
            .headers_mut()
            .insert(http::header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
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

/// The session a request names in `Mcp-Session-Id` (in a cluster, perhaps one another
/// instance opened, served here from now on); refused (answering request `id`, if the body
/// was read) if it names none, or one that is gone.
#[allow(clippy::result_large_err)] // The error is the response itself, returned at once.
pub(super) async fn session_of(
    gateway: &Arc<Gateway>,
    headers: &HeaderMap,
    id: Option<&RequestId>,
    client: Client<'_>,
) -> Result<Arc<SessionLink>, Response> {
    let Some(value) = headers.get(&MCP_SESSION_ID) else {
        let stateless = headers
            .get(&MCP_PROTOCOL_VERSION)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| version::is_known(v) && version::is_stateless(v));
        if stateless {
            // GET streams and DELETE belong to sessions, which this era does not have.
            return Err(method_not_allowed(
                "protocol version 2026-07-28 and later have no sessions, so no GET stream and no DELETE; send requests by POST",
                "POST",
            ));
        }
        return Err(refuse_to(
            StatusCode::BAD_REQUEST,
            "Bad Request: missing Mcp-Session-Id header; start a session with initialize".into(),
            id,
        ));
    };
    let named = value
        .to_str()
        .map_or(Named::Unknown, |text| gateway.named(text));
    let link = match named {
        Named::Here(link) => Some(link),
        // Its client ended it through another instance (marked so in Redis): not taken up.
        Named::Sealed(sealed) if gateway.ended_elsewhere(&sealed.id).await => None,
        Named::Sealed(sealed) => match gateway.reopen(&sealed, client) {
            Some(Ok(link)) => Some(link),
            Some(Err(e)) => return Err(refuse_open(&e, id)),
            None => None,
        },
        Named::Unknown => None,
    };
    match link {
        Some(link) if !link.session.closed_token().is_cancelled() => Ok(link),
        _ => Err(refuse_to(
            StatusCode::NOT_FOUND,
            "Not Found: no such session (it expired or was ended); start a new one with initialize"
                .into(),
            id,
        )),
    }
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
    let deadline = gateway.reverse.connections.body_timeout;
    let Ok(body) = tokio::time::timeout(deadline, read_body(body, limit)).await else {
        let error = ProxyError::new(
            ErrorCode::InvalidRequest,
            format!(
                "Request Timeout: the body did not arrive within {} (--body-timeout)",
                humantime::format_duration(deadline)
            ),
        )
        .with("httpStatus", 408);
        return Err(json_response(
            StatusCode::REQUEST_TIMEOUT,
            error.to_response(None),
        ));
    };
    let body = match body {
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
    fn forwarded_addresses_are_believed_only_from_trusted_proxies() {
        let trusted = TrustedProxies::parse(&["10.0.0.0/8".into(), "::1".into()]).unwrap();
        let peer = |ip: &str| Some(std::net::SocketAddr::new(ip.parse().unwrap(), 5000));
        let ip = |text: &str| Client::Address(text.parse().unwrap());
        let xff = |values: &[&str]| {
            let mut h = HeaderMap::new();
            for v in values {
                h.append("x-forwarded-for", HeaderValue::from_str(v).unwrap());
            }
            h
        };
        let spoof = xff(&["203.0.113.9"]);
        // An untrusted peer's header changes nothing, nor does any header without trust.
        assert_eq!(
            client_of(&trusted, peer("192.0.2.1"), &spoof),
            ip("192.0.2.1")
        );
        assert_eq!(
            client_of(&TrustedProxies::default(), peer("10.0.0.1"), &spoof),
            ip("10.0.0.1")
        );
        // Behind a trusted proxy: the nearest untrusted hop, right to left.
        assert_eq!(
            client_of(&trusted, peer("10.0.0.1"), &spoof),
            ip("203.0.113.9")
        );
        let chain = xff(&["198.51.100.1, 203.0.113.9, 10.1.1.1"]);
        assert_eq!(
            client_of(&trusted, peer("10.0.0.1"), &chain),
            ip("203.0.113.9")
        );
        // Several headers read as one list; ports and brackets are allowed.
        let split = xff(&["198.51.100.1", "203.0.113.9:4711, 10.2.2.2"]);
        assert_eq!(
            client_of(&trusted, peer("10.0.0.1"), &split),
            ip("203.0.113.9")
        );
        assert_eq!(
            client_of(&trusted, peer("::1"), &xff(&["[2001:db8::7]:443"])),
            ip("2001:db8::7")
        );
        // All hops trusted: the farthest. Garbage: the last trusted hop stands.
        assert_eq!(
            client_of(&trusted, peer("10.0.0.1"), &xff(&["10.9.9.9"])),
            ip("10.9.9.9")
        );
        assert_eq!(
            client_of(
                &trusted,
                peer("10.0.0.1"),
                &xff(&["203.0.113.9, nonsense, 10.3.3.3"])
            ),
            ip("10.3.3.3")
        );
        assert_eq!(
            client_of(&trusted, peer("10.0.0.1"), &HeaderMap::new()),
            ip("10.0.0.1")
        );
        // An IPv4-mapped peer is its IPv4 address.
        assert_eq!(
            client_of(&trusted, peer("::ffff:10.0.0.1"), &spoof),
            ip("203.0.113.9")
        );
        assert_eq!(client_of(&trusted, None, &spoof), Client::Local);
        assert!(TrustedProxies::parse(&["10.0.0.0/33".into()]).is_err());
        assert!(TrustedProxies::parse(&["proxy.local".into()]).is_err());
    }
}
