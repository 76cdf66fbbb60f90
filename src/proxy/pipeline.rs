//! The pipeline: an ordered list of stages that every message passes through, in every mode.
//!
//! A stage sees one message with its direction and session, and returns a [`Verdict`]: pass it on
//! (possibly changed), answer the sender directly, or drop it. The first verdict that is not
//! `Forward` ends the walk. Stages are concrete types held in fixed order by [`Pipeline`] (static
//! dispatch, no allocation per message); adding a stage is a field, a constructor argument and one
//! line in [`Pipeline::process`].
//!
//! Order (documented here and in docs/architecture.md):
//! 1. session tracking ([`RequestTracker`]) — counts the message towards its session, correlates
//!    requests and responses, reads the `initialize` exchange.
//! 2. rate limits (`--rate-limit`, [`crate::ratelimit`]) — a client's request over a limit is
//!    answered with `rate_limited`, a notification over one is dropped.
//! 3. interceptor rules (`--rules`, [`crate::intercept`]) — block, mock, modify, delay, tag,
//!    log, hide, rate_limit; a response is matched by the method of the request it answers.
//! 4. recording (`--record`) — what the stages decided is written to the session's tape, if it
//!    has one: a message as it goes on (as rules left it), or as it came when the proxy
//!    answered or dropped it, and the proxy's answer (with the trace id, when traced).
//!
//! Around them, with `--otlp-endpoint`: tracing. A request's spans start before the stages (its
//! parent read from `params._meta`), hear what the stages did (`stage::Notes`), and, if it goes
//! on, ride in its pending entry with our CLIENT span's context written into its `_meta`; its
//! answer ends them. And the MCP conventions' operation durations, when a gateway exposes them.

use std::sync::Arc;

use crate::protocol::{Direction, ErrorCode, Kind, Message, Method};
use crate::ratelimit::{LimitSpec, RateLimits};
use crate::session::{Pending, SessionManager};
use crate::stage::{Context, Note, Notes, Verdict};
use crate::tape::Wire;
use crate::telemetry::feed::{Decision, Feed, Outcome, Seen};
use crate::telemetry::traces::{Call, Tracer};
use crate::telemetry::{Metrics, Observers};

use super::tracker::RequestTracker;

/// The pipeline every mode runs messages through.
#[derive(Debug)]
pub struct Pipeline {
    tracker: RequestTracker,
    limits: Option<RateLimits>,
    rules: Option<Arc<crate::intercept::Rules>>,
    metrics: Arc<Metrics>,
    tracer: Option<Arc<Tracer>>,
    /// The live feed (`--ui-listen`).
    feed: Option<Arc<Feed>>,
}

impl Pipeline {
    /// Builds the pipeline in its documented order: `limits` from `--rate-limit`, `rules` from
    /// `--rules`.
    pub fn new(
        metrics: Arc<Metrics>,
        sessions: Arc<SessionManager>,
        limits: &[LimitSpec],
        rules: Option<Arc<crate::intercept::Rules>>,
    ) -> Self {
        Self {
            tracker: RequestTracker::new(metrics.clone(), sessions),
            limits: (!limits.is_empty()).then(|| RateLimits::new(limits, &metrics)),
            rules,
            metrics,
            tracer: None,
            feed: None,
        }
    }

    /// The pipeline a proxying mode runs: `config`'s rate limits (kept in `redis` for a
    /// cluster, if given) and rules (their file watched), spans made by `observers`' tracer
    /// (`--otlp-endpoint`), messages told to its feed (`--ui-listen`).
    pub fn for_mode(
        config: &crate::config::Config,
        metrics: Arc<Metrics>,
        sessions: Arc<SessionManager>,
        observers: &Observers,
        redis: Option<Arc<crate::transport::redis::Redis>>,
    ) -> Arc<Self> {
        Arc::new(
            Self::new(
                metrics,
                sessions,
                &config.rate_limits,
                crate::intercept::start(config.rules.as_ref()),
            )
            .shared_limits(redis)
            .traced(observers.tracer.clone())
            .watched(observers.feed.clone()),
        )
    }

    /// This pipeline, its rate limits kept for the whole cluster in `redis` (`--redis-url`).
    #[must_use]
    pub fn shared_limits(mut self, redis: Option<Arc<crate::transport::redis::Redis>>) -> Self {
        if let Some(redis) = redis {
            self.limits = self
                .limits
                .map(|limits| limits.shared(crate::ratelimit::Shared::new(redis)));
        }
        self
    }

    /// This pipeline, making the spans of every request with `tracer` (`--otlp-endpoint`).
    #[must_use]
    pub fn traced(mut self, tracer: Option<Arc<Tracer>>) -> Self {
        self.tracer = tracer;
        self
    }

