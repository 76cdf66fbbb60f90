//! Real MCP SDK peers through `shadowcat reverse`: Python SDK clients (2.3.0 in `legacy`, `auto`
//! and `2026-07-28` modes, and 1.30.0) over Streamable HTTP, to Python SDK servers over HTTP
//! (stateful, stateless, SSE and JSON answers) and over stdio (a child per session). The
//! scenario includes sampling, progress and logging. Each client prints a
//! normalised summary of its session; through the gateway it must equal the summary without it.
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

use support::Gateway;
use support::python;
use support::sdk::{
    HttpServer, Target, check_elicitation_and_list_changed, check_progress_and_logs, check_summary,
    run_client, server_script,
};

/// Clients of both SDKs against an HTTP server, directly and through a gateway; identical.
fn http_upstream(server_sdk: &str, flags: &[&str]) {
    let server = HttpServer::start(server_sdk, flags);
    let gateway = Gateway::start(&["--upstream", &server.url]);
    // Servers without a back-channel (stateless, or JSON-only answers) can't send the client a
    // sampling request, directly or not.
    let sampling = flags.is_empty();
    for (sdk, mode) in [("2.3.0", Some("legacy")), ("1.30.0", None)] {
        let direct = run_client(sdk, mode, Target::Url(&server.url), sampling);
        let proxied = run_client(sdk, mode, Target::Url(&gateway.url()), sampling);
        check_summary(&proxied, sampling);
        if sampling {
            check_elicitation_and_list_changed(&proxied);
        }
        assert_eq!(
            direct, proxied,
            "client {sdk} {mode:?} vs server {server_sdk} {flags:?}: different through shadowcat"
        );
    }
}

#[test]
fn sdk_2_3_http_server_with_sse_answers() {
    http_upstream("2.3.0", &[]);
    // Progress and logs of a call travel on its stream.
    let server = HttpServer::start("2.3.0", &[]);
    let gateway = Gateway::start(&["--upstream", &server.url]);
    check_progress_and_logs(&run_client(
        "2.3.0",
        Some("legacy"),
        Target::Url(&gateway.url()),
        true,
    ));
}

#[test]
fn sdk_2_3_http_server_with_json_answers() {
    http_upstream("2.3.0", &["--json"]);
}

#[test]
fn sdk_2_3_stateless_http_server() {
    http_upstream("2.3.0", &["--stateless"]);
    http_upstream("2.3.0", &["--stateless", "--json"]);
}

#[test]
fn sdk_1_30_http_server() {
    http_upstream("1.30.0", &[]);
    http_upstream("1.30.0", &["--json"]);
    http_upstream("1.30.0", &["--stateless"]);
}

#[test]
fn sdk_servers_over_stdio_behind_the_gateway() {
    for server_sdk in ["2.3.0", "1.30.0"] {
        let command = vec![python(server_sdk), server_script(server_sdk)];
        let mut opts: Vec<&str> = vec!["--"];
        opts.extend(command.iter().map(String::as_str));
        let gateway = Gateway::start(&opts);
        same_as_running_the_server(&gateway, &command);
    }
}

/// Clients of both SDKs get the whole scenario through `gateway` (in front of `command`), the
/// same as running the server themselves.
fn same_as_running_the_server(gateway: &Gateway, command: &[String]) {
    for (sdk, mode) in [("2.3.0", Some("legacy")), ("1.30.0", None)] {
        let direct = run_client(sdk, mode, Target::Stdio(command), true);
        let proxied = run_client(sdk, mode, Target::Url(&gateway.url()), true);
        check_summary(&proxied, true);
        check_progress_and_logs(&proxied);
        check_elicitation_and_list_changed(&proxied);
        assert_eq!(
            direct, proxied,
            "client {sdk} {mode:?} vs {command:?}: different through shadowcat"
        );
    }
}

