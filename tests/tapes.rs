//! Tapes end to end: real Python SDK sessions recorded (`record`, `forward stdio --record`,
//! `reverse --record`, the bridge), replayed to fresh SDK clients (`replay`, over stdio and
//! `--listen` HTTP) with identical results, verified against live servers (`tape verify`),
//! secrets kept out, and a tape whose recorder was killed still readable and replayable.

#![allow(
    clippy::pedantic,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::disallowed_types
)]

mod support;

use std::io::Write as _;
use std::time::Duration;

use serde_json::{Value, json};
use shadowcat::protocol::Direction;
use support::sdk::{HttpServer, Target, run_client};
use support::{Gateway, HttpFixture, Proxy, command, peers, python, tool};

/// The Python SDK client's whole session with the SDK server, recorded: the tape has its
/// header, the `initialize` outcome, every message in order, and how it ended.
#[test]
fn an_sdk_session_is_recorded_message_for_message() {
    let dir = tempfile::tempdir().unwrap();
    let server = [
        python("2.3.0"),
        peers().join("sdk_server_v2.py").display().to_string(),
    ];
    let output = std::process::Command::new(python("2.3.0"))
        .arg(peers().join("sdk_client.py"))
        .args(["--mode", "legacy", "--timeout", "60", "--"])
        .arg(support::shadowcat())
        .args(["forward", "stdio", "--record"])
        .arg(dir.path())
        .arg("--")
        .args(&server)
        .env("SHADOWCAT_SESSION_STORE", "memory")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let summary: Value = serde_json::from_slice(&output.stdout).unwrap();
    let tapes: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(tapes.len(), 1, "{tapes:?}");
    let tape = shadowcat::tape::read(&tapes[0]).unwrap();
    assert_eq!(tape.header.mode, "forward");
    assert!(
        tape.header
            .upstream
            .as_deref()
            .unwrap()
            .contains("sdk_server_v2.py")
    );
    assert_eq!(
        tape.meta.protocol_version.as_deref(),
        summary["protocolVersion"].as_str()
    );
    assert_eq!(
        tape.meta.server_info.as_ref().unwrap()["name"],
        "shadowcat-peer-v2"
    );
    let first: Value = serde_json::from_slice(&tape.frames[0].raw).unwrap();
    assert_eq!(first["method"], "initialize");
    assert_eq!(tape.frames[0].direction, Direction::ClientToServer);
    // Every request has its answer on the tape, in order, and time only moves forward.
    let mut open = std::collections::HashMap::new();
    for frame in &tape.frames {
        let msg: Value = serde_json::from_slice(&frame.raw).unwrap();
        if msg.get("method").is_some() && msg.get("id").is_some() {
            open.insert((frame.direction, msg["id"].to_string()), ());
        } else if msg.get("id").is_some() {
            let asked_by = match frame.direction {
                Direction::ClientToServer => Direction::ServerToClient,
                Direction::ServerToClient => Direction::ClientToServer,
            };
            assert!(
                open.remove(&(asked_by, msg["id"].to_string())).is_some(),
                "an answer before its request: {msg}"
            );
        }
    }
    assert!(open.is_empty(), "unanswered on the tape: {open:?}");
    assert!(tape.frames.windows(2).all(|w| w[0].micros <= w[1].micros));
    let sampled = tape.frames.iter().any(|f| {
        f.direction == Direction::ServerToClient
            && String::from_utf8_lossy(&f.raw).contains("sampling/createMessage")
    });
    assert!(sampled, "the server's own request is on the tape");
    assert_eq!(tape.end.unwrap().reason, "closed");
}

/// kill -9 the recorder mid-session: the tape reads up to its last complete line.
#[test]
fn a_killed_recorder_leaves_a_readable_tape() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("killed.jsonl");
    let mut proxy = Proxy::fixture(&["--record", path.to_str().unwrap()]);
    proxy.initialize();
    let echo = proxy.call(1, "tools/call", tool("echo", json!({"text": "on tape"})));
    assert_eq!(echo["result"]["content"][0]["text"], "on tape");
    // Give the writer a moment to catch up, as it does between messages.
    std::thread::sleep(Duration::from_millis(200));
    proxy.child.kill().unwrap();
    proxy.child.wait().unwrap();
    let tape = shadowcat::tape::read(&path).unwrap();
    assert!(tape.end.is_none(), "no end line: it was killed");
    let texts: Vec<String> = tape
        .frames
        .iter()
        .map(|f| String::from_utf8_lossy(&f.raw).into_owned())
        .collect();
    assert_eq!(texts.len(), 5, "{texts:?}");
    assert!(texts[4].contains("on tape"));
    // Recording to an existing file is refused, not overwritten.
    let mut again = Proxy::fixture(&["--record", path.to_str().unwrap()]);
    let status = again.wait_exit(Duration::from_secs(10));
    assert_ne!(status.code(), Some(0));
    assert!(again.stderr_text().contains("cannot record to"));
}

