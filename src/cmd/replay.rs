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
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::cli::ReplayArgs;
use crate::protocol::error::ProxyError;
use crate::protocol::{ErrorCode, Kind, Message, RequestId};
use crate::tape::MatchMode;
use crate::tape::read;
use crate::tape::script::{
    Matcher, PROGRESS_TOKEN, REQUEST_TOKEN, Script, params_of, unmatched_error,
};
use crate::telemetry::traces::{Call, TraceOptions, Tracer};
use crate::transport::lines::{Line, LineDecoder};

/// Longest line the player reads.
const MAX_LINE: usize = 32 * 1024 * 1024;
/// How long a replayed server→client request waits for the client's answer.
const CLIENT_ANSWER_WAIT: Duration = Duration::from_secs(60);
/// How long requests still playing get once the client has closed its side.
const DRAIN: Duration = Duration::from_secs(5);
/// How long the spans still queued get to reach the collector at exit.
const TRACE_FLUSH_GRACE: Duration = Duration::from_secs(2);

/// `shadowcat replay <tape>` over stdio.
/// With `trace_options`, a span per replayed request (its arguments' facts, the answer's outcome),
/// sent before it exits.
pub fn run_stdio(args: &ReplayArgs, trace_options: Option<&TraceOptions>) -> anyhow::Result<u8> {
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
        let tracer = crate::telemetry::traces::start(trace_options)?;
        let (input, _) = crate::transport::stdio::stdin()?;
        let (output, _) = crate::transport::stdio::stdout()?;
        let served = serve(script, mode, speed, input, output, tracer.clone()).await;
        if let Some(tracer) = tracer {
            tracer.shutdown(TRACE_FLUSH_GRACE).await;
        }
        served.map_err(anyhow::Error::from)
    })?;
    // A terminal stdin is read on a thread that never returns: don't wait for it.
    runtime.shutdown_timeout(Duration::from_millis(100));
    Ok(0)
}

/// Server→client requests being replayed, awaiting the client's answers.
type Waiters = Arc<Mutex<HashMap<RequestId, oneshot::Sender<()>>>>;

/// Serves `script` to the client on `input`/`output` until it closes `input`; with `tracer`, a
/// span per request.
pub async fn serve<R, W>(
    script: Arc<Script>,
    mode: MatchMode,
    speed: f64,
    input: R,
    output: W,
    tracer: Option<Arc<Tracer>>,
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
                let call = tracer.as_ref().map(|t| t.served(&msg));
                let index = match matched(&script, &mut matcher, mode, method, &msg, &id) {
                    Ok(index) => index,
                    Err(answer) => {
                        answered(call, &answer);
                        let _ = out.send(answer).await;
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
                    call,
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

/// The recorded request that request `msg` (`method`, `id`) matches, or the answer it gets at
/// once: a ping's, or the error saying that none matches.
fn matched(
    script: &Script,
    matcher: &mut Matcher,
    mode: MatchMode,
    method: &crate::protocol::Method,
    msg: &Message,
    id: &RequestId,
) -> Result<usize, Bytes> {
    let method = method.as_str();
    let params = params_of(msg);
    match matcher.find(script, method, params.as_ref()) {
        Ok(index) => Ok(index),
        Err(_) if method == "ping" => Err(Bytes::from(format!(
            r#"{{"jsonrpc":"2.0","id":{},"result":{{}}}}"#,
            id_json(id)
        ))),
        Err(unmatched) => {
            tracing::warn!(%method, "no recorded request matches");
            let error = unmatched_error(script, mode, method, params.as_ref(), &unmatched);
            Err(error.to_response(Some(id)))
        }
    }
}

/// Ends `call`'s span with the answer `raw`.
fn answered(call: Option<Call>, raw: &Bytes) {
    if let (Some(call), Ok(answer)) = (call, Message::parse(raw.clone())) {
        call.answered(&answer, false);
    }
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
    /// The request's span, ended by the answer (or, if the play stops first, unanswered).
    call: Option<Call>,
}

impl Play {
    async fn run(mut self) {
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
                        tracing::warn!(
                            method = msg.method().map(crate::protocol::Method::as_str),
                            "the client did not answer a replayed request; going on"
                        );
                    }
                    continue;
                }
            };
            if let Some(outgoing) = outgoing {
                if matches!(outgoing.kind(), Kind::Response | Kind::Error) {
                    if let Some(call) = self.call.take() {
                        call.answered(&outgoing, false);
                    }
                }
                if self.out.send(outgoing.raw().clone()).await.is_err() {
                    return;
                }
            }
        }
    }
}
