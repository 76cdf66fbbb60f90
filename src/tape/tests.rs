//! The format's tests: round trips, the golden tape, the docs' example, damage.

use super::*;

fn header() -> Header {
    Header {
        format: FORMAT_VERSION,
        id: "t1".into(),
        name: Some("demo".into()),
        created: now_rfc3339(),
        mode: "forward".into(),
        client_transport: "stdio".into(),
        server_transport: "stdio".into(),
        upstream: Some("python server.py".into()),
        session: "s1".into(),
    }
}

use std::io::Write as _;

use proptest::strategy::Strategy as _;

#[tokio::test]
async fn a_tape_reads_back_exactly_what_was_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.jsonl");
    let (recorder, writer) = Recorder::create(&path, &header(), std::sync::Arc::default()).unwrap();
    let request = br#"{"jsonrpc":"2.0", "id":1,"method":"ping"}"#;
    let pretty = b"{\n  \"jsonrpc\": \"2.0\",\n  \"id\": 1,\n  \"result\": {}\n}";
    recorder
        .frame(Direction::ClientToServer, "s1", request, Wire::default())
        .await
        .unwrap();
    recorder
        .meta(Meta {
            protocol_version: Some("2025-06-18".into()),
            ..Meta::default()
        })
        .await
        .unwrap();
    let transport = Wire {
        status: Some(200),
        event_id: Some("post1-1".into()),
        stream: Some("post".into()),
    };
    recorder
        .frame(Direction::ServerToClient, "s1", pretty, transport.clone())
        .await
        .unwrap();
    recorder.end("closed").await.unwrap();
    drop(recorder);
    writer.await.unwrap().unwrap();
    let tape = read(&path).unwrap();
    assert_eq!(tape.header, header_with_created(&tape.header));
    assert_eq!(tape.meta.protocol_version.as_deref(), Some("2025-06-18"));
    assert_eq!(tape.frames.len(), 2);
    assert_eq!(&tape.frames[0].raw[..], request, "byte for byte");
    assert_eq!(&tape.frames[1].raw[..], pretty);
    assert_eq!(tape.frames[1].transport, transport);
    assert_eq!(tape.frames[1].direction, Direction::ServerToClient);
    assert!(tape.frames[0].micros <= tape.frames[1].micros);
    assert_eq!(tape.end.unwrap().reason, "closed");
    assert!(!tape.torn);
    // Every line is one line of JSON.
    let text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(text.lines().count(), 5);
    for line in text.lines() {
        serde_json::from_str::<serde_json::Value>(line).unwrap();
    }
}

fn header_with_created(read: &Header) -> Header {
    Header {
        created: read.created.clone(),
        ..header()
    }
}

/// Lines for fixed frames of every shape, written as the recorder writes them.
fn golden_lines() -> (Vec<Frame>, Vec<u8>) {
    let frames = vec![
        Frame {
            micros: 0,
            direction: Direction::ClientToServer,
            session: "s1".into(),
            raw: Bytes::from_static(br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"text":"h\u00e9"}}}"#),
            transport: Wire::NONE,
            trace: None,
        },
        Frame {
            micros: 1500,
            direction: Direction::ServerToClient,
            session: "s1".into(),
            raw: Bytes::from_static(b"{\n  \"jsonrpc\": \"2.0\",\n  \"id\": 1,\n  \"result\": {}\n}"),
            transport: Wire {
                status: Some(200),
                event_id: Some("post1-1".into()),
                stream: Some("post".into()),
            },
            trace: Some("0af7651916cd43dd8448eb211c80319c".into()),
        },
        Frame {
            micros: 2000,
            direction: Direction::ServerToClient,
            session: "s1".into(),
            raw: Bytes::from_static(b"\xff not utf-8"),
            transport: Wire::NONE,
            trace: None,
        },
    ];
    let mut out = Vec::new();
    let mut h = header();
    h.created = "2026-11-21T09:00:00.000Z".into();
    write_line(&mut out, &Line::Header(h)).unwrap();
    write_line(
        &mut out,
        &Line::Meta(Meta {
            protocol_version: Some("2025-11-25".into()),
            ..Meta::default()
        }),
    )
    .unwrap();
    for f in &frames {
        let mut line = FrameLine::new(
            f.micros,
            f.direction,
            &f.session,
            &f.raw,
            f.transport.clone(),
        );
        line.trace = f.trace.as_deref().map(Into::into);
        write_line(&mut out, &Line::Frame(line)).unwrap();
    }
    write_line(
        &mut out,
        &Line::End(End {
            micros: 3000,
            reason: "closed".into(),
        }),
    )
    .unwrap();
    (frames, out)
}

