//! The live feed (`--ui-listen`): what the pipeline did with each message, published for
//! whoever watches. Nobody watching costs one atomic load a message: nothing is built, copied or
//! masked. Watchers share one ring of [`FEED_EVENTS`] events; one that falls behind (a slow
//! browser) loses the oldest, which is counted and told to it, and the traffic never waits.
//! Bodies are masked as tapes mask them (`--redact`, an upstream's credentials) and cut at
//! [`MAX_FEED_BODY`] bytes, so the ring holds at most a few MiB whatever the traffic.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use serde::Serialize;
use tokio::sync::broadcast;

use crate::protocol::{Direction, Kind, Message};
use crate::tape::Redactor;

/// Events the ring keeps for watchers that fall behind.
pub const FEED_EVENTS: usize = 512;
/// The longest body an event carries; a longer one is cut (and marked).
pub const MAX_FEED_BODY: usize = 16 * 1024;
/// Watchers at once (the UI listener's connections are capped below this too).
pub const MAX_WATCHERS: usize = 16;

/// What became of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// It went on as it came.
    Forwarded,
    /// It went on, changed by a rule.
    Modified,
    /// The proxy answered it (a rule's block or mock, a rate limit).
    Answered,
    /// It went nowhere.
    Dropped,
}

/// A message's text as a watcher sees it: masked, cut at [`MAX_FEED_BODY`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Body {
    /// The JSON text (not valid JSON when `truncated`).
    pub text: String,
    /// Whether it was cut.
    pub truncated: bool,
    /// Its whole size in bytes, before masking.
    pub size: usize,
}

/// Something a stage did to the message (a rule fired, a limit refused, a delay).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decision {
    /// `rule`, `rate_limited`, `delayed`.
    pub what: &'static str,
    /// Its details (`shadowcat.rule`, `shadowcat.action`, `shadowcat.mode`, ...).
    pub details: Vec<(&'static str, String)>,
}

/// One message through the pipeline.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    /// Its place in the feed (from 1; a gap is what a watcher missed).
    pub seq: u64,
    /// When, Unix milliseconds.
    pub at_ms: u64,
    /// The session, as logs and `session show` name it (its digest: the id is a credential).
    #[serde(serialize_with = "text")]
    pub session: Arc<str>,
    /// `to_server` or `to_client`.
    pub direction: &'static str,
    /// `request`, `notification`, `response` or `error`.
    pub kind: &'static str,
    /// Its method; for an answer, its request's.
    pub method: Option<String>,
    /// What a request is about: its tool, prompt or resource ([`Message::named`]).
    pub name: Option<String>,
    /// Its JSON-RPC id, as JSON text.
    pub id: Option<String>,
    /// What became of it.
    pub outcome: Outcome,
    /// For an answer: microseconds since its request arrived.
    pub latency_us: Option<u64>,
    /// What the stages did.
    pub decisions: Vec<Decision>,
    /// Its trace, when tracing is on and the trace is kept somewhere.
    pub trace: Option<String>,
    /// The message as it went on (as it came, if it went nowhere).
    pub body: Body,
    /// As it came, when a rule changed it.
    pub before: Option<Body>,
    /// The proxy's answer, when it answered.
    pub answer: Option<Body>,
}

/// What the pipeline saw, for [`Feed::publish`].
#[derive(Debug)]
pub struct Seen<'a> {
    /// The session's digest.
    pub session: &'a Arc<str>,
    /// Which way it travelled.
    pub direction: Direction,
    /// The message as it arrived.
    pub arrived: &'a Message,
    /// For an answer: its request's method and when the request arrived.
    pub answers: Option<(&'a str, tokio::time::Instant)>,
    /// What became of it, and the message that went on or the proxy's answer.
    pub outcome: Outcome,
    /// The message that went on (modified), or the proxy's answer (answered).
    pub result: Option<&'a Message>,
    /// What the stages did.
    pub decisions: Vec<Decision>,
    /// Its trace id.
    pub trace: Option<&'a str>,
}

