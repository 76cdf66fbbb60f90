//! Observability: tracing setup and the proxy's counters.
//!
//! Logs go to stderr or a file, never to stdout (which carries MCP in stdio mode), through a
//! background writer thread: a client that doesn't drain our stderr must not stall the proxy, so
//! when that writer's buffer is full, log lines are dropped rather than waited for. Counters are
//! atomics, each changed in exactly one place per event, so they cannot drift.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};

use tracing_subscriber::EnvFilter;

mod collectors;
pub mod feed;
pub mod traces;
pub mod traffic;

use crate::protocol::Direction;
use crate::transport::child::ChildCounters;
use crate::transport::serve::ConnectionCounters;

/// What watches the traffic besides the counters: the trace exporter (`--otlp-endpoint`) and
/// the live feed (`--ui-listen`, `--traffic`). Each is off (`None`) unless asked for.
#[derive(Debug, Clone, Default)]
pub struct Observers {
    /// Makes and exports every request's spans.
    pub tracer: Option<Arc<traces::Tracer>>,
    /// Publishes every message to whoever watches.
    pub feed: Option<Arc<feed::Feed>>,
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Log lines buffered for the background writer before new ones are dropped. The buffer is
/// allocated up front: tracing-appender's default (128,000 lines) costs about 4 MiB of RSS.
pub const LOG_BUFFER_LINES: usize = 4096;

fn log_writer() -> tracing_appender::non_blocking::NonBlockingBuilder {
    tracing_appender::non_blocking::NonBlockingBuilder::default()
        .buffered_lines_limit(LOG_BUFFER_LINES)
        .lossy(true)
        .thread_name("shadowcat-log")
}

/// The background log writer, once logging is set up: the traffic view (`--traffic`) writes
/// through it too, a batch of lines at a time.
static LOG_OUT: std::sync::OnceLock<tracing_appender::non_blocking::NonBlocking> =
    std::sync::OnceLock::new();

/// The background log writer, if logging is set up.
pub fn log_out() -> Option<tracing_appender::non_blocking::NonBlocking> {
    LOG_OUT.get().cloned()
}

/// Keeps the background log writer running; dropping it flushes what is buffered.
pub type LogGuard = tracing_appender::non_blocking::WorkerGuard;

/// Installs the global tracing subscriber. Keep the guard until the program ends.
pub fn init_tracing(
    filter: &str,
    format: LogFormat,
    file: Option<&Path>,
) -> anyhow::Result<LogGuard> {
    let filter = EnvFilter::try_new(filter)
        .map_err(|e| anyhow::anyhow!("invalid --log-level {filter:?}: {e}"))?;
    let (writer, guard): (tracing_appender::non_blocking::NonBlocking, _) = match file {
        Some(path) => {
            let file = crate::transport::files::open_private_append(path)
                .map_err(|e| anyhow::anyhow!("cannot open log file {}: {e}", path.display()))?;
            // The servers' stderr goes there too (ours may be hidden: that is why a file).
            crate::transport::child::log_stderr();
            log_writer().finish(file)
        }
        None => log_writer().finish(std::io::stderr()),
    };
    // The traffic view writes its lines in batches through the same writer.
    let _ = LOG_OUT.set(writer.clone());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    let result = match format {
        LogFormat::Text => builder
            .with_ansi(file.is_none() && std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    result.map_err(|e| anyhow::anyhow!("cannot install the logger: {e}"))?;
    Ok(guard)
}

/// Counters for one proxy process.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Interceptor rule actions, by rule, action and mode.
    rules: Family<RuleLabels, Counter>,
    /// Rate-limit decisions, by limit, key kind and outcome.
    rate_limits: Family<RateLimitLabels, Counter>,
    /// Keys a keyed limit forgot before their time (it was full), by limit.
    rate_limit_evictions: Family<LimitLabels, Counter>,
    /// Keys a keyed limit holds, by limit.
    rate_limit_keys: Family<LimitLabels, Gauge>,
    /// `mcp.server.operation.duration`, `mcp.client.operation.duration`.
    operations: Operations,
    forwarded: [AtomicU64; 2],
    answered_by_proxy: [AtomicU64; 2],
    malformed: [AtomicU64; 2],
    oversized: [AtomicU64; 2],
    unmatched_responses: [AtomicU64; 2],
}

/// A point-in-time copy of [`Metrics`], summed over both directions where that reads better.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Messages forwarded client→server.
    pub forwarded_to_server: u64,
    /// Messages forwarded server→client.
    pub forwarded_to_client: u64,
    /// Messages the proxy answered itself (errors), both directions.
    pub answered_by_proxy: u64,
    /// Frames that were not valid JSON-RPC, both directions.
    pub malformed: u64,
    /// Frames over the size limit, both directions.
    pub oversized: u64,
    /// Responses that matched no pending request, both directions.
    pub unmatched_responses: u64,
}

/// For people (logs): `12 messages to the server, 12 to the client`, then what the proxy
/// answered, refused or could not match, if anything.
impl std::fmt::Display for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} messages to the server, {} to the client",
            self.forwarded_to_server, self.forwarded_to_client
        )?;
        for (what, n) in [
            ("answered by shadowcat", self.answered_by_proxy),
            ("malformed", self.malformed),
            ("oversized", self.oversized),
            ("unmatched answers", self.unmatched_responses),
        ] {
            if n > 0 {
                write!(f, ", {n} {what}")?;
            }
        }
        Ok(())
    }
}

