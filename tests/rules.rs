//! Interceptor rules through the real binary: a Python SDK client (mcp 2.3.0) talks to the
//! Python SDK server through `shadowcat forward stdio --rules FILE`, and the server's own log
//! of the calls that reached it shows what the rules let through.

#![allow(
    clippy::pedantic,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::disallowed_types
)]

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::{peers, python};

/// One session: the client lists tools and makes `calls` through shadowcat with `rules`.
/// Returns the client's summary, the calls that reached the server, and shadowcat's log.
struct Run {
    summary: Value,
    reached: Vec<Value>,
    log: String,
}

fn session(dir: &Path, rules: &Path, extra: &[&str], calls: &[(&str, Value)]) -> Run {
    let reached = dir.join(format!("calls-{}.log", rand_suffix()));
    let log = dir.join(format!("shadowcat-{}.log", rand_suffix()));
    let mut cmd = Command::new(python("2.3.0"));
    support::hermetic(&mut cmd);
    cmd.arg(peers().join("rules_client.py"));
    for (tool, arguments) in calls {
        cmd.args(["--call", tool, &arguments.to_string()]);
    }
    cmd.arg("--")
        .arg(support::shadowcat())
        .args(["--log-level", "info", "--log-file"])
        .arg(&log)
        .args(["forward", "stdio", "--session-store", "memory", "--rules"])
        .arg(rules)
        .args(extra)
        .arg("--")
        .arg(python("2.3.0"))
        .arg(peers().join("sdk_server_v2.py"))
        .env("PEER_CALL_LOG", &reached);
    let output = cmd.output().unwrap();
    let log = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        output.status.success(),
        "client failed: {}\nshadowcat log:\n{log}",
        String::from_utf8_lossy(&output.stderr)
    );
    let summary: Value = serde_json::from_slice(&output.stdout).unwrap();
    let reached = std::fs::read_to_string(&reached)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    Run {
        summary,
        reached,
        log,
    }
}

fn rand_suffix() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed).to_string()
}

fn write_rules(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("rules.yaml");
    std::fs::write(&path, text).unwrap();
    path
}

const RULES: &str = r#"
version: 1
rules:
  - name: hide-confirm
    match: {tool: confirm}
    hide: true
  - name: no-add
    match: {tool: add}
    block: {code: -32001, message: adding is off}
  - name: rewrite
    match:
      tool: echo
      params: [{path: "$.arguments.text", equals: modify me}]
    modify: {set: {"$.arguments.text": modified by shadowcat}}
  - name: fake-echo
    match:
      tool: echo
      params: [{path: "$.arguments.text", equals: mock me}]
    mock:
      result: {content: [{type: text, text: mocked}], structuredContent: {result: mocked}}
  - name: slow-work
    match: {tool: echo, params: [{path: "$.arguments.text", equals: slow}]}
    delay: 1500ms
"#;

/// Each action, seen by a real client and a real server.
#[test]
fn each_action_through_the_forward_proxy() {
    let dir = tempfile::tempdir().unwrap();
    let rules = write_rules(dir.path(), RULES);
    let run = session(
        dir.path(),
        &rules,
        &[],
        &[
            ("echo", json!({"text": "modify me"})),
            ("add", json!({"a": 1, "b": 2})),
            ("confirm", json!({"item": "x", "answer": {"ok": true}})),
            ("echo", json!({"text": "mock me"})),
            ("echo", json!({"text": "plain"})),
        ],
    );
    let s = &run.summary;
    // Hidden: gone from the list, and unknown when called.
    assert!(
        !s["tools"].as_array().unwrap().contains(&json!("confirm")),
        "{s}"
    );
    assert!(
        s["tools"].as_array().unwrap().contains(&json!("echo")),
        "{s}"
    );
    assert_eq!(
        s["calls"][2]["error"],
        json!({"code": -32602, "message": "Unknown tool: confirm"})
    );
    // Modified: the server got the new argument.
    assert_eq!(s["calls"][0]["text"], "modified by shadowcat");
    // Blocked: the configured error, and the server never saw it.
    assert_eq!(
        s["calls"][1]["error"],
        json!({"code": -32001, "message": "adding is off"})
    );
    // Mocked: answered without the server.
    assert_eq!(s["calls"][3]["text"], "mocked");
    assert_eq!(s["calls"][4]["text"], "plain");
    assert_eq!(
        run.reached,
        vec![
            json!({"tool": "echo", "arguments": {"text": "modified by shadowcat"}}),
            json!({"tool": "echo", "arguments": {"text": "plain"}}),
        ],
        "only the unblocked, unmocked calls reach the server"
    );
}

/// A delay holds the message: the client's own timing of the call is at least the delay.
#[test]
fn a_delay_is_observed() {
    let dir = tempfile::tempdir().unwrap();
    let rules = write_rules(dir.path(), RULES);
    let run = session(
        dir.path(),
        &rules,
        &[],
        &[
            ("echo", json!({"text": "quick"})),
            ("echo", json!({"text": "slow"})),
        ],
    );
    let calls = &run.summary["calls"];
    assert_eq!(calls[1]["text"], "slow");
    assert!(calls[1]["ms"].as_u64().unwrap() >= 1500, "{calls}");
}