/// What a watcher is told.
#[derive(Debug)]
pub enum Next {
    /// The next event.
    Event(Arc<Event>),
    /// It fell behind and lost this many events.
    Missed(u64),
    /// The feed is gone (the proxy is stopping).
    Closed,
}

/// The feed's counts.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct FeedStats {
    /// Watchers now.
    pub watchers: usize,
    /// Events published since start.
    pub published: u64,
    /// Events watchers lost by falling behind (summed over watchers).
    pub missed: u64,
}

/// The live feed.
#[derive(Debug)]
pub struct Feed {
    tx: broadcast::Sender<Arc<Event>>,
    watchers: AtomicUsize,
    /// Watchers that want bodies (the live view; the traffic lines without bodies do not).
    body_watchers: AtomicUsize,
    seq: AtomicU64,
    missed: AtomicU64,
    masks: Arc<Redactor>,
}

impl Feed {
    /// A feed whose bodies are masked with `masks`.
    pub fn new(masks: Arc<Redactor>) -> Arc<Self> {
        let (tx, _) = broadcast::channel(FEED_EVENTS);
        Arc::new(Self {
            tx,
            watchers: AtomicUsize::new(0),
            body_watchers: AtomicUsize::new(0),
            seq: AtomicU64::new(0),
            missed: AtomicU64::new(0),
            masks,
        })
    }

    /// Whether anyone watches: the pipeline builds nothing for the feed otherwise.
    #[inline]
    pub fn is_watched(&self) -> bool {
        self.watchers.load(Ordering::Relaxed) > 0
    }

    /// A new watcher, or `None` at [`MAX_WATCHERS`].
    pub fn watch(self: &Arc<Self>) -> Option<Watcher> {
        self.watcher(true)
    }

    /// A new watcher that needs no bodies: while only such watch, events carry none (their
    /// text empty, their size kept), which spares masking and copying every message.
    pub fn watch_without_bodies(self: &Arc<Self>) -> Option<Watcher> {
        self.watcher(false)
    }

    fn watcher(self: &Arc<Self>, bodies: bool) -> Option<Watcher> {
        self.watchers
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < MAX_WATCHERS).then_some(n + 1)
            })
            .ok()?;
        if bodies {
            self.body_watchers.fetch_add(1, Ordering::AcqRel);
        }
        Some(Watcher {
            rx: self.tx.subscribe(),
            feed: self.clone(),
            bodies,
        })
    }

    /// The counts.
    pub fn stats(&self) -> FeedStats {
        FeedStats {
            watchers: self.watchers.load(Ordering::Relaxed),
            published: self.seq.load(Ordering::Relaxed),
            missed: self.missed.load(Ordering::Relaxed),
        }
    }

    /// Publishes what the pipeline did with a message (only called while watched).
    pub fn publish(&self, seen: Seen<'_>) {
        let arrived = seen.arrived;
        let bodies = self.body_watchers.load(Ordering::Relaxed) > 0;
        let body_of = |msg: &Message| {
            if bodies {
                self.body(msg)
            } else {
                Body {
                    text: String::new(),
                    truncated: false,
                    size: msg.raw().len(),
                }
            }
        };
        let (body, before, answer) = match (seen.outcome, seen.result) {
            (Outcome::Modified, Some(sent)) => (body_of(sent), Some(body_of(arrived)), None),
            (Outcome::Answered, Some(answer)) => (body_of(arrived), None, Some(body_of(answer))),
            _ => (body_of(arrived), None, None),
        };
        let method = match seen.answers {
            Some((method, _)) => Some(method.to_owned()),
            None => arrived.method().map(|m| m.as_str().to_owned()),
        };
        let event = Event {
            seq: self.seq.fetch_add(1, Ordering::Relaxed) + 1,
            at_ms: now_ms(),
            session: seen.session.clone(),
            direction: match seen.direction {
                Direction::ClientToServer => "to_server",
                Direction::ServerToClient => "to_client",
            },
            kind: match arrived.kind() {
                Kind::Request => "request",
                Kind::Notification => "notification",
                Kind::Response => "response",
                Kind::Error => "error",
            },
            method,
            name: arrived.named(),
            id: arrived.id().and_then(|id| serde_json::to_string(id).ok()),
            outcome: seen.outcome,
            latency_us: seen
                .answers
                .map(|(_, at)| u64::try_from(at.elapsed().as_micros()).unwrap_or(u64::MAX)),
            decisions: seen.decisions,
            trace: seen.trace.map(str::to_owned),
            body,
            before,
            answer,
        };
        // No receiver left between the check and here: nothing to do.
        let _ = self.tx.send(Arc::new(event));
    }

    fn body(&self, msg: &Message) -> Body {
        let raw = msg.raw();
        let masked = self.masks.apply(raw);
        let text = String::from_utf8_lossy(&masked);
        let truncated = text.len() > MAX_FEED_BODY;
        let text = if truncated {
            let mut end = MAX_FEED_BODY;
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            text[..end].to_owned()
        } else {
            text.into_owned()
        };
        Body {
            text,
            truncated,
            size: raw.len(),
        }
    }
}

