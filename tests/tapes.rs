//! Recording (`--record`): a real session through `shadowcat forward stdio` written to a tape,
//! and a tape whose recorder was killed still readable.

#![allow(
    clippy::pedantic,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::disallowed_types
)]

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use shadowcat::protocol::Direction;
use support::{Proxy, peers, python, tool};

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
