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
    // Still serving: the next request gets its own answer.
    let again = proxy.call(1, "ping", json!({}));
    assert_eq!(again["error"]["code"], -32087);
    proxy.close_stdin();
    assert_eq!(proxy.wait_exit(Duration::from_secs(10)).code(), Some(0));
}

#[test]
fn bad_bridge_options_are_refused_clearly() {
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);
    let cases: [Case<'_>; 6] = [
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
            "cannot be used with",
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
