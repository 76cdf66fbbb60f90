//! The gateway against hostile clients and faulty servers: one test per way found to hurt it
//! (issue 19), each against the real binary on loopback, each bounded in time.

#![allow(
    clippy::pedantic,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::disallowed_types
)]

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::{Gateway, Proxy, fixture, http_request, peak_rss_kib, tool};

/// A connection to `addr` from the loopback address `from` (127.0.0.0/8 is all ours), so that
/// a test can be several clients.
fn connect_from(from: &str, addr: &str) -> std::io::Result<TcpStream> {
    let target: SocketAddr = addr.parse().unwrap();
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    let local: SocketAddr = format!("{from}:0").parse().unwrap();
    socket.bind(&local.into())?;
    socket.connect_timeout(&target.into(), Duration::from_secs(5))?;
    Ok(socket.into())
}

/// Reads until the peer closes (or `wait` passes: then panics): what it sent, and when it closed.
fn read_until_closed(stream: &mut TcpStream, wait: Duration) -> (Vec<u8>, Duration) {
    let start = Instant::now();
    stream.set_read_timeout(Some(wait)).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return (got, start.elapsed()),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                return (got, start.elapsed());
            }
            Err(e) => panic!(
                "the connection was not closed within {wait:?} ({e}); got {:?}",
                String::from_utf8_lossy(&got)
            ),
        }
        assert!(start.elapsed() < wait, "the connection stayed open");
    }
}

/// The first line of an HTTP response.
fn status_line(raw: &[u8]) -> String {
    String::from_utf8_lossy(raw)
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned()
}

fn get(addr: &str, path: &str) -> support::HttpResponse {
    http_request(addr, "GET", path, &[], b"")
}

/// The value of a Prometheus sample line `name` (labels included) in `/metrics`.
fn metric(admin: &str, name: &str) -> f64 {
    let text = String::from_utf8(get(admin, "/metrics").body).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {name} in:\n{text}"))
        .parse()
        .unwrap()
}

const PING: &str = r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#;

/// Finding 1: a client that sends its headers slowly (slowloris) is closed after
/// `--header-timeout`, not held for ever.
#[test]
fn a_slowloris_connection_is_closed_at_the_header_timeout() {
    let gw = Gateway::fixture(&["--header-timeout", "1s"]);
    let mut slow = TcpStream::connect(&gw.addr).unwrap();
    slow.write_all(b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        .unwrap();
    let (_, after) = read_until_closed(&mut slow, Duration::from_secs(10));
    assert!(
        after >= Duration::from_millis(900) && after < Duration::from_secs(5),
        "closed after {after:?}"
    );
}

/// Finding 1: a keep-alive connection left idle after its response is closed at the same
/// deadline.
#[test]
fn an_idle_keep_alive_connection_is_closed() {
    let gw = Gateway::fixture(&["--header-timeout", "1s"]);
    let mut idle = TcpStream::connect(&gw.addr).unwrap();
    let request = format!(
        "POST /mcp HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\nContent-Length: {}\r\n\r\n{PING}",
        gw.addr,
        PING.len()
    );
    idle.write_all(request.as_bytes()).unwrap();
    let (response, after) = read_until_closed(&mut idle, Duration::from_secs(10));
    assert!(
        status_line(&response).starts_with("HTTP/1.1 "),
        "{response:?}"
    );
    assert!(
        after >= Duration::from_millis(900) && after < Duration::from_secs(5),
        "closed after {after:?}"
    );
}

/// Finding 1: a body that trickles in is answered 408 with a JSON-RPC error at
/// `--body-timeout`.
#[test]
fn a_slow_body_is_answered_408() {
    let gw = Gateway::fixture(&["--body-timeout", "1s"]);
    let mut slow = TcpStream::connect(&gw.addr).unwrap();
    let head = format!(
        "POST /mcp HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\nContent-Length: 100\r\n\r\n{{\"jsonrpc\"",
        gw.addr
    );
    slow.write_all(head.as_bytes()).unwrap();
    let started = Instant::now();
    let (response, _) = read_until_closed(&mut slow, Duration::from_secs(10));
    let text = String::from_utf8_lossy(&response);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("--body-timeout"), "{text}");
    assert!(started.elapsed() < Duration::from_secs(5));
}

/// Starts the fixture gateway with at most 64 open descriptors (soft and hard, so it cannot
/// raise them) and an admin listener.
fn gateway_with_64_descriptors(opts: &[&str]) -> Gateway {
    let mut sh = std::process::Command::new("sh");
    support::hermetic(&mut sh)
        .arg("-c")
        .arg("ulimit -n 64 && exec \"$0\" \"$@\"")
        .arg(support::shadowcat())
        .args(["--log-level", "debug", "reverse", "--listen", "127.0.0.1:0"])
        .args(["--admin-listen", "127.0.0.1:0"])
        .args(opts)
        .arg("--")
        .arg(fixture());
    Gateway::spawn(sh)
}

