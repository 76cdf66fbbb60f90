//! Rate limits through the real binary, with a real MCP client (Python SDK 2.3.0) and server
//! (the Python SDK server, over stdio): a client hammering a tool through `shadowcat reverse`
//! gets 429s with `Retry-After` while a second client is unaffected; through `forward stdio` the
//! refusals are JSON-RPC errors and never reach the server; a spoofed `X-Forwarded-For` from an
//! untrusted peer changes nothing.

#![allow(
    clippy::pedantic,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::disallowed_types
)]

mod support;

use std::process::Command;

use serde_json::Value;
use support::sdk::server_script;
use support::{Gateway, http_request, peers, python};

/// `ratelimit_client.py` with `args`, to run.
fn client_command(args: &[&str]) -> Command {
    let mut cmd = Command::new(python("2.3.0"));
    cmd.arg(peers().join("ratelimit_client.py")).args(args);
    cmd
}

/// Runs the client; its summary.
fn summary(mut cmd: Command) -> Value {
    let output = cmd.output().unwrap();
    assert!(
        output.status.success(),
        "client failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

/// Runs `ratelimit_client.py` with `args`; its summary.
fn client(args: &[&str]) -> Value {
    summary(client_command(args))
}

/// A gateway with `limits` in front of the Python SDK server (a child per session).
fn gateway(extra: &[&str]) -> Gateway {
    let python = python("2.3.0");
    let server = server_script("2.3.0");
    let mut opts: Vec<&str> = vec!["--session-store", "memory", "--admin-listen", "127.0.0.1:0"];
    opts.extend(extra);
    opts.extend(["--", &python, &server]);
    Gateway::start(&opts)
}

/// How many calls passed, and the refusals' errors.
fn outcomes(summary: &Value) -> (usize, Vec<Value>) {
    let calls = summary["calls"].as_array().unwrap();
    let passed = calls.iter().filter(|c| c["ok"] == true).count();
    let errors = calls
        .iter()
        .filter_map(|c| c.get("error").cloned())
        .collect();
    (passed, errors)
}

/// The POSTs answered 429.
fn too_many(summary: &Value) -> Vec<Value> {
    summary["posts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["status"] == 429)
        .cloned()
        .collect()
}

/// Checks a refusal: the documented error, with a retry hint within the limit's interval.
fn check_refusal(error: &Value, limit: &str, max_ms: u64) {
    assert_eq!(error["code"], -32092, "{error}");
    let data = &error["data"];
    assert_eq!(data["shadowcat"], "rate_limited", "{error}");
    assert_eq!(data["limit"], limit, "{error}");
    let retry = data["retryAfterMs"].as_u64().unwrap();
    assert!(retry > 0 && retry <= max_ms, "{error}");
}

fn admin_metrics(gw: &Gateway) -> String {
    let admin = gw.admin_addr();
    let response = http_request(&admin, "GET", "/metrics", &[], b"");
    assert_eq!(response.status, 200);
    String::from_utf8(response.body).unwrap()
}

#[test]
fn reverse_answers_429_to_the_hammering_client_only() {
    // Three calls at once, then one every 20 s: the test is over long before the next.
    let gw = gateway(&[
        "--rate-limit",
        "client=3/min,burst=3,method=tools/call,name=calls",
    ]);
    let hammer = client(&["--calls", "8", "--url", &gw.url()]);
    let (passed, errors) = outcomes(&hammer);
    assert_eq!(passed, 3, "exactly the burst passes: {hammer}");
    assert_eq!(errors.len(), 5, "{hammer}");
    for error in &errors {
        check_refusal(error, "calls", 20_000);
    }
    let refused = too_many(&hammer);
    assert_eq!(refused.len(), 5, "each refusal is a 429: {hammer}");
    for post in &refused {
        let retry: u64 = post["retry_after"].as_str().unwrap().parse().unwrap();
        assert!((1..=20).contains(&retry), "{post}");
        assert_eq!(post["ratelimit_policy"], "\"calls\";q=3;w=60", "{post}");
        assert_eq!(
            post["ratelimit"],
            format!("\"calls\";r=0;t={retry}"),
            "{post}"
        );
    }

    // Another client (another address) has its own budget, untouched.
    let other = client(&[
        "--calls",
        "3",
        "--url",
        &gw.url(),
        "--local-address",
        "127.0.0.2",
    ]);
    assert_eq!(outcomes(&other), (3, vec![]), "{other}");
    assert!(too_many(&other).is_empty(), "{other}");

    let metrics = admin_metrics(&gw);
    for needle in [
        r#"shadowcat_rate_limit_checks_total{limit="calls",key="client",outcome="allowed"} 6"#,
        r#"shadowcat_rate_limit_checks_total{limit="calls",key="client",outcome="refused"} 5"#,
        r#"shadowcat_rate_limit_keys{limit="calls"} 2"#,
    ] {
        assert!(
            metrics.contains(needle),
            "{needle} missing from:\n{metrics}"
        );
    }
}

#[test]
fn a_spoofed_forwarded_for_from_an_untrusted_peer_changes_nothing() {
    let limit = "client=3/min,burst=3,method=tools/call";
    let gw = gateway(&["--rate-limit", limit]);
    let spoofer = client(&["--calls", "6", "--url", &gw.url(), "--spoof-xff"]);
    assert_eq!(
        outcomes(&spoofer).0,
        3,
        "keyed on the socket's address: {spoofer}"
    );
    assert_eq!(too_many(&spoofer).len(), 3, "{spoofer}");

    // The same client behind a gateway that trusts its address: each request is believed to
    // come from somewhere else, so none is limited.
    let trusting = gateway(&["--rate-limit", limit, "--trusted-proxy", "127.0.0.0/8"]);
    let believed = client(&["--calls", "6", "--url", &trusting.url(), "--spoof-xff"]);
    assert_eq!(outcomes(&believed), (6, vec![]), "{believed}");
}

#[test]
fn forward_stdio_answers_json_rpc_errors_and_forwards_nothing_refused() {
    let dir = tempfile::tempdir().unwrap();
    let reached = dir.path().join("calls.log");
    let python = python("2.3.0");
    let server = server_script("2.3.0");
    let shadowcat = support::shadowcat();
    let mut cmd = client_command(&["--calls", "5", "--"]);
    cmd.arg(&shadowcat)
        .args([
            "forward",
            "stdio",
            "--session-store",
            "memory",
            "--rate-limit",
            "tool=2/min,burst=2",
            "--",
            &python,
            &server,
        ])
        .env("PEER_CALL_LOG", &reached);
    let summary = summary(cmd);
    let (passed, errors) = outcomes(&summary);
    assert_eq!(passed, 2, "{summary}");
    assert_eq!(errors.len(), 3, "{summary}");
    for error in &errors {
        check_refusal(error, "tool", 30_000);
    }
    let reached = std::fs::read_to_string(&reached).unwrap_or_default();
    assert_eq!(
        reached.lines().count(),
        2,
        "only the calls let through reach the server:\n{reached}"
    );
}

#[test]
fn bad_limits_are_refused_before_anything_starts() {
    for (limit, says) in [
        ("client=10", "is not a rate"),
        ("everyone=10/s", "is not what a limit can be per"),
        ("client=10/s,burst=0", "burst must be"),
    ] {
        let output = support::command()
            .args(["forward", "stdio", "--rate-limit", limit, "--", "true"])
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(2), "{limit}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains("invalid --rate-limit") && stderr.contains(says),
            "{limit}: {stderr}"
        );
    }
    let output = support::command()
        .args(["reverse", "--trusted-proxy", "proxy.local", "--", "true"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("invalid --trusted-proxy"));
}
