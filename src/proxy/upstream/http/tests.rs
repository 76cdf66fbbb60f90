//! One [`HttpSession`] against an upstream served in-process on a loopback socket (axum): its
//! answers reach the client, a lost session comes back with the client's handshake, and a
//! refusal reaches a client with one way in as a JSON-RPC error.

use std::sync::atomic::{AtomicUsize, Ordering};

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::StatusCode;

use super::*;
use crate::protocol::Direction;
use crate::session::{SessionConfig, TransportKind};
use crate::stage::{Client, Context, Verdict};
use crate::telemetry::Metrics;

use crate::proxy::outbox::Collect;

/// The upstream: sessions numbered from 1; `current` is the one it knows (0: none, as after a
/// restart). A request answers with the session it reached; `refuse` answers everything but
/// `initialize` with 500 and a plain body.
#[derive(Debug, Default)]
struct Upstream {
    current: AtomicUsize,
    sessions: AtomicUsize,
    initialized: AtomicUsize,
    refuse: AtomicBool,
}

async fn serve_mcp(
    State(upstream): State<Arc<Upstream>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let msg: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let method = msg["method"].as_str().unwrap_or_default();
    let json = |value: serde_json::Value, session: Option<usize>| {
        let mut response = axum::Json(value).into_response();
        if let Some(n) = session {
            response
                .headers_mut()
                .insert("mcp-session-id", HeaderValue::from(n));
        }
        response
    };
    if method == "initialize" {
        let n = upstream.sessions.fetch_add(1, Ordering::SeqCst) + 1;
        upstream.current.store(n, Ordering::SeqCst);
        return json(
            serde_json::json!({"jsonrpc":"2.0","id":msg["id"],"result":{"protocolVersion":"2025-06-18","capabilities":{},"serverInfo":{"name":"t","version":"1"}}}),
            Some(n),
        );
    }
    if upstream.refuse.load(Ordering::SeqCst) {
        return (StatusCode::INTERNAL_SERVER_ERROR, "the database is on fire").into_response();
    }
    let session = headers
        .get("mcp-session-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if session != Some(upstream.current.load(Ordering::SeqCst)) {
        return StatusCode::NOT_FOUND.into_response();
    }
    if method == "notifications/initialized" {
        upstream.initialized.fetch_add(1, Ordering::SeqCst);
        return StatusCode::ACCEPTED.into_response();
    }
    json(
        serde_json::json!({"jsonrpc":"2.0","id":msg["id"],"result":{"session":session}}),
        None,
    )
}

