//! `shadowcat forward stdio --url`: Python SDK stdio clients (2.3.0 in `legacy` and `auto`
//! modes, 1.30.0) bridged to Python SDK HTTP servers (stateful and stateless, SSE and JSON
//! answers) and to a 2024-11-05 HTTP+SSE server. Each client's summary through the bridge must
//! equal its summary talking to the server itself.
//!
//! The peers are installed by `scripts/test.sh` (pinned). Without them these tests fail with
//! instructions rather than skip.

#![allow(
    clippy::pedantic,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::disallowed_types
)]

mod support;

use support::sdk::{
    HttpServer, Target, check_elicitation_and_list_changed, check_progress_and_logs, check_summary,
    run_client,
};

/// The bridge as a stdio server command for the SDK client.
fn bridge(url: &str) -> Vec<String> {
    vec![
        support::shadowcat().display().to_string(),
        "forward".into(),
        "stdio".into(),
        "--url".into(),
        url.into(),
    ]
}

/// Clients of both SDKs against `server`, directly and through the bridge: identical.
fn through_the_bridge(server_sdk: &str, flags: &[&str]) {
    let server = HttpServer::start(server_sdk, flags);
    let url = server.url.clone();
    // Servers without a back-channel (stateless, or JSON-only answers) can't send the client a
    // request, directly or not.
    let back_channel = flags.is_empty();
    for (sdk, mode) in [
        ("2.3.0", Some("legacy")),
        ("2.3.0", Some("auto")),
        ("1.30.0", None),
    ] {
        let direct = run_client(sdk, mode, Target::Url(&url), back_channel);
        let bridged = run_client(sdk, mode, Target::Stdio(&bridge(&url)), back_channel);
        check_summary(&bridged, back_channel);
        if back_channel {
            check_progress_and_logs(&bridged);
            check_elicitation_and_list_changed(&bridged);
        }
        assert_eq!(
            direct, bridged,
            "client {sdk} {mode:?} vs server {server_sdk} {flags:?}: different through the bridge"
        );
    }
}

#[test]
fn sdk_2_3_server_with_sse_answers() {
    through_the_bridge("2.3.0", &[]);
}

#[test]
fn sdk_2_3_server_with_json_answers() {
    through_the_bridge("2.3.0", &["--json"]);
}

#[test]
fn sdk_2_3_stateless_server() {
    through_the_bridge("2.3.0", &["--stateless"]);
}

#[test]
fn sdk_1_30_servers() {
    through_the_bridge("1.30.0", &[]);
    through_the_bridge("1.30.0", &["--stateless", "--json"]);
}

/// A 2024-11-05 HTTP+SSE server (`mcp.sse_app()`) behind the bridge: found by the back-compat
/// probe; the clients get what a legacy SSE client gets talking to it.
#[test]
fn a_legacy_sse_server() {
    let server = HttpServer::start("1.30.0", &["--legacy-sse"]);
    let sse_url = server.url.replace("/mcp", "/sse");
    let direct = run_client("1.30.0", None, Target::Sse(&sse_url), true);
    let bridged = run_client("1.30.0", None, Target::Stdio(&bridge(&sse_url)), true);
    check_summary(&bridged, true);
    check_progress_and_logs(&bridged);
    assert_eq!(direct, bridged);
}

/// The server is killed and started again (same port) mid-session: it has forgotten the
/// session, and answers 404. The bridge replays the client's handshake there and sends the
/// refused request again: the client's next calls succeed without it re-initializing.
#[test]
fn a_restarted_server_gets_the_session_back_without_the_client_noticing() {
    use serde_json::json;
    let server = HttpServer::start("2.3.0", &[]);
    let port = server.port();
    let mut cmd = support::command();
    cmd.args(["forward", "stdio", "--url", &server.url]);
    let mut proxy = support::Proxy::spawn(cmd);
    proxy.initialize();
    let echo = |proxy: &mut support::Proxy, id: i64, text: &str| {
        let answer = proxy.call(
            id,
            "tools/call",
            support::tool("echo", json!({"text": text})),
        );
        assert_eq!(answer["result"]["content"][0]["text"], text, "{answer}");
    };
    echo(&mut proxy, 1, "before");
    drop(server);
    let _server = HttpServer::start("2.3.0", &["--port", &port]);
    echo(&mut proxy, 2, "after the restart");
    let tools = proxy.call(3, "tools/list", json!({}));
    assert!(
        tools["result"]["tools"]
            .as_array()
            .is_some_and(|t| !t.is_empty()),
        "{tools}"
    );
    proxy.close_stdin();
    assert_eq!(
        proxy.wait_exit(std::time::Duration::from_secs(10)).code(),
        Some(0)
    );
    assert!(
        proxy.stderr_text().contains("re-established it"),
        "{}",
        proxy.stderr_text()
    );
}

