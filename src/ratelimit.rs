//! Rate limiting (`--rate-limit`, the config file's `rate_limit`, docs/rate-limits.md): the
//! pipeline's second stage, after session tracking and before the rules.
//!
//! - [`spec`]: a limit as written (`client=10/s,burst=20`).
//! - [`store`]: the bounded per-key state of a keyed limit.
//!
//! Each limit is governor's GCRA with a rate and a burst, over one bucket (`global`) or one per
//! session, client, method or tool. Only what a client sends counts: its requests and
//! notifications (responses, to the server's own requests, never do; nor do
//! `notifications/initialized` and `notifications/cancelled`, whose loss would break the
//! session rather than slow it). Limits are checked narrowest first (tool, method, session,
//! client, global) and the first to refuse ends the check.
//!
//! A refused request is answered with the `rate_limited` error (`data.retryAfterMs`) and not
//! forwarded; over HTTP the answer is a 429 with `Retry-After`, `RateLimit-Policy` and
//! `RateLimit` (see [`Refusal::headers`]). A refused notification is dropped and counted.

mod shared;
pub mod spec;
mod store;

use std::hash::{BuildHasher, RandomState};
use std::sync::OnceLock;
use std::time::Duration;
use tokio::time::Instant;

use governor::clock::{Clock, FakeRelativeClock};
use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use http::{HeaderMap, HeaderName, HeaderValue};
use prometheus_client::metrics::counter::Counter;
use serde_json::Value;

pub use shared::Shared;
pub use spec::{LimitSpec, Per, Rate};
pub use store::Store;

use crate::protocol::error::{ErrorCode, ProxyError};
use crate::protocol::{Direction, Kind, Message, Method};
use crate::session::Session;
use crate::stage::{Client, Context, Verdict};
use crate::telemetry::Metrics;

/// A `rate_limited` error's code, searched for in answers.
static RATE_LIMITED: crate::protocol::needle::Needle =
    crate::protocol::needle::Needle::new(b"\"rate_limited\"");

/// The limits of one proxy.
#[derive(Debug)]
pub struct RateLimits {
    /// Narrowest first.
    limits: Vec<Limit>,
    /// Where their state is kept for the whole cluster (`--redis-url`), if it is.
    shared: Option<Shared>,
}

/// One limit and its state.
#[derive(Debug)]
pub struct Limit {
    spec: LimitSpec,
    bucket: Bucket,
    /// Seeds key hashes (a sender cannot aim collisions).
    hasher: RandomState,
    allowed: Counter,
    refused: Counter,
    dropped: Counter,
}

#[derive(Debug)]
enum Bucket {
    One(RateLimiter<NotKeyed, InMemoryState, LimitClock, NoOpMiddleware<Nanos>>),
    Keyed(RateLimiter<u64, Store, LimitClock, NoOpMiddleware<Nanos>>),
}

/// The clock limits run on: the monotonic clock, or one moved by hand (tests, and `rules test`,
/// which replays a tape's times).
#[derive(Debug, Clone, Default)]
pub enum LimitClock {
    /// Real time.
    #[default]
    Monotonic,
    /// Time that passes only when it is advanced.
    Manual(FakeRelativeClock),
}

impl Clock for LimitClock {
    type Instant = Nanos;

    fn now(&self) -> Nanos {
        static EPOCH: OnceLock<Instant> = OnceLock::new();
        match self {
            Self::Monotonic => Nanos::from(EPOCH.get_or_init(Instant::now).elapsed()),
            Self::Manual(clock) => clock.now(),
        }
    }
}

/// What a limit reads of a message besides the message.
#[derive(Debug)]
pub struct Sender<'a> {
    /// Its session.
    pub session: &'a Session,
    /// Who sent it.
    pub client: Client<'a>,
    /// The tool a `tools/call` names, once read (`Some(None)`: read, none).
    #[allow(clippy::option_option)] // Not read yet; read, and there is none; read.
    pub tool: Option<Option<String>>,
}

impl<'a> Sender<'a> {
    /// The sender of the message `cx` is about (its tool not read yet).
    fn of(cx: &Context<'a>) -> Self {
        Self {
            session: cx.session,
            client: cx.client,
            tool: None,
        }
    }
}

impl RateLimits {
    /// The limits `specs`, counted in `metrics`, on the monotonic clock.
    pub fn new(specs: &[LimitSpec], metrics: &Metrics) -> Self {
        Self::with_clock(specs, metrics, &LimitClock::Monotonic)
    }

    /// The limits `specs` on `clock`.
    pub fn with_clock(specs: &[LimitSpec], metrics: &Metrics, clock: &LimitClock) -> Self {
        let mut limits: Vec<Limit> = specs
            .iter()
            .map(|spec| Limit::with_clock(spec.clone(), Some(metrics), clock.clone()))
            .collect();
        limits.sort_by_key(|l| l.spec.per.narrowness());
        Self {
            limits,
            shared: None,
        }
    }