/// `--rules-mode audit`: nothing changes; the log says what each rule would have done, with a
/// diff for changes.
#[test]
fn audit_mode_changes_nothing_and_logs_the_diff() {
    let dir = tempfile::tempdir().unwrap();
    let rules = write_rules(dir.path(), RULES);
    let run = session(
        dir.path(),
        &rules,
        &["--rules-mode", "audit"],
        &[
            ("echo", json!({"text": "modify me"})),
            ("add", json!({"a": 1, "b": 2})),
        ],
    );
    let s = &run.summary;
    assert!(s["tools"].as_array().unwrap().contains(&json!("confirm")));
    assert_eq!(s["calls"][0]["text"], "modify me");
    assert_eq!(s["calls"][1]["text"], "3");
    assert_eq!(run.reached.len(), 2, "{:?}", run.reached);
    assert!(
        run.log.contains(
            r#"audit: rule "rewrite" would change $.params.arguments.text: "modify me" -> "modified by shadowcat""#
        ),
        "{}",
        run.log
    );
    assert!(
        run.log
            .contains(r#"audit: rule "no-add" would answer the sender"#),
        "{}",
        run.log
    );
    assert!(
        run.log
            .contains(r#"audit: rule "hide-confirm" would hide confirm from the list"#),
        "{}",
        run.log
    );
}

/// Rules on session metadata fire only for the session they describe.
#[test]
fn session_rules_fire_only_for_their_session() {
    let dir = tempfile::tempdir().unwrap();
    // The Python SDK client names itself "mcp"; another client would not match.
    let rules = write_rules(
        dir.path(),
        r#"
version: 1
rules:
  - name: other-clients
    match: {tool: echo, session: {client: "not-this-client*"}}
    block: {}
  - name: this-client
    match: {tool: add, session: {client: "mcp*", transport: stdio}}
    block: {message: not for you}
"#,
    );
    let run = session(
        dir.path(),
        &rules,
        &[],
        &[
            ("echo", json!({"text": "hi"})),
            ("add", json!({"a": 1, "b": 1})),
        ],
    );
    assert_eq!(run.summary["calls"][0]["text"], "hi");
    assert_eq!(run.summary["calls"][1]["error"]["message"], "not for you");
}

/// The file is watched: changed while a session runs, the next message sees the new rules; a
/// broken version is reported with its line and column and the last good rules stay.
#[test]
fn rules_reload_while_a_session_runs() {
    let dir = tempfile::tempdir().unwrap();
    let rules = write_rules(
        dir.path(),
        "version: 1\nrules:\n  - name: block-echo\n    match: {tool: echo}\n    block: {message: first rules}\n",
    );
    let log = dir.path().join("shadowcat.log");
    let mut cmd = support::command();
    cmd.args(["--log-level", "info", "--log-file"])
        .arg(&log)
        .args(["forward", "stdio", "--rules"])
        .arg(&rules)
        .arg("--")
        .arg(python("2.3.0"))
        .arg(peers().join("sdk_server_v2.py"));
    let mut proxy = support::Proxy::spawn(cmd);
    proxy.initialize();
    let echo = |proxy: &mut support::Proxy, id: i64| {
        proxy.call(
            id,
            "tools/call",
            json!({"name": "echo", "arguments": {"text": "hi"}}),
        )
    };
    assert_eq!(echo(&mut proxy, 10)["error"]["message"], "first rules");
    std::fs::write(
        &rules,
        "version: 1\nrules:\n  - name: block-echo\n    match: {tool: echo}\n    block: {message: second rules}\n",
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut id = 11;
    loop {
        let answer = echo(&mut proxy, id);
        id += 1;
        if answer["error"]["message"] == "second rules" {
            break;
        }
        assert!(Instant::now() < deadline, "never reloaded: {answer}");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Broken: reported, and the second rules stay.
    std::fs::write(&rules, "version: 1\nrules:\n  - name: x\n    blok: {}\n").unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("rules.yaml:4:5: unknown field `blok`")
    {
        assert!(
            Instant::now() < deadline,
            "the broken file was not reported"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(echo(&mut proxy, 100)["error"]["message"], "second rules");
    // Fixed again: no rules, the call goes through.
    std::fs::write(&rules, "version: 1\nrules: []\n").unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let answer = echo(&mut proxy, id);
        id += 1;
        if answer["result"]["content"][0]["text"] == "hi" {
            break;
        }
        assert!(Instant::now() < deadline, "never reloaded: {answer}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(log.contains("the previous rules stay in force"), "{log}");
    assert!(log.contains("rules reloaded"), "{log}");
    proxy.close_stdin();
    assert!(proxy.wait_exit(Duration::from_secs(15)).success());
}

const GATEWAY_RULES: &str = r#"
version: 1
rules:
  - name: no-danger
    match: {tool: danger}
    block: {}
  - name: one-echo-a-minute
    match: {tool: echo}
    rate_limit: {per: session, rate: 1/min}
  - name: watch-echoes
    match: {tool: echo}
    log: {level: warn, message: an echo went through}
  - name: no-system-files
    match: {resource: "file:///etc/*"}
    hide: true
"#;

/// `--rules` on `reverse`: a block answers the call with -32091, a rule's `rate_limit` is a 429
/// with `Retry-After`, and the `log` action writes its line with the rule, direction, method,
/// id and session.
#[test]
fn rules_apply_at_the_gateway() {
    let dir = tempfile::tempdir().unwrap();
    let rules = write_rules(dir.path(), GATEWAY_RULES);
    let gw =
        support::Gateway::fixture(&["--log-format", "json", "--rules", rules.to_str().unwrap()]);
    let session = gw.initialize();
    let call = |id: i64, tool: &str| {
        gw.post(
            Some(&session),
            &json!({"jsonrpc":"2.0","id":id,"method":"tools/call","params":{"name":tool,"arguments":{"text":"hi"}}}),
        )
    };
    let blocked = call(1, "danger");
    assert_eq!(blocked.status, 200, "{blocked:?}");
    assert_eq!(blocked.json()["error"]["code"], -32091, "{blocked:?}");
    assert_eq!(blocked.json()["error"]["data"]["rule"], "no-danger");
    let first = call(2, "echo");
    assert_eq!(
        first.json()["result"]["content"][0]["text"],
        "hi",
        "{first:?}"
    );
    let limited = call(3, "echo");
    assert_eq!(limited.status, 429, "{limited:?}");
    assert_eq!(limited.json()["error"]["code"], -32092, "{limited:?}");
    assert_eq!(
        limited.json()["error"]["data"]["limit"],
        "one-echo-a-minute"
    );
    let retry: u64 = limited
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    // A hidden resource is one the server does not have (the fixture has none: the answer is
    // the gateway's).
    let read = gw.post(
        Some(&session),
        &json!({"jsonrpc":"2.0","id":4,"method":"resources/read","params":{"uri":"file:///etc/passwd"}}),
    );
    assert_eq!(read.json()["error"]["code"], -32002, "{read:?}");
    assert_eq!(read.json()["error"]["data"]["uri"], "file:///etc/passwd");
    // The log line of the one echo that went through.
    let logged: Vec<Value> = gw
        .stderr_text()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|l| l["fields"]["rule"] == "watch-echoes")
        .collect();
    assert_eq!(logged.len(), 1, "{}", gw.stderr_text());
    let line = &logged[0];
    assert_eq!(line["level"], "WARN", "{line}");
    assert_eq!(
        line["fields"]["message"], "rule \"watch-echoes\": an echo went through",
        "{line}"
    );
    assert_eq!(line["fields"]["direction"], "client->server", "{line}");
    assert_eq!(line["fields"]["method"], "tools/call", "{line}");
    assert_eq!(line["fields"]["id"], "2", "{line}");
    assert!(
        line["fields"]["session"]
            .as_str()
            .is_some_and(|s| s.starts_with("s-")),
        "{line}"
    );
}

/// `--rules` on `record`: the tape holds the messages as the rules left them (a modified
/// request, a blocked call's error, which the server never saw).
#[test]
fn a_recording_holds_what_the_rules_made_of_the_messages() {
    let dir = tempfile::tempdir().unwrap();
    let rules = write_rules(
        dir.path(),
        r#"
version: 1
rules:
  - name: shout
    match: {tool: echo}
    modify: {set: {"$.arguments.text": CHANGED}}
  - name: no-danger
    match: {tool: danger}
    block: {}
"#,
    );
    let tape = dir.path().join("ruled.jsonl");
    let mut cmd = support::command();
    cmd.args([
        "record",
        "-o",
        tape.to_str().unwrap(),
        "--rules",
        rules.to_str().unwrap(),
        "--",
    ])
    .arg(support::fixture());
    let mut proxy = support::Proxy::spawn(cmd);
    proxy.initialize();
    let echo = proxy.call(
        1,
        "tools/call",
        support::tool("echo", json!({"text": "quiet"})),
    );
    assert_eq!(echo["result"]["content"][0]["text"], "CHANGED", "{echo}");
    let blocked = proxy.call(2, "tools/call", support::tool("danger", json!({})));
    assert_eq!(blocked["error"]["code"], -32091, "{blocked}");
    proxy.close_stdin();
    assert!(proxy.wait_exit(Duration::from_secs(10)).success());
    let recorded = std::fs::read_to_string(&tape).unwrap();
    assert!(recorded.contains("CHANGED"), "{recorded}");
    assert!(
        !recorded.contains("quiet"),
        "the unmodified request was recorded: {recorded}"
    );
    assert!(recorded.contains("-32091"), "{recorded}");
}
