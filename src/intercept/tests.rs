#![allow(clippy::needless_pass_by_value)]

use std::io::Write as _;

use serde_json::{Value, json};

use super::*;
use crate::protocol::{Direction, RequestId};
use crate::session::{Session, TransportKind};
use crate::tape::Wire;

fn rules(yaml: &str) -> Rules {
    let mut file = tempfile::NamedTempFile::with_suffix(".yaml").unwrap();
    file.write_all(yaml.as_bytes()).unwrap();
    Rules::load(file.path(), None).unwrap()
}

fn msg(value: &Value) -> Message {
    Message::parse(value.to_string().into()).unwrap()
}

async fn run(
    rules: &Rules,
    session: &Session,
    direction: Direction,
    m: &Value,
    answers: Option<Method>,
) -> (Verdict, Metrics) {
    run_raw(rules, session, direction, &m.to_string(), answers).await
}

/// [`run`] for a message written out (one `json!` cannot write, e.g. with a member twice).
async fn run_raw(
    rules: &Rules,
    session: &Session,
    direction: Direction,
    raw: &str,
    answers: Option<Method>,
) -> (Verdict, Metrics) {
    let client = crate::stage::Client::Local;
    run_from(rules, session, direction, client, raw, answers).await
}

/// [`run_raw`] with the message sent by `client`.
async fn run_from(
    rules: &Rules,
    session: &Session,
    direction: Direction,
    client: crate::stage::Client<'_>,
    raw: &str,
    answers: Option<Method>,
) -> (Verdict, Metrics) {
    let metrics = Metrics::default();
    let cx = Context {
        direction,
        session,
        transport: &Wire::NONE,
        client,
        header_trace: None,
        notes: None,
    };
    let m = Message::parse(raw.as_bytes().to_vec().into()).unwrap();
    let verdict = rules.process(m, cx, answers.as_ref(), &metrics).await;
    (verdict, metrics)
}

fn json_of(verdict: &Verdict) -> (&'static str, Value) {
    let (kind, m) = match verdict {
        Verdict::Forward(m) => ("forward", m),
        Verdict::Respond(m) => ("respond", m),
        Verdict::Drop => return ("drop", Value::Null),
    };
    (kind, serde_json::from_slice(m.raw()).unwrap())
}

fn call(id: i64, tool: &str, arguments: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
           "params": {"name": tool, "arguments": arguments}})
}

#[test]
fn errors_name_the_line_and_column() {
    let cases = [
        (
            "version: 1\nrules:\n  - name: a\n    block: {}\n    bogus: 1\n",
            (5, 5),
            "unknown field `bogus`",
        ),
        (
            "version: 1\nrules:\n  - name: a\n    match:\n      params:\n        - path: '$.x['\n    block: {}\n",
            (6, 17),
            "\"$.x[\" is not a JSONPath (RFC 9535), at character 3",
        ),
        (
            "version: 1\nrules:\n  - name: a\n    match: {method: 'a['}\n    block: {}\n",
            (4, 21),
            "\"a[\" is not a valid glob",
        ),
        (
            "version: 1\nrules:\n  - name: a\n",
            (3, 5),
            "rule \"a\" has no action",
        ),
        (
            "version: 1\nrules:\n  - name: a\n    block: {}\n    log: info\n",
            (3, 5),
            "rule \"a\" has 2 actions",
        ),
        (
            "version: 1\nrules:\n  - name: a\n    hide: true\n",
            (3, 5),
            "hide needs one of match.tool",
        ),
        ("version: 2\n", (1, 10), "version 2 is not supported"),
        (
            "version: 1\nrules:\n  - name: a\n    log: info\n  - name: a\n    block: {}\n",
            (5, 11),
            "two rules are named \"a\"",
        ),
        ("version: 1\nrules: [\n", (2, 8), "unclosed bracket"),
        (
            r#"{"version": 1, "rules": [{"name": "a", "blok": {}}]}"#,
            (1, 45),
            "unknown field `blok`",
        ),
    ];
    for (text, (line, column), want) in cases {
        let Err((l, c, message)) = RuleSet::parse(text, text.starts_with('{')) else {
            panic!("{text:?} loaded");
        };
        assert_eq!((l, c), (line, column), "{text:?}: {message}");
        assert!(message.contains(want), "{text:?}: {message}");
        assert!(
            !message.contains("at line"),
            "location said twice: {message}"
        );
    }
}

