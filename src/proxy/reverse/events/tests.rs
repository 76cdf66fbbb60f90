use super::*;

fn ids(events: &[Bytes]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| {
            let text = std::str::from_utf8(e).unwrap();
            let id = text.strip_prefix("id: ")?.lines().next()?.to_owned();
            text.contains("data: ").then_some(id)
        })
        .collect()
}

#[tokio::test]
async fn events_are_numbered_replayed_after_an_id_and_bounded() {
    let log = EventLog::new(3, 1 << 20);
    // Logged before anyone connected: the first connection gets it.
    log.push(br#"{"n":1}"#);
    let early = log.connect(None, true).unwrap();
    assert_eq!(early.first[0], priming("get-", 0));
    assert_eq!(ids(&early.first), ["get-1"]);
    drop(early);
    let mut first = log.connect(None, true).unwrap();
    assert_eq!(
        first.first,
        vec![priming("get-", 1)],
        "nothing left undelivered"
    );
    for i in 2..=3 {
        log.push(format!("{{\"n\":{i}}}").as_bytes());
    }
    assert_eq!(
        ids(&[
            first.live.recv().await.unwrap(),
            first.live.recv().await.unwrap()
        ]),
        ["get-2", "get-3"]
    );
    // A new connection takes over; the old one ends.
    let takeover = log.connect(None, true).unwrap();
    assert!(first.live.recv().await.is_none());
    drop(takeover);
    // While nobody is connected, events are kept (the last 3).
    for i in 4..=7 {
        log.push(format!("{{\"n\":{i}}}").as_bytes());
    }
    let resumed = log.connect(Some("get-5"), true).unwrap();
    assert_eq!(ids(&resumed.first), ["get-6", "get-7"]);
    assert!(
        std::str::from_utf8(&resumed.first[0])
            .unwrap()
            .starts_with("id: get-5\nretry: 3000"),
        "primed with the id the replay starts after"
    );
    drop(resumed);
    // An id older than the buffer: a note, then everything still kept.
    let late = log.connect(Some("get-1"), true).unwrap();
    assert!(
        std::str::from_utf8(&late.first[1])
            .unwrap()
            .contains("get-2 to get-4")
    );
    assert_eq!(ids(&late.first), ["get-5", "get-6", "get-7"]);
    drop(late);
    for bad in ["get-99", "8", "post-1", ""] {
        assert!(
            matches!(
                log.connect(Some(bad), true),
                Err(ConnectError::UnknownId(_))
            ),
            "{bad}"
        );
    }
    // push_if_connected logs nothing without a connection.
    assert!(!log.push_if_connected(b"{}"));
    let _live = log.connect(None, true).unwrap();
    assert!(log.push_if_connected(b"{}"));
}

#[tokio::test]
async fn a_stalled_connection_is_dropped_and_can_resume() {
    let log = EventLog::new(10_000, 1 << 30);
    let connection = log.connect(None, true).unwrap();
    for _ in 0..(LIVE_QUEUE + 5) {
        log.push(b"{}");
    }
    assert!(!log.is_connected());
    let mut live = connection.live;
    let mut got = 0;
    while live.recv().await.is_some() {
        got += 1;
    }
    assert_eq!(got, LIVE_QUEUE);
    let resumed = log.connect(Some(&format!("get-{got}")), true).unwrap();
    assert_eq!(ids(&resumed.first).len(), 5);
}

#[tokio::test]
async fn post_streams_finish_are_forgotten_once_delivered_and_bounded() {
    let posts = PostStreams::new(16, 1 << 20, Naming::default());
    let (number, log) = posts.open();
    assert_eq!(number, 1);
    log.push(br#"{"progress":1}"#);
    let connection = log.attach(false);
    assert_eq!(ids(&connection.first), ["post1-1"]);
    log.push(br#"{"answer":1}"#);
    log.finish();
    let mut live = connection.live;
    assert!(live.recv().await.is_some());
    assert!(live.recv().await.is_none(), "ends once finished");
    assert!(log.delivered_by(connection.generation));
    // Resuming a finished stream replays the rest and ends at once.
    let (_, found) = posts.find("post1-1").unwrap().unwrap();
    let mut resumed = found.connect(Some("post1-1"), false).unwrap();
    assert_eq!(ids(&resumed.first), ["post1-2"]);
    assert!(resumed.live.recv().await.is_none());
    assert!(found.delivered_by(resumed.generation));
    assert!(!found.delivered_by(connection.generation));
    posts.forget(1);
    assert!(matches!(
        posts.find("post1-1"),
        Some(Err(ConnectError::Forgotten(_)))
    ));
    assert!(matches!(
        posts.find("post2-1"),
        Some(Err(ConnectError::UnknownId(_)))
    ));
    assert!(posts.find("get-1").is_none() && posts.find("post-x").is_none());

    // A connection that was gone when the stream finished did not deliver it.
    let (_, log) = posts.open();
    let dropped = log.attach(false);
    drop(dropped.live);
    log.push(b"{}");
    log.finish();
    assert!(!log.delivered_by(dropped.generation));

    // Finished streams kept: the newest FINISHED_POST_STREAMS_KEPT; unfinished ones stay.
    let unfinished = posts.open();
    for _ in 0..FINISHED_POST_STREAMS_KEPT + 3 {
        posts.open().1.finish();
    }
    let kept = posts.logs.lock().unwrap().len();
    assert_eq!(
        kept,
        FINISHED_POST_STREAMS_KEPT + 2,
        "the bound, the unfinished one and the newest"
    );
    assert!(
        posts
            .find(&format!("post{}-0", unfinished.0))
            .unwrap()
            .is_ok()
    );
    assert!(matches!(
        posts.find("post2-0"),
        Some(Err(ConnectError::Forgotten(_)))
    ));
}

#[tokio::test]
async fn a_connection_too_many_bytes_behind_is_dropped() {
    let log = EventLog::new(10, 1 << 20);
    let mut connection = log.attach(false);
    // One event larger than the bound still goes through.
    log.push(&vec![b'x'; LIVE_BYTES + 1]);
    assert!(log.is_connected());
    assert!(connection.live.recv().await.is_some());
    // Events of a quarter of the bound (and a little framing): three fit.
    for _ in 0..5 {
        log.push(&vec![b'x'; LIVE_BYTES / 4]);
    }
    assert!(!log.is_connected(), "dropped once over the bound");
    let mut got = 0;
    while connection.live.recv().await.is_some() {
        got += 1;
    }
    assert_eq!(got, 3);
}

#[test]
fn the_byte_bound_holds() {
    let log = EventLog::new(1000, 200);
    for _ in 0..50 {
        log.push(&[b'x'; 40]);
    }
    let inner = lock(&log.inner);
    assert!(inner.bytes <= 200 && !inner.buffer.is_empty());
}

/// A server's polling, passed on: the live connection ends after what it was handed and a
/// `retry:`, and the stream goes on for the client to resume with `Last-Event-ID`.
#[tokio::test]
async fn a_paused_stream_ends_its_connection_and_resumes_after_the_last_id() {
    let log = EventLog::named("post1", 16, 1 << 20, None);
    let mut first = log.attach(true);
    log.push(br#"{"n":1}"#);
    log.pause(Some(Duration::from_millis(100)));
    assert_eq!(ids(&[first.live.recv().await.unwrap()]), ["post1-1"]);
    assert_eq!(
        first.live.recv().await.unwrap(),
        Bytes::from("retry: 100\n\n")
    );
    assert!(first.live.recv().await.is_none(), "the connection ends");
    // Logged while nobody is connected, then the client comes back after the last id it saw.
    log.push(br#"{"n":2}"#);
    log.push(br#"{"jsonrpc":"2.0","id":1,"result":{}}"#);
    log.finish();
    let again = log.connect(Some("post1-1"), true).unwrap();
    assert_eq!(ids(&again.first), ["post1-2", "post1-3"]);
}

#[test]
fn live_connections_together_queue_at_most_the_budget() {
    let all = AtomicUsize::new(0);
    let log = EventLog::new(1000, 1 << 30);
    let _connection = log.attach(false);
    let inner = lock(&log.inner);
    let live = inner.live.as_ref().unwrap();
    let event = Bytes::from(vec![b'x'; 100]);
    assert!(live.offer_within(&event, &all, 250));
    assert!(live.offer_within(&event, &all, 250));
    assert!(
        !live.offer_within(&event, &all, 250),
        "past the budget of all connections"
    );
    assert_eq!(all.load(Ordering::Relaxed), 200);
    // What this connection takes back off the queue is counted off the process's total.
    QUEUED_EVENT_BYTES.fetch_add(200, Ordering::Relaxed);
}
