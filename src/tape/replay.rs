//! `shadowcat replay`: a tape served back as an MCP server.
//!
//! The tape becomes a [`Script`]: its client requests, in order, each with what the server sent
//! on its account (the answer, progress, notifications and requests of its own), at their
//! recorded offsets. A server message tied to no request in flight (a `list_changed` after an
//! answer) goes with the request answered last before it. A live request is matched to a
//! recorded one ([`Matcher`], by `--match`) and that request's script is played: the answer
//! under the live request's id, progress under its progress token, every message at its
//! recorded offset divided by `--speed`. A recorded server→client request is sent as recorded,
//! and the script waits for the client's answer before going on.
//!
//! Over stdio ([`run_stdio`]) the player is the whole server. `replay --listen` puts the
//! reverse proxy in front of a `shadowcat replay` child per session (see `app.rs`), so every
//! HTTP detail is the gateway's own.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use futures_util::StreamExt as _;
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::diff::differences;
use super::{Tape, read};
use crate::cli::{MatchMode, ReplayArgs};
use crate::protocol::error::ProxyError;
use crate::protocol::{Direction, ErrorCode, Kind, Message, RequestId};
use crate::transport::lines::{Line, LineDecoder};

/// Longest line the player reads.
const MAX_LINE: usize = 32 * 1024 * 1024;
/// How long a replayed server→client request waits for the client's answer.
const CLIENT_ANSWER_WAIT: Duration = Duration::from_secs(60);
/// How long requests still playing get once the client has closed its side.
const DRAIN: Duration = Duration::from_secs(5);
/// Most candidates an unmatched request's error names.
const CANDIDATES: usize = 3;

/// What the server sent on one request's account.
#[derive(Debug, Clone)]
struct Event {
    /// Microseconds after the request.
    offset: u64,
    msg: Message,
}

/// One recorded client request and what followed it.
#[derive(Debug)]
pub struct Recorded {
    /// Its method.
    pub method: String,
    /// Its params, without `_meta`.
    pub params: Option<Value>,
    events: Vec<Event>,
}

/// A tape as the player sees it.
#[derive(Debug, Default)]
pub struct Script {
    /// The client's requests, in recorded order.
    pub requests: Vec<Recorded>,
}

/// `params` without `_meta` (ids, progress tokens and protocol metadata are not matched).
fn params_of(msg: &Message) -> Option<Value> {
    #[derive(serde::Deserialize)]
    struct Body {
        params: Option<Value>,
    }
    let mut params = serde_json::from_slice::<Body>(msg.raw()).ok()?.params?;
    if let Value::Object(map) = &mut params {
        map.remove("_meta");
    }
    Some(params)
}

const REQUEST_TOKEN: &str = "/params/_meta/progressToken";
const PROGRESS_TOKEN: &str = "/params/progressToken";

impl Script {
    /// The script of `tape`.
    pub fn from_tape(tape: &Tape) -> Self {
        let mut script = Self::default();
        // Requests awaiting their answers: (id, index, progress token).
        let mut pending: Vec<(RequestId, usize, Option<String>)> = Vec::new();
        let mut times: Vec<u64> = Vec::new();
        let mut last_answered = None;
        for frame in &tape.frames {
            let Ok(msg) = Message::parse(frame.raw.clone()) else {
                continue;
            };
            let owner = match (frame.direction, msg.kind()) {
                (Direction::ClientToServer, Kind::Request) => {
                    let (Some(id), Some(method)) = (msg.id(), msg.method()) else {
                        continue;
                    };
                    pending.push((
                        id.clone(),
                        script.requests.len(),
                        msg.progress_token(REQUEST_TOKEN),
                    ));
                    times.push(frame.micros);
                    script.requests.push(Recorded {
                        method: method.as_str().to_owned(),
                        params: params_of(&msg),
                        events: Vec::new(),
                    });
                    continue;
                }
                (Direction::ServerToClient, Kind::Response | Kind::Error) => {
                    let Some(at) = pending.iter().position(|(id, ..)| Some(id) == msg.id()) else {
                        continue;
                    };
                    let (_, owner, _) = pending.remove(at);
                    last_answered = Some(owner);
                    owner
                }
                (Direction::ServerToClient, _) => {
                    let token = msg.progress_token(PROGRESS_TOKEN);
                    let by_token = token.and_then(|token| {
                        pending
                            .iter()
                            .find(|(.., t)| t.as_ref() == Some(&token))
                            .map(|(_, owner, _)| *owner)
                    });
                    match by_token
                        .or_else(|| pending.last().map(|(_, owner, _)| *owner))
                        .or(last_answered)
                    {
                        Some(owner) => owner,
                        None => continue,
                    }
                }
                (Direction::ClientToServer, _) => continue,
            };
            script.requests[owner].events.push(Event {
                offset: frame.micros.saturating_sub(times[owner]),
                msg,
            });
        }
        script
    }
}