#[tokio::test]
async fn a_blocked_request_is_answered_with_the_configured_error_and_forgotten() {
    let rules = rules(
        "version: 1\nrules:\n  - name: no-deletes\n    match: {tool: 'delete_*'}\n    block: {code: -32001, message: deleting is off, data: {ticket: 7}}\n",
    );
    let session = Session::standalone(TransportKind::Stdio, 10);
    let id = RequestId::Number(1);
    session
        .pending(Direction::ClientToServer)
        .insert_with_token(id.clone(), Method::ToolsCall, None)
        .unwrap();
    let (verdict, metrics) = run(
        &rules,
        &session,
        Direction::ClientToServer,
        &call(1, "delete_file", json!({})),
        None,
    )
    .await;
    let (kind, answer) = json_of(&verdict);
    assert_eq!(kind, "respond");
    assert_eq!(answer["id"], 1);
    assert_eq!(answer["error"]["code"], -32001);
    assert_eq!(answer["error"]["message"], "deleting is off");
    assert_eq!(answer["error"]["data"]["rule"], "no-deletes");
    assert_eq!(answer["error"]["data"]["ticket"], 7);
    assert_eq!(answer["error"]["data"]["shadowcat"], "blocked_by_rule");
    assert!(!session.pending(Direction::ClientToServer).contains(&id));
    assert_eq!(metrics.rule_count("no-deletes", "block", "enforce"), 1);
    // Another tool passes untouched, byte for byte.
    let other = call(2, "read_file", json!({}));
    let (verdict, _) = run(&rules, &session, Direction::ClientToServer, &other, None).await;
    match verdict {
        Verdict::Forward(m) => assert_eq!(m.raw().as_ref(), other.to_string().as_bytes()),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn mock_modify_and_priorities() {
    let rules = rules(
        r#"
version: 1
rules:
  - name: limit
    match: {tool: search}
    modify:
      set: {"$.arguments.limit": 10}
      remove: ["$.arguments.debug"]
      merge: {arguments: {source: proxy}}
  - name: weather-first-in-the-file
    match: {tool: weather}
    block: {}
  - name: weather
    priority: 5
    match: {tool: weather}
    mock: {result: {content: [{type: text, text: sunny}]}}
"#,
    );
    let session = Session::standalone(TransportKind::Stdio, 10);
    let (verdict, _) = run(
        &rules,
        &session,
        Direction::ClientToServer,
        &call(3, "search", json!({"q": "x", "limit": 500, "debug": true})),
        None,
    )
    .await;
    let (kind, sent) = json_of(&verdict);
    assert_eq!(kind, "forward");
    assert_eq!(
        sent["params"]["arguments"],
        json!({"q": "x", "limit": 10, "source": "proxy"})
    );
    let (verdict, _) = run(
        &rules,
        &session,
        Direction::ClientToServer,
        &call(4, "weather", json!({})),
        None,
    )
    .await;
    let (kind, answer) = json_of(&verdict);
    assert_eq!(kind, "respond", "the higher priority mock wins: {answer}");
    assert_eq!(answer["id"], 4);
    assert_eq!(answer["result"]["content"][0]["text"], "sunny");
}

#[tokio::test]
async fn hidden_tools_leave_lists_and_are_unknown_when_called() {
    let rules = rules(
        "version: 1\nrules:\n  - name: hide-admin\n    match: {tool: 'admin_*'}\n    hide: true\n",
    );
    let session = Session::standalone(TransportKind::Stdio, 10);
    let list = json!({"jsonrpc": "2.0", "id": 1, "result": {"tools": [
        {"name": "echo"}, {"name": "admin_reset"}, {"name": "admin_drop"}]}});
    let (verdict, _) = run(
        &rules,
        &session,
        Direction::ServerToClient,
        &list,
        Some(Method::from_name("tools/list")),
    )
    .await;
    let (kind, sent) = json_of(&verdict);
    assert_eq!(kind, "forward");
    assert_eq!(sent["result"]["tools"], json!([{"name": "echo"}]));
    // The same list answering another method is left alone.
    let (verdict, _) = run(
        &rules,
        &session,
        Direction::ServerToClient,
        &list,
        Some(Method::from_name("prompts/list")),
    )
    .await;
    assert_eq!(
        json_of(&verdict).1["result"]["tools"]
            .as_array()
            .unwrap()
            .len(),
        3
    );
    let (verdict, _) = run(
        &rules,
        &session,
        Direction::ClientToServer,
        &call(2, "admin_reset", json!({})),
        None,
    )
    .await;
    let (kind, answer) = json_of(&verdict);
    assert_eq!(kind, "respond");
    assert_eq!(answer["error"]["code"], -32602);
    assert_eq!(answer["error"]["message"], "Unknown tool: admin_reset");
}

#[tokio::test]
async fn audit_mode_changes_nothing_and_counts() {
    let mut file = tempfile::NamedTempFile::with_suffix(".yaml").unwrap();
    file.write_all(
        b"version: 1\nrules:\n  - name: no-deletes\n    match: {tool: 'delete_*'}\n    block: {}\n  - name: tag-it\n    tag: seen\n",
    )
    .unwrap();
    let rules = Rules::load(file.path(), Some(Mode::Audit)).unwrap();
    let session = Session::standalone(TransportKind::Stdio, 10);
    let request = call(1, "delete_file", json!({}));
    let (verdict, metrics) = run(&rules, &session, Direction::ClientToServer, &request, None).await;
    match verdict {
        Verdict::Forward(m) => assert_eq!(m.raw().as_ref(), request.to_string().as_bytes()),
        other => panic!("audit changed the message: {other:?}"),
    }
    assert_eq!(metrics.rule_count("no-deletes", "block", "audit"), 1);
    assert_eq!(metrics.rule_count("no-deletes", "block", "enforce"), 0);
    assert_eq!(metrics.rule_count("tag-it", "tag", "audit"), 1);
    assert!(session.metadata().tags.is_empty(), "audit must not tag");
}

#[tokio::test]
async fn session_conditions_pick_the_session() {
    let rules = rules(
        "version: 1\nrules:\n  - name: beta\n    match: {session: {client: 'beta-*', transport: stdio}}\n    tag: [beta, watched]\n",
    );
    let beta = Session::standalone(TransportKind::Stdio, 10);
    beta.update_metadata(|m| {
        m.client_info = Some(crate::session::Declared::from_value(
            &json!({"name": "beta-client"}),
        ));
    });
    let other = Session::standalone(TransportKind::Stdio, 10);
    other.update_metadata(|m| {
        m.client_info = Some(crate::session::Declared::from_value(
            &json!({"name": "stable"}),
        ));
    });
    let ping = json!({"jsonrpc": "2.0", "id": 1, "method": "ping"});
    run(&rules, &beta, Direction::ClientToServer, &ping, None).await;
    run(&rules, &other, Direction::ClientToServer, &ping, None).await;
    assert!(beta.metadata().tags.contains("watched"));
    assert!(other.metadata().tags.is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_delay_holds_the_message() {
    let rules = rules(
        "version: 1\nrules:\n  - name: slow\n    match: {method: 'tools/*'}\n    delay: 250ms\n",
    );
    let session = Session::standalone(TransportKind::Stdio, 10);
    let start = tokio::time::Instant::now();
    let (verdict, _) = run(
        &rules,
        &session,
        Direction::ClientToServer,
        &call(1, "x", json!({})),
        None,
    )
    .await;
    assert_eq!(json_of(&verdict).0, "forward");
    assert_eq!(start.elapsed(), Duration::from_millis(250));
}

#[tokio::test(start_paused = true)]
async fn delays_add_up_and_a_block_after_a_delay_still_waits() {
    let rules = rules(
        "version: 1\nrules:\n  - name: slow\n    delay: 250ms\n  - name: slower\n    delay: 100ms\n  - name: stop\n    match: {tool: stop}\n    block: {}\n",
    );
    let session = Session::standalone(TransportKind::Stdio, 10);
    for (tool, outcome) in [("go", "forward"), ("stop", "respond")] {
        let start = tokio::time::Instant::now();
        let (verdict, _) = run(
            &rules,
            &session,
            Direction::ClientToServer,
            &call(1, tool, json!({})),
            None,
        )
        .await;
        assert_eq!(json_of(&verdict).0, outcome);
        assert_eq!(start.elapsed(), Duration::from_millis(350), "{tool}");
    }
}

#[tokio::test]
async fn a_modify_that_changes_nothing_does_not_act() {
    let rules =
        rules("version: 1\nrules:\n  - name: cap\n    modify: {remove: ['$.arguments.limit']}\n");
    let session = Session::standalone(TransportKind::Stdio, 10);
    let m = call(1, "search", json!({"q": "x"}));
    let (verdict, metrics) = run(&rules, &session, Direction::ClientToServer, &m, None).await;
    assert_eq!(json_of(&verdict), ("forward", m));
    assert_eq!(metrics.rule_count("cap", "modify", "enforce"), 0);
    let m = call(2, "search", json!({"q": "x", "limit": 5}));
    let (verdict, metrics) = run(&rules, &session, Direction::ClientToServer, &m, None).await;
    assert_eq!(
        json_of(&verdict).1["params"]["arguments"],
        json!({"q": "x"})
    );
    assert_eq!(metrics.rule_count("cap", "modify", "enforce"), 1);
}

#[test]
fn a_bad_reload_keeps_the_running_rules() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rules.yaml");
    std::fs::write(&path, "version: 1\nrules:\n  - name: a\n    log: info\n").unwrap();
    let rules = Rules::load(&path, None).unwrap();
    assert_eq!(rules.len(), 1);
    std::fs::write(&path, "version: 1\nrules:\n  - name: a\n    nope: 1\n").unwrap();
    let err = rules.reload().unwrap_err().to_string();
    assert!(err.ends_with("rules.yaml:4:5: unknown field `nope`, expected one of name, priority, mode, match, block, mock, modify, delay, delay_between, tag, log, hide, rate_limit, require_scope"), "{err}");
    assert_eq!(rules.len(), 1);
    std::fs::write(&path, "version: 1\nrules: []\n").unwrap();
    assert!(rules.reload().unwrap());
    assert!(rules.is_empty());
    assert!(
        !rules.reload().unwrap(),
        "the same text again changes nothing"
    );
}

#[test]
fn every_example_in_the_docs_loads() {
    let docs = include_str!("../../docs/rules.md");
    let mut examples = 0;
    for block in docs.split("```yaml\n").skip(1) {
        let text = block.split("```").next().unwrap();
        if let Err(e) = RuleSet::parse(text, false) {
            panic!("docs/rules.md example does not load: {e:?}\n{text}");
        }
        examples += 1;
    }
    assert!(examples >= 9, "{examples}");
}

#[test]
fn plain_paths_select_what_the_full_query_selects() {
    let values = [
        json!({"arguments": {"limit": 5, "a b": [1, {"x": 2}], "0": "zero"}, "items": [10, 20]}),
        json!({"arguments": [1, 2, 3], "items": {"0": "not an index"}}),
        json!([{"arguments": null}]),
        json!("text"),
    ];
    let cases = [
        ("$", true),
        ("$.arguments", true),
        ("$.arguments.limit", true),
        ("$['arguments']['a b'][1].x", true),
        ("$.items[0]", true),
        ("$.items[1]", true),
        ("$.arguments['0']", true),
        ("$[0].arguments", true),
        ("$.items[7]", true),
        ("$.arguments.*", false),
        ("$..limit", false),
        ("$.items[-1]", false),
        ("$.items[0:1]", false),
        ("$['a\\'b']", false),
        ("$.items[?@ > 10]", false),
    ];
    for (text, plain) in cases {
        let path = matcher::Path::new(text).unwrap();
        assert_eq!(path.is_plain(), plain, "{text}");
        for value in &values {
            let fast: Vec<Value> =
                path.select(value, |nodes| nodes.iter().map(|n| (*n).clone()).collect());
            let full: Vec<Value> = path.path.query(value).all().into_iter().cloned().collect();
            assert_eq!(fast, full, "{text} over {value}");
        }
    }
}

#[tokio::test]
async fn the_rule_index_is_bounded_and_never_hides_a_rule() {
    let rules = rules(
        "version: 1\nrules:\n  - name: odd\n    match: {method: 'x/*', any: [{direction: c2s}, {kind: response}]}\n    block: {}\n  - name: hide\n    match: {tool: secret}\n    hide: true\n",
    );
    let session = Session::standalone(TransportKind::Stdio, 10_000);
    // A peer inventing method names: every one is still judged, and the index stays bounded.
    for i in 0..1000 {
        let m = json!({"jsonrpc": "2.0", "id": i, "method": format!("x/{i}")});
        let (verdict, _) = run(&rules, &session, Direction::ClientToServer, &m, None).await;
        assert_eq!(json_of(&verdict).0, "respond", "x/{i}");
        let m = json!({"jsonrpc": "2.0", "id": i, "method": format!("y/{i}")});
        let (verdict, _) = run(&rules, &session, Direction::ClientToServer, &m, None).await;
        assert_eq!(json_of(&verdict).0, "forward", "y/{i}");
    }
    assert!(rules.current.load().index.methods() <= 256);
    // The same method the other way is a different candidate list: `any` decides.
    let m = json!({"jsonrpc": "2.0", "id": 1, "method": "x/1"});
    let (verdict, _) = run(&rules, &session, Direction::ServerToClient, &m, None).await;
    assert_eq!(json_of(&verdict).0, "forward");
    // `hide` applies to the calls and list answers of its kind only.
    let (verdict, _) = run(
        &rules,
        &session,
        Direction::ClientToServer,
        &call(5, "secret", json!({})),
        None,
    )
    .await;
    assert_eq!(json_of(&verdict).1["error"]["code"], -32602);
    let list = json!({"jsonrpc": "2.0", "id": 6, "result": {"tools": [{"name": "secret"}, {"name": "open"}]}});
    let (verdict, _) = run(
        &rules,
        &session,
        Direction::ServerToClient,
        &list,
        Some(Method::from_name("tools/list")),
    )
    .await;
    assert_eq!(
        json_of(&verdict).1["result"]["tools"],
        json!([{"name": "open"}])
    );
}

#[tokio::test]
async fn a_tool_named_twice_is_judged_by_the_name_the_server_will_read() {
    let rules = rules(
        "version: 1\nrules:\n  - name: no-deletes\n    match: {tool: 'delete_*'}\n    block: {}\n",
    );
    let session = Session::standalone(TransportKind::Stdio, 10);
    let sneaky = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","name":"delete_all"}}"#;
    let (verdict, _) = run_raw(&rules, &session, Direction::ClientToServer, sneaky, None).await;
    assert_eq!(json_of(&verdict).0, "respond");
}

#[test]
fn globs_in_their_short_forms_match_as_globset_does() {
    let names = [
        "admin_reset",
        "admin_",
        "admin",
        "x_admin_reset",
        "reset_admin",
        "a/b",
        "",
        "*",
    ];
    for text in [
        "admin_*",
        "*_admin",
        "*",
        "**",
        "admin_**",
        "*admin*",
        "a?min_*",
        "admin_[rs]*",
        "{a,b}*",
        "\\*x*",
    ] {
        let ours = matcher::Glob::new(text).unwrap();
        let theirs = globset::GlobBuilder::new(text)
            .literal_separator(false)
            .build()
            .unwrap()
            .compile_matcher();
        for name in names {
            assert_eq!(
                ours.is_match(name),
                theirs.is_match(name),
                "{text} vs {name}"
            );
        }
    }
}

#[tokio::test]
async fn the_name_index_leaves_out_only_rules_that_cannot_match() {
    let rules = rules(
        "version: 1\nrules:\n  - name: rename\n    priority: 10\n    match: {tool: old_search}\n    modify: {set: {'$.name': search}}\n  - name: no-admin\n    match: {tool: 'admin_*'}\n    block: {}\n  - name: no-search\n    match: {tool: search}\n    block: {message: renamed and blocked}\n  - name: no-prompt\n    match: {prompt: search}\n    block: {}\n",
    );
    let session = Session::standalone(TransportKind::Stdio, 10);
    let outcome = |tool: &str| {
        let m = call(1, tool, json!({}));
        let rules = &rules;
        let session = &session;
        async move {
            let (verdict, _) = run(rules, session, Direction::ClientToServer, &m, None).await;
            json_of(&verdict)
        }
    };
    assert_eq!(outcome("admin_reset").await.0, "respond");
    assert_eq!(outcome("echo").await.0, "forward");
    assert_eq!(
        outcome("search").await.1["error"]["message"],
        "renamed and blocked"
    );
    // The filter itself: for a call of `echo`, every rule on a tool name is left out.
    let loaded = rules.current.load();
    let echo = msg(&call(9, "echo", json!({})));
    let mut s = Subject::new(&echo, Direction::ClientToServer, &session, None);
    let candidates = loaded.index.candidates(
        &loaded.set.rules,
        Direction::ClientToServer,
        Kind::Request,
        echo.method(),
    );
    assert_eq!(
        candidates.len(),
        3,
        "the prompt rule is not a candidate for a tool call"
    );
    let names = loaded.index.names(&mut s, &candidates);
    assert!(candidates.iter().all(|&i| names.excludes(i)));
    let admin = msg(&call(9, "admin_x", json!({})));
    let mut s = Subject::new(&admin, Direction::ClientToServer, &session, None);
    let names = loaded.index.names(&mut s, &candidates);
    let kept: Vec<&str> = candidates
        .iter()
        .filter(|&&i| !names.excludes(i))
        .map(|&i| loaded.set.rules[i as usize].name.as_str())
        .collect();
    assert_eq!(kept, ["no-admin"]);
    // A later rule sees the name an earlier rule gave the call.
    assert_eq!(
        outcome("old_search").await.1["error"]["message"],
        "renamed and blocked"
    );
}

/// One documented condition, and a message it holds for and one it does not.
struct ConditionRow {
    what: &'static str,
    /// The rule's `match`, as YAML flow.
    matching: &'static str,
    holds: Value,
    fails: Value,
    /// For responses: the method of the request they answer.
    answers: Option<&'static str>,
}

fn response(id: i64, result: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "result": result})
}

/// Every documented condition on the message (docs/rules.md, Matching): with a `block` rule on
/// it, a message it holds for is blocked and one it does not hold for goes on untouched.
#[tokio::test]
#[allow(clippy::too_many_lines)] // One row per documented condition.
async fn every_documented_message_condition_holds_and_fails_as_documented() {
    let rows = [
        ConditionRow {
            what: "matches",
            matching: r#"{tool: t, params: [{path: "$.arguments.path", matches: "^/etc/"}]}"#,
            holds: call(1, "t", json!({"path": "/etc/passwd"})),
            fails: call(1, "t", json!({"path": "/home/etc/x"})),
            answers: None,
        },
        ConditionRow {
            what: "exists: false",
            matching: r#"{params: [{path: "$.arguments.length", exists: false}]}"#,
            holds: call(1, "t", json!({"path": "x"})),
            fails: call(1, "t", json!({"length": 3})),
            answers: None,
        },
        ConditionRow {
            what: "path only",
            matching: r#"{params: [{path: "$.arguments.length"}]}"#,
            holds: call(1, "t", json!({"length": null})),
            fails: call(1, "t", json!({})),
            answers: None,
        },
        ConditionRow {
            what: "equals",
            matching: r#"{params: [{path: "$.arguments.n", equals: {a: [1]}}]}"#,
            holds: call(1, "t", json!({"n": {"a": [1]}})),
            fails: call(1, "t", json!({"n": {"a": [2]}})),
            answers: None,
        },
        ConditionRow {
            what: "not",
            matching: "{kind: request, not: {tool: safe}}",
            holds: call(1, "danger", json!({})),
            fails: call(1, "safe", json!({})),
            answers: None,
        },
        ConditionRow {
            what: "all",
            matching: "{all: [{tool: 'a*'}, {tool: '*z'}]}",
            holds: call(1, "abz", json!({})),
            fails: call(1, "abc", json!({})),
            answers: None,
        },
        ConditionRow {
            what: "any",
            matching: "{any: [{tool: x}, {tool: y}]}",
            holds: call(1, "y", json!({})),
            fails: call(1, "z", json!({})),
            answers: None,
        },
        ConditionRow {
            what: "result",
            matching: r#"{kind: response, method: tools/call, result: [{path: "$.isError", equals: true}]}"#,
            holds: response(1, json!({"content": [], "isError": true})),
            fails: response(1, json!({"content": [], "isError": false})),
            answers: Some("tools/call"),
        },
        ConditionRow {
            what: "method of the answered request",
            matching: "{kind: response, method: tools/list}",
            holds: response(1, json!({"tools": []})),
            fails: response(1, json!({"tools": []})),
            answers: Some("tools/list"),
        },
        ConditionRow {
            what: "prompt",
            matching: "{prompt: 'secret_*'}",
            holds: json!({"jsonrpc": "2.0", "id": 1, "method": "prompts/get", "params": {"name": "secret_plan"}}),
            fails: json!({"jsonrpc": "2.0", "id": 1, "method": "prompts/get", "params": {"name": "plan"}}),
            answers: None,
        },
        ConditionRow {
            what: "resource",
            matching: "{resource: 'file:///etc/*'}",
            holds: json!({"jsonrpc": "2.0", "id": 1, "method": "resources/read", "params": {"uri": "file:///etc/passwd"}}),
            fails: json!({"jsonrpc": "2.0", "id": 1, "method": "resources/read", "params": {"uri": "file:///tmp/x"}}),
            answers: None,
        },
    ];
    for row in rows {
        let rules = rules(&format!(
            "version: 1\nrules:\n  - name: r\n    match: {}\n    block: {{}}\n",
            row.matching
        ));
        let session = Session::standalone(TransportKind::Stdio, 10);
        let direction = if row.answers.is_some() {
            Direction::ServerToClient
        } else {
            Direction::ClientToServer
        };
        let answers = row.answers.map(Method::from_name);
        let (verdict, _) = run(&rules, &session, direction, &row.holds, answers.clone()).await;
        let (kind, out) = json_of(&verdict);
        let blocked = match row.answers {
            // A blocked response reaches its requester as the error instead.
            Some(_) => kind == "forward" && out["error"]["code"] == -32091,
            None => kind == "respond" && out["error"]["code"] == -32091,
        };
        assert!(
            blocked,
            "{}: should hold for {}: {kind} {out}",
            row.what, row.holds
        );
        if row.what == "method of the answered request" {
            // The same response answering another method.
            let other = Some(Method::from_name("prompts/list"));
            let (verdict, _) = run(&rules, &session, direction, &row.fails, other).await;
            assert_eq!(
                json_of(&verdict),
                ("forward", row.fails.clone()),
                "{}",
                row.what
            );
            continue;
        }
        let (verdict, _) = run(&rules, &session, direction, &row.fails, answers).await;
        assert_eq!(
            json_of(&verdict),
            ("forward", row.fails.clone()),
            "{}: should not hold",
            row.what
        );
    }
}

/// Every documented session condition (docs/rules.md, Session conditions), on one session whose
/// frames, age, protocol and client are set by the test.
#[tokio::test(start_paused = true)]
async fn every_documented_session_condition_holds_and_fails_as_documented() {
    let session = Session::standalone(TransportKind::Http, 10);
    for _ in 0..3 {
        session.record_frame(Direction::ClientToServer);
    }
    session.update_metadata(|m| {
        m.protocol_version = Some("2025-06-18".into());
        m.tags.insert("beta".into());
    });
    tokio::time::advance(Duration::from_secs(10)).await;
    let rows = [
        ("min_frames: 3", true),
        ("min_frames: 4", false),
        ("max_frames: 3", true),
        ("max_frames: 2", false),
        ("older_than: 5s", true),
        ("older_than: 20s", false),
        ("younger_than: 20s", true),
        ("younger_than: 5s", false),
        ("protocol: '2025-*'", true),
        ("protocol: '2024-*'", false),
        ("transport: http", true),
        ("transport: stdio", false),
        ("tags: [beta]", true),
        ("tags: [beta, gamma]", false),
    ];
    for (condition, holds) in rows {
        let rules = rules(&format!(
            "version: 1\nrules:\n  - name: r\n    match: {{session: {{{condition}}}}}\n    block: {{}}\n"
        ));
        let (verdict, _) = run(
            &rules,
            &session,
            Direction::ClientToServer,
            &call(1, "t", json!({})),
            None,
        )
        .await;
        let want = if holds { "respond" } else { "forward" };
        assert_eq!(json_of(&verdict).0, want, "{condition}");
    }
}

/// The documented actions not covered above: a blocked notification is dropped, a blocked
/// response becomes the error, `mock: {error}` answers a request with it (and leaves a
/// notification alone).
#[tokio::test]
async fn blocked_notifications_and_responses_and_mocked_errors_behave_as_documented() {
    let session = Session::standalone(TransportKind::Stdio, 10);
    let note =
        json!({"jsonrpc": "2.0", "method": "notifications/message", "params": {"data": "x"}});
    let block_notes = rules(
        "version: 1\nrules:\n  - name: quiet\n    match: {kind: notification}\n    block: {}\n",
    );
    let (verdict, _) = run(
        &block_notes,
        &session,
        Direction::ServerToClient,
        &note,
        None,
    )
    .await;
    assert_eq!(json_of(&verdict).0, "drop");

    let block_answers = rules(
        "version: 1\nrules:\n  - name: no-lists\n    match: {kind: response, method: tools/list}\n    block: {message: nope}\n",
    );
    let (verdict, _) = run(
        &block_answers,
        &session,
        Direction::ServerToClient,
        &response(8, json!({"tools": []})),
        Some(Method::from_name("tools/list")),
    )
    .await;
    let (kind, out) = json_of(&verdict);
    assert_eq!(kind, "forward", "{out}");
    assert_eq!(out["id"], 8);
    assert_eq!(out["error"]["code"], -32091);
    assert_eq!(out["error"]["message"], "nope");
    assert_eq!(out["error"]["data"]["rule"], "no-lists");

    let flaky = rules(
        "version: 1\nrules:\n  - name: flaky\n    match: {method: '*'}\n    mock:\n      error: {code: -32603, message: search is down, data: {retry: true}}\n",
    );
    let (verdict, _) = run(
        &flaky,
        &session,
        Direction::ClientToServer,
        &call(3, "search", json!({})),
        None,
    )
    .await;
    let (kind, out) = json_of(&verdict);
    assert_eq!(kind, "respond");
    assert_eq!(
        out,
        json!({"jsonrpc": "2.0", "id": 3, "error": {"code": -32603, "message": "search is down", "data": {"retry": true}}})
    );
    let (verdict, _) = run(&flaky, &session, Direction::ClientToServer, &note, None).await;
    assert_eq!(
        json_of(&verdict),
        ("forward", note.clone()),
        "notifications are left alone"
    );
}

/// `hide` of a prompt and a resource: their lists are filtered, and a use of one is answered
/// as a server answers for one it does not have.
#[tokio::test]
async fn hidden_prompts_and_resources_leave_lists_and_are_unknown_when_used() {
    let session = Session::standalone(TransportKind::Stdio, 10);
    let hide = rules(
        "version: 1\nrules:\n  - name: p\n    match: {prompt: 'secret_*'}\n    hide: true\n  - name: r\n    match: {resource: 'file:///etc/*'}\n    hide: true\n",
    );
    let lists = [
        (
            "prompts/list",
            json!({"prompts": [{"name": "plan"}, {"name": "secret_plan"}]}),
            json!({"prompts": [{"name": "plan"}]}),
        ),
        (
            "resources/list",
            json!({"resources": [{"uri": "file:///etc/passwd"}, {"uri": "file:///tmp/x"}]}),
            json!({"resources": [{"uri": "file:///tmp/x"}]}),
        ),
        (
            "resources/templates/list",
            json!({"resourceTemplates": [{"uriTemplate": "file:///etc/{name}"}, {"uriTemplate": "file:///tmp/{name}"}]}),
            json!({"resourceTemplates": [{"uriTemplate": "file:///tmp/{name}"}]}),
        ),
    ];
    for (method, listed, shown) in lists {
        let (verdict, _) = run(
            &hide,
            &session,
            Direction::ServerToClient,
            &response(1, listed),
            Some(Method::from_name(method)),
        )
        .await;
        let (kind, out) = json_of(&verdict);
        assert_eq!((kind, &out["result"]), ("forward", &shown), "{method}");
    }
    let get = json!({"jsonrpc": "2.0", "id": 5, "method": "prompts/get", "params": {"name": "secret_plan"}});
    let (verdict, _) = run(&hide, &session, Direction::ClientToServer, &get, None).await;
    let (kind, out) = json_of(&verdict);
    assert_eq!(kind, "respond");
    assert_eq!(out["error"]["code"], -32602);
    assert_eq!(out["error"]["message"], "Unknown prompt: secret_plan");
    for method in [
        "resources/read",
        "resources/subscribe",
        "resources/unsubscribe",
    ] {
        let read = json!({"jsonrpc": "2.0", "id": 6, "method": method, "params": {"uri": "file:///etc/passwd"}});
        let (verdict, _) = run(&hide, &session, Direction::ClientToServer, &read, None).await;
        let (kind, out) = json_of(&verdict);
        assert_eq!(kind, "respond", "{method}");
        assert_eq!(out["error"]["code"], -32002, "{method}");
        assert_eq!(out["error"]["message"], "Resource not found");
        assert_eq!(out["error"]["data"]["uri"], "file:///etc/passwd");
    }
    let visible = json!({"jsonrpc": "2.0", "id": 7, "method": "resources/read", "params": {"uri": "file:///tmp/x"}});
    let (verdict, _) = run(&hide, &session, Direction::ClientToServer, &visible, None).await;
    assert_eq!(json_of(&verdict), ("forward", visible.clone()));
}

/// `delay_between` holds each message for a time drawn between its bounds (paused clock: the
/// time measured is the time slept).
#[tokio::test(start_paused = true)]
async fn delay_between_holds_each_message_within_its_bounds() {
    let rules = rules(
        "version: 1\nrules:\n  - name: jitter\n    match: {kind: request}\n    delay_between: {min: 10ms, max: 90ms}\n",
    );
    let session = Session::standalone(TransportKind::Stdio, 10);
    let mut seen = std::collections::BTreeSet::new();
    for id in 0..40 {
        let started = tokio::time::Instant::now();
        let (verdict, _) = run(
            &rules,
            &session,
            Direction::ClientToServer,
            &call(id, "t", json!({})),
            None,
        )
        .await;
        let held = started.elapsed();
        assert_eq!(json_of(&verdict).0, "forward");
        assert!(
            held >= Duration::from_millis(10) && held <= Duration::from_millis(90),
            "{held:?}"
        );
        seen.insert(held.as_millis());
    }
    assert!(seen.len() > 5, "not drawn: {seen:?}");
}

/// Hot reload sees a file replaced by rename, as editors save (twice: the second rename
/// replaces the file the first one put there).
#[test]
fn rules_reload_when_the_file_is_replaced_by_rename() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rules.yaml");
    let one = "version: 1\nrules:\n  - name: a\n    log: info\n";
    std::fs::write(&path, one).unwrap();
    let rules = Arc::new(Rules::load(&path, None).unwrap());
    rules.watch().unwrap();
    for count in [2usize, 3] {
        let mut text = String::from("version: 1\nrules:\n");
        for i in 0..count {
            text += &["  - name: r", &i.to_string(), "\n    log: info\n"].concat();
        }
        let temporary = dir.path().join(".rules.yaml.swp");
        std::fs::write(&temporary, text).unwrap();
        std::fs::rename(&temporary, &path).unwrap();
        // At most 10 s, looking every 20 ms.
        let mut looks = 0;
        while rules.len() != count {
            looks += 1;
            assert!(looks < 500, "never reloaded {count}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// JSON the envelope forwards as it came but no tree can hold (a number beyond a double's
/// range, an escaped lone surrogate): a rule that needs to read it cannot be decided, so the
/// message is refused (the stage fails closed) instead of let through unread; one that no rule
/// needs to read passes byte for byte.
#[tokio::test]
async fn a_rule_that_cannot_read_the_message_refuses_it() {
    let yaml = r#"version: 1
rules:
  - name: no-secret
    match: {tool: echo, params: [{path: "$.arguments.text", equals: s3cret}]}
    block: {}
  - name: read-result
    match: {result: [{path: "$.x", equals: 1}]}
    block: {}
  - name: read-note
    match: {method: "notifications/*", params: [{path: "$.x", equals: 1}]}
    block: {}
"#;
    let rules = rules(yaml);
    let session = Session::standalone(TransportKind::Stdio, 10);
    let unreadable = [
        (r#"{"text":"s3cret","n":1e999}"#, "number out of range"),
        (
            r#"{"text":"s3cret","n":-12345678901234567890123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890}"#,
            "number out of range",
        ),
        (r#"{"text":"s3cret\ud800"}"#, "hex escape"),
    ];
    for (i, (arguments, why)) in (1..).zip(unreadable) {
        let id = RequestId::Number(i);
        session
            .pending(Direction::ClientToServer)
            .insert_with_token(id.clone(), Method::ToolsCall, None)
            .unwrap();
        let raw = format!(
            r#"{{"jsonrpc":"2.0","id":{i},"method":"tools/call","params":{{"name":"echo","arguments":{arguments}}}}}"#
        );
        let (verdict, _) = run_raw(&rules, &session, Direction::ClientToServer, &raw, None).await;
        let (kind, answer) = json_of(&verdict);
        assert_eq!(kind, "respond", "{arguments}");
        assert_eq!(answer["id"], i);
        assert_eq!(answer["error"]["code"], -32600, "{answer}");
        assert_eq!(answer["error"]["data"]["shadowcat"], "invalid_request");
        assert_eq!(answer["error"]["data"]["rule"], "no-secret");
        let detail = answer["error"]["data"]["detail"].as_str().unwrap();
        assert!(detail.contains(why), "{detail}");
        assert!(!session.pending(Direction::ClientToServer).contains(&id));
    }
    // A name that cannot be read is not passed over by the name index: the rule cannot be
    // decided either.
    let raw = r#"{"jsonrpc":"2.0","id":9,"method":"tools/call","params":{"name":"echo\ud800","arguments":{}}}"#;
    let (verdict, _) = run_raw(&rules, &session, Direction::ClientToServer, raw, None).await;
    assert_eq!(json_of(&verdict).1["error"]["code"], -32600);
    // No rule needs to read a call of another tool: it passes as it came.
    let raw = r#"{"jsonrpc":"2.0","id":10,"method":"tools/call","params":{"name":"add","arguments":{"n":1e999}}}"#;
    match run_raw(&rules, &session, Direction::ClientToServer, raw, None)
        .await
        .0
    {
        Verdict::Forward(m) => assert_eq!(m.raw().as_ref(), raw.as_bytes()),
        other => panic!("{other:?}"),
    }
    // A server's answer becomes -32082 for the client; a notification is dropped.
    let raw = r#"{"jsonrpc":"2.0","id":11,"result":{"x":1e999}}"#;
    let answers = Some(Method::ToolsCall);
    let (verdict, _) = run_raw(&rules, &session, Direction::ServerToClient, raw, answers).await;
    let (kind, answer) = json_of(&verdict);
    assert_eq!(kind, "forward");
    assert_eq!(answer["id"], 11);
    assert_eq!(answer["error"]["code"], -32082, "{answer}");
    assert_eq!(answer["error"]["data"]["rule"], "read-result");
    let raw = r#"{"jsonrpc":"2.0","method":"notifications/progress","params":{"x":1e999}}"#;
    let (verdict, _) = run_raw(&rules, &session, Direction::ServerToClient, raw, None).await;
    assert_eq!(json_of(&verdict).0, "drop");
    // In audit mode the rules only report.
    let mut file = tempfile::NamedTempFile::with_suffix(".yaml").unwrap();
    file.write_all(yaml.as_bytes()).unwrap();
    let audit = Rules::load(file.path(), Some(Mode::Audit)).unwrap();
    let raw = r#"{"jsonrpc":"2.0","id":12,"method":"tools/call","params":{"name":"echo","arguments":{"n":1e999}}}"#;
    match run_raw(&audit, &session, Direction::ClientToServer, raw, None)
        .await
        .0
    {
        Verdict::Forward(m) => assert_eq!(m.raw().as_ref(), raw.as_bytes()),
        other => panic!("audit refused: {other:?}"),
    }
}

/// A `tools/call` of `tool` (for the `rate_limit:` rules below).
fn limited_call(tool: &str) -> Message {
    msg(&call(1, tool, json!({})))
}

/// A rules file with a `rate_limit:` rule, at `path`.
fn write_limit_rules(path: &Path, name: &str, limit: &str) {
    std::fs::write(
        path,
        format!(
            "version: 1\nrules:\n  - name: {name}\n    match: {{method: tools/call, tool: echo}}\n    rate_limit: {limit}\n"
        ),
    )
    .unwrap();
}

async fn through_rules(rules: &Rules, s: &Session, msg: Message) -> Verdict {
    let cx = Context {
        direction: Direction::ClientToServer,
        session: s,
        transport: &Wire::NONE,
        client: crate::stage::Client::Address("192.0.2.9".parse().unwrap()),
        header_trace: None,
        notes: None,
    };
    rules.process(msg, cx, None, &Metrics::default()).await
}

#[tokio::test]
async fn a_rule_limits_what_it_matches_and_keeps_its_state_across_reloads() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rules.yaml");
    write_limit_rules(&path, "echo-calls", "{per: client, rate: 1/h, burst: 2}");
    let rules = Rules::load(&path, None).unwrap();
    let s = Session::standalone(TransportKind::Http, 100);
    for _ in 0..2 {
        assert!(matches!(
            through_rules(&rules, &s, limited_call("echo")).await,
            Verdict::Forward(_)
        ));
    }
    let Verdict::Respond(answer) = through_rules(&rules, &s, limited_call("echo")).await else {
        panic!("the third is refused");
    };
    let refusal = crate::ratelimit::Refusal::from_answer(&answer).expect("a rate_limited answer");
    assert_eq!(
        (refusal.limit.as_str(), refusal.per, refusal.burst),
        ("echo-calls", crate::ratelimit::Per::Client, 2)
    );
    assert!(
        refusal.retry_after > Duration::from_secs(1700),
        "{refusal:?}"
    );
    // What the rule does not match is not counted.
    assert!(matches!(
        through_rules(&rules, &s, limited_call("add")).await,
        Verdict::Forward(_)
    ));
    // A reload that keeps the rule keeps its state; one that changes the limit starts over.
    std::fs::write(
        &path,
        format!("# edited\n{}", std::fs::read_to_string(&path).unwrap()),
    )
    .unwrap();
    assert!(rules.reload().unwrap());
    assert!(matches!(
        through_rules(&rules, &s, limited_call("echo")).await,
        Verdict::Respond(_)
    ));
    write_limit_rules(&path, "echo-calls", "{per: client, rate: 1/h, burst: 3}");
    assert!(rules.reload().unwrap());
    assert!(matches!(
        through_rules(&rules, &s, limited_call("echo")).await,
        Verdict::Forward(_)
    ));
}

#[test]
fn a_rule_limit_is_checked_when_the_file_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rules.yaml");
    for (limit, says) in [
        ("{rate: 10}", "is not a rate"),
        ("{rate: 1/s, burst: 0}", "burst must be at least 1"),
        ("{rate: 1/s, per: everyone}", "unknown variant `everyone`"),
        ("{rate: 1/s, keys: 0}", "keys must be from 1"),
        ("{per: client}", "missing field `rate`"),
    ] {
        write_limit_rules(&path, "r", limit);
        let err = Rules::load(&path, None).unwrap_err().to_string();
        assert!(err.contains(says), "{limit}: {err}");
    }
}

fn principal(subject: &str, scopes: &[&str], claims: Value) -> crate::session::Principal {
    crate::session::Principal {
        id: format!("https://id.example#{subject}"),
        subject: subject.into(),
        issuer: Some("https://id.example".into()),
        scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
        claims: claims
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    }
}

/// [`run`] with the message sent by `caller`.
async fn run_as(
    rules: &Rules,
    session: &Session,
    caller: Option<&crate::session::Principal>,
    m: &Value,
) -> Verdict {
    let client = caller.map_or(crate::stage::Client::Local, crate::stage::Client::Subject);
    let raw = m.to_string();
    run_from(
        rules,
        session,
        Direction::ClientToServer,
        client,
        &raw,
        None,
    )
    .await
    .0
}

#[tokio::test]
async fn subject_scope_and_claim_conditions_match_the_caller() {
    let rules = rules(
        "version: 1\nrules:\n\
         - name: bob may not sample\n  match: {tool: sample, subject: bob}\n  block: {}\n\
         - name: drops need admin\n  match: {tool: drop, not: {scope: [admin, 'files:write']}}\n  block: {}\n\
         - name: acme only\n  match: {tool: 'acme_*', not: {claim: {tenant: acme, groups: 'ops-*'}}}\n  block: {}\n",
    );
    let session = Session::standalone(TransportKind::Http, 10);
    let alice = principal(
        "alice",
        &["admin", "files:write"],
        json!({"tenant": "acme", "groups": ["dev", "ops-eu"]}),
    );
    let bob = principal("bob", &["admin"], json!({"tenant": "acme", "groups": null}));
    let outcome = |verdict: Verdict| json_of(&verdict).0;
    for (who, tool, want) in [
        (Some(&bob), "sample", "respond"),
        (Some(&alice), "sample", "forward"),
        (None, "sample", "forward"),
        (Some(&alice), "drop", "forward"),
        (Some(&bob), "drop", "respond"),
        (None, "drop", "respond"),
        (Some(&alice), "acme_bill", "forward"),
        (Some(&bob), "acme_bill", "respond"),
        (None, "acme_bill", "respond"),
    ] {
        let verdict = run_as(&rules, &session, who, &call(1, tool, json!({}))).await;
        assert_eq!(
            outcome(verdict),
            want,
            "{tool} by {:?}",
            who.map(|p| &p.subject)
        );
    }
}

#[tokio::test]
async fn a_claim_the_gateway_does_not_keep_refuses_what_the_rule_decides() {
    let rules = rules(
        "version: 1\nrules:\n  - name: tenants\n    match: {tool: echo, claim: {tenant: other}}\n    block: {}\n",
    );
    let session = Session::standalone(TransportKind::Http, 10);
    // The token's `tenant` was not kept (no --auth-claim tenant): the rule cannot tell.
    let carol = principal("carol", &[], json!({}));
    let verdict = run_as(&rules, &session, Some(&carol), &call(3, "echo", json!({}))).await;
    let (kind, answer) = json_of(&verdict);
    assert_eq!(kind, "respond");
    assert_eq!(answer["error"]["code"], -32091);
    assert_eq!(answer["error"]["data"]["rule"], "tenants");
    let detail = answer["error"]["data"]["detail"].as_str().unwrap();
    assert!(detail.contains("--auth-claim tenant"), "{detail}");
    // An API key has no claims: the condition simply does not hold.
    let key = crate::session::Principal {
        id: "key:ci".into(),
        subject: "ci".into(),
        issuer: None,
        scopes: vec![],
        claims: std::collections::BTreeMap::new(),
    };
    let verdict = run_as(&rules, &session, Some(&key), &call(4, "echo", json!({}))).await;
    assert_eq!(json_of(&verdict).0, "forward");
}

#[tokio::test]
async fn require_scope_answers_insufficient_scope_naming_what_to_ask_for() {
    let needs_scope = rules(
        "version: 1\nrules:\n  - name: writes\n    match: {tool: 'write_*'}\n    require_scope: ['files:write', audit]\n",
    );
    let session = Session::standalone(TransportKind::Http, 10);
    let reader = principal("dana", &["mcp", "audit"], json!({}));
    let verdict = run_as(
        &needs_scope,
        &session,
        Some(&reader),
        &call(5, "write_file", json!({})),
    )
    .await;
    let (kind, answer) = json_of(&verdict);
    assert_eq!(kind, "respond");
    assert_eq!(answer["id"], 5);
    assert_eq!(answer["error"]["code"], -32095);
    let data = &answer["error"]["data"];
    assert_eq!(data["shadowcat"], "insufficient_scope");
    assert_eq!(data["scope"], "mcp audit files:write");
    assert_eq!(data["missing"], json!(["files:write"]));
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("\"write_file\""),
        "{answer}"
    );
    let writer = principal("erin", &["files:write", "audit"], json!({}));
    let verdict = run_as(
        &needs_scope,
        &session,
        Some(&writer),
        &call(6, "write_file", json!({})),
    )
    .await;
    assert_eq!(json_of(&verdict).0, "forward");
    // Without authentication there is no scope at all.
    let verdict = run_as(
        &needs_scope,
        &session,
        None,
        &call(7, "write_file", json!({})),
    )
    .await;
    assert_eq!(
        json_of(&verdict).1["error"]["data"]["scope"],
        "files:write audit"
    );
    // A notification without the scope is dropped.
    let note = json!({"jsonrpc": "2.0", "method": "notifications/x", "params": {}});
    let rules_all = rules("version: 1\nrules:\n  - name: all\n    require_scope: mcp\n");
    assert_eq!(
        json_of(&run_as(&rules_all, &session, None, &note).await).0,
        "drop"
    );
    assert!(
        RuleSet::parse(
            "version: 1\nrules:\n  - name: a\n    require_scope: []\n",
            false
        )
        .is_err()
    );
    assert!(
        RuleSet::parse(
            "version: 1\nrules:\n  - name: a\n    require_scope: 'a \"b'\n",
            false
        )
        .is_err()
    );
}

#[tokio::test]
async fn a_list_towards_the_client_is_filtered_for_the_sessions_caller() {
    let rules = rules(
        "version: 1\nrules:\n  - name: admin tools\n    match: {tool: 'admin_*', not: {claim: {groups: admins}}}\n    hide: true\n",
    );
    let list = json!({"jsonrpc": "2.0", "id": 1, "result": {"tools": [
        {"name": "echo"}, {"name": "admin_reset"}]}});
    let names = |verdict: &Verdict| {
        json_of(verdict).1["result"]["tools"]
            .as_array()
            .map(|tools| tools.iter().map(|t| t["name"].clone()).collect::<Vec<_>>())
    };
    let session = Session::standalone(TransportKind::Http, 10);
    let (verdict, _) = run(
        &rules,
        &session,
        Direction::ServerToClient,
        &list,
        Some(Method::from_name("tools/list")),
    )
    .await;
    assert_eq!(
        names(&verdict),
        Some(vec![json!("echo")]),
        "no caller: hidden"
    );
    session.set_caller(&Arc::new(principal(
        "alice",
        &[],
        json!({"groups": ["admins"]}),
    )));
    let (verdict, _) = run(
        &rules,
        &session,
        Direction::ServerToClient,
        &list,
        Some(Method::from_name("tools/list")),
    )
    .await;
    assert_eq!(
        names(&verdict),
        Some(vec![json!("echo"), json!("admin_reset")])
    );
    // A server serving several callers at once: its list is no one caller's, so it is refused.
    session.mix_callers();
    let (verdict, _) = run(
        &rules,
        &session,
        Direction::ServerToClient,
        &list,
        Some(Method::from_name("tools/list")),
    )
    .await;
    let (kind, answer) = json_of(&verdict);
    assert_eq!(kind, "forward");
    assert_eq!(answer["error"]["code"], -32091, "{answer}");
}
