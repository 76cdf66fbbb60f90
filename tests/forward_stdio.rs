//! `shadowcat forward stdio` end to end: the real binary, real pipes, the fixture server.

// Test code: panics are the failure report, and wall-clock time of real processes is measured
// with std's Instant on purpose.
#![allow(
    clippy::pedantic,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::disallowed_types
)]

mod support;

use std::collections::HashSet;
use std::io::Write;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::{Proxy, WAIT, fixture, group_alive, tool};

fn error_code(answer: &Value) -> i64 {
    answer["error"]["code"]
        .as_i64()
        .unwrap_or_else(|| panic!("not an error: {answer}"))
}

#[test]
fn initializes_lists_and_calls_tools() {
    let mut proxy = Proxy::fixture(&[]);
    let init = proxy.initialize();
    assert_eq!(init["result"]["serverInfo"]["name"], "shadowcat-fixture");
    let tools = proxy.call(1, "tools/list", json!({}));
    assert!(
        tools["result"]["tools"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["name"] == "echo")
    );
    let echo = proxy.call(2, "tools/call", tool("echo", json!({"text": "héllo"})));
    assert_eq!(echo["result"]["content"][0]["text"], "héllo");
    assert_eq!(proxy.call(3, "ping", json!({}))["result"], json!({}));
}

#[test]
fn forwards_messages_byte_for_byte() {
    let mut proxy = Proxy::fixture(&[]);
    // Odd spacing, escapes, unknown members and `_meta` must reach the server exactly as sent.
    let line = r#"{ "jsonrpc" : "2.0", "id" : "x-1", "method":"tools/call", "params": {"name":"raw_echo","arguments":{"t":"\u00e9\n"}, "_meta":{"k":[1, 2.50]}}, "extra": true }"#;
    proxy.write_raw(format!("{line}\n").as_bytes());
    let answer = proxy.recv();
    assert_eq!(answer["id"], "x-1");
    assert_eq!(answer["result"]["content"][0]["text"], line);
}

#[test]
fn ten_thousand_pipelined_requests_are_all_answered_with_matching_ids() {
    // All 10,000 may be in flight at once.
    support::pipeline_echoes(Proxy::fixture(&["--max-pending-requests", "10000"]), 10_000);
}

/// Backpressure, not refusal: with room for 100 pending requests, 10,000 pipelined calls are
/// all answered (the client is read more slowly instead of being refused), in bounded memory.
#[test]
fn past_the_pending_limit_a_pipelining_client_is_slowed_down_not_refused() {
    let peak_kib =
        support::pipeline_echoes(Proxy::fixture(&["--max-pending-requests", "100"]), 10_000);
    eprintln!(
        "forward stdio, 10,000 pipelined calls, 100 pending at most: peak RSS {peak_kib} KiB"
    );
    assert!(peak_kib < 64 * 1024, "peak RSS {peak_kib} KiB");
}

#[test]
fn a_five_mib_message_passes_both_ways() {
    let mut proxy = Proxy::fixture(&[]);
    let text = "y".repeat(5 * 1024 * 1024);
    let answer = proxy.call(1, "tools/call", tool("echo", json!({"text": text})));
    assert_eq!(
        answer["result"]["content"][0]["text"]
            .as_str()
            .unwrap()
            .len(),
        text.len()
    );
}

#[test]
fn an_over_limit_message_gets_an_error_and_the_session_continues() {
    let mut proxy = Proxy::fixture(&["--max-message-size", "1MiB"]);
    proxy.initialize();
    let text = "z".repeat(2 * 1024 * 1024);
    let answer = proxy.call(7, "tools/call", tool("echo", json!({"text": text})));
    assert_eq!(error_code(&answer), -32080);
    assert_eq!(answer["error"]["data"]["limit"], 1024 * 1024);
    assert!(answer["error"]["data"]["size"].as_u64().unwrap() > 2 * 1024 * 1024);
    assert_eq!(answer["error"]["data"]["shadowcat"], "message_too_large");
    // The next message still works.
    assert_eq!(proxy.call(8, "ping", json!({}))["result"], json!({}));
    // An over-limit answer from the server is not forwarded; its request gets an error.
    let answer = proxy.call(
        9,
        "tools/call",
        tool("big", json!({"bytes": 2 * 1024 * 1024})),
    );
    assert_eq!(error_code(&answer), -32082);
    assert_eq!(proxy.call(10, "ping", json!({}))["result"], json!({}));
}

