//! Getting finished spans to the collector off the hot path: a bounded queue that a span joins
//! without waiting (or is dropped from, counted, when the queue is full), and one task that
//! sends them in batches. A collector that is slow or down costs the proxy counted drops, never
//! a wait.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SpanData, SpanExporter, SpanProcessor};
use tokio::sync::mpsc;

/// Spans waiting to be sent, at most; more are dropped (and counted).
pub const QUEUE_SPANS: usize = 4_096;
/// Spans sent in one request to the collector, at most.
pub const BATCH_SPANS: usize = 512;
/// How long a span waits for its batch to fill before the batch goes anyway.
pub const BATCH_WAIT: Duration = Duration::from_secs(1);

/// What became of finished spans.
#[derive(Debug, Default)]
pub struct Counts {
    /// Accepted by the collector.
    pub exported: AtomicU64,
    /// Dropped: the queue was full, or the collector refused or could not be reached.
    pub dropped: AtomicU64,
}

impl Counts {
    fn dropped(&self, n: usize) {
        self.dropped.fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// The span processor: hands each finished, sampled span to the queue, or drops it.
#[derive(Debug)]
pub struct Queue {
    spans: mpsc::Sender<SpanData>,
    counts: Arc<Counts>,
}

impl Queue {
    /// A queue whose spans `exporter` sends, from a task on the current Tokio runtime; the
    /// task ends once the queue is dropped and what it held is sent.
    pub fn start<E: SpanExporter + 'static>(
        exporter: E,
        counts: Arc<Counts>,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(QUEUE_SPANS);
        let task = tokio::spawn(send(exporter, rx, counts.clone()));
        (Self { spans: tx, counts }, task)
    }
}

impl SpanProcessor for Queue {
    fn on_start(&self, _span: &mut opentelemetry_sdk::trace::Span, _cx: &opentelemetry::Context) {}

    fn on_end(&self, span: SpanData) {
        if !span.span_context.is_sampled() {
            return;
        }
        if self.spans.try_send(span).is_err() {
            self.counts.dropped(1);
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        Ok(())
    }
}

/// Sends batches until the queue closes. A failed batch is dropped (counted) and logged, at most
/// once a minute: a collector that is down must not flood the log either.
async fn send<E: SpanExporter>(exporter: E, mut rx: mpsc::Receiver<SpanData>, counts: Arc<Counts>) {
    let mut last_warning: Option<tokio::time::Instant> = None;
    while let Some(first) = rx.recv().await {
        let mut batch = Vec::with_capacity(BATCH_SPANS);
        batch.push(first);
        let deadline = tokio::time::Instant::now() + BATCH_WAIT;
        while batch.len() < BATCH_SPANS {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(span)) => batch.push(span),
                Ok(None) | Err(_) => break,
            }
        }
        let n = batch.len();
        match exporter.export(batch).await {
            Ok(()) => {
                counts.exported.fetch_add(n as u64, Ordering::Relaxed);
            }
            Err(e) => {
                counts.dropped(n);
                let now = tokio::time::Instant::now();
                if last_warning.is_none_or(|t| now.duration_since(t) >= Duration::from_secs(60)) {
                    last_warning = Some(now);
                    tracing::warn!(error = %e, spans = n, "cannot export spans to the OTLP collector; they are dropped (counted in shadowcat_trace_spans_dropped_total)");
                }
            }
        }
    }
    let _ = exporter.shutdown();
}
