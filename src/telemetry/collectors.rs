//! The `/metrics` collectors read at scrape time: what other parts already count (sessions,
//! the pipeline's totals, connections, server processes, the trace exporter, Redis, the live
//! feed) encoded when Prometheus asks, so nothing is counted twice.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use prometheus_client::encoding::EncodeMetric;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

use super::Metrics;
use crate::transport::child::ChildCounters;
use crate::transport::serve::ConnectionCounters;

/// Reads the live counters at scrape time.
#[derive(Debug)]
pub(super) struct Live {
    pub(super) sessions: Arc<crate::session::SessionManager>,
    pub(super) pipeline: Arc<Metrics>,
    pub(super) connections: Arc<ConnectionCounters>,
    pub(super) children: Arc<ChildCounters>,
}

impl prometheus_client::collector::Collector for Live {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        let s = self.sessions.metrics();
        gauge(
            &mut encoder,
            "shadowcat_sessions_open",
            "Sessions open now",
            s.active,
        )?;
        counter(
            &mut encoder,
            "shadowcat_sessions_created",
            "Sessions created",
            s.created,
        )?;
        counter(
            &mut encoder,
            "shadowcat_sessions_refused",
            "Sessions refused at --max-sessions",
            s.refused_sessions,
        )?;
        gauge(
            &mut encoder,
            "shadowcat_pending_requests",
            "Requests awaiting an answer, both directions",
            s.pending_requests,
        )?;
        let mut family = encoder.encode_descriptor(
            "shadowcat_sessions_ended",
            "Sessions ended, by reason",
            None,
            prometheus_client::metrics::MetricType::Counter,
        )?;
        for (reason, ended) in crate::session::EndReason::ALL.iter().zip(s.ended) {
            let labels = [("reason", reason.as_str())];
            ConstCounter::new(ended).encode(family.encode_family(&labels)?)?;
        }
        let p = self.pipeline.snapshot();
        for (name, help, value) in [
            (
                "shadowcat_messages_to_server",
                "Messages forwarded client to server",
                p.forwarded_to_server,
            ),
            (
                "shadowcat_messages_to_client",
                "Messages forwarded server to client",
                p.forwarded_to_client,
            ),
            (
                "shadowcat_answered_by_proxy",
                "Messages shadowcat answered itself (errors)",
                p.answered_by_proxy,
            ),
            (
                "shadowcat_malformed_messages",
                "Messages that were not valid JSON-RPC",
                p.malformed,
            ),
            (
                "shadowcat_oversized_messages",
                "Messages over --max-message-size",
                p.oversized,
            ),
            (
                "shadowcat_unmatched_responses",
                "Responses that matched no pending request",
                p.unmatched_responses,
            ),
        ] {
            counter(&mut encoder, name, help, value)?;
        }
        encode_connections(&self.connections, &mut encoder)?;
        encode_children(&self.children, &mut encoder)
    }
}

/// The trace exporter's counts, read at scrape time.
#[derive(Debug)]
pub(super) struct TraceCounts(pub(super) Arc<super::traces::Tracer>);

impl prometheus_client::collector::Collector for TraceCounts {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        counter(
            &mut encoder,
            "shadowcat_trace_spans_exported",
            "Spans the OTLP collector accepted",
            self.0.exported(),
        )?;
        counter(
            &mut encoder,
            "shadowcat_trace_spans_dropped",
            "Spans dropped: the export queue was full, or the collector was down or refused them",
            self.0.dropped(),
        )
    }
}

/// How Redis has been answering, read when scraped (`--redis-url`).
#[derive(Debug)]
pub(super) struct RedisCounts(pub(super) Arc<crate::transport::redis::Redis>);

impl prometheus_client::collector::Collector for RedisCounts {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        use crate::transport::redis::{OUTCOMES, Use};
        gauge(
            &mut encoder,
            "shadowcat_redis_up",
            "Whether the last command sent to Redis was answered in time (0: the instance does without it)",
            u64::from(self.0.is_up()),
        )?;
        let mut family = encoder.encode_descriptor(
            "shadowcat_redis_commands",
            "Redis commands by use (rate_limit, session) and outcome: ok, failed (an error, or no answer within --redis-timeout), skipped (Redis was failing: done without)",
            None,
            prometheus_client::metrics::MetricType::Counter,
        )?;
        for use_ in Use::ALL {
            for (outcome, name) in OUTCOMES.iter().enumerate() {
                ConstCounter::new(self.0.count(use_, outcome))
                    .encode(family.encode_family(&[("use", use_.as_str()), ("outcome", *name)])?)?;
            }
        }
        Ok(())
    }
}

/// The live feed's counts, read when scraped (`--ui-listen`).
#[derive(Debug)]
pub(super) struct FeedCounts(pub(super) Arc<super::feed::Feed>);