/// `shadowcat replay <tape> --speed 0 [extra...]` over stdio.
fn replay_stdio(tape: &std::path::Path, extra: &[&str]) -> Proxy {
    let mut cmd = command();
    cmd.args(["replay", tape.to_str().unwrap(), "--speed", "0"])
        .args(extra);
    Proxy::spawn(cmd)
}

fn v2_server() -> Vec<String> {
    vec![
        python("2.3.0"),
        peers().join("sdk_server_v2.py").display().to_string(),
    ]
}

/// `shadowcat <args>`, run to completion: (exit code, stdout, stderr).
fn shadowcat_run(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = command();
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let output = cmd.output().unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Record a Python SDK session with `shadowcat record`; replay the tape to a fresh SDK client
/// over stdio and over `--listen` HTTP: the client's results are identical to the live ones.
/// `tape verify` passes against the original server, and against a server whose tool output
/// changed fails with a readable diff and exit code 1.
#[test]
fn a_recorded_sdk_session_replays_identically_and_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let tape = dir.path().join("demo.jsonl");
    let tape_arg = tape.to_str().unwrap().to_owned();
    let mut recorder: Vec<String> = vec![
        support::shadowcat().display().to_string(),
        "record".into(),
        "-o".into(),
        tape_arg.clone(),
        "--name".into(),
        "demo".into(),
        "--".into(),
    ];
    recorder.extend(v2_server());
    let live = run_client("2.3.0", Some("legacy"), Target::Stdio(&recorder), true);
    support::sdk::check_summary(&live, true);
    support::sdk::check_elicitation_and_list_changed(&live);
    let recorded = shadowcat::tape::read(&tape).unwrap();
    assert_eq!(recorded.header.mode, "record");
    assert_eq!(recorded.header.name.as_deref(), Some("demo"));

    // Replayed over stdio, to a fresh client: the same results, byte for byte.
    let replayer: Vec<String> = vec![
        support::shadowcat().display().to_string(),
        "replay".into(),
        tape_arg.clone(),
        "--speed".into(),
        "0".into(),
    ];
    let replayed = run_client("2.3.0", Some("legacy"), Target::Stdio(&replayer), true);
    assert_eq!(replayed, live, "replay over stdio");

    // And over Streamable HTTP.
    let mut cmd = command();
    cmd.args([
        "--log-level",
        "debug",
        "replay",
        &tape_arg,
        "--listen",
        "127.0.0.1:0",
        "--speed",
        "0",
    ]);
    let gateway = Gateway::spawn(cmd);
    let over_http = run_client("2.3.0", Some("legacy"), Target::Url(&gateway.url()), true);
    assert_eq!(over_http, live, "replay over --listen HTTP");
    drop(gateway);

    // verify: the original server passes...
    let mut args = vec!["tape", "verify", &tape_arg, "--"];
    let server = v2_server();
    args.extend(server.iter().map(String::as_str));
    let mut verbose = vec!["tape", "verify", "-v", &tape_arg, "--"];
    verbose.extend(server.iter().map(String::as_str));
    let (code, out, err) = shadowcat_run(&verbose, &[]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("ok   #3 tools/call echo"), "{out}");
    assert!(
        out.contains("13 answers compared: 13 matched, 0 differed"),
        "{out}"
    );
    // ...a changed one fails, naming the path and both values.
    let (code, out, err) = shadowcat_run(&args, &[("PEER_ECHO_UPPER", "1")]);
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(
        out.contains("FAIL #3 tools/call echo: the answer differs from the tape"),
        "{out}"
    );
    assert!(
        out.contains(r#"$.result.content[0].text: recorded "hello through the proxy", live "HELLO THROUGH THE PROXY""#),
        "{out}"
    );
    assert!(
        out.contains("13 answers compared: 12 matched, 1 differed"),
        "{out}"
    );
    // --record keeps the live run as a tape of its own, the changed answer in it (the live
    // view compares the two side by side).
    let live_tape = dir.path().join("live.jsonl");
    let live_arg = live_tape.to_str().unwrap().to_owned();
    let mut recording = vec!["tape", "verify", &tape_arg, "--record", &live_arg, "--"];
    recording.extend(server.iter().map(String::as_str));
    let (code, out, err) = shadowcat_run(&recording, &[("PEER_ECHO_UPPER", "1")]);
    assert_eq!(code, 1, "{out}\n{err}");
    let live_run = shadowcat::tape::read(&live_tape).unwrap();
    assert_eq!(live_run.header.mode, "forward");
    let said = |needle: &str| {
        live_run
            .frames
            .iter()
            .any(|f| String::from_utf8_lossy(&f.raw).contains(needle))
    };
    assert!(said("HELLO THROUGH THE PROXY"), "{live_run:?}");
    assert!(said("\"initialize\""), "{live_run:?}");
    // A tape is never overwritten.
    let (code, _, err) = shadowcat_run(&recording, &[]);
    assert_ne!(code, 0);
    assert!(err.contains("the file exists"), "{err}");
    // docs/tapes.md shows this run's output: every line of it is real.
    let docs = include_str!("../docs/tapes.md");
    let shown = docs
        .split("```text\n")
        .nth(1)
        .unwrap()
        .split("```")
        .next()
        .unwrap();
    for line in shown.lines() {
        assert!(
            out.lines().any(|l| l == line),
            "docs/tapes.md shows {line:?}; verify printed:\n{out}"
        );
    }
    // ...unless the changed paths are ignored.
    let mut ignoring = vec![
        "tape",
        "verify",
        &tape_arg,
        "--ignore",
        "$.result.content[0].text",
        "--ignore",
        "$.result.structuredContent",
        "--",
    ];
    ignoring.extend(server.iter().map(String::as_str));
    let (code, out, _) = shadowcat_run(&ignoring, &[("PEER_ECHO_UPPER", "1")]);
    assert_eq!(code, 0, "{out}");
}

/// A request the tape has no answer for gets a JSON-RPC error naming the closest recorded
/// requests; `ping` is always answered; `strict` refuses what comes out of order.
#[test]
fn replay_names_the_closest_recorded_requests() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.jsonl");
    let mut proxy = Proxy::fixture(&["--record", path.to_str().unwrap()]);
    proxy.initialize();
    proxy.call(1, "tools/call", tool("echo", json!({"text": "one"})));
    proxy.call(2, "tools/call", tool("echo", json!({"text": "two"})));
    proxy.close_stdin();
    assert!(proxy.wait_exit(Duration::from_secs(10)).success());
    let mut replay = replay_stdio(&path, &[]);
    replay.initialize();
    let two = replay.call(7, "tools/call", tool("echo", json!({"text": "two"})));
    assert_eq!(two["id"], 7, "the live id");
    assert_eq!(two["result"]["content"][0]["text"], "two");
    let miss = replay.call(8, "tools/call", tool("echo", json!({"text": "three"})));
    assert_eq!(miss["error"]["code"], -32090, "{miss}");
    let message = miss["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("closest recorded: #2 tools/call"),
        "{message}"
    );
    let candidates = miss["error"]["data"]["candidates"].as_array().unwrap();
    assert_eq!(
        candidates[0]["params"]["arguments"]["text"], "one",
        "the unused one first"
    );
    let pong = replay.call(9, "ping", json!({}));
    assert_eq!(pong["result"], json!({}));
    drop(replay);

    let mut strict = replay_stdio(&path, &["--match", "strict"]);
    strict.initialize();
    let out_of_order = strict.call(1, "tools/call", tool("echo", json!({"text": "two"})));
    assert_eq!(out_of_order["error"]["code"], -32090, "{out_of_order}");
    let in_order = strict.call(2, "tools/call", tool("echo", json!({"text": "one"})));
    assert_eq!(in_order["result"]["content"][0]["text"], "one");
}