    /// This pipeline, telling `feed` what becomes of every message while someone watches
    /// (`--ui-listen`).
    #[must_use]
    pub fn watched(mut self, feed: Option<Arc<Feed>>) -> Self {
        self.feed = feed;
        self
    }

    /// Whether requests get spans (`--otlp-endpoint`).
    pub fn is_traced(&self) -> bool {
        self.tracer.is_some()
    }

    /// The rate limits, if any.
    pub fn limits(&self) -> Option<&RateLimits> {
        self.limits.as_ref()
    }

    /// The counters the pipeline's stages update.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Runs `msg` through every stage in order.
    pub async fn process(&self, msg: Message, cx: Context<'_>) -> Verdict {
        // A request the proxy may answer itself: what its duration is measured by.
        let asked = (msg.kind() == Kind::Request && self.metrics.keeps_operations())
            .then(|| (msg.method().cloned(), tokio::time::Instant::now()));
        // A request's spans, and its trace id if the trace can be found somewhere.
        let (call, trace) = match &self.tracer {
            Some(tracer) if msg.kind() == Kind::Request => {
                let call = tracer.request(&msg, cx.direction, cx.session, cx.header_trace);
                let trace = call.is_kept().then(|| call.trace_id());
                if let Some(trace) = &trace {
                    cx.session.update_metadata(|m| m.saw_trace(trace));
                }
                (Some(call), trace)
            }
            _ => (None, None),
        };
        // Watched (`--ui-listen`, a browser open): the feed is told what became of it.
        let feed = self.feed.as_deref().filter(|feed| feed.is_watched());
        // What the stages do becomes events of a recorded request's span, and the feed's.
        let notes =
            (call.as_ref().is_some_and(Call::is_recorded) || feed.is_some()).then(Notes::default);
        let cx = Context {
            notes: notes.as_ref(),
            ..cx
        };
        let tape = cx.session.tape();
        if tape.is_none() && feed.is_none() {
            let (verdict, answered) = self.stages(msg, cx).await;
            return self.finish(verdict, call, answered, asked, cx);
        }
        // Recorded or watched: what was sent, and what became of it.
        let arrived = msg.clone();
        let (verdict, answered) = self.stages(msg, cx).await;
        let trace = trace.or_else(|| answered.as_ref().and_then(trace_of));
        if let Some(tape) = tape {
            record(tape, &arrived, &verdict, cx, trace.as_deref()).await;
        }
        let Some(feed) = feed else {
            return self.finish(verdict, call, answered, asked, cx);
        };
        let answers = answered.as_ref().map(|p| (p.method.clone(), p.sent_at));
        let decisions = notes.as_ref().map(Notes::peek).unwrap_or_default();
        // Decided before the hop's trace context is written in: that is not a change.
        let outcome = match &verdict {
            Verdict::Forward(sent) if sent.raw() == arrived.raw() => Outcome::Forwarded,
            Verdict::Forward(_) => Outcome::Modified,
            Verdict::Respond(_) => Outcome::Answered,
            Verdict::Drop => Outcome::Dropped,
        };
        let verdict = self.finish(verdict, call, answered, asked, cx);
        let watched = Watched {
            arrived: &arrived,
            outcome,
            answers,
            decisions,
            trace: trace.as_deref(),
        };
        watched.publish(feed, &verdict, cx);
        verdict
    }

    async fn stages(&self, msg: Message, cx: Context<'_>) -> (Verdict, Option<Pending>) {
        let (verdict, answered) = self.tracker.track(msg, cx);
        let Verdict::Forward(msg) = verdict else {
            return (verdict, answered);
        };
        if let Some(limits) = &self.limits {
            if let Err(refusal) = limits.admit(&msg, &cx).await {
                return (refusal.verdict(&msg, cx), answered);
            }
        }
        let verdict = match &self.rules {
            Some(rules) => {
                let answers = answered.as_ref().map(|request| &request.method);
                rules.process(msg, cx, answers, &self.metrics).await
            }
            None => Verdict::Forward(msg),
        };
        (verdict, answered)
    }