/// 2.3.0 clients in `auto` and `2026-07-28` modes through `gateway` get what they get from
/// `direct`, the stateless era, while a 1.30.0 client (handshake era) uses the gateway at once.
fn stateless_and_legacy_clients_at_once(gateway: &Gateway, direct: Target<'_>) {
    let url = gateway.url();
    let legacy = {
        let url = url.clone();
        std::thread::spawn(move || run_client("1.30.0", None, Target::Url(&url), true))
    };
    for mode in ["auto", "2026-07-28"] {
        let alone = run_client("2.3.0", Some(mode), direct, true);
        let proxied = run_client("2.3.0", Some(mode), Target::Url(&url), true);
        check_summary(&proxied, true);
        check_elicitation_and_list_changed(&proxied);
        assert!(
            proxied.contains("\"protocolVersion\":\"2026-07-28\""),
            "{proxied}"
        );
        assert_eq!(alone, proxied, "mode {mode}: different through shadowcat");
    }
    let legacy = legacy.join().unwrap();
    check_summary(&legacy, true);
    check_progress_and_logs(&legacy);
    check_elicitation_and_list_changed(&legacy);
    assert!(!legacy.contains("2026-07-28"), "{legacy}");
}

/// The stateless era through the gateway: `auto` (which probes with a 2026-07-28
/// `server/discover` first) and a pinned `2026-07-28` client against a 2.3.0 server get exactly
/// what they get directly, while a legacy 1.30.0 client uses the same gateway at the same time.
#[test]
fn sdk_2_3_stateless_era_clients_and_a_legacy_client_share_the_gateway() {
    let server = HttpServer::start("2.3.0", &[]);
    let gateway = Gateway::start(&["--upstream", &server.url]);
    stateless_and_legacy_clients_at_once(&gateway, Target::Url(&server.url));

    // Against a handshake-era server, auto falls back to initialize, as it does directly.
    let server = HttpServer::start("1.30.0", &[]);
    let gateway = Gateway::start(&["--upstream", &server.url]);
    let direct = run_client("2.3.0", Some("auto"), Target::Url(&server.url), true);
    let proxied = run_client("2.3.0", Some("auto"), Target::Url(&gateway.url()), true);
    assert_eq!(direct, proxied);
}

/// The stateless era to a command upstream: `auto` and `2026-07-28` clients through the gateway
/// to a 2.3.0 stdio server (one child shared by every stateless request) get what they get
/// running the server themselves, while a 1.30.0 client has a session (and a child) of its own
/// at the same time. Against a handshake-era child, `auto` falls back to initialize.
#[test]
fn sdk_2_3_stateless_era_clients_reach_stdio_servers() {
    let command = vec![python("2.3.0"), server_script("2.3.0")];
    let mut opts: Vec<&str> = vec!["--"];
    opts.extend(command.iter().map(String::as_str));
    let gateway = Gateway::start(&opts);
    stateless_and_legacy_clients_at_once(&gateway, Target::Stdio(&command));
    assert_eq!(
        gateway
            .stderr_text()
            .matches("started an MCP server for stateless (2026-07-28) requests")
            .count(),
        1,
        "one shared child for the stateless requests"
    );

    let command = vec![python("1.30.0"), server_script("1.30.0")];
    let mut opts: Vec<&str> = vec!["--"];
    opts.extend(command.iter().map(String::as_str));
    let gateway = Gateway::start(&opts);
    let direct = run_client("2.3.0", Some("auto"), Target::Stdio(&command), true);
    let proxied = run_client("2.3.0", Some("auto"), Target::Url(&gateway.url()), true);
    assert_eq!(direct, proxied, "auto against a handshake-era child");
}

