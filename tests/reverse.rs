//! `shadowcat reverse` over real loopback HTTP: the Streamable HTTP rules (status codes, bodies,
//! sessions, DELETE, Origin/Host), with the fixture server as a child per session.

#![allow(
    clippy::pedantic,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::disallowed_types
)]

mod support;

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::{Gateway, HttpResponse, SseReader, http_request, mcp_headers as headers, tool};

fn post_raw(gw: &Gateway, extra: &[(&'static str, &str)], body: &[u8]) -> HttpResponse {
    http_request(&gw.addr, "POST", "/mcp", &headers(extra), body)
}

fn call(id: i64, name: &str, arguments: Value) -> Value {
    json!({"jsonrpc":"2.0","id":id,"method":"tools/call","params":tool(name, arguments)})
}

/// The JSON-RPC error of a refusal: its code and message.
fn rpc_error(response: &HttpResponse) -> (i64, String) {
    let body = response.json();
    (
        body["error"]["code"]
            .as_i64()
            .expect("a JSON-RPC error body"),
        body["error"]["message"].as_str().unwrap().to_owned(),
    )
}

/// The fixture servers the gateway started for its sessions (its live child processes).
fn fixture_children_of(gw: &Gateway) -> Vec<i32> {
    support::live_children(gw.child.id())
}

fn wait_until(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_session_initializes_calls_a_tool_and_is_deleted() {
    let gw = Gateway::fixture(&[]);
    let session = gw.initialize();
    assert_eq!(session.len(), 32, "a 128-bit hex session id: {session}");
    let answer = gw.post(Some(&session), &call(1, "echo", json!({"text": "hello"})));
    assert_eq!(answer.status, 200);
    assert_eq!(answer.header("content-type"), Some("application/json"));
    assert_eq!(answer.json()["result"]["content"][0]["text"], "hello");
    assert_eq!(answer.json()["id"], 1);
    assert_eq!(fixture_children_of(&gw).len(), 1, "one child per session");

    let deleted = http_request(
        &gw.addr,
        "DELETE",
        "/mcp",
        &[("Mcp-Session-Id", session.clone())],
        b"",
    );
    assert_eq!(deleted.status, 200);
    wait_until("the session's child has exited", || {
        fixture_children_of(&gw).is_empty()
    });
    let after = gw.post(Some(&session), &call(2, "echo", json!({"text": "again"})));
    assert_eq!(after.status, 404);
    assert_eq!(rpc_error(&after).0, -32600);
    let again = http_request(
        &gw.addr,
        "DELETE",
        "/mcp",
        &[("Mcp-Session-Id", session)],
        b"",
    );
    assert_eq!(again.status, 404);
}

#[test]
fn every_refusal_has_its_status_and_a_json_rpc_error_body() {
    let gw = Gateway::fixture(&["--max-message-size", "4KiB"]);
    let session = gw.initialize();
    let sid = session.as_str();
    let ping = br#"{"jsonrpc":"2.0","id":9,"method":"ping"}"#;

    // Missing session id.
    let r = post_raw(&gw, &[], ping);
    assert_eq!(r.status, 400);
    assert!(rpc_error(&r).1.contains("Mcp-Session-Id"), "{r:?}");
    // Unknown session id, and one that is not even well-formed.
    for bogus in ["0123456789abcdef0123456789abcdef", "not a session"] {
        let r = post_raw(&gw, &[("Mcp-Session-Id", bogus)], ping);
        assert_eq!(r.status, 404, "{bogus}");
        assert!(rpc_error(&r).1.contains("no such session"));
    }
    // Unsupported protocol version.
    let r = post_raw(
        &gw,
        &[
            ("Mcp-Session-Id", sid),
            ("MCP-Protocol-Version", "1999-01-01"),
        ],
        ping,
    );
    assert_eq!(r.status, 400);
    assert!(rpc_error(&r).1.contains("1999-01-01"));
    // Accept that allows neither JSON nor SSE.
    let r = post_raw(
        &gw,
        &[("Mcp-Session-Id", sid), ("Accept", "text/html")],
        ping,
    );
    assert_eq!(r.status, 406);
    assert!(rpc_error(&r).1.contains("Not Acceptable"));
    // Wrong content type.
    let r = post_raw(
        &gw,
        &[("Mcp-Session-Id", sid), ("Content-Type", "text/plain")],
        ping,
    );
    assert_eq!(r.status, 415);
    assert!(rpc_error(&r).1.contains("application/json"));
    // Too large: refused with the limit named.
    let big = json!({"jsonrpc":"2.0","id":10,"method":"tools/call","params":tool("echo", json!({"text": "x".repeat(5000)}))});
    let r = post_raw(&gw, &[("Mcp-Session-Id", sid)], big.to_string().as_bytes());
    assert_eq!(r.status, 413);
    let body = r.json();
    assert_eq!(body["error"]["code"], -32080);
    assert_eq!(body["error"]["data"]["limit"], 4096);
    // Not JSON, and JSON that is not JSON-RPC.
    let r = post_raw(&gw, &[("Mcp-Session-Id", sid)], b"{not json");
    assert_eq!(r.status, 400);
    assert_eq!(rpc_error(&r).0, -32700);
    let r = post_raw(
        &gw,
        &[("Mcp-Session-Id", sid)],
        br#"{"jsonrpc":"1.0","id":3,"method":"ping"}"#,
    );
    assert_eq!(r.status, 400);
    assert_eq!(rpc_error(&r).0, -32600);
    assert_eq!(r.json()["id"], 3, "the id is kept when it can be read");
    // A batch where the negotiated version has none.
    let r = post_raw(
        &gw,
        &[("Mcp-Session-Id", sid)],
        format!("[{}]", String::from_utf8_lossy(ping)).as_bytes(),
    );
    assert_eq!(r.status, 400);
    assert!(rpc_error(&r).1.contains("batches"));
    // GET: the stream is SSE only, and needs a session.
    let r = http_request(
        &gw.addr,
        "GET",
        "/mcp",
        &[
            ("Accept", "text/html".into()),
            ("Mcp-Session-Id", session.clone()),
        ],
        b"",
    );
    assert_eq!(r.status, 406);
    let r = http_request(
        &gw.addr,
        "GET",
        "/mcp",
        &[("Accept", "text/event-stream".into())],
        b"",
    );
    assert_eq!(r.status, 400);
    let r = http_request(
        &gw.addr,
        "PUT",
        "/mcp",
        &[("Mcp-Session-Id", session.clone())],
        b"",
    );
    assert_eq!(r.status, 405);
    assert!(r.header("allow").is_some_and(|a| a.contains("POST")));

    // After all that, the session still works.
    let r = gw.post(Some(sid), &call(11, "echo", json!({"text": "still here"})));
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["result"]["content"][0]["text"], "still here");
}

#[test]
fn notifications_and_responses_are_accepted_with_202() {
    let gw = Gateway::fixture(&[]);
    let session = gw.initialize();
    let r = gw.post(
        Some(&session),
        &json!({"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":77}}),
    );
    assert_eq!(r.status, 202);
    assert!(r.body.is_empty());
}

#[test]
fn a_batch_in_2025_03_26_is_answered_as_one_array() {
    let gw = Gateway::fixture(&[]);
    let init = gw.post(
        None,
        &json!({"jsonrpc":"2.0","id":0,"method":"initialize","params":{
            "protocolVersion":"2025-03-26","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}),
    );
    let session = init.header("mcp-session-id").unwrap().to_owned();
    let batch = json!([
        call(1, "echo", json!({"text": "a"})),
        {"jsonrpc":"2.0","method":"notifications/initialized"},
        call(2, "echo", json!({"text": "b"})),
        {"jsonrpc":"2.0","id":3},
    ]);
    let r = gw.post(Some(&session), &batch);
    assert_eq!(r.status, 200, "{r:?}");
    let answers = r.json();
    let answers = answers.as_array().expect("one array");
    assert_eq!(answers.len(), 3, "{answers:?}");
    let by_id = |id: i64| answers.iter().find(|a| a["id"] == id).cloned();
    assert_eq!(by_id(1).unwrap()["result"]["content"][0]["text"], "a");
    assert_eq!(by_id(2).unwrap()["result"]["content"][0]["text"], "b");
    assert_eq!(by_id(3).unwrap()["error"]["code"], -32600);
}

#[test]
fn a_server_request_during_a_call_streams_and_its_answer_finds_the_server() {
    let gw = Gateway::fixture(&[]);
    let session = gw.initialize();
    // `sample` asks the client (sampling/createMessage) before it answers: the POST becomes an
    // SSE stream that carries the server's request, then the tool's result.
    let mut stream = SseReader::post(
        &gw.addr,
        &headers(&[("Mcp-Session-Id", &session)]),
        call(5, "sample", json!({"prompt": "2+2?"}))
            .to_string()
            .as_bytes(),
    );
    assert_eq!(stream.status, 200);
    assert!(
        stream
            .headers
            .contains(&("content-type".into(), "text/event-stream".into()))
    );
    let request = stream.next_message().expect("the server's request");
    assert_eq!(request["method"], "sampling/createMessage", "{request}");
    // The client answers it in a POST of its own, accepted with 202; the server gets it and
    // finishes the call on the first stream.
    let answer = json!({"jsonrpc":"2.0","id":request["id"],"result":{"role":"assistant","content":{"type":"text","text":"sampled!"},"model":"m"}});
    assert_eq!(gw.post(Some(&session), &answer).status, 202);
    let result = stream.next_message().expect("the call's result");
    assert_eq!(result["id"], 5);
    assert_eq!(
        result["result"]["content"][0]["text"],
        "client said: sampled!"
    );
    assert!(
        stream.assert_ends_within(support::ENDS_WITHIN).is_empty(),
        "the stream ends after the answer"
    );
}

/// A POST's stream has event ids of its own (`post<k>-<n>`, unique in the session); a client
/// that loses it mid-call comes back with `Last-Event-ID` on a GET and gets the rest of that
/// stream, ending with the call's answer. Priming events go only to 2025-11-25 clients.
#[test]
fn a_dropped_post_stream_resumes_with_last_event_id() {
    let gw = Gateway::fixture(&[]);
    let session = gw.initialize_as("2025-11-25");
    let h = headers(&[
        ("Mcp-Session-Id", &session),
        ("MCP-Protocol-Version", "2025-11-25"),
    ]);
    let sse_post = |body: &Value| SseReader::post(&gw.addr, &h, body.to_string().as_bytes());
    let mut stream = sse_post(&call(5, "sample", json!({"prompt": "2+2?"})));
    assert_eq!(stream.status, 200);
    // Primed with the stream's first id and a reconnection delay.
    assert_eq!(
        stream.next_block().unwrap(),
        "id: post1-0\nretry: 3000\ndata:\n"
    );
    let (id, request) = stream.next_event().unwrap();
    assert_eq!(id.as_deref(), Some("post1-1"));
    assert_eq!(request["method"], "sampling/createMessage");
    // The connection drops before the answer; the call goes on (a disconnection is not a
    // cancellation), and its answer is kept for the client.
    drop(stream);
    let answer = json!({"jsonrpc":"2.0","id":request["id"],"result":{"role":"assistant","content":{"type":"text","text":"sampled!"},"model":"m"}});
    let accepted = http_request(&gw.addr, "POST", "/mcp", &h, answer.to_string().as_bytes());
    assert_eq!(accepted.status, 202);
    std::thread::sleep(Duration::from_millis(200));
    let mut resumed = get_stream(&gw, &session, Some("post1-1"));
    assert_eq!(resumed.status, 200);
    assert_eq!(
        resumed.next_block().unwrap(),
        "id: post1-1\nretry: 3000\ndata:\n"
    );
    let (id, result) = resumed.next_event().unwrap();
    assert_eq!(id.as_deref(), Some("post1-2"));
    assert_eq!(result["id"], 5);
    assert_eq!(
        result["result"]["content"][0]["text"],
        "client said: sampled!"
    );
    assert!(
        resumed.assert_ends_within(support::ENDS_WITHIN).is_empty(),
        "a resumed POST stream ends with the answer"
    );
    std::thread::sleep(Duration::from_millis(100));
    // Delivered whole: the stream is forgotten, and saying so is a clear 400.
    let again = refused_get(&gw, &session, "post1-1");
    assert_eq!(again.status, 400, "{again:?}");
    assert!(
        again.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no longer kept")
    );
    // A stream number the session never had.
    let never = refused_get(&gw, &session, "post99-1");
    assert_eq!(never.status, 400);
    // The next POST stream has the next number.
    let mut next = sse_post(&call(6, "sample", json!({"prompt": "again"})));
    next.next_block().unwrap();
    let (id, _) = next.next_event().unwrap();
    assert_eq!(id.as_deref(), Some("post2-1"));

    // A 2025-06-18 client gets ids but no priming event (it may not parse empty data).
    let old = gw.initialize();
    let mut stream = SseReader::post(
        &gw.addr,
        &headers(&[("Mcp-Session-Id", &old)]),
        call(5, "sample", json!({"prompt": "2+2?"}))
            .to_string()
            .as_bytes(),
    );
    let block = stream.next_block().unwrap();
    assert!(block.starts_with("id: post1-1\n"), "{block}");
    let mut get = get_stream(&gw, &old, None);
    gw.post(Some(&old), &call(9, "notify", json!({"text": "hi"})));
    let block = get.next_block().unwrap();
    assert!(
        block.starts_with("id: get-1\n") && block.contains("\"hi\""),
        "{block}"
    );
}

#[test]
fn a_post_stream_waiting_on_the_client_gets_keep_alive_comments() {
    let gw = Gateway::fixture(&["--sse-keepalive", "100ms"]);
    let session = gw.initialize();
    let mut stream = SseReader::post(
        &gw.addr,
        &headers(&[("Mcp-Session-Id", &session)]),
        call(5, "sample", json!({"prompt": "2+2?"}))
            .to_string()
            .as_bytes(),
    );
    let (_, request) = stream.next_event().unwrap();
    assert_eq!(request["method"], "sampling/createMessage");
    // The tool waits for the client's answer; meanwhile the stream stays alive.
    let started = Instant::now();
    assert_eq!(stream.next_block().unwrap(), ": keep-alive\n");
    assert_eq!(stream.next_block().unwrap(), ": keep-alive\n");
    assert!(started.elapsed() < Duration::from_secs(5));
}

/// Stateless (2026-07-28) requests to a command upstream share a child (by default at most
/// one), which never sees `initialize`. Two clients may use the same request id and progress token at once: each
/// request goes there under an id of the gateway's own, and each client gets its answer (and its
/// progress) under the names it chose. Closing a request's stream cancels it at the child.
#[test]
fn stateless_requests_share_one_child_under_ids_of_their_own() {
    let gw = Gateway::fixture(&["--admin-listen", "127.0.0.1:0"]);
    let admin = gw.admin_addr();
    let post = |id: i64, name: &str, arguments: Value, meta: Value| {
        let (h, body) = support::modern_call(id, name, arguments, meta);
        http_request(&gw.addr, "POST", "/mcp", &h, &body)
    };
    let addr = gw.addr.clone();
    let sleepy = std::thread::spawn(move || {
        let (h, body) = support::modern_call(1, "sleep", json!({"ms": 2000}), json!({}));
        http_request(&addr, "POST", "/mcp", &h, &body)
    });
    // The same id, at the same time: the first call is at the child...
    wait_until("the first call is in flight", || {
        let metrics = http_request(&admin, "GET", "/metrics", &[], b"");
        String::from_utf8_lossy(&metrics.body).contains("\nshadowcat_pending_requests 1\n")
    });
    // ...when the second, with its id, is answered under it, with the right answer.
    let quick = post(1, "sleep", json!({"ms": 10}), json!({}));
    assert_eq!(quick.status, 200, "{quick:?}");
    assert!(quick.header("mcp-session-id").is_none());
    assert_eq!(quick.json()["id"], 1);
    assert_eq!(quick.json()["result"]["content"][0]["text"], "slept 10 ms");
    assert!(!sleepy.is_finished(), "the calls were not at the same time");
    let sleepy = sleepy.join().unwrap();
    assert_eq!(sleepy.json()["id"], 1);
    assert_eq!(
        sleepy.json()["result"]["content"][0]["text"],
        "slept 2000 ms"
    );
    // Progress comes back under the client's own token.
    let progress = post(
        1,
        "progress",
        json!({"steps": 2}),
        json!({"progressToken": 1}),
    );
    let messages = progress.sse_messages();
    assert_eq!(messages.len(), 3, "{messages:?}");
    assert_eq!(messages[0]["params"]["progressToken"], 1);
    assert_eq!(messages[1]["params"]["progress"], 2);
    assert_eq!(messages[2]["id"], 1);
    assert_eq!(fixture_children_of(&gw).len(), 1, "one child for them all");

    // A client that closes the stream cancels its request.
    {
        use std::io::Write;
        let mut socket = std::net::TcpStream::connect(&gw.addr).unwrap();
        let (h, body) = support::modern_call(9, "sleep", json!({"ms": 5000}), json!({}));
        let mut request = format!("POST /mcp HTTP/1.1\r\nHost: {}\r\n", gw.addr);
        for (name, value) in h {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
        socket.write_all(request.as_bytes()).unwrap();
        socket.write_all(&body).unwrap();
        std::thread::sleep(Duration::from_millis(300));
    }
    wait_until("the child is told", || {
        let stats = post(10, "stats", json!({}), json!({}));
        let cancelled = stats.json()["result"]["structuredContent"]["cancelled"].clone();
        cancelled.as_array().is_some_and(|c| c.len() == 1)
    });

    // Headers that disagree with the body are refused before anything is forwarded.
    let (mut h, body) = support::modern_call(11, "echo", json!({"text": "x"}), json!({}));
    h.retain(|(n, _)| *n != "Mcp-Name");
    h.push(("Mcp-Name", "crash".into()));
    let r = http_request(&gw.addr, "POST", "/mcp", &h, &body);
    assert_eq!(r.status, 400, "{r:?}");
    assert_eq!(r.json()["id"], 11);
    assert_eq!(rpc_error(&r).0, -32020);
    assert_eq!(r.json()["error"]["data"]["header"], "Mcp-Name");
    assert_eq!(fixture_children_of(&gw).len(), 1, "the child lives on");

    // GET and DELETE belong to sessions, which this era does not have.
    for method in ["GET", "DELETE"] {
        let r = http_request(
            &gw.addr,
            method,
            "/mcp",
            &[
                ("Accept", "text/event-stream".into()),
                ("MCP-Protocol-Version", "2026-07-28".into()),
            ],
            b"",
        );
        assert_eq!(r.status, 405, "{method}: {r:?}");
        assert_eq!(r.header("allow"), Some("POST"));
        assert_eq!(rpc_error(&r).0, -32600);
    }
}

#[test]
fn origin_and_host_are_validated() {
    let gw = Gateway::fixture(&[]);
    let init = json!({"jsonrpc":"2.0","id":0,"method":"initialize","params":{
        "protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"t","version":"1"}}});
    let body = init.to_string();
    let r = post_raw(&gw, &[("Origin", "https://evil.example")], body.as_bytes());
    assert_eq!(r.status, 403);
    assert!(rpc_error(&r).1.contains("evil.example"));
    let r = post_raw(&gw, &[("Host", "evil.example:8080")], body.as_bytes());
    assert_eq!(r.status, 421);
    assert!(rpc_error(&r).1.contains("evil.example"));
    // Refusals created no session and no child.
    assert!(fixture_children_of(&gw).is_empty());
    let r = post_raw(&gw, &[("Origin", "http://localhost:3000")], body.as_bytes());
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("http://localhost:3000")
    );
    assert!(
        r.header("access-control-expose-headers")
            .is_some_and(|h| h.contains("mcp-session-id"))
    );

    // A CORS preflight from an allowed origin allows the MCP headers, Mcp-Param-* included.
    let r = http_request(
        &gw.addr,
        "OPTIONS",
        "/mcp",
        &[
            ("Origin", "http://127.0.0.1:5173".into()),
            ("Access-Control-Request-Method", "POST".into()),
            (
                "Access-Control-Request-Headers",
                "content-type, mcp-session-id, mcp-protocol-version, mcp-param-region".into(),
            ),
        ],
        b"",
    );
    assert!(r.status == 200 || r.status == 204, "{r:?}");
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("http://127.0.0.1:5173")
    );
    let allowed = r
        .header("access-control-allow-headers")
        .unwrap()
        .to_ascii_lowercase();
    for name in ["mcp-session-id", "mcp-protocol-version", "mcp-param-region"] {
        assert!(allowed.contains(name), "{allowed}");
    }

    // --allowed-origin replaces the default.
    let gw = Gateway::fixture(&["--allowed-origin", "https://app.example.com"]);
    assert_eq!(
        post_raw(
            &gw,
            &[("Origin", "https://app.example.com")],
            body.as_bytes()
        )
        .status,
        200
    );
    assert_eq!(
        post_raw(&gw, &[("Origin", "http://localhost")], body.as_bytes()).status,
        403
    );
}

/// Each of `sessions` makes `calls` echo calls at once with the others, under the same request
/// ids in every session: each must get its own answers (routing by session, not by id).
fn own_answers_at_once(gw: &Gateway, sessions: &[String], calls: i64) {
    let handles: Vec<_> = sessions
        .iter()
        .enumerate()
        .map(|(client, session)| {
            let (addr, session) = (gw.addr.clone(), session.clone());
            std::thread::spawn(move || {
                for i in 0..calls {
                    let text = format!("client {client} call {i}");
                    let r = http_request(
                        &addr,
                        "POST",
                        "/mcp",
                        &headers(&[("Mcp-Session-Id", &session)]),
                        call(i, "echo", json!({"text": text}))
                            .to_string()
                            .as_bytes(),
                    );
                    assert_eq!(r.status, 200);
                    let messages = r.messages();
                    assert_eq!(messages.len(), 1, "{messages:?}");
                    assert_eq!(messages[0]["id"], i);
                    assert_eq!(messages[0]["result"]["content"][0]["text"], text);
                }
            })
        })
        .collect();
    for handle in handles {
        handle.join().unwrap();
    }
}

#[test]
fn two_clients_calling_at_once_get_only_their_own_answers() {
    let gw = Gateway::fixture(&[]);
    let sessions = [gw.initialize(), gw.initialize()];
    assert_ne!(sessions[0], sessions[1]);
    own_answers_at_once(&gw, &sessions, 40);
}

#[test]
fn a_crashed_server_fails_its_call_and_ends_the_session() {
    let gw = Gateway::fixture(&[]);
    let session = gw.initialize();
    let r = gw.post(Some(&session), &call(4, "crash", json!({})));
    assert_eq!(r.status, 200, "{r:?}");
    let error = &r.messages()[0];
    assert_eq!(error["id"], 4);
    assert_eq!(error["error"]["code"], -32081, "{error}");
    wait_until("the session is gone", || {
        gw.post(Some(&session), &call(5, "echo", json!({"text": "x"})))
            .status
            == 404
    });
    // Other sessions are unaffected.
    let other = gw.initialize();
    let r = gw.post(Some(&other), &call(1, "echo", json!({"text": "fine"})));
    assert_eq!(r.json()["result"]["content"][0]["text"], "fine");
}

#[test]
fn max_sessions_bounds_the_children() {
    // (The client's own cap, a quarter of --max-sessions by default, is not what is tested.)
    let gw = Gateway::fixture(&["--max-sessions", "1", "--max-sessions-per-client", "2"]);
    let first = gw.initialize();
    // A call in flight makes the first session busy, so it can't be evicted.
    let addr = gw.addr.clone();
    let busy = std::thread::spawn(move || {
        http_request(
            &addr,
            "POST",
            "/mcp",
            &headers(&[("Mcp-Session-Id", &first)]),
            call(1, "sleep", json!({"ms": 1500})).to_string().as_bytes(),
        )
    });
    std::thread::sleep(Duration::from_millis(300));
    let init = json!({"jsonrpc":"2.0","id":0,"method":"initialize","params":{
        "protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"t","version":"1"}}});
    let r = gw.post(None, &init);
    assert_eq!(r.status, 503, "{r:?}");
    assert_eq!(rpc_error(&r).0, -32089);
    assert_eq!(r.header("retry-after"), Some("1"), "{r:?}");
    assert_eq!(fixture_children_of(&gw).len(), 1);
    assert_eq!(busy.join().unwrap().status, 200);
    // Idle now: a new session evicts it.
    let r = gw.post(None, &init);
    assert_eq!(r.status, 200);
    wait_until("the evicted session's child has exited", || {
        fixture_children_of(&gw).len() == 1
    });
}

#[test]
fn sigterm_lets_an_in_flight_call_finish_then_exits_cleanly() {
    let mut gw = Gateway::fixture(&["--shutdown-timeout", "5s"]);
    let session = gw.initialize();
    let addr = gw.addr.clone();
    let caller = std::thread::spawn(move || {
        http_request(
            &addr,
            "POST",
            "/mcp",
            &headers(&[("Mcp-Session-Id", &session)]),
            call(1, "sleep", json!({"ms": 800})).to_string().as_bytes(),
        )
    });
    std::thread::sleep(Duration::from_millis(200));
    let children = fixture_children_of(&gw);
    assert_eq!(children.len(), 1);
    gw.terminate();
    let r = caller.join().unwrap();
    assert_eq!(r.status, 200);
    assert!(r.messages()[0]["result"].is_object(), "{r:?}");
    let status = gw.wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(0), "{}", gw.stderr_text());
    for pid in children {
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists()
                || std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s
                    .rsplit_once(')')
                    .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))),
            "child {pid} outlived the gateway"
        );
    }
    // Nothing listens any more.
    assert!(std::net::TcpStream::connect(&gw.addr).is_err());
}

#[test]
fn a_request_timeout_answers_the_client_and_cancels_at_the_server() {
    let gw = Gateway::fixture(&["--request-timeout", "300ms"]);
    let session = gw.initialize();
    let started = Instant::now();
    let r = gw.post(Some(&session), &call(3, "sleep", json!({"ms": 3000})));
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    let error = &r.messages()[0];
    assert_eq!(error["id"], 3);
    assert_eq!(error["error"]["code"], -32086, "{error}");
    // The server was told (`notifications/cancelled`), and the session goes on.
    let stats = gw.post(Some(&session), &call(4, "stats", json!({})));
    let stats = &stats.messages()[0]["result"]["structuredContent"];
    assert_eq!(stats["cancelled"], json!([3]), "{stats}");
}

#[test]
fn a_cancelled_request_releases_its_post() {
    let gw = Gateway::fixture(&[]);
    let session = gw.initialize();
    let (addr, sid) = (gw.addr.clone(), session.clone());
    let started = Instant::now();
    let caller = std::thread::spawn(move || {
        http_request(
            &addr,
            "POST",
            "/mcp",
            &headers(&[("Mcp-Session-Id", &sid)]),
            call(8, "sleep", json!({"ms": 5000})).to_string().as_bytes(),
        )
    });
    std::thread::sleep(Duration::from_millis(300));
    let cancel = gw.post(
        Some(&session),
        &json!({"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":8,"reason":"user"}}),
    );
    assert_eq!(cancel.status, 202);
    let released = caller.join().unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "the POST waited for an answer that will never come"
    );
    assert_eq!(released.status, 202, "{released:?}");
    // The server heard of it, and the session is idle again.
    let stats = gw.post(Some(&session), &call(9, "stats", json!({})));
    assert_eq!(
        stats.messages()[0]["result"]["structuredContent"]["cancelled"],
        json!([8])
    );
}

#[test]
fn a_json_only_client_gets_the_call_answered_when_the_server_asks_it_something() {
    let gw = Gateway::fixture(&[]);
    let session = gw.initialize();
    // The server's sampling request can't reach a client that takes only JSON: the server is
    // told so (an error for its request) and finishes the call instead of waiting forever.
    let r = post_raw(
        &gw,
        &[("Mcp-Session-Id", &session), ("Accept", "application/json")],
        call(6, "sample", json!({"prompt": "?"}))
            .to_string()
            .as_bytes(),
    );
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("content-type"), Some("application/json"));
    let text = r.json()["result"]["content"][0]["text"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        text.starts_with("client error:") && text.contains("only application/json"),
        "{text}"
    );
}

/// A GET of the session's stream with `Last-Event-ID: last_event_id`, read to the end (for the
/// ones that are refused).
fn refused_get(gw: &Gateway, session: &str, last_event_id: &str) -> HttpResponse {
    http_request(
        &gw.addr,
        "GET",
        "/mcp",
        &[
            ("Accept", "text/event-stream".into()),
            ("Mcp-Session-Id", session.to_owned()),
            ("Last-Event-ID", last_event_id.to_owned()),
        ],
        b"",
    )
}

fn get_stream(gw: &Gateway, session: &str, last_event_id: Option<&str>) -> SseReader {
    let mut h = vec![
        ("Accept", "text/event-stream".to_owned()),
        ("Mcp-Session-Id", session.to_owned()),
    ];
    if let Some(id) = last_event_id {
        h.push(("Last-Event-ID", id.to_owned()));
    }
    SseReader::get(&gw.addr, &h)
}

#[test]
fn server_notifications_go_to_the_get_stream_which_resumes_after_the_last_event_seen() {
    let gw = Gateway::fixture(&[]);
    let session = gw.initialize();
    let notify = |id: i64, text: &str| {
        let r = gw.post(Some(&session), &call(id, "notify", json!({"text": text})));
        // The log message belongs to no request: the call's own answer comes alone, as JSON.
        assert_eq!(r.header("content-type"), Some("application/json"), "{r:?}");
        assert_eq!(r.json()["result"]["content"][0]["text"], "notified");
    };
    let mut stream = get_stream(&gw, &session, None);
    assert_eq!(stream.status, 200);
    assert!(
        stream
            .headers
            .contains(&("content-type".into(), "text/event-stream".into()))
    );
    // One connection has the stream at a time: a new one takes over, and the old one ends.
    let second = get_stream(&gw, &session, None);
    assert_eq!(second.status, 200);
    assert!(
        stream.assert_ends_within(support::ENDS_WITHIN).is_empty(),
        "the old connection ends"
    );
    let mut stream = second;
    notify(1, "one");
    notify(2, "two");
    let (id1, m1) = stream.next_event().unwrap();
    let (id2, m2) = stream.next_event().unwrap();
    assert_eq!(
        (id1.as_deref(), m1["params"]["data"].as_str()),
        (Some("get-1"), Some("one"))
    );
    assert_eq!(
        (id2.as_deref(), m2["params"]["data"].as_str()),
        (Some("get-2"), Some("two"))
    );
    // The connection drops; what the server says meanwhile is kept.
    drop(stream);
    std::thread::sleep(Duration::from_millis(100));
    notify(3, "three");
    notify(4, "four");
    let mut resumed = get_stream(&gw, &session, Some("get-2"));
    assert_eq!(resumed.status, 200);
    let got: Vec<(Option<String>, String)> = (0..2)
        .map(|_| {
            let (id, m) = resumed.next_event().unwrap();
            (id, m["params"]["data"].as_str().unwrap().to_owned())
        })
        .collect();
    assert_eq!(
        got,
        [
            (Some("get-3".to_owned()), "three".to_owned()),
            (Some("get-4".to_owned()), "four".to_owned())
        ],
        "exactly the missed events, once, in order"
    );
    // Then it goes on live.
    notify(5, "five");
    let (id5, m5) = resumed.next_event().unwrap();
    assert_eq!(
        (id5.as_deref(), m5["params"]["data"].as_str()),
        (Some("get-5"), Some("five"))
    );
    // An id this stream never issued.
    drop(resumed);
    std::thread::sleep(Duration::from_millis(100));
    let bad = refused_get(&gw, &session, "get-999");
    assert_eq!(bad.status, 400);
    // Deleting the session ends its stream.
    let mut open = get_stream(&gw, &session, None);
    let deleted = http_request(
        &gw.addr,
        "DELETE",
        "/mcp",
        &[("Mcp-Session-Id", session.clone())],
        b"",
    );
    assert_eq!(deleted.status, 200, "{deleted:?}");
    assert!(
        open.assert_ends_within(support::ENDS_WITHIN).is_empty(),
        "the stream ends with its session"
    );
}

/// `Last-Event-ID` older than the replay buffer (`--sse-replay-events`): a comment says which
/// events are gone, then everything still kept is replayed, in order.
#[test]
fn a_resume_from_before_the_replay_buffer_says_what_is_gone_and_replays_the_rest() {
    let gw = Gateway::fixture(&["--sse-replay-events", "2"]);
    let session = gw.initialize();
    let mut stream = get_stream(&gw, &session, None);
    let notify = |id: i64| {
        gw.post(
            Some(&session),
            &call(id, "notify", json!({"text": format!("n{id}")})),
        );
    };
    notify(1);
    assert_eq!(stream.next_event().unwrap().0.as_deref(), Some("get-1"));
    drop(stream);
    std::thread::sleep(Duration::from_millis(100));
    for id in 2..=5 {
        notify(id);
    }
    let mut resumed = get_stream(&gw, &session, Some("get-1"));
    let mut blocks = Vec::new();
    for _ in 0..3 {
        blocks.push(resumed.next_block().unwrap());
    }
    assert!(
        blocks[0].contains("events get-2 to get-3 are no longer kept"),
        "{blocks:?}"
    );
    assert!(blocks[1].starts_with("id: get-4\n") && blocks[1].contains("\"n4\""));
    assert!(blocks[2].starts_with("id: get-5\n") && blocks[2].contains("\"n5\""));
}

#[test]
fn progress_goes_on_the_stream_of_the_request_it_reports_on() {
    let gw = Gateway::fixture(&[]);
    let session = gw.initialize();
    let mut get = get_stream(&gw, &session, None);
    let request = json!({"jsonrpc":"2.0","id":7,"method":"tools/call","params":{
        "name":"progress","arguments":{"steps":3},"_meta":{"progressToken":"tok-7"}}});
    let mut post = SseReader::post(
        &gw.addr,
        &headers(&[("Mcp-Session-Id", &session)]),
        request.to_string().as_bytes(),
    );
    assert!(
        post.headers
            .contains(&("content-type".into(), "text/event-stream".into()))
    );
    let mut steps = Vec::new();
    loop {
        let m = post.next_message().expect("the call's stream");
        if m.get("id").is_some() {
            assert_eq!(m["result"]["content"][0]["text"], "done");
            break;
        }
        assert_eq!(m["params"]["progressToken"], "tok-7");
        steps.push(m["params"]["progress"].as_i64().unwrap());
    }
    assert_eq!(steps, [1, 2, 3]);
    // Nothing of it went to the GET stream: the next thing there is a later log message.
    gw.post(Some(&session), &call(8, "notify", json!({"text": "after"})));
    let (_, m) = get.next_event().unwrap();
    assert_eq!(m["params"]["data"], "after");
}

/// A client listening on its session's GET stream is not idle: the session outlives the idle
/// timeout while the stream is open, and expires once it closes.
#[test]
fn a_listening_session_is_not_idle() {
    let gw = Gateway::fixture(&[
        "--session-idle-timeout",
        "600ms",
        "--cleanup-interval",
        "100ms",
    ]);
    let listening = gw.initialize();
    let quiet = gw.initialize();
    let stream = get_stream(&gw, &listening, None);
    assert_eq!(stream.status, 200);
    std::thread::sleep(Duration::from_millis(1500));
    let ping = json!({"jsonrpc":"2.0","id":1,"method":"ping"});
    assert_eq!(
        gw.post(Some(&quiet), &ping).status,
        404,
        "the quiet one expired"
    );
    assert_eq!(
        gw.post(Some(&listening), &ping).status,
        200,
        "the listening one did not"
    );
    drop(stream);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        gw.post(Some(&listening), &ping).status,
        404,
        "idle once it stopped listening"
    );
}