/// Why a live request matched nothing.
#[derive(Debug)]
pub struct Unmatched {
    /// The closest recorded requests, by index.
    pub candidates: Vec<usize>,
}

/// Matches live requests to recorded ones, by `--match`.
#[derive(Debug)]
pub struct Matcher {
    mode: MatchMode,
    used: Vec<bool>,
    /// The next recorded request, for `sequential` and `strict`.
    cursor: usize,
}

impl Matcher {
    /// A matcher for `script`.
    pub fn new(script: &Script, mode: MatchMode) -> Self {
        Self {
            mode,
            used: vec![false; script.requests.len()],
            cursor: 0,
        }
    }

    /// The recorded request that answers `method` with `params` (without `_meta`).
    pub fn find(
        &mut self,
        script: &Script,
        method: &str,
        params: Option<&Value>,
    ) -> Result<usize, Unmatched> {
        let same = |r: &Recorded| {
            r.method == method && (method == "initialize" || r.params.as_ref() == params)
        };
        let found = match self.mode {
            MatchMode::MethodParams => {
                let mut matching = script
                    .requests
                    .iter()
                    .enumerate()
                    .filter(|(_, r)| same(r))
                    .map(|(i, _)| i);
                let first = matching.clone().find(|i| !self.used[*i]);
                first.or_else(|| matching.next_back())
            }
            MatchMode::Sequential | MatchMode::Strict => {
                let next = script.requests.get(self.cursor);
                let fits = next.is_some_and(|r| {
                    if self.mode == MatchMode::Strict {
                        same(r)
                    } else {
                        r.method == method
                    }
                });
                fits.then(|| {
                    self.cursor += 1;
                    self.cursor - 1
                })
            }
        };
        match found {
            Some(i) => {
                self.used[i] = true;
                Ok(i)
            }
            None => Err(Unmatched {
                candidates: self.closest(script, method, params),
            }),
        }
    }

    /// The recorded requests closest to the live one: for `sequential` and `strict` the one
    /// expected next; otherwise those of the same method, unused first, then with the fewest
    /// differences; failing that, one of each other method.
    fn closest(&self, script: &Script, method: &str, params: Option<&Value>) -> Vec<usize> {
        if self.mode != MatchMode::MethodParams {
            return (self.cursor < script.requests.len())
                .then_some(self.cursor)
                .into_iter()
                .collect();
        }
        let null = Value::Null;
        let mut same: Vec<(bool, usize, usize)> = script
            .requests
            .iter()
            .enumerate()
            .filter(|(_, r)| r.method == method)
            .map(|(i, r)| {
                let distance =
                    differences(r.params.as_ref().unwrap_or(&null), params.unwrap_or(&null)).len();
                (self.used[i], distance, i)
            })
            .collect();
        if same.is_empty() {
            let mut seen = std::collections::HashSet::new();
            return script
                .requests
                .iter()
                .enumerate()
                .filter(|(_, r)| seen.insert(r.method.clone()))
                .map(|(i, _)| i)
                .take(CANDIDATES)
                .collect();
        }
        same.sort_unstable();
        same.into_iter().take(CANDIDATES).map(|(.., i)| i).collect()
    }
}

