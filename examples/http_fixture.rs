//! A small MCP server over Streamable HTTP, for tests and benchmarks of `shadowcat reverse`.
//!
//! Binds 127.0.0.1 on a free port and prints `PORT <n>` on stdout. Options:
//! - `--stateless`: issue no session ids (and require none);
//! - `--sse`: answer requests as `text/event-stream` (default: `application/json`);
//! - `--no-get`: offer no GET stream (405);
//! - `--get-delay-ms N`: open a GET stream only after N ms (a slow upstream);
//! - `--tls CERT KEY`: serve https with this PEM certificate chain and key;
//! - `--port N`: listen on this port (default: a free one);
//! - `--token T`: require `Authorization: Bearer T` on every POST (else 401, a text body).
//!
//! Tools: `echo {text}`; `sleep {ms}`; `headers` (the request headers it received, as JSON text);
//! `deleted` (the session ids DELETEd so far); `forget` (drops the caller's session, so its next
//! request gets 404, as after a server restart); `retire` (the same, and every later
//! `initialize` is refused with 503: a server that takes no new sessions); `announce {text}` (sends a
//! `notifications/message` with `text` on the caller session's GET stream; answers how many GET
//! streams took it; events have ids, and a GET with `Last-Event-ID` gets the ones after it
//! first); `cut` (drops the caller session's GET streams); `slow {ms, every, ids}` (answers with SSE
//! after `ms`, with a progress notification every `every` ms meanwhile; events have ids if `ids`); `cancelled` (the request
//! ids of the `notifications/cancelled` received so far); `slept` (how many `sleep` calls ran to
//! the end rather than being dropped with their connection); `sleeping` (how many run now); `stream {count, bytes}` (answers with SSE whatever the mode: `count`
//! progress notifications for the request's `progressToken`, each with a `bytes`-long message,
//! then the result).

// A test fixture: panics are fine here.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

#[derive(Default)]
struct Fixture {
    stateless: bool,
    sse: bool,
    no_get: bool,
    get_delay: std::time::Duration,
    /// Open GET streams, by session.
    streams: Mutex<Vec<(String, tokio::sync::mpsc::Sender<String>)>>,
    next: AtomicU64,
    sessions: Mutex<HashSet<String>>,
    deleted: Mutex<Vec<String>>,
    /// Every GET-stream event of each session, in order (event `n` has id `n`), for resuming.
    events: Mutex<std::collections::HashMap<String, Vec<String>>>,
    /// Request ids named by the `notifications/cancelled` received.
    cancelled: Mutex<Vec<Value>>,
    /// `sleep` calls that ran to the end (not dropped with their connection).
    slept: AtomicU64,
    /// `sleep` calls running now.
    sleeping: AtomicU64,
    /// Set by `retire`: no new sessions.
    retired: std::sync::atomic::AtomicBool,
    /// The bearer token every POST must carry (`--token`).
    token: Option<String>,
}

/// Counts a call while it runs: up when it starts, down when it ends or is dropped with its
/// connection.
struct Running<'a>(&'a AtomicU64);

impl<'a> Running<'a> {
    fn start(count: &'a AtomicU64) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        Self(count)
    }
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let fixture = Arc::new(Fixture {
        stateless: args.iter().any(|a| a == "--stateless"),
        sse: args.iter().any(|a| a == "--sse"),
        no_get: args.iter().any(|a| a == "--no-get"),
        get_delay: std::time::Duration::from_millis(
            args.iter()
                .position(|a| a == "--get-delay-ms")
                .map_or(0, |i| args[i + 1].parse().unwrap()),
        ),
        token: args
            .iter()
            .position(|a| a == "--token")
            .map(|i| args[i + 1].clone()),
        ..Fixture::default()
    });
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let port: u16 = args
            .iter()
            .position(|a| a == "--port")
            .map_or(0, |i| args[i + 1].parse().unwrap());
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        println!("PORT {}", listener.local_addr().unwrap().port());
        let app = axum::Router::new()
            .route("/mcp", axum::routing::post(post).delete(delete).get(get))
            .with_state(fixture);
        match args.iter().position(|a| a == "--tls") {
            Some(i) => serve_tls(listener, app, &args[i + 1], &args[i + 2]).await,
            None => axum::serve(listener, app).await.unwrap(),
        }
    });
}

