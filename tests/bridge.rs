//! `shadowcat forward stdio --url`: a stdio client bridged to the HTTP fixture server
//! (examples/http_fixture.rs): headers and credentials, session ids, a clean exit that ends the
//! upstream session, an unreachable upstream, and bad options.

#![allow(
    clippy::pedantic,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::disallowed_types
)]

mod support;

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::{HttpFixture, Proxy, command, tool};

/// `shadowcat forward stdio --url URL [opts...]`, with `env` set.
fn bridge(url: &str, opts: &[&str], env: &[(&str, &str)]) -> Proxy {
    let mut cmd = command();
    cmd.args(["--log-level", "trace", "forward", "stdio", "--url", url])
        .args(opts);
    for (k, v) in env {
        cmd.env(k, v);
    }
    Proxy::spawn(cmd)
}

/// Calls tool `name`; the notifications that arrive before its answer are added to `notes`
/// (their `data`). Returns the answer's text.
fn call_noting(
    proxy: &mut Proxy,
    notes: &mut Vec<String>,
    id: i64,
    name: &str,
    args: Value,
) -> String {
    proxy.send(&json!({"jsonrpc":"2.0","id":id,"method":"tools/call","params":tool(name, args)}));
    loop {
        let msg = proxy.recv();
        if msg["id"] == id {
            return text_of(&msg);
        }
        assert_eq!(msg["method"], "notifications/message", "{msg}");
        notes.push(msg["params"]["data"].as_str().unwrap().to_owned());
    }
}