impl prometheus_client::collector::Collector for FeedCounts {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        let stats = self.0.stats();
        gauge(
            &mut encoder,
            "shadowcat_ui_watchers",
            "Pages watching the live view's feed now",
            stats.watchers as u64,
        )?;
        counter(
            &mut encoder,
            "shadowcat_ui_events_published",
            "Messages told to the live view's feed while a page watched",
            stats.published,
        )?;
        counter(
            &mut encoder,
            "shadowcat_ui_events_missed",
            "Feed events pages lost by falling behind (summed over pages); the traffic never waits",
            stats.missed,
        )
    }
}

/// One gauge sample.
fn gauge(
    encoder: &mut prometheus_client::encoding::DescriptorEncoder,
    name: &str,
    help: &str,
    value: u64,
) -> Result<(), std::fmt::Error> {
    let metric = ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX));
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

/// One counter sample.
fn counter(
    encoder: &mut prometheus_client::encoding::DescriptorEncoder,
    name: &str,
    help: &str,
    value: u64,
) -> Result<(), std::fmt::Error> {
    let metric = ConstCounter::new(value);
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

/// A command upstream's server processes.
fn encode_children(
    c: &ChildCounters,
    encoder: &mut prometheus_client::encoding::DescriptorEncoder,
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(
        "shadowcat_upstream_children",
        "Server processes of a command upstream now, by state: idle (spares), busy (serving a session), spawning",
        None,
        prometheus_client::metrics::MetricType::Gauge,
    )?;
    for (state, value) in [
        ("idle", &c.idle),
        ("busy", &c.busy),
        ("spawning", &c.spawning),
    ] {
        let value = i64::try_from(value.load(Ordering::Relaxed)).unwrap_or(i64::MAX);
        ConstGauge::new(value).encode(family.encode_family(&[("state", state)])?)?;
    }
    let crash_looping = i64::try_from(c.crash_looping.load(Ordering::Relaxed)).unwrap_or(i64::MAX);
    ConstGauge::new(crash_looping).encode(encoder.encode_descriptor(
        "shadowcat_upstream_crash_looping",
        "Shared server processes crashing in a loop now (--restart on-failure)",
        None,
        prometheus_client::metrics::MetricType::Gauge,
    )?)?;
    for (name, help, value) in [
        (
            "shadowcat_upstream_spawns",
            "Server processes started",
            &c.spawns,
        ),
        (
            "shadowcat_upstream_spawn_failures",
            "Server processes that could not be started",
            &c.spawn_failures,
        ),
        (
            "shadowcat_upstream_dead_spares",
            "Spare server processes found dead (exited, stdout closed) before any session",
            &c.dead_spares,
        ),
        (
            "shadowcat_upstream_pool_waits",
            "Sessions that waited for a server process (none spare, none free to start)",
            &c.waits,
        ),
        (
            "shadowcat_upstream_pool_timeouts",
            "Sessions that waited past --pool-acquire-timeout",
            &c.timeouts,
        ),
        (
            "shadowcat_upstream_unattributed",
            "Messages of a shared server tied to no one session: notifications dropped, requests refused (-32094)",
            &c.unattributed,
        ),
        (
            "shadowcat_upstream_restarts",
            "Server processes that failed and were started again (--restart on-failure)",
            &c.restarts,
        ),
    ] {
        counter(encoder, name, help, value.load(Ordering::Relaxed))?;
    }
    Ok(())
}

/// The client listener's connection counters.
fn encode_connections(
    c: &ConnectionCounters,
    encoder: &mut prometheus_client::encoding::DescriptorEncoder,
) -> Result<(), std::fmt::Error> {
    gauge(
        encoder,
        "shadowcat_connections_open",
        "Client connections open now",
        c.open.load(Ordering::Relaxed),
    )?;
    counter(
        encoder,
        "shadowcat_connections_accepted",
        "Client connections accepted",
        c.accepted.load(Ordering::Relaxed),
    )?;
    counter(
        encoder,
        "shadowcat_connections_write_timeouts",
        "Client connections closed for taking none of our bytes within --write-timeout",
        c.write_timeouts.load(Ordering::Relaxed),
    )?;
    counter(
        encoder,
        "shadowcat_connections_accept_errors",
        "Failed accepts (such as out of file descriptors)",
        c.accept_errors.load(Ordering::Relaxed),
    )?;
    let mut family = encoder.encode_descriptor(
        "shadowcat_connections_refused",
        "Client connections refused at a cap: total (--max-connections) or per_client",
        None,
        prometheus_client::metrics::MetricType::Counter,
    )?;
    for (cap, value) in [
        ("total", &c.refused_total_cap),
        ("per_client", &c.refused_client_cap),
    ] {
        ConstCounter::new(value.load(Ordering::Relaxed))
            .encode(family.encode_family(&[("cap", cap)])?)?;
    }
    Ok(())
}