#[test]
fn malformed_lines_from_the_client_get_errors_and_the_session_continues() {
    let mut proxy = Proxy::fixture(&[]);
    proxy.initialize();
    proxy.write_raw(b"{not json\n");
    let answer = proxy.recv();
    assert_eq!(
        (error_code(&answer), answer["id"].clone()),
        (-32700, Value::Null)
    );
    // Broken JSON whose id can still be read is answered with that id.
    proxy.write_raw(b"{\"jsonrpc\":\"2.0\",\"id\":31,\"method\":\"ping\",\"params\":{\n");
    let answer = proxy.recv();
    assert_eq!(
        (error_code(&answer), answer["id"].clone()),
        (-32700, json!(31))
    );
    // Valid JSON, invalid JSON-RPC.
    proxy.write_raw(b"{\"jsonrpc\":\"1.0\",\"id\":32,\"method\":\"ping\"}\n");
    let answer = proxy.recv();
    assert_eq!(
        (error_code(&answer), answer["id"].clone()),
        (-32600, json!(32))
    );
    proxy.write_raw(b"[]\n\n   \n");
    assert_eq!(error_code(&proxy.recv()), -32600);
    // Blank lines are ignored, and the session goes on.
    assert_eq!(proxy.call(33, "ping", json!({}))["result"], json!({}));
}

#[test]
fn a_server_to_client_request_round_trips() {
    let mut proxy = Proxy::fixture(&[]);
    proxy.initialize();
    proxy.send(&json!({"jsonrpc":"2.0","id":1,"method":"tools/call","params":tool("sample", json!({"prompt":"hi"}))}));
    let request = proxy.recv();
    assert_eq!(request["method"], "sampling/createMessage");
    assert_eq!(request["params"]["messages"][0]["content"]["text"], "hi");
    let sample_id = request["id"].clone();
    proxy.send(
        &json!({"jsonrpc":"2.0","id":sample_id,"result":{"role":"assistant","model":"m",
        "content":{"type":"text","text":"sampled!"}}}),
    );
    let answer = proxy.recv();
    assert_eq!(answer["id"], 1);
    assert_eq!(
        answer["result"]["content"][0]["text"],
        "client said: sampled!"
    );
    // A second answer to the same server request has nobody waiting: dropped, not forwarded.
    proxy.send(&json!({"jsonrpc":"2.0","id":sample_id,"result":{}}));
    let stats = proxy.call(2, "tools/call", tool("stats", json!({})));
    assert_eq!(
        stats["result"]["structuredContent"]["unexpected_responses"], 0,
        "{stats}"
    );
}

#[test]
fn a_malformed_client_answer_to_a_server_request_fails_that_request_not_the_client() {
    let mut proxy = Proxy::fixture(&[]);
    proxy.initialize();
    proxy.send(&json!({"jsonrpc":"2.0","id":1,"method":"tools/call","params":tool("sample", json!({"prompt":"hi"}))}));
    let request = proxy.recv();
    let sample_id = request["id"].as_str().unwrap().to_owned();
    // The client's answer is cut off: the server's request must fail, not hang.
    proxy.write_raw(
        format!("{{\"jsonrpc\":\"2.0\",\"id\":\"{sample_id}\",\"result\":{{\"content\":\n")
            .as_bytes(),
    );
    let answer = proxy.recv();
    assert_eq!(
        answer["id"], 1,
        "the client must not get an error for the server's id: {answer}"
    );
    let text = answer["result"]["content"][0]["text"].as_str().unwrap();
    assert!(
        text.starts_with("client error:") && text.contains("not valid JSON-RPC"),
        "{text}"
    );
}

#[test]
fn a_malformed_server_request_is_answered_to_the_server() {
    let mut proxy = Proxy::fixture(&[]);
    proxy.initialize();
    let answer = proxy.call(1, "tools/call", tool("bad_request", json!({})));
    assert_eq!(answer["result"]["content"][0]["text"], "sent a bad request");
    let stats = proxy.call(2, "tools/call", tool("stats", json!({})));
    assert_eq!(
        stats["result"]["structuredContent"]["errors_received"],
        json!(["bad-1"]),
        "{stats}"
    );
}