/// `reverse --record DIR`: one tape per session, with the HTTP transport's details; the
/// session history names each session's tape; the tape replays to a fresh client over HTTP
/// with the same results.
#[test]
fn the_reverse_proxy_records_each_session_with_its_transport() {
    let dir = tempfile::tempdir().unwrap();
    let tapes = dir.path().join("tapes");
    let data = dir.path().join("data");
    let upstream = HttpServer::start("2.3.0", &[]);
    let mut cmd = std::process::Command::new(support::shadowcat());
    cmd.args([
        "--data-dir",
        data.to_str().unwrap(),
        "--log-level",
        "debug",
        "reverse",
        "--listen",
        "127.0.0.1:0",
    ])
    .args([
        "--record",
        tapes.to_str().unwrap(),
        "--upstream",
        &upstream.url,
    ]);
    let mut gateway = Gateway::spawn(cmd);
    let live = run_client("2.3.0", Some("legacy"), Target::Url(&gateway.url()), false);
    let second = run_client("2.3.0", Some("legacy"), Target::Url(&gateway.url()), false);
    assert_eq!(live, second);
    gateway.terminate();
    assert!(gateway.wait_exit(Duration::from_secs(15)).success());
    let mut files: Vec<_> = std::fs::read_dir(&tapes)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert_eq!(files.len(), 2, "one tape per session: {files:?}");
    let tape = shadowcat::tape::read(&files[0]).unwrap();
    assert_eq!(tape.header.mode, "reverse");
    assert_eq!(tape.header.client_transport, "http");
    assert_eq!(tape.header.server_transport, "http");
    assert_eq!(tape.end.as_ref().unwrap().reason, "closed");
    let from_upstream: Vec<_> = tape
        .frames
        .iter()
        .filter(|f| f.direction == Direction::ServerToClient)
        .collect();
    assert!(
        from_upstream
            .iter()
            .all(|f| f.transport.status == Some(200) && f.transport.stream.is_some()),
        "{:?}",
        from_upstream
            .iter()
            .map(|f| &f.transport)
            .collect::<Vec<_>>()
    );
    assert!(
        from_upstream
            .iter()
            .any(|f| f.transport.stream.as_deref() == Some("post")),
        "answers on their POST's stream"
    );
    // The session history links the session to its tape.
    let (code, out, err) = shadowcat_run(
        &[
            "--data-dir",
            data.to_str().unwrap(),
            "session",
            "show",
            &tape.header.session,
            "--format",
            "json",
        ],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    let record: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(record["tape"], files[0].display().to_string());
    // Replayed over HTTP, the same results as live.
    let mut cmd = command();
    cmd.args([
        "--log-level",
        "debug",
        "replay",
        files[0].to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
        "--speed",
        "0",
    ]);
    let replay = Gateway::spawn(cmd);
    let replayed = run_client("2.3.0", Some("legacy"), Target::Url(&replay.url()), false);
    assert_eq!(replayed, live);
    // `tape list` finds both.
    let (code, out, _) = shadowcat_run(
        &["tape", "list", tapes.to_str().unwrap(), "--format", "json"],
        &[],
    );
    assert_eq!(code, 0);
    let listed: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 2);
}