#[test]
fn an_open_get_stream_does_not_hold_up_shutdown() {
    let mut gw = Gateway::fixture(&["--shutdown-timeout", "20s"]);
    let session = gw.initialize();
    let mut stream = get_stream(&gw, &session, None);
    assert_eq!(stream.status, 200);
    let started = Instant::now();
    gw.terminate();
    assert!(
        stream.assert_ends_within(support::ENDS_WITHIN).is_empty(),
        "the stream ends at shutdown"
    );
    assert_eq!(gw.wait_exit(Duration::from_secs(10)).code(), Some(0));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "shutdown waited for the GET stream: {:?}",
        started.elapsed()
    );
}

#[test]
fn two_clients_with_get_streams_and_concurrent_calls_see_only_their_own_messages() {
    let gw = Gateway::fixture(&[]);
    let sessions = [gw.initialize(), gw.initialize()];
    let mut streams: Vec<SseReader> = sessions.iter().map(|s| get_stream(&gw, s, None)).collect();
    let addr = gw.addr.clone();
    let callers: Vec<_> = sessions
        .iter()
        .enumerate()
        .map(|(client, session)| {
            let (addr, session) = (addr.clone(), session.clone());
            std::thread::spawn(move || {
                for i in 0..20 {
                    let r = http_request(
                        &addr,
                        "POST",
                        "/mcp",
                        &headers(&[("Mcp-Session-Id", &session)]),
                        call(
                            i,
                            "notify",
                            json!({"text": format!("client {client} note {i}")}),
                        )
                        .to_string()
                        .as_bytes(),
                    );
                    assert_eq!(r.json()["result"]["content"][0]["text"], "notified");
                }
            })
        })
        .collect();
    for caller in callers {
        caller.join().unwrap();
    }
    for (client, stream) in streams.iter_mut().enumerate() {
        for i in 0..20 {
            let (id, message) = stream.next_event().expect("a log message");
            assert_eq!(id, Some(format!("get-{}", i + 1)));
            assert_eq!(
                message["params"]["data"],
                format!("client {client} note {i}"),
                "only this session's messages, in order"
            );
        }
    }
}