fn slot(direction: Direction) -> usize {
    match direction {
        Direction::ClientToServer => 0,
        Direction::ServerToClient => 1,
    }
}

fn bump(counters: &[AtomicU64; 2], direction: Direction) {
    counters[slot(direction)].fetch_add(1, Ordering::Relaxed);
}

/// The buckets the MCP semantic conventions give for operation and session durations, seconds.
pub const MCP_DURATION_BUCKETS: [f64; 14] = [
    0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

fn mcp_histogram() -> Histogram {
    Histogram::new(MCP_DURATION_BUCKETS)
}

/// The semantic conventions' operation durations, kept only while something exposes them
/// (the gateway's `/metrics`): a proxy with no scraper pays one flag read per answer.
#[derive(Debug)]
struct Operations {
    on: std::sync::atomic::AtomicBool,
    /// From a request's arrival to its answer leaving (we are the server).
    server: Family<OperationLabels, Histogram, fn() -> Histogram>,
    /// From a request's hop on to its receiver's answer (we are the client).
    client: Family<OperationLabels, Histogram, fn() -> Histogram>,
}

impl Default for Operations {
    fn default() -> Self {
        Self {
            on: std::sync::atomic::AtomicBool::new(false),
            server: Family::new_with_constructor(mcp_histogram),
            client: Family::new_with_constructor(mcp_histogram),
        }
    }
}

/// `mcp_method_name` (known methods, else `other`) and `error_type` (a JSON-RPC code, or
/// `tool_error`, or empty for success): both of bounded cardinality.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OperationLabels {
    /// The method.
    pub mcp_method_name: &'static str,
    /// What went wrong, if anything.
    pub error_type: &'static str,
}

/// The `error_type` label of an answer: `tool_error` for a tool result with `isError: true`,
/// the code of a JSON-RPC error the proxy or the specification defines, `other` for any other
/// code, empty for success.
pub fn error_label(answer: &crate::protocol::Message) -> &'static str {
    use crate::protocol::{ErrorCode, Kind};
    match answer.kind() {
        Kind::Error => {
            let Some(code) = answer.error_code() else {
                return "other";
            };
            ErrorCode::ALL
                .iter()
                .find(|c| i64::from(c.code()) == code)
                .map_or("other", |c| c.code_text())
        }
        Kind::Response if answer.is_tool_error() => "tool_error",
        _ => "",
    }
}

impl Metrics {
    /// Starts keeping the operation durations (something will expose them).
    pub fn keep_operations(&self) {
        self.operations.on.store(true, Ordering::Relaxed);
    }

    /// Whether operation durations are kept.
    pub fn keeps_operations(&self) -> bool {
        self.operations.on.load(Ordering::Relaxed)
    }

    /// A request of `method` was answered by `answer`: `served` after it arrived, `hop` after
    /// it went on to its receiver (`None`: the proxy answered in the receiver's place).
    pub fn operation(
        &self,
        method: &crate::protocol::Method,
        answer: &crate::protocol::Message,
        served: std::time::Duration,
        hop: Option<std::time::Duration>,
    ) {
        if !self.operations.on.load(Ordering::Relaxed) {
            return;
        }
        let labels = OperationLabels {
            mcp_method_name: method.label(),
            error_type: error_label(answer),
        };
        self.operations
            .server
            .get_or_create(&labels)
            .observe(served.as_secs_f64());
        if let Some(hop) = hop {
            self.operations
                .client
                .get_or_create(&labels)
                .observe(hop.as_secs_f64());
        }
    }