/// A stateless (2026-07-28) request passed to an HTTP upstream is a session of its own for
/// one POST: a tape of its own, with the request, the answer and how it ended.
#[test]
fn a_stateless_request_through_the_reverse_proxy_is_a_tape_of_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let fixture = HttpFixture::start(&["--stateless"]);
    let gateway = Gateway::start(&[
        "--upstream",
        &fixture.url,
        "--record",
        dir.path().to_str().unwrap(),
    ]);
    let (headers, body) = support::modern_call(7, "echo", json!({"text": "stateless"}), json!({}));
    let answer = support::http_request(&gateway.addr, "POST", "/mcp", &headers, &body);
    assert_eq!(answer.status, 200, "{answer:?}");
    // The end line is written once the POST is over.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let tape = loop {
        let files: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert!(files.len() <= 1, "{files:?}");
        if let Some(tape) = files.first().and_then(|f| shadowcat::tape::read(f).ok()) {
            if tape.end.is_some() {
                break tape;
            }
        }
        assert!(std::time::Instant::now() < deadline, "no finished tape");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(tape.header.mode, "reverse");
    assert_eq!(tape.end.unwrap().reason, "closed");
    assert_eq!(tape.frames.len(), 2, "{:?}", tape.frames);
    assert_eq!(tape.frames[0].direction, Direction::ClientToServer);
    assert_eq!(&tape.frames[0].raw[..], &body[..]);
    let answer: Value = serde_json::from_slice(&tape.frames[1].raw).unwrap();
    assert_eq!(answer["id"], 7);
    assert_eq!(tape.frames[1].transport.status, Some(200));
}