fn text_of(answer: &Value) -> String {
    answer["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or_else(|| panic!("no text in {answer}"))
        .to_owned()
}

#[test]
fn a_stdio_client_reaches_the_http_server_and_a_clean_exit_ends_its_session() {
    let fixture = HttpFixture::start(&[]);
    let secret = "s3cr3t-t0ken-never-logged";
    let mut proxy = bridge(
        &fixture.url,
        &[
            "--header",
            "X-Tenant: blue",
            "--bearer-token-env",
            "SHADOWCAT_TEST_TOKEN",
        ],
        &[("SHADOWCAT_TEST_TOKEN", secret)],
    );
    let init = proxy.initialize();
    assert_eq!(
        init["result"]["serverInfo"]["name"],
        "shadowcat-http-fixture"
    );
    let seen: Value = serde_json::from_str(&text_of(&proxy.call(
        1,
        "tools/call",
        tool("headers", json!({})),
    )))
    .unwrap();
    assert_eq!(seen["authorization"], format!("Bearer {secret}"));
    assert_eq!(seen["x-tenant"], "blue");
    assert_eq!(seen["mcp-protocol-version"], "2025-06-18", "{seen}");
    assert!(
        seen["mcp-session-id"]
            .as_str()
            .is_some_and(|s| s.starts_with("upstream-"))
    );
    let echo = proxy.call(
        2,
        "tools/call",
        tool("echo", json!({"text": "over the bridge"})),
    );
    assert_eq!(text_of(&echo), "over the bridge");
    let session = seen["mcp-session-id"].as_str().unwrap().to_owned();
    // The client goes: the upstream session is DELETEd, and we exit 0.
    proxy.close_stdin();
    assert_eq!(proxy.wait_exit(Duration::from_secs(10)).code(), Some(0));
    let stderr = proxy.stderr_text();
    assert!(!stderr.contains(secret), "the token was logged:\n{stderr}");
    let checker = bridge(&fixture.url, &[], &[]);
    let mut checker = checker;
    checker.initialize();
    let deleted = text_of(&checker.call(1, "tools/call", tool("deleted", json!({}))));
    assert!(deleted.contains(&session), "{deleted} lacks {session}");
}

#[test]
fn an_unreachable_server_gets_a_prompt_error_and_the_bridge_stays_up() {
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut proxy = bridge(&format!("http://127.0.0.1:{port}/mcp"), &[], &[]);
    let started = Instant::now();
    let answer = proxy.call(
        0,
        "initialize",
        json!({"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"t","version":"1"}}),
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(answer["error"]["code"], -32087, "{answer}");
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("cannot reach the upstream"),
        "{answer}"
    );
    assert_eq!(
        answer["error"]["data"]["kind"], "connection_refused",
        "{answer}"
    );
    // Still serving: the next request gets its own answer.
    let again = proxy.call(1, "ping", json!({}));
    assert_eq!(again["error"]["code"], -32087);
    // The server comes up: the next requests go through.
    let _fixture = HttpFixture::start(&["--port", &port.to_string()]);
    proxy.initialize();
    let echo = proxy.call(2, "tools/call", tool("echo", json!({"text": "up now"})));
    assert_eq!(text_of(&echo), "up now");
    proxy.close_stdin();
    assert_eq!(proxy.wait_exit(Duration::from_secs(10)).code(), Some(0));
}

/// The server's URL and headers come from the flags, `SHADOWCAT_URL` / `SHADOWCAT_HEADER`, or
/// the config file's `url` / `header`; a server command given after `--` wins over the file's
/// `url` (a file holds defaults).
#[test]
fn the_url_and_headers_come_from_the_environment_or_the_config_file() {
    let fixture = HttpFixture::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("shadowcat.toml");
    let tenant = |cmd: std::process::Command| {
        let mut proxy = Proxy::spawn(cmd);
        proxy.initialize();
        let seen: Value = serde_json::from_str(&text_of(&proxy.call(
            1,
            "tools/call",
            tool("headers", json!({})),
        )))
        .unwrap();
        proxy.close_stdin();
        assert_eq!(proxy.wait_exit(Duration::from_secs(10)).code(), Some(0));
        seen["x-tenant"].clone()
    };
    std::fs::write(&config, "").unwrap();
    let mut cmd = command();
    cmd.args(["--config", config.to_str().unwrap(), "forward", "stdio"])
        .env("SHADOWCAT_URL", &fixture.url)
        .env("SHADOWCAT_HEADER", "X-Tenant: from-env");
    assert_eq!(tenant(cmd), "from-env");

    std::fs::write(
        &config,
        format!(
            // `cwd` is for a server command: the bridge leaves it be.
            "url = {:?}\nheader = [\"X-Tenant: from-file\"]\ncwd = \"/\"\n",
            fixture.url
        ),
    )
    .unwrap();
    let mut cmd = command();
    cmd.args(["--config", config.to_str().unwrap(), "forward", "stdio"]);
    assert_eq!(tenant(cmd), "from-file");
    // The flag beats the variable, which beats the file.
    let mut cmd = command();
    cmd.args(["--config", config.to_str().unwrap(), "forward", "stdio"])
        .args(["--header", "X-Tenant: from-flag"])
        .env("SHADOWCAT_HEADER", "X-Tenant: from-env");
    assert_eq!(tenant(cmd), "from-flag");

    // A command beats the file's url: the fixture server on stdio answers.
    let mut cmd = command();
    cmd.args([
        "--config",
        config.to_str().unwrap(),
        "forward",
        "stdio",
        "--",
    ])
    .arg(support::fixture());
    let mut proxy = Proxy::spawn(cmd);
    let init = proxy.initialize();
    assert_eq!(
        init["result"]["serverInfo"]["name"], "shadowcat-fixture",
        "{init}"
    );
    proxy.close_stdin();
    assert_eq!(proxy.wait_exit(Duration::from_secs(10)).code(), Some(0));
}

#[test]
fn bad_bridge_options_are_refused_clearly() {
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);
    let cases: [Case<'_>; 10] = [
        (
            &["--read-timeout", "1s", "--", "srv"],
            &[],
            "applies to a --url server",
        ),
        (&["--url", "ftp://h/mcp"], &[], "--url"),
        (
            &["--url", "http://h/mcp", "--header", "nocolon"],
            &[],
            "--header",
        ),
        (
            &[
                "--url",
                "http://h/mcp",
                "--bearer-token-env",
                "SHADOWCAT_NO_SUCH_VAR",
            ],
            &[],
            "SHADOWCAT_NO_SUCH_VAR is not set",
        ),
        (
            &[
                "--url",
                "http://h/mcp",
                "--bearer-token-env",
                "SHADOWCAT_EMPTY",
            ],
            &[("SHADOWCAT_EMPTY", " ")],
            "is empty",
        ),
        (
            &["--url", "http://h/mcp", "--env", "A=b"],
            &[],
            "--env and --cwd",
        ),
        (
            &["--url", "http://h/mcp", "--", "srv"],
            &[],
            "invalid --url: a server command was also given (after --): give one server",
        ),
        (
            &["--", "srv"],
            &[("SHADOWCAT_URL", "http://h/mcp")],
            "invalid SHADOWCAT_URL: a server command was also given (after --): give one server",
        ),
        (
            &["--header", "X-Tenant: blue", "--", "srv"],
            &[],
            "invalid --header: applies to a --url server, not to a server command",
        ),
        (
            &["--", "srv"],
            &[("SHADOWCAT_HEADER", "X-Tenant: blue")],
            "invalid SHADOWCAT_HEADER: applies to a --url server",
        ),
    ];
    for (args, env, expected) in cases {
        let mut cmd = command();
        cmd.args(["forward", "stdio"]).args(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
    // Neither a command nor --url.
    let out = command().args(["forward", "stdio"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}

/// The upstream's GET stream breaks (the fixture's `cut`): the bridge reconnects with
/// `Last-Event-ID` and the client gets every event exactly once, in order, including the one
/// sent while the stream was down.
#[test]
fn a_cut_get_stream_resumes_without_losing_or_repeating_events() {
    let fixture = HttpFixture::start(&[]);
    let mut proxy = bridge(&fixture.url, &[], &[]);
    proxy.initialize();
    let mut notes: Vec<String> = Vec::new();
    let mut next_id = 1;
    let mut call = |proxy: &mut Proxy, notes: &mut Vec<String>, name: &str, args: Value| {
        next_id += 1;
        call_noting(proxy, notes, next_id, name, args)
    };
    let announce = |text: &str| ("announce", json!({ "text": text }));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (name, args) = announce("warm-up");
        if call(&mut proxy, &mut notes, name, args) == "1" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the upstream GET stream never opened"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    for text in ["a", "b"] {
        let (name, args) = announce(text);
        assert_eq!(call(&mut proxy, &mut notes, name, args), "1");
    }
    call(&mut proxy, &mut notes, "cut", json!({}));
    // While the stream is down the event is only logged upstream.
    let (name, args) = announce("c");
    assert_eq!(call(&mut proxy, &mut notes, name, args), "0");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (name, args) = announce("probe");
        if call(&mut proxy, &mut notes, name, args) == "1" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the GET stream was not reconnected"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let (name, args) = announce("d");
    assert_eq!(call(&mut proxy, &mut notes, name, args), "1");
    // The last one travels on another stream than the answers: wait for it.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !notes.iter().any(|n| n == "d") {
        assert!(Instant::now() < deadline, "d never arrived: {notes:?}");
        call(&mut proxy, &mut notes, "echo", json!({"text": "-"}));
    }
    // Every event once, in order: the probes sent while the stream was down are replayed too.
    let real: Vec<&str> = notes
        .iter()
        .map(String::as_str)
        .filter(|n| !matches!(*n, "warm-up" | "probe"))
        .collect();
    // "c" was sent while no stream was open: only a resume with Last-Event-ID brings it.
    assert_eq!(real, ["a", "b", "c", "d"], "all notifications: {notes:?}");
}

/// A GET stream that stays silent past `--read-timeout` is treated as dropped and reopened
/// (the fixture sends no keep-alives): events still arrive.
#[test]
fn a_silent_get_stream_is_reopened_after_the_read_timeout() {
    let fixture = HttpFixture::start(&[]);
    let mut proxy = bridge(&fixture.url, &["--read-timeout", "300ms"], &[]);
    proxy.initialize();
    std::thread::sleep(Duration::from_millis(1200));
    let mut notes = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut id = 0;
    loop {
        id += 1;
        if call_noting(&mut proxy, &mut notes, id, "announce", json!({"text": "x"})) == "1" {
            break;
        }
        assert!(Instant::now() < deadline, "no GET stream took the event");
        std::thread::sleep(Duration::from_millis(50));
    }
    // It arrives, on another stream than the answers.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !notes.iter().any(|n| n == "x") {
        assert!(Instant::now() < deadline, "x never arrived");
        id += 1;
        call_noting(&mut proxy, &mut notes, id, "echo", json!({"text": "-"}));
    }
    assert!(proxy.stderr_text().contains("silent for --read-timeout"));
}

/// `--request-timeout` counts from the last sign of life: a long call that reports progress
/// outlives it, one that says nothing times out with an error, and the server is told
/// (`notifications/cancelled`). `--request-timeout-max` bounds a call whatever its progress.
#[test]
fn progress_extends_the_request_timeout_up_to_its_maximum() {
    let fixture = HttpFixture::start(&[]);
    let mut proxy = bridge(
        &fixture.url,
        &["--request-timeout", "500ms", "--request-timeout-max", "2s"],
        &[],
    );
    proxy.initialize();
    let call = |proxy: &mut Proxy, id: i64, name: &str, args: Value| {
        let mut params = tool(name, args);
        params["_meta"] = json!({"progressToken": format!("p{id}")});
        proxy.send(&json!({"jsonrpc":"2.0","id":id,"method":"tools/call","params":params}));
        let mut progress = 0;
        loop {
            let msg = proxy.recv();
            if msg["id"] == id {
                return (msg, progress);
            }
            assert_eq!(msg["method"], "notifications/progress", "{msg}");
            progress += 1;
        }
    };
    // 1.2 s of work, progress every 150 ms: past the 500 ms timeout, and answered.
    let started = Instant::now();
    let (answer, progress) = call(&mut proxy, 1, "slow", json!({"ms": 1200, "every": 150}));
    assert_eq!(text_of(&answer), "slow done");
    assert!(progress >= 5, "{progress} progress notifications");
    assert!(started.elapsed() >= Duration::from_millis(1200));
    // Silent work: an error at about 500 ms, and the server is told.
    let started = Instant::now();
    let (answer, _) = call(&mut proxy, 2, "sleep", json!({"ms": 3000}));
    assert_eq!(answer["error"]["code"], -32086, "{answer}");
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("--request-timeout)"),
        "{answer}"
    );
    assert!(started.elapsed() < Duration::from_millis(1500));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (answer, _) = call(&mut proxy, 3, "cancelled", json!({}));
        if text_of(&answer) == "[2]" {
            break;
        }
        assert!(Instant::now() < deadline, "no cancellation: {answer}");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Progress forever: the maximum ends it.
    let started = Instant::now();
    let (answer, _) = call(&mut proxy, 4, "slow", json!({"ms": 5000, "every": 100}));
    assert_eq!(answer["error"]["code"], -32086, "{answer}");
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("--request-timeout-max"),
        "{answer}"
    );
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(1900) && took < Duration::from_secs(4),
        "{took:?}"
    );
    // Its upstream stream is closed then: no more progress for it (one may have been on the way).
    std::thread::sleep(Duration::from_millis(600));
    let (_, late_progress) = call(&mut proxy, 5, "echo", json!({"text": "-"}));
    assert!(
        late_progress <= 1,
        "{late_progress} progress notifications after the timeout"
    );
}