#[test]
fn a_batch_gets_a_batch_back() {
    let mut proxy = Proxy::fixture(&[]);
    proxy.initialize();
    proxy.write_raw(
        br#"[{"jsonrpc":"2.0","id":1,"method":"ping"},{"jsonrpc":"2.0","method":"notifications/progress","params":{}},{"jsonrpc":"2.0","id":"b","method":"tools/call","params":{"name":"echo","arguments":{"text":"in a batch"}}},{"jsonrpc":"2.0","id":3}]"#,
    );
    proxy.write_raw(b"\n");
    let answer = proxy.recv();
    let members = answer
        .as_array()
        .unwrap_or_else(|| panic!("expected an array, got {answer}"));
    assert_eq!(members.len(), 3, "{answer}");
    let by_id = |id: Value| {
        members
            .iter()
            .find(|m| m["id"] == id)
            .unwrap_or_else(|| panic!("no {id} in {answer}"))
    };
    assert_eq!(by_id(json!(1))["result"], json!({}));
    assert_eq!(
        by_id(json!("b"))["result"]["content"][0]["text"],
        "in a batch"
    );
    assert_eq!(error_code(by_id(json!(3))), -32600);
    // An id still awaited by an open batch can't be reused by another one.
    proxy.write_raw(b"[{\"jsonrpc\":\"2.0\",\"id\":5,\"method\":\"tools/call\",\"params\":{\"name\":\"sleep\",\"arguments\":{\"ms\":300}}}]\n");
    proxy.write_raw(b"[{\"jsonrpc\":\"2.0\",\"id\":5,\"method\":\"ping\"},{\"jsonrpc\":\"2.0\",\"id\":6,\"method\":\"ping\"}]\n");
    let second = proxy.recv();
    let second = second
        .as_array()
        .unwrap_or_else(|| panic!("expected an array, got {second}"));
    assert_eq!(second.len(), 2);
    assert_eq!(
        error_code(second.iter().find(|m| m["id"] == 5).unwrap()),
        -32084
    );
    assert_eq!(
        second.iter().find(|m| m["id"] == 6).unwrap()["result"],
        json!({})
    );
    let first = proxy.recv();
    assert_eq!(
        first[0]["result"]["content"][0]["text"], "slept 300 ms",
        "{first}"
    );
    // A batch of notifications only gets no answer at all.
    proxy.write_raw(b"[{\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\"}]\n");
    assert_eq!(proxy.call(4, "ping", json!({}))["result"], json!({}));
}

#[test]
fn a_cancelled_batch_member_does_not_hold_the_batch_back() {
    let mut proxy = Proxy::fixture(&[]);
    proxy.initialize();
    proxy.write_raw(b"[{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\"},{\"jsonrpc\":\"2.0\",\"id\":2,\"method\":\"tools/call\",\"params\":{\"name\":\"sleep\",\"arguments\":{\"ms\":2000}}}]\n");
    proxy.send(&json!({"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":2,"reason":"changed my mind"}}));
    let answer = proxy.recv_line(Duration::from_millis(1500));
    let answer: Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(answer, json!([{"jsonrpc":"2.0","id":1,"result":{}}]));
    // The late answer to the cancelled request is dropped, not sent on its own.
    proxy.expect_silence(Duration::from_millis(2500));
}

#[test]
fn a_batch_over_the_limit_is_refused_whole() {
    let mut proxy = Proxy::fixture(&[]);
    proxy.initialize();
    let pings: Vec<Value> = (0..1025)
        .map(|id| json!({"jsonrpc":"2.0","id":id,"method":"ping"}))
        .collect();
    proxy.send(&Value::Array(pings));
    let answer = proxy.recv();
    assert_eq!(error_code(&answer), -32600);
    assert_eq!(answer["error"]["data"]["limit"], 1024);
    assert_eq!(proxy.call(1, "ping", json!({}))["result"], json!({}));
}

#[test]
fn stray_and_malformed_server_output_is_not_forwarded() {
    let mut proxy = Proxy::fixture(&[]);
    proxy.initialize();
    // The junk line never reaches the client: the next line is the real answer.
    let answer = proxy.call(1, "tools/call", tool("junk", json!({})));
    assert_eq!(answer["result"]["content"][0]["text"], "after junk");
    // A malformed answer is replaced by an error for the request it names.
    let answer = proxy.call(2, "tools/call", tool("bad_response", json!({})));
    assert_eq!(error_code(&answer), -32082);
    assert_eq!(proxy.call(3, "ping", json!({}))["result"], json!({}));
}

