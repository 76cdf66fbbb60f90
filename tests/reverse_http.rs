//! `shadowcat reverse --upstream URL`: the HTTP upstream side, against the HTTP fixture server
//! (examples/http_fixture.rs): which headers travel, session id mapping, upstream DELETE, an
//! upstream that forgets the session or can't be reached, SSE answers, admin endpoints.

#![allow(
    clippy::pedantic,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::disallowed_types
)]

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::{Gateway, HttpFixture as Fixture, http_request, tool};

fn call(id: i64, name: &str, arguments: Value) -> Value {
    json!({"jsonrpc":"2.0","id":id,"method":"tools/call","params":tool(name, arguments)})
}

fn text_of(answer: &Value) -> String {
    answer["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or_else(|| panic!("no text result: {answer}"))
        .to_owned()
}

fn wait_until(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn only_mcp_headers_and_configured_ones_reach_the_upstream_and_session_ids_are_mapped() {
    let fixture = Fixture::start(&[]);
    let gw = Gateway::start(&[
        "--upstream",
        &fixture.url,
        "--upstream-header",
        "X-Api-Key: k-123",
    ]);
    let session = gw.initialize();
    assert!(
        !session.starts_with("upstream-"),
        "the client sees our id: {session}"
    );
    let r = http_request(
        &gw.addr,
        "POST",
        "/mcp",
        &support::mcp_headers(&[
            ("Mcp-Session-Id", &session),
            ("MCP-Protocol-Version", "2025-06-18"),
            ("Mcp-Param-Region", "eu-west"),
            // A lie nothing checks before 2026-07-28, so it is not passed on.
            ("Mcp-Method", "tools/list"),
            ("Mcp-Name", "delete_everything"),
            ("Authorization", "Bearer client-secret"),
            ("Cookie", "sid=client-cookie"),
            ("X-Custom", "nope"),
            ("Keep-Alive", "timeout=5"),
        ]),
        call(1, "headers", json!({})).to_string().as_bytes(),
    );
    assert_eq!(r.status, 200, "{r:?}");
    let seen: Value = serde_json::from_str(&text_of(&r.json())).unwrap();
    assert_eq!(
        seen["mcp-session-id"], "upstream-0",
        "mapped to the upstream's id: {seen}"
    );
    assert_eq!(seen["mcp-protocol-version"], "2025-06-18");
    assert_eq!(seen["x-api-key"], "k-123");
    for never in [
        "authorization",
        "cookie",
        "x-custom",
        "keep-alive",
        // The stateless era's mirrored headers mean nothing before it, and were not checked.
        "mcp-method",
        "mcp-name",
        "mcp-param-region",
    ] {
        assert!(
            seen.get(never).is_none(),
            "{never} reached the upstream: {seen}"
        );
    }
    // The upstream's id never reaches the client.
    assert!(r.header("mcp-session-id").is_none());
}

#[test]
fn ending_a_session_ends_the_upstream_session() {
    let fixture = Fixture::start(&[]);
    let gw = Gateway::start(&[
        "--upstream",
        &fixture.url,
        "--session-idle-timeout",
        "1s",
        "--cleanup-interval",
        "100ms",
    ]);
    let session = gw.initialize();
    let deleted = http_request(
        &gw.addr,
        "DELETE",
        "/mcp",
        &[("Mcp-Session-Id", session)],
        b"",
    );
    assert_eq!(
        deleted.status, 200,
        "any 2xx from the upstream will do (it sent 202)"
    );
    // Idle expiry ends the next one the same way.
    let _idle = gw.initialize();
    let watcher = gw.initialize();
    let deleted_upstream = || {
        let r = gw.post(Some(&watcher), &call(9, "deleted", json!({})));
        if r.status != 200 {
            return Vec::new();
        }
        serde_json::from_str::<Vec<String>>(&text_of(&r.json())).unwrap()
    };
    assert_eq!(deleted_upstream(), ["upstream-0"]);
    wait_until("the idle session's upstream session is deleted", || {
        deleted_upstream().contains(&"upstream-1".to_owned())
    });
}

/// The upstream loses the session (a restart): shadowcat replays the client's handshake there,
/// maps the new upstream session, and sends the refused request again; the client notices
/// nothing.
#[test]
fn an_upstream_that_forgets_the_session_gets_it_back_and_the_client_carries_on() {
    let fixture = Fixture::start(&[]);
    let gw = Gateway::start(&["--upstream", &fixture.url]);
    let session = gw.initialize();
    let r = gw.post(Some(&session), &call(1, "forget", json!({})));
    assert_eq!(text_of(&r.json()), "forgotten");
    let r = gw.post(
        Some(&session),
        &call(2, "echo", json!({"text": "still here"})),
    );
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(text_of(&r.json()), "still here");
    let r = gw.post(Some(&session), &call(3, "headers", json!({})));
    let seen: Value = serde_json::from_str(&text_of(&r.json())).unwrap();
    assert_eq!(
        seen["mcp-session-id"], "upstream-1",
        "the new upstream session"
    );
    assert!(gw.stderr_text().contains("re-established it"));
}

/// An upstream that loses the session and will not take it back: its 404 is passed on, and our
/// session ends too, so the client starts again.
#[test]
fn an_upstream_that_cannot_take_the_session_back_makes_the_client_start_again() {
    let fixture = Fixture::start(&[]);
    let gw = Gateway::start(&["--upstream", &fixture.url]);
    let session = gw.initialize();
    let r = gw.post(Some(&session), &call(1, "retire", json!({})));
    assert_eq!(text_of(&r.json()), "forgotten");
    let r = gw.post(Some(&session), &call(2, "echo", json!({"text": "x"})));
    assert_eq!(r.status, 404, "the upstream's 404 is passed on: {r:?}");
    let r = gw.post(Some(&session), &call(3, "echo", json!({"text": "x"})));
    assert_eq!(r.status, 404, "and our session is gone too");
}

/// A 2024-11-05 client whose Streamable HTTP upstream loses the session for good gets the error on its
/// stream, then the stream ends (its session with it), so it can connect afresh.
#[test]
fn an_upstream_that_forgets_a_legacy_clients_session_ends_its_stream() {
    let fixture = Fixture::start(&[]);
    let gw = Gateway::start(&["--upstream", &fixture.url]);
    let mut stream = support::SseReader::open_path(
        &gw.addr,
        "GET",
        "/sse",
        &[("Accept", "text/event-stream".into())],
        b"",
    );
    let endpoint = stream.next_endpoint().expect("the endpoint event");
    let post = |body: Value| {
        let r = http_request(
            &gw.addr,
            "POST",
            &endpoint,
            &[("Content-Type", "application/json".into())],
            body.to_string().as_bytes(),
        );
        assert_eq!(r.status, 202, "{r:?}");
    };
    post(
        json!({"jsonrpc":"2.0","id":0,"method":"initialize","params":{
        "protocolVersion":"2024-11-05","capabilities":{},"clientInfo":{"name":"old","version":"1"}}}),
    );
    assert_eq!(stream.next_event().unwrap().1["id"], 0);
    post(json!({"jsonrpc":"2.0","method":"notifications/initialized"}));
    post(call(1, "retire", json!({})));
    assert_eq!(stream.next_event().unwrap().1["id"], 1);
    post(call(2, "echo", json!({"text": "anyone?"})));
    let (_, error) = stream.next_event().expect("the error, on the stream");
    assert_eq!(error["id"], 2);
    // The upstream's own error (its 404 carried one), under the request's id.
    assert_eq!(error["error"]["message"], "Session not found", "{error}");
    let started = Instant::now();
    assert!(
        stream.assert_ends_within(support::ENDS_WITHIN).is_empty(),
        "then the stream ends"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "ended, not timed out"
    );
    let gone = http_request(
        &gw.addr,
        "POST",
        &endpoint,
        &[("Content-Type", "application/json".into())],
        b"{}",
    );
    assert_eq!(gone.status, 404, "and its session with it");
    wait_until("the reason is logged", || {
        gw.stderr_text().contains("no longer knows this session")
    });
}

#[test]
fn sse_and_stateless_upstreams() {
    for flags in [
        &["--sse"][..],
        &["--stateless"][..],
        &["--stateless", "--sse"][..],
    ] {
        let fixture = Fixture::start(flags);
        let gw = Gateway::start(&["--upstream", &fixture.url]);
        let session = gw.initialize();
        for i in 0..3 {
            let r = gw.post(
                Some(&session),
                &call(i, "echo", json!({"text": format!("n{i}")})),
            );
            assert_eq!(r.status, 200, "{flags:?}: {r:?}");
            assert_eq!(text_of(&r.messages()[0]), format!("n{i}"), "{flags:?}");
        }
        let r = http_request(
            &gw.addr,
            "DELETE",
            "/mcp",
            &[("Mcp-Session-Id", session)],
            b"",
        );
        assert_eq!(r.status, 200);
    }
}

#[test]
fn an_unreachable_upstream_gets_a_clear_error_and_the_gateway_stays_up() {
    // A port nothing listens on: bind, note it, close.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let gw = Gateway::start(&[
        "--upstream",
        &format!("http://127.0.0.1:{port}/mcp"),
        "--admin-listen",
        "127.0.0.1:0",
    ]);
    for _ in 0..2 {
        let r = gw.post(
            None,
            &json!({"jsonrpc":"2.0","id":0,"method":"initialize","params":{
                "protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}),
        );
        assert_eq!(r.status, 200, "{r:?}");
        let error = r.json();
        assert_eq!(error["id"], 0);
        assert_eq!(error["error"]["code"], -32087, "{error}");
        assert!(
            error["error"]["message"]
                .as_str()
                .unwrap()
                .contains(&port.to_string())
        );
        assert!(
            r.header("mcp-session-id").is_none(),
            "no session for a failed initialize"
        );
    }
}

#[test]
fn admin_endpoints_report_health_readiness_and_metrics() {
    let fixture = Fixture::start(&[]);
    let gw = Gateway::start(&["--upstream", &fixture.url, "--admin-listen", "127.0.0.1:0"]);
    let admin = gw.admin_addr();
    let session = gw.initialize();
    gw.post(Some(&session), &call(1, "echo", json!({"text": "m"})));
    gw.post(Some(&session), &call(2, "nope", json!({})));
    assert_eq!(
        http_request(&admin, "GET", "/healthz", &[], b"").status,
        200
    );
    assert_eq!(http_request(&admin, "GET", "/readyz", &[], b"").status, 200);
    let metrics = http_request(&admin, "GET", "/metrics", &[], b"");
    assert_eq!(metrics.status, 200);
    let text = String::from_utf8(metrics.body).unwrap();
    for needle in [
        "shadowcat_sessions_open 1",
        "shadowcat_sessions_created_total 1",
        r#"shadowcat_requests_total{method="tools/call",outcome="ok"} 1"#,
        r#"shadowcat_requests_total{method="tools/call",outcome="error"} 1"#,
        r#"shadowcat_requests_total{method="initialize",outcome="ok"} 1"#,
        "shadowcat_request_duration_seconds_bucket",
        "shadowcat_upstream_errors_total",
    ] {
        assert!(text.contains(needle), "{needle} missing from:\n{text}");
    }
    drop(fixture);
    let r = http_request(&admin, "GET", "/readyz", &[], b"");
    assert_eq!(r.status, 503, "the upstream is gone");
    // The MCP endpoint is not served on the admin address, nor the admin routes on the MCP one.
    assert_eq!(
        http_request(&gw.addr, "GET", "/metrics", &[], b"").status,
        404
    );
}

#[test]
fn a_client_that_leaves_mid_call_leaves_nothing_pending() {
    let fixture = Fixture::start(&[]);
    let gw = Gateway::start(&["--upstream", &fixture.url, "--max-sessions", "1"]);
    let session = gw.initialize();
    let ask = |id: i64, tool: &str| {
        let r = gw.post(Some(&session), &call(id, tool, json!({})));
        assert_eq!(r.status, 200, "{r:?}");
        text_of(&r.json())
    };
    // A call, and the client hangs up before its answer, once the server is running it.
    {
        use std::io::Write;
        let mut stream = std::net::TcpStream::connect(&gw.addr).unwrap();
        let body = call(1, "sleep", json!({"ms": 3000})).to_string();
        write!(
            stream,
            "POST /mcp HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\nMcp-Session-Id: {session}\r\nContent-Length: {}\r\n\r\n{body}",
            gw.addr,
            body.len()
        )
        .unwrap();
        wait_until("the server runs the call", || ask(2, "sleeping") == "1");
    }
    // The server's call is dropped with it (it never runs to its end)...
    wait_until("the server drops the call", || ask(3, "sleeping") == "0");
    assert_eq!(ask(4, "slept"), "0");
    // ...and nothing is left pending, so the session is idle and a new client can take its place.
    let r = gw.post(
        None,
        &json!({"jsonrpc":"2.0","id":0,"method":"initialize","params":{
            "protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}),
    );
    assert_eq!(
        r.status, 200,
        "the abandoned call still holds the session: {r:?}"
    );
}

#[test]
fn a_stateless_request_passes_through_with_a_session_that_lasts_as_long_as_it() {
    let fixture = Fixture::start(&["--stateless"]);
    let gw = Gateway::start(&["--upstream", &fixture.url, "--admin-listen", "127.0.0.1:0"]);
    let admin = gw
        .stderr_text()
        .split("admin endpoints on http://")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .unwrap()
        .to_owned();
    let (mut h, body) = support::modern_call(1, "headers", json!({}), json!({}));
    h.push(("Mcp-Param-Unknown-To-Us", "kept".into()));
    let r = http_request(&gw.addr, "POST", "/mcp", &h, &body);
    assert_eq!(r.status, 200, "{r:?}");
    assert!(
        r.header("mcp-session-id").is_none(),
        "no session id for a stateless request"
    );
    let seen: Value = serde_json::from_str(&text_of(&r.json())).unwrap();
    assert_eq!(seen["mcp-method"], "tools/call");
    assert_eq!(seen["mcp-name"], "headers");
    assert_eq!(
        seen["mcp-param-unknown-to-us"], "kept",
        "unknown Mcp-Param-* headers travel: {seen}"
    );
    assert!(seen.get("mcp-session-id").is_none());
    // A refused stateless request leaves no session behind either (2026-07-28 has no batches).
    let (h, body) = support::modern_call(2, "echo", json!({"text": "x"}), json!({}));
    let batch = [&b"["[..], &body, b"]"].concat();
    let refused = http_request(&gw.addr, "POST", "/mcp", &h, &batch);
    assert_eq!(refused.status, 400, "{refused:?}");
    assert!(
        String::from_utf8_lossy(&refused.body).contains("batches are not part of"),
        "{refused:?}"
    );
    let metrics =
        String::from_utf8(http_request(&admin, "GET", "/metrics", &[], b"").body).unwrap();
    assert!(metrics.contains("shadowcat_sessions_open 0"), "{metrics}");
    assert!(
        metrics.contains("shadowcat_sessions_created_total 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"shadowcat_sessions_ended_total{reason="closed"} 2"#),
        "{metrics}"
    );
}

#[test]
fn the_upstreams_get_stream_is_relayed_to_the_sessions_get_stream() {
    // An upstream slow to open its GET stream.
    let fixture = Fixture::start(&["--get-delay-ms", "300"]);
    let gw = Gateway::start(&["--upstream", &fixture.url]);
    let session = gw.initialize();
    let mut ours = support::SseReader::get(
        &gw.addr,
        &[
            ("Accept", "text/event-stream".to_owned()),
            ("Mcp-Session-Id", session.clone()),
        ],
    );
    assert_eq!(ours.status, 200);
    // Shadowcat opens the upstream's GET stream for the session when the client opens ours, and
    // answers the client's GET once it has: the upstream's announcement, made right away,
    // reaches our stream, with our own event id.
    let r = gw.post(
        Some(&session),
        &call(1, "announce", json!({"text": "hello"})),
    );
    assert_eq!(
        text_of(&r.json()),
        "1",
        "exactly one upstream GET stream for the session, open already"
    );
    let (id, message) = ours.next_event().expect("the relayed notification");
    assert_eq!(message["method"], "notifications/message");
    assert_eq!(message["params"]["data"], "hello");
    assert!(id.is_some_and(|id| id.starts_with("get-")));

    // An upstream without a GET stream: nothing to relay, and nothing breaks.
    let fixture = Fixture::start(&["--no-get"]);
    let gw = Gateway::start(&["--upstream", &fixture.url]);
    let session = gw.initialize();
    for i in 0..3 {
        let r = gw.post(Some(&session), &call(i, "announce", json!({"text": "x"})));
        assert_eq!(text_of(&r.json()), "0");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// An upstream that answers every request with `response`, whatever it was. Returns its URL.
fn answering_stub(response: &'static str) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/mcp", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                use std::io::{Read as _, Write as _};
                let mut stream = stream;
                let mut buf = [0u8; 65536];
                let _ = stream.read(&mut buf);
                let _ = stream.write_all(response.as_bytes());
            });
        }
    });
    url
}

/// An upstream with a 5-second keep-alive timeout, as uvicorn's and Node's: each connection
/// answers requests one after another with `response`, and a request that reaches a connection
/// idle for 4.5 s or more is taken to race the server's closing of it: the connection is reset
/// unanswered. Returns its URL and the number of connections it accepted.
fn keep_alive_stub(response: &'static str) -> (String, Arc<AtomicUsize>) {
    use std::io::{BufRead as _, BufReader, Read as _, Write as _};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/mcp", listener.local_addr().unwrap());
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            counter.fetch_add(1, Ordering::SeqCst);
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut writer = stream;
                let mut idle_since = Instant::now();
                loop {
                    let mut length = 0;
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    if idle_since.elapsed() >= Duration::from_millis(4500) {
                        let _ = socket2::SockRef::from(&writer).set_linger(Some(Duration::ZERO));
                        return;
                    }
                    loop {
                        line.clear();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        if line == "\r\n" {
                            break;
                        }
                        if let Some((name, value)) = line.split_once(':') {
                            if name.eq_ignore_ascii_case("content-length") {
                                length = value.trim().parse().unwrap();
                            }
                        }
                    }
                    let mut body = vec![0; length];
                    reader.read_exact(&mut body).unwrap();
                    let head = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                        response.len()
                    );
                    writer.write_all(head.as_bytes()).unwrap();
                    writer.write_all(response.as_bytes()).unwrap();
                    idle_since = Instant::now();
                }
            });
        }
    });
    (url, accepted)
}