/// A 2024-11-05 HTTP+SSE client (mcp 1.30.0's `sse_client`) through the gateway gets what a
/// Streamable HTTP client gets directly, from an HTTP upstream and from a stdio one.
#[test]
fn a_legacy_sse_client_reaches_http_and_stdio_upstreams() {
    let server = HttpServer::start("2.3.0", &[]);
    let gateway = Gateway::start(&["--upstream", &server.url]);
    let sse_url = format!("http://{}/sse", gateway.addr);
    let direct = run_client("1.30.0", None, Target::Url(&server.url), true);
    let proxied = run_client("1.30.0", None, Target::Sse(&sse_url), true);
    check_summary(&proxied, true);
    check_progress_and_logs(&proxied);
    assert_eq!(direct, proxied, "legacy SSE client vs HTTP upstream");

    let command = vec![python("1.30.0"), server_script("1.30.0")];
    let mut opts: Vec<&str> = vec!["--"];
    opts.extend(command.iter().map(String::as_str));
    let gateway = Gateway::start(&opts);
    let sse_url = format!("http://{}/sse", gateway.addr);
    let direct = run_client("1.30.0", None, Target::Stdio(&command), true);
    let proxied = run_client("1.30.0", None, Target::Sse(&sse_url), true);
    assert_eq!(direct, proxied, "legacy SSE client vs stdio upstream");
}

/// Streamable HTTP clients through the gateway to a 2024-11-05 HTTP+SSE server
/// (`mcp.sse_app()`): the gateway's back-compat probe finds it, and each session gets its own
/// stream there. The results equal a legacy SSE client's talking to it directly.
#[test]
fn streamable_http_clients_reach_a_legacy_sse_upstream() {
    let server = HttpServer::start("1.30.0", &["--legacy-sse"]);
    let sse_url = server.url.replace("/mcp", "/sse");
    let gateway = Gateway::start(&["--upstream", &sse_url]);
    let direct = run_client("1.30.0", None, Target::Sse(&sse_url), true);
    let proxied = run_client("1.30.0", None, Target::Url(&gateway.url()), true);
    check_summary(&proxied, true);
    check_progress_and_logs(&proxied);
    assert_eq!(direct, proxied, "1.30.0 client");
    // An old client at the gateway's own /sse, to the old server behind it.
    let gateway_sse = format!("http://{}/sse", gateway.addr);
    let both_old = run_client("1.30.0", None, Target::Sse(&gateway_sse), true);
    assert_eq!(direct, both_old, "HTTP+SSE on both sides");
    // A 2.3.0 client too (its summary names its own SDK; everything else must match).
    let without_client = |summary: &str| {
        let mut value: serde_json::Value = serde_json::from_str(summary).unwrap();
        value.as_object_mut().unwrap().remove("client");
        value
    };
    let proxied = run_client("2.3.0", Some("legacy"), Target::Url(&gateway.url()), true);
    assert_eq!(
        without_client(&direct),
        without_client(&proxied),
        "2.3.0 client"
    );
    assert!(
        gateway
            .stderr_text()
            .contains("2024-11-05 HTTP+SSE transport"),
        "the probe's finding is logged"
    );
}

/// `@modelcontextprotocol/server-everything` (the reference server, on Node) as the command
/// behind the gateway, as the README shows: both SDKs' clients get what they get from it over
/// stdio directly.
#[test]
fn server_everything_behind_the_gateway() {
    everything_behind_the_gateway(&[]);
}

/// Both SDKs' clients get from server-everything behind a gateway started with `flags` what
/// they get from it directly.
fn everything_behind_the_gateway(flags: &[&str]) {
    let entry =
        support::peers().join("node_modules/@modelcontextprotocol/server-everything/dist/index.js");
    assert!(
        entry.exists(),
        "{} is missing: run scripts/test.sh",
        entry.display()
    );
    let command = vec![
        "node".to_owned(),
        entry.display().to_string(),
        "stdio".to_owned(),
    ];
    let mut opts: Vec<&str> = flags.to_vec();
    opts.push("--");
    opts.extend(command.iter().map(String::as_str));
    let gateway = Gateway::start(&opts);
    for (sdk, mode) in [("2.3.0", Some("legacy")), ("1.30.0", None)] {
        let direct = run_client(sdk, mode, Target::Stdio(&command), false);
        let proxied = run_client(sdk, mode, Target::Url(&gateway.url()), false);
        check_summary(&proxied, false);
        assert_eq!(
            direct, proxied,
            "client {sdk} {mode:?} vs server-everything: different through shadowcat"
        );
    }
}