#[test]
fn a_2024_11_05_sse_client_gets_an_endpoint_and_its_answers_on_the_stream() {
    let gw = Gateway::fixture(&[
        "--admin-listen",
        "127.0.0.1:0",
        "--rate-limit",
        "global=1/h,burst=1,method=tools/call",
    ]);
    let mut stream = SseReader::open_path(
        &gw.addr,
        "GET",
        "/sse",
        &[("Accept", "text/event-stream".into())],
        b"",
    );
    assert_eq!(stream.status, 200);
    let endpoint = stream.next_endpoint().expect("the endpoint event");
    assert!(endpoint.starts_with("/message?sessionId="), "{endpoint}");
    assert_eq!(
        fixture_children_of(&gw).len(),
        0,
        "the session's child starts with its first message"
    );
    let post = |body: Value| {
        http_request(
            &gw.addr,
            "POST",
            &endpoint,
            &[("Content-Type", "application/json".into())],
            body.to_string().as_bytes(),
        )
    };
    let init = json!({"jsonrpc":"2.0","id":0,"method":"initialize","params":{
        "protocolVersion":"2024-11-05","capabilities":{},"clientInfo":{"name":"old","version":"1"}}});
    assert_eq!(post(init).status, 202);
    let (_, answer) = stream.next_event().unwrap();
    assert_eq!(answer["id"], 0);
    assert!(answer["result"]["serverInfo"].is_object());
    assert_eq!(fixture_children_of(&gw).len(), 1, "a child for the session");
    assert_eq!(
        post(json!({"jsonrpc":"2.0","method":"notifications/initialized"})).status,
        202
    );
    assert_eq!(
        post(call(1, "echo", json!({"text": "old but gold"}))).status,
        202
    );
    let (_, answer) = stream.next_event().unwrap();
    assert_eq!(answer["result"]["content"][0]["text"], "old but gold");
    // What the proxy answers itself comes on the stream, and is counted as on POST /mcp: a
    // batch member that is not a message, and a request over a rate limit.
    assert_eq!(post(json!([{"jsonrpc":"2.0","id":7}])).status, 202);
    let (_, answer) = stream.next_event().unwrap();
    assert_eq!(answer["error"]["code"], -32600, "{answer}");
    assert_eq!(post(call(8, "echo", json!({"text": "again"}))).status, 202);
    let (_, answer) = stream.next_event().unwrap();
    assert_eq!(answer["error"]["code"], -32092, "{answer}");
    let metrics = http_request(&gw.admin_addr(), "GET", "/metrics", &[], b"");
    let metrics = String::from_utf8_lossy(&metrics.body);
    for sample in [
        "shadowcat_malformed_messages_total 1",
        "shadowcat_answered_by_proxy_total 1",
    ] {
        assert!(
            metrics.lines().any(|l| l == sample),
            "no {sample:?} in:\n{metrics}"
        );
    }
    // Bad input is refused on the POST itself.
    let r = http_request(
        &gw.addr,
        "POST",
        "/message",
        &[("Content-Type", "application/json".into())],
        b"{}",
    );
    assert_eq!(r.status, 400, "no sessionId");
    let r = http_request(
        &gw.addr,
        "POST",
        "/message?sessionId=0123456789abcdef0123456789abcdef",
        &[("Content-Type", "application/json".into())],
        b"{}",
    );
    assert_eq!(r.status, 404);
    // Closing the stream ends the session and its child.
    drop(stream);
    wait_until("the session's child has exited", || {
        fixture_children_of(&gw).is_empty()
    });
    assert_eq!(post(call(2, "echo", json!({"text": "x"}))).status, 404);
}