/// A pooled upstream connection is not reused after the idle time at which the servers MCP
/// servers run on close theirs (5 s for uvicorn and Node), where the request would race the
/// server's close and fail (a reset: -32087) although a direct client, with a new connection,
/// is answered. Within it, the connection is reused.
#[test]
fn an_upstream_connection_idle_near_the_servers_keep_alive_timeout_is_not_reused() {
    let (upstream, accepted) = keep_alive_stub(
        r#"{"jsonrpc":"2.0","id":1,"result":{"supportedVersions":["2026-07-28"],"capabilities":{},"serverInfo":{"name":"stub","version":"1"}}}"#,
    );
    let gw = Gateway::start(&["--upstream", &upstream]);
    let discover = br#"{"jsonrpc":"2.0","id":1,"method":"server/discover","params":{"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{}}}}"#;
    let headers = [
        ("Content-Type", "application/json".to_owned()),
        ("Accept", "application/json, text/event-stream".to_owned()),
        ("MCP-Protocol-Version", "2026-07-28".to_owned()),
        ("Mcp-Method", "server/discover".to_owned()),
    ];
    let ask = || {
        let r = http_request(&gw.addr, "POST", "/mcp", &headers, discover);
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.json()["result"]["serverInfo"]["name"], "stub", "{r:?}");
    };
    ask();
    std::thread::sleep(Duration::from_millis(200));
    ask();
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "a busy connection is reused"
    );
    std::thread::sleep(Duration::from_millis(4700));
    ask();
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
}

