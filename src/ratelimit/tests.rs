//! Each key kind on governor's fake clock: exactly the burst passes, the next is refused with
//! the right error and retry hint, and capacity returns on time.

use std::net::{IpAddr, Ipv4Addr};

use governor::clock::FakeRelativeClock;
use serde_json::{Value, json};

use super::*;
use crate::protocol::RequestId;
use crate::session::{Session, TransportKind};
use crate::stage::{Context, Verdict};
use crate::tape::Wire;

struct Bench {
    limits: RateLimits,
    clock: FakeRelativeClock,
    metrics: Metrics,
}

fn limits(specs: &[&str]) -> Bench {
    let metrics = Metrics::default();
    let clock = FakeRelativeClock::default();
    let mut specs: Vec<_> = specs.iter().map(|s| LimitSpec::parse(s).unwrap()).collect();
    spec::unique_names(&mut specs);
    Bench {
        limits: RateLimits::with_clock(&specs, &metrics, &LimitClock::Manual(clock.clone())),
        clock,
        metrics,
    }
}

fn request(method: &str, params: &Value) -> Message {
    Message::parse(
        json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params})
            .to_string()
            .into(),
    )
    .unwrap()
}

fn call(tool: &str) -> Message {
    request("tools/call", &json!({"name": tool, "arguments": {}}))
}

fn ping() -> Message {
    request("ping", &json!({}))
}

/// How many of `n` pass.
fn passes(n: usize, mut send: impl FnMut() -> Result<(), Refusal>) -> usize {
    (0..n).filter(|_| send().is_ok()).count()
}

fn session() -> Session {
    Session::standalone(TransportKind::Http, 100)
}

impl Bench {
    fn check_as(
        &self,
        msg: &Message,
        session: &Session,
        client: Client<'_>,
    ) -> Result<(), Refusal> {
        let cx = Context {
            direction: Direction::ClientToServer,
            session,
            transport: &Wire::NONE,
            client,
            header_trace: None,
            notes: None,
        };
        self.limits.check(msg, &cx)
    }

    fn check(&self, msg: &Message, session: &Session) -> Result<(), Refusal> {
        self.check_as(msg, session, Client::Local)
    }

    fn count(&self, limit: &str, per: &'static str, outcome: &'static str) -> u64 {
        self.metrics.rate_limit_counter(limit, per, outcome).get()
    }
}

/// The burst passes, the next is refused with a retry hint of one emission interval, and one
/// more passes exactly when that interval is over (not a millisecond before).
fn burst_then_recovery(
    b: &Bench,
    burst: usize,
    interval: Duration,
    mut send: impl FnMut() -> Result<(), Refusal>,
) {
    assert_eq!(passes(burst, &mut send), burst, "the whole burst passes");
    let refusal = send().unwrap_err();
    assert_eq!(refusal.retry_after, interval);
    b.clock
        .advance(interval.checked_sub(Duration::from_millis(1)).unwrap());
    assert_eq!(send().unwrap_err().retry_after, Duration::from_millis(1));
    b.clock.advance(Duration::from_millis(1));
    assert!(send().is_ok(), "capacity returns on time");
    assert!(send().is_err(), "one cell only");
}

#[test]
fn global_limits_everyone_together() {
    let b = limits(&["global=2/s,burst=3"]);
    let (s1, s2) = (session(), session());
    let mut turn = 0;
    burst_then_recovery(&b, 3, Duration::from_millis(500), || {
        turn += 1;
        let s = if turn % 2 == 0 { &s1 } else { &s2 };
        b.check_as(
            &ping(),
            s,
            Client::Address(IpAddr::V4(Ipv4Addr::new(10, 0, 0, turn))),
        )
    });
    assert_eq!(b.count("global", "global", "allowed"), 4);
    assert_eq!(b.count("global", "global", "refused"), 3);
}

#[test]
fn session_limits_each_session_alone() {
    let b = limits(&["session=1/s,burst=2"]);
    let (noisy, quiet) = (session(), session());
    burst_then_recovery(&b, 2, Duration::from_secs(1), || b.check(&ping(), &noisy));
    assert_eq!(
        passes(3, || b.check(&ping(), &quiet)),
        2,
        "another session has its own burst"
    );
}

