//! Operations endpoints on `--admin-listen` (off by default, so that they are never exposed by
//! accident next to the MCP endpoint): `/healthz` (the process is alive), `/readyz` (the upstream
//! can be reached and we are not shutting down) and `/metrics` (Prometheus text).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::StatusCode;

use super::gateway::{Gateway, Server};

/// How long `/readyz` waits for an HTTP upstream to answer.
const READY_TIMEOUT: Duration = Duration::from_secs(2);

/// Connections the admin listener serves at once (in all, and per address): it answers
/// probes and scrapes, not clients.
pub const ADMIN_MAX_CONNECTIONS: usize = 64;

/// The admin listener's bounds: the client listener's deadlines, its own small caps.
pub fn connection_limits(
    clients: crate::transport::serve::ConnectionLimits,
) -> crate::transport::serve::ConnectionLimits {
    crate::transport::serve::ConnectionLimits {
        max_connections: ADMIN_MAX_CONNECTIONS,
        max_per_client: ADMIN_MAX_CONNECTIONS,
        ..clients
    }
}

/// The admin routes.
pub fn routes(gateway: Arc<Gateway>) -> axum::Router {
    axum::Router::new()
        .route("/healthz", axum::routing::get(healthz))
        .route("/readyz", axum::routing::get(readyz))
        .route("/metrics", axum::routing::get(metrics))
        .layer(axum::middleware::from_fn_with_state(gateway.clone(), guard))
        .with_state(gateway)
}

/// The admin listener checks `Host` as the MCP endpoint does, and serves no browser page (a
/// request with an `Origin` is refused): its counters and readiness are not a web page's. With
/// `--admin-token-file`, `/readyz` and `/metrics` need that token (`/healthz` does not).
async fn guard(
    State(gateway): State<Arc<Gateway>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if request.headers().contains_key(http::header::ORIGIN) {
        return (StatusCode::FORBIDDEN, "Forbidden: no browser access\n").into_response();
    }
    if let Some(bound) = gateway.reverse.admin_listen {
        if let Err(response) = super::checks::check_host(bound, &request) {
            return response;
        }
    }
    if let Some(token) = &gateway.reverse.admin_token {
        let presented = request
            .headers()
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim());
        let open = request.uri().path() == "/healthz";
        if !open && !presented.is_some_and(|p| token.accepts(p)) {
            return (
                StatusCode::UNAUTHORIZED,
                [(
                    http::header::WWW_AUTHENTICATE,
                    "Bearer realm=\"shadowcat-admin\"",
                )],
                "Unauthorized: /readyz and /metrics need the admin token (--admin-token-file)\n",
            )
                .into_response();
        }
    }
    next.run(request).await
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(gateway): State<Arc<Gateway>>) -> Response {
    if gateway.stopping.is_cancelled() {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response();
    }
    match &gateway.server {
        Server::Http(backend) => match backend.client().answers(READY_TIMEOUT).await {
            Ok(()) => "ok\n".into_response(),
            Err(e) => (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("upstream {} unreachable: {e}\n", backend.client().shown()),
            )
                .into_response(),
        },
        Server::Command(pool) => match gateway.command_problem(&pool.spec().program) {
            None => "ok\n".into_response(),
            Some(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")).into_response(),
        },
    }
}

async fn metrics(State(gateway): State<Arc<Gateway>>) -> Response {
    let text = gateway.metrics.render();
    (
        [(
            http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}