/// When the HTTP server refuses a request with a JSON-RPC error in the body (here the Python
/// SDK's stateless server: an unsupported protocol version is 400 with `-32022`, a request
/// without the required `_meta` 400 with `-32602`, an unknown method 404 with `-32601`), the
/// stdio client gets that error, with its code, message and data, under its request's id:
/// not a generic error of ours.
#[test]
fn the_servers_own_error_reaches_the_stdio_client() {
    use serde_json::json;
    let server = HttpServer::start("2.3.0", &["--stateless"]);
    let mut cmd = support::command();
    cmd.args(["forward", "stdio", "--url", &server.url]);
    let mut proxy = support::Proxy::spawn(cmd);
    let meta = |version: &str| {
        json!({"_meta": {
            "io.modelcontextprotocol/protocolVersion": version,
            "io.modelcontextprotocol/clientCapabilities": {},
        }})
    };
    let unsupported = proxy.call(7, "tools/list", meta("2099-01-01"));
    assert_eq!(unsupported["id"], 7, "{unsupported}");
    assert_eq!(unsupported["error"]["code"], -32022, "{unsupported}");
    assert_eq!(
        unsupported["error"]["data"]["supported"],
        json!(["2026-07-28"]),
        "{unsupported}"
    );
    let unknown = proxy.call(8, "no/such/method", meta("2026-07-28"));
    assert_eq!(unknown["id"], 8, "{unknown}");
    assert_eq!(unknown["error"]["code"], -32601, "{unknown}");
    assert_eq!(unknown["error"]["message"], "Method not found", "{unknown}");
    proxy.close_stdin();
    assert_eq!(
        proxy.wait_exit(std::time::Duration::from_secs(10)).code(),
        Some(0)
    );
}

/// The Python SDK server, keeping events, closes its GET stream and logs an event at once
/// (`cut`: SEP-1699's `close_standalone_sse_stream`): the bridge reconnects with
/// `Last-Event-ID`, and the client gets every event once, in order, including the one logged
/// while no stream was open (only a resume brings that one).
#[test]
fn the_python_servers_get_stream_resumes_with_last_event_id() {
    use serde_json::{Value, json};
    use std::time::{Duration, Instant};
    let server = HttpServer::start("2.3.0", &["--resumable"]);
    let mut cmd = support::command();
    cmd.args(["forward", "stdio", "--url", &server.url]);
    let mut proxy = support::Proxy::spawn(cmd);
    let init = proxy.call(
        0,
        "initialize",
        json!({"protocolVersion": "2025-11-25", "capabilities": {},
               "clientInfo": {"name": "shadowcat-tests", "version": "0"}}),
    );
    assert_eq!(init["result"]["protocolVersion"], "2025-11-25", "{init}");
    proxy.send(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"}));
    let mut notes: Vec<(String, Instant)> = Vec::new();
    let mut id = 0;
    // Calls `name`; the logged events that arrive meanwhile go to `notes`.
    let mut call = |proxy: &mut support::Proxy,
                    notes: &mut Vec<(String, Instant)>,
                    name: &str,
                    args: Value| {
        id += 1;
        proxy.send(&json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
                           "params": support::tool(name, args)}));
        loop {
            let msg = proxy.recv();
            if msg["id"] == id {
                assert!(msg["result"]["content"][0]["text"].is_string(), "{msg}");
                return;
            }
            assert_eq!(msg["method"], "notifications/message", "{msg}");
            notes.push((
                msg["params"]["data"].as_str().unwrap().to_owned(),
                Instant::now(),
            ));
        }
    };
    let has = |notes: &[(String, Instant)], text: &str| notes.iter().any(|(n, _)| n == text);
    // Until the bridge's GET stream is open, events are kept but not sent.
    let deadline = Instant::now() + Duration::from_secs(15);
    while !has(&notes, "warm-up") {
        assert!(Instant::now() < deadline, "the GET stream never opened");
        call(
            &mut proxy,
            &mut notes,
            "announce",
            json!({"text": "warm-up"}),
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    for text in ["a", "b"] {
        call(&mut proxy, &mut notes, "announce", json!({"text": text}));
    }
    call(&mut proxy, &mut notes, "cut", json!({"text": "c"}));
    let deadline = Instant::now() + Duration::from_secs(15);
    while !has(&notes, "c") {
        assert!(
            Instant::now() < deadline,
            "the GET stream was not resumed: {notes:?}"
        );
        call(&mut proxy, &mut notes, "echo", json!({"text": "-"}));
        std::thread::sleep(Duration::from_millis(50));
    }
    call(&mut proxy, &mut notes, "announce", json!({"text": "d"}));
    let deadline = Instant::now() + Duration::from_secs(15);
    while !has(&notes, "d") {
        assert!(Instant::now() < deadline, "d never arrived: {notes:?}");
        call(&mut proxy, &mut notes, "echo", json!({"text": "-"}));
    }
    let real: Vec<&str> = notes
        .iter()
        .map(|(n, _)| n.as_str())
        .filter(|n| *n != "warm-up")
        .collect();
    assert_eq!(real, ["a", "b", "c", "d"], "every event once, in order");
    proxy.close_stdin();
    assert_eq!(proxy.wait_exit(Duration::from_secs(10)).code(), Some(0));
}
