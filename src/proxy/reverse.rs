//! `shadowcat reverse`: a Streamable HTTP gateway in front of one MCP server, many clients, each
//! in its own session.
//!
//! - [`server`]: the downstream endpoint (axum): POST, DELETE, GET, status codes, Origin/Host
//!   validation, CORS; JSON or SSE answers.
//! - [`gateway`]: sessions and their upstreams (a child per session, or a session at the HTTP
//!   upstream), the exchange of a POST's messages with the upstream, teardown.
//! - [`checks`]: what every request is checked against (Origin, Host, CORS, Accept, body,
//!   session), and how it is refused.
//! - `screen`: a POST's members through the pipeline (`POST /mcp` and `POST /message`).
//! - [`answer`]: a POST waiting for its answers, and what it makes of each reply.
//! - `binding`: the 2026-07-28 HTTP binding where the gateway is a stdio child's HTTP server
//!   (statuses of its errors, `Mcp-Param-*` checks, `initialize`).
//! - [`legacy`]: the 2024-11-05 HTTP+SSE transport for old clients (`/sse`, `/message`).
//! - [`get`]: where clients listen: the session's GET stream endpoint.
//! - `live`: the body of a connection to an SSE stream (GET, POST, resumed, 2024-11-05).
//! - [`router`]: per session, which waiting POST each server→client message goes to.
//! - [`events`]: a session's event streams: event ids, the replay buffer, resumption; in a
//!   cluster with Redis, their copies there (`events::shared`).
//! - `resume`: a client resuming here a stream another instance of the cluster wrote.
//! - [`admin`]: `/healthz`, `/readyz` and `/metrics` on `--admin-listen`.
//! - [`authn`]: the door with `--auth-issuer` / `--api-key-file`: bearer tokens checked, the
//!   Protected Resource Metadata served, sessions bound to the principal that opened them.
//! - `peer`: in a cluster, the other instances: the list of those up (in Redis) and passing a
//!   request to one of them.
//! - `owner`: the middleware that sends a request for a session at another instance's process
//!   to that instance (or takes the session over here when it is gone).
//!
//! Every message passes through the same [`crate::proxy::Pipeline`] and
//! [`crate::session::SessionManager`] as in forward mode. Shutdown (SIGINT/SIGTERM): stop
//! accepting, let in-flight requests finish within `--shutdown-timeout` (a second signal cuts
//! this short), then end every session, which ends upstream sessions and stops children.

pub mod admin;
mod alias;
pub mod answer;
pub mod authn;
mod binding;
pub mod checks;
pub mod events;
pub mod gateway;
pub mod get;
pub mod legacy;
mod live;
pub mod mirror;
mod owner;
mod peer;
mod respond;
mod resume;
pub mod router;
mod screen;
pub mod server;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, ReverseConfig};
use crate::session::SessionManager;
use crate::transport::child::KILL_GRACE;
use crate::transport::serve::{raise_descriptor_limit, serve};

use super::shutdown::Shutdown;
use gateway::Gateway;

/// The checks of clients' tokens, if `--auth-issuer` or `--api-key-file` asks for them, and
/// the credentials for an HTTP upstream that change (a token file, an OAuth grant). A key file
/// that cannot be used, or credentials refused, keep the gateway from starting.
async fn start_auth(
    reverse: &ReverseConfig,
) -> anyhow::Result<(
    Option<Arc<crate::auth::Authenticator>>,
    Option<Arc<crate::transport::credentials::Credentials>>,
)> {
    let auth = match &reverse.auth {
        Some(auth) => Some(
            crate::auth::Authenticator::start(auth)
                .await
                .map_err(anyhow::Error::msg)?,
        ),
        None => None,
    };
    let credentials = match reverse.http_upstream() {
        Some(upstream) => crate::proxy::upstream::http::start_credentials(upstream).await?,
        None => None,
    };
    Ok((auth, credentials))
}

/// Tells `gateway` the URL the other instances of a cluster reach it at: `--cluster-advertise`,
/// else the address it listens on (`local`), unless that is every interface's.
fn advertise(gateway: &Gateway, reverse: &ReverseConfig, local: std::net::SocketAddr) {
    match reverse.cluster.as_ref().and_then(|c| c.advertise.clone()) {
        Some(url) => gateway.advertise(&url),
        None if !local.ip().is_unspecified() => gateway.advertise(&format!("http://{local}")),
        None => {}
    }
}