#[test]
fn a_server_crash_fails_in_flight_requests_quickly_and_passes_on_its_exit_code() {
    let mut proxy = Proxy::fixture(&[]);
    proxy.initialize();
    proxy.send(&json!({"jsonrpc":"2.0","id":1,"method":"tools/call","params":tool("sleep", json!({"ms": 30_000}))}));
    proxy.send(&json!({"jsonrpc":"2.0","id":2,"method":"tools/call","params":tool("sleep", json!({"ms": 30_000}))}));
    std::thread::sleep(Duration::from_millis(100));
    let crashed_at = Instant::now();
    proxy.send(&json!({"jsonrpc":"2.0","id":3,"method":"tools/call","params":tool("crash", json!({"code": 7}))}));
    let mut ids = HashSet::new();
    for _ in 0..3 {
        let answer = proxy.recv();
        assert_eq!(error_code(&answer), -32081, "{answer}");
        let data = &answer["error"]["data"];
        assert_eq!(data["exitCode"], 7);
        assert!(
            data["stderr"]
                .as_array()
                .unwrap()
                .iter()
                .any(|l| l == "fixture: last words before exiting"),
            "{data}"
        );
        assert!(
            answer["error"]["message"]
                .as_str()
                .unwrap()
                .contains("exit status 7")
        );
        ids.insert(answer["id"].as_i64().unwrap());
    }
    assert!(
        crashed_at.elapsed() < Duration::from_secs(1),
        "errors took {:?}",
        crashed_at.elapsed()
    );
    assert_eq!(ids, HashSet::from([1, 2, 3]));
    assert_eq!(proxy.wait_exit(WAIT).code(), Some(7));
}

/// Starts the proxy in front of `sh -c 'echo $$ > pidfile; <extra>; exec <fixture> <args>'`, so
/// the test knows the server's process group.
fn proxy_with_pid(
    opts: &[&str],
    shell_prefix: &str,
    fixture_args: &str,
) -> (Proxy, i32, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("pid");
    let script = format!(
        "echo $$ > '{}'; {shell_prefix} exec '{}' {fixture_args}",
        pidfile.display(),
        fixture().display()
    );
    let mut proxy = Proxy::start(opts, &["sh", "-c", &script]);
    proxy.initialize();
    let pid: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    (proxy, pid, dir)
}

#[test]
fn closing_stdin_ends_both_processes_and_leaves_no_process_behind() {
    // A background grandchild in the server's group must not outlive the proxy either.
    let (mut proxy, pgid, _dir) = proxy_with_pid(&["--shutdown-timeout", "2s"], "sleep 300 &", "");
    assert_eq!(
        support::live_members(pgid).len(),
        2,
        "the server and its background sleep"
    );
    let started = Instant::now();
    proxy.close_stdin();
    let status = proxy.wait_exit(Duration::from_secs(5));
    assert_eq!(status.code(), Some(0));
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
    assert!(!group_alive(pgid), "processes left in group {pgid}");
}

#[test]
fn a_server_ignoring_eof_and_sigterm_is_killed_after_the_timeouts() {
    let (mut proxy, pgid, _dir) = proxy_with_pid(
        &["--shutdown-timeout", "300ms"],
        "trap '' TERM;",
        "--ignore-stdin-eof",
    );
    let started = Instant::now();
    proxy.close_stdin();
    let status = proxy.wait_exit(Duration::from_secs(10));
    let took = started.elapsed();
    assert_eq!(status.code(), Some(0));
    // 300 ms for EOF, then 2 s of SIGTERM grace, then SIGKILL.
    assert!(
        took >= Duration::from_millis(2300) && took < Duration::from_secs(5),
        "took {took:?}"
    );
    assert!(!group_alive(pgid), "processes left in group {pgid}");
    let stderr = proxy.stderr_text();
    assert!(
        stderr.contains("SIGTERM") && stderr.contains("SIGKILL"),
        "{stderr}"
    );
}

#[test]
fn sigterm_and_sigint_shut_down_gracefully() {
    for signal in [
        nix::sys::signal::Signal::SIGTERM,
        nix::sys::signal::Signal::SIGINT,
    ] {
        let (mut proxy, pgid, _dir) = proxy_with_pid(&[], "", "");
        let pid = nix::unistd::Pid::from_raw(i32::try_from(proxy.child.id()).unwrap());
        nix::sys::signal::kill(pid, signal).unwrap();
        let status = proxy.wait_exit(Duration::from_secs(5));
        assert_eq!(status.code(), Some(0), "{signal}");
        assert!(
            !group_alive(pgid),
            "{signal}: processes left in group {pgid}"
        );
    }
}