/// A session with an Authorization header (`--bearer-token-env`) and a redacted argument
/// leaves neither in the tape, though the server echoes both back.
#[test]
fn secrets_and_redacted_values_never_reach_the_tape() {
    let fixture = HttpFixture::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("secret.jsonl");
    let secret = "tok-3f9a1c77e2";
    let password = "hunter2-correct-horse";
    let mut cmd = command();
    cmd.args([
        "record",
        "-o",
        path.to_str().unwrap(),
        "--redact",
        "$.params.arguments.text",
    ])
    .args([
        "--url",
        &fixture.url,
        "--bearer-token-env",
        "SHADOWCAT_TEST_TOKEN",
    ])
    .env("SHADOWCAT_TEST_TOKEN", secret);
    let mut proxy = Proxy::spawn(cmd);
    proxy.initialize();
    let seen = proxy.call(1, "tools/call", tool("headers", json!({})));
    assert!(
        seen.to_string().contains(secret),
        "the server did get the token"
    );
    let echo = proxy.call(2, "tools/call", tool("echo", json!({"text": password})));
    assert_eq!(
        echo["result"]["content"][0]["text"], password,
        "the live session is untouched"
    );
    proxy.close_stdin();
    assert_eq!(proxy.wait_exit(Duration::from_secs(10)).code(), Some(0));
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(!text.contains(secret), "the token is on the tape:\n{text}");
    // The argument is masked where the path selects it; the answer echoing it is not selected
    // by that path, so a --redact on the result would be needed to mask it there too.
    let tape = shadowcat::tape::read(&path).unwrap();
    let call: Value = tape
        .frames
        .iter()
        .map(|f| serde_json::from_slice::<Value>(&f.raw).unwrap())
        .find(|m| m["id"] == 2 && m["method"] == "tools/call")
        .unwrap();
    assert_eq!(call["params"]["arguments"]["text"], "[REDACTED]");
    assert_eq!(tape.header.mode, "record");
    assert_eq!(tape.header.server_transport, "http");
    // `tape redact` masks what recording left: here the echoed answer.
    let clean = dir.path().join("clean.jsonl");
    let (code, _, err) = shadowcat_run(
        &[
            "tape",
            "redact",
            path.to_str().unwrap(),
            "--redact",
            "$.result.content[0].text",
            "-o",
            clean.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    assert!(text.contains(password));
    assert!(!std::fs::read_to_string(&clean).unwrap().contains(password));
    assert_eq!(
        shadowcat::tape::read(&clean).unwrap().frames.len(),
        tape.frames.len()
    );
}

/// `tape verify --url`: the tape's client side against a live HTTP server, through the bridge.
#[test]
fn verify_reaches_an_http_server_through_the_bridge() {
    let fixture = HttpFixture::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("http.jsonl");
    let mut cmd = command();
    cmd.args([
        "record",
        "-o",
        path.to_str().unwrap(),
        "--url",
        &fixture.url,
    ]);
    let mut proxy = Proxy::spawn(cmd);
    proxy.initialize();
    proxy.call(1, "tools/call", tool("echo", json!({"text": "same twice"})));
    proxy.call(2, "tools/list", json!({}));
    proxy.close_stdin();
    assert_eq!(proxy.wait_exit(Duration::from_secs(10)).code(), Some(0));
    let (code, out, err) = shadowcat_run(
        &[
            "tape",
            "verify",
            path.to_str().unwrap(),
            "--url",
            &fixture.url,
        ],
        &[],
    );
    assert_eq!(code, 0, "{out}\n{err}");
    assert_eq!(out, "3 answers compared: 3 matched, 0 differed\n");
    // The same URL from SHADOWCAT_URL; with a server command too, which one is meant is unknown.
    let tape = path.to_str().unwrap();
    let (code, out, err) = shadowcat_run(
        &["tape", "verify", tape],
        &[("SHADOWCAT_URL", &fixture.url)],
    );
    assert_eq!(code, 0, "{out}\n{err}");
    let (code, _, err) = shadowcat_run(
        &["tape", "verify", tape, "--url", &fixture.url, "--", "srv"],
        &[],
    );
    assert_eq!(code, 2);
    assert!(
        err.contains("invalid --url: a server command was also given"),
        "{err}"
    );
    let (code, _, err) = shadowcat_run(
        &["tape", "verify", tape, "--", "srv"],
        &[("SHADOWCAT_URL", &fixture.url)],
    );
    assert_eq!(code, 2);
    assert!(
        err.contains("invalid SHADOWCAT_URL: a server command was also given"),
        "{err}"
    );
}

/// kill -9 the recorder mid-session: what is on the tape replays.
#[test]
fn a_killed_recorders_tape_replays_up_to_its_last_frame() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("killed.jsonl");
    let mut proxy = Proxy::fixture(&["--record", path.to_str().unwrap()]);
    proxy.initialize();
    proxy.call(
        1,
        "tools/call",
        tool("echo", json!({"text": "before the kill"})),
    );
    std::thread::sleep(Duration::from_millis(200));
    proxy.child.kill().unwrap();
    proxy.child.wait().unwrap();
    // A torn line, as a kill mid-write leaves.
    std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap()
        .write_all(br#"{"type":"frame","t":99,"dir":"c2s","#)
        .unwrap();
    let mut replay = replay_stdio(&path, &[]);
    replay.initialize();
    let echo = replay.call(
        5,
        "tools/call",
        tool("echo", json!({"text": "before the kill"})),
    );
    assert_eq!(echo["result"]["content"][0]["text"], "before the kill");
    let (code, out, _) = shadowcat_run(&["tape", "show", path.to_str().unwrap()], &[]);
    assert_eq!(code, 0);
    assert!(out.contains("the recorder was killed mid-line"), "{out}");
}

/// Records one session of the fixture that makes `calls` (tool, arguments), to `path`.
fn record_fixture_calls(path: &std::path::Path, calls: &[(&str, Value)]) {
    let mut proxy = Proxy::fixture(&["--record", path.to_str().unwrap()]);
    proxy.initialize();
    for (i, (name, arguments)) in calls.iter().enumerate() {
        let answer = proxy.call(
            i64::try_from(i).unwrap() + 1,
            "tools/call",
            tool(name, arguments.clone()),
        );
        assert!(answer.get("result").is_some(), "{answer}");
    }
    proxy.close_stdin();
    assert!(proxy.wait_exit(Duration::from_secs(10)).success());
}

fn replay_at(tape: &std::path::Path, speed: &str) -> Proxy {
    let mut cmd = command();
    cmd.args(["replay", tape.to_str().unwrap(), "--speed", speed]);
    Proxy::spawn(cmd)
}

/// `replay --speed`: an answer comes at its recorded delay after its request divided by the
/// factor (1 as recorded, 2 twice as fast), and at once with 0.
#[test]
fn replay_keeps_the_recorded_timing_divided_by_the_speed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("slow.jsonl");
    record_fixture_calls(&path, &[("sleep", json!({"ms": 600}))]);
    let mut took = Vec::new();
    for speed in ["1", "2", "0"] {
        let mut replay = replay_at(&path, speed);
        replay.initialize();
        let started = std::time::Instant::now();
        let answer = replay.call(1, "tools/call", tool("sleep", json!({"ms": 600})));
        took.push(started.elapsed());
        assert_eq!(
            answer["result"]["content"][0]["text"], "slept 600 ms",
            "{answer}"
        );
    }
    assert!(took[0] >= Duration::from_millis(580), "speed 1: {took:?}");
    assert!(took[1] >= Duration::from_millis(290), "speed 2: {took:?}");
    assert!(took[1] < took[0], "speed 2 is faster than 1: {took:?}");
    assert!(took[2] < Duration::from_millis(290), "speed 0: {took:?}");
}

/// A client's `notifications/cancelled` stops the replay of that request: its answer never
/// comes, and other requests are still answered.
#[test]
fn a_cancelled_request_is_not_answered_by_the_replay() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cancel.jsonl");
    record_fixture_calls(&path, &[("sleep", json!({"ms": 800}))]);
    let mut replay = replay_at(&path, "1");
    replay.initialize();
    replay.send(&json!({"jsonrpc":"2.0","id":1,"method":"tools/call","params":tool("sleep", json!({"ms": 800}))}));
    replay.send(&json!({"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":1,"reason":"changed my mind"}}));
    let ping = replay.call(2, "ping", json!({}));
    assert_eq!(ping["result"], json!({}), "{ping}");
    replay.expect_silence(Duration::from_millis(1500));
}

