//! Several `shadowcat reverse` instances sharing `--cluster-key-file`, behind a real HAProxy
//! (Debian's package, installed by `scripts/test.sh`) balancing round-robin without affinity,
//! in front of a Python SDK server over Streamable HTTP: a session's requests spread over every
//! instance, and the client sees what it sees without them. Sealed ids: altered or foreign ones
//! are 404, a rotated key still opens the ids sealed with the old one, an instance killed
//! mid-session costs the client nothing. With a real `redis-server` shared (`--redis-url`):
//! a rate limit holds across instances, Redis stopped mid-run costs a timeout once a second
//! and the instances' own limits until it is back, and a session its client ended through one
//! instance is over at every instance.

#![allow(
    clippy::pedantic,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::disallowed_types
)]

mod support;

use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::balancer::Balancer;
use support::redis::RedisServer;
use support::sdk::{HttpServer, Target, check_elicitation_and_list_changed, run_client};
use support::{Gateway, http_request, python};

const KEY_A: &str = "0f4d5e6a7b8c9d0e1f2a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f80";
const KEY_B: &str = "a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f9";

/// A key file holding `keys`, newest first.
fn key_file(dir: &Path, name: &str, keys: &[&str]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, format!("# cluster keys\n{}\n", keys.join("\n"))).unwrap();
    path
}

/// `count` gateways in front of `upstream`, sharing `keys`, each with its admin listener.
fn instances(count: usize, upstream: &str, keys: &Path) -> Vec<Gateway> {
    instances_with(count, upstream, keys, &[])
}

/// As [`instances`], with `extra` options.
fn instances_with(count: usize, upstream: &str, keys: &Path, extra: &[&str]) -> Vec<Gateway> {
    (0..count)
        .map(|_| {
            let mut opts = vec![
                "--upstream",
                upstream,
                "--cluster-key-file",
                keys.to_str().unwrap(),
                "--admin-listen",
                "127.0.0.1:0",
            ];
            opts.extend_from_slice(extra);
            Gateway::start(&opts)
        })
        .collect()
}

/// The value of the counter `name` on `gateway`'s /metrics.
fn counter(gateway: &Gateway, name: &str) -> f64 {
    let metrics = http_request(&gateway.admin_addr(), "GET", "/metrics", &[], b"");
    let text = String::from_utf8_lossy(&metrics.body).into_owned();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("{name} not in /metrics:\n{text}"))
        .trim()
        .parse()
        .unwrap()
}

/// Messages `gateway` forwarded from clients to the server.
fn forwarded(gateway: &Gateway) -> f64 {
    counter(gateway, "shadowcat_messages_to_server_total")
}

#[test]
fn a_session_spread_over_three_instances_behind_a_balancer_is_the_same_as_direct() {
    let dir = tempfile::tempdir().unwrap();
    let keys = key_file(dir.path(), "keys", &[KEY_A]);
    let server = HttpServer::start("2.3.0", &[]);
    let gateways = instances(3, &server.url, &keys);
    let addrs: Vec<&str> = gateways.iter().map(|g| g.addr.as_str()).collect();
    let balancer = Balancer::start(&addrs);
    for (sdk, mode) in [("2.3.0", Some("legacy")), ("1.30.0", None)] {
        let direct = run_client(sdk, mode, Target::Url(&server.url), true);
        let spread = run_client(sdk, mode, Target::Url(&balancer.url()), true);
        check_elicitation_and_list_changed(&spread);
        assert_eq!(
            direct, spread,
            "client {sdk}: different through three instances behind a balancer"
        );
    }
    // Every instance carried some of it, and the two that did not open a session served it
    // from its sealed id.
    for gateway in &gateways {
        assert!(
            forwarded(gateway) > 0.0,
            "an instance carried nothing:\n{}",
            gateway.stderr_text()
        );
    }
    let adopted: f64 = gateways
        .iter()
        .map(|g| counter(g, "shadowcat_cluster_sessions_adopted_total"))
        .sum();
    assert!(
        adopted >= 4.0,
        "two sessions, each adopted by two other instances: {adopted}"
    );
}

/// POSTs `body` to `gateway` in session `session`.
fn post(addr: &str, session: &str, body: &Value) -> support::HttpResponse {
    let headers = vec![
        ("Content-Type", "application/json".to_owned()),
        ("Accept", "application/json, text/event-stream".to_owned()),
        ("Mcp-Session-Id", session.to_owned()),
        ("MCP-Protocol-Version", "2025-06-18".to_owned()),
    ];
    http_request(addr, "POST", "/mcp", &headers, body.to_string().as_bytes())
}

fn list_tools(addr: &str, session: &str) -> support::HttpResponse {
    post(
        addr,
        session,
        &json!({"jsonrpc":"2.0","id":7,"method":"tools/list"}),
    )
}

#[test]
fn altered_and_foreign_ids_are_not_found_and_a_rotated_key_still_opens_old_ids() {
    let dir = tempfile::tempdir().unwrap();
    let old = key_file(dir.path(), "old", &[KEY_A]);
    let rotated = key_file(dir.path(), "rotated", &[KEY_B, KEY_A]);
    let foreign = key_file(dir.path(), "foreign", &[KEY_B]);
    let server = HttpServer::start("2.3.0", &[]);
    let a = &instances(1, &server.url, &old).remove(0);
    let b = &instances(1, &server.url, &rotated).remove(0);
    let c = &instances(1, &server.url, &foreign).remove(0);

    let session = a.initialize();
    assert!(session.len() > 100, "a sealed id: {session}");
    let here = list_tools(&a.addr, &session);
    assert_eq!(here.status, 200, "{here:?}");
    let tools = here.messages()[0]["result"]["tools"].clone();
    assert!(tools.as_array().is_some_and(|t| !t.is_empty()));

    // An instance whose keys include the old one serves the session: the same tools.
    let elsewhere = list_tools(&b.addr, &session);
    assert_eq!(elsewhere.status, 200, "{elsewhere:?}\n{}", b.stderr_text());
    assert_eq!(elsewhere.messages()[0]["result"]["tools"], tools);
    assert_eq!(counter(b, "shadowcat_cluster_sessions_adopted_total"), 1.0);
    // And the ids it hands out are sealed with the new key, which the old instance lacks.
    let newer = b.initialize();
    assert_eq!(list_tools(&b.addr, &newer).status, 200);
    assert_eq!(list_tools(&a.addr, &newer).status, 404);

    // An instance with other keys knows neither.
    let refused = list_tools(&c.addr, &session);
    assert_eq!(refused.status, 404, "{refused:?}");
    assert_eq!(refused.json()["id"], 7, "the refusal answers the request");

    // Any change to the id: not found, at every instance, and nothing breaks.
    let mut bytes = session.clone().into_bytes();
    for at in [0, 10, bytes.len() / 2, bytes.len() - 1] {
        let original = bytes[at];
        bytes[at] = if original == b'A' { b'B' } else { b'A' };
        let altered = String::from_utf8(bytes.clone()).unwrap();
        for gateway in [a, b] {
            let response = list_tools(&gateway.addr, &altered);
            assert_eq!(response.status, 404, "altered at {at}: {response:?}");
        }
        bytes[at] = original;
    }
    let too_long = format!("{session}{}", "A".repeat(2000));
    assert_eq!(list_tools(&a.addr, &too_long).status, 404);
    assert_eq!(
        list_tools(&a.addr, &session).status,
        200,
        "the real id still works"
    );
}