    /// Rule `rule` took (or, in audit mode, would have taken) `action` on a message.
    pub fn rule_fired(&self, rule: &str, action: &'static str, audit: bool) {
        self.rules
            .get_or_create(&RuleLabels {
                rule: rule.to_owned(),
                action,
                mode: if audit { "audit" } else { "enforce" },
            })
            .inc();
    }

    /// How often rule `rule` took `action` in `mode` (`enforce` or `audit`).
    pub fn rule_count(&self, rule: &str, action: &'static str, mode: &'static str) -> u64 {
        self.rules
            .get_or_create(&RuleLabels {
                rule: rule.to_owned(),
                action,
                mode,
            })
            .get()
    }

    /// The rule counters, for a registry.
    pub fn rule_counters(&self) -> Family<RuleLabels, Counter> {
        self.rules.clone()
    }

    /// The counter of `outcome` (`allowed`, `refused`, `dropped`) for rate limit `limit`, which
    /// is per `key`.
    pub fn rate_limit_counter(
        &self,
        limit: &str,
        key: &'static str,
        outcome: &'static str,
    ) -> Counter {
        self.rate_limits
            .get_or_create(&RateLimitLabels {
                limit: limit.to_owned(),
                key,
                outcome,
            })
            .clone()
    }

    /// The eviction counter of rate limit `limit`.
    pub fn rate_limit_evictions(&self, limit: &str) -> Counter {
        self.rate_limit_evictions
            .get_or_create(&LimitLabels {
                limit: limit.to_owned(),
            })
            .clone()
    }

    /// The key gauge of rate limit `limit`.
    pub fn rate_limit_keys(&self, limit: &str) -> Gauge {
        self.rate_limit_keys
            .get_or_create(&LimitLabels {
                limit: limit.to_owned(),
            })
            .clone()
    }

    /// A message was forwarded in `direction`.
    pub fn forwarded(&self, direction: Direction) {
        bump(&self.forwarded, direction);
    }

    /// The proxy answered a message travelling in `direction` itself.
    pub fn answered_by_proxy(&self, direction: Direction) {
        bump(&self.answered_by_proxy, direction);
    }

    /// A malformed frame arrived travelling in `direction`.
    pub fn malformed(&self, direction: Direction) {
        bump(&self.malformed, direction);
    }

    /// An over-long frame arrived travelling in `direction`.
    pub fn oversized(&self, direction: Direction) {
        bump(&self.oversized, direction);
    }

    /// A response travelling in `direction` matched no pending request.
    pub fn unmatched_response(&self, direction: Direction) {
        bump(&self.unmatched_responses, direction);
    }

    /// Reads every counter.
    pub fn snapshot(&self) -> Snapshot {
        let sum = |c: &[AtomicU64; 2]| c[0].load(Ordering::Relaxed) + c[1].load(Ordering::Relaxed);
        Snapshot {
            forwarded_to_server: self.forwarded[0].load(Ordering::Relaxed),
            forwarded_to_client: self.forwarded[1].load(Ordering::Relaxed),
            answered_by_proxy: sum(&self.answered_by_proxy),
            malformed: sum(&self.malformed),
            oversized: sum(&self.oversized),
            unmatched_responses: sum(&self.unmatched_responses),
        }
    }
}

/// The gateway's Prometheus metrics: request counts and latencies recorded as requests finish,
/// plus the session manager's and pipeline's own counters read at scrape time (so there is one
/// source of truth for each number).
#[derive(Debug)]
pub struct GatewayMetrics {
    registry: prometheus_client::registry::Registry,
    requests: Family<RequestLabels, Counter>,
    durations: Family<MethodLabels, Histogram>,
    upstream_errors: UpstreamErrors,
    auth_refusals: Family<ReasonLabels, Counter>,
    adopted: Counter,
    forwarded: Counter,
    connections: Arc<ConnectionCounters>,
    children: Arc<ChildCounters>,
}

/// Why the gateway's door refused a request (`shadowcat_auth_refusals`): `missing` (no
/// token), `invalid_token`, `insufficient_scope` (an `--auth-scope` the token lacks),
/// `step_up` (a rule's `require_scope:`), `foreign_session` (another principal's session),
/// `exchange` (the authorization server would not exchange the token for the upstream's).
pub const AUTH_REFUSAL_REASONS: [&str; 6] = [
    "missing",
    "invalid_token",
    "insufficient_scope",
    "step_up",
    "foreign_session",
    "exchange",
];

/// `reason` of a refusal.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    /// One of [`AUTH_REFUSAL_REASONS`].
    pub reason: &'static str,
}

/// `method` and `outcome` (`ok`, `error`: the answer was a JSON-RPC error).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// The request's method (MCP's names; anything else is `other`).
    pub method: String,
    /// `ok` or `error`.
    pub outcome: &'static str,
}