    /// What follows the stages: a request that goes on is marked sent (after any delay a rule
    /// added) and carries its spans' context; the spans of a request that is answered end.
    fn finish(
        &self,
        verdict: Verdict,
        call: Option<Call>,
        answered: Option<Pending>,
        asked: Option<(Option<Method>, tokio::time::Instant)>,
        cx: Context<'_>,
    ) -> Verdict {
        if let Some(request) = answered {
            if let (Verdict::Forward(answer), true) = (&verdict, self.metrics.keeps_operations()) {
                self.metrics.operation(
                    &request.method,
                    answer,
                    request.sent_at.elapsed(),
                    Some(request.forwarded_at.elapsed()),
                );
            }
            if let Some(mut call) = request.attachment.and_then(|a| a.downcast::<Call>().ok()) {
                noted(&mut call, cx);
                match &verdict {
                    Verdict::Forward(answer) => call.answered(answer, false),
                    Verdict::Respond(_) | Verdict::Drop => call.abandoned("dropped"),
                }
            }
            return verdict;
        }
        if call.is_none() && asked.is_none() {
            // Untraced and unmeasured: nothing to do (the hop's start matters to the
            // durations only).
            return verdict;
        }
        match verdict {
            Verdict::Forward(msg) if msg.kind() == Kind::Request => {
                let Some(id) = msg.id().cloned() else {
                    return Verdict::Forward(msg);
                };
                let pending = cx.session.pending(cx.direction);
                if let Some(mut call) = call {
                    noted(&mut call, cx);
                    let msg = call.outgoing(msg);
                    // Kept with the request until it ends if its answer or its trace id will
                    // be wanted (a new trace not sampled: neither).
                    if call.is_kept() {
                        pending.forwarded(&id, Some(Box::new(call)));
                    } else if asked.is_some() && self.rules.is_some() {
                        pending.forwarded(&id, None);
                    }
                    return Verdict::Forward(msg);
                }
                if self.rules.is_some() {
                    // Measured, and a rule may have delayed it: the hop starts now.
                    pending.forwarded(&id, None);
                }
                Verdict::Forward(msg)
            }
            Verdict::Respond(answer) => {
                if let Some((Some(method), at)) = asked {
                    self.metrics.operation(&method, &answer, at.elapsed(), None);
                }
                if let Some(mut call) = call {
                    noted(&mut call, cx);
                    call.event(proxy_answer_event(&answer), Vec::new());
                    call.answered(&answer, true);
                }
                Verdict::Respond(answer)
            }
            Verdict::Drop => {
                if let Some(mut call) = call {
                    noted(&mut call, cx);
                    call.event("dropped", Vec::new());
                    call.abandoned("dropped");
                }
                Verdict::Drop
            }
            verdict @ Verdict::Forward(_) => verdict,
        }
    }
}

/// Adds the event `what` to the spans of request `id` (travelling `direction` in `session`), if
/// it has spans: what the proxy did for it after the stages (re-established the upstream
/// session, waited for a server process).
pub fn request_event(
    session: &crate::session::Session,
    direction: Direction,
    id: &crate::protocol::RequestId,
    what: &'static str,
) {
    session.pending(direction).with_attachment(id, |kept| {
        if let Some(call) = kept.downcast_mut::<Call>() {
            call.event(what, Vec::new());
        }
    });
}

/// Adds the event `what`, with `details`, to the spans of every request waiting in `session`'s
/// `direction`: what the proxy did for all of them (started or found a server process).
pub fn waiting_event(
    session: &crate::session::Session,
    direction: Direction,
    what: &'static str,
    details: &[crate::telemetry::traces::Attribute],
) {
    session.pending(direction).each_attachment(|kept| {
        if let Some(call) = kept.downcast_mut::<Call>() {
            call.event(what, details.to_vec());
        }
    });
}

/// What the stages noted about the message, as events of `call`'s span.
fn noted(call: &mut Call, cx: Context<'_>) {
    for note in cx.notes.map(Notes::take).unwrap_or_default() {
        call.event(
            note.what,
            note.details
                .into_iter()
                .map(|(name, value)| (name, value.into()))
                .collect(),
        );
    }
}

/// The trace id a request's spans carry, if it has them.
fn trace_of(request: &Pending) -> Option<String> {
    request
        .attachment
        .as_ref()
        .and_then(|a| a.downcast_ref::<Call>())
        .filter(|call| call.is_kept())
        .map(Call::trace_id)
}

/// What the feed is told about a message, gathered before the hop's context was written.
struct Watched<'a> {
    arrived: &'a Message,
    outcome: Outcome,
    /// For an answer: its request's method and when that arrived.
    answers: Option<(Method, tokio::time::Instant)>,
    decisions: Vec<Note>,
    trace: Option<&'a str>,
}