/// The admin endpoints (`--admin-listen`), if asked for: `/healthz`, `/readyz`, `/metrics`.
async fn start_admin(
    gateway: &Arc<Gateway>,
    reverse: &ReverseConfig,
) -> anyhow::Result<Option<tokio::task::JoinHandle<()>>> {
    let Some(addr) = reverse.admin_listen else {
        return Ok(None);
    };
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} (--admin-listen)"))?;
    let local = listener
        .local_addr()
        .context("cannot read the admin address")?;
    tracing::info!("admin endpoints on http://{local}/healthz, /readyz, /metrics");
    let app = admin::routes(gateway.clone());
    let limits = admin::connection_limits(reverse.connections);
    Ok(Some(tokio::spawn(serve(
        listener,
        app,
        limits,
        Arc::default(),
        CancellationToken::new(),
    ))))
}

/// Runs the gateway until `shutdown` asks it to stop; returns our exit code.
pub async fn run(
    config: &Config,
    reverse: &ReverseConfig,
    sessions: &Arc<SessionManager>,
    observers: &crate::telemetry::Observers,
    mut shutdown: Shutdown,
) -> anyhow::Result<u8> {
    let (auth, credentials) = start_auth(reverse).await?;
    let authenticated = auth.is_some();
    let gateway = Gateway::new(
        config.clone(),
        reverse.clone(),
        sessions.clone(),
        auth,
        credentials,
        observers,
    );
    let stop_prune = CancellationToken::new();
    let mut prune = spawn_prune(&gateway, config.cleanup_interval, stop_prune.clone());

    let descriptors = raise_descriptor_limit();
    let connections = reverse
        .connections
        .fit_to_descriptors(descriptors, "--listen");
    let listener = TcpListener::bind(reverse.listen)
        .await
        .with_context(|| format!("cannot listen on {} (--listen)", reverse.listen))?;
    let local = listener
        .local_addr()
        .context("cannot read the listening address")?;
    let admin = start_admin(&gateway, reverse).await?;
    if !local.ip().is_loopback() && !authenticated {
        tracing::warn!(address = %local, "listening on a non-loopback address without authentication: any host that can reach it can use the upstream (see --auth-issuer, --api-key-file)");
    }
    tracing::info!(upstream = %upstream_label(reverse), "listening on http://{local}{}", reverse.path);
    advertise(&gateway, reverse, local);

    let stop = CancellationToken::new();
    let app = server::routes(gateway.clone());
    let mut server = tokio::spawn(serve(
        listener,
        app,
        connections,
        gateway.metrics.connections(),
        stop.clone(),
    ));
    let outcome = tokio::select! {
        name = shutdown.recv() => Ok(name),
        result = &mut server => Err(result),
    };
    let code = match outcome {
        Ok(name) => {
            tracing::info!(signal = name, timeout = ?config.shutdown_timeout, "shutting down: no new connections; in-flight requests may finish");
            gateway.stopping.cancel();
            stop.cancel();
            let drained = tokio::select! {
                result = tokio::time::timeout(config.shutdown_timeout, &mut server) => result.is_ok(),
                name = shutdown.recv() => {
                    tracing::warn!(signal = name, "second signal: not waiting for in-flight requests");
                    false
                }
            };
            if !drained {
                tracing::warn!(
                    "in-flight requests did not finish within --shutdown-timeout; closing them"
                );
                server.abort();
            }
            0
        }
        Err(result) => {
            tracing::error!(?result, "the HTTP server stopped unexpectedly");
            1
        }
    };
    gateway
        .close_all(config.shutdown_timeout + KILL_GRACE + Duration::from_secs(1))
        .await;
    if let Some(admin) = admin {
        admin.abort();
    }
    stop_prune.cancel();
    if let Some(prune) = prune.as_mut() {
        prune.join_within(Duration::from_secs(1)).await;
    }
    tracing::info!(sessions = %sessions.metrics(), totals = %gateway.pipeline.metrics().snapshot(), "shadowcat exiting");
    drop(gateway);
    Ok(code)
}

fn upstream_label(reverse: &ReverseConfig) -> String {
    match &reverse.upstream {
        crate::config::ReverseUpstream::Http(upstream) => {
            crate::transport::http::shown_url(&upstream.url)
        }
        crate::config::ReverseUpstream::Stdio(spec) => {
            format!(
                "{} (one process per session)",
                spec.program.to_string_lossy()
            )
        }
    }
}

/// With rate limits, a task that forgets their stale keys every `interval` (they are also
/// forgotten a few at a time as new keys come; this returns the memory after a flood).
fn spawn_prune(
    gateway: &Arc<Gateway>,
    interval: Duration,
    stop: CancellationToken,
) -> Option<crate::task::Task<()>> {
    gateway.pipeline.limits()?;
    Some(crate::task::Task::every(
        "rate-limit-prune",
        interval,
        stop,
        gateway,
        |gateway| {
            if let Some(limits) = gateway.pipeline.limits() {
                limits.prune();
            }
        },
    ))
}
