use super::*;

use bytes::Bytes;

use crate::proxy::outbox::Outgoing;
use crate::session::{SessionConfig, SessionManager, TransportKind};
use crate::telemetry::Metrics;

use crate::proxy::outbox::Collect;

/// What reached a client, parsed.
fn got(collect: &Collect) -> Vec<serde_json::Value> {
    collect
        .taken()
        .iter()
        .map(|t| serde_json::from_str(t).unwrap())
        .collect()
}

/// A shared process without a process: what it is sent is read from `rx`.
struct Bench {
    child: Arc<SharedChild<Arc<Collect>>>,
    rx: tokio::sync::mpsc::Receiver<Outgoing>,
    pipeline: Arc<Pipeline>,
    next: u64,
}

/// A session on the bench's process, and what reached its client.
struct Peer {
    route: Arc<Route<Arc<Collect>>>,
    got: Arc<Collect>,
}

fn msg(text: &str) -> Message {
    Message::parse(Bytes::copy_from_slice(text.as_bytes())).unwrap()
}

impl Bench {
    fn new() -> Self {
        let (to_server, rx, _) = Outbox::new(64, 1 << 20);
        let sessions = SessionManager::new(SessionConfig::default(), None);
        let pipeline = Arc::new(Pipeline::new(
            Arc::new(Metrics::default()),
            sessions,
            &[],
            None,
        ));
        let child = Arc::new(SharedChild {
            key: None,
            pid: AtomicU32::new(0),
            generation: watch::Sender::new(1),
            to_server: Mutex::new(Arc::new(to_server)),
            table: Mutex::new(Table::default()),
            handshake_changed: Notify::new(),
            emptied: Notify::new(),
            crash_looping: AtomicBool::new(false),

            pipeline: pipeline.clone(),
            counters: Arc::default(),
        });
        Self {
            child,
            rx,
            pipeline,
            next: 1,
        }
    }

    fn peer(&mut self) -> Peer {
        let got = Arc::new(Collect::default());
        let route = Arc::new(Route {
            id: self.next,
            session: Arc::new(Session::standalone(TransportKind::Http, 64)),
            to_client: got.clone(),
            ended: CancellationToken::new(),
            why: OnceLock::new(),
        });
        self.next += 1;
        assert!(self.child.admit(&route, 100));
        Peer { route, got }
    }

    /// `text` from `peer`'s client, through its pipeline, to the process.
    async fn send(&self, peer: &Peer, text: &str) {
        let cx = Context {
            direction: Direction::ClientToServer,
            session: &peer.route.session,
            transport: &crate::tape::Wire::NONE,
            client: Client::Local,
            header_trace: None,
            notes: None,
        };
        if let Verdict::Forward(msg) = self.pipeline.process(msg(text), cx).await {
            self.child.send(&peer.route, msg).await.unwrap();
        }
    }

    /// What the process was sent since last asked.
    fn sent(&mut self) -> Vec<serde_json::Value> {
        let mut out = Vec::new();
        while let Ok(frame) = self.rx.try_recv() {
            out.push(serde_json::from_slice(frame.as_ref()).unwrap());
        }
        out
    }

    async fn server_says(&self, text: &str) {
        self.child.dispatch(msg(text)).await;
    }
}

#[tokio::test]
async fn ids_and_progress_tokens_are_kept_apart_and_answers_go_home() {
    let mut bench = Bench::new();
    let (a, b) = (bench.peer(), bench.peer());
    let call = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"work","_meta":{"progressToken":"t"}}}"#;
    bench.send(&a, call).await;
    bench.send(&b, call).await;
    let sent = bench.sent();
    assert_eq!(sent.len(), 2, "{sent:?}");
    let (id_a, id_b) = (sent[0]["id"].clone(), sent[1]["id"].clone());
    assert_ne!(id_a, id_b);
    assert_eq!(sent[1]["params"]["_meta"]["progressToken"], id_b);
    assert_eq!(sent[1]["params"]["name"], "work");
    bench
        .server_says(&format!(
            r#"{{"jsonrpc":"2.0","method":"notifications/progress","params":{{"progressToken":{id_b},"progress":1}}}}"#
        ))
        .await;
    bench
        .server_says(&format!(
            r#"{{"jsonrpc":"2.0","id":{id_b},"result":{{"b":true}}}}"#
        ))
        .await;
    assert!(got(&a.got).is_empty());
    let to_b = got(&b.got);
    assert_eq!(to_b[0]["params"]["progressToken"], "t", "{to_b:?}");
    assert_eq!(
        to_b[1],
        serde_json::json!({"jsonrpc":"2.0","id":1,"result":{"b":true}})
    );
    // A's cancellation names its request by our id there; B's answer was its own.
    bench
        .send(
            &a,
            r#"{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":1}}"#,
        )
        .await;
    let sent = bench.sent();
    assert_eq!(sent[0]["params"]["requestId"], id_a, "{sent:?}");
    // B's request was answered: B cancelling id 1 now names nothing at the process.
    bench
        .send(
            &b,
            r#"{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":1}}"#,
        )
        .await;
    assert!(bench.sent().is_empty());
}