/// The error for a request nothing matched.
fn unmatched_error(
    script: &Script,
    mode: MatchMode,
    method: &str,
    params: Option<&Value>,
    unmatched: &Unmatched,
) -> ProxyError {
    let shown = params.map_or_else(String::new, |p| format!(" {}", super::diff::short(p, 200)));
    let candidates: Vec<Value> = unmatched
        .candidates
        .iter()
        .map(|&i| {
            let r = &script.requests[i];
            json!({"index": i + 1, "method": r.method, "params": r.params})
        })
        .collect();
    let closest = unmatched
        .candidates
        .iter()
        .map(|&i| {
            let r = &script.requests[i];
            let params = r
                .params
                .as_ref()
                .map_or_else(String::new, |p| format!(" {}", super::diff::short(p, 120)));
            format!("#{} {}{params}", i + 1, r.method)
        })
        .collect::<Vec<_>>()
        .join("; ");
    let closest = if closest.is_empty() {
        "the tape has no more requests".to_owned()
    } else {
        format!("closest recorded: {closest}")
    };
    ProxyError::new(
        ErrorCode::ReplayUnmatched,
        format!(
            "no recorded request matches {method}{shown} (--match {}); {closest}",
            mode.as_str()
        ),
    )
    .with("candidates", Value::Array(candidates))
}

