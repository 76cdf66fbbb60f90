use super::*;

fn header(session: &str) -> Header {
    Header {
        format: FORMAT_VERSION,
        id: "t1".into(),
        name: None,
        created: now_rfc3339(),
        mode: "forward".into(),
        client_transport: "stdio".into(),
        server_transport: "stdio".into(),
        upstream: None,
        session: session.into(),
    }
}

#[test]
fn the_fast_frame_line_is_the_serde_one() {
    let long = format!(
        r#"{{"jsonrpc":"2.0","id":2,"result":{{"t":"{}"}}}}"#,
        "x".repeat(COPIED)
    );
    let transport = Wire {
        status: Some(200),
        event_id: Some("get-1".into()),
        stream: Some("get".into()),
    };
    for raw in [
        &br#"{"jsonrpc":"2.0","id":1,"result":{"t":"h\u00e9 \u2028"}}"#[..],
        long.as_bytes(),
    ] {
        for (direction, transport) in [
            (Direction::ClientToServer, Wire::NONE),
            (Direction::ServerToClient, transport.clone()),
        ] {
            let middle = frame_middle(direction, "s\"1");
            let mut pending = Pending::default();
            pending.copy(b"before\n");
            let tail = frame_tail(&transport, None).unwrap();
            frame_line(
                &mut pending,
                42,
                &middle,
                Bytes::copy_from_slice(raw),
                &tail,
            );
            // Long messages are queued as they are; short ones copied.
            assert_eq!(pending.parts.len(), if raw.len() < COPIED { 0 } else { 2 });
            pending.parts.push(pending.open.clone().freeze());
            let fast = pending.parts.concat();
            assert_eq!(pending.bytes, fast.len());
            let mut slow = b"before\n".to_vec();
            let line = FrameLine::new(42, direction, "s\"1", raw, transport.clone());
            write_line(&mut slow, &Line::Frame(line)).unwrap();
            assert_eq!(
                String::from_utf8(fast).unwrap(),
                String::from_utf8(slow).unwrap()
            );
        }
    }
    // Not one exact line: left to the general path.
    assert!(is_one_line(br#"{"a":1}"#, false));
    for raw in [&b" {}"[..], b"{\n}", b"{\xff}", b""] {
        assert!(!is_one_line(raw, false), "{raw:?}");
    }
}

#[tokio::test]
async fn messages_read_back_byte_for_byte_whichever_way_they_are_written() {
    use crate::protocol::Message;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.jsonl");
    let (recorder, writer) = Recorder::create(&path, &header("s1"), Arc::default()).unwrap();
    let long = format!(
        r#"{{"jsonrpc":"2.0","id":3,"result":{{"t":"{}"}}}}"#,
        "é".repeat(COPIED)
    );
    let raws: Vec<Vec<u8>> = vec![
        br#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#.to_vec(),
        // A member the proxy skips.
        "{\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{},\"x\":\"\u{e9}\"}"
            .as_bytes()
            .to_vec(),
        // Around the JSON, whitespace.
        b" {\"jsonrpc\":\"2.0\",\"id\":2,\"result\":{}}\r".to_vec(),
        long.into_bytes(),
    ];
    for raw in &raws {
        let msg = Message::parse(Bytes::copy_from_slice(raw)).unwrap();
        recorder
            .message(Direction::ServerToClient, "s1", &msg, &Wire::NONE, None)
            .await
            .unwrap();
    }
    // Another session's message on this tape.
    let msg = Message::parse(Bytes::copy_from_slice(&raws[0])).unwrap();
    recorder
        .message(Direction::ClientToServer, "s2", &msg, &Wire::NONE, None)
        .await
        .unwrap();
    drop(recorder);
    writer.await.unwrap().unwrap();
    let tape = super::super::read(&path).unwrap();
    let got: Vec<&[u8]> = tape.frames.iter().map(|f| &f.raw[..]).collect();
    let want: Vec<&[u8]> = raws.iter().chain([&raws[0]]).map(|r| &r[..]).collect();
    assert_eq!(got, want);
    assert_eq!(tape.frames[4].session, "s2");
    assert!(tape.frames.windows(2).all(|w| w[0].micros <= w[1].micros));
}

#[tokio::test]
async fn a_session_waits_while_the_writer_is_behind_and_nothing_is_lost() {
    use crate::protocol::Message;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.jsonl");
    let (recorder, writer) = Recorder::create(&path, &header("s1"), Arc::default()).unwrap();
    let text = "y".repeat(1000);
    let count = 3 * QUEUED / 1000;
    let mut most = 0;
    for id in 0..count {
        let raw = format!(r#"{{"jsonrpc":"2.0","id":{id},"result":{{"t":"{text}"}}}}"#);
        let msg = Message::parse(raw.into()).unwrap();
        recorder
            .message(Direction::ServerToClient, "s1", &msg, &Wire::NONE, None)
            .await
            .unwrap();
        most = most.max(recorder.queue.lock().bytes);
    }
    // This runtime has one thread: the writer ran only while the session waited.
    assert!(most >= QUEUED, "the queue never filled: {most}");
    assert!(
        most < QUEUED + 2000,
        "the queue grew past its bound: {most}"
    );
    recorder.end("closed").await.unwrap();
    drop(recorder);
    writer.await.unwrap().unwrap();
    let tape = super::super::read(&path).unwrap();
    assert_eq!(tape.frames.len(), count);
    for (id, frame) in tape.frames.iter().enumerate() {
        assert!(
            frame
                .raw
                .starts_with(format!(r#"{{"jsonrpc":"2.0","id":{id},"#).as_bytes())
        );
    }
}

#[tokio::test]
async fn a_writer_that_fails_stops_the_recording_not_the_session() {
    use crate::protocol::Message;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.jsonl");
    let (recorder, writer) = Recorder::create(&path, &header("s1"), Arc::default()).unwrap();
    // As if the disk were full: the writer's next write fails.
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .unwrap();
    let queue = recorder.queue.clone();
    writer.abort();
    let _ = writer.await;
    let writer = tokio::spawn(write_tape(queue, full, path.clone()));
    let msg = Message::parse(Bytes::from_static(
        br#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#,
    ))
    .unwrap();
    recorder
        .message(Direction::ClientToServer, "s1", &msg, &Wire::NONE, None)
        .await
        .unwrap();
    let err = writer.await.unwrap().unwrap_err();
    assert!(matches!(err, TapeError::Io { .. }), "{err}");
    let later = recorder
        .message(Direction::ClientToServer, "s1", &msg, &Wire::NONE, None)
        .await;
    assert!(matches!(later, Err(TapeError::Closed)));
    assert!(matches!(
        recorder.end("closed").await,
        Err(TapeError::Closed)
    ));
}

#[test]
fn credentials_in_an_upstream_url_are_not_kept() {
    assert_eq!(
        without_userinfo("https://ann:pw@example.com/mcp?x=1"),
        "https://example.com/mcp?x=1"
    );
    assert_eq!(
        without_userinfo("https://example.com/a@b"),
        "https://example.com/a@b"
    );
    assert_eq!(without_userinfo("python server.py"), "python server.py");
}