/// The Python SDK's HTTP server is killed and started again (same port) mid-session: it has
/// forgotten the session. The gateway re-establishes it there (the client's handshake
/// replayed) and the client's next calls succeed under the session id it already has.
#[test]
fn a_restarted_sdk_server_gets_the_gateways_session_back() {
    use serde_json::json;
    let server = HttpServer::start("2.3.0", &[]);
    let port = server.port();
    let gateway = Gateway::start(&["--upstream", &server.url]);
    let session = gateway.initialize();
    let echo = |id: i64, text: &str| {
        let r = gateway.post(
            Some(&session),
            &json!({"jsonrpc":"2.0","id":id,"method":"tools/call","params":{"name":"echo","arguments":{"text":text}}}),
        );
        assert_eq!(r.status, 200, "{r:?}");
        let answer = r
            .messages()
            .into_iter()
            .find(|m| m["id"] == id)
            .unwrap_or_else(|| panic!("no answer: {r:?}"));
        assert_eq!(answer["result"]["content"][0]["text"], text, "{answer}");
    };
    echo(1, "before");
    drop(server);
    let _server = HttpServer::start("2.3.0", &["--port", &port]);
    echo(2, "after the restart");
    echo(3, "and after that");
    assert!(
        gateway.stderr_text().contains("re-established it"),
        "{}",
        gateway.stderr_text()
    );
}

/// A server made with the official Rust SDK (`examples/rmcp_server.rs`) as the command behind
/// the gateway: both Python SDK clients get what they get from it over stdio directly.
#[test]
fn an_rmcp_server_behind_the_gateway() {
    let command = vec![support::rmcp_server().display().to_string()];
    let gateway = Gateway::start(&["--", &command[0]]);
    for (sdk, mode) in [("2.3.0", Some("legacy")), ("1.30.0", None)] {
        let direct = run_client(sdk, mode, Target::Stdio(&command), false);
        let proxied = run_client(sdk, mode, Target::Url(&gateway.url()), false);
        check_summary(&proxied, false);
        let summary: serde_json::Value = serde_json::from_str(&proxied).unwrap();
        assert_eq!(
            summary["calls"]["add"]["content"][0]["text"], "42",
            "{proxied}"
        );
        assert_eq!(
            direct, proxied,
            "client {sdk} {mode:?} vs the rmcp server: different through shadowcat"
        );
    }
}