/// `rule`, `action`, `mode`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RuleLabels {
    /// The rule's name.
    pub rule: String,
    /// What it did: `block`, `mock`, `modify`, `delay`, `tag`, `log`, `hide`.
    pub action: &'static str,
    /// `enforce` (it acted) or `audit` (it would have).
    pub mode: &'static str,
}

/// `limit`, `key`, `outcome`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RateLimitLabels {
    /// The limit's name.
    pub limit: String,
    /// What it is per: `global`, `session`, `client`, `method`, `tool`.
    pub key: &'static str,
    /// `allowed`, `refused` (a request, answered with an error) or `dropped` (a notification).
    pub outcome: &'static str,
}

/// `limit`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LimitLabels {
    /// The limit's name.
    pub limit: String,
}

/// `method`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabels {
    /// The request's method.
    pub method: String,
}

/// The kinds of upstream failure `/metrics` counts.
pub const UPSTREAM_ERROR_KINDS: [&str; 4] =
    ["unreachable", "http_status", "invalid_response", "exited"];

/// Upstream failures by kind (`shadowcat_upstream_errors`); a handle that counts into the
/// gateway's metrics, or into nothing anyone reads (the default, where no metrics are served).
#[derive(Debug, Clone, Default)]
pub struct UpstreamErrors(Family<KindLabels, Counter>);

impl UpstreamErrors {
    /// Counts an upstream failure of `kind`.
    pub fn count(&self, kind: &'static str) {
        self.0.get_or_create(&KindLabels { kind }).inc();
    }
}

/// `kind` of upstream error.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    /// `unreachable`, `http_status`, `invalid_response` or `exited`.
    pub kind: &'static str,
}

/// The counters of who comes in: refusals at the door (`--auth-*`), sessions adopted from
/// another instance of the cluster, and requests passed to the instance that owns their session.
fn door_counters(
    registry: &mut prometheus_client::registry::Registry,
) -> (Family<ReasonLabels, Counter>, Counter, Counter) {
    let auth_refusals = Family::<ReasonLabels, Counter>::default();
    registry.register(
        "shadowcat_auth_refusals",
        "Requests refused at the door (--auth-*): missing, invalid_token, insufficient_scope, step_up, foreign_session, exchange",
        auth_refusals.clone(),
    );
    for reason in AUTH_REFUSAL_REASONS {
        auth_refusals
            .get_or_create(&ReasonLabels { reason })
            .inc_by(0);
    }
    let adopted = Counter::default();
    registry.register(
        "shadowcat_cluster_sessions_adopted",
        "Sessions another instance of the cluster opened, served here from their sealed id (--cluster-key-file)",
        adopted.clone(),
    );
    let forwarded = Counter::default();
    registry.register(
        "shadowcat_cluster_requests_forwarded",
        "Requests passed to the instance of the cluster that owns their session (its server is a process there)",
        forwarded.clone(),
    );
    (auth_refusals, adopted, forwarded)
}