#[test]
fn requests_in_flight_at_client_eof_are_answered_before_exit() {
    let mut proxy = Proxy::fixture(&[]);
    proxy.initialize();
    proxy.send(&json!({"jsonrpc":"2.0","id":1,"method":"tools/call","params":tool("sleep", json!({"ms": 200}))}));
    proxy.close_stdin();
    // The fixture finishes its sleep before exiting, so the real answer arrives.
    let answer = proxy.recv();
    assert_eq!(answer["result"]["content"][0]["text"], "slept 200 ms");
    assert_eq!(proxy.wait_exit(WAIT).code(), Some(0));
}

#[test]
fn the_server_gets_extra_env_and_cwd_and_its_stderr_reaches_ours() {
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path().canonicalize().unwrap();
    let script = format!(
        "echo \"env=$SC_TEST_VAR cwd=$(pwd)\" >&2; exec '{}'",
        fixture().display()
    );
    let mut proxy = Proxy::start(
        &[
            "--env",
            "SC_TEST_VAR=hello world",
            "--cwd",
            cwd.to_str().unwrap(),
        ],
        &["sh", "-c", &script],
    );
    proxy.initialize();
    let expected = format!("env=hello world cwd={}", cwd.display());
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut stderr = String::new();
    while !stderr.contains(&expected) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        stderr.push_str(&proxy.stderr_text());
    }
    assert!(
        stderr.contains(&expected),
        "server stderr not passed through:\n{stderr}"
    );
}