/// `Mcp-Param-*` mirroring against a server that checks it: the Python SDK's HTTP server, whose
/// `regional` tool marks `region` `x-mcp-header: Region`, refuses a 2026-07-28 call whose
/// header differs from the argument (shown directly first, so the check is live). Through the
/// gateway, once it has seen the tool in a `tools/list` answer, the header goes upstream as the
/// forwarded body says: a rule rewrites the argument, and the server accepts the call with the
/// rewritten value (the client's header would have been refused).
#[test]
fn mcp_param_headers_reach_the_python_server_as_the_forwarded_body_says() {
    use serde_json::{Value, json};
    use support::{http_request, mcp_headers, modern_call};
    let server = HttpServer::start("2.3.0", &["--mirrored"]);
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules.yaml");
    std::fs::write(
        &rules,
        "version: 1\nrules:\n  - name: no-moon\n    match:\n      tool: regional\n      params: [{path: \"$.arguments.region\", equals: moon}]\n    modify: {set: {\"$.arguments.region\": eu-central}}\n",
    )
    .unwrap();
    let gateway = Gateway::start(&[
        "--upstream",
        &server.url,
        "--rules",
        rules.to_str().unwrap(),
    ]);
    let regional = |addr: &str, path: &str, id: i64, region: &str, header: &str| -> Value {
        let (mut headers, body) = modern_call(id, "regional", json!({"region": region}), json!({}));
        headers.push(("Mcp-Param-Region", header.to_owned()));
        let r = http_request(addr, "POST", path, &headers, &body);
        r.messages()
            .into_iter()
            .find(|m| m["id"] == id)
            .unwrap_or_else(|| panic!("no answer: {r:?}"))
    };
    let server_addr = server
        .url
        .trim_start_matches("http://")
        .trim_end_matches("/mcp")
        .to_owned();
    // The server itself checks the header against the argument.
    let refused = regional(&server_addr, "/mcp", 1, "moon", "mars");
    assert_eq!(refused["error"]["code"], -32020, "{refused}");
    let direct = regional(&server_addr, "/mcp", 2, "eu-west", "eu-west");
    assert_eq!(
        direct["result"]["content"][0]["text"], "region eu-west",
        "{direct}"
    );
    // Through the gateway: it learns the tool's mirrored parameters from tools/list.
    let list = json!({"jsonrpc":"2.0","id":3,"method":"tools/list","params":{"_meta":{
        "io.modelcontextprotocol/protocolVersion":"2026-07-28",
        "io.modelcontextprotocol/clientCapabilities":{}}}});
    let headers = mcp_headers(&[
        ("MCP-Protocol-Version", "2026-07-28"),
        ("Mcp-Method", "tools/list"),
    ]);
    let r = http_request(
        &gateway.addr,
        "POST",
        "/mcp",
        &headers,
        list.to_string().as_bytes(),
    );
    let tools = r
        .messages()
        .into_iter()
        .find(|m| m["id"] == 3)
        .unwrap_or_else(|| panic!("{r:?}"));
    let schema = tools["result"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "regional")
        .unwrap_or_else(|| panic!("{tools}"))["inputSchema"]
        .clone();
    assert_eq!(
        schema["properties"]["region"]["x-mcp-header"], "Region",
        "{schema}"
    );
    let same = regional(&gateway.addr, "/mcp", 4, "eu-west", "eu-west");
    assert_eq!(
        same["result"]["content"][0]["text"], "region eu-west",
        "{same}"
    );
    let rewritten = regional(&gateway.addr, "/mcp", 5, "moon", "moon");
    assert_eq!(
        rewritten["result"]["content"][0]["text"],
        "region eu-central",
        "{rewritten}\n{}",
        gateway.stderr_text()
    );
}