#[test]
fn client_limits_each_address_alone() {
    let b = limits(&["client=10/min,burst=4"]);
    let s = session();
    let one = Client::Address("192.0.2.1".parse().unwrap());
    let two = Client::Address("192.0.2.2".parse().unwrap());
    burst_then_recovery(&b, 4, Duration::from_secs(6), || {
        b.check_as(&ping(), &s, one)
    });
    assert_eq!(
        passes(5, || b.check_as(&ping(), &s, two)),
        4,
        "another address has its own"
    );
    let alice = crate::session::Principal {
        id: "key:alice".into(),
        subject: "alice".into(),
        issuer: None,
        scopes: vec![],
        claims: std::collections::BTreeMap::new(),
    };
    assert_eq!(
        passes(5, || b.check_as(&ping(), &s, Client::Subject(&alice))),
        4
    );
    assert_eq!(passes(5, || b.check_as(&ping(), &s, Client::Local)), 4);
}

#[test]
fn method_limits_each_method_alone() {
    let b = limits(&["method=1/s,burst=1"]);
    let s = session();
    burst_then_recovery(&b, 1, Duration::from_secs(1), || b.check(&ping(), &s));
    let list = request("tools/list", &json!({}));
    assert!(b.check(&list, &s).is_ok());
    assert!(b.check(&list, &s).is_err());
}

#[test]
fn tool_limits_each_tool_alone_and_only_tool_calls() {
    let b = limits(&["tool=3/s,burst=3"]);
    let s = session();
    burst_then_recovery(&b, 3, Duration::from_nanos(333_333_333), || {
        b.check(&call("search"), &s)
    });
    assert_eq!(passes(4, || b.check(&call("echo"), &s)), 3);
    assert_eq!(
        passes(10, || b.check(&ping(), &s)),
        10,
        "not a tool call: not counted"
    );
    // A repeated name is read as the server reads it (the last), so it cannot dodge the limit.
    let sneaky = Message::parse(
        br#"{"jsonrpc":"2.0","id":9,"method":"tools/call","params":{"name":"fresh","name":"echo"}}"#
            .to_vec()
            .into(),
    )
    .unwrap();
    assert!(b.check(&sneaky, &s).is_err(), "counted as echo");
}

/// A name that cannot be read (given twice, beside a number no tree holds) is counted by
/// every tool limit, not passed by.
#[test]
fn an_unreadable_tool_name_is_counted_not_passed_by() {
    let b = limits(&["client=1/h,burst=1,tool=search*"]);
    let s = session();
    let sneaky = || {
        Message::parse(
            br#"{"jsonrpc":"2.0","id":9,"method":"tools/call","params":{"name":"x","name":"search_web","n":1e999}}"#
                .to_vec()
                .into(),
        )
        .unwrap()
    };
    assert!(b.check(&sneaky(), &s).is_ok());
    assert!(b.check(&sneaky(), &s).is_err());
}

#[test]
fn conditions_pick_what_counts() {
    let b = limits(&[
        "client=1/h,burst=1,tool=search*",
        "session=1/h,burst=2,method=resources/*",
    ]);
    let s = session();
    assert!(b.check(&call("search_web"), &s).is_ok());
    assert!(
        b.check(&call("search_docs"), &s).is_err(),
        "same client, matching tool"
    );
    assert_eq!(
        passes(5, || b.check(&call("echo"), &s)),
        5,
        "other tools are free"
    );
    let read = request("resources/read", &json!({"uri": "file:///a"}));
    assert_eq!(passes(3, || b.check(&read, &s)), 2);
    assert_eq!(passes(3, || b.check(&ping(), &s)), 3);
}

#[test]
fn narrow_limits_are_checked_first() {
    // The tool limit refuses before the global limit counts the message.
    let b = limits(&["global=1/h,burst=3", "tool=1/h,burst=1"]);
    let s = session();
    assert!(b.check(&call("a"), &s).is_ok());
    let refusal = b.check(&call("a"), &s).unwrap_err();
    assert_eq!(refusal.limit, "tool");
    assert_eq!(
        passes(3, || b.check(&ping(), &s)),
        2,
        "the global limit spent only one"
    );
}