/// An upstream that answers with an error status and a body that is no JSON-RPC error gets the
/// client -32088 with the status and the body's start (docs/errors.md), and the same status.
#[test]
fn an_upstream_http_error_is_passed_on_as_32088() {
    let upstream = answering_stub(
        "HTTP/1.1 500 Internal Server Error\r\nContent-Type: text/plain\r\nContent-Length: 23\r\nConnection: close\r\n\r\nthe database is on fire",
    );
    let gw = Gateway::start(&["--upstream", &upstream]);
    let r = gw.post(
        None,
        &json!({"jsonrpc":"2.0","id":0,"method":"initialize","params":{
            "protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}),
    );
    assert_eq!(r.status, 500, "{r:?}");
    let error = r.json();
    assert_eq!(error["id"], 0, "{error}");
    assert_eq!(error["error"]["code"], -32088, "{error}");
    assert_eq!(error["error"]["data"]["httpStatus"], 500, "{error}");
    assert!(
        error["error"]["data"]["body"]
            .as_str()
            .is_some_and(|b| b.starts_with("the database is on")),
        "{error}"
    );
    assert_eq!(
        error["error"]["message"],
        "the upstream answered HTTP 500 Internal Server Error: the database is on fire"
    );
}

/// An upstream's refusal at the gateway: its callers, who cannot change the gateway's options,
/// get the status and the body's start and are told that the gateway's log says why; the log
/// says the likely cause, as the bridge tells its user: a 401 wants the gateway's credentials
/// for the upstream (a client's own are never forwarded), a 404 before any session is an
/// --upstream URL with a wrong path. The upstream's URL never reaches a caller.
#[test]
fn an_upstream_refusal_tells_callers_the_status_and_the_log_the_cause() {
    let fixture = Fixture::start(&["--token", "right-token-123"]);
    let initialize = json!({"jsonrpc":"2.0","id":0,"method":"initialize","params":{
        "protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"t","version":"1"}}});
    let mut gw = Gateway::start(&["--upstream", &fixture.url]);
    let r = gw.post(None, &initialize);
    assert_eq!(r.status, 401, "{r:?}");
    assert_eq!(
        r.json()["error"]["message"],
        "the upstream answered HTTP 401 Unauthorized: missing or bad bearer token; the \
         gateway's log says why (its options for the upstream)"
    );
    gw.terminate();
    assert!(gw.wait_exit(Duration::from_secs(10)).success());
    let log = gw.stderr_text();
    assert!(
        log.contains(
            "the upstream answered HTTP 401 Unauthorized: missing or bad bearer token; it wants \
             credentials: give a token with --bearer-token-env VAR or --bearer-token-file FILE \
             (docs/auth.md)"
        ),
        "{log}"
    );
    drop(gw);
    let wrong = fixture.url.replace("/mcp", "/wrong");
    let mut gw = Gateway::start(&["--upstream", &wrong]);
    let r = gw.post(None, &initialize);
    assert_eq!(r.status, 404, "{r:?}");
    let said = r.json()["error"]["message"].as_str().unwrap().to_owned();
    assert!(
        said.starts_with("the upstream answered HTTP 404 Not Found")
            && said.ends_with("; the gateway's log says why (its options for the upstream)")
            && !said.contains("/wrong"),
        "{said}"
    );
    gw.terminate();
    assert!(gw.wait_exit(Duration::from_secs(10)).success());
    let log = gw.stderr_text();
    assert!(
        log.contains(&format!(
            "; {wrong} has no MCP endpoint: check the URL's path (servers usually serve /mcp)"
        )),
        "{log}"
    );
}

/// An upstream whose connections are never accepted (its backlog is full) fails the request
/// at `--connect-timeout` with -32087 and `data.kind: timeout`.
#[test]
fn a_connect_timeout_is_reported_as_a_timeout() {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket
        .bind(
            &"127.0.0.1:0"
                .parse::<std::net::SocketAddr>()
                .unwrap()
                .into(),
        )
        .unwrap();
    socket.listen(0).unwrap();
    let addr = socket.local_addr().unwrap().as_socket().unwrap();
    // Fill the backlog: later connection attempts get no answer at all.
    let held: Vec<_> = (0..4)
        .filter_map(|_| {
            std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok()
        })
        .collect();
    assert!(!held.is_empty());
    let gw = Gateway::start(&[
        "--upstream",
        &format!("http://{addr}/mcp"),
        "--connect-timeout",
        "500ms",
    ]);
    let started = Instant::now();
    let r = gw.post(
        None,
        &json!({"jsonrpc":"2.0","id":0,"method":"initialize","params":{
            "protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}),
    );
    let error = r.json();
    assert_eq!(error["error"]["code"], -32087, "{error}");
    assert_eq!(error["error"]["data"]["kind"], "timeout", "{error}");
    assert!(started.elapsed() >= Duration::from_millis(500));
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
    drop(held);
}