/// Drives tests/peers/restart_client.py: one call, then (while it waits) `between`, then a
/// second call in the same session; returns the two reports.
fn two_calls(url: &str, between: impl FnOnce()) -> (Value, Value) {
    let mut client = Command::new(python("1.30.0"))
        .arg(support::peers().join("restart_client.py"))
        .args(["--url", url])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = client.stderr.take().unwrap();
    let errors = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut BufReader::new(stderr), &mut text);
        text
    });
    let mut stdout = BufReader::new(client.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    let Ok(ready) = serde_json::from_str::<Value>(&line) else {
        let _ = client.kill();
        panic!("{line}\n{}", errors.join().unwrap())
    };
    between();
    client.stdin.as_mut().unwrap().write_all(b"go\n").unwrap();
    line.clear();
    stdout.read_line(&mut line).unwrap();
    let status = client.wait().unwrap();
    let stderr = errors.join().unwrap();
    let after: Value = serde_json::from_str(&line).unwrap_or_else(|_| panic!("{line}\n{stderr}"));
    assert!(status.success(), "{stderr}");
    (ready, after)
}

#[test]
fn an_instance_killed_mid_session_costs_the_client_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let keys = key_file(dir.path(), "keys", &[KEY_A]);
    let server = HttpServer::start("1.30.0", &[]);
    let mut gateways = instances(3, &server.url, &keys);
    let addrs: Vec<String> = gateways.iter().map(|g| g.addr.clone()).collect();
    let balancer = Balancer::start(&addrs.iter().map(String::as_str).collect::<Vec<_>>());
    let (ready, after) = two_calls(&balancer.url(), || {
        // The instance that opened the session (the one that adopted none) goes.
        let opener = gateways
            .iter()
            .position(|g| {
                counter(g, "shadowcat_sessions_created_total") == 1.0
                    && counter(g, "shadowcat_cluster_sessions_adopted_total") == 0.0
            })
            .expect("the instance that opened the session");
        // Dropped: killed.
        gateways.remove(opener);
    });
    assert_eq!(ready["text"], "before");
    assert_eq!(after["isError"], false, "{after}");
    assert_eq!(after["text"], "after");
    assert_eq!(after["session"], ready["session"], "the same session id");
}

/// POSTs `body` to `addr` with the API key `key`, in `session` if given.
fn post_as(addr: &str, key: &str, session: Option<&str>, body: &Value) -> support::HttpResponse {
    let mut headers = vec![
        ("Content-Type", "application/json".to_owned()),
        ("Accept", "application/json, text/event-stream".to_owned()),
        ("Authorization", format!("Bearer {key}")),
        ("MCP-Protocol-Version", "2025-06-18".to_owned()),
    ];
    if let Some(session) = session {
        headers.push(("Mcp-Session-Id", session.to_owned()));
    }
    http_request(addr, "POST", "/mcp", &headers, body.to_string().as_bytes())
}