    /// These limits, kept in `shared` for every instance of the cluster (each instance's own
    /// state is used while it cannot be reached).
    #[must_use]
    pub fn shared(self, shared: Shared) -> Self {
        Self {
            shared: Some(shared),
            ..self
        }
    }
    /// Whether there are no limits.
    pub fn is_empty(&self) -> bool {
        self.limits.is_empty()
    }

    /// The limits, narrowest first.
    pub fn limits(&self) -> impl Iterator<Item = &LimitSpec> {
        self.limits.iter().map(|l| &l.spec)
    }

    /// Keys a keyed limit holds now (`None` for `global` or an unknown name).
    pub fn keys(&self, name: &str) -> Option<usize> {
        self.limits
            .iter()
            .find(|l| l.spec.name == name)
            .and_then(Limit::keys)
    }

    /// Forgets every key whose time has passed and returns the memory (a keyed limit also does
    /// this a little at a time as new keys come).
    pub fn prune(&self) {
        for limit in &self.limits {
            limit.prune();
        }
    }

    /// Counts `msg` against every limit it falls under; the first that refuses says so. Only
    /// a client's requests and notifications count (see the module's documentation).
    pub fn check(&self, msg: &Message, cx: &Context<'_>) -> Result<(), Refusal> {
        if !self.counts(msg, cx) {
            return Ok(());
        }
        let mut sender = Sender::of(cx);
        self.limits
            .iter()
            .try_for_each(|limit| limit.check(msg, &mut sender))
    }

    /// Whether `msg` counts toward limits at all.
    fn counts(&self, msg: &Message, cx: &Context<'_>) -> bool {
        cx.direction == Direction::ClientToServer
            && !self.limits.is_empty()
            && !matches!(msg.method(), Some(Method::Initialized | Method::Cancelled))
    }

    /// As [`Self::check`], against the cluster's shared state when the limits are shared (one
    /// round trip to Redis), else (or while Redis does not answer) this instance's own.
    pub async fn admit(&self, msg: &Message, cx: &Context<'_>) -> Result<(), Refusal> {
        let Some(shared) = &self.shared else {
            return self.check(msg, cx);
        };
        if !self.counts(msg, cx) {
            return Ok(());
        }
        let mut sender = Sender::of(cx);
        let covered: Vec<usize> = (0..self.limits.len())
            .filter(|&i| self.limits[i].covers(msg, &mut sender))
            .collect();
        let parts: Vec<shared::Part> = covered
            .iter()
            .map(|&index| {
                let limit = &self.limits[index];
                let spec = &limit.spec;
                shared::Part {
                    index,
                    key: shared::bucket_key(
                        &spec.name,
                        spec.per.as_str(),
                        &limit.key(msg, &sender),
                    ),
                    interval_us: spec.rate.interval_us(),
                    burst: spec.burst.get(),
                }
            })
            .collect();
        match shared.check(&parts).await {
            Some(None) => {
                for &i in &covered {
                    self.limits[i].allowed.inc();
                }
                Ok(())
            }
            Some(Some((refusing, wait))) => self.limits[refusing].decided(msg.kind(), Err(wait)),
            None => self.check(msg, cx),
        }
    }
}

impl Limit {
    /// A limit on the monotonic clock, counted nowhere but in what it answers (a rule's
    /// `rate_limit:`, counted as the rule's actions).
    pub fn standalone(spec: LimitSpec) -> Self {
        Self::with_clock(spec, None, LimitClock::Monotonic)
    }

    /// `spec` on `clock`, counted in `metrics` if given.
    pub fn with_clock(spec: LimitSpec, metrics: Option<&Metrics>, clock: LimitClock) -> Self {
        // `Rate::parse` keeps the interval at 1 ns or more.
        let quota = Quota::with_period(spec.rate.period / spec.rate.count.get())
            .unwrap_or_else(|| Quota::per_second(spec.rate.count))
            .allow_burst(spec.burst);
        let bucket = match spec.per {
            Per::Global => Bucket::One(RateLimiter::direct_with_clock(quota, clock)),
            _ => Bucket::Keyed(RateLimiter::new(
                quota,
                Store::new(
                    spec.max_keys,
                    quota.replenish_interval().into(),
                    metrics.map_or_else(Counter::default, |m| m.rate_limit_evictions(&spec.name)),
                    metrics.map_or_else(Default::default, |m| m.rate_limit_keys(&spec.name)),
                ),
                clock,
            )),
        };
        let counter = |outcome| {
            metrics.map_or_else(Counter::default, |m| {
                m.rate_limit_counter(&spec.name, spec.per.as_str(), outcome)
            })
        };
        Self {
            allowed: counter("allowed"),
            refused: counter("refused"),
            dropped: counter("dropped"),
            hasher: RandomState::new(),
            bucket,
            spec,
        }
    }

