//! The downstream HTTP side of the gateway, in-process: requests through its axum routes with
//! `oneshot` (no socket, no child, no binary), for the checks a POST passes before any session
//! or upstream is involved. The upstream URL is never contacted.

use axum::body::Body;
use http::{Request, StatusCode};
use http_body_util::BodyExt as _;
use serde_json::Value;
use tower::ServiceExt as _;

use super::*;
use crate::cli::{Cli, Command};
use crate::config::{Config, ReverseConfig};
use crate::session::SessionManager;

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

/// A gateway in front of an upstream that is never reached, with `extra` options.
fn gateway(extra: &[&str]) -> Arc<Gateway> {
    let mut command_line = vec![
        "shadowcat",
        "reverse",
        "--upstream",
        "http://127.0.0.1:9/mcp",
    ];
    command_line.extend_from_slice(extra);
    let cli = <Cli as clap::Parser>::try_parse_from(command_line).unwrap();
    let Command::Reverse(options) = &cli.command else {
        panic!("not a reverse command");
    };
    let mut config = Config::build(&cli.global, Some(&options.proxy)).unwrap();
    let mut reverse = ReverseConfig::build(&cli.global, options).unwrap();
    reverse.settle_sessions(&mut config.sessions);
    let sessions = SessionManager::new(config.sessions.clone(), None);
    Gateway::new(
        config,
        reverse,
        sessions,
        None,
        None,
        &crate::telemetry::Observers::default(),
    )
}

/// A POST to `/mcp` with `body` and the headers an MCP client sends, `extra` added or replacing.
fn post(body: &str, extra: &[(&str, &str)]) -> Request<Body> {
    let mut request = Request::post("/mcp")
        .header("host", "127.0.0.1:8080")
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream");
    for (name, value) in extra {
        if let Some(headers) = request.headers_mut() {
            headers.remove(*name);
        }
        request = request.header(*name, *value);
    }
    request.body(Body::from(body.to_owned())).unwrap()
}

/// The gateway's answer to `request`: its status and JSON body.
async fn send(gateway: &Arc<Gateway>, request: Request<Body>) -> (StatusCode, Value) {
    let response = routes(gateway.clone()).oneshot(request).await.unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (status, body)
}

const PING: &str = r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#;

/// Each refusal before a session exists: its status, and a JSON-RPC error saying why.
#[tokio::test]
async fn a_post_is_refused_before_any_session_for_what_its_headers_say() {
    let gw = gateway(&[]);
    let cases: [(&str, Request<Body>, StatusCode); 5] = [
        (
            "a disallowed Origin",
            post(PING, &[("origin", "https://evil.example")]),
            StatusCode::FORBIDDEN,
        ),
        (
            "a Host that is not this loopback server",
            post(PING, &[("host", "rebound.example:8080")]),
            StatusCode::MISDIRECTED_REQUEST,
        ),
        (
            "a body that is not JSON",
            post(PING, &[("content-type", "text/plain")]),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ),
        (
            "an Accept without SSE and JSON",
            post(PING, &[("accept", "text/html")]),
            StatusCode::NOT_ACCEPTABLE,
        ),
        (
            "a session this gateway never gave",
            post(
                PING,
                &[("mcp-session-id", "0123456789abcdef0123456789abcdef")],
            ),
            StatusCode::NOT_FOUND,
        ),
    ];
    for (what, request, status) in cases {
        let (got, body) = send(&gw, request).await;
        assert_eq!(got, status, "{what}: {body}");
        assert!(body["error"]["message"].is_string(), "{what}: {body}");
        assert_eq!(body["jsonrpc"], "2.0", "{what}: {body}");
    }
    assert_eq!(gw.sessions.len(), 0, "no session was opened");
}

/// A body that is not JSON is answered -32700 and counted; a stateless (2026-07-28) request
/// whose mirrored header differs from its body is -32020, before any upstream sees it.
#[tokio::test]
async fn a_broken_body_and_a_lying_header_are_answered_in_process() {
    let gw = gateway(&[]);
    let (status, body) = send(&gw, post("{", &[])).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"]["code"], -32700, "{body}");
    assert_eq!(gw.pipeline.metrics().snapshot().malformed, 1);
    let call = r#"{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"echo","arguments":{},"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{}}}}"#;
    let headers = [
        ("mcp-protocol-version", "2026-07-28"),
        ("mcp-method", "tools/list"),
        ("mcp-name", "echo"),
    ];
    let (status, body) = send(&gw, post(call, &headers)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"]["code"], -32020, "{body}");
    assert_eq!(body["id"], 3, "{body}");
    assert_eq!(body["error"]["data"]["header"], "Mcp-Method", "{body}");
}

/// DELETE and GET of a session the gateway does not have are 404 (DELETE) and refused (GET).
#[tokio::test]
async fn delete_and_get_of_an_unknown_session_are_refused() {
    let gw = gateway(&[]);
    let unknown = "0123456789abcdef0123456789abcdef";
    let delete = Request::delete("/mcp")
        .header("host", "127.0.0.1:8080")
        .header("mcp-session-id", unknown)
        .body(Body::empty())
        .unwrap();
    let (status, _) = send(&gw, delete).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let get = Request::get("/mcp")
        .header("host", "127.0.0.1:8080")
        .header("accept", "text/event-stream")
        .header("mcp-session-id", unknown)
        .body(Body::empty())
        .unwrap();
    let (status, body) = send(&gw, get).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
}

/// The gateway runs until its shutdown source asks it to stop (no signal needed), then stops
/// with exit code 0.
#[tokio::test]
async fn the_gateway_runs_until_asked_to_shut_down() {
    let cli = <Cli as clap::Parser>::try_parse_from([
        "shadowcat",
        "reverse",
        "--listen",
        "127.0.0.1:0",
        "--upstream",
        "http://127.0.0.1:9/mcp",
    ])
    .unwrap();
    let Command::Reverse(options) = &cli.command else {
        panic!("not a reverse command");
    };
    let config = Config::build(&cli.global, Some(&options.proxy)).unwrap();
    let reverse = ReverseConfig::build(&cli.global, options).unwrap();
    let (trigger, shutdown) = crate::proxy::shutdown::Shutdown::requested();
    let sessions = SessionManager::new(config.sessions.clone(), None);
    let mut run = tokio::spawn(async move {
        crate::proxy::reverse::run(
            &config,
            &reverse,
            &sessions,
            &crate::telemetry::Observers::default(),
            shutdown,
        )
        .await
    });
    let early = tokio::time::timeout(std::time::Duration::from_millis(300), &mut run).await;
    assert!(early.is_err(), "it stopped unasked: {early:?}");
    trigger.request("a test");
    let code = tokio::time::timeout(std::time::Duration::from_secs(10), run)
        .await
        .expect("stopped when asked")
        .unwrap()
        .unwrap();
    assert_eq!(code, 0);
}