impl GatewayMetrics {
    /// Metrics reading the live counters of `sessions` and `pipeline`.
    pub fn new(sessions: Arc<crate::session::SessionManager>, pipeline: Arc<Metrics>) -> Self {
        let mut registry = prometheus_client::registry::Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "shadowcat_requests",
            "Client requests answered, by method and outcome",
            requests.clone(),
        );
        let durations = Family::<MethodLabels, Histogram>::new_with_constructor(|| {
            // 100 µs .. ~105 s.
            Histogram::new(exponential_buckets(0.0001, 4.0, 11))
        });
        registry.register(
            "shadowcat_request_duration_seconds",
            "Time from a client request to its answer, by method",
            durations.clone(),
        );
        let upstream_errors = Family::<KindLabels, Counter>::default();
        registry.register(
            "shadowcat_upstream_errors",
            "Upstream failures: unreachable, http_status, invalid_response, exited",
            upstream_errors.clone(),
        );
        // Every kind is reported, at 0 until it happens.
        for kind in UPSTREAM_ERROR_KINDS {
            upstream_errors
                .get_or_create(&KindLabels { kind })
                .inc_by(0);
        }
        let upstream_errors = UpstreamErrors(upstream_errors);
        let (auth_refusals, adopted, forwarded) = door_counters(&mut registry);
        pipeline.keep_operations();
        registry.register_with_unit(
            "mcp_server_operation_duration",
            "MCP requests as the server saw them (semantic conventions' mcp.server.operation.duration): from arrival to answer, by method and error type",
            prometheus_client::registry::Unit::Seconds,
            pipeline.operations.server.clone(),
        );
        registry.register_with_unit(
            "mcp_client_operation_duration",
            "MCP requests as the client saw them (mcp.client.operation.duration): from the hop on to the receiver's answer, by method and error type",
            prometheus_client::registry::Unit::Seconds,
            pipeline.operations.client.clone(),
        );
        let session_durations = mcp_histogram();
        registry.register_with_unit(
            "mcp_server_session_duration",
            "MCP sessions from creation to end (mcp.server.session.duration)",
            prometheus_client::registry::Unit::Seconds,
            session_durations.clone(),
        );
        sessions.on_end(Box::new(move |age| {
            session_durations.observe(age.as_secs_f64());
        }));
        registry.register(
            "shadowcat_rule_actions",
            "Interceptor rule actions, by rule, action and mode (enforce, or audit: would have)",
            pipeline.rule_counters(),
        );
        registry.register(
            "shadowcat_rate_limit_checks",
            "Rate-limit decisions, by limit, key kind and outcome (allowed, refused, dropped)",
            pipeline.rate_limits.clone(),
        );
        registry.register(
            "shadowcat_rate_limit_evictions",
            "Keys a full keyed rate limit forgot before their time, by limit",
            pipeline.rate_limit_evictions.clone(),
        );
        registry.register(
            "shadowcat_rate_limit_keys",
            "Keys a keyed rate limit holds now, by limit",
            pipeline.rate_limit_keys.clone(),
        );
        let connections = Arc::<ConnectionCounters>::default();
        let children = Arc::<ChildCounters>::default();
        registry.register_collector(Box::new(collectors::Live {
            sessions,
            pipeline,
            connections: connections.clone(),
            children: children.clone(),
        }));
        Self {
            registry,
            requests,
            durations,
            upstream_errors,
            auth_refusals,
            adopted,
            forwarded,
            connections,
            children,
        }
    }

    /// Counts a request passed to the instance that owns its session.
    pub fn forwarded_to_owner(&self) {
        self.forwarded.inc();
    }

    /// Counts a session another instance of the cluster opened, now served here too.
    pub fn session_reopened(&self) {
        self.adopted.inc();
    }

    /// Adds the trace exporter's counts (`--otlp-endpoint`).
    pub fn trace_export(&mut self, tracer: Arc<traces::Tracer>) {
        self.registry
            .register_collector(Box::new(collectors::TraceCounts(tracer)));
    }

    /// Adds how Redis has been answering (`--redis-url`).
    pub fn redis(&mut self, redis: Arc<crate::transport::redis::Redis>) {
        self.registry
            .register_collector(Box::new(collectors::RedisCounts(redis)));
    }

    /// Adds the live feed's counts (`--ui-listen`).
    pub fn live_feed(&mut self, feed: Arc<feed::Feed>) {
        self.registry
            .register_collector(Box::new(collectors::FeedCounts(feed)));
    }

    /// Counts a request refused at the door for `reason` (one of [`AUTH_REFUSAL_REASONS`]).
    pub fn auth_refused(&self, reason: &'static str) {
        self.auth_refusals
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    /// The client listener's connection counters (the listener changes them).
    pub fn connections(&self) -> Arc<ConnectionCounters> {
        self.connections.clone()
    }

    /// A command upstream's process counters (its pool changes them).
    pub fn children(&self) -> Arc<ChildCounters> {
        self.children.clone()
    }

    /// Records one answered request. The label set is bounded: unknown methods count as `other`.
    pub fn request(
        &self,
        method: &crate::protocol::Method,
        error: bool,
        elapsed: std::time::Duration,
    ) {
        let method = match method {
            crate::protocol::Method::Other(_) => "other".to_owned(),
            known => known.as_str().to_owned(),
        };
        self.requests
            .get_or_create(&RequestLabels {
                method: method.clone(),
                outcome: if error { "error" } else { "ok" },
            })
            .inc();
        self.durations
            .get_or_create(&MethodLabels { method })
            .observe(elapsed.as_secs_f64());
    }

    /// Counts an upstream failure of `kind`.
    pub fn upstream_error(&self, kind: &'static str) {
        self.upstream_errors.count(kind);
    }

    /// The upstream failure counters, for the upstream's own code to count in.
    pub fn upstream_errors(&self) -> UpstreamErrors {
        self.upstream_errors.clone()
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut text = String::new();
        if prometheus_client::encoding::text::encode(&mut text, &self.registry).is_err() {
            tracing::error!("encoding the metrics failed");
        }
        text
    }
}