/// A POST that finds its session's pending table full is held for room (`--pending-wait`): if a
/// request is answered meanwhile it goes through (200); if not, it is refused with 503,
/// `Retry-After` and `-32083` under its own id, and nothing of it reaches the server.
#[test]
fn a_post_past_the_pending_limit_is_held_then_refused_with_503() {
    let gw = Gateway::fixture(&["--max-pending-requests", "2", "--pending-wait", "600ms"]);
    let session = gw.initialize();
    let sleep = |gw: &Gateway, session: &str, id: i64, ms: u64| {
        let response = gw.post(Some(session), &call(id, "sleep", json!({"ms": ms})));
        assert_eq!(response.status, 200, "{response:?}");
        assert_eq!(
            response.messages()[0]["result"]["content"][0]["text"],
            format!("slept {ms} ms")
        );
    };
    // Both slots taken for 3 s: the third request waits out --pending-wait, then gets 503.
    std::thread::scope(|s| {
        s.spawn(|| sleep(&gw, &session, 1, 3000));
        s.spawn(|| sleep(&gw, &session, 2, 3000));
        // (If they were not both in flight yet, the ping would get 200 and the test fail.)
        std::thread::sleep(Duration::from_millis(300));
        let started = Instant::now();
        let refused = gw.post(
            Some(&session),
            &json!({"jsonrpc":"2.0","id":3,"method":"ping"}),
        );
        let held = started.elapsed();
        assert_eq!(refused.status, 503, "{refused:?}");
        assert_eq!(refused.header("retry-after"), Some("1"), "{refused:?}");
        let body = refused.json();
        assert_eq!(body["id"], 3, "{body}");
        assert_eq!(body["error"]["code"], -32083, "{body}");
        assert_eq!(body["error"]["data"]["limit"], 2, "{body}");
        assert!(
            held >= Duration::from_millis(550),
            "answered after {held:?}: not held"
        );
    });
    // One slot frees after 1 s: a request held meanwhile goes through once it does.
    let gw = Gateway::fixture(&["--max-pending-requests", "2", "--pending-wait", "5s"]);
    let session = gw.initialize();
    std::thread::scope(|s| {
        s.spawn(|| sleep(&gw, &session, 4, 1000));
        s.spawn(|| sleep(&gw, &session, 5, 3000));
        std::thread::sleep(Duration::from_millis(300));
        let started = Instant::now();
        let ping = gw.post(
            Some(&session),
            &json!({"jsonrpc":"2.0","id":6,"method":"ping"}),
        );
        let held = started.elapsed();
        assert_eq!(ping.status, 200, "{ping:?}");
        assert_eq!(ping.messages()[0]["result"], json!({}), "{ping:?}");
        assert!(
            held >= Duration::from_millis(300),
            "answered after {held:?}: not held"
        );
    });
}

