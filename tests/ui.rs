//! The live view (`--ui-listen`) through the real binary: its event feed carries each message
//! with what became of it (rules, masks, latency), its page and API refuse other sites and other
//! hosts, and its tape API reads what `--record` wrote. The page itself, in a real browser, is
//! tests/ui_browser.rs.
#![allow(
    clippy::pedantic,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::disallowed_types
)]

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::{Proxy, SseReader, WAIT, http_request, tool};

/// The live view's `127.0.0.1:PORT`, from the log line that announces it.
fn ui_addr(stderr: impl Fn() -> String) -> String {
    let started = Instant::now();
    loop {
        let text = stderr();
        if let Some(addr) = text
            .split("live view on http://")
            .nth(1)
            .and_then(|rest| rest.split('/').next())
        {
            return addr.to_owned();
        }
        assert!(
            started.elapsed() < WAIT,
            "the live view was not announced:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn get(addr: &str, path: &str, headers: &[(&str, String)]) -> support::HttpResponse {
    http_request(addr, "GET", path, headers, b"")
}

const RULES: &str = r#"
version: 1
rules:
  - name: no-add
    match: {tool: add}
    block: {code: -32001, message: adding is off}
  - name: shout
    match:
      tool: echo
      params: [{path: "$.arguments.text", equals: modify me}]
    modify: {set: {"$.arguments.text": MODIFIED}}
  - name: would-block-echo
    mode: audit
    match: {tool: echo, params: [{path: "$.arguments.text", equals: audit me}]}
    block: {message: not really}
"#;

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_owned()
}

/// The feed's events for the messages of `calls`, read from `events` until `count` came.
fn read_events(events: &mut SseReader, count: usize) -> Vec<Value> {
    let mut seen = Vec::new();
    while seen.len() < count {
        match events.next_message() {
            Some(event) => seen.push(event),
            None => panic!("the feed ended after {seen:#?}"),
        }
    }
    seen
}

#[test]
fn the_feed_shows_each_message_and_what_became_of_it() {
    let dir = tempfile::tempdir().unwrap();
    let rules = write(dir.path(), "rules.yaml", RULES);
    let mut proxy = Proxy::fixture(&[
        "--session-store",
        "memory",
        "--ui-listen",
        "127.0.0.1:0",
        "--rules",
        &rules,
        "--redact",
        "$.params.arguments.password",
    ]);
    let addr = ui_addr(|| proxy.stderr_text());
    let mut events = SseReader::open_path(&addr, "GET", "/api/events", &[], b"");
    assert_eq!(events.status, 200);
    let stats = get(&addr, "/api/stats", &[]).json();
    assert_eq!(stats["watchers"], 1, "{stats}");

    proxy.initialize();
    let answer = proxy.call(2, "tools/call", tool("echo", json!({"text": "hello"})));
    assert_eq!(answer["result"]["content"][0]["text"], "hello");
    let blocked = proxy.call(3, "tools/call", tool("add", json!({"a": 1, "b": 2})));
    assert_eq!(blocked["error"]["code"], -32001);
    let modified = proxy.call(4, "tools/call", tool("echo", json!({"text": "modify me"})));
    assert_eq!(modified["result"]["content"][0]["text"], "MODIFIED");
    let audited = proxy.call(5, "tools/call", tool("echo", json!({"text": "audit me"})));
    assert_eq!(audited["result"]["content"][0]["text"], "audit me");
    let secret = proxy.call(
        6,
        "tools/call",
        tool("echo", json!({"text": "login", "password": "hunter2"})),
    );
    assert!(secret["result"].is_object(), "{secret}");

    // initialize, its answer, initialized, then each call and its answer (the blocked one is
    // answered by the proxy: one event).
    let seen = read_events(&mut events, 3 + 2 + 1 + 2 + 2 + 2);
    let session = seen[0]["session"].as_str().unwrap().to_owned();
    assert!(
        session.starts_with("s-"),
        "the digest, not the id: {session}"
    );
    for event in &seen {
        assert_eq!(event["session"], session.as_str());
        assert!(event["seq"].as_u64().unwrap() > 0);
        assert!(event["body"]["size"].as_u64().unwrap() > 0);
    }
    let find = |id: i64, kind: &str| {
        seen.iter()
            .find(|e| e["id"].as_str() == Some(id.to_string().as_str()) && e["kind"] == kind)
            .unwrap_or_else(|| panic!("no {kind} {id} in {seen:#?}"))
    };

    let call = find(2, "request");
    assert_eq!(call["direction"], "to_server");
    assert_eq!(call["method"], "tools/call");
    assert_eq!(call["outcome"], "forwarded");
    assert!(call["latency_us"].is_null());
    let reply = find(2, "response");
    assert_eq!(reply["direction"], "to_client");
    assert_eq!(
        reply["method"], "tools/call",
        "an answer is named by its request"
    );
    assert!(reply["latency_us"].as_u64().is_some(), "{reply}");
    assert!(reply["body"]["text"].as_str().unwrap().contains("hello"));

    let block = find(3, "request");
    assert_eq!(block["outcome"], "answered");
    assert_eq!(block["decisions"][0]["what"], "rule");
    let details: Vec<(String, String)> =
        serde_json::from_value(block["decisions"][0]["details"].clone()).unwrap();
    assert!(details.contains(&("shadowcat.rule".into(), "no-add".into())));
    assert!(details.contains(&("shadowcat.action".into(), "block".into())));
    assert!(
        block["answer"]["text"]
            .as_str()
            .unwrap()
            .contains("adding is off")
    );

    let change = find(4, "request");
    assert_eq!(change["outcome"], "modified");
    assert!(
        change["before"]["text"]
            .as_str()
            .unwrap()
            .contains("modify me")
    );
    assert!(
        change["body"]["text"]
            .as_str()
            .unwrap()
            .contains("MODIFIED")
    );

    let audit = find(5, "request");
    assert_eq!(
        audit["outcome"], "forwarded",
        "audit mode changes nothing: {audit}"
    );
    let details: Vec<(String, String)> =
        serde_json::from_value(audit["decisions"][0]["details"].clone()).unwrap();
    assert!(details.contains(&("shadowcat.mode".into(), "audit".into())));

    let masked = find(6, "request");
    let text = masked["body"]["text"].as_str().unwrap();
    assert!(!text.contains("hunter2"), "{text}");
    assert!(text.contains("[REDACTED]"), "{text}");

    // The sessions table: the running session, by its digest, never by its id.
    let sessions = get(&addr, "/api/sessions", &[]).json();
    let live = sessions["live"].as_array().unwrap();
    assert_eq!(live.len(), 1, "{sessions}");
    assert_eq!(live[0]["session"], session.as_str());
    assert!(live[0].get("id").is_none(), "{sessions}");
    assert_eq!(live[0]["transport"], "stdio");
    assert!(live[0]["frames_from_client"].as_u64().unwrap() >= 7);

    drop(events);
    // The watcher is gone once its connection is.
    let started = Instant::now();
    while get(&addr, "/api/stats", &[]).json()["watchers"] != 0 {
        assert!(started.elapsed() < WAIT, "the watcher stayed");
        std::thread::sleep(Duration::from_millis(20));
    }
    proxy.close_stdin();
    assert!(proxy.wait_exit(WAIT).success());
}

#[test]
fn the_page_is_served_with_its_policy_and_other_sites_and_hosts_are_refused() {
    let mut proxy = Proxy::fixture(&[
        "--session-store",
        "memory",
        "--ui-listen",
        "127.0.0.1:0",
        "--ui-trace-url",
        "http://127.0.0.1:16686/trace/{trace_id}",
    ]);
    let addr = ui_addr(|| proxy.stderr_text());
    let config = get(&addr, "/api/config", &[]).json();
    assert_eq!(
        config["trace_url"], "http://127.0.0.1:16686/trace/{trace_id}",
        "{config}"
    );
    let page = get(&addr, "/", &[]);
    assert_eq!(page.status, 200);
    assert!(
        page.header("content-type")
            .unwrap()
            .starts_with("text/html")
    );
    let policy = page.header("content-security-policy").unwrap();
    assert!(policy.contains("script-src 'self'"), "{policy}");
    assert!(policy.contains("frame-ancestors 'none'"), "{policy}");
    let body = String::from_utf8_lossy(&page.body).into_owned();
    assert!(body.contains("/app.js"), "{body}");
    for (path, kind) in [("/app.js", "text/javascript"), ("/app.css", "text/css")] {
        let asset = get(&addr, path, &[]);
        assert_eq!(asset.status, 200, "{path}");
        assert!(asset.header("content-type").unwrap().starts_with(kind));
        assert!(asset.body.len() > 500, "{path}");
    }
    // DNS rebinding: a page on another name that resolves here.
    let rebound = http_request(
        &addr,
        "GET",
        "/api/sessions",
        &[("Host", "attacker.example:80".to_owned())],
        b"",
    );
    assert_eq!(rebound.status, 421);
    // Another site's page, through the visitor's browser.
    let cross = get(
        &addr,
        "/api/events",
        &[("Origin", "http://attacker.example".to_owned())],
    );
    assert_eq!(cross.status, 403);
    let same = get(&addr, "/api/stats", &[("Origin", format!("http://{addr}"))]);
    assert_eq!(same.status, 200);
    assert_eq!(get(&addr, "/nothing", &[]).status, 404);
    proxy.close_stdin();
    assert!(proxy.wait_exit(WAIT).success());
}

#[test]
fn a_non_loopback_ui_address_is_refused() {
    let out = support::command()
        .args([
            "forward",
            "stdio",
            "--ui-listen",
            "0.0.0.0:9100",
            "--",
            "true",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--ui-listen"), "{stderr}");
    assert!(stderr.contains("needs --ui-token-file"), "{stderr}");
    assert!(stderr.contains("SSH tunnel"), "{stderr}");
}

#[test]
fn a_trace_url_needs_the_view_and_a_place_for_the_id() {
    for (args, says) in [
        (
            vec!["--ui-trace-url", "http://127.0.0.1:16686/trace/{trace_id}"],
            "needs --ui-listen",
        ),
        (
            vec![
                "--ui-listen",
                "127.0.0.1:0",
                "--ui-trace-url",
                "http://127.0.0.1:16686/trace/",
            ],
            "{trace_id}",
        ),
        (
            vec![
                "--ui-listen",
                "127.0.0.1:0",
                "--ui-trace-url",
                "javascript:alert(1)//{trace_id}",
            ],
            "http(s) URL",
        ),
    ] {
        let out = support::command()
            .args(["forward", "stdio"])
            .args(&args)
            .args(["--", "true"])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains("--ui-trace-url"), "{stderr}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
}

#[test]
fn watchers_are_capped_and_told() {
    let mut proxy = Proxy::fixture(&["--session-store", "memory", "--ui-listen", "127.0.0.1:0"]);
    let addr = ui_addr(|| proxy.stderr_text());
    let held: Vec<SseReader> = (0..16)
        .map(|_| SseReader::open_path(&addr, "GET", "/api/events", &[], b""))
        .collect();
    assert!(held.iter().all(|w| w.status == 200));
    let over = get(&addr, "/api/events", &[]);
    assert_eq!(over.status, 503);
    assert!(String::from_utf8_lossy(&over.body).contains("too many pages"));
    drop(held);
    proxy.close_stdin();
    assert!(proxy.wait_exit(WAIT).success());
}

#[test]
fn tapes_are_listed_and_read_and_only_tapes() {
    let dir = tempfile::tempdir().unwrap();
    let tapes = dir.path().join("tapes");
    std::fs::create_dir(&tapes).unwrap();
    // Record a session.
    let mut recorder = Proxy::fixture(&[
        "--session-store",
        "memory",
        "--record",
        tapes.to_str().unwrap(),
    ]);
    recorder.initialize();
    recorder.call(2, "tools/call", tool("echo", json!({"text": "taped"})));
    recorder.close_stdin();
    assert!(recorder.wait_exit(WAIT).success());

    let mut proxy = Proxy::fixture(&[
        "--session-store",
        "memory",
        "--record",
        tapes.to_str().unwrap(),
        "--ui-listen",
        "127.0.0.1:0",
    ]);
    let addr = ui_addr(|| proxy.stderr_text());
    let listed = get(&addr, "/api/tapes", &[]).json();
    let listed = listed.as_array().unwrap();
    // The recorded one, and this session's own (being written).
    let taped = listed
        .iter()
        .find(|t| t["frames"].as_u64() == Some(5))
        .unwrap_or_else(|| panic!("{listed:#?}"));
    // The session by its digest: the tape's header keeps the id, a credential.
    assert!(
        taped["session"].as_str().unwrap().starts_with("s-"),
        "{taped}"
    );
    let file = taped["file"].as_str().unwrap();
    assert!(file.ends_with(".jsonl"));
    let tape = get(&addr, &format!("/api/tapes/{file}"), &[]).json();
    assert_eq!(tape["total"], 5);
    assert_eq!(tape["session"], taped["session"]);
    let frames = tape["frames"].as_array().unwrap();
    assert_eq!(frames.len(), 5);
    assert_eq!(frames[0]["method"], "initialize");
    assert_eq!(frames[0]["dir"], "c2s");
    let answer = frames
        .iter()
        .find(|f| f["kind"] == "response" && f["method"] == "tools/call")
        .unwrap();
    assert!(answer["latency"].as_u64().is_some());
    assert!(answer["body"].as_str().unwrap().contains("taped"));
    for bad in ["..%2Fsecrets.jsonl", "notes.txt", ".hidden.jsonl"] {
        let refused = get(&addr, &format!("/api/tapes/{bad}"), &[]);
        assert_eq!(refused.status, 400, "{bad}");
    }
    assert_eq!(get(&addr, "/api/tapes/none.jsonl", &[]).status, 404);
    // A tape too large to open whole is refused, naming the command that reads it (a sparse
    // file: nothing is written).
    let huge = std::fs::File::create(tapes.join("huge.jsonl")).unwrap();
    huge.set_len(65 * 1024 * 1024).unwrap();
    let refused = get(&addr, "/api/tapes/huge.jsonl", &[]);
    assert_eq!(refused.status, 413);
    assert!(String::from_utf8_lossy(&refused.body).contains("tape show"));
    proxy.close_stdin();
    assert!(proxy.wait_exit(WAIT).success());
}

#[test]
fn off_loopback_the_view_wants_its_token() {
    let dir = tempfile::tempdir().unwrap();
    // A token too short to be one is refused at start.
    let short = write(dir.path(), "short", "tiny\n");
    let out = support::command()
        .args(["forward", "stdio", "--ui-listen", "127.0.0.1:0"])
        .args(["--ui-token-file", &short, "--", "true"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("at least 16 characters"));

    let token = "correct-horse-battery-staple";
    let file = write(dir.path(), "ui-token", &format!("{token}\n"));
    let mut proxy = Proxy::fixture(&[
        "--session-store",
        "memory",
        "--ui-listen",
        "0.0.0.0:0",
        "--ui-token-file",
        &file,
    ]);
    let announced = ui_addr(|| proxy.stderr_text());
    let port = announced.rsplit(':').next().unwrap().to_owned();
    let addr = format!("127.0.0.1:{port}");
    for path in ["/", "/app.js", "/api/sessions", "/api/events", "/api/tapes"] {
        let refused = get(&addr, path, &[]);
        assert_eq!(refused.status, 401, "{path}");
        assert!(String::from_utf8_lossy(&refused.body).contains("?token="));
    }
    assert_eq!(get(&addr, "/?token=wrong-but-long-enough", &[]).status, 401);
    // The right token: a cookie of the process's own, and back to `/` (the token leaves the
    // address bar).
    let signed = get(&addr, &format!("/?token={token}"), &[]);
    assert_eq!(signed.status, 303);
    assert_eq!(signed.header("location"), Some("/"));
    let cookie = signed.header("set-cookie").unwrap().to_owned();
    assert!(cookie.contains("HttpOnly"), "{cookie}");
    assert!(cookie.contains("SameSite=Strict"), "{cookie}");
    assert!(
        !cookie.contains(token),
        "the cookie is not the token: {cookie}"
    );
    let pair = cookie.split(';').next().unwrap().to_owned();
    assert_eq!(get(&addr, "/", &[("Cookie", pair.clone())]).status, 200);
    let mut events = SseReader::open_path(
        &addr,
        "GET",
        "/api/events",
        &[("Cookie", pair.clone())],
        b"",
    );
    assert_eq!(events.status, 200);
    proxy.initialize();
    let first = events.next_message().unwrap();
    assert_eq!(first["method"], "initialize");
    let forged = format!("{}x", pair);
    assert_eq!(get(&addr, "/api/stats", &[("Cookie", forged)]).status, 401);
    // A script: the bearer header. Off loopback any Host is served (the token keeps others
    // out), but another site's page is not.
    let bearer = ("Authorization", format!("Bearer {token}"));
    let named = http_request(
        &addr,
        "GET",
        "/api/stats",
        &[("Host", format!("gateway.internal:{port}")), bearer.clone()],
        b"",
    );
    assert_eq!(named.status, 200);
    let cross = get(
        &addr,
        "/api/stats",
        &[("Origin", "http://attacker.example".to_owned()), bearer],
    );
    assert_eq!(cross.status, 403);
    drop(events);
    proxy.close_stdin();
    assert!(proxy.wait_exit(WAIT).success());
}

#[test]
fn a_gateways_feed_shows_a_rate_limit_and_is_counted_on_metrics() {
    let gw = support::Gateway::fixture(&[
        "--session-store",
        "memory",
        "--admin-listen",
        "127.0.0.1:0",
        "--ui-listen",
        "127.0.0.1:0",
        "--rate-limit",
        "global=1/min,tool=echo",
    ]);
    let ui = ui_addr(|| gw.stderr_text());
    let mut events = SseReader::open_path(&ui, "GET", "/api/events", &[], b"");
    let session = gw.initialize();
    for id in 2..4 {
        let call = json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
            "params": {"name": "echo", "arguments": {"text": "x"}}});
        gw.post(Some(&session), &call);
    }
    let refused = (0..10)
        .map(|_| events.next_message().expect("the feed ended"))
        .find(|e| e["id"] == "3" && e["kind"] == "request")
        .expect("the second call in the feed");
    assert_eq!(refused["outcome"], "answered", "{refused}");
    assert_eq!(refused["decisions"][0]["what"], "rate_limited", "{refused}");
    assert!(
        refused["answer"]["text"]
            .as_str()
            .unwrap()
            .contains("rate_limited"),
        "{refused}"
    );
    let metrics = http_request(&gw.admin_addr(), "GET", "/metrics", &[], b"");
    let text = String::from_utf8_lossy(&metrics.body).into_owned();
    assert!(text.contains("shadowcat_ui_watchers 1\n"), "{text}");
    let published: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("shadowcat_ui_events_published_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("{text}"));
    assert!(published >= 6, "{text}");
    assert!(
        text.contains("shadowcat_ui_events_missed_total 0\n"),
        "{text}"
    );
}
