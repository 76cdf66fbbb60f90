//! The traffic in the terminal (`--traffic`, docs/observability.md) and on a tape
//! (`tape show --messages`, `--follow`): one line per message naming what it is and what became
//! of it, bodies masked as on tapes.

#![allow(
    clippy::pedantic,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::disallowed_types
)]

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::{Gateway, Proxy, tool};

/// The traffic lines of `text`, the log's prefix (time, level, target) taken off.
fn traffic(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| {
            l.split_once("shadowcat::traffic: ")
                .map(|(_, line)| line.to_owned())
        })
        .collect()
}

/// `text`'s lines with the session digest replaced by `S`, to compare whole lines.
fn anonymous(lines: &[String]) -> Vec<String> {
    lines
        .iter()
        .map(|l| match l.split_once(' ') {
            Some((session, rest)) if session.starts_with("s-") => format!("S {rest}"),
            _ => l.clone(),
        })
        .collect()
}

/// `lines` with numbers as `N` and the unit after one as `UNIT`.
fn normalized(lines: &[String]) -> Vec<String> {
    lines
        .iter()
        .map(|l| {
            let mut words: Vec<String> = Vec::new();
            for w in l.split(' ') {
                let unit =
                    words.last().is_some_and(|last| last == "N") && ["us", "ms", "s"].contains(&w);
                words.push(if w.parse::<f64>().is_ok() {
                    "N".into()
                } else if unit {
                    "UNIT".into()
                } else {
                    w.to_owned()
                });
            }
            words.join(" ")
        })
        .collect()
}

fn rules_file(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("rules.yaml");
    std::fs::write(
        &path,
        "version: 1\nrules:\n  - name: no-crash\n    match: {tool: crash}\n    block: {message: not here}\n  - name: shout\n    match: {method: tools/call, direction: server_to_client}\n    modify:\n      set: {\"$.content[0].text\": SHOUTED}\n",
    )
    .unwrap();
    path
}

/// `forward stdio --traffic lines`: a line per message with its session, direction, kind,
/// method, tool, id, size, an answer's latency and what a rule or limit did; shown at any
/// `--log-level`.
#[test]
fn every_message_is_a_line_naming_what_it_is_and_what_became_of_it() {
    let dir = tempfile::tempdir().unwrap();
    let rules = rules_file(dir.path());
    let mut proxy = Proxy::fixture(&[
        "--traffic",
        "lines",
        "--rules",
        rules.to_str().unwrap(),
        "--rate-limit",
        "method=2/min,method=ping,name=pings",
    ]);
    proxy.initialize();
    let echo = proxy.call(1, "tools/call", tool("echo", json!({"text": "hi"})));
    assert_eq!(echo["result"]["content"][0]["text"], "SHOUTED", "{echo}");
    let blocked = proxy.call(2, "tools/call", tool("crash", json!({"code": 3})));
    assert!(blocked.get("error").is_some(), "{blocked}");
    for id in 3..6 {
        proxy.call(id, "ping", json!({}));
    }
    proxy.close_stdin();
    assert!(proxy.wait_exit(Duration::from_secs(10)).success());
    let stderr = proxy.stderr_text();
    let lines = anonymous(&traffic(&stderr));
    // Sizes and latencies vary with the machine: compare up to them.
    let shape = normalized(&lines);
    assert_eq!(
        shape,
        [
            "S -> request initialize #0 N B",
            "S <- response initialize #0 N B N UNIT",
            "S -> notification notifications/initialized N B",
            "S -> request tools/call echo #1 N B",
            "S <- response tools/call echo #1 N B N UNIT [modified: rule shout: modify]",
            "S -> request tools/call crash #2 N B [answered by the proxy: rule no-crash: block]",
            "S -> request ping #3 N B",
            "S <- response ping #3 N B N UNIT",
            "S -> request ping #4 N B",
            "S <- response ping #4 N B N UNIT",
            "S -> request ping #5 N B [answered by the proxy: rate limit pings]",
        ],
        "{stderr}"
    );
    // docs/observability.md shows lines of this run.
    let docs = include_str!("../docs/observability.md");
    let shown = docs
        .split("## The traffic")
        .nth(1)
        .and_then(|section| section.split("```text\n").nth(1))
        .and_then(|block| block.split("```").next())
        .unwrap();
    let shown: Vec<String> = shown.lines().map(str::to_owned).collect();
    for line in normalized(&anonymous(&traffic(&shown.join("\n")))) {
        assert!(
            shape.contains(&line),
            "docs/observability.md shows {line:?}; the run gave {shape:#?}"
        );
    }
    // --log-level does not hide it.
    let mut quiet = Proxy::fixture(&["--log-level", "error", "--traffic", "lines"]);
    quiet.initialize();
    quiet.close_stdin();
    assert!(quiet.wait_exit(Duration::from_secs(10)).success());
    let lines = traffic(&quiet.stderr_text());
    assert_eq!(lines.len(), 3, "{}", quiet.stderr_text());
}