/// `shadowcat replay <tape>` over stdio.
pub fn run_stdio(args: &ReplayArgs) -> anyhow::Result<u8> {
    let tape = read(&args.tape)?;
    let script = Arc::new(Script::from_tape(&tape));
    tracing::info!(
        tape = %args.tape.display(),
        requests = script.requests.len(),
        mode = args.match_mode.as_str(),
        "replaying"
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let (speed, mode) = (args.speed, args.match_mode);
    runtime.block_on(async move {
        let (input, _) = crate::transport::stdio::stdin()?;
        let (output, _) = crate::transport::stdio::stdout()?;
        serve(script, mode, speed, input, output).await
    })?;
    // A terminal stdin is read on a thread that never returns: don't wait for it.
    runtime.shutdown_timeout(Duration::from_millis(100));
    Ok(0)
}

/// Server→client requests being replayed, awaiting the client's answers.
type Waiters = Arc<Mutex<HashMap<RequestId, oneshot::Sender<()>>>>;

/// Serves `script` to the client on `input`/`output` until it closes `input`.
pub async fn serve<R, W>(
    script: Arc<Script>,
    mode: MatchMode,
    speed: f64,
    input: R,
    output: W,
) -> std::io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let (out, rx) = mpsc::channel::<Bytes>(256);
    let writer = tokio::spawn(crate::transport::writer::write_lines(
        rx,
        output,
        CancellationToken::new(),
    ));
    let mut matcher = Matcher::new(&script, mode);
    let waiters: Waiters = Arc::default();
    let playing = TaskTracker::new();
    let mut cancels: HashMap<RequestId, CancellationToken> = HashMap::new();
    let mut lines = FramedRead::new(input, LineDecoder::new(MAX_LINE));
    while let Some(line) = lines.next().await {
        let raw = match line? {
            Line::Frame(raw) if raw.iter().all(u8::is_ascii_whitespace) => continue,
            Line::Frame(raw) => raw,
            Line::TooLong { len, .. } => {
                let error = ProxyError::new(
                    ErrorCode::MessageTooLarge,
                    format!("the message is {len} bytes; replay reads at most {MAX_LINE}"),
                );
                let _ = out.send(error.to_response(None)).await;
                continue;
            }
        };
        let msg = match Message::parse(raw) {
            Ok(msg) => msg,
            Err(e) => {
                let _ = out.send(e.to_proxy_error().to_response(e.id())).await;
                continue;
            }
        };
        cancels.retain(|_, token| !token.is_cancelled());
        match msg.kind() {
            Kind::Request => {
                let (Some(id), Some(method)) = (msg.id().cloned(), msg.method()) else {
                    continue;
                };
                let method = method.as_str().to_owned();
                let params = params_of(&msg);
                let index = match matcher.find(&script, &method, params.as_ref()) {
                    Ok(index) => index,
                    Err(_) if method == "ping" => {
                        let pong =
                            format!(r#"{{"jsonrpc":"2.0","id":{},"result":{{}}}}"#, id_json(&id));
                        let _ = out.send(Bytes::from(pong)).await;
                        continue;
                    }
                    Err(unmatched) => {
                        tracing::warn!(%method, "no recorded request matches");
                        let error =
                            unmatched_error(&script, mode, &method, params.as_ref(), &unmatched);
                        let _ = out.send(error.to_response(Some(&id))).await;
                        continue;
                    }
                };
                let cancel = CancellationToken::new();
                cancels.insert(id.clone(), cancel.clone());
                let play = Play {
                    script: script.clone(),
                    index,
                    id,
                    token: msg.progress_token(REQUEST_TOKEN),
                    speed,
                    out: out.clone(),
                    waiters: waiters.clone(),
                };
                playing.spawn(async move {
                    tokio::select! {
                        () = play.run() => {}
                        () = cancel.cancelled() => {}
                    }
                    cancel.cancel();
                });
            }
            Kind::Response | Kind::Error => {
                let waiter = msg.id().and_then(|id| {
                    waiters
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .remove(id)
                });
                if let Some(waiter) = waiter {
                    let _ = waiter.send(());
                }
            }
            Kind::Notification => {
                if let Some(token) = msg.cancelled_request_id().and_then(|id| cancels.get(&id)) {
                    token.cancel();
                }
            }
        }
    }
    playing.close();
    let _ = tokio::time::timeout(DRAIN, playing.wait()).await;
    drop(out);
    writer.await.map_err(std::io::Error::other)?
}

fn id_json(id: &RequestId) -> String {
    let mut json = Vec::new();
    id.write_json(&mut json);
    String::from_utf8(json).unwrap_or_default()
}

/// One recorded request's script, played for a live request.
struct Play {
    script: Arc<Script>,
    index: usize,
    /// The live request's id.
    id: RequestId,
    /// The live request's progress token (JSON text).
    token: Option<String>,
    speed: f64,
    out: mpsc::Sender<Bytes>,
    waiters: Waiters,
}

impl Play {
    async fn run(self) {
        let start = Instant::now();
        for event in &self.script.requests[self.index].events {
            if self.speed > 0.0 {
                let offset = Duration::from_micros(event.offset).div_f64(self.speed);
                tokio::time::sleep_until(start + offset).await;
            }
            let msg = &event.msg;
            let outgoing = match msg.kind() {
                Kind::Response | Kind::Error => msg.with_id(&self.id),
                Kind::Notification if msg.progress_token(PROGRESS_TOKEN).is_some() => {
                    // Progress goes under the live request's token, if it asked for any.
                    self.token
                        .as_deref()
                        .and_then(|token| msg.with_member(&["params", "progressToken"], token))
                }
                Kind::Notification => Some(msg.clone()),
                Kind::Request => {
                    let (answered, wait) = oneshot::channel();
                    if let Some(id) = msg.id() {
                        self.waiters
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .insert(id.clone(), answered);
                    }
                    if self.out.send(msg.raw().clone()).await.is_err() {
                        return;
                    }
                    if tokio::time::timeout(CLIENT_ANSWER_WAIT, wait)
                        .await
                        .is_err()
                    {
                        tracing::warn!(method = ?msg.method(), "the client did not answer a replayed request; going on");
                    }
                    continue;
                }
            };
            if let Some(outgoing) = outgoing {
                if self.out.send(outgoing.raw().clone()).await.is_err() {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tape::{Frame, Header, Meta, Transport};

    fn tape(frames: &[(Direction, u64, &str)]) -> Tape {
        Tape {
            header: Header {
                format: 1,
                id: "t".into(),
                name: None,
                created: String::new(),
                mode: "forward".into(),
                client_transport: "stdio".into(),
                server_transport: "stdio".into(),
                upstream: None,
                session: "s".into(),
            },
            meta: Meta::default(),
            frames: frames
                .iter()
                .map(|(direction, micros, raw)| Frame {
                    micros: *micros,
                    direction: *direction,
                    session: "s".into(),
                    raw: Bytes::copy_from_slice(raw.as_bytes()),
                    transport: Transport::NONE,
                })
                .collect(),
            end: None,
            torn: false,
        }
    }

    use Direction::{ClientToServer as C, ServerToClient as S};

    fn script() -> Script {
        Script::from_tape(&tape(&[
            (
                C,
                0,
                r#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"clientInfo":{"name":"a"}}}"#,
            ),
            (
                S,
                10,
                r#"{"jsonrpc":"2.0","id":0,"result":{"serverInfo":{"name":"srv"}}}"#,
            ),
            (
                C,
                20,
                r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
            ),
            (
                C,
                30,
                r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"text":"a"},"_meta":{"progressToken":9}}}"#,
            ),
            (
                C,
                31,
                r#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"echo","arguments":{"text":"b"}}}"#,
            ),
            (
                S,
                40,
                r#"{"jsonrpc":"2.0","method":"notifications/progress","params":{"progressToken":9,"progress":1}}"#,
            ),
            (S, 50, r#"{"jsonrpc":"2.0","id":2,"result":{"text":"b"}}"#),
            (S, 60, r#"{"jsonrpc":"2.0","id":1,"result":{"text":"a"}}"#),
            (
                S,
                70,
                r#"{"jsonrpc":"2.0","method":"notifications/tools/list_changed"}"#,
            ),
            (
                C,
                80,
                r#"{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"echo","arguments":{"text":"a"}}}"#,
            ),
            (S, 90, r#"{"jsonrpc":"2.0","id":3,"result":{"text":"a2"}}"#),
        ]))
    }

    #[test]
    fn server_messages_go_with_the_request_they_belong_to() {
        let s = script();
        assert_eq!(s.requests.len(), 4);
        let kinds = |i: usize| -> Vec<(u64, String)> {
            s.requests[i]
                .events
                .iter()
                .map(|e| (e.offset, String::from_utf8_lossy(e.msg.raw()).into_owned()))
                .collect()
        };
        // Progress by its token (not the request last sent); the list_changed after the last
        // answer goes with that answer's request.
        let first_call = kinds(1);
        assert_eq!(first_call.len(), 3, "{first_call:?}");
        assert_eq!(first_call[0].0, 10);
        assert!(first_call[0].1.contains("progress"));
        assert!(first_call[1].1.contains(r#""a""#));
        assert!(first_call[2].1.contains("list_changed"));
        assert_eq!(kinds(2).len(), 1);
        assert_eq!(
            s.requests[1].params,
            Some(serde_json::json!({"name":"echo","arguments":{"text":"a"}}))
        );
    }

    #[test]
    fn method_params_matching_uses_each_recording_once_then_the_last_again() {
        let s = script();
        let mut m = Matcher::new(&s, MatchMode::MethodParams);
        let a = serde_json::json!({"name":"echo","arguments":{"text":"a"}});
        assert_eq!(
            m.find(&s, "initialize", Some(&serde_json::json!({"other": 1})))
                .unwrap(),
            0
        );
        assert_eq!(m.find(&s, "tools/call", Some(&a)).unwrap(), 1);
        assert_eq!(m.find(&s, "tools/call", Some(&a)).unwrap(), 3);
        assert_eq!(m.find(&s, "tools/call", Some(&a)).unwrap(), 3);
        let c = serde_json::json!({"name":"echo","arguments":{"text":"c"}});
        let miss = m.find(&s, "tools/call", Some(&c)).unwrap_err();
        // The unused one first, then by fewest differences.
        assert_eq!(miss.candidates, [2, 1, 3]);
        let miss = m.find(&s, "resources/read", None).unwrap_err();
        assert_eq!(miss.candidates, [0, 1], "one per recorded method");
        let error = unmatched_error(
            &s,
            MatchMode::MethodParams,
            "tools/call",
            Some(&c),
            &m.find(&s, "tools/call", Some(&c)).unwrap_err(),
        );
        let text = String::from_utf8(error.to_response(None).to_vec()).unwrap();
        assert!(
            text.contains("-32090") && text.contains("#3 tools/call"),
            "{text}"
        );
    }

    #[test]
    fn sequential_and_strict_follow_the_tape_in_order() {
        let s = script();
        let b = serde_json::json!({"name":"echo","arguments":{"text":"b"}});
        let mut m = Matcher::new(&s, MatchMode::Sequential);
        assert_eq!(m.find(&s, "initialize", None).unwrap(), 0);
        assert_eq!(
            m.find(&s, "tools/call", Some(&b)).unwrap(),
            1,
            "params are not compared"
        );
        assert_eq!(m.find(&s, "ping", None).unwrap_err().candidates, [2]);
        let mut m = Matcher::new(&s, MatchMode::Strict);
        assert_eq!(m.find(&s, "initialize", None).unwrap(), 0);
        assert_eq!(
            m.find(&s, "tools/call", Some(&b)).unwrap_err().candidates,
            [1]
        );
    }
}