/// The format, pinned: a change to how lines are written fails here (and needs a new
/// golden file, and a thought about the format's version).
#[test]
fn the_format_matches_the_golden_tape() {
    let (frames, written) = golden_lines();
    let golden = include_str!("../../tests/golden/tape-v1.jsonl");
    assert_eq!(std::str::from_utf8(&written).unwrap(), golden);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("golden.jsonl");
    std::fs::write(&path, golden).unwrap();
    let tape = read(&path).unwrap();
    assert_eq!(tape.frames, frames);
    assert_eq!(tape.end.unwrap().micros, 3000);
}

proptest::proptest! {
    /// Any frame's bytes (JSON or not, one line or many, UTF-8 or not) come back exactly.
    #[test]
    fn write_then_read_round_trips_any_frame(
        raws in proptest::collection::vec(
            proptest::prop_oneof![
                proptest::collection::vec(proptest::arbitrary::any::<u8>(), 0..64),
                "[ -~\n\r\t\u{e9}\u{1F600}]{0,40}".prop_map(String::into_bytes),
                proptest::arbitrary::any::<i64>().prop_map(|n| format!(r#"{{"jsonrpc":"2.0","id":{n},"result":{{"s":"{n}"}}}}"#).into_bytes()),
            ],
            1..6,
        ),
        micros in proptest::collection::vec(0u64..u64::MAX / 2, 6),
        event in proptest::option::of("[a-z0-9-]{1,12}"),
    ) {
        use proptest::prop_assert;
        let frames: Vec<Frame> = raws
            .into_iter()
            .zip(micros)
            .enumerate()
            .map(|(i, (raw, t))| Frame {
                micros: t,
                direction: if i % 2 == 0 { Direction::ClientToServer } else { Direction::ServerToClient },
                session: format!("s{i}"),
                raw: Bytes::from(raw),
                transport: Wire { status: Some(200), event_id: event.clone(), stream: None },
                trace: None,
            })
            .collect();
        let mut out = Vec::new();
        write_line(&mut out, &Line::Header(header())).unwrap();
        for f in &frames {
            let line = FrameLine::new(f.micros, f.direction, &f.session, &f.raw, f.transport.clone());
            write_line(&mut out, &Line::Frame(line)).unwrap();
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.jsonl");
        std::fs::write(&path, &out).unwrap();
        let tape = read(&path).unwrap();
        proptest::prop_assert_eq!(tape.frames, frames);
        prop_assert!(!tape.torn);
    }
}

#[test]
fn the_example_in_the_docs_is_a_tape() {
    let docs = include_str!("../../docs/tapes.md");
    let example = docs
        .split("```jsonl\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("example.jsonl");
    std::fs::write(&path, example).unwrap();
    let tape = read(&path).unwrap();
    assert_eq!(tape.header.mode, "forward");
    assert_eq!(tape.meta.protocol_version.as_deref(), Some("2025-06-18"));
    assert_eq!(tape.frames.len(), 5);
    assert_eq!(tape.end.unwrap().reason, "closed");
}

#[tokio::test]
async fn a_torn_last_line_is_ignored_and_other_damage_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.jsonl");
    let (recorder, writer) = Recorder::create(&path, &header(), std::sync::Arc::default()).unwrap();
    recorder
        .frame(
            Direction::ClientToServer,
            "s1",
            br#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#,
            Wire::default(),
        )
        .await
        .unwrap();
    drop(recorder);
    writer.await.unwrap().unwrap();
    // A writer killed mid-line.
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap();
    file.write_all(br#"{"type":"frame","t":5,"dir":"s2c","sess"#)
        .unwrap();
    drop(file);
    let tape = read(&path).unwrap();
    assert!(tape.torn);
    assert_eq!(tape.frames.len(), 1);
    assert!(tape.end.is_none());
    // Damage anywhere else is an error with the line number.
    let bad = dir.path().join("bad.jsonl");
    let text = std::fs::read_to_string(&path).unwrap();
    let mut lines: Vec<&str> = text.lines().collect();
    lines.insert(1, "not json");
    std::fs::write(&bad, lines.join("\n") + "\n").unwrap();
    let err = read(&bad).unwrap_err().to_string();
    assert!(err.contains("bad.jsonl:2"), "{err}");
    // Not a tape at all.
    std::fs::write(&bad, "{\"type\":\"end\",\"t\":0,\"reason\":\"x\"}\n").unwrap();
    assert!(matches!(read(&bad), Err(TapeError::NotATape { .. })));
    // An existing file is never overwritten.
    assert!(matches!(
        Recorder::create(&path, &header(), std::sync::Arc::default()),
        Err(TapeError::Io { .. })
    ));
}