/// `--traffic bodies`: each line is followed by the message pretty-printed, masked as tapes are;
/// with `--log-file` the lines go there and not to stderr, and `--log-format json` makes each
/// part a field.
#[test]
fn bodies_are_pretty_masked_and_go_where_the_log_goes() {
    let dir = tempfile::tempdir().unwrap();
    let mut proxy = Proxy::fixture(&[
        "--traffic",
        "bodies",
        "--redact",
        "$.params.arguments.password",
    ]);
    proxy.initialize();
    proxy.call(
        1,
        "tools/call",
        tool("echo", json!({"text": "hi", "password": "hunter2"})),
    );
    proxy.close_stdin();
    assert!(proxy.wait_exit(Duration::from_secs(10)).success());
    let stderr = proxy.stderr_text();
    assert!(!stderr.contains("hunter2"), "{stderr}");
    assert!(
        stderr.contains(
            "-> request tools/call echo #1 118 B\n    {\n      \"id\": 1,\n      \"jsonrpc\": \"2.0\",\n      \"method\": \"tools/call\",\n      \"params\": {\n        \"arguments\": {\n          \"password\": \"[REDACTED]\",\n          \"text\": \"hi\"\n        },\n        \"name\": \"echo\"\n      }\n    }\n"
        ),
        "{stderr}"
    );

    // To the log file, as JSON.
    let log = dir.path().join("shadowcat.log");
    let mut cmd = support::command();
    cmd.args([
        "--log-file",
        log.to_str().unwrap(),
        "--log-format",
        "json",
        "forward",
        "stdio",
        "--traffic",
        "lines",
        "--",
        support::fixture().to_str().unwrap(),
    ]);
    proxy = Proxy::spawn(cmd);
    proxy.initialize();
    proxy.call(1, "tools/call", tool("echo", json!({"text": "hi"})));
    proxy.close_stdin();
    assert!(proxy.wait_exit(Duration::from_secs(10)).success());
    assert!(
        !proxy.stderr_text().contains("traffic"),
        "{}",
        proxy.stderr_text()
    );
    let logged: Vec<Value> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|v: &Value| v["target"] == "shadowcat::traffic")
        .collect();
    let answer = logged
        .iter()
        .find(|v| v["fields"]["kind"] == "response" && v["fields"]["name"] == "echo")
        .unwrap_or_else(|| panic!("{logged:?}"));
    let fields = &answer["fields"];
    assert_eq!(fields["method"], "tools/call");
    assert_eq!(fields["id"], "1");
    assert_eq!(fields["direction"], "to_client");
    assert!(fields["size"].as_u64().unwrap() > 0, "{fields}");
    assert!(fields["latency_us"].as_u64().is_some(), "{fields}");
    assert!(
        fields["session"].as_str().unwrap().starts_with("s-"),
        "{fields}"
    );
}

/// The gateway shows its sessions' traffic the same way.
#[test]
fn the_gateway_shows_its_traffic_too() {
    let mut gateway = Gateway::fixture(&["--traffic", "lines"]);
    let session = gateway.initialize();
    let answer = gateway.post(
        Some(&session),
        &json!({"jsonrpc": "2.0", "id": 5, "method": "tools/call", "params": {"name": "echo", "arguments": {"text": "x"}}}),
    );
    assert_eq!(answer.status, 200);
    gateway.terminate();
    assert!(gateway.wait_exit(Duration::from_secs(10)).success());
    let stderr = gateway.stderr_text();
    let lines = anonymous(&traffic(&stderr));
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("S -> request tools/call echo #5 ")),
        "{stderr}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("S <- response tools/call echo #5 ")),
        "{stderr}"
    );
}