/// One watcher of the feed (a browser's event stream); dropping it stops the watching.
#[derive(Debug)]
pub struct Watcher {
    rx: broadcast::Receiver<Arc<Event>>,
    feed: Arc<Feed>,
    bodies: bool,
}

impl Watcher {
    /// The next event, or how many it missed by falling behind.
    pub async fn next(&mut self) -> Next {
        match self.rx.recv().await {
            Ok(event) => Next::Event(event),
            Err(broadcast::error::RecvError::Lagged(n)) => {
                self.feed.missed.fetch_add(n, Ordering::Relaxed);
                Next::Missed(n)
            }
            Err(broadcast::error::RecvError::Closed) => Next::Closed,
        }
    }

    /// What is ready now, without waiting (`None`: nothing).
    pub fn try_next(&mut self) -> Option<Next> {
        match self.rx.try_recv() {
            Ok(event) => Some(Next::Event(event)),
            Err(broadcast::error::TryRecvError::Lagged(n)) => {
                self.feed.missed.fetch_add(n, Ordering::Relaxed);
                Some(Next::Missed(n))
            }
            Err(broadcast::error::TryRecvError::Empty) => None,
            Err(broadcast::error::TryRecvError::Closed) => Some(Next::Closed),
        }
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        if self.bodies {
            self.feed.body_watchers.fetch_sub(1, Ordering::AcqRel);
        }
        self.feed.watchers.fetch_sub(1, Ordering::AcqRel);
    }
}