/// Serves `app` over TLS with the PEM certificate chain `cert` and key `key`.
async fn serve_tls(listener: tokio::net::TcpListener, app: axum::Router, cert: &str, key: &str) {
    use rustls::pki_types::pem::PemObject as _;
    let certs = rustls::pki_types::CertificateDer::pem_file_iter(cert)
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = rustls::pki_types::PrivateKeyDer::from_pem_file(key).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    loop {
        let (tcp, _) = listener.accept().await.unwrap();
        let (acceptor, app) = (acceptor.clone(), app.clone());
        tokio::spawn(async move {
            // A client that refuses our certificate just goes away.
            let Ok(tls) = acceptor.accept(tcp).await else {
                return;
            };
            let service = hyper_util::service::TowerToHyperService::new(app);
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                .await;
        });
    }
}

fn session_of(headers: &HeaderMap) -> Option<String> {
    headers
        .get("mcp-session-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

async fn get(State(fixture): State<Arc<Fixture>>, headers: HeaderMap) -> Response {
    if fixture.no_get {
        return (StatusCode::METHOD_NOT_ALLOWED, [("allow", "POST, DELETE")]).into_response();
    }
    let Some(session) = session_of(&headers) else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    tokio::time::sleep(fixture.get_delay).await;
    let (tx, rx) = tokio::sync::mpsc::channel::<String>(64);
    // A resuming client gets the events after the one it names first.
    let after: Option<usize> = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let missed: Vec<String> = match after {
        Some(after) => fixture
            .events
            .lock()
            .unwrap()
            .get(&session)
            .map(|all| all.iter().skip(after).cloned().collect())
            .unwrap_or_default(),
        None => Vec::new(),
    };
    fixture.streams.lock().unwrap().push((session, tx));
    let prime = futures_util::stream::iter(
        std::iter::once(": hello\n\n".to_owned())
            .chain(missed)
            .map(Ok::<_, std::convert::Infallible>),
    );
    let events = futures_util::stream::unfold(rx, |mut rx| async move {
        let event = rx.recv().await?;
        Some((Ok::<_, std::convert::Infallible>(event), rx))
    });
    let body = axum::body::Body::from_stream(futures_util::StreamExt::chain(prime, events));
    ([("content-type", "text/event-stream")], body).into_response()
}

async fn delete(State(fixture): State<Arc<Fixture>>, headers: HeaderMap) -> StatusCode {
    let Some(session) = session_of(&headers) else {
        return StatusCode::BAD_REQUEST;
    };
    if !fixture.sessions.lock().unwrap().remove(&session) {
        return StatusCode::NOT_FOUND;
    }
    fixture.deleted.lock().unwrap().push(session);
    // Any 2xx must do; this one answers 202, like rmcp.
    StatusCode::ACCEPTED
}

#[allow(clippy::too_many_lines)] // One flat table of tools reads better than fragments.
async fn post(State(fixture): State<Arc<Fixture>>, headers: HeaderMap, body: Bytes) -> Response {
    if let Some(token) = &fixture.token {
        let sent = headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        if sent != Some(format!("Bearer {token}").as_str()) {
            return (
                StatusCode::UNAUTHORIZED,
                [("www-authenticate", "Bearer")],
                "missing or bad bearer token",
            )
                .into_response();
        }
    }
    let Ok(msg) = serde_json::from_slice::<Value>(&body) else {
        return error_response(StatusCode::BAD_REQUEST, -32700, "Parse error");
    };
    let Some(method) = msg.get("method").and_then(Value::as_str) else {
        return StatusCode::ACCEPTED.into_response();
    };
    let id = msg.get("id").cloned();
    let mut new_session = None;
    if method == "initialize" && fixture.retired.load(Ordering::Relaxed) {
        return error_response(StatusCode::SERVICE_UNAVAILABLE, -32603, "Retired");
    }
    if method == "initialize" {
        if !fixture.stateless {
            let session = format!("upstream-{}", fixture.next.fetch_add(1, Ordering::Relaxed));
            fixture.sessions.lock().unwrap().insert(session.clone());
            new_session = Some(session);
        }
    } else if !fixture.stateless {
        match session_of(&headers) {
            None => return error_response(StatusCode::BAD_REQUEST, -32600, "Missing session"),
            Some(s) if !fixture.sessions.lock().unwrap().contains(&s) => {
                return error_response(StatusCode::NOT_FOUND, -32600, "Session not found");
            }
            Some(_) => {}
        }
    }
    let Some(id) = id else {
        if method == "notifications/cancelled" {
            let cancelled = msg
                .pointer("/params/requestId")
                .cloned()
                .unwrap_or_default();
            fixture.cancelled.lock().unwrap().push(cancelled);
        }
        return StatusCode::ACCEPTED.into_response();
    };
    match msg.pointer("/params/name").and_then(Value::as_str) {
        Some("stream") => return stream(&msg, id),
        Some("slow") => return slow(&msg, id),
        _ => {}
    }
    let result = match method {
        "initialize" => json!({
            "protocolVersion": msg.pointer("/params/protocolVersion").cloned().unwrap_or(json!("2025-06-18")),
            "capabilities": {"tools": {}},
            "serverInfo": {"name": "shadowcat-http-fixture", "version": "1.0.0"}
        }),
        "ping" => json!({}),
        "tools/list" => json!({"tools": [
            {"name": "echo", "inputSchema": {"type": "object", "properties": {"text": {"type": "string"}}}},
            {"name": "headers", "inputSchema": {"type": "object", "properties": {
                "region": {"type": "string", "x-mcp-header": "Region"}}}},
            {"name": "deleted", "inputSchema": {"type": "object"}},
            {"name": "forget", "inputSchema": {"type": "object"}},
        ]}),
        "tools/call" => {
            let name = msg
                .pointer("/params/name")
                .and_then(Value::as_str)
                .unwrap_or("");
            let text = match name {
                "echo" => msg
                    .pointer("/params/arguments/text")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned(),
                "headers" => {
                    let map: serde_json::Map<String, Value> = headers
                        .iter()
                        .map(|(k, v)| (k.to_string(), json!(v.to_str().unwrap_or("?"))))
                        .collect();
                    Value::Object(map).to_string()
                }
                "deleted" => json!(*fixture.deleted.lock().unwrap()).to_string(),
                "cancelled" => json!(*fixture.cancelled.lock().unwrap()).to_string(),
                "sleep" => {
                    let ms = msg
                        .pointer("/params/arguments/ms")
                        .and_then(Value::as_u64)
                        .unwrap_or(100);
                    let _running = Running::start(&fixture.sleeping);
                    tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
                    fixture.slept.fetch_add(1, Ordering::Relaxed);
                    "slept".to_owned()
                }
                "slept" => fixture.slept.load(Ordering::Relaxed).to_string(),
                "sleeping" => fixture.sleeping.load(Ordering::Relaxed).to_string(),
                "announce" => {
                    let said = msg
                        .pointer("/params/arguments/text")
                        .cloned()
                        .unwrap_or(json!(""));
                    let note = json!({"jsonrpc": "2.0", "method": "notifications/message",
                                      "params": {"level": "info", "data": said}});
                    let me = session_of(&headers).unwrap_or_default();
                    let event = {
                        let mut events = fixture.events.lock().unwrap();
                        let log = events.entry(me.clone()).or_default();
                        let event =
                            format!("id: {}\nevent: message\ndata: {note}\n\n", log.len() + 1);
                        log.push(event.clone());
                        event
                    };
                    let mut streams = fixture.streams.lock().unwrap();
                    streams.retain(|(_, tx)| !tx.is_closed());
                    let mut took = 0;
                    for (session, tx) in streams.iter() {
                        if *session == me && tx.try_send(event.clone()).is_ok() {
                            took += 1;
                        }
                    }
                    took.to_string()
                }
                "cut" => {
                    // Drops the caller session's GET streams, as a broken connection would.
                    let me = session_of(&headers).unwrap_or_default();
                    fixture.streams.lock().unwrap().retain(|(s, _)| *s != me);
                    "cut".to_owned()
                }
                "forget" | "retire" => {
                    if let Some(s) = session_of(&headers) {
                        fixture.sessions.lock().unwrap().remove(&s);
                    }
                    if name == "retire" {
                        fixture.retired.store(true, Ordering::Relaxed);
                    }
                    "forgotten".to_owned()
                }
                other => {
                    return rpc(
                        &fixture,
                        &id,
                        None,
                        Some(json!({"code": -32602, "message": format!("unknown tool {other}")})),
                        None,
                    );
                }
            };
            json!({"content": [{"type": "text", "text": text}]})
        }
        other => {
            return rpc(
                &fixture,
                &id,
                None,
                Some(json!({"code": -32601, "message": format!("Method not found: {other}")})),
                None,
            );
        }
    };
    rpc(&fixture, &id, Some(result), None, new_session)
}

/// The `slow` tool: an SSE answer after `ms`, with a progress notification (for the request's
/// `progressToken`) every `every` ms until then.
fn slow(msg: &Value, id: Value) -> Response {
    let arg = |name: &str, default: u64| {
        msg.pointer(&format!("/params/arguments/{name}"))
            .and_then(Value::as_u64)
            .unwrap_or(default)
    };
    let (total, every) = (arg("ms", 1000), arg("every", 100).max(1));
    // `ids: true`: events carry ids (`s<n>`), so a broken stream could be resumed.
    let ids = msg
        .pointer("/params/arguments/ids")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let id_line = move |step: u64| {
        if ids {
            format!("id: s{step}\n")
        } else {
            String::new()
        }
    };
    let token = msg
        .pointer("/params/_meta/progressToken")
        .cloned()
        .unwrap_or(json!(0));
    let start = tokio::time::Instant::now();
    let events = futures_util::stream::unfold(Some(0u64), move |step| {
        let (token, id) = (token.clone(), id.clone());
        async move {
            let step = step?;
            let elapsed = u64::try_from(start.elapsed().as_millis()).unwrap();
            if elapsed >= total {
                let body = json!({"jsonrpc": "2.0", "id": id, "result": {"content": [{"type": "text", "text": "slow done"}]}});
                return Some((
                    Ok::<_, std::convert::Infallible>(format!(
                        "{}event: message\ndata: {body}\n\n",
                        id_line(step + 1)
                    )),
                    None,
                ));
            }
            tokio::time::sleep(std::time::Duration::from_millis(every.min(total - elapsed))).await;
            let body = json!({"jsonrpc": "2.0", "method": "notifications/progress",
                              "params": {"progressToken": token, "progress": step + 1}});
            Some((
                Ok(format!(
                    "{}event: message\ndata: {body}\n\n",
                    id_line(step + 1)
                )),
                Some(step + 1),
            ))
        }
    });
    (
        [("content-type", "text/event-stream")],
        axum::body::Body::from_stream(events),
    )
        .into_response()
}

/// The `stream` tool: an SSE answer of `count` progress notifications, then the result, each
/// event written as its own chunk.
fn stream(msg: &Value, id: Value) -> Response {
    let count = msg
        .pointer("/params/arguments/count")
        .and_then(Value::as_u64)
        .unwrap_or(10);
    let bytes = msg
        .pointer("/params/arguments/bytes")
        .and_then(Value::as_u64)
        .unwrap_or(100);
    let token = msg
        .pointer("/params/_meta/progressToken")
        .cloned()
        .unwrap_or(json!(0));
    let padding = "x".repeat(usize::try_from(bytes).unwrap());
    let events = futures_util::stream::iter((1..=count + 1).map(move |n| {
        let body = if n <= count {
            json!({"jsonrpc": "2.0", "method": "notifications/progress",
                   "params": {"progressToken": token, "progress": n, "total": count, "message": padding}})
        } else {
            json!({"jsonrpc": "2.0", "id": id, "result": {"content": [{"type": "text", "text": format!("streamed {count}")}]}})
        };
        Ok::<_, std::convert::Infallible>(format!("event: message\ndata: {body}\n\n"))
    }));
    (
        [("content-type", "text/event-stream")],
        axum::body::Body::from_stream(events),
    )
        .into_response()
}

fn rpc(
    fixture: &Fixture,
    id: &Value,
    result: Option<Value>,
    error: Option<Value>,
    session: Option<String>,
) -> Response {
    let body = match (result, error) {
        (Some(result), _) => json!({"jsonrpc": "2.0", "id": id, "result": result}),
        (None, error) => json!({"jsonrpc": "2.0", "id": id, "error": error}),
    }
    .to_string();
    let mut response = if fixture.sse {
        let event = format!("event: message\ndata: {body}\n\n");
        ([("content-type", "text/event-stream")], event).into_response()
    } else {
        ([("content-type", "application/json")], body).into_response()
    };
    if let Some(session) = session {
        response
            .headers_mut()
            .insert("mcp-session-id", HeaderValue::from_str(&session).unwrap());
    }
    response
}

fn error_response(status: StatusCode, code: i64, message: &str) -> Response {
    let body = json!({"jsonrpc": "2.0", "id": null, "error": {"code": code, "message": message}});
    (
        status,
        [("content-type", "application/json")],
        body.to_string(),
    )
        .into_response()
}