#[tokio::test]
async fn initialize_reaches_the_process_once_and_later_sessions_get_its_answer() {
    let mut bench = Bench::new();
    let (a, b) = (bench.peer(), bench.peer());
    let init = r#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"c","version":"1"}}}"#;
    bench.send(&a, init).await;
    let sent = bench.sent();
    assert_eq!(sent[0]["method"], "initialize");
    let ours = sent[0]["id"].clone();
    // B's initialize waits for A's answer rather than reaching the process too.
    let child = bench.child.clone();
    let (b_route, b_session) = (b.route.clone(), b.route.session.clone());
    let pipeline = bench.pipeline.clone();
    let waiting = tokio::spawn(async move {
        let cx = Context {
            direction: Direction::ClientToServer,
            session: &b_session,
            transport: &crate::tape::Wire::NONE,
            client: Client::Local,
            header_trace: None,
            notes: None,
        };
        let init = r#"{"jsonrpc":"2.0","id":"b-init","method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"b","version":"1"}}}"#;
        if let Verdict::Forward(msg) = pipeline.process(msg(init), cx).await {
            child.send(&b_route, msg).await.unwrap();
        }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(bench.sent().is_empty());
    let result = r#"{"protocolVersion":"2025-11-25","capabilities":{"tools":{}},"serverInfo":{"name":"s","version":"9"}}"#;
    bench
        .server_says(&format!(
            r#"{{"jsonrpc":"2.0","id":{ours},"result":{result}}}"#
        ))
        .await;
    waiting.await.unwrap();
    let result: serde_json::Value = serde_json::from_str(result).unwrap();
    assert_eq!(got(&a.got)[0]["result"], result);
    let to_b = got(&b.got);
    assert_eq!(to_b[0]["id"], "b-init");
    assert_eq!(to_b[0]["result"], result);
    assert!(
        bench.sent().is_empty(),
        "B's initialize never reached the process"
    );
    let initialized = r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#;
    bench.send(&a, initialized).await;
    bench.send(&b, initialized).await;
    assert_eq!(bench.sent().len(), 1);
}

#[tokio::test]
async fn subscriptions_are_counted_and_updates_reach_each_subscriber() {
    let mut bench = Bench::new();
    let (a, b, c) = (bench.peer(), bench.peer(), bench.peer());
    let subscribe =
        r#"{"jsonrpc":"2.0","id":5,"method":"resources/subscribe","params":{"uri":"file:///x"}}"#;
    bench.send(&a, subscribe).await;
    let sent = bench.sent();
    assert_eq!(sent.len(), 1);
    bench
        .server_says(&format!(
            r#"{{"jsonrpc":"2.0","id":{},"result":{{}}}}"#,
            sent[0]["id"]
        ))
        .await;
    bench.send(&b, subscribe).await;
    assert!(
        bench.sent().is_empty(),
        "the second subscribe is answered here"
    );
    assert_eq!(
        got(&b.got)[0],
        serde_json::json!({"jsonrpc":"2.0","id":5,"result":{}})
    );
    bench
        .server_says(r#"{"jsonrpc":"2.0","method":"notifications/resources/updated","params":{"uri":"file:///x"}}"#)
        .await;
    assert_eq!(got(&a.got).len(), 2);
    assert_eq!(got(&b.got).len(), 1);
    assert!(got(&c.got).is_empty(), "not subscribed");
    // List changes concern everyone.
    bench
        .server_says(r#"{"jsonrpc":"2.0","method":"notifications/tools/list_changed"}"#)
        .await;
    assert_eq!(
        (got(&a.got).len(), got(&b.got).len(), got(&c.got).len()),
        (1, 1, 1)
    );
    // A unsubscribes: B still is, so the process is not told; B leaves: it is.
    bench
        .send(&a, r#"{"jsonrpc":"2.0","id":6,"method":"resources/unsubscribe","params":{"uri":"file:///x"}}"#)
        .await;
    assert!(bench.sent().is_empty());
    bench.child.leave(b.route.id).await;
    let sent = bench.sent();
    assert_eq!(sent[0]["method"], "resources/unsubscribe", "{sent:?}");
    assert_eq!(sent[0]["params"]["uri"], "file:///x");
}

#[tokio::test]
async fn server_requests_go_only_where_they_can_be_told_apart() {
    let mut bench = Bench::new();
    let (a, b) = (bench.peer(), bench.peer());
    bench
        .send(
            &a,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"ask"}}"#,
        )
        .await;
    let a_call = bench.sent()[0]["id"].clone();
    let sampling = r#"{"jsonrpc":"2.0","id":"s1","method":"sampling/createMessage","params":{}}"#;
    bench.server_says(sampling).await;
    assert_eq!(got(&a.got)[0]["id"], "s1");
    assert!(got(&b.got).is_empty());
    // Only A may answer it.
    bench
        .send(
            &b,
            r#"{"jsonrpc":"2.0","id":"s1","result":{"forged":true}}"#,
        )
        .await;
    assert!(bench.sent().is_empty());
    bench
        .send(
            &a,
            r#"{"jsonrpc":"2.0","id":"s1","result":{"content":"ok"}}"#,
        )
        .await;
    assert_eq!(bench.sent()[0]["result"]["content"], "ok");
    // With both in flight, neither is guessed: the request is refused, a log dropped.
    bench
        .send(
            &b,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"ask"}}"#,
        )
        .await;
    let _ = bench.sent();
    bench
        .server_says(r#"{"jsonrpc":"2.0","id":"s2","method":"sampling/createMessage","params":{}}"#)
        .await;
    let refused = bench.sent();
    assert_eq!(refused[0]["id"], "s2");
    assert_eq!(refused[0]["error"]["code"], -32094, "{refused:?}");
    bench
        .server_says(r#"{"jsonrpc":"2.0","method":"notifications/message","params":{"level":"info","data":"x"}}"#)
        .await;
    assert!(got(&a.got).is_empty() && got(&b.got).is_empty());
    assert_eq!(bench.child.counters.unattributed.load(Ordering::Relaxed), 2);
    // A ping is answered here.
    bench
        .server_says(r#"{"jsonrpc":"2.0","id":"p","method":"ping"}"#)
        .await;
    assert_eq!(
        bench.sent()[0],
        serde_json::json!({"jsonrpc":"2.0","id":"p","result":{}})
    );
    // A leaves: its call still at the process is cancelled there.
    bench.child.leave(a.route.id).await;
    let sent = bench.sent();
    assert_eq!(sent[0]["method"], "notifications/cancelled");
    assert_eq!(sent[0]["params"]["requestId"], a_call);
}

/// `peer` subscribes to `file:///{n}` for each `n` of `uris`, each answered by the process.
async fn subscribe_each(bench: &mut Bench, peer: &Peer, uris: std::ops::Range<usize>) {
    for n in uris {
        bench
            .send(
                peer,
                &format!(
                    r#"{{"jsonrpc":"2.0","id":{n},"method":"resources/subscribe","params":{{"uri":"file:///{n}"}}}}"#
                ),
            )
            .await;
        let sent = bench.sent();
        if let Some(ours) = sent.first().map(|m| m["id"].clone()) {
            bench
                .server_says(&format!(r#"{{"jsonrpc":"2.0","id":{ours},"result":{{}}}}"#))
                .await;
        }
    }
}

fn last_answer(peer: &Peer) -> serde_json::Value {
    got(&peer.got).pop().unwrap()
}

#[tokio::test]
async fn subscriptions_are_bounded_per_session_and_in_total() {
    let per_session = table::MAX_SUBSCRIPTIONS_PER_SESSION;
    let mut bench = Bench::new();
    let a = bench.peer();
    subscribe_each(&mut bench, &a, 0..per_session).await;
    assert_eq!(got(&a.got).len(), per_session);
    // One more is refused to a, before anything is kept or sent; a may subscribe again to what
    // it has.
    subscribe_each(&mut bench, &a, per_session..per_session + 1).await;
    assert_eq!(last_answer(&a)["error"]["code"], -32600);
    subscribe_each(&mut bench, &a, 0..1).await;
    assert!(last_answer(&a).get("result").is_some());
    // Others fill the process up to its total; past it a new URI is refused, a known one not.
    let total = table::MAX_SUBSCRIPTIONS;
    let mut next = per_session;
    while next < total {
        let peer = bench.peer();
        let end = (next + per_session).min(total);
        subscribe_each(&mut bench, &peer, next..end).await;
        next = end;
    }
    let late = bench.peer();
    subscribe_each(&mut bench, &late, total..total + 1).await;
    let refused = last_answer(&late);
    assert_eq!(refused["error"]["code"], -32600, "{refused}");
    assert!(
        refused.to_string().contains("most shadowcat keeps"),
        "{refused}"
    );
    subscribe_each(&mut bench, &late, 5..6).await;
    assert!(last_answer(&late).get("result").is_some());
}

/// A process that failed: what it had in flight is owed an error (under each session's own
/// id), the handshake it got and the subscriptions are what the next process is to be given,
/// and an answer of the old process that comes late reaches no one.
#[tokio::test]
async fn a_crash_answers_what_was_in_flight_and_keeps_what_the_next_process_needs() {
    let mut bench = Bench::new();
    let (a, b) = (bench.peer(), bench.peer());
    let init = r#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"c","version":"1"}}}"#;
    bench.send(&a, init).await;
    let ours = bench.sent()[0]["id"].clone();
    bench
        .server_says(&format!(
            r#"{{"jsonrpc":"2.0","id":{ours},"result":{{"protocolVersion":"2025-11-25","capabilities":{{}},"serverInfo":{{"name":"s","version":"1"}}}}}}"#
        ))
        .await;
    bench
        .send(
            &a,
            r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
        )
        .await;
    bench
        .send(&a, r#"{"jsonrpc":"2.0","id":1,"method":"resources/subscribe","params":{"uri":"file:///x"}}"#)
        .await;
    let subscribed = bench.sent()[1]["id"].clone();
    bench
        .server_says(&format!(
            r#"{{"jsonrpc":"2.0","id":{subscribed},"result":{{}}}}"#
        ))
        .await;
    bench
        .send(
            &b,
            r#"{"jsonrpc":"2.0","id":"b-1","method":"tools/call","params":{"name":"slow"}}"#,
        )
        .await;
    let in_flight = bench.sent()[0]["id"].clone();

    let error = ProxyError::new(ErrorCode::UpstreamExited, "gone");
    let crashed = lock(&bench.child.table).crashed(&error);
    let owed: Vec<(u64, serde_json::Value)> = crashed
        .owed
        .iter()
        .map(|(route, m)| (route.id, serde_json::from_slice(m.raw()).unwrap()))
        .collect();
    assert_eq!(owed.len(), 1, "{owed:?}");
    assert_eq!(owed[0].0, b.route.id);
    assert_eq!(owed[0].1["id"], "b-1");
    assert_eq!(owed[0].1["error"]["code"], -32081);
    let replayed = crashed
        .handshake
        .initialize
        .expect("the initialize to replay");
    assert_eq!(replayed.method(), Some(&Method::Initialize));
    assert_eq!(
        serde_json::to_value(replayed.id()).ok(),
        Some(ours.clone()),
        "as the process got it"
    );
    assert!(crashed.handshake.initialized.is_some());
    let resubscribe: Vec<serde_json::Value> = crashed
        .resubscribe
        .iter()
        .map(|m| serde_json::from_slice(m.raw()).unwrap())
        .collect();
    assert_eq!(resubscribe.len(), 1);
    assert_eq!(resubscribe[0]["method"], "resources/subscribe");
    assert_eq!(resubscribe[0]["params"]["uri"], "file:///x");
    // The old process's late answer reaches no one.
    bench
        .server_says(&format!(
            r#"{{"jsonrpc":"2.0","id":{in_flight},"result":{{}}}}"#
        ))
        .await;
    assert!(got(&b.got).is_empty());
    // Later sessions still get the handshake's answer without the process being asked.
    let c = bench.peer();
    bench.send(&c, init).await;
    assert!(bench.sent().is_empty());
    assert_eq!(got(&c.got)[0]["result"]["serverInfo"]["name"], "s");
}
