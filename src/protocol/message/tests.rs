use super::params::{first_member_str, scan};
use super::*;

fn parse(s: &str) -> Result<Message, ParseError> {
    Message::parse(Bytes::copy_from_slice(s.as_bytes()))
}

#[test]
fn classifies_the_four_kinds() {
    let req = parse(r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo"}}"#)
        .unwrap();
    assert_eq!(req.kind(), Kind::Request);
    assert_eq!(req.id(), Some(&RequestId::Number(1)));
    assert_eq!(req.method(), Some(&Method::ToolsCall));

    let note = parse(r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#).unwrap();
    assert_eq!(note.kind(), Kind::Notification);
    assert_eq!(note.id(), None);

    let resp = parse(r#"{"result":{},"jsonrpc":"2.0","id":"a"}"#).unwrap();
    assert_eq!(resp.kind(), Kind::Response);
    assert_eq!(resp.id(), Some(&RequestId::from("a")));

    let err =
        parse(r#"{"jsonrpc":"2.0","id":null,"error":{"code":-32700,"message":"x"}}"#).unwrap();
    assert_eq!(err.kind(), Kind::Error);
    assert_eq!(err.id(), None);
}

#[test]
fn keeps_the_exact_bytes_and_unknown_fields() {
    let text =
        r#"{ "jsonrpc" : "2.0", "id" : 7, "method":"x/y", "_meta":{"k":[1,2]}, "extra": true }"#;
    let msg = parse(text).unwrap();
    assert_eq!(msg.raw().as_ref(), text.as_bytes());
    assert_eq!(msg.method(), Some(&Method::Other("x/y".into())));
}

#[test]
fn invalid_utf8_anywhere_is_a_parse_error_answered_to_its_id() {
    assert!(parse(r#"{"jsonrpc":"2.0","id":"é","method":"a","params":{"t":"ü"}}"#).is_ok());
    // In a member the envelope skips as well as in one it reads.
    for raw in [
        &b"{\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{},\"x\":\"\xff\"}"[..],
        &b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"a\",\"params\":{\"t\":\"\xff\"}}"[..],
    ] {
        let error = Message::parse(Bytes::from_static(raw)).unwrap_err();
        let answer: serde_json::Value = serde_json::from_slice(error.to_response().raw()).unwrap();
        assert_eq!(answer["error"]["code"], -32700, "{answer}");
    }
    let error = Message::parse(Bytes::from_static(
        b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"a\",\"x\":\"\xff\"}",
    ))
    .unwrap_err();
    assert_eq!(error.id(), Some(&RequestId::Number(1)));
}

#[test]
fn nesting_beyond_the_limit_is_refused_and_up_to_it_becomes_a_tree() {
    let nested = |depth: usize, wrap: &str| {
        let (open, close) = (
            wrap.repeat(depth - 2),
            wrap.replace('[', "]").replace('{', "}"),
        );
        let close = close.repeat(depth - 2);
        format!(r#"{{"jsonrpc":"2.0","id":3,"method":"a","params":{{"k":{open}1{close}}}}}"#)
    };
    let at_limit = parse(&nested(MAX_NESTING, "[")).unwrap();
    let _: serde_json::Value = serde_json::from_slice(at_limit.raw()).unwrap();
    let error = parse(&nested(MAX_NESTING + 1, "[")).unwrap_err();
    assert_eq!(error.id(), Some(&RequestId::Number(3)));
    assert!(error.to_string().contains("nested deeper"), "{error}");
    // Brackets in strings do not count; escaped quotes do not end a string.
    let in_strings = format!(
        r#"{{"jsonrpc":"2.0","id":4,"method":"a","params":{{"s":"\"{}","t":[[1]]}}}}"#,
        "[{".repeat(200)
    );
    assert!(parse(&in_strings).is_ok());
    // Depth is what counts, not the number of brackets.
    let wide = format!(
        r#"{{"jsonrpc":"2.0","id":5,"method":"a","params":{{"a":[{}]}}}}"#,
        vec!["[{}]"; 500].join(",")
    );
    assert!(parse(&wide).is_ok());
    // In a member the envelope skips too.
    let skipped = format!(
        r#"{{"jsonrpc":"2.0","id":6,"method":"a","x":{}1{}}}"#,
        "[".repeat(150),
        "]".repeat(150)
    );
    assert!(parse(&skipped).is_err());
}

#[test]
fn a_batch_is_refused_past_its_limit_before_its_members_are_built() {
    let batch = |n: usize| Bytes::from(format!("[{}]", vec!["{}"; n].join(",")));
    match Message::parse_frame(batch(MAX_BATCH_MESSAGES)).unwrap() {
        Frame::Batch(members) => assert_eq!(members.len(), MAX_BATCH_MESSAGES),
        Frame::Single(_) => panic!("a batch"),
    }
    let error = Message::parse_frame(batch(2_000_000)).unwrap_err();
    assert!(matches!(
        error,
        ParseError::BatchTooLong {
            limit: MAX_BATCH_MESSAGES
        }
    ));
    let answer: serde_json::Value = serde_json::from_slice(error.to_response().raw()).unwrap();
    assert_eq!(answer["error"]["code"], -32600);
    assert_eq!(answer["error"]["data"]["limit"], MAX_BATCH_MESSAGES);
    // Malformed batches are still parse errors.
    assert!(matches!(
        Message::parse_frame(Bytes::from_static(b"[{},")),
        Err(ParseError::Json(_))
    ));
    assert!(matches!(
        Message::parse_frame(Bytes::from_static(b"[{}] x")),
        Err(ParseError::Json(_))
    ));
}

#[test]
fn malformed_json_is_a_parse_error() {
    assert!(matches!(parse("{not json"), Err(ParseError::Json(_))));
    assert!(matches!(parse(""), Err(ParseError::Json(_))));
    assert!(matches!(
        parse(r#"{"jsonrpc":"2.0","id":1,"method":"a"} trailing"#),
        Err(ParseError::Json(_))
    ));
}

#[test]
fn invalid_messages_are_invalid_requests_with_their_id_when_readable() {
    let cases = [
        (
            r#"{"jsonrpc":"1.0","id":4,"method":"a"}"#,
            Some(RequestId::Number(4)),
        ),
        (r#"{"id":5,"method":"a"}"#, Some(RequestId::Number(5))),
        (
            r#"{"jsonrpc":"2.0","id":6,"method":7}"#,
            Some(RequestId::Number(6)),
        ),
        (
            r#"{"jsonrpc":"2.0","id":8,"method":"a","params":3}"#,
            Some(RequestId::Number(8)),
        ),
        (r#"{"jsonrpc":"2.0","id":9}"#, Some(RequestId::Number(9))),
        (
            r#"{"jsonrpc":"2.0","id":10,"result":1,"error":{}}"#,
            Some(RequestId::Number(10)),
        ),
        (r#"{"jsonrpc":"2.0","id":null,"method":"a"}"#, None),
        (
            r#"{"jsonrpc":2.0,"id":11,"method":"a"}"#,
            Some(RequestId::Number(11)),
        ),
        (
            r#"{"jsonrpc":"2.0","id":12,"error":null}"#,
            Some(RequestId::Number(12)),
        ),
        (
            r#"{"jsonrpc":"2.0","id":13,"error":"bad"}"#,
            Some(RequestId::Number(13)),
        ),
        (r#"{"jsonrpc":"2.0","id":1.5,"method":"a"}"#, None),
        (r#"{"jsonrpc":"2.0","result":{}}"#, None),
        (r#"{"jsonrpc":"2.0","id":1,"id":2,"method":"a"}"#, None),
        ("42", None),
        (r#""str""#, None),
    ];
    for (text, id) in cases {
        match parse(text) {
            Err(ParseError::Invalid { id: got, .. }) => assert_eq!(got, id, "{text}"),
            other => panic!("{text}: expected invalid, got {other:?}"),
        }
    }
}

#[test]
fn batches_split_into_members_sharing_the_frame() {
    let text =
        r#"[{"jsonrpc":"2.0","id":1,"method":"ping"}, {"jsonrpc":"2.0","method":"n"}, 3, [1]]"#;
    let Frame::Batch(members) =
        Message::parse_frame(Bytes::copy_from_slice(text.as_bytes())).unwrap()
    else {
        panic!("not a batch")
    };
    assert_eq!(members.len(), 4);
    assert_eq!(
        members[0].as_ref().unwrap().raw().as_ref(),
        br#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#
    );
    assert_eq!(members[1].as_ref().unwrap().kind(), Kind::Notification);
    assert!(matches!(members[2], Err(ParseError::Invalid { .. })));
    assert!(matches!(members[3], Err(ParseError::Invalid { .. })));
    assert!(matches!(
        Message::parse_frame(Bytes::from_static(b" [] ")),
        Err(ParseError::Invalid { .. })
    ));
    assert!(matches!(
        Message::parse_frame(Bytes::from_static(b"[{")),
        Err(ParseError::Json(_))
    ));
}

#[test]
fn reads_the_id_a_cancellation_names() {
    let cancel = parse(r#"{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":"r9","reason":"x"}}"#).unwrap();
    assert_eq!(cancel.cancelled_request_id(), Some(RequestId::from("r9")));
    let other =
        parse(r#"{"jsonrpc":"2.0","method":"notifications/progress","params":{"requestId":1}}"#)
            .unwrap();
    assert_eq!(other.cancelled_request_id(), None);
}

#[test]
fn error_responses_round_trip_through_the_parser() {
    let err = ProxyError::new(ErrorCode::UpstreamExited, "gone");
    let msg = Message::error_response(Some(&RequestId::from("r1")), &err);
    let again = parse(std::str::from_utf8(msg.raw()).unwrap()).unwrap();
    assert_eq!(again.kind(), Kind::Error);
    assert_eq!(again.id(), Some(&RequestId::from("r1")));
}

/// A valid JSON-RPC message of any kind, with a params tree of strings, numbers and nesting.
fn valid_message() -> impl proptest::strategy::Strategy<Value = String> {
    use proptest::prelude::*;
    let leaf = prop_oneof![
        any::<i64>().prop_map(|n| serde_json::json!(n)),
        "[ -~é\u{1F600}]{0,12}".prop_map(|s| serde_json::json!(s)),
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(|b| serde_json::json!(b)),
    ];
    let tree = leaf.prop_recursive(4, 32, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::Array),
            proptest::collection::btree_map("[a-z_]{1,6}", inner, 0..4)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    });
    let params = proptest::collection::btree_map("[a-z_]{1,6}", tree, 0..4)
        .prop_map(|m| serde_json::Value::Object(m.into_iter().collect()));
    (0..4u8, any::<i64>(), "[a-z/_]{1,20}", params).prop_map(|(kind, id, method, params)| {
        let v = match kind {
            0 => serde_json::json!({"jsonrpc":"2.0","id":id,"method":method,"params":params}),
            1 => serde_json::json!({"jsonrpc":"2.0","method":method,"params":params}),
            2 => serde_json::json!({"jsonrpc":"2.0","id":id,"result":params}),
            _ => serde_json::json!({"jsonrpc":"2.0","id":id,"error":{"code":-1,"message":"m","data":params}}),
        };
        v.to_string()
    })
}

/// How a valid line is broken.
#[derive(Debug, Clone)]
enum Mutation {
    /// Cut off after this many bytes.
    Truncate(usize),
    /// One byte at this position XORed with this mask.
    Flip(usize, u8),
    /// The member at this position said twice (`"id":…`, `"method":…` or `"jsonrpc":…`).
    Duplicate(usize),
    /// The params wrapped in this many arrays.
    Nest(usize),
    /// A byte that is not UTF-8 put into the text at this position.
    NotUtf8(usize, u8),
}

fn mutation() -> impl proptest::strategy::Strategy<Value = Mutation> {
    use proptest::prelude::*;
    prop_oneof![
        any::<usize>().prop_map(Mutation::Truncate),
        (any::<usize>(), 1..=255u8).prop_map(|(at, mask)| Mutation::Flip(at, mask)),
        (0..3usize).prop_map(Mutation::Duplicate),
        (90..110usize).prop_map(Mutation::Nest),
        (
            any::<usize>(),
            prop_oneof![Just(0xffu8), Just(0xc0), Just(0x80), Just(0xf5)]
        )
            .prop_map(|(at, b)| Mutation::NotUtf8(at, b)),
    ]
}

fn mutate(line: &str, how: &Mutation) -> Vec<u8> {
    let mut bytes = line.as_bytes().to_vec();
    match *how {
        Mutation::Truncate(at) => bytes.truncate(at % bytes.len()),
        Mutation::Flip(at, mask) => {
            let at = at % bytes.len();
            bytes[at] ^= mask;
        }
        Mutation::Duplicate(which) => {
            let member = [r#""id":7,"#, r#""method":"ping","#, r#""jsonrpc":"2.0","#][which];
            bytes.splice(1..1, member.bytes());
        }
        Mutation::Nest(depth) => {
            let text = line.replacen(
                r#""params":"#,
                &format!(r#""params":{{"x":{}"#, "[".repeat(depth)),
                1,
            );
            // Close what was opened just before the params' own end (the message's last `}`).
            let end = text.len() - 1;
            bytes = format!("{}{}}}}}", &text[..end], "]".repeat(depth)).into_bytes();
        }
        Mutation::NotUtf8(at, byte) => {
            let at = at % bytes.len();
            bytes.insert(at, byte);
        }
    }
    bytes
}

/// Whether `e` is `serde_json::Value` refusing valid JSON: a number beyond a double's range, or
/// an escaped surrogate without its pair.
fn no_tree_holds(e: &serde_json::Error) -> bool {
    let text = e.to_string();
    text.starts_with("number out of range")
        || text.contains("surrogate")
        || text.contains("end of hex escape")
}

/// Arrays and objects open at the deepest point of `value` (the value itself counted).
fn depth(value: &serde_json::Value) -> usize {
    match value {
        serde_json::Value::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
        serde_json::Value::Object(members) => 1 + members.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]
    /// What the envelope lets through, every stage can read: a broken valid line is either
    /// refused, or is UTF-8 JSON no deeper than the limit whose id and method are the ones the
    /// envelope read (so a rule reading the tree sees the same message the proxy routes).
    #[test]
    fn a_broken_valid_line_is_refused_or_readable_by_every_stage(line in valid_message(), how in mutation()) {
        let bytes = mutate(&line, &how);
        let Ok(Frame::Single(msg)) = Message::parse_frame(Bytes::from(bytes.clone())) else {
            return Ok(());
        };
        proptest::prop_assert!(std::str::from_utf8(&bytes).is_ok(), "not UTF-8 let through: {how:?}");
        let tree: serde_json::Value = match serde_json::from_slice(&bytes) {
            Ok(tree) => tree,
            // Valid JSON that no tree holds (a number beyond a double's range, an escaped
            // lone surrogate) is forwarded as it came, as servers in Python and JavaScript
            // read it; the stages that must read a tree refuse it themselves (fail closed):
            // intercept::tests::a_rule_that_cannot_read_the_message_refuses_it,
            // tape::redact::tests::what_cannot_be_read_is_masked_whole, and end to end in
            // tests/robustness.rs. It must still be JSON (which `IgnoredAny` reads without
            // computing numbers or pairing surrogates).
            Err(e) if no_tree_holds(&e) && serde_json::from_slice::<serde::de::IgnoredAny>(&bytes).is_ok() => return Ok(()),
            Err(e) => {
                return Err(proptest::test_runner::TestCaseError::fail(format!(
                    "let through, but not JSON ({e}): {how:?}"
                )))
            }
        };
        proptest::prop_assert!(depth(&tree) <= MAX_NESTING, "{} deep let through", depth(&tree));
        let id = tree.get("id").map(|id| RequestId::from_raw(&serde_json::value::to_raw_value(id).unwrap()));
        proptest::prop_assert_eq!(msg.id().cloned(), id.and_then(Result::ok));
        proptest::prop_assert_eq!(msg.method().map(|m| m.as_str().to_owned()), tree.get("method").and_then(|m| m.as_str()).map(str::to_owned));
    }

    #[test]
    fn never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..256)) {
        let _ = Message::parse_frame(Bytes::from(bytes));
    }

    #[test]
    fn requests_with_any_id_and_method_parse(id in proptest::num::i64::ANY, method in "[a-z/_]{1,20}") {
        let text = format!(r#"{{"jsonrpc":"2.0","id":{id},"method":{}}}"#, serde_json::to_string(&method).unwrap());
        let msg = parse(&text).unwrap();
        proptest::prop_assert_eq!(msg.id(), Some(&RequestId::Number(id)));
        proptest::prop_assert_eq!(msg.method().unwrap().as_str(), method.as_str());
    }
}

#[test]
fn progress_tokens_are_read_in_their_normal_form() {
    let msg = |s: &str| Message::parse(Bytes::copy_from_slice(s.as_bytes())).unwrap();
    let request = msg(
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x","_meta":{"progressToken":"\u0070-1"}}}"#,
    );
    assert_eq!(
        request
            .progress_token("/params/_meta/progressToken")
            .as_deref(),
        Some(r#""p-1""#)
    );
    assert_eq!(request.progress_token("/params/progressToken"), None);
    let note = msg(
        r#"{"jsonrpc":"2.0","method":"notifications/progress","params":{"progressToken":7,"progress":1}}"#,
    );
    assert_eq!(
        note.progress_token("/params/progressToken").as_deref(),
        Some("7")
    );
    let odd = msg(
        r#"{"jsonrpc":"2.0","method":"notifications/progress","params":{"progressToken":{"x":1}}}"#,
    );
    assert_eq!(odd.progress_token("/params/progressToken"), None);
    let ping = msg(r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#);
    assert_eq!(ping.progress_token("/params/_meta/progressToken"), None);
}

#[test]
fn a_progress_token_longer_than_an_id_may_be_is_refused() {
    let token = "t".repeat(MAX_ID_BYTES - 2);
    let fits = parse(&format!(
        r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"_meta":{{"progressToken":"{token}"}}}}}}"#
    ))
    .unwrap();
    assert_eq!(
        fits.read_progress_token("/params/_meta/progressToken"),
        Ok(Some(format!("\"{token}\"")))
    );
    let over = parse(&format!(
        r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"_meta":{{"progressToken":"{token}x"}}}}}}"#
    ))
    .unwrap();
    assert_eq!(
        over.read_progress_token("/params/_meta/progressToken"),
        Err(TokenError::TooLong)
    );
    let twice = parse(
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"_meta":{},"_meta":{"progressToken":1}}}"#,
    )
    .unwrap();
    assert_eq!(
        twice.read_progress_token("/params/_meta/progressToken"),
        Err(TokenError::Unreadable)
    );
}

#[test]
fn param_str_reads_one_member_as_a_whole_reader_would() {
    let name = |s: &str| parse(s).unwrap().param_str("name");
    let call = |params: &str| {
        name(&format!(
            r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{params}}}"#
        ))
    };
    assert_eq!(
        call(r#"{"name":"echo","arguments":{"name":"inner"}}"#),
        Ok(Some("echo".into()))
    );
    // Escapes in the key and the value are read as any JSON reader reads them.
    assert_eq!(
        call(r#"{"n\u0061me":"del\u0065te"}"#),
        Ok(Some("delete".into()))
    );
    assert_eq!(
        call(r#"{"arguments":{},"name":"late"}"#),
        Ok(Some("late".into()))
    );
    assert_eq!(call(r#"{"name":5}"#), Ok(None));
    assert_eq!(call(r#"{"arguments":{}}"#), Ok(None));
    assert_eq!(call("[1,2]"), Ok(None));
    assert_eq!(
        name(r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#),
        Ok(None)
    );
    // A member given twice is settled differently by different readers: the caller must read
    // the whole message (where the last one wins, as in most readers) instead.
    assert_eq!(call(r#"{"name":"safe","name":"delete_all"}"#), Err(()));
    // (A message with `params` twice does not get this far: the envelope refuses it.)
    assert!(
        parse(r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a"},"params":{"name":"b"}}"#)
            .is_err()
    );
    // Read only as far as the name when nothing can repeat it; in full when something might.
    assert_eq!(
        call(r#"{"name":"echo","arguments":{"text":"long"}}"#),
        Ok(Some("echo".into()))
    );
    assert_eq!(
        call(r#"{"name":"echo","arguments":{"field":"name"}}"#),
        Ok(Some("echo".into()))
    );
    assert_eq!(call(r#"{"name":"safe","n\u0061me":"delete_all"}"#), Err(()));
    assert_eq!(
        call(r#"{"name":"safe","arguments":{},"name":"delete_all"}"#),
        Err(())
    );
    assert_eq!(call(r#"{"name":null,"arguments":{}}"#), Ok(None));
    assert_eq!(call(r#"{"name":{"x":"y"},"arguments":{}}"#), Ok(None));
    assert_eq!(call(r#"{"text":"\"name\""}"#), Ok(None));
    let read =
        parse(r#"{"jsonrpc":"2.0","id":1,"method":"resources/read","params":{"uri":"file:///x"}}"#)
            .unwrap();
    assert_eq!(read.param_str("uri"), Ok(Some("file:///x".into())));
}

#[test]
fn reading_up_to_a_member_agrees_with_reading_it_all_or_declines() {
    for pad in [String::new(), "x".repeat(4096)] {
        for params in [
            r#"{"name":"echo","arguments":{"text":"PAD"}}"#,
            r#"{"arguments":{"name":"inner","t":"PAD"}}"#,
            r#"{"a":[{"name":"x"},["name"]],"name":"y","t":"PAD"}"#,
            r#"{"a":"\"},[{","name":"z","t":"PAD"}"#,
            r#"{ "name" : "w" , "t" : [ 1, 2.5e3, -4, true, false, null, "PAD" ] }"#,
            r#"{"name":5,"t":"PAD"}"#,
            r#"{"t":"PAD","name":true}"#,
            r#"{"name":"é ✓","t":"PAD"}"#,
            r#"{"name":"a\nb","t":"PAD"}"#,
            r#"{"name":"echo","name":"echo","t":"PAD"}"#,
            r#"{"arguments":{"text":"PAD"},"name":"late"}"#,
            r#"{"name":"echo","arguments":{"field":"name","t":"PAD"}}"#,
            r#"{"name":"safe","n\u0061me":"delete_all","t":"PAD"}"#,
            r#"{"name":"safe","arguments":{"t":"PAD"},"name":"delete_all"}"#,
            r#"{"name":null,"arguments":{"t":"PAD"}}"#,
            r#"{"name":{"x":"y"},"arguments":{"t":"PAD"}}"#,
            r#"{"text":"\"name\" PAD"}"#,
            r#"{"t":"PAD"}"#,
        ] {
            let params = params.replace("PAD", &pad);
            let msg = parse(&format!(
                r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{params}}}"#
            ))
            .unwrap();
            let full: Option<String> = serde_json::from_str::<serde_json::Value>(&params)
                .unwrap()
                .get("name")
                .and_then(|n| n.as_str().map(str::to_owned));
            match scan(params.as_bytes(), "name") {
                Some(Ok(one_pass)) => {
                    assert_eq!(one_pass.map(str::to_owned), full, "{}", &params[..60]);
                }
                Some(Err(())) => assert!(params.matches("\"name\"").count() > 1, "{params}"),
                // Declined only for escapes.
                None => assert!(params.contains('\\'), "{}", &params[..60]),
            }
            match first_member_str(params.as_bytes(), "name") {
                Ok(early) => assert_eq!(early, full, "{}", &params[..60]),
                // Declined only where a member could be repeated or respelled.
                Err(()) => {
                    assert!(params.contains("\\u") || params.matches("\"name\"").count() > 1);
                }
            }
            // The public reader gives the whole tree's answer, or declines for a repeated member.
            match msg.param_str("name") {
                Ok(name) => assert_eq!(name, full, "{}", &params[..60]),
                Err(()) => {
                    assert!(params.contains("\\u") || params.matches("\"name\"").count() > 1);
                }
            }
        }
    }
}

/// Valid JSON that no tree holds passes the envelope as it came (servers in Python and
/// JavaScript read it); the stages that must read a tree refuse it themselves.
#[test]
fn json_no_tree_holds_passes_the_envelope_as_it_came() {
    for raw in [
        r#"{"jsonrpc":"2.0","id":1,"method":"x","params":{"n":1e999}}"#,
        r#"{"jsonrpc":"2.0","id":2,"result":{"text":"\ud83d"}}"#,
    ] {
        let msg = parse(raw).unwrap();
        assert_eq!(msg.raw().as_ref(), raw.as_bytes());
        assert!(
            serde_json::from_str::<serde_json::Value>(raw).is_err(),
            "{raw}"
        );
    }
}