fn text<S: serde::Serializer>(text: &Arc<str>, to: S) -> Result<S::Ok, S::Error> {
    to.serialize_str(text)
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(raw: &str) -> Message {
        Message::parse(bytes::Bytes::from(raw.to_owned())).unwrap()
    }

    fn seen<'a>(session: &'a Arc<str>, arrived: &'a Message) -> Seen<'a> {
        Seen {
            session,
            direction: Direction::ClientToServer,
            arrived,
            answers: None,
            outcome: Outcome::Forwarded,
            result: None,
            decisions: Vec::new(),
            trace: None,
        }
    }

    #[tokio::test]
    async fn watchers_get_events_and_nobody_watching_is_one_load() {
        let feed = Feed::new(Arc::new(Redactor::default()));
        assert!(!feed.is_watched());
        let session: Arc<str> = Arc::from("s-000000000001");
        let call =
            msg(r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"echo"}}"#);
        let mut watcher = feed.watch().unwrap();
        assert!(feed.is_watched());
        feed.publish(seen(&session, &call));
        let Next::Event(event) = watcher.next().await else {
            panic!("no event");
        };
        assert_eq!(event.seq, 1);
        assert_eq!(event.kind, "request");
        assert_eq!(event.method.as_deref(), Some("tools/call"));
        assert_eq!(event.id.as_deref(), Some("7"));
        assert_eq!(event.body.text, std::str::from_utf8(call.raw()).unwrap());
        assert_eq!(event.name.as_deref(), Some("echo"));
        drop(watcher);
        assert!(!feed.is_watched());
        assert_eq!(feed.stats().watchers, 0);
    }

    #[tokio::test]
    async fn a_watcher_that_falls_behind_loses_the_oldest_counted() {
        let feed = Feed::new(Arc::new(Redactor::default()));
        let session: Arc<str> = Arc::from("s-000000000001");
        let ping = msg(r#"{"jsonrpc":"2.0","method":"notifications/ping"}"#);
        let mut slow = feed.watch().unwrap();
        for _ in 0..FEED_EVENTS + 10 {
            feed.publish(seen(&session, &ping));
        }
        let Next::Missed(n) = slow.next().await else {
            panic!("nothing missed");
        };
        assert_eq!(n, 10);
        assert_eq!(feed.stats().missed, 10);
        let Next::Event(event) = slow.next().await else {
            panic!("no event after the gap");
        };
        assert_eq!(event.seq, 11);
    }

    #[tokio::test]
    async fn bodies_are_made_only_while_a_watcher_wants_them() {
        let feed = Feed::new(Arc::new(Redactor::default()));
        let session: Arc<str> = Arc::from("s-000000000001");
        let call =
            msg(r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"echo"}}"#);
        let mut lines = feed.watch_without_bodies().unwrap();
        feed.publish(seen(&session, &call));
        let Next::Event(bare) = lines.next().await else {
            panic!("no event");
        };
        assert_eq!(bare.body.text, "");
        assert_eq!(bare.body.size, call.raw().len());
        let browser = feed.watch().unwrap();
        feed.publish(seen(&session, &call));
        let Next::Event(full) = lines.next().await else {
            panic!("no event");
        };
        assert_eq!(full.body.text, std::str::from_utf8(call.raw()).unwrap());
        drop(browser);
        feed.publish(seen(&session, &call));
        let Next::Event(bare) = lines.next().await else {
            panic!("no event");
        };
        assert_eq!(bare.body.text, "");
    }

    #[test]
    fn watchers_are_capped() {
        let feed = Feed::new(Arc::new(Redactor::default()));
        let held: Vec<_> = (0..MAX_WATCHERS).map(|_| feed.watch().unwrap()).collect();
        assert!(feed.watch().is_none());
        drop(held);
        assert!(feed.watch().is_some());
    }

    #[tokio::test]
    async fn bodies_are_masked_and_cut() {
        let masks = Redactor::new(&["$.params.arguments.token".to_owned()], Vec::new()).unwrap();
        let feed = Feed::new(Arc::new(masks));
        let session: Arc<str> = Arc::from("s-000000000001");
        let mut watcher = feed.watch().unwrap();
        let secret = msg(
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"login","arguments":{"token":"hunter2"}}}"#,
        );
        feed.publish(seen(&session, &secret));
        let big = msg(&format!(
            r#"{{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{{"name":"{}"}}}}"#,
            "é".repeat(MAX_FEED_BODY)
        ));
        feed.publish(seen(&session, &big));
        let Next::Event(masked) = watcher.next().await else {
            panic!()
        };
        assert!(
            !masked.body.text.contains("hunter2"),
            "{}",
            masked.body.text
        );
        assert!(
            masked.body.text.contains("[REDACTED]"),
            "{}",
            masked.body.text
        );
        let Next::Event(cut) = watcher.next().await else {
            panic!()
        };
        assert!(cut.body.truncated);
        assert!(cut.body.text.len() <= MAX_FEED_BODY);
        assert_eq!(cut.body.size, big.raw().len());
    }
}
