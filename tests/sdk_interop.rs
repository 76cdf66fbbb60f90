//! Real MCP SDK peers through `shadowcat forward stdio`: the Python SDK 2.3.0 (client modes
//! `legacy` and `auto`) and 1.30.0, against Python SDK servers of both versions and the npm
//! `@modelcontextprotocol/server-everything`. Each client prints a normalised summary of the
//! session (server info, negotiated version, tools, call results, a sampling round trip); the
//! summary through shadowcat must equal the summary without it, byte for byte.
//!
//! The peers are installed by `scripts/test.sh` (pinned). Without them these tests fail with
//! instructions rather than skip.

// Test code: panics are the failure report, and wall-clock time of real processes is measured
// with std's Instant on purpose.
#![allow(
    clippy::pedantic,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::disallowed_types
)]

mod support;

use std::process::Command;

use support::{peers, python};

#[derive(Clone, Copy, Debug)]
enum Server {
    PythonV2,
    PythonV1,
    Everything,
}

fn server_command(server: Server) -> Vec<String> {
    let peers = peers();
    match server {
        Server::PythonV2 => vec![
            python("2.3.0"),
            peers.join("sdk_server_v2.py").display().to_string(),
        ],
        Server::PythonV1 => vec![
            python("1.30.0"),
            peers.join("sdk_server_v1.py").display().to_string(),
        ],
        Server::Everything => {
            let entry =
                peers.join("node_modules/@modelcontextprotocol/server-everything/dist/index.js");
            assert!(
                entry.exists(),
                "{} is missing: run scripts/test.sh",
                entry.display()
            );
            vec!["node".into(), entry.display().to_string(), "stdio".into()]
        }
    }
}

/// Runs the SDK client against `server`, directly or through shadowcat; returns its summary line.
fn run_client(sdk: &str, mode: Option<&str>, server: Server, through_proxy: bool) -> String {
    let mut cmd = Command::new(python(sdk));
    // The client starts shadowcat with its own environment: keep no session history.
    cmd.env("SHADOWCAT_SESSION_STORE", "memory");
    cmd.arg(peers().join("sdk_client.py"));
    if let Some(mode) = mode {
        cmd.args(["--mode", mode]);
    }
    cmd.args(["--timeout", "60", "--"]);
    if through_proxy {
        cmd.arg(support::shadowcat())
            .args(["forward", "stdio", "--"]);
    }
    cmd.args(server_command(server));
    let output = cmd.output().expect("run the SDK client");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "client {sdk} {mode:?} vs {server:?} (proxy: {through_proxy}) failed: {}\n{stderr}",
        output.status
    );
    String::from_utf8(output.stdout).expect("utf-8 summary")
}

fn assert_same_through_proxy(sdk: &str, mode: Option<&str>, server: Server) {
    let direct = run_client(sdk, mode, server, false);
    let proxied = run_client(sdk, mode, server, true);
    let summary: serde_json::Value = serde_json::from_str(&proxied).expect("summary is JSON");
    assert!(
        summary["tools"].as_array().is_some_and(|t| !t.is_empty()),
        "no tools listed: {proxied}"
    );
    assert!(
        summary["calls"]["echo"].is_object(),
        "echo was not called: {proxied}"
    );
    assert_eq!(
        direct, proxied,
        "client {sdk} {mode:?} vs {server:?}: different results through shadowcat"
    );
}

#[test]
fn sdk_2_3_legacy_client() {
    for server in [Server::PythonV2, Server::PythonV1, Server::Everything] {
        assert_same_through_proxy("2.3.0", Some("legacy"), server);
    }
}

#[test]
fn sdk_2_3_auto_client() {
    for server in [Server::PythonV2, Server::PythonV1, Server::Everything] {
        assert_same_through_proxy("2.3.0", Some("auto"), server);
    }
}

#[test]
fn sdk_1_30_client() {
    for server in [Server::PythonV1, Server::PythonV2, Server::Everything] {
        assert_same_through_proxy("1.30.0", None, server);
    }
}

#[test]
fn a_sampling_request_from_a_real_sdk_server_round_trips() {
    // The 1.30 client against the 1.30 server speaks 2025-11-25, where `ask` is a real
    // server→client sampling/createMessage request in the middle of a tools/call.
    let summary: serde_json::Value =
        serde_json::from_str(&run_client("1.30.0", None, Server::PythonV1, true)).unwrap();
    assert_eq!(summary["sampling"]["answer"], "42 (from client)");
    assert_eq!(
        summary["calls"]["ask"]["content"][0]["text"],
        "42 (from client)"
    );
}

/// `--restart on-failure` with a Python SDK server, which refuses calls before `initialize`:
/// the test kills the server between two calls of one SDK client session; the second call is
/// answered by a new server process that was given the client's handshake again, and the
/// client never knows.
#[test]
fn an_sdk_session_survives_a_crash_of_its_server() {
    use std::process::Stdio;
    let shadowcat = support::shadowcat();
    let server = server_command(Server::PythonV2);
    let mut client = Command::new(python("1.30.0"));
    support::hermetic(&mut client);
    let client = client
        .arg(peers().join("restart_client.py"))
        .arg("--")
        .arg(&shadowcat)
        .args([
            "--log-level",
            "info",
            "forward",
            "stdio",
            "--restart",
            "on-failure",
            "--",
        ])
        .args(&server)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The server: the one child of shadowcat (the client's child) that is not its reaper.
    let the_server = |client: &std::process::Child| {
        let proxy = support::live_children(client.id())[0];
        let servers = support::live_children(proxy as u32);
        assert_eq!(servers.len(), 1, "{servers:?}");
        servers[0]
    };
    support::sdk::kill_between_calls(
        client,
        the_server,
        |log| log.contains("restarted the MCP server"),
        String::new,
    );
}