impl Watched<'_> {
    /// Tells `feed`, with `verdict` as it finally is: the message that went on (with its trace
    /// context) or the proxy's answer.
    fn publish(self, feed: &Feed, verdict: &Verdict, cx: Context<'_>) {
        let result = match (self.outcome, verdict) {
            (Outcome::Modified, Verdict::Forward(sent)) => Some(sent),
            (Outcome::Answered, Verdict::Respond(answer)) => Some(answer),
            _ => None,
        };
        feed.publish(Seen {
            session: cx.session.digest_text(),
            direction: cx.direction,
            arrived: self.arrived,
            answers: self
                .answers
                .as_ref()
                .map(|(method, at)| (method.as_str(), *at)),
            outcome: self.outcome,
            result,
            decisions: self
                .decisions
                .into_iter()
                .map(|note| Decision {
                    what: note.what,
                    details: note.details,
                })
                .collect(),
            trace: self.trace,
        });
    }
}

/// The span event for an answer the proxy gave in the receiver's place.
fn proxy_answer_event(answer: &Message) -> &'static str {
    if answer.kind() == Kind::Response {
        return "mocked";
    }
    match answer.error_code().unwrap_or(0) {
        c if c == i64::from(ErrorCode::RateLimited.code()) => "rate_limited",
        c if c == i64::from(ErrorCode::InsufficientScope.code()) => "insufficient_scope",
        c if c == i64::from(ErrorCode::TooManyPendingRequests.code()) => "too_many_pending",
        c if c == i64::from(ErrorCode::ShuttingDown.code()) => "shutting_down",
        _ => "blocked",
    }
}

/// Starts recording `session` as `recording` asks, and links the session to its tape: from then
/// on [`Pipeline::process`] writes the session's messages there.
pub fn start_recording(
    recording: &crate::tape::Recording,
    session: &crate::session::Session,
) -> anyhow::Result<crate::tape::Recorder> {
    let digest = session.id().digest().to_string();
    let recorder = recording.start(&crate::tape::Recorded {
        id: session.id().as_str(),
        digest: &digest,
        client_transport: session.transport().as_str(),
        upstream: session.upstream(),
    })?;
    session.record_to(recorder.clone());
    Ok(recorder)
}

/// A server process took `session` over (its first, one started again, or a shared one): its
/// pid and the session's count of processes go into the session's record and onto its tape.
pub async fn server_started(session: &crate::session::Session, pid: Option<u32>, generation: u64) {
    let Some(pid) = pid else { return };
    session.update_metadata(|m| {
        m.server_pid = Some(pid);
        m.server_generation = Some(generation);
    });
    if let Some(tape) = session.tape() {
        if let Err(e) = tape.server(pid, generation).await {
            tape.failed(&e);
        }
    }
}

/// Ends `session`'s tape, if it has one, with the reason the session ended.
pub async fn end_recording(session: &crate::session::Session) {
    if let Some(tape) = session.tape() {
        let reason = match session.state() {
            crate::session::State::Closed(reason) => reason.as_str(),
            _ => crate::session::EndReason::Closed.as_str(),
        };
        if let Err(e) = tape.end(reason).await {
            tape.failed(&e);
        }
    }
}

/// Writes what happened to `msg` to the session's tape: the message as it went on (as rules
/// left it), or as it came when it went no further, and an answer the proxy gave in its place.
/// Once the `initialize` answer has gone by, the session's metadata too. A tape that can no longer be written is logged once
/// and the session goes on unrecorded.
async fn record(
    tape: &crate::tape::Recorder,
    msg: &Message,
    verdict: &Verdict,
    cx: Context<'_>,
    trace: Option<&str>,
) {
    let session = cx.session.id().as_str();
    let carried = match verdict {
        Verdict::Forward(forwarded) => forwarded,
        Verdict::Respond(_) | Verdict::Drop => msg,
    };
    let mut result = tape
        .message(cx.direction, session, carried, cx.transport, trace)
        .await;
    if let (Ok(()), Verdict::Respond(answer)) = (&result, verdict) {
        result = tape
            .message(cx.direction.reverse(), session, answer, &Wire::NONE, trace)
            .await;
    }
    if let (Ok(()), Direction::ServerToClient, true) = (
        &result,
        cx.direction,
        msg.is_response() && tape.wants_meta(),
    ) {
        // Known once the tracker has read the `initialize` answer (nothing is copied before).
        let meta = cx.session.read_metadata(|m| {
            m.server_info.as_ref().map(|server| crate::tape::Meta {
                protocol_version: m.protocol_version.clone(),
                client_info: m
                    .client_info
                    .as_ref()
                    .map(crate::session::Declared::to_value),
                server_info: Some(server.to_value()),
                principal: m.principal.clone(),
            })
        });
        if let Some(meta) = meta {
            result = tape.meta(meta).await;
        }
    }
    if let Err(e) = result {
        tape.failed(&e);
    }
}