#[test]
fn an_answer_larger_than_the_replay_buffer_reaches_a_client_that_takes_only_sse() {
    let gw = Gateway::fixture(&[]);
    let session = gw.initialize();
    let size = 3 * 1024 * 1024;
    let h = headers(&[
        ("Mcp-Session-Id", &session),
        ("Accept", "text/event-stream"),
    ]);
    let mut stream = SseReader::post(
        &gw.addr,
        &h,
        call(7, "big", json!({"bytes": size}))
            .to_string()
            .as_bytes(),
    );
    assert_eq!(stream.status, 200);
    let answer = stream.next_message().expect("the answer");
    assert_eq!(answer["id"], 7);
    assert_eq!(
        answer["result"]["content"][0]["text"]
            .as_str()
            .map(str::len),
        Some(size)
    );
}

/// `initialize` inside a batch is refused whole with 400 (docs/errors.md), before any session
/// or process exists.
#[test]
fn initialize_inside_a_batch_is_refused_with_400() {
    let gw = Gateway::fixture(&[]);
    let batch = json!([
        {"jsonrpc":"2.0","id":0,"method":"initialize","params":{
            "protocolVersion":"2025-03-26","capabilities":{},"clientInfo":{"name":"t","version":"1"}}},
        {"jsonrpc":"2.0","id":1,"method":"ping"}
    ]);
    let r = post_raw(&gw, &[], batch.to_string().as_bytes());
    assert_eq!(r.status, 400, "{r:?}");
    let (code, message) = rpc_error(&r);
    assert_eq!(code, -32600);
    assert!(
        message.contains("initialize must not be part of a batch"),
        "{message}"
    );
    assert!(r.header("mcp-session-id").is_none());
    assert!(fixture_children_of(&gw).is_empty());
}