/// An https server whose certificate a private CA issued: refused as untrusted (a TLS error,
/// said so) until `--upstream-ca` names that CA, then reached.
#[test]
fn an_https_server_with_a_private_ca() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = support::private_ca(dir.path());
    let fixture = HttpFixture::start_tls(&cert, &key);
    assert!(fixture.url.starts_with("https://localhost:"));
    let mut untrusted = bridge(&fixture.url, &[], &[]);
    let answer = untrusted.call(
        0,
        "initialize",
        json!({"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"t","version":"1"}}),
    );
    assert_eq!(answer["error"]["code"], -32087, "{answer}");
    assert_eq!(answer["error"]["data"]["kind"], "tls", "{answer}");
    let mut trusted = bridge(&fixture.url, &["--upstream-ca", ca.to_str().unwrap()], &[]);
    trusted.initialize();
    let echo = trusted.call(1, "tools/call", tool("echo", json!({"text": "over tls"})));
    assert_eq!(text_of(&echo), "over tls");
    // A file that is not a certificate is a clear usage error.
    let out = command()
        .args(["forward", "stdio", "--url", &fixture.url, "--upstream-ca"])
        .arg(&key)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--upstream-ca"));
}

/// A stdio client of the 2026-07-28 era sends no HTTP headers: the bridge makes the ones an
/// HTTP client must (the protocol version, `Mcp-Method`, `Mcp-Name`, and `Mcp-Param-*` for the
/// parameters the tool's schema marks `x-mcp-header`, learnt from `tools/list`).
#[test]
fn a_stateless_era_client_gets_its_mirrored_headers_made() {
    let fixture = HttpFixture::start(&["--stateless"]);
    let mut proxy = bridge(&fixture.url, &[], &[]);
    let meta = json!({"io.modelcontextprotocol/protocolVersion": "2026-07-28",
                      "io.modelcontextprotocol/clientCapabilities": {}});
    let tools = proxy.call(1, "tools/list", json!({"_meta": meta}));
    assert!(tools["result"]["tools"].is_array(), "{tools}");
    let seen = proxy.call(
        2,
        "tools/call",
        json!({"name": "headers", "arguments": {"region": "us-west1"}, "_meta": meta}),
    );
    let seen: Value = serde_json::from_str(&text_of(&seen)).unwrap();
    assert_eq!(seen["mcp-protocol-version"], "2026-07-28", "{seen}");
    assert_eq!(seen["mcp-method"], "tools/call");
    assert_eq!(seen["mcp-name"], "headers");
    assert_eq!(seen["mcp-param-region"], "us-west1");
}

/// In the 2026-07-28 era a request is cancelled by closing its stream: a timed-out stateless
/// request through the bridge gets its error, and the server gets no notification.
#[test]
fn a_stateless_request_that_times_out_is_cancelled_by_closing_its_stream() {
    let fixture = HttpFixture::start(&["--stateless"]);
    let mut proxy = bridge(&fixture.url, &["--request-timeout", "300ms"], &[]);
    let meta = json!({"io.modelcontextprotocol/protocolVersion": "2026-07-28",
                      "io.modelcontextprotocol/clientCapabilities": {}});
    let started = Instant::now();
    let answer = proxy.call(
        1,
        "tools/call",
        json!({"name": "sleep", "arguments": {"ms": 2000}, "_meta": meta}),
    );
    assert_eq!(answer["error"]["code"], -32086, "{answer}");
    assert!(started.elapsed() < Duration::from_millis(1500));
    std::thread::sleep(Duration::from_millis(300));
    let cancelled = proxy.call(
        2,
        "tools/call",
        json!({"name": "cancelled", "arguments": {}, "_meta": meta}),
    );
    assert_eq!(
        text_of(&cancelled),
        "[]",
        "no notifications/cancelled in this era"
    );
    // The request's connection was closed: the server dropped the call instead of finishing it.
    std::thread::sleep(Duration::from_millis(2000));
    let slept = proxy.call(
        3,
        "tools/call",
        json!({"name": "slept", "arguments": {}, "_meta": meta}),
    );
    assert_eq!(text_of(&slept), "0", "the abandoned call ran to the end");
}

/// Backpressure through the bridge: 10,000 pipelined calls with room for 100 pending are all
/// answered, each with its own payload (none refused with -32083), in bounded memory.
#[test]
fn past_the_pending_limit_a_pipelining_client_is_slowed_down_not_refused() {
    let fixture = HttpFixture::start(&[]);
    let proxy = bridge(&fixture.url, &["--max-pending-requests", "100"], &[]);
    let peak_kib = support::pipeline_echoes(proxy, 10_000);
    eprintln!(
        "forward stdio --url, 10,000 pipelined calls, 100 pending at most: peak RSS {peak_kib} KiB"
    );
    assert!(peak_kib < 64 * 1024, "peak RSS {peak_kib} KiB");
}

/// The HTTP server dies (SIGKILL) with two calls in flight on resumable SSE streams: each call
/// gets a JSON-RPC error naming the cause (the refused connection) at once, not after the
/// stream's resume attempts have run out, and well within --resume-timeout (5 s by default).
#[test]
fn a_dead_server_fails_the_calls_in_flight_promptly_with_the_cause() {
    let mut fixture = HttpFixture::start(&["--sse"]);
    let mut proxy = bridge(&fixture.url, &[], &[]);
    proxy.initialize();
    for id in [1, 2] {
        proxy.send(
            &json!({"jsonrpc":"2.0","id":id,"method":"tools/call","params":{
            "name":"slow","arguments":{"ms":60_000,"every":100,"ids":true},
            "_meta":{"progressToken":id}}}),
        );
    }
    // Both are in flight: each has reported progress.
    let mut progressed = std::collections::HashSet::new();
    while progressed.len() < 2 {
        let msg = proxy.recv();
        assert_eq!(msg["method"], "notifications/progress", "{msg}");
        progressed.insert(msg["params"]["progressToken"].as_i64().unwrap());
    }
    fixture.kill();
    let killed = Instant::now();
    let mut failed = std::collections::HashMap::new();
    while failed.len() < 2 {
        let msg = proxy.recv();
        if msg["method"] == "notifications/progress" {
            continue;
        }
        failed.insert(msg["id"].as_i64().unwrap(), msg);
    }
    let elapsed = killed.elapsed();
    eprintln!("both calls failed {elapsed:?} after the server died");
    for (id, answer) in &failed {
        assert_eq!(
            answer["error"]["code"],
            -32087,
            "call {id}: {answer}\n{}",
            proxy.stderr_text()
        );
        assert_eq!(
            answer["error"]["data"]["kind"], "connection_refused",
            "call {id}: {answer}"
        );
        let message = answer["error"]["message"].as_str().unwrap();
        assert!(message.contains("refused"), "call {id}: {message}");
    }
    assert!(
        elapsed < Duration::from_secs(4),
        "the errors came {elapsed:?} after the server died"
    );
    proxy.close_stdin();
    assert_eq!(proxy.wait_exit(Duration::from_secs(10)).code(), Some(0));
}

/// A `--url` whose path is wrong (404 before any session) is said to be one, not "the upstream
/// no longer knows this session"; a 401 comes with the upstream's body and a hint at
/// `--bearer-token-env`, or at the token sent being refused.
#[test]
fn a_wrong_url_path_and_a_refused_token_say_what_to_fix() {
    let fixture = HttpFixture::start(&["--token", "right-token-123"]);
    let initialize = json!({"protocolVersion": "2025-06-18", "capabilities": {},
        "clientInfo": {"name": "t", "version": "0"}});
    let message = |proxy: &mut Proxy| {
        let answer = proxy.call(0, "initialize", initialize.clone());
        answer["error"]["message"]
            .as_str()
            .unwrap_or_else(|| panic!("{answer}"))
            .to_owned()
    };
    let wrong = fixture.url.replace("/mcp", "/wrong");
    let mut proxy = bridge(&wrong, &[], &[]);
    let said = message(&mut proxy);
    assert_eq!(
        said,
        format!(
            "the upstream answered HTTP 404 Not Found; {wrong} has no MCP endpoint: check the \
             URL's path (servers usually serve /mcp)"
        )
    );
    proxy.close_stdin();
    let _ = proxy.wait_exit(Duration::from_secs(10));
    assert!(
        !proxy.stderr_text().contains("no longer knows"),
        "{}",
        proxy.stderr_text()
    );

    let mut proxy = bridge(&fixture.url, &[], &[]);
    assert_eq!(
        message(&mut proxy),
        "the upstream answered HTTP 401 Unauthorized: missing or bad bearer token; it wants \
         credentials: give a token with --bearer-token-env VAR or --bearer-token-file FILE \
         (docs/auth.md)"
    );
    drop(proxy);
    let mut proxy = bridge(
        &fixture.url,
        &["--bearer-token-env", "TEST_UPSTREAM_TOKEN"],
        &[("TEST_UPSTREAM_TOKEN", "wrong-token-456")],
    );
    let said = message(&mut proxy);
    assert!(
        said.starts_with("the upstream answered HTTP 401 Unauthorized: missing or bad bearer token; it refused the credentials sent"),
        "{said}"
    );
    drop(proxy);
    let mut proxy = bridge(
        &fixture.url,
        &["--bearer-token-env", "TEST_UPSTREAM_TOKEN"],
        &[("TEST_UPSTREAM_TOKEN", "right-token-123")],
    );
    let answer = proxy.call(0, "initialize", initialize.clone());
    assert!(answer.get("result").is_some(), "{answer}");
}