#[test]
fn stdio_over_a_unix_socket_works() {
    // libuv-based clients (Node) hand their servers socketpairs rather than pipes.
    use std::io::{BufRead, BufReader};
    use std::os::fd::OwnedFd;
    use std::os::unix::net::UnixStream;
    use std::process::Stdio;

    let (ours, theirs) = UnixStream::pair().unwrap();
    let mut child = support::command()
        .args(["forward", "stdio", "--"])
        .arg(fixture())
        .stdin(Stdio::from(OwnedFd::from(theirs.try_clone().unwrap())))
        .stdout(Stdio::from(OwnedFd::from(theirs)))
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    ours.set_read_timeout(Some(WAIT)).unwrap();
    let mut writer = ours.try_clone().unwrap();
    let mut reader = BufReader::new(ours);
    for id in 1..=3 {
        writeln!(writer, r#"{{"jsonrpc":"2.0","id":{id},"method":"ping"}}"#).unwrap();
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        let answer: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(
            (answer["id"].clone(), answer["result"].clone()),
            (json!(id), json!({}))
        );
    }
    writer.shutdown(std::net::Shutdown::Write).unwrap();
    assert!(support::wait_within(&mut child, WAIT).success());
}

#[test]
fn stdio_from_and_to_regular_files_falls_back_and_works() {
    use std::process::Stdio;

    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    let output = dir.path().join("out.jsonl");
    let requests: String = (1..=50)
        .map(|id| format!("{}\n", json!({"jsonrpc":"2.0","id":id,"method":"tools/call","params":tool("echo", json!({"text": format!("f{id}")}))})))
        .collect();
    std::fs::write(&input, requests).unwrap();
    let status = support::command()
        .args(["forward", "stdio", "--"])
        .arg(fixture())
        .stdin(Stdio::from(std::fs::File::open(&input).unwrap()))
        .stdout(Stdio::from(std::fs::File::create(&output).unwrap()))
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let answers: Vec<Value> = std::fs::read_to_string(&output)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(answers.len(), 50);
    for answer in answers {
        let id = answer["id"].as_i64().unwrap();
        assert_eq!(answer["result"]["content"][0]["text"], format!("f{id}"));
    }
}

#[test]
fn a_client_that_stops_reading_our_stdout_ends_the_session_cleanly() {
    use std::process::Stdio;
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("pid");
    let script = format!(
        "echo $$ > '{}'; exec '{}'",
        pidfile.display(),
        fixture().display()
    );
    let mut child = support::command()
        .args(["forward", "stdio", "--", "sh", "-c", &script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Close our end of its stdout, then make the server answer something.
    drop(child.stdout.take());
    let mut stdin = child.stdin.take().unwrap();
    writeln!(stdin, r#"{{"jsonrpc":"2.0","id":1,"method":"ping"}}"#).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "shadowcat kept running with nobody reading"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let pgid: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(!group_alive(pgid));
}

#[test]
fn a_server_that_never_reads_is_still_shut_down_within_the_timeouts() {
    // The server ignores SIGTERM and never reads stdin; 3 MiB queued for it fill the pipe, so
    // shadowcat's writer to it blocks. Closing our stdin must still end everything.
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("pid");
    let script = format!(
        "echo $$ > '{}'; trap '' TERM; exec sleep 300",
        pidfile.display()
    );
    let mut proxy = Proxy::start(&["--shutdown-timeout", "500ms"], &["sh", "-c", &script]);
    let mut stdin = proxy.take_stdin();
    let filler =
        json!({"jsonrpc":"2.0","method":"notifications/x","params":{"pad":"p".repeat(64 * 1024)}});
    let mut line = serde_json::to_vec(&filler).unwrap();
    line.push(b'\n');
    let writer = std::thread::spawn(move || {
        for _ in 0..48 {
            if stdin.write_all(&line).is_err() {
                break;
            }
        }
        // Dropping stdin is the client closing the connection.
    });
    let started = Instant::now();
    let status = proxy.wait_exit(Duration::from_secs(15));
    writer.join().unwrap();
    assert_eq!(status.code(), Some(0), "{}", proxy.stderr_text());
    // 0.5 s for the writer, the rest of the 0.5 s for EOF, 2 s after SIGTERM, then SIGKILL.
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "took {:?}",
        started.elapsed()
    );
    let pgid: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(!group_alive(pgid), "processes left in group {pgid}");
}

#[test]
fn a_crash_while_the_client_keeps_sending_still_reports_the_servers_exit_code() {
    for _ in 0..5 {
        let mut proxy = Proxy::fixture(&[]);
        proxy.initialize();
        let mut stdin = proxy.take_stdin();
        let pinger = std::thread::spawn(move || {
            let crash = json!({"jsonrpc":"2.0","id":"crash","method":"tools/call","params":tool("crash", json!({"code": 7}))});
            writeln!(stdin, "{crash}").unwrap();
            for id in 0..20_000 {
                if writeln!(stdin, r#"{{"jsonrpc":"2.0","id":{id},"method":"ping"}}"#).is_err() {
                    break;
                }
            }
        });
        let status = proxy.wait_exit(Duration::from_secs(10));
        pinger.join().unwrap();
        assert_eq!(status.code(), Some(7), "{}", proxy.stderr_text());
    }
}

#[test]
fn a_second_signal_kills_a_stubborn_server_at_once() {
    let (mut proxy, pgid, _dir) = proxy_with_pid(
        &["--shutdown-timeout", "30s"],
        "trap '' TERM;",
        "--ignore-stdin-eof",
    );
    let pid = nix::unistd::Pid::from_raw(i32::try_from(proxy.child.id()).unwrap());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        proxy.child.try_wait().unwrap().is_none(),
        "still waiting for the server"
    );
    let started = Instant::now();
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
    let status = proxy.wait_exit(Duration::from_secs(5));
    assert_eq!(status.code(), Some(0));
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
    assert!(!group_alive(pgid));
}

#[test]
fn stderr_without_newlines_is_passed_through_and_its_tail_is_bounded() {
    // A server that writes 200 KB of progress output with no newline, then dies mid-request.
    let script = "read line; head -c 200000 /dev/zero | tr '\\0' x >&2; printf ' done' >&2; exit 3";
    let mut proxy = Proxy::start(&[], &["sh", "-c", script]);
    proxy.send(&json!({"jsonrpc":"2.0","id":1,"method":"ping"}));
    let answer = proxy.recv();
    assert_eq!(error_code(&answer), -32081);
    let tail = answer["error"]["data"]["stderr"].as_array().unwrap();
    let last = tail.last().unwrap().as_str().unwrap();
    assert!(
        last.len() <= 1024 && last.starts_with("xxxx"),
        "{} bytes",
        last.len()
    );
    assert_eq!(proxy.wait_exit(WAIT).code(), Some(3));
    let passed = proxy.stderr_text();
    assert!(
        passed.contains(" done") && passed.matches('x').count() >= 200_000,
        "stderr was not passed through whole"
    );
}

#[test]
fn a_request_past_request_timeout_gets_an_error_and_the_server_a_cancellation() {
    let mut proxy = Proxy::fixture(&["--request-timeout", "300ms"]);
    proxy.initialize();
    let started = Instant::now();
    let answer = proxy.call(1, "tools/call", tool("sleep", json!({"ms": 1500})));
    assert_eq!(error_code(&answer), -32086, "{answer}");
    assert_eq!(answer["error"]["data"]["timeoutMs"], 300);
    assert!(
        started.elapsed() < Duration::from_millis(1200),
        "took {:?}",
        started.elapsed()
    );
    let stats = proxy.call(2, "tools/call", tool("stats", json!({})));
    assert_eq!(
        stats["result"]["structuredContent"]["cancelled"],
        json!([1]),
        "{stats}"
    );
    // The late answer (after 1.5 s) is dropped, not delivered as a second answer to id 1.
    proxy.expect_silence(Duration::from_millis(1500));
}

#[test]
fn past_the_pending_limit_a_request_waits_for_room() {
    let mut proxy = Proxy::fixture(&["--max-pending-requests", "2"]);
    proxy.initialize();
    for id in 1..=2 {
        proxy.send(&json!({"jsonrpc":"2.0","id":id,"method":"tools/call","params":tool("sleep", json!({"ms": 300}))}));
    }
    // The third is read only once one of the two is answered, so its answer comes after it.
    proxy.send(&json!({"jsonrpc":"2.0","id":3,"method":"ping"}));
    let first = proxy.recv();
    assert_eq!(
        first["result"]["content"][0]["text"], "slept 300 ms",
        "{first}"
    );
    let rest = [proxy.recv(), proxy.recv()];
    let ping = rest
        .iter()
        .find(|m| m["id"] == 3)
        .expect("the ping is answered");
    assert_eq!(ping["result"], json!({}), "{ping}");
    assert!(
        rest.iter()
            .any(|m| m["result"]["content"][0]["text"] == "slept 300 ms"),
        "{rest:?}"
    );
}

/// A batch that repeats an id gets the first member answered and the repeat refused with
/// -32084 (docs/errors.md), in one batch back.
#[test]
fn a_batch_repeating_an_id_gets_the_repeat_refused() {
    let mut proxy = Proxy::fixture(&[]);
    proxy.initialize();
    proxy.write_raw(
        b"[{\"jsonrpc\":\"2.0\",\"id\":9,\"method\":\"ping\"},{\"jsonrpc\":\"2.0\",\"id\":9,\"method\":\"tools/call\",\"params\":{\"name\":\"echo\",\"arguments\":{\"text\":\"twice\"}}}]\n",
    );
    let answer = proxy.recv();
    let members = answer
        .as_array()
        .unwrap_or_else(|| panic!("expected an array, got {answer}"));
    assert_eq!(members.len(), 2, "{answer}");
    let codes: Vec<Option<i64>> = members
        .iter()
        .map(|m| m["error"]["code"].as_i64())
        .collect();
    assert!(codes.contains(&Some(-32084)), "{answer}");
    assert!(
        members.iter().any(|m| m["result"] == json!({})),
        "the first is answered: {answer}"
    );
}

/// A server killed by a signal: requests in flight get -32081 with `data.signal`, and the proxy
/// exits 128 + the signal's number, as a shell reports it.
#[test]
fn a_server_killed_by_a_signal_is_reported_with_it_and_exit_code_128_plus_n() {
    let (mut proxy, pid, _dir) = proxy_with_pid(&[], "", "");
    proxy.send(&json!({"jsonrpc":"2.0","id":1,"method":"tools/call","params":tool("sleep", json!({"ms": 30_000}))}));
    // The call is at the server before it is killed.
    proxy.send(&json!({"jsonrpc":"2.0","id":2,"method":"ping"}));
    assert_eq!(proxy.recv()["id"], 2);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let answer = proxy.recv();
    assert_eq!(answer["id"], 1, "{answer}");
    assert_eq!(error_code(&answer), -32081, "{answer}");
    assert_eq!(answer["error"]["data"]["signal"], 9, "{answer}");
    assert!(
        answer["error"]["data"].get("exitCode").is_none(),
        "{answer}"
    );
    assert_eq!(proxy.wait_exit(WAIT).code(), Some(128 + 9));
}

/// SIGTERM with a slow call in flight: the call is answered, the server ends by its stdin
/// closing (never SIGTERMed or SIGKILLed), and the proxy exits 0.
#[test]
fn sigterm_lets_a_call_in_flight_finish_and_signals_nothing() {
    let (mut proxy, pgid, _dir) = proxy_with_pid(&["--shutdown-timeout", "10s"], "", "");
    proxy.send(&json!({"jsonrpc":"2.0","id":1,"method":"tools/call","params":tool("sleep", json!({"ms": 1000}))}));
    proxy.send(&json!({"jsonrpc":"2.0","id":2,"method":"ping"}));
    assert_eq!(proxy.recv()["id"], 2);
    let pid = nix::unistd::Pid::from_raw(i32::try_from(proxy.child.id()).unwrap());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let answer = proxy.recv();
    assert_eq!(answer["id"], 1, "{answer}");
    assert_eq!(
        answer["result"]["content"][0]["text"], "slept 1000 ms",
        "{answer}"
    );
    assert_eq!(proxy.wait_exit(WAIT).code(), Some(0));
    assert!(!group_alive(pgid));
    let stderr = proxy.stderr_text();
    assert!(
        !stderr.contains("sending SIGTERM") && !stderr.contains("sending SIGKILL"),
        "{stderr}"
    );
    assert!(stderr.contains("the MCP server exited"), "{stderr}");
}

/// `--restart on-failure`: a crash fails what the server owed at once (with its exit status),
/// then a new server process takes over the same session; the client goes on, and a clean
/// end of the client still ends everything with 0.
#[test]
fn a_crashed_server_is_restarted_and_the_session_goes_on() {
    let mut proxy = Proxy::fixture(&["--restart", "on-failure"]);
    proxy.initialize();
    proxy.send(&json!({"jsonrpc":"2.0","id":1,"method":"tools/call","params":tool("sleep", json!({"ms": 30_000}))}));
    std::thread::sleep(Duration::from_millis(100));
    proxy.send(&json!({"jsonrpc":"2.0","id":2,"method":"tools/call","params":tool("crash", json!({"code": 7}))}));
    let mut ids = HashSet::new();
    for _ in 0..2 {
        let answer = proxy.recv();
        assert_eq!(error_code(&answer), -32081, "{answer}");
        assert_eq!(answer["error"]["data"]["exitCode"], 7);
        ids.insert(answer["id"].as_i64().unwrap());
    }
    assert_eq!(ids, HashSet::from([1, 2]));
    // Sent at once: it waits for the new process, then is answered by it.
    let answer = proxy.call(3, "tools/call", tool("echo", json!({"text": "still here"})));
    assert_eq!(
        answer["result"]["content"][0]["text"],
        "still here",
        "{answer}\n{}",
        proxy.stderr_text()
    );
    let log = proxy.stderr_text();
    assert!(log.contains("restarted the MCP server"), "{log}");
    assert!(log.contains("generation=2"), "{log}");
    proxy.close_stdin();
    assert_eq!(proxy.wait_exit(WAIT).code(), Some(0));
}

/// A server that crashes as soon as it starts is restarted with growing delays, and the crash
/// loop is reported; the client can still end it all at any time.
#[test]
fn a_crash_loop_is_backed_off_and_reported() {
    let mut proxy = Proxy::start(&["--restart", "on-failure"], &["sh", "-c", "exit 3"]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !proxy.stderr_text().contains("crashing in a loop") {
        assert!(
            Instant::now() < deadline,
            "no crash loop reported:\n{}",
            proxy.stderr_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = proxy.stderr_text();
    // Five crashes in a row (the first process, four restarts) make the loop: no more starts
    // than that before it, so the delays were not zero.
    assert_eq!(log.matches("restarting the MCP server").count(), 4, "{log}");
    let closed_at = Instant::now();
    proxy.close_stdin();
    assert_eq!(proxy.wait_exit(WAIT).code(), Some(0));
    assert!(closed_at.elapsed() < Duration::from_secs(5));
}

/// `--restart` is for a server command: with --url it is refused, naming the option.
#[test]
fn restart_with_a_url_is_refused() {
    let out = support::command()
        .args([
            "forward",
            "stdio",
            "--restart",
            "on-failure",
            "--url",
            "http://127.0.0.1:9/mcp",
        ])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--restart"), "{stderr}");
}