#[test]
fn only_client_requests_and_notifications_count() {
    let b = limits(&["global=1/h,burst=1"]);
    let s = session();
    let cx = |direction| Context {
        direction,
        session: &s,
        transport: &Wire::NONE,
        client: Client::Local,
        header_trace: None,
        notes: None,
    };
    let raw = |v: Value| Message::parse(v.to_string().into()).unwrap();
    let response = raw(json!({"jsonrpc": "2.0", "id": 5, "result": {}}));
    let initialized = raw(json!({"jsonrpc": "2.0", "method": "notifications/initialized"}));
    let cancelled = raw(
        json!({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 1}}),
    );
    for _ in 0..5 {
        assert!(
            b.limits
                .check(&response, &cx(Direction::ClientToServer))
                .is_ok()
        );
        assert!(
            b.limits
                .check(&initialized, &cx(Direction::ClientToServer))
                .is_ok()
        );
        assert!(
            b.limits
                .check(&cancelled, &cx(Direction::ClientToServer))
                .is_ok()
        );
        assert!(
            b.limits
                .check(&ping(), &cx(Direction::ServerToClient))
                .is_ok()
        );
    }
    assert!(b.check(&ping(), &s).is_ok());
    let progress = raw(json!({"jsonrpc": "2.0", "method": "notifications/roots/list_changed"}));
    assert!(b.check(&progress, &s).is_err(), "other notifications count");
    assert_eq!(b.count("global", "global", "dropped"), 1);
    assert_eq!(b.count("global", "global", "refused"), 0);
}

#[tokio::test]
async fn the_pipeline_answers_a_refused_request_and_drops_a_notification() {
    let b = limits(&["session=1/s,burst=1"]);
    let s = session();
    let cx = Context {
        direction: Direction::ClientToServer,
        session: &s,
        transport: &Wire::NONE,
        client: Client::Local,
        header_trace: None,
        notes: None,
    };
    assert!(b.check(&ping(), &s).is_ok());
    b.clock.advance(Duration::from_millis(250));
    let msg = request("tools/list", &json!({}));
    s.pending(Direction::ClientToServer)
        .insert_with_token(RequestId::Number(1), Method::ToolsList, None)
        .unwrap();
    let refusal = b.limits.check(&msg, &cx).unwrap_err();
    let Verdict::Respond(answer) = refusal.verdict(&msg, cx) else {
        panic!("a request is answered");
    };
    assert!(
        s.pending(Direction::ClientToServer).is_empty(),
        "no longer awaits an answer"
    );
    let body: Value = serde_json::from_slice(answer.raw()).unwrap();
    assert_eq!(body["id"], 1);
    assert_eq!(body["error"]["code"], -32092);
    let data = &body["error"]["data"];
    assert_eq!(data["shadowcat"], "rate_limited");
    assert_eq!(data["retryAfterMs"], 750);
    assert_eq!(
        (data["limit"].as_str(), data["per"].as_str()),
        (Some("session"), Some("session"))
    );
    assert_eq!(
        (data["rate"].as_str(), data["burst"].as_u64()),
        (Some("1/s"), Some(1))
    );
    assert_eq!(Refusal::from_answer(&answer), Some(refusal.clone()));

    let note = Message::parse(
        br#"{"jsonrpc":"2.0","method":"notifications/progress"}"#
            .to_vec()
            .into(),
    )
    .unwrap();
    assert!(matches!(refusal.verdict(&note, cx), Verdict::Drop));

    let headers = refusal.headers();
    assert_eq!(headers["retry-after"], "1");
    assert_eq!(headers["ratelimit-policy"], "\"session\";q=1;w=1");
    assert_eq!(headers["ratelimit"], "\"session\";r=0;t=1");
}

#[test]
fn other_errors_are_not_refusals() {
    let blocked = Message::error_response(
        Some(&RequestId::Number(1)),
        &ProxyError::new(ErrorCode::BlockedByRule, "rate_limited in the text"),
    );
    assert_eq!(Refusal::from_answer(&blocked), None);
    assert_eq!(Refusal::from_answer(&ping()), None);
}