/// A warm pool in front of a Python SDK server (`--pool-min-idle 2`): both SDKs' clients get
/// the whole scenario (sampling, progress, logs, elicitation) from sessions whose processes
/// were started before they came, exactly as running the server themselves.
#[test]
fn sdk_sessions_are_served_by_warm_spares() {
    let command = vec![python("2.3.0"), server_script("2.3.0")];
    let mut opts: Vec<&str> = vec!["--pool-min-idle", "2", "--"];
    opts.extend(command.iter().map(String::as_str));
    let gateway = Gateway::start(&opts);
    let started = |gateway: &Gateway| {
        gateway
            .stderr_text()
            .matches("started an MCP server process")
            .count()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while started(&gateway) < 2 {
        assert!(std::time::Instant::now() < deadline, "no spares started");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    same_as_running_the_server(&gateway, &command);
    let log = gateway.stderr_text();
    assert_eq!(log.matches("spare=true").count(), 2, "{log}");
    assert!(!log.contains("spare=false"), "{log}");
}

/// `--share always`: 50 Python SDK sessions at once on one server process. Each gets only its
/// own answers, progress and sampling requests; a sampling request made while two sessions
/// have calls in flight is refused (-32094), never handed to either (tests/peers/share_client.py
/// checks each of these and exits 1 if one fails).
#[test]
fn fifty_sdk_sessions_share_one_server_process() {
    let command = [python("2.3.0"), server_script("2.3.0")];
    let mut opts: Vec<&str> = vec![
        "--share",
        "always",
        "--max-sessions-per-client",
        "60",
        "--log-level",
        "info",
        "--",
    ];
    opts.extend(command.iter().map(String::as_str));
    let gateway = Gateway::start(&opts);
    let out = std::process::Command::new(python("1.30.0"))
        .arg(support::peers().join("share_client.py"))
        .arg(gateway.url())
        .arg("50")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{stdout}\n{stderr}\n{}",
        gateway.stderr_text()
    );
    let summary: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(summary["own_answers_and_progress"], 50, "{summary}");
    assert_eq!(summary["own_sampling"], 50, "{summary}");
    assert_eq!(summary["held_then_answered"], true, "{summary}");
    assert!(
        summary["ambiguous"]
            .to_string()
            .contains("cannot tell which one"),
        "{summary}"
    );
    let log = gateway.stderr_text();
    assert_eq!(
        log.matches("started a shared MCP server").count(),
        1,
        "{log}"
    );
    assert_eq!(
        log.matches("the session is on a shared MCP server").count(),
        50
    );
}

/// `--share always` is faithful: both SDKs' clients, one after the other on the same shared
/// process (the second gets the first's `initialize` answer), get the whole scenario
/// (sampling, elicitation, progress, logs, list-changed) exactly as running the server
/// themselves; and so against the reference server.
#[test]
fn shared_server_processes_are_faithful() {
    let command = vec![python("2.3.0"), server_script("2.3.0")];
    let mut opts: Vec<&str> = vec!["--share", "always", "--log-level", "info", "--"];
    opts.extend(command.iter().map(String::as_str));
    let gateway = Gateway::start(&opts);
    same_as_running_the_server(&gateway, &command);
    let log = gateway.stderr_text();
    // Each client asks for its own protocol version; sessions asking for the same one share.
    let started = log.matches("started a shared MCP server").count();
    let sessions = log.matches("the session is on a shared MCP server").count();
    assert!((1..=2).contains(&started), "{log}");
    assert!(
        sessions > started,
        "sessions were not put on a running process: {log}"
    );
    everything_behind_the_gateway(&["--share", "always"]);
}

/// `reverse --restart on-failure` with the Python SDK server (which refuses calls before
/// `initialize`): the test kills the session's server between two calls of one SDK client
/// session over Streamable HTTP; the second call is answered by a new process that was given
/// the session's handshake, under the same session id, and the client never knows. So with a
/// process of its own and with a shared one (`--share always`).
#[test]
fn an_sdk_client_keeps_its_gateway_session_across_a_crash_of_its_server() {
    use std::process::Stdio;
    for share in ["stateless", "always"] {
        let mut opts: Vec<&str> = vec![
            "--restart",
            "on-failure",
            "--share",
            share,
            "--log-level",
            "info",
            "--",
        ];
        let command = [python("2.3.0"), server_script("2.3.0")];
        opts.extend(command.iter().map(String::as_str));
        let gateway = Gateway::start(&opts);
        let client = std::process::Command::new(python("1.30.0"))
            .arg(support::peers().join("restart_client.py"))
            .args(["--url", &gateway.url()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let the_server = |_: &std::process::Child| {
            let servers: Vec<i32> = support::live_children(gateway.child.id())
                .into_iter()
                .filter(|pid| {
                    std::fs::read_to_string(format!("/proc/{pid}/cmdline"))
                        .is_ok_and(|c| c.contains("sdk_server_v2.py"))
                })
                .collect();
            assert_eq!(servers.len(), 1, "{share}: {servers:?}");
            servers[0]
        };
        let (ready, after) = support::sdk::kill_between_calls(
            client,
            the_server,
            |_| {
                let log = gateway.stderr_text();
                log.contains("restarted the session's MCP server")
                    || log.contains("restarted the shared MCP server")
            },
            || gateway.stderr_text(),
        );
        assert!(ready["session"].is_string(), "{share}: {ready}");
        assert_eq!(after["session"], ready["session"], "{share}");
    }
}