/// Opens `n` connections from `from` that each send half a request's headers and stop.
fn half_sent(from: &str, addr: &str, n: usize) -> Vec<TcpStream> {
    (0..n)
        .filter_map(|_| {
            let mut stream = connect_from(from, addr).ok()?;
            stream
                .write_all(b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\n")
                .ok()?;
            Some(stream)
        })
        .collect()
}

/// How many of `streams` the gateway answered with its 503 and closed (the rest it holds).
fn refused(streams: &mut [TcpStream]) -> usize {
    streams
        .iter_mut()
        .filter(|s| {
            let mut s: &TcpStream = s;
            s.set_read_timeout(Some(Duration::from_millis(300)))
                .unwrap();
            let mut buf = [0u8; 512];
            match s.read(&mut buf) {
                Ok(n) if n > 0 => {
                    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                    assert!(text.starts_with("HTTP/1.1 503"), "{text}");
                    assert!(text.contains("too many open connections"), "{text}");
                    assert!(text.contains("-32603"), "{text}");
                    true
                }
                Ok(_) => true,
                Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
            }
        })
        .count()
}

/// Finding 1: 80 half-sent requests from one client under a 64-descriptor limit no longer lock
/// out everyone: that client holds its `--max-connections-per-client`, the rest of its
/// connections are told 503, another client is served, `/healthz` answers, and `/metrics`
/// counts the refusals.
#[test]
fn one_client_cannot_take_every_connection_under_a_low_descriptor_limit() {
    let gw = gateway_with_64_descriptors(&["--max-connections-per-client", "4"]);
    let admin = gw.admin_addr();
    assert!(
        gw.stderr_text().contains("--max-connections lowered"),
        "{}",
        gw.stderr_text()
    );
    let mut attacker = half_sent("127.0.0.2", &gw.addr, 80);
    assert_eq!(
        attacker.len(),
        80,
        "every connection was accepted by the kernel"
    );
    assert_eq!(refused(&mut attacker), 76);
    assert_eq!(get(&admin, "/healthz").status, 200);
    let session = gw.initialize();
    assert!(!session.is_empty());
    assert!(
        metric(
            &admin,
            "shadowcat_connections_refused_total{cap=\"per_client\"}"
        ) >= 76.0
    );
    assert!(gw.stderr_text().contains("connection refused: at its cap"));
}

/// Finding 1: when the process runs out of descriptors (here: sessions' servers took them, and
/// then a few held connections the rest), failed accepts are counted and logged, not fatal, and
/// the gateway serves again as soon as descriptors come back.
#[test]
fn out_of_descriptors_accept_errors_are_counted_and_the_gateway_recovers() {
    let gw = gateway_with_64_descriptors(&["--max-sessions-per-client", "64"]);
    let admin = gw.admin_addr();
    let initialize = json!({"jsonrpc":"2.0","id":0,"method":"initialize","params":{
        "protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"t","version":"1"}}});
    // Each session's server holds three pipes; sessions are opened until one cannot start.
    let mut sessions = Vec::new();
    loop {
        let r = gw.post(None, &initialize);
        if r.json().get("result").is_none() {
            assert_eq!(r.json()["error"]["code"], -32081, "{r:?}");
            assert!(
                String::from_utf8_lossy(&r.body).contains("Too many open files"),
                "{r:?}"
            );
            break;
        }
        sessions.push(r.header("mcp-session-id").unwrap().to_owned());
        assert!(sessions.len() < 40, "descriptors never ran out");
    }
    // What little is left goes to held connections, and then accepting fails.
    let held = half_sent("127.0.0.2", &gw.addr, 12);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !gw.stderr_text().contains("cannot accept connections") {
        assert!(Instant::now() < deadline, "{}", gw.stderr_text());
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(held);
    for session in &sessions {
        let r = http_request(
            &gw.addr,
            "DELETE",
            "/mcp",
            &[("Mcp-Session-Id", session.clone())],
            b"",
        );
        assert_eq!(r.status, 200, "{r:?}");
    }
    assert!(metric(&admin, "shadowcat_connections_accept_errors_total") >= 1.0);
    assert_eq!(get(&admin, "/healthz").status, 200);
    assert!(!gw.initialize().is_empty(), "sessions start again");
}

/// Finding 1: when every connection is taken (by several clients), a new one is told 503 at
/// once, `/healthz` still answers, and service resumes when they go.
#[test]
fn at_the_connection_cap_new_connections_are_refused_and_the_admin_listener_answers() {
    let gw = gateway_with_64_descriptors(&["--max-connections-per-client", "8"]);
    let admin = gw.admin_addr();
    // The cap fits the descriptors: (64 - 32) / 2 = 16 connections.
    let mut first = half_sent("127.0.0.2", &gw.addr, 8);
    let mut second = half_sent("127.0.0.3", &gw.addr, 8);
    assert_eq!(refused(&mut first) + refused(&mut second), 0);
    let mut third = half_sent("127.0.0.4", &gw.addr, 4);
    assert_eq!(refused(&mut third), 4);
    assert_eq!(get(&admin, "/healthz").status, 200);
    assert!(metric(&admin, "shadowcat_connections_refused_total{cap=\"total\"}") >= 4.0);
    drop(first);
    // The held connections' slots come back as they close.
    let deadline = Instant::now() + Duration::from_secs(5);
    while refused(&mut half_sent("127.0.0.5", &gw.addr, 1)) == 1 {
        assert!(Instant::now() < deadline, "still refused");
    }
}

/// `[{},{},…]`: `n` empty members, as bytes.
fn empty_members(n: usize) -> Vec<u8> {
    let mut body = Vec::with_capacity(3 * n + 2);
    body.push(b'[');
    for i in 0..n {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(b"{}");
    }
    body.push(b']');
    body
}

/// Finding 2: a 30 MiB POST of ten million empty batch members is refused (-32600, the limit
/// named) without a message built per member: the gateway's peak memory stays near the body's
/// size, and another client is answered meanwhile.
#[test]
fn a_batch_bomb_is_refused_before_it_is_built() {
    let gw = Gateway::fixture(&[]);
    let session = gw.initialize();
    let bomb = empty_members(10_000_000);
    let addr = gw.addr.clone();
    let attacker = std::thread::spawn(move || {
        http_request(
            &addr,
            "POST",
            "/mcp",
            &[
                ("Content-Type", "application/json".to_owned()),
                ("Accept", "application/json, text/event-stream".to_owned()),
            ],
            &bomb,
        )
    });
    let started = Instant::now();
    let mut answered = 0;
    while !attacker.is_finished() || answered == 0 {
        let ping = gw.post(
            Some(&session),
            &json!({"jsonrpc":"2.0","id":answered,"method":"ping"}),
        );
        assert_eq!(ping.status, 200, "{ping:?}");
        answered += 1;
        assert!(started.elapsed() < Duration::from_secs(60));
    }
    let refused = attacker.join().unwrap();
    assert_eq!(refused.status, 400, "{refused:?}");
    let error = refused.json();
    assert_eq!(error["error"]["code"], -32600, "{error}");
    assert_eq!(error["error"]["data"]["limit"], 1024, "{error}");
    let peak = peak_rss_kib(gw.child.id());
    eprintln!("gateway peak RSS after the bomb: {peak} KiB");
    assert!(peak < 160 * 1024, "peak RSS {peak} KiB for a 30 MiB body");
}

/// Finding 2, on stdio: the same bomb as one line costs the forward proxy no more.
#[test]
fn a_batch_bomb_on_stdio_is_refused_before_it_is_built() {
    let mut proxy = Proxy::fixture(&[]);
    proxy.initialize();
    let mut bomb = empty_members(10_000_000);
    bomb.push(b'\n');
    proxy.write_raw(&bomb);
    let answer = proxy.recv();
    assert_eq!(answer["error"]["code"], -32600, "{answer}");
    assert_eq!(answer["error"]["data"]["limit"], 1024, "{answer}");
    assert_eq!(proxy.call(2, "ping", json!({}))["result"], json!({}));
    let peak = peak_rss_kib(proxy.child.id());
    eprintln!("forward proxy peak RSS after the bomb: {peak} KiB");
    assert!(peak < 160 * 1024, "peak RSS {peak} KiB for a 30 MiB line");
}

fn rules_file(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("rules.yaml");
    std::fs::write(
        &path,
        "version: 1\nrules:\n  - name: no-secret-echo\n    match:\n      tool: echo\n      params: [{path: \"$.arguments.text\", equals: s3cret}]\n    block: {message: not that}\n",
    )
    .unwrap();
    path
}

/// Finding 4: a message a rule or redaction would have to read, and could not (nested deeper
/// than any tree, a byte that is not UTF-8 in a member the envelope skips, a number beyond a
/// double's range, an escaped lone surrogate), is refused to its sender and neither forwarded
/// nor recorded: the rule's stage fails closed.
#[test]
fn what_rules_and_redaction_cannot_read_is_refused_not_let_through() {
    let dir = tempfile::tempdir().unwrap();
    let tape = dir.path().join("t.tape");
    let rules = rules_file(dir.path());
    let mut proxy = Proxy::fixture(&[
        "--rules",
        rules.to_str().unwrap(),
        "--record",
        tape.to_str().unwrap(),
        "--redact",
        "$.params.arguments.text",
    ]);
    proxy.initialize();
    // The rule applies to a well-formed call.
    let blocked = proxy.call(1, "tools/call", tool("echo", json!({"text": "s3cret"})));
    assert_eq!(blocked["error"]["message"], "not that", "{blocked}");
    // Nested 150 deep beside the argument the rule reads.
    let deep = format!(
        r#"{{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{{"name":"echo","arguments":{{"text":"s3cret","pad":{}0{}}}}}}}"#,
        "[".repeat(150),
        "]".repeat(150)
    );
    proxy.write_raw(format!("{deep}\n").as_bytes());
    let answer = proxy.recv();
    assert_eq!(answer["id"], 2, "{answer}");
    assert_eq!(answer["error"]["code"], -32600, "{answer}");
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("nested deeper")
    );
    // A byte that is not UTF-8 in a member the envelope skips.
    let mut bad = br#"{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"echo","arguments":{"text":"s3cret"}},"x":""#.to_vec();
    bad.extend_from_slice(b"\xff\"}\n");
    proxy.write_raw(&bad);
    let answer = proxy.recv();
    assert_eq!(answer["id"], 3, "{answer}");
    assert_eq!(answer["error"]["code"], -32700, "{answer}");
    // Valid JSON that no tree holds beside the argument the rule reads (a number beyond a
    // double's range; an escaped lone surrogate): the rule cannot read it, so it refuses it.
    for (id, extra) in [(5, r#""n":1e999"#), (6, r#""pad":"\ud800""#)] {
        let line = format!(
            r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"echo","arguments":{{"text":"s3cret",{extra}}}}}}}"#
        );
        proxy.write_raw(format!("{line}\n").as_bytes());
        let answer = proxy.recv();
        assert_eq!(answer["id"], id, "{answer}");
        assert_eq!(answer["error"]["code"], -32600, "{answer}");
        assert_eq!(
            answer["error"]["data"]["rule"], "no-secret-echo",
            "{answer}"
        );
    }
    // The session carries on.
    let echoed = proxy.call(4, "tools/call", tool("echo", json!({"text": "fine"})));
    assert_eq!(echoed["result"]["content"][0]["text"], "fine", "{echoed}");
    proxy.close_stdin();
    assert!(proxy.wait_exit(Duration::from_secs(10)).success());
    let recorded = std::fs::read(&tape).unwrap();
    assert!(
        memchr_find(&recorded, b"s3cret").is_none(),
        "the secret reached the tape:\n{}",
        String::from_utf8_lossy(&recorded)
    );
    let frames: Vec<Value> = String::from_utf8(recorded)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(frames.len() > 3);
}

/// Finding 4, on a tape: a message `--redact` must read and cannot (no rules stop it: it is
/// forwarded as it came, as a direct connection would) reaches the tape masked whole.
#[test]
fn what_redaction_cannot_read_reaches_the_tape_masked_whole() {
    let dir = tempfile::tempdir().unwrap();
    let tape = dir.path().join("t.tape");
    let mut proxy = Proxy::fixture(&[
        "--record",
        tape.to_str().unwrap(),
        "--redact",
        "$.params.arguments.text",
    ]);
    proxy.initialize();
    let line = r#"{"jsonrpc":"2.0","method":"notifications/roots/list_changed","params":{"arguments":{"text":"s3cret","n":1e999}}}"#;
    proxy.write_raw(format!("{line}\n").as_bytes());
    // It reached the server, which (serde_json too) cannot read it either, and says so.
    let from_server = proxy.recv();
    assert_eq!(from_server["error"]["code"], -32700, "{from_server}");
    assert!(from_server["error"].get("data").is_none(), "{from_server}");
    let echoed = proxy.call(2, "tools/call", tool("echo", json!({"text": "fine"})));
    assert_eq!(echoed["result"]["content"][0]["text"], "fine", "{echoed}");
    proxy.close_stdin();
    assert!(proxy.wait_exit(Duration::from_secs(10)).success());
    let recorded = String::from_utf8(std::fs::read(&tape).unwrap()).unwrap();
    assert!(
        !recorded.contains("s3cret"),
        "the secret reached the tape:\n{recorded}"
    );
    let masked = recorded
        .lines()
        .find(|l| l.contains("notifications/roots/list_changed"))
        .unwrap_or_else(|| panic!("the notification was not recorded:\n{recorded}"));
    assert!(
        masked.contains("could not be read to mask it: number out of range"),
        "{masked}"
    );
    // The tape still loads.
    let shown = std::process::Command::new(support::shadowcat())
        .args(["tape", "show"])
        .arg(&tape)
        .output()
        .unwrap();
    assert!(
        shown.status.success(),
        "{}",
        String::from_utf8_lossy(&shown.stderr)
    );
}

fn memchr_find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// A POST from `from` of a tool call that the fixture answers after ten minutes, written and
/// left waiting.
fn call_that_never_ends(addr: &str, session: &str, id: u64) -> TcpStream {
    let body = json!({"jsonrpc":"2.0","id":id,"method":"tools/call","params":tool("sleep", json!({"ms": 600_000}))}).to_string();
    let mut stream = TcpStream::connect(addr).unwrap();
    let request = format!(
        "POST /mcp HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\nMcp-Session-Id: {session}\r\nMCP-Protocol-Version: 2025-06-18\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).unwrap();
    stream
}

/// Polls `/metrics` until sample `name` is `want` (or fails after 10 s).
fn await_metric(admin: &str, name: &str, want: f64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = metric(admin, name);
        if got == want {
            return;
        }
        assert!(Instant::now() < deadline, "{name} stayed {got}, not {want}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Finding 7: with a server command, requests whose clients hung up are forgotten (and the
/// server told they are cancelled), so never-answered calls cannot fill `--max-pending-total`
/// and lock every client out.
#[test]
fn a_client_that_hangs_up_leaves_nothing_pending() {
    let gw = Gateway::fixture(&["--max-pending-total", "3", "--admin-listen", "127.0.0.1:0"]);
    let admin = gw.admin_addr();
    let session = gw.initialize();
    let calls: Vec<TcpStream> = (0..3)
        .map(|id| call_that_never_ends(&gw.addr, &session, 10 + id))
        .collect();
    // The premise: all three are in flight.
    await_metric(&admin, "shadowcat_pending_requests", 3.0);
    for call in &calls {
        call.shutdown(std::net::Shutdown::Both).unwrap();
    }
    drop(calls);
    await_metric(&admin, "shadowcat_pending_requests", 0.0);
    let ping = gw.post(
        Some(&session),
        &json!({"jsonrpc":"2.0","id":1,"method":"ping"}),
    );
    assert_eq!(ping.status, 200, "{ping:?}");
    assert_eq!(ping.json()["result"], json!({}));
}

/// Finding 3: an 8 MiB `clientInfo` is not kept per session (nor copied into the history):
/// ten such sessions leave the gateway's memory and each history row small, and what rules and
/// `session list` read (the client's name) is still there.
#[test]
fn metadata_bombs_are_kept_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let gw = Gateway::fixture(&["--session-store", "sqlite", "--data-dir", data]);
    let padding = "p".repeat(8 * 1024 * 1024);
    let mut sessions = Vec::new();
    for _ in 0..10 {
        let response = gw.post(
            None,
            &json!({"jsonrpc":"2.0","id":0,"method":"initialize","params":{
                "protocolVersion":"2025-03-26",
                "capabilities":{"experimental":{"pad": padding}},
                "clientInfo":{"name":"bomber","version":"1","pad": padding}}}),
        );
        assert_eq!(response.status, 200, "{response:?}");
        let session = response.header("mcp-session-id").unwrap().to_owned();
        // A batch (which read the session's metadata) and a ping.
        let batch = gw.post(
            Some(&session),
            &json!([{"jsonrpc":"2.0","method":"notifications/initialized"},
                    {"jsonrpc":"2.0","id":1,"method":"ping"}]),
        );
        assert_eq!(batch.status, 200, "{batch:?}");
        sessions.push(session);
    }
    let peak = peak_rss_kib(gw.child.id());
    eprintln!("gateway peak RSS after ten 8 MiB initializes: {peak} KiB");
    assert!(peak < 200 * 1024, "peak RSS {peak} KiB");
    let rss_now = std::fs::read_to_string(format!("/proc/{}/status", gw.child.id()))
        .unwrap()
        .lines()
        .find_map(|l| {
            l.strip_prefix("VmRSS:").map(|v| {
                v.trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .unwrap()
            })
        })
        .unwrap();
    assert!(
        rss_now < 120 * 1024,
        "RSS {rss_now} KiB kept for ten sessions"
    );
    let mut gw = gw;
    gw.terminate();
    assert!(gw.wait_exit(Duration::from_secs(20)).success());
    let db = dir.path().join("sessions.db");
    let size = std::fs::metadata(&db).unwrap().len();
    assert!(size < 1024 * 1024, "sessions.db is {size} bytes");
    let listed = support::command()
        .args(["--data-dir", data, "session", "list"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&listed.stdout);
    assert_eq!(
        text.matches("bomber 1").count(),
        10,
        "{text}\n{}",
        String::from_utf8_lossy(&listed.stderr)
    );
}

/// Opens a 2024-11-05 `/sse` stream from `from` and returns it with its first bytes read.
fn open_sse(from: &str, addr: &str) -> (TcpStream, String) {
    let mut stream = connect_from(from, addr).unwrap();
    let request = format!("GET /sse HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n");
    stream.write_all(request.as_bytes()).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut buf = [0u8; 1024];
    let n = stream.read(&mut buf).unwrap();
    (stream, String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// An `initialize` POST from `from`.
fn initialize_from(from: &str, addr: &str) -> support::HttpResponse {
    let body = json!({"jsonrpc":"2.0","id":0,"method":"initialize","params":{
        "protocolVersion":"2025-06-18","capabilities":{},
        "clientInfo":{"name":"t","version":"1"}}})
    .to_string();
    let mut stream = connect_from(from, addr).unwrap();
    let request = format!(
        "POST /mcp HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).unwrap();
    let (raw, _) = read_until_closed(&mut stream, Duration::from_secs(10));
    support::parse_response(&raw)
}

/// Finding 6: one client can hold only `--max-sessions-per-client` sessions (an `/sse` stream
/// is one), so it can neither take every slot nor evict everyone else's; another client still
/// gets in. A session's process starts with its first message: streams that say nothing and
/// initializes a rate limit refuses start none.
#[test]
fn one_client_cannot_pin_every_session_or_start_processes_for_nothing() {
    let gw = Gateway::fixture(&[
        "--max-sessions",
        "6",
        "--max-sessions-per-client",
        "3",
        "--rate-limit",
        "client=2/min,burst=2",
    ]);
    let pid = gw.child.id();
    // Three silent /sse streams: three sessions, no process.
    let streams: Vec<(TcpStream, String)> =
        (0..3).map(|_| open_sse("127.0.0.2", &gw.addr)).collect();
    for (_, first) in &streams {
        assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    }
    assert_eq!(
        support::live_children(pid).len(),
        0,
        "silent streams started processes"
    );
    // The fourth is over the client's cap.
    let (_, fourth) = open_sse("127.0.0.2", &gw.addr);
    assert!(fourth.starts_with("HTTP/1.1 429"), "{fourth}");
    assert!(fourth.contains("--max-sessions-per-client"), "{fourth}");
    let refused = initialize_from("127.0.0.2", &gw.addr);
    assert_eq!(refused.status, 429, "{refused:?}");
    assert_eq!(refused.json()["error"]["code"], -32089);
    // Another client: two initializes pass its rate limit, the rest are refused before any
    // process starts for them.
    let statuses: Vec<u16> = (0..5)
        .map(|_| initialize_from("127.0.0.3", &gw.addr).status)
        .collect();
    assert_eq!(statuses, [200, 200, 429, 429, 429]);
    let deadline = Instant::now() + Duration::from_secs(5);
    while support::live_children(pid).len() != 2 {
        assert!(
            Instant::now() < deadline,
            "children: {:?}",
            support::live_children(pid)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        support::live_children(pid).len(),
        2,
        "refused initializes started processes"
    );
    drop(streams);
}

/// Finding 8: a server that writes a lot to stderr while nobody reads ours does not block its
/// session: its stderr is drained, the passthrough drops what ours cannot take.
#[test]
fn a_chatty_server_is_not_blocked_by_an_undrained_stderr() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("gateway.log");
    // 4 MiB of stderr before the server starts, and our stderr a pipe nobody reads.
    let chatty = format!(
        "head -c 4194304 /dev/zero | tr '\\0' 'e' >&2; exec {}",
        fixture().display()
    );
    let mut child = support::command()
        .args(["--log-level", "debug", "--log-file", log.to_str().unwrap()])
        .args([
            "reverse",
            "--listen",
            "127.0.0.1:0",
            "--",
            "sh",
            "-c",
            &chatty,
        ])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let addr = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if let Some(rest) = text.split("listening on http://").nth(1) {
            break rest.split('/').next().unwrap().to_owned();
        }
        assert!(Instant::now() < deadline, "not listening:\n{text}");
        std::thread::sleep(Duration::from_millis(20));
    };
    let response = http_request(
        &addr,
        "POST",
        "/mcp",
        &[
            ("Content-Type", "application/json".to_owned()),
            ("Accept", "application/json, text/event-stream".to_owned()),
        ],
        json!({"jsonrpc":"2.0","id":0,"method":"initialize","params":{
            "protocolVersion":"2025-06-18","capabilities":{},
            "clientInfo":{"name":"t","version":"1"}}})
        .to_string()
        .as_bytes(),
    );
    assert_eq!(response.status, 200, "{response:?}");
    assert_eq!(
        response.json()["result"]["serverInfo"]["name"],
        "shadowcat-fixture"
    );
    let _ = child.kill();
    let _ = support::wait_within(&mut child, support::WAIT);
}

/// A server that accepts connections, reads, and never answers. Returns its address.
fn silent_upstream() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming().flatten() {
            held.push(stream);
        }
    });
    addr
}

/// Finding 8: an HTTP upstream that takes requests and never answers fails them after
/// `--read-timeout` (naming it), and `/readyz` says it is not ready; its URL's password and
/// query values are never shown (finding 10).
#[test]
fn a_silent_upstream_fails_requests_and_is_not_ready() {
    let upstream = silent_upstream();
    let url = format!("http://alice:pw-s3cret@{upstream}/mcp?token=tok-s3cret");
    let gw = Gateway::start(&[
        "--upstream",
        &url,
        "--read-timeout",
        "1s",
        "--admin-listen",
        "127.0.0.1:0",
    ]);
    let admin = gw.admin_addr();
    let started = Instant::now();
    let response = gw.post(
        None,
        &json!({"jsonrpc":"2.0","id":0,"method":"initialize","params":{
            "protocolVersion":"2025-06-18","capabilities":{},
            "clientInfo":{"name":"t","version":"1"}}}),
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    let text = String::from_utf8_lossy(&response.body).into_owned();
    assert_eq!(response.json()["error"]["code"], -32087, "{text}");
    assert!(text.contains("--read-timeout"), "{text}");
    let ready = get(&admin, "/readyz");
    assert_eq!(ready.status, 503, "{ready:?}");
    let ready = String::from_utf8_lossy(&ready.body).into_owned();
    assert!(
        ready.contains("unreachable") && ready.contains("within"),
        "{ready}"
    );
    let everything = format!("{text}\n{ready}\n{}", gw.stderr_text());
    assert!(everything.contains("alice:***@"), "{everything}");
    assert!(
        !everything.contains("s3cret"),
        "a secret of the URL was shown:\n{everything}"
    );
}

/// Finding 8: with a server command, `/readyz` checks more than that the program exists: a
/// server that exits before it says anything makes the gateway unready (saying why, with its
/// last stderr line) until a server started after it has answered; a program that cannot be
/// run is unready from the start.
#[test]
fn a_crashing_server_command_is_not_ready_until_one_answers() {
    let dir = tempfile::tempdir().unwrap();
    let flag = dir.path().join("second-time");
    let script = format!(
        "if [ -e '{flag}' ]; then exec '{}'; fi; touch '{flag}'; echo 'boom: no such module' >&2; exit 3",
        fixture().display(),
        flag = flag.display()
    );
    let gw = Gateway::start(&["--admin-listen", "127.0.0.1:0", "--", "sh", "-c", &script]);
    let admin = gw.admin_addr();
    assert_eq!(get(&admin, "/readyz").status, 200, "nothing has failed yet");
    let initialize = json!({"jsonrpc":"2.0","id":0,"method":"initialize","params":{
        "protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"t","version":"1"}}});
    let failed = gw.post(None, &initialize);
    assert_eq!(failed.json()["error"]["code"], -32081, "{failed:?}");
    let ready = get(&admin, "/readyz");
    let text = String::from_utf8_lossy(&ready.body).into_owned();
    assert_eq!(ready.status, 503, "{text}");
    assert!(
        text.contains("exited before it said anything") && text.contains("boom: no such module"),
        "{text}"
    );
    // The next session's server works: ready again.
    let answered = gw.post(None, &initialize);
    assert!(answered.json().get("result").is_some(), "{answered:?}");
    assert_eq!(get(&admin, "/readyz").status, 200);

    let not_runnable = dir.path().join("server.sh");
    std::fs::write(&not_runnable, "#!/bin/sh\n").unwrap();
    let gw = Gateway::start(&[
        "--admin-listen",
        "127.0.0.1:0",
        "--",
        not_runnable.to_str().unwrap(),
    ]);
    let ready = get(&gw.admin_addr(), "/readyz");
    let text = String::from_utf8_lossy(&ready.body).into_owned();
    assert_eq!(ready.status, 503, "{text}");
    assert!(text.contains("not executable"), "{text}");
}

/// Finding 10: no live session id in the logs (even at debug) or in a tape's file name, only
/// its digest, which `session show` gives to find them; the admin listener checks Host.
#[test]
fn live_session_ids_stay_out_of_logs_and_file_names() {
    let dir = tempfile::tempdir().unwrap();
    let tapes = dir.path().join("tapes");
    let gw = Gateway::fixture(&[
        "--record",
        tapes.to_str().unwrap(),
        "--admin-listen",
        "127.0.0.1:0",
    ]);
    let session = gw.initialize();
    let echo = gw.post(
        Some(&session),
        &json!({"jsonrpc":"2.0","id":1,"method":"tools/call","params":tool("echo", json!({"text": "hi"}))}),
    );
    assert_eq!(echo.status, 200);
    let deleted = http_request(
        &gw.addr,
        "DELETE",
        "/mcp",
        &[("Mcp-Session-Id", session.clone())],
        b"",
    );
    assert_eq!(deleted.status, 200);
    std::thread::sleep(Duration::from_millis(300));
    let logs = gw.stderr_text();
    // The session's own lines were logged (under its digest), and read before asserting.
    assert!(logs.contains("session{id=s-"), "{logs}");
    assert!(
        !logs.contains(&session),
        "the session id is in the log:\n{logs}"
    );
    let names: Vec<String> = std::fs::read_dir(&tapes)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 1, "{names:?}");
    assert!(!names[0].contains(&session), "{names:?}");
    // The admin listener refuses another Host (DNS rebinding) and browser pages.
    let admin = gw.admin_addr();
    let rebound = http_request(
        &admin,
        "GET",
        "/metrics",
        &[("Host", "evil.example:80".into())],
        b"",
    );
    assert_eq!(rebound.status, 421);
    let page = http_request(
        &admin,
        "GET",
        "/metrics",
        &[("Origin", "http://localhost:3000".into())],
        b"",
    );
    assert_eq!(page.status, 403);
    assert_eq!(get(&admin, "/healthz").status, 200);
}

/// Finding 9: a client that stops reading its SSE stream is closed after `--write-timeout`
/// (counted in /metrics), rather than holding what was queued for it as long as it stays.
#[test]
fn a_client_that_stops_reading_is_closed_at_the_write_timeout() {
    let gw = Gateway::fixture(&["--write-timeout", "1s", "--admin-listen", "127.0.0.1:0"]);
    let admin = gw.admin_addr();
    let session = gw.initialize();
    let body = json!({"jsonrpc":"2.0","id":1,"method":"tools/call","params":tool("big", json!({"bytes": 24 * 1024 * 1024}))}).to_string();
    let mut reader = TcpStream::connect(&gw.addr).unwrap();
    // A small receive buffer, never read.
    socket2::SockRef::from(&reader)
        .set_recv_buffer_size(4096)
        .unwrap();
    let request = format!(
        "POST /mcp HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nAccept: text/event-stream\r\nMcp-Session-Id: {session}\r\nContent-Length: {}\r\n\r\n{body}",
        gw.addr,
        body.len()
    );
    reader.write_all(request.as_bytes()).unwrap();
    await_metric(&admin, "shadowcat_connections_write_timeouts_total", 1.0);
    // The gateway serves everyone else meanwhile.
    let ping = gw.post(
        Some(&session),
        &json!({"jsonrpc":"2.0","id":2,"method":"ping"}),
    );
    assert_eq!(ping.status, 200, "{ping:?}");
    drop(reader);
}

/// Finding 11: another site's page cannot open a 2024-11-05 session by a plain GET (no Origin,
/// but `Sec-Fetch-Site: cross-site`); `/message` takes only an HTTP+SSE session's id; request
/// ids are bounded.
#[test]
fn smaller_holes_are_closed() {
    let gw = Gateway::fixture(&[]);
    let cross = http_request(
        &gw.addr,
        "GET",
        "/sse",
        &[
            ("Accept", "text/event-stream".into()),
            ("Sec-Fetch-Site", "cross-site".into()),
        ],
        b"",
    );
    assert_eq!(cross.status, 403, "{cross:?}");
    let session = gw.initialize();
    let message = http_request(
        &gw.addr,
        "POST",
        &format!("/message?sessionId={session}"),
        &[("Content-Type", "application/json".into())],
        br#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#,
    );
    assert_eq!(message.status, 404, "{message:?}");
    let long_id = "i".repeat(2000);
    let answer = gw.post(
        Some(&session),
        &json!({"jsonrpc":"2.0","id": long_id,"method":"ping"}),
    );
    assert_eq!(answer.status, 400, "{answer:?}");
    assert_eq!(answer.json()["error"]["code"], -32600);
}

/// Finding 5: stateless (2026-07-28) clients sharing the child of a server command are kept
/// apart. A server request sent to one client carries an unguessable id of ours: another
/// client answering it (by the child's own id, or any other) is refused, and the call gets
/// the answer of the client it asked.
#[test]
fn stateless_clients_at_the_shared_child_cannot_answer_each_others_server_requests() {
    let gw = Gateway::fixture(&[]);
    let (h, body) = support::modern_call(5, "sample", json!({"prompt": "2+2?"}), json!({}));
    let mut victim = support::SseReader::post(&gw.addr, &h, &body);
    assert_eq!(victim.status, 200);
    let request = victim.next_message().expect("the server's request");
    assert_eq!(request["method"], "sampling/createMessage", "{request}");
    let ours = request["id"].as_str().expect("a string id").to_owned();
    assert!(ours.starts_with("sc-") && ours.len() == 35, "{ours}");
    let answer = |id: &str, text: &str| support::stateless_sampling_answer(&gw.addr, id, text);
    // The child's own id is sample-1: an attacker's guess of it is refused.
    let forged = answer("sample-1", "forged");
    assert_eq!(forged.json()["error"]["code"], -32600, "{forged:?}");
    assert_eq!(answer(&ours, "sampled!").status, 202);
    let result = victim.next_message().expect("the call's result");
    assert_eq!(result["id"], 5);
    assert_eq!(
        result["result"]["content"][0]["text"],
        "client said: sampled!"
    );
    // Answered once: the same id again is refused.
    assert_eq!(answer(&ours, "again").json()["error"]["code"], -32600);
}

/// A shell that writes its pid (its process group: shadowcat starts each server in its own) to
/// `pidfile`, leaves a grandchild sleeping in the group, ignores SIGTERM, and runs the fixture
/// deaf to end-of-file: a server that nothing but SIGKILL of its whole group ends.
fn stubborn_server(pidfile: &std::path::Path) -> String {
    format!(
        "echo $$ > '{}'; sleep 300 & trap '' TERM; exec '{}' --ignore-stdin-eof",
        pidfile.display(),
        fixture().display()
    )
}

fn read_pid(pidfile: &std::path::Path) -> i32 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(pid) = std::fs::read_to_string(pidfile)
            .ok()
            .and_then(|text| text.trim().parse().ok())
        {
            return pid;
        }
        assert!(Instant::now() < deadline, "the server never started");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until no live process is left in group `pgid`: the reaper sends SIGTERM, then SIGKILL
/// after two seconds to a group that ignores it.
fn await_group_gone(pgid: i32) {
    let deadline = Instant::now() + Duration::from_secs(8);
    while !support::live_members(pgid).is_empty() {
        assert!(
            Instant::now() < deadline,
            "processes left in group {pgid}: {:?}",
            support::live_members(pgid)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn sigkill(child: &std::process::Child) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap()),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
}

/// Finding 11: a SIGKILLed shadowcat (no chance to shut anything down) leaves no server process
/// behind, neither the server nor what it started, in forward mode and in the gateway, even
/// when the server ignores end-of-file and SIGTERM.
#[test]
fn a_sigkilled_proxy_leaves_no_server_processes() {
    let dir = tempfile::tempdir().unwrap();
    let forward_pid = dir.path().join("forward.pid");
    let mut proxy = Proxy::start(&[], &["sh", "-c", &stubborn_server(&forward_pid)]);
    proxy.initialize();
    let forward_group = read_pid(&forward_pid);

    let gateway_pid = dir.path().join("gateway.pid");
    let mut gw = Gateway::start(&["--", "sh", "-c", &stubborn_server(&gateway_pid)]);
    assert!(!gw.initialize().is_empty());
    let gateway_group = read_pid(&gateway_pid);

    for group in [forward_group, gateway_group] {
        assert_eq!(
            support::live_members(group).len(),
            2,
            "the server and its sleeping grandchild run in group {group}"
        );
    }
    sigkill(&proxy.child);
    sigkill(&gw.child);
    use std::os::unix::process::ExitStatusExt as _;
    assert_eq!(proxy.wait_exit(Duration::from_secs(5)).signal(), Some(9));
    assert_eq!(gw.wait_exit(Duration::from_secs(5)).signal(), Some(9));
    await_group_gone(forward_group);
    await_group_gone(gateway_group);
}

/// Finding 11: progress tokens are bounded (kept while their request waits, as ids are) and
/// unique among active requests: a second call reusing a waiting call's token is refused, so
/// it cannot take over the first one's progress (nor the first's answer end the second's
/// timeout); once the first is answered, the token is free again.
#[test]
fn progress_tokens_are_bounded_and_unique_among_active_requests() {
    let mut proxy = Proxy::fixture(&[]);
    proxy.initialize();
    let call = |id: i64, token: &str, ms: u64| {
        json!({"jsonrpc":"2.0","id":id,"method":"tools/call","params":{
            "name":"sleep","arguments":{"ms":ms},"_meta":{"progressToken":token}}})
    };
    proxy.send(&call(1, "p", 1500));
    proxy.send(&call(2, "p", 0));
    let refused = proxy.recv();
    assert_eq!(refused["id"], 2, "{refused}");
    assert_eq!(refused["error"]["code"], -32600, "{refused}");
    assert!(
        refused["error"]["message"]
            .as_str()
            .unwrap()
            .contains("progressToken is already used"),
        "{refused}"
    );
    let first = proxy.recv();
    assert_eq!(first["id"], 1, "{first}");
    assert!(first.get("result").is_some(), "{first}");
    let again = proxy.call(3, "tools/call", call(3, "p", 0)["params"].clone());
    assert!(again.get("result").is_some(), "{again}");

    let long = "t".repeat(2000);
    let refused = proxy.call(4, "tools/call", call(4, &long, 0)["params"].clone());
    assert_eq!(refused["error"]["code"], -32600, "{refused}");
    assert!(
        refused["error"]["message"]
            .as_str()
            .unwrap()
            .contains("longer than 1024 bytes"),
        "{refused}"
    );
}

/// Finding 11: a stateless (2026-07-28) request is no session to its client, so it leaves no
/// row in the history store (one per request would grow it without bound); a session that was
/// opened with `initialize` still does.
#[test]
fn stateless_requests_leave_no_history_rows() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let fixture = support::HttpFixture::start(&["--stateless"]);
    let mut gw = Gateway::start(&[
        "--session-store",
        "sqlite",
        "--data-dir",
        data,
        "--upstream",
        &fixture.url,
    ]);
    for id in 0..20 {
        let (h, body) = support::modern_call(id, "echo", json!({"text": "x"}), json!({}));
        let r = http_request(&gw.addr, "POST", "/mcp", &h, &body);
        assert_eq!(r.status, 200, "{r:?}");
    }
    assert!(!gw.initialize().is_empty());
    gw.terminate();
    assert!(gw.wait_exit(Duration::from_secs(20)).success());
    let listed = support::command()
        .args(["--data-dir", data, "session", "list", "--format", "json"])
        .output()
        .unwrap();
    assert!(listed.status.success());
    let rows: Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(
        rows.as_array().map(Vec::len),
        Some(1),
        "only the initialized session: {rows}"
    );
}