#[test]
fn a_sealed_session_stays_its_principals_at_every_instance() {
    let dir = tempfile::tempdir().unwrap();
    let keys = key_file(dir.path(), "keys", &[KEY_A]);
    let api_keys = dir.path().join("api-keys");
    std::fs::write(
        &api_keys,
        format!(
            "alice {}\nbob {}\n",
            shadowcat::auth::keys::hash_line("alice-key-0123456789"),
            shadowcat::auth::keys::hash_line("bob-key-0123456789")
        ),
    )
    .unwrap();
    let server = HttpServer::start("2.3.0", &[]);
    let with_auth = |_| {
        Gateway::start(&[
            "--upstream",
            &server.url,
            "--cluster-key-file",
            keys.to_str().unwrap(),
            "--api-key-file",
            api_keys.to_str().unwrap(),
            "--admin-listen",
            "127.0.0.1:0",
        ])
    };
    let (a, b) = (with_auth(0), with_auth(1));
    let opened = post_as(
        &a.addr,
        "alice-key-0123456789",
        None,
        &json!({"jsonrpc":"2.0","id":0,"method":"initialize","params":{
            "protocolVersion":"2025-06-18","capabilities":{},
            "clientInfo":{"name":"shadowcat-tests","version":"1"}}}),
    );
    assert_eq!(opened.status, 200, "{opened:?}");
    let session = opened.header("mcp-session-id").unwrap().to_owned();
    let tools = json!({"jsonrpc":"2.0","id":1,"method":"tools/list"});
    // Bob has the id, at an instance that never saw the session: not his.
    let bob = post_as(&b.addr, "bob-key-0123456789", Some(&session), &tools);
    assert_eq!(bob.status, 404, "{bob:?}");
    assert_eq!(counter(&b, "shadowcat_cluster_sessions_adopted_total"), 0.0);
    // Alice there: hers.
    let alice = post_as(&b.addr, "alice-key-0123456789", Some(&session), &tools);
    assert_eq!(alice.status, 200, "{alice:?}");
    // And once adopted, still not Bob's.
    let bob = post_as(&b.addr, "bob-key-0123456789", Some(&session), &tools);
    assert_eq!(bob.status, 404, "{bob:?}");
    // An instance that checks no tokens does not serve a session bound to a principal.
    let open_door = &instances(1, &server.url, &keys).remove(0);
    let anyone = post(&open_door.addr, &session, &tools);
    assert_eq!(anyone.status, 404, "{anyone:?}");
    // Its log says why (read from its stderr as it comes).
    let deadline = Instant::now() + Duration::from_secs(5);
    while !open_door
        .stderr_text()
        .contains("this instance checks no tokens")
    {
        assert!(Instant::now() < deadline, "{}", open_door.stderr_text());
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_session_ending_at_one_instance_goes_on_at_the_others_until_its_client_deletes_it() {
    let dir = tempfile::tempdir().unwrap();
    let keys = key_file(dir.path(), "keys", &[KEY_A]);
    let server = HttpServer::start("2.3.0", &[]);
    let a = &instances(1, &server.url, &keys).remove(0);
    let c = &instances(1, &server.url, &keys).remove(0);
    let d = &instances(1, &server.url, &keys).remove(0);
    // An instance that forgets idle sessions after a second.
    let b = &Gateway::start(&[
        "--upstream",
        &server.url,
        "--cluster-key-file",
        keys.to_str().unwrap(),
        "--session-idle-timeout",
        "1s",
        "--cleanup-interval",
        "200ms",
    ]);
    let session = a.initialize();
    for gateway in [b, c, d] {
        let response = list_tools(&gateway.addr, &session);
        assert_eq!(response.status, 200, "{response:?}");
    }
    // B lets it go (its idle timeout): its log says so, and the upstream session is left alone.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !b
        .stderr_text()
        .contains("session ended; closing its upstream")
    {
        assert!(Instant::now() < deadline, "{}", b.stderr_text());
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(300));
    // C, which never saw the handshake and so could not re-establish it, still reaches it.
    let response = list_tools(&c.addr, &session);
    assert_eq!(response.status, 200, "{response:?}\n{}", b.stderr_text());
    // B serves it again when asked.
    assert_eq!(list_tools(&b.addr, &session).status, 200);
    // The client's DELETE, through C, ends it at the upstream: D finds it gone.
    delete(&c.addr, &session);
    assert_eq!(list_tools(&c.addr, &session).status, 404);
    let gone = list_tools(&d.addr, &session);
    assert_eq!(gone.status, 404, "{gone:?}\n{}", d.stderr_text());
}

/// Waits (up to 10 s) until `gateway` has logged `text`.
fn wait_for_log(gateway: &Gateway, text: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !gateway.stderr_text().contains(text) {
        assert!(
            Instant::now() < deadline,
            "no {text:?} in the log:\n{}",
            gateway.stderr_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `tools/list` in `session` at each of `at` in turn: the HTTP statuses.
fn statuses(at: &[&Gateway], session: &str) -> Vec<u16> {
    at.iter()
        .map(|g| list_tools(&g.addr, session).status)
        .collect()
}

#[test]
fn a_rate_limit_holds_across_instances_that_share_redis() {
    let dir = tempfile::tempdir().unwrap();
    let keys = key_file(dir.path(), "keys", &[KEY_A]);
    let server = HttpServer::start("2.3.0", &[]);
    let redis = RedisServer::start();
    let url = redis.url();
    let gateways = instances_with(
        3,
        &server.url,
        &keys,
        &[
            "--redis-url",
            &url,
            "--rate-limit",
            "session=4/min,burst=4,method=tools/list",
        ],
    );
    let [a, b, c] = [&gateways[0], &gateways[1], &gateways[2]];
    let session = a.initialize();
    // Nine calls spread over the three: four pass (the limit's burst, for the session as a
    // whole), five are refused; each instance alone would have let four through.
    let seen = statuses(&[a, b, c, a, b, c, a, b, c], &session);
    assert_eq!(seen, [200, 200, 200, 200, 429, 429, 429, 429, 429]);
    for gateway in &gateways {
        let asked = counter(
            gateway,
            "shadowcat_redis_commands_total{use=\"rate_limit\",outcome=\"ok\"}",
        );
        assert_eq!(asked, 3.0, "{}", gateway.stderr_text());
        assert_eq!(counter(gateway, "shadowcat_redis_up"), 1.0);
    }
    // Through the balancer too: still refused, whichever instance answers.
    let balancer = Balancer::start(&[&a.addr, &b.addr, &c.addr]);
    assert_eq!(list_tools(&balancer.addr, &session).status, 429);
}

#[test]
fn with_redis_gone_the_instances_use_their_own_limits_and_share_again_once_it_is_back() {
    let dir = tempfile::tempdir().unwrap();
    let keys = key_file(dir.path(), "keys", &[KEY_A]);
    let server = HttpServer::start("2.3.0", &[]);
    let mut redis = RedisServer::start();
    let url = redis.url();
    let gateways = instances_with(
        2,
        &server.url,
        &keys,
        &[
            "--redis-url",
            &url,
            "--redis-timeout",
            "200ms",
            "--rate-limit",
            "session=3/min,burst=3,method=tools/list",
        ],
    );
    let [a, b] = [&gateways[0], &gateways[1]];
    let session = a.initialize();
    assert_eq!(statuses(&[a, b, a, b], &session), [200, 200, 200, 429]);

    // Redis dies: each instance answers at once from its own limit (three each), never hangs.
    redis.stop();
    let started = Instant::now();
    assert_eq!(statuses(&[a, b], &session), [200, 200]);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(statuses(&[a, a, a], &session), [200, 200, 429]);
    for gateway in [a, b] {
        wait_for_log(gateway, "Redis failed");
        assert_eq!(counter(gateway, "shadowcat_redis_up"), 0.0);
    }

    // Back (empty): each instance finds it again within a second or so of asking, and the
    // limit is the cluster's again.
    redis.restart();
    for gateway in [a, b] {
        let deadline = Instant::now() + Duration::from_secs(10);
        while counter(gateway, "shadowcat_redis_up") != 1.0 {
            assert!(Instant::now() < deadline, "{}", gateway.stderr_text());
            list_tools(&gateway.addr, &session);
            std::thread::sleep(Duration::from_millis(200));
        }
        wait_for_log(gateway, "Redis answers again");
    }
    // The limit is the cluster's again: whatever the calls (and heartbeats) that found Redis
    // back took from the fresh bucket, the calls through both instances draw on one bucket of
    // three, so they are admitted until it is empty and refused from then on (each instance's
    // own limit would refuse at A, which spent its own, and admit at B).
    let after = statuses(&[a, b, a, b], &session);
    let admitted = after.iter().take_while(|s| **s == 200).count();
    assert!(
        admitted <= 3 && after[admitted..].iter().all(|s| *s == 429) && admitted < 4,
        "{after:?}"
    );
    // The subscriber is back too: a DELETE through B ends the session at A.
    wait_for_subscriptions(a, 2);
    delete(&b.addr, &session);
    wait_for_log(a, "ended the session through another instance");
}

/// Waits until `gateway` has subscribed to Redis `times` times (its debug log).
fn wait_for_subscriptions(gateway: &Gateway, times: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while gateway.stderr_text().matches("subscribed").count() < times {
        assert!(Instant::now() < deadline, "{}", gateway.stderr_text());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The client's DELETE of `session` through `addr`.
fn delete(addr: &str, session: &str) {
    let deleted = http_request(
        addr,
        "DELETE",
        "/mcp",
        &[
            ("Mcp-Session-Id", session.to_owned()),
            ("MCP-Protocol-Version", "2025-06-18".to_owned()),
        ],
        b"",
    );
    assert_eq!(deleted.status, 200, "{deleted:?}");
}

#[test]
fn a_session_its_client_ended_through_one_instance_is_over_at_every_instance() {
    let dir = tempfile::tempdir().unwrap();
    let keys = key_file(dir.path(), "keys", &[KEY_A]);
    let server = HttpServer::start("2.3.0", &[]);
    let redis = RedisServer::start();
    let url = redis.url();
    let gateways = instances_with(4, &server.url, &keys, &["--redis-url", &url]);
    let [a, b, c, d] = [&gateways[0], &gateways[1], &gateways[2], &gateways[3]];
    for gateway in [a, b, c, d] {
        wait_for_subscriptions(gateway, 1);
    }
    let session = a.initialize();
    assert_eq!(statuses(&[b, c], &session), [200, 200]);
    delete(&b.addr, &session);
    // A, which opened it and holds its handshake, and C, which adopted it, end it at once
    // (and leave the upstream, which B ended, alone).
    for gateway in [a, c] {
        wait_for_log(gateway, "ended the session through another instance");
    }
    assert_eq!(statuses(&[a, b, c, d], &session), [404, 404, 404, 404]);
    // None of them took it up again: the mark in Redis said it was over.
    for gateway in [a, c, d] {
        assert_eq!(
            counter(gateway, "shadowcat_cluster_sessions_adopted_total"),
            if std::ptr::eq(gateway, c) { 1.0 } else { 0.0 },
            "{}",
            gateway.stderr_text()
        );
    }
    // Only B ended it at the upstream (the others did not even try).
    wait_for_log(b, "ended the upstream session");
    for gateway in [a, c] {
        let log = gateway.stderr_text();
        assert!(
            !log.contains("ended the upstream session") && !log.contains("end its session"),
            "{log}"
        );
    }
}

#[test]
fn cluster_options_that_cannot_work_are_refused_naming_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let keys = key_file(dir.path(), "keys", &[KEY_A]);
    let short = key_file(dir.path(), "short", &["0123456789"]);
    let keys = keys.to_str().unwrap();
    let cases: [(&[&str], &str); 8] = [
        (
            &["--cluster-advertise", "http://127.0.0.1:8080"],
            "--cluster-advertise: it needs --cluster-key-file",
        ),
        (
            &[
                "--cluster-key-file",
                keys,
                "--cluster-advertise",
                "http://10.0.0.5/mcp",
            ],
            "names no port",
        ),
        (
            &["--cluster-key-file", keys, "--cluster-key-env", "K"],
            "give the cluster keys once",
        ),
        (
            &["--cluster-key-file", short.to_str().unwrap()],
            "key 1 is shorter than 32 characters",
        ),
        (
            &["--redis-timeout", "1s"],
            "--redis-timeout: it needs --redis-url",
        ),
        (
            &["--redis-url", "http://127.0.0.1:6379"],
            "invalid --redis-url",
        ),
        (
            &["--redis-url", "redis://:hunter2@127.0.0.1:port"],
            "invalid --redis-url",
        ),
        (
            &[
                "--redis-url",
                "redis://:hunter2@127.0.0.1:6379",
                "--redis-timeout",
                "0s",
            ],
            "--redis-timeout",
        ),
    ];
    for (options, expected) in cases {
        let out = support::command()
            .args(["reverse", "--upstream", "http://127.0.0.1:9/mcp"])
            .args(options)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{options:?}: {stderr}");
        assert!(stderr.contains(expected), "{options:?}: {stderr}");
        assert!(!stderr.contains("hunter2"), "a password shown: {stderr}");
    }
}

/// A gateway at `port` sharing `keys`, with `options` (its upstream last).
fn instance_at(port: u16, keys: &Path, options: &[&str]) -> Gateway {
    let mut cmd = support::command();
    cmd.args(["--log-level", "debug", "reverse", "--listen"])
        .arg(format!("127.0.0.1:{port}"))
        .args(["--admin-listen", "127.0.0.1:0", "--cluster-key-file"])
        .arg(keys)
        .args(options);
    Gateway::spawn(cmd)
}

#[test]
fn a_rolling_restart_of_every_instance_costs_the_client_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let keys = key_file(dir.path(), "keys", &[KEY_A]);
    let server = HttpServer::start("1.30.0", &[]);
    let redis = RedisServer::start();
    let url = redis.url();
    let gateways = roll(&|port| {
        instance_at(
            port,
            &keys,
            &["--upstream", &server.url, "--redis-url", url.as_str()],
        )
    });
    // The restarted instances served the session too.
    for gateway in &gateways {
        assert!(forwarded(gateway) > 0.0, "{}", gateway.stderr_text());
    }
}

#[test]
fn a_rolling_restart_costs_the_client_of_a_session_at_a_process_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let keys = key_file(dir.path(), "keys", &[KEY_A]);
    let redis = RedisServer::start();
    let url = redis.url();
    let command = [python("1.30.0"), support::sdk::server_script("1.30.0")];
    let mut options = vec!["--redis-url", url.as_str(), "--"];
    options.extend(command.iter().map(String::as_str));
    let gateways = roll(&|port| instance_at(port, &keys, &options));
    // Each instance that stopped left its session to another, which took it over (a new
    // process given the session's handshake) under the same id.
    let taken: f64 = gateways
        .iter()
        .map(|g| counter(g, "shadowcat_cluster_sessions_adopted_total"))
        .sum();
    assert!(taken >= 1.0, "{taken}");
}

/// Three instances (`start(port)`) behind HAProxy, restarted one by one (SIGTERM: each
/// finishes what it has in flight, then is started again on its port) while a Python SDK
/// client calls `echo` every 20 ms in one session: no call fails, the session id stays.
fn roll(start: &dyn Fn(u16) -> Gateway) -> Vec<Gateway> {
    let ports = support::balancer::free_ports(3);
    let mut gateways: Vec<Gateway> = ports.iter().map(|&port| start(port)).collect();
    let addrs: Vec<String> = gateways.iter().map(|g| g.addr.clone()).collect();
    let balancer = Balancer::start(&addrs.iter().map(String::as_str).collect::<Vec<_>>());
    let mut client = Command::new(python("1.30.0"))
        .arg(support::peers().join("steady_client.py"))
        .args(["--url", &balancer.url()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = support::Stderr::read(client.stderr.take().unwrap(), |_| {});
    let mut stdout = BufReader::new(client.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    let ready: Value =
        serde_json::from_str(&line).unwrap_or_else(|_| panic!("{line}\n{}", stderr.text()));
    for (i, port) in ports.iter().enumerate() {
        std::thread::sleep(Duration::from_millis(500));
        gateways[i].terminate();
        let status = gateways[i].wait_exit(Duration::from_secs(15));
        assert!(status.success(), "{}", gateways[i].stderr_text());
        std::thread::sleep(Duration::from_millis(300));
        gateways[i] = start(*port);
    }
    std::thread::sleep(Duration::from_millis(500));
    client.stdin.as_mut().unwrap().write_all(b"stop\n").unwrap();
    line.clear();
    stdout.read_line(&mut line).unwrap();
    let done: Value =
        serde_json::from_str(&line).unwrap_or_else(|_| panic!("{line}\n{}", stderr.text()));
    assert!(client.wait().unwrap().success(), "{}", stderr.text());
    let logs = || {
        gateways
            .iter()
            .map(Gateway::stderr_text)
            .collect::<Vec<_>>()
            .join("\n----\n")
    };
    assert_eq!(
        done["failures"],
        json!([]),
        "{done}\n{}\n{}",
        stderr.text(),
        logs()
    );
    assert_eq!(done["sessions"], json!([ready["session"]]), "{done}");
    assert!(done["calls"].as_u64().unwrap() >= 10, "{done}");
    gateways
}

#[test]
fn a_session_at_a_process_is_served_through_every_instance_by_the_one_that_started_it() {
    let dir = tempfile::tempdir().unwrap();
    let keys = key_file(dir.path(), "keys", &[KEY_A]);
    let command = vec![python("2.3.0"), support::sdk::server_script("2.3.0")];
    let gateways: Vec<Gateway> = (0..3)
        .map(|_| {
            let mut opts = vec![
                "--cluster-key-file",
                keys.to_str().unwrap(),
                "--admin-listen",
                "127.0.0.1:0",
                "--",
            ];
            opts.extend(command.iter().map(String::as_str));
            Gateway::start(&opts)
        })
        .collect();
    let addrs: Vec<&str> = gateways.iter().map(|g| g.addr.as_str()).collect();
    let balancer = Balancer::start(&addrs);
    for (sdk, mode) in [("2.3.0", Some("legacy")), ("1.30.0", None)] {
        let direct = run_client(sdk, mode, Target::Stdio(&command), true);
        let spread = run_client(sdk, mode, Target::Url(&balancer.url()), true);
        support::sdk::check_progress_and_logs(&spread);
        check_elicitation_and_list_changed(&spread);
        assert_eq!(
            direct, spread,
            "client {sdk}: different through three instances"
        );
    }
    // Each session's process ran at one instance; the others passed its requests there.
    let forwarded: f64 = gateways
        .iter()
        .map(|g| counter(g, "shadowcat_cluster_requests_forwarded_total"))
        .sum();
    assert!(forwarded >= 4.0, "{forwarded}");
    let created: f64 = gateways
        .iter()
        .map(|g| counter(g, "shadowcat_sessions_created_total"))
        .sum();
    assert_eq!(created, 2.0, "one session (and process) per client");
    // A session opened at A, asked for at B: passed to A. Marked as passed on already, B
    // serves it not (no loops between instances).
    let [a, b] = [&gateways[0], &gateways[1]];
    let session = a.initialize();
    assert_eq!(list_tools(&b.addr, &session).status, 200);
    let headers = vec![
        ("Content-Type", "application/json".to_owned()),
        ("Accept", "application/json, text/event-stream".to_owned()),
        ("Mcp-Session-Id", session.clone()),
        ("MCP-Protocol-Version", "2025-06-18".to_owned()),
        ("Shadowcat-Forwarded", "1".to_owned()),
    ];
    let body = json!({"jsonrpc":"2.0","id":8,"method":"tools/list"}).to_string();
    let looped = http_request(&b.addr, "POST", "/mcp", &headers, body.as_bytes());
    assert_eq!(looped.status, 404, "{looped:?}");
    // A gone: its sessions are gone with their processes (404, saying so).
    let b_addr = b.addr.clone();
    let mut gateways = gateways;
    gateways[0].child.kill().unwrap();
    gateways[0].child.wait().unwrap();
    let gone = list_tools(&b_addr, &session);
    assert_eq!(gone.status, 404, "{gone:?}");
    assert!(
        String::from_utf8_lossy(&gone.body).contains("an instance of the cluster that is gone"),
        "{gone:?}"
    );
}

/// Three instances sharing `keys` and Redis (`redis_url`) in front of the Python SDK 1.30.0
/// server over stdio (a process per session), each with its admin listener.
fn process_instances(keys: &Path, redis_url: &str) -> Vec<Gateway> {
    process_instances_with(keys, redis_url, &[])
}

/// As [`process_instances`], with `extra` options.
fn process_instances_with(keys: &Path, redis_url: &str, extra: &[&str]) -> Vec<Gateway> {
    let command = [python("1.30.0"), support::sdk::server_script("1.30.0")];
    (0..3)
        .map(|_| {
            let mut opts = vec![
                "--cluster-key-file",
                keys.to_str().unwrap(),
                "--redis-url",
                redis_url,
                "--admin-listen",
                "127.0.0.1:0",
            ];
            opts.extend_from_slice(extra);
            opts.push("--");
            opts.extend(command.iter().map(String::as_str));
            Gateway::start(&opts)
        })
        .collect()
}

#[test]
fn an_owner_that_is_up_keeps_its_session_even_before_the_others_list_it() {
    let dir = tempfile::tempdir().unwrap();
    let keys = key_file(dir.path(), "keys", &[KEY_A]);
    let redis = RedisServer::start();
    let mut gateways = process_instances(&keys, &redis.url());
    // A new instance: the others' copies of the list of instances up (read every second) may
    // not have it yet; a request for its session at another is still passed to it, never
    // taken over (Redis's own list says it is up).
    let a = process_instances(&keys, &redis.url()).remove(0);
    let session = a.initialize();
    for gateway in &gateways {
        assert_eq!(list_tools(&gateway.addr, &session).status, 200);
        assert_eq!(
            counter(gateway, "shadowcat_cluster_sessions_adopted_total"),
            0.0,
            "{}",
            gateway.stderr_text()
        );
    }
    assert_eq!(counter(&a, "shadowcat_sessions_created_total"), 1.0);
    gateways.push(a);
}

#[test]
fn a_session_at_a_process_is_taken_over_under_its_id_when_its_instance_is_killed() {
    taken_over_when_its_instance_is_killed(&[]);
}

/// As above, the sessions on processes they share (`--share always`): the session joins a
/// shared process at the instance that takes it over, given its handshake first.
#[test]
fn a_session_on_a_shared_process_is_taken_over_under_its_id_when_its_instance_is_killed() {
    taken_over_when_its_instance_is_killed(&["--share", "always"]);
}

fn taken_over_when_its_instance_is_killed(extra: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let keys = key_file(dir.path(), "keys", &[KEY_A]);
    let redis = RedisServer::start();
    let mut gateways = process_instances_with(&keys, &redis.url(), extra);
    let addrs: Vec<String> = gateways.iter().map(|g| g.addr.clone()).collect();
    let balancer = Balancer::start(&addrs.iter().map(String::as_str).collect::<Vec<_>>());
    let mut owner = None;
    let (ready, after) = two_calls(&balancer.url(), || {
        // The instance that runs the session's process is killed (no goodbye).
        let at = gateways
            .iter()
            .position(|g| counter(g, "shadowcat_sessions_created_total") == 1.0)
            .expect("one instance opened the session");
        gateways[at].child.kill().unwrap();
        gateways[at].child.wait().unwrap();
        owner = Some(at);
    });
    assert_eq!(ready["text"], "before", "{ready}");
    assert_eq!(after["isError"], false, "{after}");
    assert_eq!(after["text"], "after", "{after}");
    assert_eq!(
        after["session"], ready["session"],
        "the client kept its session id"
    );
    // One of the others took it over: a new process, given the session's handshake.
    let survivors: Vec<&Gateway> = gateways
        .iter()
        .enumerate()
        .filter(|(i, _)| Some(*i) != owner)
        .map(|(_, g)| g)
        .collect();
    let taken: f64 = survivors
        .iter()
        .map(|g| counter(g, "shadowcat_cluster_sessions_adopted_total"))
        .sum();
    assert_eq!(taken, 1.0);
    assert!(
        survivors.iter().any(|g| g
            .stderr_text()
            .contains("took over a session whose instance is gone")),
        "{}",
        survivors[0].stderr_text()
    );
    if extra.contains(&"always") {
        assert!(
            survivors
                .iter()
                .any(|g| g.stderr_text().contains("on a shared MCP server")),
            "{}",
            survivors[0].stderr_text()
        );
    }
}

/// A 2025-11-25 session (which takes priming events) opened at `gateway`, its client able to
/// sample (the server's `ask` asks it mid-call).
fn initialize_sampling(gateway: &Gateway) -> String {
    let init = gateway.post(
        None,
        &json!({"jsonrpc":"2.0","id":0,"method":"initialize","params":{
            "protocolVersion":"2025-11-25","capabilities":{"sampling":{}},
            "clientInfo":{"name":"shadowcat-tests","version":"1"}}}),
    );
    assert_eq!(init.status, 200, "{init:?}");
    let session = init.header("mcp-session-id").unwrap().to_owned();
    let ack = gateway.post(
        Some(&session),
        &json!({"jsonrpc":"2.0","method":"notifications/initialized"}),
    );
    assert_eq!(ack.status, 202, "{ack:?}");
    session
}

/// The headers of a 2025-11-25 client's requests in `session`, with `Last-Event-ID: last`.
fn stream_headers(session: &str, last: Option<&str>) -> Vec<(&'static str, String)> {
    let mut headers = vec![
        ("Content-Type", "application/json".to_owned()),
        ("Accept", "application/json, text/event-stream".to_owned()),
        ("Mcp-Session-Id", session.to_owned()),
        ("MCP-Protocol-Version", "2025-11-25".to_owned()),
    ];
    if let Some(last) = last {
        headers.push(("Last-Event-ID", last.to_owned()));
    }
    headers
}

/// The client's `tools/call` of `name` through `addr`, answered.
fn call_at(addr: &str, session: &str, id: i64, name: &str, arguments: Value) -> Value {
    let body = json!({"jsonrpc":"2.0","id":id,"method":"tools/call",
                      "params": support::tool(name, arguments)});
    let response = http_request(
        addr,
        "POST",
        "/mcp",
        &stream_headers(session, None),
        body.to_string().as_bytes(),
    );
    assert_eq!(response.status, 200, "{response:?}");
    response
        .sse_messages()
        .into_iter()
        .chain(serde_json::from_slice::<Value>(&response.body).ok())
        .find(|m| m["id"] == id)
        .unwrap_or_else(|| panic!("no answer to {name}: {response:?}"))
}

/// A client loses a request's stream at the instance that serves it, answers the server's
/// question through a second instance, and resumes the stream with `Last-Event-ID` at a third,
/// which never saw the request: it gets the rest of the stream (the call's answer), once, from
/// the stream's copy in Redis, and the stream ends. Without a copy, the resume is a clear 400.
#[test]
fn a_request_stream_resumes_with_last_event_id_at_another_instance() {
    let dir = tempfile::tempdir().unwrap();
    let keys = key_file(dir.path(), "keys", &[KEY_A]);
    let server = HttpServer::start("2.3.0", &[]);
    let redis = RedisServer::start();
    let url = redis.url();
    let gateways = instances_with(3, &server.url, &keys, &["--redis-url", &url]);
    let [a, b, c] = [&gateways[0], &gateways[1], &gateways[2]];
    let session = initialize_sampling(a);
    let call = json!({"jsonrpc":"2.0","id":5,"method":"tools/call",
                      "params": support::tool("ask", json!({"question": "2+2?"}))});
    let mut stream = support::SseReader::post(
        &a.addr,
        &stream_headers(&session, None),
        call.to_string().as_bytes(),
    );
    assert_eq!(stream.status, 200);
    let priming = stream.next_block().unwrap();
    let (id, request) = stream.next_event().unwrap();
    let id = id.unwrap();
    // Ids name the stream, the instance's run, and the event's number.
    let (stream_name, number) = id.rsplit_once('-').unwrap();
    assert!(stream_name.starts_with("post1."), "{id}");
    assert_eq!(number, "1");
    assert_eq!(
        priming,
        format!("id: {stream_name}-0\nretry: 3000\ndata:\n")
    );
    assert_eq!(request["method"], "sampling/createMessage", "{request}");
    drop(stream);
    // The question is answered through B; the server answers the call on its stream to A.
    let answer = json!({"jsonrpc":"2.0","id":request["id"],"result":{"role":"assistant",
        "content":{"type":"text","text":"four"},"model":"m"}});
    let accepted = http_request(
        &b.addr,
        "POST",
        "/mcp",
        &stream_headers(&session, None),
        answer.to_string().as_bytes(),
    );
    assert_eq!(accepted.status, 202, "{accepted:?}");
    let mut resumed = support::SseReader::get(&c.addr, &stream_headers(&session, Some(&id)));
    assert_eq!(resumed.status, 200);
    assert_eq!(
        resumed.next_block().unwrap(),
        format!("id: {id}\nretry: 3000\ndata:\n")
    );
    let (next, result) = resumed.next_event().unwrap();
    assert_eq!(next.unwrap(), format!("{stream_name}-2"));
    assert_eq!(result["id"], 5, "{result}");
    assert_eq!(result["result"]["content"][0]["text"], "four", "{result}");
    assert!(
        resumed.assert_ends_within(support::ENDS_WITHIN).is_empty(),
        "the resumed stream ends with the call's answer"
    );
    assert!(
        counter(
            c,
            "shadowcat_redis_commands_total{use=\"stream\",outcome=\"ok\"}"
        ) >= 1.0,
        "C read the copy"
    );
    // A stream of a run no instance had: nothing to resume, said clearly.
    let unknown = http_request(
        &c.addr,
        "GET",
        "/mcp",
        &stream_headers(&session, Some("post1.00000000000000ff-1")),
        b"",
    );
    assert_eq!(unknown.status, 400, "{unknown:?}");
    assert!(
        unknown.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("another instance of the cluster"),
        "{unknown:?}"
    );
    // Without Redis an instance cannot read another's streams, and says why.
    let alone = instances(1, &server.url, &keys);
    let refused = http_request(
        &alone[0].addr,
        "GET",
        "/mcp",
        &stream_headers(&session, Some(&id)),
        b"",
    );
    assert_eq!(refused.status, 400, "{refused:?}");
    assert!(
        refused.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("--redis-url"),
        "{refused:?}"
    );
}

/// A client loses the session's GET stream at the instance that holds the upstream's, and
/// resumes it at another: it gets what it missed, then what the server goes on sending,
/// followed in the copy. When the first instance is killed, the stream ends once that
/// instance is off the cluster's list, and the client's next resume goes on with the second
/// instance's own GET stream, which carries the server's next notification.
#[test]
fn a_get_stream_resumes_at_another_instance_and_outlives_the_one_that_held_it() {
    let dir = tempfile::tempdir().unwrap();
    let keys = key_file(dir.path(), "keys", &[KEY_A]);
    let server = HttpServer::start("2.3.0", &[]);
    let redis = RedisServer::start();
    let url = redis.url();
    let mut gateways = instances_with(3, &server.url, &keys, &["--redis-url", &url]);
    let (a_addr, b_addr, c_addr) = (
        gateways[0].addr.clone(),
        gateways[1].addr.clone(),
        gateways[2].addr.clone(),
    );
    let session = initialize_sampling(&gateways[0]);
    let get = |addr: &str, last: Option<&str>| {
        let mut headers = stream_headers(&session, last);
        headers[1].1 = "text/event-stream".to_owned();
        support::SseReader::get(addr, &headers)
    };
    let grow = |id: i64| {
        let answer = call_at(&b_addr, &session, id, "grow", json!({}));
        assert_eq!(answer["result"]["content"][0]["text"], "told", "{answer}");
    };
    let mut at_a = get(&a_addr, None);
    assert_eq!(at_a.status, 200);
    let priming = at_a.next_block().unwrap();
    let stream_a = priming
        .strip_prefix("id: ")
        .and_then(|rest| rest.split_once("-0\n"))
        .map(|(name, _)| name.to_owned())
        .unwrap_or_else(|| panic!("{priming}"));
    assert!(stream_a.starts_with("get."), "{stream_a}");
    grow(1);
    let (first, note) = at_a.next_event().unwrap();
    assert_eq!(first.as_deref(), Some(format!("{stream_a}-1").as_str()));
    assert_eq!(note["method"], "notifications/tools/list_changed");
    drop(at_a);
    // Sent while the client is away: A still holds the upstream's stream, and logs it.
    grow(2);
    let mut at_c = get(&c_addr, first.as_deref());
    assert_eq!(at_c.status, 200);
    assert_eq!(
        at_c.next_block().unwrap(),
        format!("id: {stream_a}-1\nretry: 3000\ndata:\n")
    );
    let (missed, note) = at_c.next_event().unwrap();
    assert_eq!(missed.unwrap(), format!("{stream_a}-2"));
    assert_eq!(note["method"], "notifications/tools/list_changed");
    // And what comes next, live, through the copy.
    grow(3);
    let (live, _) = at_c.next_event().unwrap();
    assert_eq!(live.clone().unwrap(), format!("{stream_a}-3"));
    // A dies: once it is off the list, C ends the stream it followed.
    gateways[0].child.kill().unwrap();
    gateways[0].child.wait().unwrap();
    let ended = Instant::now();
    assert!(at_c.next_event().is_none(), "the followed stream ends");
    assert!(
        ended.elapsed() < Duration::from_secs(9),
        "{:?}",
        ended.elapsed()
    );
    // The client resumes at C, which now holds the upstream's stream itself.
    let mut own = get(&c_addr, live.as_deref());
    assert_eq!(own.status, 200);
    assert_eq!(
        own.next_block().unwrap(),
        format!("id: {stream_a}-3\nretry: 3000\ndata:\n")
    );
    let own_priming = own.next_block().unwrap();
    assert!(
        own_priming.starts_with("id: get.") && !own_priming.contains(&stream_a),
        "{own_priming}"
    );
    // The server's GET stream to C may take a moment: ask until a notification comes.
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let asker = {
        let done = done.clone();
        let (b_addr, session) = (b_addr.clone(), session.clone());
        std::thread::spawn(move || {
            let mut id = 10;
            while !done.load(std::sync::atomic::Ordering::Relaxed) && id < 60 {
                id += 1;
                call_at(&b_addr, &session, id, "grow", json!({}));
                std::thread::sleep(Duration::from_millis(300));
            }
        })
    };
    let (next, note) = own.next_event().unwrap();
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    asker.join().unwrap();
    let next = next.unwrap();
    assert!(
        next.starts_with("get.") && !next.starts_with(&stream_a),
        "C's own stream: {next}"
    );
    assert_eq!(note["method"], "notifications/tools/list_changed");
    drop(gateways);
}

/// `shadowcat session <args>`, its exit code, stdout and stderr.
fn session_cmd(args: &[&str]) -> (i32, String, String) {
    let output = support::command()
        .arg("session")
        .args(args)
        .env_remove("SHADOWCAT_REDIS_URL")
        .output()
        .unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// The ids (and states) `session list --format json` prints with `args`.
fn listed(args: &[&str]) -> Vec<(String, String)> {
    let mut all = vec!["list", "--format", "json"];
    all.extend_from_slice(args);
    let (code, out, err) = session_cmd(&all);
    assert_eq!(code, 0, "{err}");
    let records: Vec<Value> = serde_json::from_str(&out).unwrap();
    let mut ids: Vec<(String, String)> = records
        .iter()
        .map(|r| {
            (
                r["id"].as_str().unwrap().to_owned(),
                r["state"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    ids.sort();
    ids
}

/// Every instance writes its sessions' records to Redis as well as to its own SQLite file, so
/// `session list --redis-url` shows the cluster's sessions: exactly the union of the instances'
/// own lists, one row per session however many instances served it. A session its client
/// ended through one instance shows ended; `session show` and `session cleanup` work there too;
/// Redis gone is a clear error.
#[test]
fn session_list_shows_the_sessions_of_every_instance_from_redis() {
    let dir = tempfile::tempdir().unwrap();
    let keys = key_file(dir.path(), "keys", &[KEY_A]);
    let server = HttpServer::start("2.3.0", &[]);
    let mut redis = RedisServer::start();
    let url = redis.url();
    let data: Vec<PathBuf> = (0..3)
        .map(|i| dir.path().join(format!("data{i}")))
        .collect();
    let gateways: Vec<Gateway> = data
        .iter()
        .map(|d| {
            Gateway::start(&[
                "--upstream",
                &server.url,
                "--cluster-key-file",
                keys.to_str().unwrap(),
                "--redis-url",
                &url,
                "--session-store",
                "sqlite",
                "--data-dir",
                d.to_str().unwrap(),
            ])
        })
        .collect();
    let [a, b, c] = [&gateways[0], &gateways[1], &gateways[2]];
    let first = a.initialize();
    b.initialize();
    // C serves A's session too.
    assert_eq!(list_tools(&c.addr, &first).status, 200);
    let local = |i: usize| listed(&["--data-dir", data[i].to_str().unwrap()]);
    let deadline = Instant::now() + Duration::from_secs(10);
    let (cluster, own) = loop {
        let cluster = listed(&["--redis-url", &url]);
        let own: Vec<Vec<(String, String)>> = (0..3).map(local).collect();
        if cluster.len() == 2 && own.iter().map(Vec::len).sum::<usize>() == 3 {
            break (cluster, own);
        }
        assert!(
            Instant::now() < deadline,
            "cluster: {cluster:?}, own: {own:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let ids =
        |rows: &[(String, String)]| -> Vec<String> { rows.iter().map(|r| r.0.clone()).collect() };
    let mut union: Vec<String> = own.iter().flat_map(|rows| ids(rows)).collect();
    union.sort();
    union.dedup();
    assert_eq!(ids(&cluster), union, "own lists: {own:?}");
    assert_eq!(own[0].len(), 1, "A keeps only its own: {own:?}");
    assert_eq!(
        ids(&own[2]),
        ids(&own[0]),
        "C keeps A's session, which it served"
    );
    // The plain ids the history shows are no credential: only the sealed ids name sessions.
    for (gateway, row) in [(a, &own[0][0]), (b, &own[1][0])] {
        assert_eq!(list_tools(&gateway.addr, &row.0).status, 404, "{row:?}");
    }
    assert_eq!(list_tools(&a.addr, &first).status, 200);
    // `session show` reads one record there.
    let (code, shown, err) = session_cmd(&["show", &own[1][0].0, "--redis-url", &url]);
    assert_eq!(code, 0, "{err}");
    assert!(shown.contains(&own[1][0].0), "{shown}");
    // The client ends the first session through B: the cluster's row says so.
    delete(&b.addr, &first);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let cluster = listed(&["--redis-url", &url, "--state", "ended"]);
        if cluster.len() == 1 {
            assert_eq!(cluster[0].0, own[0][0].0);
            break;
        }
        assert!(Instant::now() < deadline, "{cluster:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(listed(&["--redis-url", &url, "--state", "active"]).len(), 1);
    let (code, out, err) = session_cmd(&["cleanup", "--all", "--redis-url", &url]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("deleted 1 session"), "{out}");
    assert_eq!(listed(&["--redis-url", &url]).len(), 1);
    // Redis gone: the command says where it could not read, and fails.
    redis.stop();
    let (code, _, err) = session_cmd(&["list", "--redis-url", &url, "--redis-timeout", "200ms"]);
    assert_eq!(code, 2, "shadowcat's exit code for an error: {err}");
    assert!(
        err.contains("session history in Redis at redis://127.0.0.1"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "said once: {err}");
    drop(gateways);
}

/// The Python SDK client (2.3.0) through HAProxy to three instances sharing Redis, in front of
/// a server that closes a call's stream after its first step (SEP-1699 polling): the client
/// comes back with `Last-Event-ID`, and the balancer sends that GET to another instance than
/// the one that relayed the call, which gives it the rest from the stream's copy. The client
/// sees what it sees talking to the server itself.
#[test]
fn an_sdk_client_resumes_a_polled_call_through_another_instance() {
    let dir = tempfile::tempdir().unwrap();
    let keys = key_file(dir.path(), "keys", &[KEY_A]);
    let server = HttpServer::start("2.3.0", &["--resumable"]);
    let redis = RedisServer::start();
    let url = redis.url();
    let gateways = instances_with(3, &server.url, &keys, &["--redis-url", &url]);
    let addrs: Vec<&str> = gateways.iter().map(|g| g.addr.as_str()).collect();
    let balancer = Balancer::start(&addrs);
    let direct = run_client("2.3.0", Some("legacy"), Target::Url(&server.url), true);
    let summary: Value = serde_json::from_str(&direct).unwrap();
    assert_eq!(
        summary["calls"]["poll"]["progress"],
        json!([[1.0, 3.0], [2.0, 3.0], [3.0, 3.0]]),
        "{summary}"
    );
    let spread = run_client("2.3.0", Some("legacy"), Target::Url(&balancer.url()), true);
    assert_eq!(direct, spread, "different through three instances");
    // The resume came to an instance that had not relayed the call, and it read the copy.
    let resumed: Vec<bool> = gateways
        .iter()
        .map(|g| {
            g.stderr_text()
                .contains("a client resumes a stream another instance wrote")
        })
        .collect();
    assert!(
        resumed.contains(&true),
        "{resumed:?}\n{}",
        gateways[0].stderr_text()
    );
}

/// The instance that owns a session at a process stalls (SIGSTOP) until its entry on the
/// cluster's list lapses, and another takes the session over. When it resumes, it hears that
/// from Redis: it stops its own process for the session, and a request that still reaches it
/// goes to the new owner. One process serves the session, never two.
#[test]
fn an_owner_back_after_its_entry_lapsed_lets_go_of_the_session_another_took_over() {
    let dir = tempfile::tempdir().unwrap();
    let keys = key_file(dir.path(), "keys", &[KEY_A]);
    let redis = RedisServer::start();
    let gateways = process_instances(&keys, &redis.url());
    let [a, b] = [&gateways[0], &gateways[1]];
    let session = a.initialize();
    assert_eq!(list_tools(&b.addr, &session).status, 200);
    let signal = |name: &str| {
        let status = Command::new("kill")
            .args([name, &a.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    };
    signal("-STOP");
    // B passes the next request to A, which does not answer: once A's entry lapses (within
    // 5 s, and B's copy of the list says so within another second) B gives up on it: 502, the
    // request may have reached A.
    let started = Instant::now();
    let stalled = list_tools(&b.addr, &session);
    assert_eq!(stalled.status, 502, "{stalled:?}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    // The client's retry: B takes the session over.
    let taken = list_tools(&b.addr, &session);
    signal("-CONT");
    assert_eq!(taken.status, 200, "{taken:?}");
    assert_eq!(
        counter(b, "shadowcat_cluster_sessions_adopted_total"),
        1.0,
        "{}",
        b.stderr_text()
    );
    wait_for_log(a, "took the session over while this one was off the list");
    // A request that still reaches A is passed to B, whose process serves it.
    let before = counter(b, "shadowcat_messages_to_server_total");
    assert_eq!(list_tools(&a.addr, &session).status, 200);
    assert_eq!(
        counter(b, "shadowcat_messages_to_server_total"),
        before + 1.0
    );
    assert!(counter(a, "shadowcat_cluster_requests_forwarded_total") >= 1.0);
}

/// A session idles out at the instance that held its GET stream (an orderly end there: the
/// stream's copy is marked over), and is taken up there again later. The client's resume at
/// another instance goes on with that instance's own GET stream (not a stream that ended, over
/// and over), and the streams of the session's second visit to the first instance are named
/// apart from its first (their copies never collide: Redis never fails them).
#[test]
fn streams_outlive_a_session_idling_out_at_the_instance_that_wrote_them() {
    let dir = tempfile::tempdir().unwrap();
    let keys = key_file(dir.path(), "keys", &[KEY_A]);
    let server = HttpServer::start("2.3.0", &[]);
    let redis = RedisServer::start();
    let url = redis.url();
    let a = &instances_with(
        1,
        &server.url,
        &keys,
        &[
            "--redis-url",
            &url,
            "--session-idle-timeout",
            "1s",
            "--cleanup-interval",
            "200ms",
        ],
    )[0];
    let b = &instances_with(1, &server.url, &keys, &["--redis-url", &url])[0];
    let session = initialize_sampling(a);
    let get = |addr: &str, last: Option<&str>| {
        let mut headers = stream_headers(&session, last);
        headers[1].1 = "text/event-stream".to_owned();
        support::SseReader::get(addr, &headers)
    };
    // A call answered on a stream of its own (its progress, then its answer): the first id of
    // that stream.
    let work = |id: i64| {
        let call = json!({"jsonrpc":"2.0","id":id,"method":"tools/call","params":{
            "name":"work","arguments":{"steps":2},"_meta":{"progressToken":"p"}}});
        let worked = http_request(
            &a.addr,
            "POST",
            "/mcp",
            &stream_headers(&session, None),
            call.to_string().as_bytes(),
        );
        assert_eq!(worked.status, 200, "{worked:?}");
        let text = String::from_utf8_lossy(&worked.body).into_owned();
        text.lines()
            .find_map(|l| l.strip_prefix("id: "))
            .filter(|id| id.starts_with("post"))
            .unwrap_or_else(|| panic!("{text}"))
            .to_owned()
    };
    let first_post = work(2);
    let mut at_a = get(&a.addr, None);
    let priming = at_a.next_block().unwrap();
    let first_id = priming
        .strip_prefix("id: ")
        .and_then(|rest| rest.split_once('\n'))
        .map(|(id, _)| id.to_owned())
        .unwrap();
    drop(at_a);
    wait_for_log(a, "expired idle sessions");
    // The copy is over: B goes on with its own stream after it.
    let mut at_b = get(&b.addr, Some(&first_id));
    assert_eq!(at_b.status, 200);
    assert_eq!(
        at_b.next_block().unwrap(),
        format!("id: {first_id}\nretry: 3000\ndata:\n")
    );
    let own = at_b.next_block().unwrap();
    assert!(
        own.starts_with("id: get.") && !own.contains(&first_id),
        "{own}"
    );
    // A takes the session up again: its streams now carry another writer (the first stream
    // of this visit is named apart from the first of the last).
    let second_post = work(3);
    let stream = |id: &str| id.rsplit_once('-').unwrap().0.to_owned();
    assert!(stream(&first_post).starts_with("post1."), "{first_post}");
    assert!(stream(&second_post).starts_with("post1."), "{second_post}");
    assert_ne!(stream(&first_post), stream(&second_post));
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !a.stderr_text().contains("Redis failed"),
        "{}",
        a.stderr_text()
    );
    assert!(
        counter(
            a,
            "shadowcat_redis_commands_total{use=\"stream\",outcome=\"failed\"}"
        ) == 0.0
    );
}