/// The upstream on a loopback port, and a session there whose messages reach `Collect`.
async fn start() -> (Arc<Upstream>, Arc<HttpSession<Arc<Collect>>>, Arc<Collect>) {
    let upstream = Arc::new(Upstream::default());
    let app = axum::Router::new()
        .route("/mcp", axum::routing::post(serve_mcp))
        .with_state(upstream.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url: http::Uri = format!("http://{}/mcp", listener.local_addr().unwrap())
        .parse()
        .unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let sessions = SessionManager::new(SessionConfig::default(), None);
    let pipeline = Arc::new(Pipeline::new(
        Arc::new(Metrics::default()),
        sessions.clone(),
        &[],
        None,
    ));
    let client = HttpClient::new(
        url,
        HeaderMap::new(),
        Duration::from_secs(5),
        crate::transport::http::tls_config(&[]),
    );
    let limits = HttpLimits {
        max_message_size: 1 << 20,
        connect_timeout: Duration::from_secs(5),
        read_timeout: None,
        resume_timeout: Duration::from_secs(5),
        shutdown_timeout: Duration::from_secs(1),
    };
    let backend = HttpBackend::new(
        client,
        limits,
        pipeline,
        sessions.clone(),
        UpstreamErrors::default(),
        Audience::Operator,
    );
    let session = sessions.create(TransportKind::Stdio, None).unwrap();
    let to_client = Arc::new(Collect::default());
    let http = backend.session(session, to_client.clone());
    (upstream, http, to_client)
}

/// `text` from the client: through the pipeline (as the bridge's relay sends it), then to the
/// upstream; what comes back goes to `to_client`.
async fn send(http: &Arc<HttpSession<Arc<Collect>>>, to_client: &Arc<Collect>, text: &str) {
    let msg = Message::parse(Bytes::copy_from_slice(text.as_bytes())).unwrap();
    let cx = Context {
        direction: Direction::ClientToServer,
        session: &http.session,
        transport: &crate::tape::Wire::NONE,
        client: Client::Local,
        header_trace: None,
        notes: None,
    };
    let Verdict::Forward(msg) = http.backend().pipeline().process(msg, cx).await else {
        panic!("the pipeline did not forward {text}");
    };
    let requests = usize::from(msg.kind() == crate::protocol::Kind::Request);
    let headers = crate::protocol::headers::headers_for(&msg, version_header(&http.session));
    http.exchange_to(vec![msg], &headers, to_client.as_ref(), requests)
        .await;
}

const INITIALIZE: &str = r#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"c","version":"1"}}}"#;
const INITIALIZED: &str = r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#;
const LIST: &str = r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#;

#[tokio::test]
async fn answers_reach_the_client_and_a_lost_session_comes_back_with_the_handshake() {
    let (upstream, http, to_client) = start().await;
    assert!(http.never_initialized());
    send(&http, &to_client, INITIALIZE).await;
    send(&http, &to_client, INITIALIZED).await;
    assert!(!http.never_initialized());
    assert!(
        http.ready.is_cancelled(),
        "the upstream accepted initialize"
    );
    send(&http, &to_client, LIST).await;
    let got = to_client.taken();
    assert_eq!(got.len(), 2, "{got:?}");
    assert!(got[0].contains("\"serverInfo\""), "{got:?}");
    assert!(got[1].contains("\"session\":1"), "{got:?}");

    // The upstream restarts: it knows no session. The next request meets 404, the client's
    // initialize and initialized are replayed, and the request is answered on session 2.
    upstream.current.store(0, Ordering::SeqCst);
    send(&http, &to_client, &LIST.replace("\"id\":1", "\"id\":2")).await;
    let got = to_client.taken();
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(
        got[0].contains("\"id\":2") && got[0].contains("\"session\":2"),
        "{got:?}"
    );
    assert_eq!(upstream.sessions.load(Ordering::SeqCst), 2);
    assert_eq!(upstream.initialized.load(Ordering::SeqCst), 2);
    assert!(
        !http.session.closed_token().is_cancelled(),
        "the client's session goes on"
    );
}

#[tokio::test]
async fn a_refusal_reaches_a_client_with_one_way_in_as_an_error_for_its_request() {
    let (upstream, http, to_client) = start().await;
    send(&http, &to_client, INITIALIZE).await;
    to_client.taken();
    upstream.refuse.store(true, Ordering::SeqCst);
    send(&http, &to_client, LIST).await;
    let got = to_client.taken();
    assert_eq!(got.len(), 1, "{got:?}");
    let answer: serde_json::Value = serde_json::from_str(&got[0]).unwrap();
    assert_eq!(answer["id"], 1, "{answer}");
    assert_eq!(answer["error"]["code"], -32088, "{answer}");
    assert_eq!(answer["error"]["data"]["httpStatus"], 500, "{answer}");
    assert!(
        http.session.pending(Direction::ClientToServer).is_empty(),
        "the refused request is forgotten"
    );
}

#[tokio::test]
async fn a_session_the_upstream_lost_for_good_ends() {
    let (upstream, http, to_client) = start().await;
    // Without a handshake to replay (the client never initialized), a 404 cannot be recovered:
    // the session ends, for the client to start afresh.
    upstream.current.store(7, Ordering::SeqCst);
    send(&http, &to_client, LIST).await;
    assert!(http.session.closed_token().is_cancelled());
    let got = to_client.taken();
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(got[0].contains("\"error\""), "{got:?}");
}