/// `tape show` names each call's tool; `--messages` shows each message as a line and its body;
/// `--follow` shows them as a recording writes them, and ends with the tape.
#[test]
fn a_tape_shows_its_messages_and_can_be_followed_while_it_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let tape = dir.path().join("live.jsonl");
    let mut proxy = Proxy::fixture(&["--record", tape.to_str().unwrap()]);
    proxy.initialize();
    // Followed from the start of the recording.
    let mut follower = std::process::Command::new(support::shadowcat())
        .args(["tape", "show", tape.to_str().unwrap(), "--follow"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = follower.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        use std::io::BufRead as _;
        for line in std::io::BufReader::new(stdout).lines() {
            if tx.send(line.unwrap()).is_err() {
                break;
            }
        }
    });
    let wait_for = |needle: &str| {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return seen,
                Ok(line) => seen.push(line),
                Err(e) => panic!("{needle:?} not followed ({e}); got {seen:#?}"),
            }
        }
    };
    wait_for("-> request initialize #0 ");
    proxy.call(1, "tools/call", tool("echo", json!({"text": "followed"})));
    let before = wait_for("<- response tools/call echo #1 ");
    assert!(
        before
            .iter()
            .any(|l| l.contains("-> request tools/call echo #1 ")),
        "{before:#?}"
    );
    let body = wait_for("}");
    assert!(
        body.iter().any(|l| l.trim() == r#""text": "followed","#),
        "{body:#?}"
    );
    proxy.close_stdin();
    assert!(proxy.wait_exit(Duration::from_secs(10)).success());
    wait_for("end: closed at ");
    let status = follower.wait().unwrap();
    assert!(status.success());

    // The whole tape, shown afterwards.
    let out = support::command()
        .args(["tape", "show", tape.to_str().unwrap()])
        .output()
        .unwrap();
    let table = String::from_utf8(out.stdout).unwrap();
    let call_row = table
        .lines()
        .find(|l| l.contains("response") && l.contains("tools/call"))
        .unwrap_or_else(|| panic!("{table}"));
    let cells: Vec<&str> = call_row.split_whitespace().collect();
    assert_eq!(
        &cells[4..8],
        ["response", "tools/call", "echo", "1"],
        "{table}"
    );
    let out = support::command()
        .args(["tape", "show", tape.to_str().unwrap(), "--messages"])
        .output()
        .unwrap();
    let messages = String::from_utf8(out.stdout).unwrap();
    assert!(messages.starts_with("tape "), "{messages}");
    let call = messages
        .split("\n\n")
        .find(|m| m.contains("-> request tools/call echo #1 "))
        .unwrap_or_else(|| panic!("{messages}"));
    let (line, body) = call.split_once('\n').unwrap();
    assert!(line.ends_with(" B"), "{line}");
    let body: Value = serde_json::from_str(body).unwrap();
    assert_eq!(body["params"]["arguments"]["text"], "followed");

    // docs/tapes.md shows a call to echo "hi" so: the same but for the time on the tape.
    let hi = dir.path().join("hi.jsonl");
    let mut proxy = Proxy::fixture(&["--record", hi.to_str().unwrap()]);
    proxy.initialize();
    proxy.call(1, "tools/call", tool("echo", json!({"text": "hi"})));
    proxy.close_stdin();
    assert!(proxy.wait_exit(Duration::from_secs(10)).success());
    let out = support::command()
        .args(["tape", "show", hi.to_str().unwrap(), "--messages"])
        .output()
        .unwrap();
    let messages = String::from_utf8(out.stdout).unwrap();
    let shown = include_str!("../docs/tapes.md")
        .split("--messages`: the header")
        .nth(1)
        .and_then(|s| s.split("```text\n").nth(1))
        .and_then(|s| s.split("```").next())
        .unwrap();
    // The docs' block is indented in its list item.
    let shown: Vec<&str> = shown
        .lines()
        .map(|l| l.strip_prefix("  ").unwrap_or(l))
        .filter(|l| !l.trim().is_empty())
        .collect();
    let (time, rest) = shown[0].split_once(' ').unwrap();
    assert!(time.ends_with("ms"), "{time}");
    let block = messages
        .split("\n\n")
        .find(|m| m.contains(rest))
        .unwrap_or_else(|| panic!("no {rest:?} in {messages}"));
    let got: Vec<&str> = block.lines().skip(1).collect();
    assert_eq!(got, shown[1..], "{messages}");
}