#[test]
fn a_flood_of_distinct_keys_stays_bounded_and_the_flooder_stays_limited() {
    let b = limits(&["client=1/h,burst=1,keys=1000"]);
    let s = session();
    let hammer = Client::Address("198.51.100.7".parse().unwrap());
    assert!(b.check_as(&ping(), &s, hammer).is_ok());
    // (1,000,000 keys, with the memory they take, are in benches/ratelimit.rs.)
    for i in 0..200_000_u32 {
        let ip = Client::Address(IpAddr::V4(Ipv4Addr::from(i)));
        b.check_as(&ping(), &s, ip).unwrap();
        if i % 100 == 0 {
            // Used often, so never the least recently used: it stays refused throughout.
            assert!(b.check_as(&ping(), &s, hammer).is_err(), "at {i}");
        }
    }
    let keys = b.limits.keys("client").unwrap();
    assert!(
        keys <= 1008,
        "{keys} keys held (at most 1000, rounded up per shard)"
    );
    assert!(keys >= 900, "{keys}: the store is used up to its bound");
    assert!(b.metrics.rate_limit_evictions("client").get() >= 198_000);
    assert_eq!(
        b.metrics.rate_limit_keys("client").get(),
        i64::try_from(keys).unwrap()
    );
}

#[test]
fn keys_whose_time_has_passed_are_forgotten_as_new_ones_come() {
    let b = limits(&["client=1/s,burst=1"]);
    let s = session();
    let ip = |i: u32| Client::Address(IpAddr::V4(Ipv4Addr::from(i)));
    for i in 0..100 {
        b.check_as(&ping(), &s, ip(i)).unwrap();
    }
    assert_eq!(b.limits.keys("client"), Some(100));
    b.clock.advance(Duration::from_secs(2));
    for i in 1000..2000 {
        b.check_as(&ping(), &s, ip(i)).unwrap();
    }
    assert_eq!(
        b.limits.keys("client"),
        Some(1000),
        "the 100 stale keys are gone"
    );
    assert_eq!(
        b.metrics.rate_limit_evictions("client").get(),
        0,
        "none before its time"
    );
    // Pruning keeps a key until its time is an emission interval past (governor's margin).
    b.clock.advance(Duration::from_secs(2));
    b.limits.prune();
    assert_eq!(b.limits.keys("client"), Some(1000));
    b.clock.advance(Duration::from_secs(1));
    b.limits.prune();
    assert_eq!(b.limits.keys("client"), Some(0));
    assert_eq!(b.metrics.rate_limit_keys("client").get(), 0);
}

#[test]
fn the_docs_examples_are_what_the_code_reads_and_writes() {
    let docs = include_str!("../../docs/rate-limits.md");
    let mut limits = 0;
    for part in docs.split("--rate-limit ").skip(1) {
        // In prose, a limit ends with its code span.
        let text = part
            .split_whitespace()
            .next()
            .unwrap()
            .trim_end_matches('`');
        if text == "LIMIT" {
            continue;
        }
        LimitSpec::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
        limits += 1;
    }
    assert!(limits >= 6, "{limits}");
    let block = |lang: &str| {
        let start = format!("```{lang}\n");
        docs.split(start.as_str())
            .nth(1)
            .unwrap()
            .split("```")
            .next()
            .unwrap()
    };
    let toml_block = block("toml");
    let file: toml::Table = toml::from_str(toml_block).unwrap();
    for text in file["rate_limit"].as_array().unwrap() {
        LimitSpec::parse(text.as_str().unwrap()).unwrap();
    }
    let bad = LimitSpec::parse("client=10").unwrap_err();
    assert!(
        docs.contains(&format!("`invalid --rate-limit: {bad}`")),
        "{bad}"
    );
    // The refusal shown is the one sent.
    let refusal = Refusal {
        limit: "client".into(),
        per: Per::Client,
        rate: Rate::parse("10/s").unwrap(),
        burst: 20,
        retry_after: Duration::from_millis(87),
    };
    let json_block = block("json");
    let shown: Value = serde_json::from_str(json_block).unwrap();
    let sent: Value =
        serde_json::from_slice(&refusal.error().to_response(Some(&RequestId::Number(7)))).unwrap();
    assert_eq!(shown, sent);
    let headers = block("text").to_ascii_lowercase();
    let refusal = Refusal {
        retry_after: Duration::from_millis(870),
        ..refusal
    };
    for (name, value) in &refusal.headers() {
        let line = format!("{}: {}", name.as_str(), value.to_str().unwrap());
        assert!(
            headers.contains(&line.to_ascii_lowercase()),
            "{line} not in the docs"
        );
    }
}