/// A request that arrives while the gateway shuts down is refused with 503 and -32085
/// (docs/errors.md): its handler was reading the body before the SIGTERM (so shutdown waits
/// for it), and the body came after.
#[test]
fn a_request_arriving_during_shutdown_gets_503_shutting_down() {
    use std::io::{Read as _, Write as _};
    // The request being read keeps the gateway's graceful shutdown waiting for it.
    let mut gw = Gateway::fixture(&["--shutdown-timeout", "5s"]);
    let body = json!({"jsonrpc":"2.0","id":0,"method":"initialize","params":{
        "protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"late","version":"1"}}})
    .to_string();
    let mut late = std::net::TcpStream::connect(&gw.addr).unwrap();
    late.set_read_timeout(Some(support::WAIT)).unwrap();
    // `Expect: 100-continue`: the "100 Continue" says the handler is reading the body.
    write!(
        late,
        "POST /mcp HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\nConnection: close\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n",
        gw.addr,
        body.len(),
    )
    .unwrap();
    let mut interim = Vec::new();
    let mut byte = [0u8; 1];
    while !interim.ends_with(b"\r\n\r\n") {
        assert_eq!(
            late.read(&mut byte).unwrap(),
            1,
            "closed before 100 Continue"
        );
        interim.push(byte[0]);
    }
    assert!(
        interim.starts_with(b"HTTP/1.1 100"),
        "{}",
        String::from_utf8_lossy(&interim)
    );
    gw.terminate();
    wait_until("shutdown began", || {
        gw.stderr_text().contains("shutting down")
    });
    late.write_all(body.as_bytes()).unwrap();
    let mut raw = Vec::new();
    let _ = late.read_to_end(&mut raw);
    let r = support::parse_response(&raw);
    assert_eq!(r.status, 503, "{r:?}");
    assert_eq!(rpc_error(&r).0, -32085, "{r:?}");
    assert_eq!(gw.wait_exit(Duration::from_secs(10)).code(), Some(0));
}

/// The config file is read once, so `--config` may be a pipe (a shell's `<(…)`, a secret
/// handed over by a parent process), which only the first reader gets to read: its gateway
/// options (here the admin listener) apply.
#[test]
fn the_config_file_is_read_once_so_it_may_be_a_pipe() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("shadowcat.toml");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    let writer = {
        let fifo = fifo.clone();
        // Blocks until shadowcat opens the pipe; written once.
        std::thread::spawn(move || std::fs::write(&fifo, "admin_listen = \"127.0.0.1:0\"\n"))
    };
    let gw = Gateway::fixture(&["--config", fifo.to_str().unwrap()]);
    writer.join().unwrap().unwrap();
    let r = http_request(&gw.admin_addr(), "GET", "/healthz", &[], b"");
    assert_eq!(r.status, 200, "{r:?}");
}

/// The gateway's `/metrics` text.
fn metrics_of(gw: &Gateway) -> String {
    let metrics = http_request(&gw.admin_addr(), "GET", "/metrics", &[], b"");
    String::from_utf8_lossy(&metrics.body).into_owned()
}

/// Waits (up to 10 s) until `/metrics` has the line `sample`.
fn until_metric(gw: &Gateway, sample: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let metrics = metrics_of(gw);
        if metrics.lines().any(|l| l == sample) {
            return;
        }
        assert!(Instant::now() < deadline, "no {sample:?} in:\n{metrics}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A server process still stopping (one that ignores its stdin closing, given
/// --shutdown-timeout) keeps its place in the pool. With every place taken by evicted sessions'
/// processes, a new session waits --pool-acquire-timeout for one, then its request is answered
/// with -32093 (pool_timed_out), and the wait and the timeout are counted.
#[test]
fn a_session_that_gets_no_server_process_in_time_is_told_so() {
    let fixture = support::fixture();
    let gw = Gateway::start(&[
        "--admin-listen",
        "127.0.0.1:0",
        "--max-sessions",
        "1",
        "--shutdown-timeout",
        "5s",
        "--pool-acquire-timeout",
        "300ms",
        "--",
        fixture.to_str().unwrap(),
        "--ignore-stdin-eof",
    ]);
    // Places: one per session (1), the spares (0), and the stateless requests' children (1).
    let _a = gw.initialize();
    let _b = gw.initialize(); // evicts a, whose process takes 5 s to stop
    let r = gw.post(
        None,
        &json!({"jsonrpc":"2.0","id":1,"method":"initialize","params":{
            "protocolVersion":"2025-06-18","capabilities":{},
            "clientInfo":{"name":"t","version":"1"}}}),
    );
    let answer = r.messages();
    assert_eq!(answer[0]["error"]["code"], -32093, "{answer:?}");
    let message = answer[0]["error"]["message"].as_str().unwrap();
    assert!(message.contains("--pool-acquire-timeout"), "{message}");
    until_metric(&gw, "shadowcat_upstream_pool_timeouts_total 1");
    until_metric(&gw, "shadowcat_upstream_pool_waits_total 1");
    until_metric(&gw, "shadowcat_upstream_spawns_total 2");
}

/// With --pool-min-idle, spares are started before any session, each session's first message
/// takes one (no cold start), and another is started in its place; /metrics shows them.
#[test]
fn sessions_take_warm_spares_that_are_replaced() {
    let fixture = support::fixture();
    let gw = Gateway::start(&[
        "--admin-listen",
        "127.0.0.1:0",
        "--pool-min-idle",
        "2",
        "--",
        fixture.to_str().unwrap(),
    ]);
    until_metric(&gw, "shadowcat_upstream_children{state=\"idle\"} 2");
    until_metric(&gw, "shadowcat_upstream_spawns_total 2");
    let a = gw.initialize();
    let b = gw.initialize();
    for (id, session) in [(2, &a), (3, &b)] {
        let call = json!({"jsonrpc":"2.0","id":id,"method":"tools/call",
            "params": tool("echo", json!({"text": "warm"}))});
        let r = gw.post(Some(session), &call);
        assert_eq!(
            r.messages()[0]["result"]["content"][0]["text"],
            "warm",
            "{:?}",
            r.messages()
        );
    }
    until_metric(&gw, "shadowcat_upstream_children{state=\"busy\"} 2");
    until_metric(&gw, "shadowcat_upstream_children{state=\"idle\"} 2");
    until_metric(&gw, "shadowcat_upstream_spawns_total 4");
    let log = gw.stderr_text();
    assert_eq!(log.matches("spare=true").count(), 2, "{log}");
    assert!(!log.contains("spare=false"), "{log}");
}

/// `--share always`: sessions run on one server process, each with its own ids; a crash of
/// that process fails what every session had in flight there (-32081) and ends them all, and
/// the next session gets a new process.
#[test]
fn sessions_share_a_process_and_its_crash_ends_them_all() {
    let gw = Gateway::fixture(&["--share", "always"]);
    let sessions = [gw.initialize(), gw.initialize(), gw.initialize()];
    assert_eq!(
        fixture_children_of(&gw).len(),
        1,
        "one process for them all"
    );
    // The same ids in every session, at once: each gets its own answers.
    own_answers_at_once(&gw, &sessions, 20);
    // One session's call is in flight when another's crashes the process.
    let (addr, first) = (gw.addr.clone(), sessions[0].clone());
    let sleeping = std::thread::spawn(move || {
        http_request(
            &addr,
            "POST",
            "/mcp",
            &headers(&[("Mcp-Session-Id", &first)]),
            call(7, "sleep", json!({"ms": 5000})).to_string().as_bytes(),
        )
    });
    std::thread::sleep(Duration::from_millis(300));
    let crashed = gw.post(Some(&sessions[1]), &call(8, "crash", json!({})));
    assert_eq!(
        crashed.messages()[0]["error"]["code"],
        -32081,
        "{crashed:?}"
    );
    let slept = sleeping.join().unwrap();
    let error = &slept.messages()[0];
    assert_eq!(error["id"], 7);
    assert_eq!(error["error"]["code"], -32081, "{error}");
    for session in &sessions {
        wait_until("the session is gone", || {
            gw.post(Some(session), &call(9, "echo", json!({"text": "x"})))
                .status
                == 404
        });
    }
    let next = gw.initialize();
    let r = gw.post(Some(&next), &call(1, "echo", json!({"text": "fine"})));
    assert_eq!(r.json()["result"]["content"][0]["text"], "fine");
    assert_eq!(fixture_children_of(&gw).len(), 1);
}

/// `--max-sessions-per-child 2`: a third session gets a second process; a process whose
/// sessions all ended is kept (--pool-idle-timeout) for the next session.
#[test]
fn max_sessions_per_child_starts_another_process() {
    let gw = Gateway::fixture(&["--share", "always", "--max-sessions-per-child", "2"]);
    let sessions = [gw.initialize(), gw.initialize()];
    assert_eq!(fixture_children_of(&gw).len(), 1);
    let third = gw.initialize();
    assert_eq!(fixture_children_of(&gw).len(), 2);
    for session in sessions.iter().chain([&third]) {
        let r = gw.post(Some(session), &call(1, "echo", json!({"text": session})));
        assert_eq!(r.json()["result"]["content"][0]["text"], session.as_str());
    }
    let r = http_request(
        &gw.addr,
        "DELETE",
        "/mcp",
        &headers(&[("Mcp-Session-Id", &third)]),
        b"",
    );
    assert!(r.status < 300, "{r:?}");
    let again = gw.initialize();
    let r = gw.post(Some(&again), &call(1, "echo", json!({"text": "again"})));
    assert_eq!(r.json()["result"]["content"][0]["text"], "again");
    assert_eq!(
        fixture_children_of(&gw).len(),
        2,
        "the idle process was used again"
    );
}

/// Stateless (2026-07-28) requests are served by a pool of shared processes: a request finds
/// the least busy one, and another is started only when every running one is busy (up to
/// `--max-stateless-children`), so a call is not held up behind another's. A client's answer
/// to a server request reaches the process that asked, whichever is least busy.
#[test]
fn stateless_requests_are_spread_over_a_pool_of_shared_processes() {
    let gw = Gateway::fixture(&["--max-stateless-children", "2"]);
    let post = |id: i64, name: &str, arguments: Value| {
        let (h, body) = support::modern_call(id, name, arguments, json!({}));
        http_request(&gw.addr, "POST", "/mcp", &h, &body)
    };
    // Idle: one process serves request after request.
    for id in 1..=3 {
        assert_eq!(
            post(id, "echo", json!({"text": "hi"})).json()["result"]["content"][0]["text"],
            "hi"
        );
    }
    assert_eq!(fixture_children_of(&gw).len(), 1);
    // A sampling call waits at the first process for its client's answer; the next client's
    // goes to a second one, started for it.
    let sample = |id: i64, prompt: &str| {
        let (h, body) = support::modern_call(id, "sample", json!({"prompt": prompt}), json!({}));
        let mut stream = SseReader::post(&gw.addr, &h, &body);
        let request = stream.next_message().expect("the server's request");
        assert_eq!(request["method"], "sampling/createMessage", "{request}");
        (
            stream,
            request["id"].as_str().expect("a string id").to_owned(),
        )
    };
    let (mut a, asked_a) = sample(10, "a?");
    let (mut b, asked_b) = sample(20, "b?");
    assert_eq!(
        fixture_children_of(&gw).len(),
        2,
        "a second process for the busy first"
    );
    // Both busy and at the bound: a third request waits its turn at one of them.
    assert_eq!(
        post(30, "echo", json!({"text": "third"})).json()["result"]["content"][0]["text"],
        "third"
    );
    assert_eq!(
        fixture_children_of(&gw).len(),
        2,
        "--max-stateless-children holds"
    );
    // Each answer reaches the process that asked (b's first: the least busy would be a's).
    for (stream, asked, id, text) in [(&mut b, &asked_b, 20, "b's"), (&mut a, &asked_a, 10, "a's")]
    {
        let answered = support::stateless_sampling_answer(&gw.addr, asked, text);
        assert_eq!(answered.status, 202, "{answered:?}");
        let result = stream.next_message().expect("the call's result");
        assert_eq!(result["id"], id);
        assert_eq!(
            result["result"]["content"][0]["text"],
            format!("client said: {text}")
        );
    }
}

/// `--share never`: each stateless (2026-07-28) request gets a process of its own, stopped
/// when the request is over.
#[test]
fn with_share_never_each_stateless_request_has_its_own_process() {
    let gw = Gateway::fixture(&["--share", "never", "--admin-listen", "127.0.0.1:0"]);
    for id in 1..=2 {
        let (h, body) = support::modern_call(id, "echo", json!({"text": "alone"}), json!({}));
        let r = http_request(&gw.addr, "POST", "/mcp", &h, &body);
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.json()["id"], id);
        assert_eq!(r.json()["result"]["content"][0]["text"], "alone");
        wait_until("the request's process has exited", || {
            fixture_children_of(&gw).is_empty()
        });
    }
    until_metric(&gw, "shadowcat_upstream_spawns_total 2");
}

/// Bad `--share` and `--max-sessions-per-child` values are refused before anything starts.
#[test]
fn bad_share_options_are_refused() {
    for (args, says) in [
        (vec!["--share", "sometimes"], "sometimes"),
        (
            vec!["--max-sessions-per-child", "0"],
            "--max-sessions-per-child",
        ),
        (
            vec!["--max-sessions-per-child", "lots"],
            "--max-sessions-per-child",
        ),
        (vec!["--max-stateless-children", "65"], "expected 1 to 64"),
        (
            vec!["--max-stateless-children", "0"],
            "--max-stateless-children",
        ),
    ] {
        support::assert_reverse_refuses(&args, says);
    }
}

/// At a shared process, a server request made while two sessions have calls in flight cannot
/// be tied to one: the process gets -32094 and neither client sees the request. With one
/// session busy, it goes to that session.
#[test]
fn an_ambiguous_server_request_at_a_shared_process_is_refused_not_guessed() {
    let gw = Gateway::fixture(&["--share", "always"]);
    let (a, b) = (gw.initialize(), gw.initialize());
    let (addr, busy) = (gw.addr.clone(), a.clone());
    let sleeping = std::thread::spawn(move || {
        http_request(
            &addr,
            "POST",
            "/mcp",
            &headers(&[("Mcp-Session-Id", &busy)]),
            call(1, "sleep", json!({"ms": 1500})).to_string().as_bytes(),
        )
    });
    std::thread::sleep(Duration::from_millis(300));
    let r = gw.post(Some(&b), &call(2, "sample", json!({"prompt": "whose?"})));
    let messages = r.messages();
    assert_eq!(
        messages.len(),
        1,
        "no sampling request reached b: {messages:?}"
    );
    let text = messages[0]["result"]["content"][0]["text"]
        .as_str()
        .unwrap();
    assert!(text.contains("(-32094)"), "{text}");
    let slept = sleeping.join().unwrap();
    assert_eq!(
        slept.messages().len(),
        1,
        "none reached a either: {slept:?}"
    );
    // With only b busy, the request is b's.
    let mut stream = SseReader::post(
        &gw.addr,
        &headers(&[("Mcp-Session-Id", &b)]),
        call(3, "sample", json!({"prompt": "mine"}))
            .to_string()
            .as_bytes(),
    );
    let request = stream.next_message().expect("the server's request");
    assert_eq!(request["method"], "sampling/createMessage", "{request}");
    let answer = json!({"jsonrpc":"2.0","id":request["id"],"result":{"role":"assistant","content":{"type":"text","text":"b's"},"model":"m"}});
    // a cannot answer it (its answer is dropped); b can.
    let forged = json!({"jsonrpc":"2.0","id":request["id"],"result":{"role":"assistant","content":{"type":"text","text":"forged"},"model":"m"}});
    assert_eq!(gw.post(Some(&a), &forged).status, 202);
    assert_eq!(gw.post(Some(&b), &answer).status, 202);
    let result = stream.next_message().expect("the call's result");
    assert_eq!(result["result"]["content"][0]["text"], "client said: b's");
}

/// Session `sleeper` has a call in flight (id 1) when session `crasher`'s call (id 2) crashes
/// the server: both get -32081 under their ids.
fn crash_with_a_call_in_flight(gw: &Gateway, sleeper: &str, crasher: &str) {
    let (addr, id) = (gw.addr.clone(), sleeper.to_owned());
    let sleeping = std::thread::spawn(move || {
        http_request(
            &addr,
            "POST",
            "/mcp",
            &headers(&[("Mcp-Session-Id", &id)]),
            call(1, "sleep", json!({"ms": 10_000}))
                .to_string()
                .as_bytes(),
        )
    });
    std::thread::sleep(Duration::from_millis(300));
    let crashed = gw.post(Some(crasher), &call(2, "crash", json!({"code": 9})));
    assert_eq!(
        crashed.messages()[0]["error"]["code"],
        -32081,
        "{crashed:?}"
    );
    assert_eq!(crashed.messages()[0]["id"], 2);
    let slept = sleeping.join().unwrap();
    assert_eq!(slept.messages()[0]["error"]["code"], -32081, "{slept:?}");
    assert_eq!(slept.messages()[0]["id"], 1);
}

/// `reverse --restart on-failure`: a session's process that crashes fails what it owed
/// (-32081, both the crashing call and another in flight), then a new process from the pool
/// is given the session's handshake and the client goes on under the same session id; the
/// restart is counted and the new pid and generation are logged.
#[test]
fn a_gateway_sessions_crashed_server_is_restarted_and_the_session_goes_on() {
    let gw = Gateway::fixture(&["--restart", "on-failure", "--admin-listen", "127.0.0.1:0"]);
    let session = gw.initialize();
    crash_with_a_call_in_flight(&gw, &session, &session);
    let r = gw.post(
        Some(&session),
        &call(3, "echo", json!({"text": "still here"})),
    );
    assert_eq!(r.status, 200, "{r:?}\n{}", gw.stderr_text());
    assert_eq!(r.json()["result"]["content"][0]["text"], "still here");
    until_metric(&gw, "shadowcat_upstream_restarts_total 1");
    let log = gw.stderr_text();
    assert!(log.contains("restarted the session's MCP server"), "{log}");
    assert!(log.contains("generation=2"), "{log}");
    assert_eq!(fixture_children_of(&gw).len(), 1);
    // A request of the new process that no POST can carry is answered with an error on the
    // new process's stdin (not the dead one's), so the server does not wait for it forever.
    let r = gw.post(Some(&session), &call(4, "ask_later", json!({})));
    assert_eq!(r.json()["result"]["content"][0]["text"], "will ask");
    let mut errors = json!([]);
    for attempt in 0..50 {
        let stats = gw.post(Some(&session), &call(5 + attempt, "stats", json!({})));
        errors = stats.json()["result"]["structuredContent"]["errors_received"].clone();
        if errors != json!([]) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(errors, json!(["later-1"]));
}

/// `--share always --restart on-failure`: a shared process that crashes fails what every
/// session on it had in flight (-32081), then a process from the pool is given the handshake
/// the old one got, and every session goes on under its id, on the new process: each tape
/// says which process served it (generation 1, then 2).
#[test]
fn a_shared_servers_crash_is_restarted_and_its_sessions_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let tapes = dir.path().join("tapes");
    let gw = Gateway::fixture(&[
        "--share",
        "always",
        "--restart",
        "on-failure",
        "--admin-listen",
        "127.0.0.1:0",
        "--record",
        tapes.to_str().unwrap(),
    ]);
    let (a, b) = (gw.initialize(), gw.initialize());
    let first = fixture_children_of(&gw);
    assert_eq!(first.len(), 1, "one process for both");
    crash_with_a_call_in_flight(&gw, &a, &b);
    for (n, session) in [(3, &a), (4, &b)] {
        let r = gw.post(Some(session), &call(n, "echo", json!({"text": session})));
        assert_eq!(r.status, 200, "{r:?}\n{}", gw.stderr_text());
        assert_eq!(r.json()["id"], n);
        assert_eq!(r.json()["result"]["content"][0]["text"], session.as_str());
    }
    let second = fixture_children_of(&gw);
    assert_eq!(second.len(), 1, "one process for both again");
    assert_ne!(first, second, "a new process");
    until_metric(&gw, "shadowcat_upstream_restarts_total 1");
    let log = gw.stderr_text();
    assert!(log.contains("restarted the shared MCP server"), "{log}");
    // A session started later still gets the handshake's answer, from the new process's day.
    let c = gw.initialize();
    let r = gw.post(Some(&c), &call(5, "echo", json!({"text": "c"})));
    assert_eq!(r.json()["result"]["content"][0]["text"], "c");
    assert_eq!(fixture_children_of(&gw), second);
    for session in [&a, &b, &c] {
        let r = http_request(
            &gw.addr,
            "DELETE",
            "/mcp",
            &headers(&[("Mcp-Session-Id", session)]),
            b"",
        );
        assert!(r.status < 300, "{r:?}");
    }
    let mut generations = Vec::new();
    wait_until("every session's tape is closed", || {
        generations = std::fs::read_dir(&tapes)
            .unwrap()
            .filter_map(|e| shadowcat::tape::read(&e.unwrap().path()).ok())
            .filter(|tape| tape.end.is_some())
            .map(|tape| {
                tape.servers
                    .iter()
                    .map(|s| (s.generation, s.pid))
                    .collect::<Vec<_>>()
            })
            .collect();
        generations.len() == 3
    });
    generations.sort();
    let pid = |p: i32| u32::try_from(p).unwrap();
    let (old, new) = (pid(first[0]), pid(second[0]));
    assert_eq!(
        generations,
        [
            vec![(1, old), (2, new)],
            vec![(1, old), (2, new)],
            vec![(2, new)]
        ],
    );
}

/// With `--restart on-failure`, a server that runs once and then fails at every start: its
/// restarts back off into a crash loop, and `/readyz` says so; for a session's own process and
/// for a shared one (also shown in `/metrics`).
#[test]
fn a_gateway_crash_loop_is_detected_and_reported_by_readyz() {
    for share in ["stateless", "always"] {
        let dir = tempfile::tempdir().unwrap();
        let ran = dir.path().join("ran");
        let script = format!(
            "if [ -e '{}' ]; then echo dying >&2; exit 3; fi; touch '{}'; exec '{}'",
            ran.display(),
            ran.display(),
            support::fixture().display()
        );
        let gw = Gateway::start(&[
            "--restart",
            "on-failure",
            "--share",
            share,
            "--admin-listen",
            "127.0.0.1:0",
            "--",
            "sh",
            "-c",
            &script,
        ]);
        let session = gw.initialize();
        let crashed = gw.post(Some(&session), &call(1, "crash", json!({})));
        assert_eq!(
            crashed.messages()[0]["error"]["code"],
            -32081,
            "{share}: {crashed:?}"
        );
        let admin = gw.admin_addr();
        wait_until("/readyz reports the crash loop", || {
            let ready = http_request(&admin, "GET", "/readyz", &[], b"");
            ready.status == 503
                && String::from_utf8_lossy(&ready.body).contains("crashing in a loop")
        });
        let log = gw.stderr_text();
        assert_eq!(
            log.matches("restarting the MCP server").count(),
            4,
            "{share}: {log}"
        );
        if share == "always" {
            until_metric(&gw, "shadowcat_upstream_crash_looping 1");
        }
    }
}

/// `--restart` is for a server command; with `--upstream` it is refused, naming the option.
#[test]
fn restart_is_refused_where_it_does_not_apply() {
    let args = [
        "--restart",
        "on-failure",
        "--upstream",
        "http://127.0.0.1:9/mcp",
    ];
    let out = support::command()
        .arg("reverse")
        .args(args)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--restart"));
}