    /// What it is.
    pub fn spec(&self) -> &LimitSpec {
        &self.spec
    }

    /// Keys it holds now (`None` if it is not keyed).
    pub fn keys(&self) -> Option<usize> {
        match &self.bucket {
            Bucket::One(_) => None,
            Bucket::Keyed(limiter) => Some(limiter.len()),
        }
    }

    /// Forgets every key whose time has passed.
    pub fn prune(&self) {
        if let Bucket::Keyed(limiter) = &self.bucket {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }

    /// Counts `msg` if it falls under this limit: a request or notification whose method
    /// (and tool) match the limit's conditions, and for a per-tool limit, a `tools/call`.
    pub fn check(&self, msg: &Message, sender: &mut Sender<'_>) -> Result<(), Refusal> {
        if !self.covers(msg, sender) {
            return Ok(());
        }
        let outcome = match &self.bucket {
            Bucket::One(limiter) => limiter
                .check()
                .map_err(|n| n.wait_time_from(limiter.clock().now())),
            Bucket::Keyed(limiter) => {
                let key = match self.key(msg, sender) {
                    Key::Global => self.hasher.hash_one(()),
                    Key::Session(id) => self.hasher.hash_one(id),
                    Key::Client(Client::Local) => self.hasher.hash_one(0_u8),
                    Key::Client(Client::Address(ip)) => self.hasher.hash_one(ip),
                    Key::Client(Client::Subject(principal)) => self.hasher.hash_one(&principal.id),
                    Key::Method(method) | Key::Tool(method) => self.hasher.hash_one(method),
                };
                limiter
                    .check_key(&key)
                    .map_err(|n| n.wait_time_from(limiter.clock().now()))
            }
        };
        self.decided(msg.kind(), outcome)
    }

    /// Whether `msg` falls under this limit: a request or notification whose method (and
    /// tool) match its conditions, and for a per-tool limit, a `tools/call`. Reads the tool
    /// into `sender` if it needs it.
    fn covers(&self, msg: &Message, sender: &mut Sender<'_>) -> bool {
        let (Some(method), Kind::Request | Kind::Notification) = (msg.method(), msg.kind()) else {
            return false;
        };
        let spec = &self.spec;
        if !spec.methods.is_empty() && !spec.methods.iter().any(|g| g.is_match(method.as_str())) {
            return false;
        }
        if !spec.tools.is_empty() || spec.per == Per::Tool {
            let Some(name) = sender
                .tool
                .get_or_insert_with(|| tool_name(msg, method))
                .as_deref()
            else {
                return false;
            };
            if !spec.tools.is_empty()
                && name != UNREADABLE_TOOL
                && !spec.tools.iter().any(|g| g.is_match(name))
            {
                return false;
            }
        }
        true
    }

    /// What `msg`, which falls under this limit, counts against.
    fn key<'s>(&self, msg: &'s Message, sender: &'s Sender<'_>) -> Key<'s> {
        match self.spec.per {
            Per::Global => Key::Global,
            Per::Session => Key::Session(sender.session.id().as_str()),
            Per::Client => Key::Client(sender.client),
            Per::Method => Key::Method(msg.method().map_or("", Method::as_str)),
            Per::Tool => Key::Tool(
                sender
                    .tool
                    .as_ref()
                    .and_then(Option::as_deref)
                    .unwrap_or(UNREADABLE_TOOL),
            ),
        }
    }

    /// Counts what the limit decided about a message of `kind` (`Err`: how long until it
    /// would have passed).
    fn decided(&self, kind: Kind, outcome: Result<(), Duration>) -> Result<(), Refusal> {
        match outcome {
            Ok(()) => {
                self.allowed.inc();
                Ok(())
            }
            Err(retry_after) => {
                if kind == Kind::Notification {
                    self.dropped.inc();
                } else {
                    self.refused.inc();
                }
                Err(Refusal::new(&self.spec, retry_after))
            }
        }
    }
}