/// `tape verify --timeout`: a live server that does not answer in time fails the check (exit
/// 1) and says so.
#[test]
fn verify_fails_an_answer_that_does_not_come_within_its_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("slow.jsonl");
    record_fixture_calls(&path, &[("sleep", json!({"ms": 1500}))]);
    let fixture = support::fixture();
    let started = std::time::Instant::now();
    let (code, stdout, stderr) = shadowcat_run(
        &[
            "tape",
            "verify",
            path.to_str().unwrap(),
            "--timeout",
            "300ms",
            "--",
            fixture.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(code, 1, "{stdout}\n{stderr}");
    assert!(
        stdout.contains("no answer within 300ms"),
        "{stdout}\n{stderr}"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    // With time enough, the same tape passes.
    let (code, stdout, stderr) = shadowcat_run(
        &[
            "tape",
            "verify",
            path.to_str().unwrap(),
            "--",
            fixture.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(code, 0, "{stdout}\n{stderr}");
}

/// `tape list` lists the tapes of a directory and nothing else: other files are not looked at,
/// and a `.jsonl` file that is not a tape is named in a warning.
#[test]
fn tape_list_skips_what_is_not_a_tape() {
    let dir = tempfile::tempdir().unwrap();
    record_fixture_calls(
        &dir.path().join("real.jsonl"),
        &[("echo", json!({"text": "x"}))],
    );
    std::fs::write(dir.path().join("notes.txt"), "not a tape").unwrap();
    std::fs::write(dir.path().join("broken.jsonl"), "{\"not\": \"a header\"}\n").unwrap();
    let (code, stdout, stderr) = shadowcat_run(
        &[
            "tape",
            "list",
            dir.path().to_str().unwrap(),
            "--format",
            "json",
        ],
        &[],
    );
    assert_eq!(code, 0, "{stderr}");
    let rows: Value = serde_json::from_str(&stdout).unwrap();
    let files: Vec<&str> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["path"].as_str().unwrap())
        .collect();
    assert_eq!(files.len(), 1, "{stdout}");
    assert!(files[0].ends_with("real.jsonl"), "{stdout}");
    assert!(stderr.contains("broken.jsonl"), "{stderr}");
    assert!(!stderr.contains("notes.txt"), "{stderr}");
}

/// Records the fixture listing its tools, then calling `echo` and `big`.
fn record_fixture_listing(path: &std::path::Path) {
    let mut proxy = Proxy::fixture(&["--record", path.to_str().unwrap()]);
    proxy.initialize();
    let listed = proxy.call(1, "tools/list", json!({}));
    assert!(listed["result"]["tools"].is_array(), "{listed}");
    for (id, (name, arguments)) in [
        ("echo", json!({"text": "quiet please"})),
        ("big", json!({"bytes": 3})),
    ]
    .into_iter()
    .enumerate()
    {
        let answer = proxy.call(id as i64 + 2, "tools/call", tool(name, arguments));
        assert!(answer.get("result").is_some(), "{answer}");
    }
    proxy.close_stdin();
    assert!(proxy.wait_exit(Duration::from_secs(10)).success());
}

/// `tape verify` fit for CI: quiet unless something differs (`-v` names every answer); a
/// list compared by name (one added tool is one difference, not every tool after it); an
/// `--ignore` scoped to a method and a tool; a summary that counts the answers that came.
#[test]
fn verify_is_quiet_compares_lists_by_name_and_scopes_ignores() {
    let dir = tempfile::tempdir().unwrap();
    let tape = dir.path().join("listing.jsonl");
    record_fixture_listing(&tape);
    let fixture = support::fixture();
    let verify = |extra: &[&str], env: &[(&str, &str)]| {
        let mut args = vec!["tape", "verify", tape.to_str().unwrap()];
        args.extend(extra);
        args.extend(["--", fixture.to_str().unwrap()]);
        shadowcat_run(&args, env)
    };
    // The same server: one summary line, nothing else.
    let (code, out, err) = verify(&[], &[]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert_eq!(out, "4 answers compared: 4 matched, 0 differed\n");
    let (code, out, _) = verify(&["-v"], &[]);
    assert_eq!(code, 0);
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        [
            "ok   #1 initialize",
            "ok   #2 tools/list",
            "ok   #3 tools/call echo",
            "ok   #4 tools/call big",
            "4 answers compared: 4 matched, 0 differed",
        ]
    );
    // A server with one tool more (listed first) and echo in capitals.
    let changed = [("FIXTURE_EXTRA_TOOL", "1"), ("FIXTURE_ECHO_UPPER", "1")];
    let (code, out, err) = verify(&[], &changed);
    assert_eq!(code, 1, "{out}\n{err}");
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        [
            "FAIL #2 tools/list: the answer differs from the tape",
            r#"       $.result.tools[?@.name=='added']: recorded (absent), live {"description":"A tool the recording did not have","inputSchema":{"properties":{},"type":"object"},"name":"added"}"#,
            "FAIL #3 tools/call echo: the answer differs from the tape",
            r#"       $.result.content[0].text: recorded "quiet please", live "QUIET PLEASE""#,
            "4 answers compared: 2 matched, 2 differed",
        ],
        "{out}"
    );
    // Ignored for echo's answers: echo passes, the list still fails.
    let (code, out, _) = verify(
        &["--ignore", "tools/call:echo=$.result.content[0].text"],
        &changed,
    );
    assert_eq!(code, 1, "{out}");
    assert!(!out.contains("tools/call echo"), "{out}");
    assert!(out.contains("FAIL #2 tools/list"), "{out}");
    // Scoped to another tool or method, it does not reach echo's answer.
    for other in [
        "tools/call:big=$.result.content[0].text",
        "tools/list=$.result.content[0].text",
    ] {
        let (code, out, _) = verify(&["--ignore", other], &changed);
        assert_eq!(code, 1, "{out}");
        assert!(out.contains("FAIL #3 tools/call echo"), "{other}: {out}");
    }
    // The added tool is ignorable by the path the report gave; both ignored, all pass.
    let (code, out, err) = verify(
        &[
            "--ignore",
            "tools/call:echo=$.result.content[0].text",
            "--ignore",
            "tools/list=$.result.tools[?@.name=='added']",
        ],
        &changed,
    );
    assert_eq!(code, 0, "{out}\n{err}");
    assert_eq!(out, "4 answers compared: 4 matched, 0 differed\n");
    // An --ignore that is neither a path nor scoped says what it expects.
    let (code, _, err) = verify(&["--ignore", "result.content"], &[]);
    assert_eq!(code, 2);
    assert!(
        err.contains("METHOD[:NAME]=JSONPATH such as 'tools/call:echo=$.result.content'"),
        "{err}"
    );
}

/// A server that never answers the handshake stops the run at once, not after `--timeout` for
/// every request; one that exits stops it too. The summary counts what was not sent.
#[test]
fn verify_stops_at_a_failed_handshake_or_a_gone_server() {
    let dir = tempfile::tempdir().unwrap();
    let tape = dir.path().join("calls.jsonl");
    let calls: Vec<(&str, Value)> = (0..6)
        .map(|i| ("echo", json!({"text": format!("call {i}")})))
        .collect();
    record_fixture_calls(&tape, &calls);
    let tape_arg = tape.to_str().unwrap();
    // Reads everything, answers nothing.
    let started = std::time::Instant::now();
    let (code, out, err) = shadowcat_run(
        &[
            "tape",
            "verify",
            tape_arg,
            "--timeout",
            "1s",
            "--",
            "sh",
            "-c",
            "cat >/dev/null",
        ],
        &[],
    );
    assert_eq!(code, 1, "{out}\n{err}");
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        [
            "FAIL #1 initialize: no answer within 1s",
            "0 answers compared: 0 matched, 0 differed; 1 request got no answer; \
             stopped (the handshake failed) with 6 requests not sent",
        ],
        "{err}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
    // docs/tapes.md shows this output.
    let shown = include_str!("../docs/tapes.md")
        .split("```text\n")
        .nth(2)
        .unwrap()
        .split("```")
        .next()
        .unwrap();
    assert_eq!(shown, out);
    // Exits at once.
    let (code, out, err) = shadowcat_run(&["tape", "verify", tape_arg, "--", "true"], &[]);
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(
        out.ends_with("stopped (the server exited before answering) with 6 requests not sent\n")
            || out.ends_with(
                "stopped (the server stopped reading its input) with 6 requests not sent\n"
            ),
        "{out}"
    );
}

/// A server command line's secret-looking arguments and environment values never reach a
/// tape or the session history, not even echoed back by the server; `--redact` masks the
/// `meta` line as it masks the `initialize` exchange; `tape redact` masks an older tape's
/// meta line and command line; `tape verify` refuses to send masked values unless told to.
#[test]
fn tapes_keep_no_secrets_from_the_command_line_or_the_meta_line() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let path = dir.path().join("secret.jsonl");
    let (arg_secret, env_secret) = ("argsecret-4b1d9e", "envsecret-77c0aa");
    let fixture = support::fixture();
    let mut cmd = command();
    cmd.args(["--data-dir", data.to_str().unwrap()])
        .args([
            "record",
            "--session-store",
            "sqlite",
            "-o",
            path.to_str().unwrap(),
            "--redact",
            "$.params.clientInfo.name",
        ])
        .args(["--env", &format!("SERVICE_TOKEN={env_secret}"), "--"])
        .args([
            fixture.to_str().unwrap(),
            "--api-key",
            arg_secret,
            "--mode",
            "plain",
        ]);
    let mut proxy = Proxy::spawn(cmd);
    proxy.initialize();
    // The server echoes both secrets: the live session gets them, the tape does not.
    let text = format!("key {arg_secret} and {env_secret}");
    let echo = proxy.call(1, "tools/call", tool("echo", json!({"text": text})));
    assert_eq!(echo["result"]["content"][0]["text"], text.as_str());
    proxy.close_stdin();
    assert_eq!(proxy.wait_exit(Duration::from_secs(10)).code(), Some(0));
    let written = std::fs::read_to_string(&path).unwrap();
    for secret in [arg_secret, env_secret] {
        assert!(
            !written.contains(secret),
            "{secret} is on the tape:\n{written}"
        );
    }
    let tape = shadowcat::tape::read(&path).unwrap();
    assert_eq!(
        tape.header.upstream.as_deref(),
        Some(format!("{} --api-key [REDACTED] --mode plain", fixture.display()).as_str())
    );
    assert_eq!(
        tape.meta.client_info,
        Some(json!({"name": "[REDACTED]", "version": "0"}))
    );
    // The session history has the masked command line too.
    let (code, listed, err) = shadowcat_run(
        &[
            "--data-dir",
            data.to_str().unwrap(),
            "session",
            "list",
            "--format",
            "json",
        ],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    assert!(listed.contains("--api-key [REDACTED]"), "{listed}");
    assert!(!listed.contains(arg_secret), "{listed}");

    // An older tape, written before command lines were masked: `tape redact` masks its
    // command line, and its meta line as the paths say.
    let old = dir.path().join("old.jsonl");
    let unmasked = written.replacen(
        "--api-key [REDACTED]",
        &format!("--api-key {arg_secret}"),
        1,
    );
    std::fs::write(
        &old,
        unmasked.replace("\"[REDACTED]\",\"version\"", "\"old-client\",\"version\""),
    )
    .unwrap();
    assert_eq!(
        shadowcat::tape::read(&old).unwrap().meta.client_info,
        Some(json!({"name": "old-client", "version": "0"}))
    );
    let clean = dir.path().join("clean.jsonl");
    let (code, _, err) = shadowcat_run(
        &[
            "tape",
            "redact",
            old.to_str().unwrap(),
            "--redact",
            "$..clientInfo.name",
            "-o",
            clean.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    let cleaned = std::fs::read_to_string(&clean).unwrap();
    assert!(
        !cleaned.contains(arg_secret) && !cleaned.contains("old-client"),
        "{cleaned}"
    );

    // A tape whose client messages hold masks is not sent to a live server by default.
    let masked = dir.path().join("masked.jsonl");
    let (code, _, err) = shadowcat_run(
        &[
            "tape",
            "redact",
            path.to_str().unwrap(),
            "--redact",
            "$.params.arguments.text",
            "-o",
            masked.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    let verify = |extra: &[&str]| {
        let mut args = vec!["tape", "verify", masked.to_str().unwrap()];
        args.extend(extra);
        args.extend(["--", fixture.to_str().unwrap()]);
        shadowcat_run(&args, &[])
    };
    let (code, out, err) = verify(&[]);
    assert_eq!(code, 2, "{out}\n{err}");
    assert_eq!(
        err.trim_end(),
        "shadowcat: error: the tape's client messages hold 2 values masked as [REDACTED] \
         (first: #1 initialize at $.params.clientInfo.name); the live server would get the \
         mask, not the value. Record the tape without masking what the client sends, or pass \
         --send-redacted to send the masks anyway"
    );
    assert!(out.is_empty(), "{out}");
    // Told to, it sends them: the echo's answer differs by the mask.
    let (code, out, err) = verify(&["--send-redacted"]);
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(out.contains(r#"live "[REDACTED]""#), "{out}");
}