/// What a message counts against in a limit: the one bucket, or the bucket of its key.
#[derive(Debug, Clone, Copy)]
enum Key<'a> {
    Global,
    Session(&'a str),
    Client(Client<'a>),
    Method(&'a str),
    Tool(&'a str),
}

/// What a `tools/call` whose name cannot be read is counted as: a tool every tool condition
/// takes in, so that no limit is dodged by being unreadable (fails closed). No MCP tool is
/// named by the empty string.
const UNREADABLE_TOOL: &str = "";

/// The tool a `tools/call` names, as the server will read it (`None` for anything else).
fn tool_name(msg: &Message, method: &Method) -> Option<String> {
    if *method != Method::ToolsCall {
        return None;
    }
    msg.called_tool()
        .unwrap_or_else(|()| Some(UNREADABLE_TOOL.to_owned()))
}

/// A limit said no.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The limit's name.
    pub limit: String,
    /// What it counts separately.
    pub per: Per,
    /// Its rate.
    pub rate: Rate,
    /// Its burst.
    pub burst: u32,
    /// When the next message would pass.
    pub retry_after: Duration,
}

impl Refusal {
    /// A limit refused `msg`: a request is answered with the `rate_limited` error (and no longer
    /// awaits an answer from the receiver); a notification is dropped.
    pub fn verdict(&self, msg: &Message, cx: Context<'_>) -> Verdict {
        cx.note("rate_limited", || {
            vec![
                ("shadowcat.limit", self.limit.clone()),
                (
                    "shadowcat.retry_after_ms",
                    self.retry_after_ms().to_string(),
                ),
            ]
        });
        if let (Kind::Request, Some(id)) = (msg.kind(), msg.id()) {
            cx.session.pending(cx.direction).remove(id);
            tracing::debug!(session = %cx.session.id().digest(), limit = %self.limit, retry_after_ms = self.retry_after_ms(), "refused a request over a rate limit");
            return Verdict::Respond(Message::error_response(Some(id), &self.error()));
        }
        tracing::debug!(session = %cx.session.id().digest(), limit = %self.limit, "dropped a notification over a rate limit");
        Verdict::Drop
    }

    fn new(spec: &LimitSpec, retry_after: Duration) -> Self {
        Self {
            limit: spec.name.clone(),
            per: spec.per,
            rate: spec.rate,
            burst: spec.burst.get(),
            retry_after,
        }
    }

    /// Milliseconds until the next message would pass, rounded up.
    pub fn retry_after_ms(&self) -> u64 {
        u64::try_from(self.retry_after.as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX)
    }

    /// The `rate_limited` error a refused request is answered with.
    pub fn error(&self) -> ProxyError {
        ProxyError::new(
            ErrorCode::RateLimited,
            format!(
                "rate limit {:?} ({} per {}, burst {}) exceeded; retry in {} ms",
                self.limit,
                self.rate,
                self.per.as_str(),
                self.burst,
                self.retry_after_ms()
            ),
        )
        .with("retryAfterMs", self.retry_after_ms())
        .with("limit", self.limit.clone())
        .with("per", self.per.as_str())
        .with("rate", self.rate.to_string())
        .with("burst", self.burst)
    }

    /// The refusal an answer carries, if it is a `rate_limited` error (the HTTP side turns it
    /// into a 429).
    pub fn from_answer(answer: &Message) -> Option<Self> {
        if answer.kind() != Kind::Error || !RATE_LIMITED.is_in(answer.raw()) {
            return None;
        }
        let body: Value = serde_json::from_slice(answer.raw()).ok()?;
        let data = body.get("error")?.get("data")?;
        if data.get("shadowcat")? != "rate_limited" {
            return None;
        }
        let per = data.get("per")?.as_str()?;
        Some(Self {
            limit: data.get("limit")?.as_str()?.to_owned(),
            per: Per::ALL.into_iter().find(|p| p.as_str() == per)?,
            rate: Rate::parse(data.get("rate")?.as_str()?).ok()?,
            burst: u32::try_from(data.get("burst")?.as_u64()?).ok()?,
            retry_after: Duration::from_millis(data.get("retryAfterMs")?.as_u64()?),
        })
    }

    /// The 429's headers: `Retry-After` (whole seconds, rounded up), and the IETF draft's
    /// `RateLimit-Policy` (the limit: `q` per `w` seconds) and `RateLimit` (`r` left, full
    /// again in `t` seconds).
    pub fn headers(&self) -> HeaderMap {
        let secs = self.retry_after.as_secs() + u64::from(self.retry_after.subsec_nanos() > 0);
        let secs = secs.max(1);
        let mut headers = HeaderMap::new();
        let mut put = |name: HeaderName, value: String| {
            if let Ok(value) = HeaderValue::from_str(&value) {
                headers.insert(name, value);
            }
        };
        put(http::header::RETRY_AFTER, secs.to_string());
        put(
            HeaderName::from_static("ratelimit-policy"),
            format!(
                "\"{}\";q={};w={}",
                self.limit,
                self.rate.count,
                self.rate.window_secs()
            ),
        );
        put(
            HeaderName::from_static("ratelimit"),
            format!("\"{}\";r=0;t={secs}", self.limit),
        );
        headers
    }
}

#[cfg(test)]
mod tests;
